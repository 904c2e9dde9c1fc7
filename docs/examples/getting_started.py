"""Getting started (docs/getting-started.md shows this code; tests/test_docs_examples.py runs it)."""

import json

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from precal import PACSCalibrator, TemperatureScaling, load_calibrator
from precal.emulate import sweep
from precal.metrics import (expected_calibration_error, negative_log_likelihood,
                            precision_split)

torch.manual_seed(0)
torch.set_num_threads(1)

# 1. A real model on real data: an MLP on scikit-learn's bundled 8x8 digits (no download).
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.5, random_state=0,
                                                    stratify=y)
X_cal, X_test, y_cal, y_test = train_test_split(X_rest, y_rest, test_size=0.5, random_state=0,
                                                stratify=y_rest)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                            torch.nn.Linear(128, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(1000):  # full-batch training, long enough to become over-confident
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(X_train), torch.as_tensor(y_train)).backward()
    optimizer.step()
model.eval()

# 2. Emulate: the model's logits at several precisions (the model itself is not modified).
#    w4a4: int4 weights per channel, int4 activations with observers calibrated on X_train.
configs = ["fp32", "bf16", "w8a8", "w4a4"]
logit_format = {"fp32": "fp32", "bf16": "bf16", "w8a8": "int8", "w4a4": "int4"}  # PACS's ε
cal = sweep(model, X_cal, configs, calibration_data=X_train, progress=False)
test = sweep(model, X_test, configs, calibration_data=X_train, progress=False)


def softmax(logits):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def ece_nll(proba):
    ece = expected_calibration_error(y_test, proba)
    return f"{ece:.4f} / {negative_log_likelihood(y_test, proba):.4f}"


# 3. Measure, then 4. calibrate at the deployment precision and measure again on test data.
print("config  accuracy  uncalibrated     temp. scaling    PACS             (ECE / NLL)")
for config in configs:
    ts = TemperatureScaling().fit(cal[config], y_cal)
    pacs = PACSCalibrator(precision=logit_format[config]).fit(cal[config], y_cal)
    z = test[config]
    accuracy = np.mean(z.argmax(axis=1) == y_test)
    probas = [softmax(z), ts.predict_proba(z), pacs.predict_proba(z)]
    print(f"{config:6s}  {accuracy:8.3f}  " + "  ".join(ece_nll(p) for p in probas))

# How the confidence moves between precisions, sample by sample (same model, same inputs).
split = precision_split(softmax(test["fp32"]), softmax(test["w4a4"]))
print(f"w4a4 vs fp32: mean confidence gap {split.mean_gap:+.4f}; "
      f"{split.share_above_threshold:.1%} of the samples moved by more than 0.01")

# 5. Deploy: the fitted calibrator as a torch module appended to the model; store it as JSON.
ts = TemperatureScaling().fit(cal["w4a4"], y_cal)
deployed = torch.nn.Sequential(model, ts.to_torch(output="proba"))
with torch.no_grad():
    print("calibrated probabilities of one image:", deployed(X_test[:1]).numpy().round(3))
restored = load_calibrator(json.loads(json.dumps(ts.to_dict())))
print("restored temperature equals the fitted one:", restored.temperature_ == ts.temperature_)

"""The ``precal demo`` job: a real model on real data, emulated and calibrated, end to end.

Data: scikit-learn's bundled handwritten digits (1 797 real 8x8 images, 10 classes; nothing
is downloaded). A small CNN is trained on half of the images; the other half is split into
a calibration half and a test half. The emulator runs the trained network at each precision
config (activation observers calibrated on training images); at each precision,
temperature scaling, PACS, the fuzzy-gated Dirichlet calibrator and an AutoCalibrator
(which picks the default candidate with the lowest cross-validated top-label ECE among
those that beat temperature scaling's by more than the bootstrap standard error of the
difference and whose cross-validated NLL is within a standard error of temperature
scaling's, the matrix-scaling family under its own rule, and keeps temperature scaling
unless another beats it) are fitted on the
calibration logits and every method is scored on the test logits; the AutoCalibrator's
row is named after its choice, ``"auto (ets)"``. The fuzzy calibrator's
linguistic confidence labels ("low", "moderate", "high") are counted on the test logits,
with the accuracy of the predictions under each label.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ._numerics import softmax
from .calibration import AutoCalibrator, FuzzyDirichletCalibrator, PACSCalibrator, TemperatureScaling
from .emulate import parse_config, sweep
from .metrics import (
    adaptive_calibration_error,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)
from .report import format_table

__all__ = [
    "DigitsCNN", "DemoResult", "DEMO_CONFIGS", "config_precision", "confidence_label_counts", "digits_logits",
    "run_demo", "format_table", "format_summary",
]

#: Precision configs the demo runs (see :mod:`precal.emulate.model`).
DEMO_CONFIGS = ("fp32", "bf16", "fp8_e4m3", "w8a8", "w4a8", "w4a4")


class DigitsCNN(torch.nn.Module):
    """Two 3x3 convolutions and a linear head for 8x8 grey images (about 12 k parameters)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Linear(32 * 4 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@dataclass
class DemoData:
    """Trained model and held-out logits of the digits demo."""

    model: DigitsCNN
    train_inputs: torch.Tensor
    cal_inputs: torch.Tensor
    cal_logits: np.ndarray
    cal_labels: np.ndarray
    test_inputs: torch.Tensor
    test_logits: np.ndarray
    test_labels: np.ndarray
    n_train: int


def _bar(total: int, desc: str, unit: str, progress: bool) -> Any:
    """A tqdm bar on stderr (shown when ``progress`` and stderr is a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None if progress else True)


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
           progress: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with _bar(epochs, "precal demo: training", "epoch", progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
            bar.update(1)
    model.eval()


def digits_logits(*, random_state: int = 0, epochs: int = 40, progress: bool = False) -> DemoData:
    """Train :class:`DigitsCNN` on half of the digits and return held-out logits.

    The held-out half is split again, stratified, into calibration and test sets. Long
    training without regularisation makes the network over-confident, as large networks
    are (Guo et al., 2017), which is what the calibrators are there to fix.
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    x_tr, x_hold, y_tr, y_hold = train_test_split(
        images, labels, test_size=0.5, stratify=labels, random_state=random_state
    )
    x_cal, x_te, y_cal, y_te = train_test_split(
        x_hold, y_hold, test_size=0.5, stratify=y_hold, random_state=random_state
    )
    with torch.random.fork_rng():  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(random_state)
        model = DigitsCNN()
    _train(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), epochs=epochs, seed=random_state,
           progress=progress)
    cal_inputs, test_inputs = torch.from_numpy(x_cal), torch.from_numpy(x_te)
    with torch.no_grad():
        cal_logits = model(cal_inputs).numpy().astype(np.float64)
        test_logits = model(test_inputs).numpy().astype(np.float64)
    return DemoData(model, torch.from_numpy(x_tr), cal_inputs, cal_logits, y_cal, test_inputs, test_logits, y_te,
                    len(y_tr))


def _scores(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(np.mean(prob.argmax(axis=1) == y)),
        "ece": expected_calibration_error(y, prob),
        "ace": adaptive_calibration_error(y, prob),
        "nll": negative_log_likelihood(y, prob),
        "brier": brier_score(y, prob),
    }


@dataclass
class DemoResult:
    """Scores of each method on the test logits, plus what was fitted and how long each stage took."""

    rows: list[dict[str, Any]]
    n_train: int
    n_calibration: int
    n_test: int
    fitted: dict[str, Any] = field(default_factory=dict)
    #: Wall-clock seconds per stage: ``training``, ``emulation``, ``calibration`` (and
    #: ``total``, set by ``precal demo`` to include its imports).
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_demo(
    *, random_state: int = 0, epochs: int = 40, configs: tuple[str, ...] = DEMO_CONFIGS, progress: bool = False
) -> DemoResult:
    """Train, emulate each precision, calibrate and score; see the module docstring.

    ``progress`` shows tqdm bars on stderr (when it is a terminal) for the training epochs,
    the emulated forward passes and the calibration at each precision.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = digits_logits(random_state=random_state, epochs=epochs, progress=progress)
    seconds["training"] = time.perf_counter() - start
    n_cal = len(data.cal_labels)
    held_out = torch.cat([data.cal_inputs, data.test_inputs])
    start = time.perf_counter()
    logits = sweep(data.model, held_out, configs, calibration_data=data.train_inputs, progress=progress)
    seconds["emulation"] = time.perf_counter() - start
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    fitted: dict[str, dict[str, Any]] = {"temperature": {}, "pacs": {}, "fuzzy_labels": {}, "auto": {}}
    with _bar(len(logits), "precal demo: calibrating", "precision", progress) as bar:
        for config, z in logits.items():
            bar.set_postfix_str(config)
            z_cal, z_test = z[:n_cal].astype(np.float64), z[n_cal:].astype(np.float64)
            ts = TemperatureScaling().fit(z_cal, data.cal_labels)
            pacs = PACSCalibrator(precision=config_precision(config)).fit(z_cal, data.cal_labels)
            fuzzy = FuzzyDirichletCalibrator(random_state=random_state).fit(z_cal, data.cal_labels)
            auto = AutoCalibrator(random_state=random_state).fit(z_cal, data.cal_labels)
            fitted["temperature"][config] = ts.temperature_
            fitted["pacs"][config] = {"T0": pacs.temperature_, "lambda": pacs.lambda_, "precision": pacs.precision}
            fitted["fuzzy_labels"][config] = confidence_label_counts(fuzzy, z_test, data.test_labels)
            fitted["auto"][config] = {"chosen": auto.best_name_, "metric": auto.cv_results_["metric"],
                                      "cv_score": dict(zip(auto.cv_results_["candidate"],
                                                           map(float, auto.cv_results_["mean_score"])))}
            for method, prob in (("uncalibrated", softmax(z_test)), ("temperature scaling", ts.predict_proba(z_test)),
                                 ("PACS", pacs.predict_proba(z_test)),
                                 ("fuzzy Dirichlet", fuzzy.predict_proba(z_test)),
                                 (f"auto ({auto.best_name_})", auto.predict_proba(z_test))):
                rows.append({"method": method, "precision": config, **_scores(data.test_labels, prob)})
            bar.update(1)
    seconds["calibration"] = time.perf_counter() - start
    return DemoResult(
        rows=rows,
        n_train=data.n_train,
        n_calibration=n_cal,
        n_test=len(data.test_labels),
        fitted=fitted,
        seconds=seconds,
    )


def confidence_label_counts(
    calibrator: FuzzyDirichletCalibrator, logits: np.ndarray, labels: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per linguistic label of a fitted fuzzy calibrator: how many predictions carry it and
    how often they are right, ``{name: {"count": n, "accuracy": a}}`` in region order
    (``a`` is ``None`` for a label no prediction carries)."""
    names = calibrator.predict_confidence_label(logits)
    right = calibrator.predict(logits) == labels
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(calibrator.region_names_.tolist()):
        mask = names == name
        out[name] = {"count": int(mask.sum()), "accuracy": float(right[mask].mean()) if mask.any() else None}
    return out


def config_precision(config: str) -> str:
    """The number format that sets PACS's ``ε`` for an emulator config: the compute format,
    else the activation format, else the weight format (``"fp32"`` for the plain model)."""
    cfg = parse_config(config)
    return cfg.compute or cfg.act_format or cfg.weight_format or "fp32"


def format_summary(result: DemoResult) -> str:
    """The text ``precal demo`` prints: what was run, what was fitted, and the score table."""
    temps = ", ".join(f"{k} {v:.3f}" for k, v in result.fitted["temperature"].items())
    lams = ", ".join(f"{k} {v['lambda']:.3g}" for k, v in result.fitted["pacs"].items())
    auto = ", ".join(f"{k} {v['chosen']}" for k, v in result.fitted.get("auto", {}).items())
    return "\n".join([
        f"precal demo: digits (scikit-learn), small CNN trained on {result.n_train} images; "
        f"calibrated on {result.n_calibration}, scored on {result.n_test} held-out images.",
        f"fitted temperatures: {temps}",
        f"PACS lambda (0 = temperature scaling): {lams}",
        *([f"AutoCalibrator's choice (lowest 5-fold CV top-label ECE among candidates that beat temperature "
           f"scaling's by more than its bootstrap standard error, with CV NLL within one standard error of "
           f"temperature scaling's; temperature scaling unless another beats it): {auto}"]
          if auto else []),
        "",
        format_table(result.rows),
        "",
        "fuzzy Dirichlet confidence labels on the test images (count, accuracy of those predictions):",
        *(f"  {config}: " + ", ".join(f"{name} {v['count']} ({v['accuracy']:.0%})" if v["count"] else f"{name} 0"
                                       for name, v in labels.items())
          for config, labels in result.fitted.get("fuzzy_labels", {}).items()),
        *([_timing_line(result.seconds)] if result.seconds else []),
    ])


def _timing_line(seconds: dict[str, float]) -> str:
    stages = ", ".join(f"{name} {seconds[name]:.1f} s" for name in ("training", "emulation", "calibration")
                       if name in seconds)
    total = seconds.get("total", sum(seconds.values()))
    return f"\nTook {total:.1f} s ({stages})."

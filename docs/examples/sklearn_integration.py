"""Runnable examples of docs/sklearn-integration.md (tests/test_docs_examples.py runs this file).

Real bundled data (scikit-learn's digits); prints what the docs page shows.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from precal import CalibratedClassifier, LogitTransformer, PACSCalibrator, TemperatureScaling
from precal.metrics import ece_scorer, expected_calibration_error, get_scorer, negative_log_likelihood

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)

# 1. Held-out logits of a fitted classifier, calibrated and cross-validated like any estimator.
clf = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=2000)).fit(X_train, y_train)
logits = clf.decision_function(X_test)
print("TS 5-fold mean log-likelihood:", cross_val_score(TemperatureScaling(), logits, y_test, cv=5).mean().round(4))
print("TS 5-fold ECE:", (-cross_val_score(TemperatureScaling(), logits, y_test, cv=5, scoring=ece_scorer)).round(4))
scores = cross_validate(PACSCalibrator(), logits, y_test, cv=5,
                        scoring={"ece": ece_scorer, "nll": get_scorer("nll"), "acc": "accuracy"})
print("PACS 5-fold:", {k: float(np.mean(v).round(4)) for k, v in scores.items() if k.startswith("test_")})

# 2. Grid search over calibrator parameters.
grid = GridSearchCV(PACSCalibrator(), {"risk": ["norm", "peaked"]}, cv=5, scoring=ece_scorer).fit(logits, y_test)
print("best PACS risk by ECE:", grid.best_params_)

# 3. CalibratedClassifier: cross-fitted calibration of any classifier, in a pipeline.
model = make_pipeline(StandardScaler(), CalibratedClassifier(LogisticRegression(C=10.0, max_iter=2000),
                                                             calibrator=TemperatureScaling(), cv=5))
model.fit(X_train, y_train)
for name, est in (("raw", clf), ("calibrated", model)):
    p = est.predict_proba(X_test)
    print(f"{name:10s} accuracy {np.mean(p.argmax(1) == y_test):.4f}  ECE {expected_calibration_error(y_test, p):.4f}"
          f"  NLL {negative_log_likelihood(y_test, p):.4f}")

# 4. LogitTransformer exposes a classifier's logits inside a pipeline.
logit_pipe = make_pipeline(StandardScaler(), LogitTransformer(LogisticRegression(C=10.0, max_iter=2000)))
print("logits shape:", logit_pipe.fit(X_train, y_train).transform(X_test).shape)

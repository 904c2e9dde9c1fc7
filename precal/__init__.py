"""precal: measure, emulate and correct precision-induced miscalibration of classifiers.

Calibrators (scikit-learn estimators on logits) live in :mod:`precal.calibration`,
metrics and scorers in :mod:`precal.metrics`.
"""

__version__ = "0.1.0"

from . import calibration, emulate, metrics  # noqa: E402
from .calibration import (  # noqa: E402
    CalibratedClassifier,
    DirichletCalibrator,
    FuzzyDirichletCalibrator,
    LogitTransformer,
    PACSCalibrator,
    TemperatureScaling,
    load_calibrator,
)

__all__ = [
    "__version__",
    "calibration",
    "emulate",
    "metrics",
    "TemperatureScaling",
    "PACSCalibrator",
    "DirichletCalibrator",
    "FuzzyDirichletCalibrator",
    "CalibratedClassifier",
    "LogitTransformer",
    "load_calibrator",
]

"""Calibration metrics (scikit-learn signatures) and ready scorers."""

from .calibration import (
    CalibrationErrorCI,
    ReliabilityCurve,
    adaptive_calibration_error,
    brier_score,
    calibration_error_ci,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from .scorers import (
    ace_scorer,
    brier_scorer,
    classwise_ece_scorer,
    ece_scorer,
    get_scorer,
    get_scorer_names,
    mce_scorer,
    nll_scorer,
)

__all__ = [
    "expected_calibration_error",
    "adaptive_calibration_error",
    "maximum_calibration_error",
    "classwise_calibration_error",
    "brier_score",
    "negative_log_likelihood",
    "reliability_curve",
    "ReliabilityCurve",
    "calibration_error_ci",
    "CalibrationErrorCI",
    "ece_scorer",
    "ace_scorer",
    "mce_scorer",
    "classwise_ece_scorer",
    "brier_scorer",
    "nll_scorer",
    "get_scorer",
    "get_scorer_names",
]

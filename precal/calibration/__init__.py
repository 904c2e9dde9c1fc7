"""Post-hoc calibrators with the scikit-learn estimator API, on logits."""

from ._base import BaseLogitCalibrator
from .classifier import CalibratedClassifier, LogitTransformer
from .pacs import PACSCalibrator, pacs_risk, precision_epsilon
from .temperature import TemperatureScaling, fit_temperature

__all__ = [
    "BaseLogitCalibrator",
    "TemperatureScaling",
    "PACSCalibrator",
    "CalibratedClassifier",
    "LogitTransformer",
    "fit_temperature",
    "pacs_risk",
    "precision_epsilon",
    "load_calibrator",
]


def load_calibrator(data: dict) -> BaseLogitCalibrator:
    """Rebuild any precal calibrator from its :meth:`~BaseLogitCalibrator.to_dict` data."""
    return BaseLogitCalibrator.from_dict(data)

"""Post-hoc calibrators with the scikit-learn estimator API, on logits."""

from ._base import BaseLogitCalibrator
from .classifier import CalibratedClassifier, LogitTransformer
from .dirichlet import DirichletCalibrator, fit_dirichlet
from .fuzzy import FuzzyDirichletCalibrator
from .pacs import PACSCalibrator, pacs_risk, precision_epsilon
from .temperature import TemperatureScaling, fit_temperature

__all__ = [
    "BaseLogitCalibrator",
    "TemperatureScaling",
    "PACSCalibrator",
    "DirichletCalibrator",
    "FuzzyDirichletCalibrator",
    "CalibratedClassifier",
    "LogitTransformer",
    "fit_temperature",
    "fit_dirichlet",
    "pacs_risk",
    "precision_epsilon",
    "load_calibrator",
]


def load_calibrator(data: dict) -> BaseLogitCalibrator:
    """Rebuild any precal calibrator from its :meth:`~BaseLogitCalibrator.to_dict` data."""
    return BaseLogitCalibrator.from_dict(data)

"""Post-hoc calibrators with the scikit-learn estimator API, on logits."""

from ._base import BaseLogitCalibrator
from .auto import AutoCalibrator
from .classifier import CalibratedClassifier, LogitTransformer
from .dirichlet import DirichletCalibrator, fit_dirichlet
from .ensemble_temperature import EnsembleTemperatureScaling
from .fuzzy import FuzzyDirichletCalibrator
from .matrix_scaling import StructuredMatrixScaling
from .pacs import PACSCalibrator, pacs_risk, precision_epsilon
from .temperature import TemperatureScaling, fit_temperature
from .top_label import TopLabelCalibrator, fit_confidence_map

__all__ = [
    "BaseLogitCalibrator",
    "TemperatureScaling",
    "PACSCalibrator",
    "DirichletCalibrator",
    "FuzzyDirichletCalibrator",
    "EnsembleTemperatureScaling",
    "StructuredMatrixScaling",
    "TopLabelCalibrator",
    "AutoCalibrator",
    "CalibratedClassifier",
    "LogitTransformer",
    "fit_temperature",
    "fit_dirichlet",
    "fit_confidence_map",
    "pacs_risk",
    "precision_epsilon",
    "load_calibrator",
]


def load_calibrator(data: dict) -> BaseLogitCalibrator:
    """Rebuild any precal calibrator from its :meth:`~BaseLogitCalibrator.to_dict` data."""
    return BaseLogitCalibrator.from_dict(data)

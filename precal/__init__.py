"""precal: measure, emulate and correct precision-induced miscalibration of classifiers.

Calibrators (scikit-learn estimators on logits) live in :mod:`precal.calibration`,
metrics and scorers in :mod:`precal.metrics`, the precision emulator in
:mod:`precal.emulate`.

The sub-packages and the names re-exported here are imported on first use (PEP 562), so
``import precal`` (and the ``precal`` command's ``--help``) does not load torch or
scikit-learn; ``from precal import TemperatureScaling`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "calibration",
    "emulate",
    "metrics",
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
    "load_calibrator",
    "config_context",
    "get_config",
    "set_config",
]

_SUBPACKAGES = frozenset({"calibration", "emulate", "metrics"})
_FROM_CALIBRATION = frozenset({
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
    "load_calibrator",
})

_FROM_THREADS = frozenset({"config_context", "get_config", "set_config"})

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from . import calibration, emulate, metrics
    from .calibration import (
        AutoCalibrator,
        CalibratedClassifier,
        DirichletCalibrator,
        EnsembleTemperatureScaling,
        FuzzyDirichletCalibrator,
        LogitTransformer,
        PACSCalibrator,
        StructuredMatrixScaling,
        TemperatureScaling,
        TopLabelCalibrator,
        load_calibrator,
    )
    from ._threads import config_context, get_config, set_config


def __getattr__(name: str) -> Any:
    """Import a sub-package or a re-exported calibrator the first time it is asked for."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets it on the package
    if name in _FROM_CALIBRATION:
        value = getattr(importlib.import_module(f"{__name__}.calibration"), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if name in _FROM_THREADS:
        value = getattr(importlib.import_module(f"{__name__}._threads"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

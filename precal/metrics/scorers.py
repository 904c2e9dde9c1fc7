"""Ready scikit-learn scorers for precal's metrics, from one table of metric facts.

Every calibration metric is a loss (lower is better), so each scorer is made with
``greater_is_better=False`` and returns the *negated* metric, as scikit-learn's
``neg_log_loss`` does: ``cross_val_score(..., scoring=ece_scorer)`` gives ``-ECE``.
Scorers call ``predict_proba`` on the estimator and pass its ``classes_`` to the metric as
``labels``, so that a test fold without some class is still scored against the right columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import get_scorer_names as _sklearn_get_scorer_names
from sklearn.metrics import make_scorer

from .calibration import (
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)
from .ece_estimators import debiased_calibration_error, smooth_calibration_error

__all__ = [
    "MetricInfo",
    "METRICS",
    "get_scorer",
    "get_scorer_names",
    "ece_scorer",
    "ace_scorer",
    "mce_scorer",
    "classwise_ece_scorer",
    "brier_scorer",
    "nll_scorer",
    "debiased_ece_scorer",
    "smooth_ece_scorer",
]


@dataclass(frozen=True)
class MetricInfo:
    """Facts about one metric: its function, its short name and its scorer's name."""

    function: Callable[..., float]
    short_name: str
    scorer_name: str
    greater_is_better: bool = False


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(expected_calibration_error, "ece", "neg_expected_calibration_error"),
    MetricInfo(adaptive_calibration_error, "ace", "neg_adaptive_calibration_error"),
    MetricInfo(maximum_calibration_error, "mce", "neg_maximum_calibration_error"),
    MetricInfo(classwise_calibration_error, "classwise_ece", "neg_classwise_calibration_error"),
    MetricInfo(brier_score, "brier", "neg_brier_score"),
    MetricInfo(negative_log_likelihood, "nll", "neg_negative_log_likelihood"),
    MetricInfo(debiased_calibration_error, "debiased_ece", "neg_debiased_calibration_error"),
    MetricInfo(smooth_calibration_error, "smooth_ece", "neg_smooth_calibration_error"),
)

class _ClassesScorer(type(make_scorer(negative_log_likelihood, response_method="predict_proba"))):  # type: ignore[misc]
    """scikit-learn's scorer, calling the metric with ``labels=estimator.classes_``.

    Column ``j`` of ``predict_proba`` is ``classes_[j]``: without the labels a metric would
    read the classes from the test fold's ``y``, and a fold that lacks a class (classes
    ``[1, 2, 3]``, a fold with only 1 and 2) would pair its labels with the wrong columns
    or fail. scikit-learn's own ``neg_log_loss`` has this gap; these scorers do not.
    """

    def _score(self, method_caller: Any, estimator: Any, X: Any, y_true: Any, **kwargs: Any) -> float:
        classes = getattr(estimator, "classes_", None)
        if classes is not None and "labels" not in kwargs and "labels" not in getattr(self, "_kwargs", {}):
            kwargs["labels"] = classes
        return super()._score(method_caller, estimator, X, y_true, **kwargs)


def _make_scorer(info: MetricInfo) -> Any:
    """The scorer of one metric: :func:`sklearn.metrics.make_scorer`'s, with the estimator's classes."""
    scorer = make_scorer(info.function, greater_is_better=info.greater_is_better, response_method="predict_proba")
    scorer.__class__ = _ClassesScorer  # the same object layout; only ``_score`` differs
    return scorer


_SCORERS: dict[str, Any] = {info.scorer_name: _make_scorer(info) for info in METRICS}
_ALIASES: dict[str, str] = {info.short_name: info.scorer_name for info in METRICS}

#: Scorer of ``-expected_calibration_error(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_expected_calibration_error")``.
ece_scorer = _SCORERS["neg_expected_calibration_error"]
#: Scorer of ``-adaptive_calibration_error(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_adaptive_calibration_error")``.
ace_scorer = _SCORERS["neg_adaptive_calibration_error"]
#: Scorer of ``-maximum_calibration_error(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_maximum_calibration_error")``.
mce_scorer = _SCORERS["neg_maximum_calibration_error"]
#: Scorer of ``-classwise_calibration_error(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_classwise_calibration_error")``.
classwise_ece_scorer = _SCORERS["neg_classwise_calibration_error"]
#: Scorer of ``-brier_score(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_brier_score")``.
brier_scorer = _SCORERS["neg_brier_score"]
#: Scorer of ``-negative_log_likelihood(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_negative_log_likelihood")``.
nll_scorer = _SCORERS["neg_negative_log_likelihood"]
#: Scorer of ``-debiased_calibration_error(y, estimator.predict_proba(X))`` (an L2 error);
#: the same object as ``get_scorer("neg_debiased_calibration_error")``.
debiased_ece_scorer = _SCORERS["neg_debiased_calibration_error"]
#: Scorer of ``-smooth_calibration_error(y, estimator.predict_proba(X))``;
#: the same object as ``get_scorer("neg_smooth_calibration_error")``.
smooth_ece_scorer = _SCORERS["neg_smooth_calibration_error"]


def get_scorer(scoring: str | Callable[..., float]) -> Callable[..., float]:
    """A scorer by name: precal's names first, then scikit-learn's.

    Parameters
    ----------
    scoring : str or callable
        ``"neg_expected_calibration_error"`` (alias ``"ece"``), ``"neg_adaptive_calibration_error"``
        (``"ace"``), ``"neg_maximum_calibration_error"`` (``"mce"``),
        ``"neg_classwise_calibration_error"`` (``"classwise_ece"``), ``"neg_brier_score"``
        (``"brier"``), ``"neg_negative_log_likelihood"`` (``"nll"``),
        ``"neg_debiased_calibration_error"`` (``"debiased_ece"``),
        ``"neg_smooth_calibration_error"`` (``"smooth_ece"``), any name
        :func:`sklearn.metrics.get_scorer` knows, or a callable (returned as is).

    Raises
    ------
    ValueError
        If the name is neither precal's nor scikit-learn's.
    """
    if callable(scoring):
        return scoring
    if not isinstance(scoring, str):
        raise TypeError(f"scoring must be a string or a callable, got {type(scoring).__name__}.")
    name = _ALIASES.get(scoring, scoring)
    if name in _SCORERS:
        return _SCORERS[name]
    try:
        return _sklearn_get_scorer(scoring)
    except ValueError:
        raise ValueError(
            f"{scoring!r} is not a valid scoring value. precal's: {sorted(_SCORERS) + sorted(_ALIASES)}; "
            "scikit-learn's: see sklearn.metrics.get_scorer_names()."
        ) from None


def get_scorer_names() -> list[str]:
    """All names :func:`get_scorer` accepts."""
    return sorted(set(_SCORERS) | set(_ALIASES) | set(_sklearn_get_scorer_names()))

"""Classifiers as logit sources: ``LogitTransformer`` and the cross-fitted ``CalibratedClassifier``.

precal's calibrators take logits. These two meta-estimators connect them to any scikit-learn
classifier: :class:`LogitTransformer` exposes a classifier's logits as a transformer, and
:class:`CalibratedClassifier` fits classifier and calibrator by cross-fitting, so that no
calibrator is fitted on logits of samples its classifier was trained on (in the manner of
scikit-learn's ``CalibratedClassifierCV``, with any precal calibrator).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, TransformerMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import check_cv
from sklearn.utils import _safe_indexing, column_or_1d, indexable
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_consistent_length, check_is_fitted, has_fit_parameter

from .._validation import check_sample_weight
from ._base import BaseLogitCalibrator

__all__ = ["LogitTransformer", "CalibratedClassifier", "LOG_PROBA_FLOOR"]

#: Lower clip of log-probabilities: ``log`` of the smallest normal float64 (about -708.40).
#: ``predict_proba`` may return exact zeros (and ``predict_log_proba`` ``-inf``); calibrators
#: need finite logits, and a probability below this is zero for every practical purpose.
LOG_PROBA_FLOOR = float(np.log(np.finfo(np.float64).tiny))

_METHODS = ("auto", "decision_function", "log_proba")


# ----------------------------------------------------------------- logits of a classifier
def _check_estimator(estimator: Any, owner: str) -> None:
    if not hasattr(estimator, "fit"):
        raise TypeError(
            f"estimator of {owner} must be a scikit-learn classifier with a fit method, "
            f"got {type(estimator).__name__} ({estimator!r})."
        )


def _resolve_method(estimator: Any, method: str, owner: str) -> str:
    """The estimator method that gives logits: ``decision_function``, ``predict_log_proba`` or ``predict_proba``."""
    if method not in _METHODS:
        raise ValueError(f"method of {owner} must be one of {_METHODS}, got {method!r}.")
    name = type(estimator).__name__
    if method in ("auto", "decision_function") and hasattr(estimator, "decision_function"):
        return "decision_function"
    if method == "decision_function":
        raise TypeError(f"method='decision_function' but {name} has no decision_function; use method='log_proba'.")
    if hasattr(estimator, "predict_log_proba"):
        return "predict_log_proba"
    if hasattr(estimator, "predict_proba"):
        return "predict_proba"
    raise TypeError(
        f"{name} has no decision_function, predict_log_proba or predict_proba, so {owner} cannot "
        f"compute logits from it (method={method!r})."
    )


def _logits(estimator: Any, X: Any, response: str) -> np.ndarray:
    """Logits of a fitted classifier: float64, ``(n, n_classes)`` or ``(n, 1)`` for binary decision_function.

    Log-probabilities are clipped below at :data:`LOG_PROBA_FLOOR`.
    """
    out = np.asarray(getattr(estimator, response)(X), dtype=np.float64)
    if response == "predict_proba":
        with np.errstate(divide="ignore"):
            out = np.log(out)
    if response != "decision_function":
        out = np.maximum(out, LOG_PROBA_FLOOR)  # -inf -> floor; NaN stays NaN (refused later)
    if out.ndim == 1:
        out = out[:, None]
    n_classes = len(estimator.classes_)
    allowed = (1, 2) if n_classes == 2 else (n_classes,)
    if out.ndim != 2 or out.shape[1] not in allowed:
        raise ValueError(
            f"{type(estimator).__name__}.{response} returned shape {out.shape}, but the estimator has "
            f"{n_classes} classes: expected one column per class"
            f"{' (or one column, the log-odds of classes_[1])' if n_classes == 2 else ''}."
        )
    return out


def _sklearn_tags_from(tags: Any, estimator: Any) -> Any:
    try:
        from sklearn.utils import get_tags

        inner = get_tags(estimator)
    except Exception:  # an estimator without tags: keep the defaults
        return tags
    tags.input_tags.sparse = inner.input_tags.sparse
    tags.input_tags.allow_nan = inner.input_tags.allow_nan
    return tags


class LogitTransformer(TransformerMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier's logits as a scikit-learn transformer: ``transform(X)`` gives its logits.

    ``fit(X, y)`` fits a clone of ``estimator``; ``transform(X)`` returns the logits of the
    fitted clone on ``X``, ready for any precal calibrator. To use an estimator that is
    already fitted, wrap it in :class:`sklearn.frozen.FrozenEstimator`: its ``fit`` does
    nothing, so ``LogitTransformer(FrozenEstimator(clf)).fit(X, y)`` only reads ``classes_``.

    Parameters
    ----------
    estimator : classifier
        A scikit-learn classifier (or a Pipeline ending in one) with ``decision_function``,
        ``predict_log_proba`` or ``predict_proba``.
    method : {"auto", "decision_function", "log_proba"}, default="auto"
        Where the logits come from:

        - ``"decision_function"``: the decision function, taken as logits. For a binary
          classifier it is the log-odds of ``classes_[1]`` and ``transform`` returns it as
          one column, ``(n_samples, 1)``, which precal calibrators accept as single-logit
          binary input.
        - ``"log_proba"``: log-probabilities, ``predict_log_proba`` if the estimator has it,
          else ``log(predict_proba)``; both clipped below at :data:`LOG_PROBA_FLOOR`
          (``log`` of the smallest normal float64, about -708.4) so zero probabilities give
          finite logits. Shape ``(n_samples, n_classes)``, binary included.
        - ``"auto"``: ``decision_function`` if the estimator has it, else ``"log_proba"``.

    Attributes
    ----------
    estimator_ : classifier
        The fitted clone of ``estimator`` (``estimator`` itself for a FrozenEstimator).
    method_ : str
        The estimator method used: ``"decision_function"``, ``"predict_log_proba"`` or
        ``"predict_proba"``.
    classes_ : ndarray of shape (n_classes,)
        The estimator's classes; logit column ``j`` belongs to ``classes_[j]`` (the single
        binary column to ``classes_[1]``).
    n_features_in_ : int
        Number of features of ``X`` (when the estimator records it).
    feature_names_in_ : ndarray of str
        Names of the features of ``X`` (when the estimator records them).

    See Also
    --------
    CalibratedClassifier : cross-fitted classifier + calibrator.

    Notes
    -----
    ``fit_transform(X, y)`` returns the logits of the training data itself, which are
    over-confident: a calibrator fitted on them learns little. In a Pipeline
    ``make_pipeline(LogitTransformer(clf), TemperatureScaling())`` the calibrator is fitted
    on exactly such in-sample logits; use :class:`CalibratedClassifier` to fit both on the
    same data, or fit the calibrator on ``transform`` of held-out data.

    Decision functions are used as they are: for a linear model they are the logits of its
    probabilities, for others (one-vs-rest SVMs, boosting) a score a calibrator maps to
    probabilities. Calibrators that are not invariant to adding a constant to a row of
    logits (``PACSCalibrator``) see different inputs for the two methods.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from precal.calibration.classifier import LogitTransformer
    >>> X, y = make_classification(n_samples=200, n_classes=3, n_informative=4, random_state=0)
    >>> pipe = make_pipeline(StandardScaler(), LogitTransformer(LogisticRegression())).fit(X, y)
    >>> pipe.transform(X).shape
    (200, 3)
    >>> pipe[-1].method_
    'decision_function'
    """

    def __init__(self, estimator: Any, method: str = "auto") -> None:
        self.estimator = estimator
        self.method = method

    def fit(self, X: Any, y: Any, **fit_params: Any) -> LogitTransformer:
        """Fit a clone of the estimator.

        Parameters
        ----------
        X : array-like
            Training data, as the estimator accepts it.
        y : array-like of shape (n_samples,)
            Class labels.
        **fit_params : dict
            Passed to the estimator's ``fit`` (e.g. ``sample_weight``).

        Returns
        -------
        self
        """
        _check_estimator(self.estimator, type(self).__name__)
        self.method_ = _resolve_method(self.estimator, self.method, type(self).__name__)
        self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        self.classes_ = np.asarray(self.estimator_.classes_)
        for attr in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.estimator_, attr):
                setattr(self, attr, getattr(self.estimator_, attr))
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The estimator's logits on ``X``.

        Returns
        -------
        ndarray of float64, shape (n_samples, n_classes) or (n_samples, 1)
            ``(n_samples, 1)`` (log-odds of ``classes_[1]``) for a binary estimator's
            decision function.
        """
        check_is_fitted(self)
        return _logits(self.estimator_, X, self.method_)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output column names: ``logit_<class>`` per class (``classes_[1]`` only for one binary column)."""
        check_is_fitted(self)
        classes = self.classes_
        if len(classes) == 2 and self.method_ == "decision_function":
            classes = classes[1:]
        return np.asarray([f"logit_{c}" for c in classes], dtype=object)

    def __sklearn_tags__(self):  # noqa: D105
        return _sklearn_tags_from(super().__sklearn_tags__(), self.estimator)


# ------------------------------------------------------------ fitting on splits (workers)
def _fit_estimator(estimator: Any, X: Any, y: np.ndarray, idx: np.ndarray | None, sample_weight: Any) -> Any:
    """Fit a clone of ``estimator`` on the rows ``idx`` (all rows when None)."""
    est = clone(estimator)
    X_fit = X if idx is None else _safe_indexing(X, idx)
    y_fit = y if idx is None else y[idx]
    kwargs = {}
    if sample_weight is not None:
        kwargs["sample_weight"] = sample_weight if idx is None else sample_weight[idx]
    est.fit(X_fit, y_fit, **kwargs)
    if len(getattr(est, "classes_", ())) < 2:
        raise ValueError(
            f"{type(est).__name__} fitted on a training split knows {len(getattr(est, 'classes_', ()))} class(es); "
            "every training split needs at least 2 classes to calibrate."
        )
    return est


def _local_labels(y: np.ndarray, est_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each label in ``est_classes`` and a mask of the labels found there."""
    order = np.argsort(est_classes, kind="stable")
    sorted_classes = est_classes[order]
    pos = np.clip(np.searchsorted(sorted_classes, y), 0, len(est_classes) - 1)
    known = sorted_classes[pos] == y
    return order[pos].astype(np.int64), known


def _fit_calibrator(
    calibrator: BaseLogitCalibrator, logits: np.ndarray, y: np.ndarray, est_classes: np.ndarray, sample_weight: Any
) -> tuple[BaseLogitCalibrator, int]:
    """Fit a clone of ``calibrator`` in the estimator's class space; samples of other classes are left out.

    Labels are passed as indices ``0..len(est_classes)-1``, so the calibrator's columns are
    the estimator's even when a class is absent from these samples.
    """
    y_idx, known = _local_labels(y, np.asarray(est_classes))
    n_unknown = int(len(y) - known.sum())
    if n_unknown:
        logits, y_idx = logits[known], y_idx[known]
        sample_weight = None if sample_weight is None else sample_weight[known]
    cal = clone(calibrator).fit(logits, y_idx, sample_weight=sample_weight)
    return cal, n_unknown


def _fit_pair(estimator, calibrator, X, y, train, test, sample_weight, fit_weight, response):
    """One cross-fitting fold: estimator on ``train``, calibrator on its logits of ``test``."""
    est = _fit_estimator(estimator, X, y, train, sample_weight if fit_weight else None)
    logits = _logits(est, _safe_indexing(X, test), response)
    sw_test = None if sample_weight is None else sample_weight[test]
    cal, n_unknown = _fit_calibrator(calibrator, logits, y[test], np.asarray(est.classes_), sw_test)
    return est, cal, n_unknown


def _out_of_fold_logits(estimator, X, y, train, test, sample_weight, fit_weight, response):
    """One fold of out-of-fold prediction: the estimator's classes and its logits on ``test``."""
    est = _fit_estimator(estimator, X, y, train, sample_weight if fit_weight else None)
    return np.asarray(est.classes_), _logits(est, _safe_indexing(X, test), response)


class CalibratedClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier with a precal calibrator, cross-fitted so calibration data is never training data.

    The data passed to ``fit`` is split by ``cv``. With ``ensemble=True``, for each split a
    clone of ``estimator`` is fitted on the training part, its logits on the held-out part
    (see :class:`LogitTransformer` for ``method``) fit a clone of ``calibrator``, and
    predictions average the probabilities of these ``n_splits`` (estimator, calibrator)
    pairs. With ``ensemble=False``, the out-of-fold logits of all samples (each from the
    estimator not trained on it) fit one calibrator, and one estimator is refitted on all
    the data. This is the cross-validation scheme of Platt (1999) and Zadrozny and Elkan
    (2002), as in scikit-learn's ``CalibratedClassifierCV``, with any precal calibrator,
    temperature scaling (Guo et al., 2017) by default.

    Parameters
    ----------
    estimator : classifier
        A scikit-learn classifier (or Pipeline) with ``decision_function``,
        ``predict_log_proba`` or ``predict_proba``. Wrap an already fitted one in
        :class:`sklearn.frozen.FrozenEstimator` (or pass ``cv="prefit"``).
    calibrator : precal calibrator, default=None
        A :class:`~precal.calibration.BaseLogitCalibrator` instance, cloned for every fit;
        ``None`` means ``TemperatureScaling()``. Pass it explicitly to grid-search its
        parameters (``calibrator__max_iter``) or the calibrator itself (``calibrator``).
    cv : int, cross-validation splitter, iterable of (train, test) or "prefit", default=5
        - int ``>= 2``: that many folds, ``StratifiedKFold`` (no shuffling) as
          :func:`sklearn.model_selection.check_cv` chooses for classifiers;
        - a splitter (``KFold(5, shuffle=True, random_state=0)``, ``GroupKFold`` needs
          groups and is not supported) or an iterable of ``(train, test)`` index arrays;
        - ``"prefit"``: ``estimator`` is already fitted and used as it is; the calibrator is
          fitted on its logits of all the data passed to ``fit``. Equivalent to
          ``CalibratedClassifier(FrozenEstimator(estimator), ensemble=False)``, the
          scikit-learn way, which also works.
    ensemble : bool or "auto", default="auto"
        ``True``: one (estimator, calibrator) pair per split, probabilities averaged.
        ``False``: one calibrator on the out-of-fold logits, one estimator refitted on all
        data; the test parts of the splits must then partition the samples (as KFold's do).
        ``"auto"``: ``False`` for a :class:`~sklearn.frozen.FrozenEstimator` (its splits would
        hold copies of one model, each calibrated on a fraction of the data), else ``True``
        (as scikit-learn's ``CalibratedClassifierCV``). Ignored with ``cv="prefit"``.
    method : {"auto", "decision_function", "log_proba"}, default="auto"
        Which estimator output gives the logits; see :class:`LogitTransformer`.
    n_jobs : int, default=None
        Number of jobs fitting the splits in parallel with :class:`joblib.Parallel` (so any
        joblib backend, dask or ray included, applies via ``joblib.parallel_config``).
        ``None`` means 1 unless in a joblib context; ``-1`` all processors.

    Attributes
    ----------
    calibrated_pairs_ : list of (estimator, calibrator)
        The fitted pairs: ``n_splits`` with ``ensemble=True``, one otherwise. Each calibrator
        works in its estimator's class space: its ``classes_`` are
        ``0..len(estimator.classes_) - 1``, the positions in ``estimator.classes_``.
    classes_ : ndarray of shape (n_classes,)
        The labels of ``y`` (sorted; strings work), together with any class a prefit
        estimator knows that ``y`` lacks.
    n_features_in_ : int
        Number of features of ``X`` (when the estimator records it).
    feature_names_in_ : ndarray of str
        Names of the features of ``X`` (when the estimator records them).
    method_ : str
        The estimator method that gives the logits (see :class:`LogitTransformer`).
    ensemble_ : bool
        Whether the pairs form an ensemble (``ensemble="auto"`` resolved).

    See Also
    --------
    LogitTransformer : a classifier's logits as a transformer.
    sklearn.calibration.CalibratedClassifierCV : the same scheme with scikit-learn's calibrators.

    Notes
    -----
    **Classes missing from a split.** A class can be absent from a training part (a class
    with fewer samples than folds, or a splitter that does not stratify). The estimator of
    that split then has fewer classes than ``classes_``; its calibrator is fitted in the
    estimator's own class space and leaves out the held-out samples of classes the estimator
    does not know (their logits carry no information about them), with a warning. In
    predictions such a pair gives probability 0 (log-probability ``-inf``) to the classes it
    lacks, and the ensemble average gets them from the other pairs, exactly as the mean of
    the pairs' probabilities should. With ``ensemble=False``, folds whose estimator lacks a
    class are left out of the calibrator's fit entirely (warning), so the calibrator only
    sees genuine logits in the final estimator's class space; if every fold lacks one,
    ``fit`` raises. A class absent from a held-out part only (not from training) needs no
    special handling: calibrators keep the estimator's columns.

    **Outputs.** ``predict_proba`` is the mean of the pairs' calibrated probabilities,
    ``p(x) = (1/m) sum_j softmax(g_j(z_j(x)))``; ``predict_log_proba`` is its logarithm,
    computed in log space (``logaddexp`` over the pairs), and ``decision_function`` is the
    same log-probabilities, ``(n_samples, n_classes)``, so ``softmax(decision_function(X))
    == predict_proba(X)``; for binary problems it is the log-odds of ``classes_[1]``,
    ``(n_samples,)``, as for scikit-learn classifiers. ``predict`` is the most probable
    class, and ``score`` is accuracy (inherited from ``ClassifierMixin``, unlike precal
    calibrators' mean log-likelihood); use ``scoring="neg_log_loss"`` to select by
    calibration.

    **Sample weights** go to each calibrator and, when its ``fit`` accepts
    ``sample_weight``, to the estimator (otherwise a warning: a Pipeline's ``fit`` does not
    declare it). Other fit parameters and metadata routing are not supported.

    References
    ----------
    .. [1] J. Platt, "Probabilistic outputs for support vector machines and comparisons to
       regularized likelihood methods", Advances in Large Margin Classifiers, MIT Press, 1999.
    .. [2] B. Zadrozny and C. Elkan, "Transforming classifier scores into accurate multiclass
       probability estimates", KDD 2002. doi:10.1145/775047.775151
    .. [3] C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On calibration of modern neural
       networks", ICML 2017. arXiv:1706.04599

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from precal import TemperatureScaling
    >>> from precal.calibration.classifier import CalibratedClassifier
    >>> X, y = make_classification(n_samples=300, n_classes=3, n_informative=4, random_state=0)
    >>> clf = CalibratedClassifier(LogisticRegression(), TemperatureScaling(), cv=3).fit(X, y)
    >>> len(clf.calibrated_pairs_), clf.predict_proba(X).shape
    (3, (300, 3))
    >>> bool(abs(clf.predict_proba(X).sum(axis=1) - 1).max() < 1e-12)
    True
    """

    def __init__(
        self,
        estimator: Any,
        calibrator: BaseLogitCalibrator | None = None,
        *,
        cv: Any = 5,
        ensemble: bool | str = "auto",
        method: str = "auto",
        n_jobs: int | None = None,
    ) -> None:
        self.estimator = estimator
        self.calibrator = calibrator
        self.cv = cv
        self.ensemble = ensemble
        self.method = method
        self.n_jobs = n_jobs

    # ---------------------------------------------------------------- validation
    def _check_params(self) -> tuple[BaseLogitCalibrator, str, bool]:
        name = type(self).__name__
        _check_estimator(self.estimator, name)
        calibrator = self.calibrator
        if calibrator is None:
            from .temperature import TemperatureScaling

            calibrator = TemperatureScaling()
        elif not isinstance(calibrator, BaseLogitCalibrator):
            raise TypeError(
                f"calibrator of {name} must be a precal calibrator (a BaseLogitCalibrator instance such as "
                f"TemperatureScaling() or PACSCalibrator()) or None, got {type(calibrator).__name__} ({calibrator!r})."
            )
        cv = self.cv
        if isinstance(cv, str):
            if cv != "prefit":
                raise ValueError(f"cv of {name} must be an int >= 2, a splitter, an iterable or 'prefit', got {cv!r}.")
        elif isinstance(cv, bool) or (isinstance(cv, numbers.Integral) and cv < 2):
            raise ValueError(f"cv of {name} as an int is the number of folds and must be >= 2, got {cv!r}.")
        if not (isinstance(self.ensemble, (bool, np.bool_)) or self.ensemble == "auto"):
            raise ValueError(f"ensemble of {name} must be True, False or 'auto', got {self.ensemble!r}.")
        ensemble = (
            not isinstance(self.estimator, FrozenEstimator) if self.ensemble == "auto" else bool(self.ensemble)
        )
        response = _resolve_method(self.estimator, self.method, name)
        return calibrator, response, ensemble

    # ----------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> CalibratedClassifier:
        """Fit the estimator(s) and calibrator(s) by cross-fitting.

        Parameters
        ----------
        X : array-like
            Training data, as the estimator accepts it (arrays, DataFrames, lists of texts
            for a text Pipeline, sparse matrices).
        y : array-like of shape (n_samples,)
            Class labels (any type: integers, strings, ...).
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to every calibrator fit and, if supported, to every estimator fit.

        Returns
        -------
        self

        Raises
        ------
        TypeError
            If ``estimator`` has no ``fit`` or no logit-giving method, or ``calibrator`` is
            not a precal calibrator.
        ValueError
            Bad ``cv``, ``ensemble`` or ``method``; fewer than 2 classes in ``y``;
            ``ensemble=False`` with splits whose test parts do not partition the samples.
        """
        calibrator, response, ensemble = self._check_params()
        X, y = indexable(X, y)
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        n_samples = len(y)
        sample_weight = check_sample_weight(sample_weight, n_samples)
        labels = np.unique(y)
        if len(labels) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y; y holds 1 class ({labels.tolist()!r})."
            )
        prefit = isinstance(self.cv, str) and self.cv == "prefit"
        frozen = prefit or isinstance(self.estimator, FrozenEstimator)
        fit_weight = sample_weight is not None and has_fit_parameter(self.estimator, "sample_weight")
        if sample_weight is not None and not fit_weight and not frozen:
            warnings.warn(
                f"{type(self.estimator).__name__}.fit does not declare sample_weight, so the sample weights are "
                "used by the calibrator only.",
                UserWarning,
                stacklevel=2,
            )
        self.method_ = response

        if prefit:
            check_is_fitted(self.estimator)
            self.ensemble_ = False
            logits = _logits(self.estimator, X, response)
            cal, n_unknown = _fit_calibrator(calibrator, logits, y, np.asarray(self.estimator.classes_), sample_weight)
            self._warn_unknown([(None, self.estimator.classes_, n_unknown)], labels)
            self.calibrated_pairs_ = [(self.estimator, cal)]
        else:
            splits = [(np.asarray(tr), np.asarray(te)) for tr, te in check_cv(self.cv, y, classifier=True).split(X, y)]
            self.ensemble_ = ensemble
            parallel = Parallel(n_jobs=self.n_jobs)
            if ensemble:
                results = parallel(
                    delayed(_fit_pair)(self.estimator, calibrator, X, y, tr, te, sample_weight, fit_weight, response)
                    for tr, te in splits
                )
                self._warn_unknown([(i, est.classes_, n) for i, (est, _, n) in enumerate(results)], labels)
                self.calibrated_pairs_ = [(est, cal) for est, cal, _ in results]
            else:
                self.calibrated_pairs_ = [
                    self._fit_out_of_fold(parallel, calibrator, X, y, splits, sample_weight, fit_weight, response)
                ]

        try:
            known = [np.asarray(est.classes_) for est, _ in self.calibrated_pairs_]
            self.classes_ = np.unique(np.concatenate([labels, *known]))
        except TypeError as exc:
            raise ValueError(f"The labels of y and the estimator's classes_ have incomparable types: {exc}") from exc
        first = self.calibrated_pairs_[0][0]
        for attr in ("n_features_in_", "feature_names_in_"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))
        return self

    def _fit_out_of_fold(self, parallel, calibrator, X, y, splits, sample_weight, fit_weight, response):
        n_samples = len(y)
        counts = np.zeros(n_samples, dtype=np.int64)
        for _, te in splits:
            np.add.at(counts, te, 1)
        if not (counts == 1).all():
            raise ValueError(
                "ensemble=False needs splits whose test parts partition the samples (every sample held out "
                f"exactly once, as KFold's are); {int((counts != 1).sum())} sample(s) are held out "
                "never or more than once. Use ensemble=True with this cv."
            )
        jobs = [
            delayed(_out_of_fold_logits)(self.estimator, X, y, tr, te, sample_weight, fit_weight, response)
            for tr, te in splits
        ]
        jobs.append(delayed(_fit_estimator)(self.estimator, X, y, None, sample_weight if fit_weight else None))
        *folds, final = parallel(jobs)
        final_classes = np.asarray(final.classes_)
        kept = np.zeros(n_samples, dtype=bool)
        oof = None
        lacking = []
        for i, ((fold_classes, logits), (_, te)) in enumerate(zip(folds, splits)):
            if not np.array_equal(fold_classes, final_classes):
                lacking.append((i, np.setdiff1d(final_classes, fold_classes).tolist(), len(te)))
                continue
            if oof is None:
                oof = np.empty((n_samples, logits.shape[1]), dtype=np.float64)
            oof[te] = logits
            kept[te] = True
        if lacking:
            desc = "; ".join(f"fold {i} lacks {cls!r} ({n} samples)" for i, cls, n in lacking)
            if oof is None:
                raise ValueError(
                    "With ensemble=False every fold's estimator lacks a class, so no out-of-fold logits are left to "
                    f"fit the calibrator ({desc}). Use ensemble=True or a stratified cv with fewer folds."
                )
            warnings.warn(
                "Out-of-fold logits of folds whose estimator was trained without some class are left out of the "
                f"calibrator's fit ({desc}).",
                UserWarning,
                stacklevel=3,
            )
        sw = None if sample_weight is None else sample_weight[kept]
        cal, n_unknown = _fit_calibrator(calibrator, oof[kept], y[kept], final_classes, sw)
        self._warn_unknown([(None, final_classes, n_unknown)], np.unique(y))
        return final, cal

    @staticmethod
    def _warn_unknown(per_pair: list[tuple[Any, Any, int]], labels: np.ndarray) -> None:
        notes = []
        for i, est_classes, n_unknown in per_pair:
            if n_unknown:
                lacking = np.setdiff1d(labels, np.asarray(est_classes)).tolist()
                where = "the estimator" if i is None else f"fold {i}'s estimator"
                notes.append(f"{where} lacks class(es) {lacking!r}: {n_unknown} held-out sample(s) left out")
        if notes:
            warnings.warn(
                "Some calibration samples belong to classes their estimator was not trained on; they are left "
                "out of that calibrator's fit, and that pair gives those classes probability 0 ("
                + "; ".join(notes)
                + ").",
                UserWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------- predict
    def _pair_log_proba(self, estimator: Any, calibrator: BaseLogitCalibrator, X: Any) -> np.ndarray:
        """Calibrated log-probabilities of one pair on the global ``classes_`` (``-inf`` where it lacks a class)."""
        logp = calibrator.predict_log_proba(_logits(estimator, X, self.method_))
        est_classes = np.asarray(estimator.classes_)
        if np.array_equal(est_classes, self.classes_):
            return logp
        cols = np.searchsorted(self.classes_, est_classes)
        out = np.full((logp.shape[0], len(self.classes_)), -np.inf)
        out[:, cols] = logp
        return out

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of the averaged calibrated probabilities, ``(n_samples, n_classes)``, computed in log space."""
        check_is_fitted(self)
        acc = None
        for estimator, calibrator in self.calibrated_pairs_:
            logp = self._pair_log_proba(estimator, calibrator, X)
            acc = logp if acc is None else np.logaddexp(acc, logp)
        return acc - np.log(len(self.calibrated_pairs_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities: the mean over the pairs, ``(n_samples, n_classes)``; rows sum to 1."""
        return np.exp(self.predict_log_proba(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """Calibrated logits: ``predict_log_proba(X)``, or for binary the log-odds of ``classes_[1]``, ``(n_samples,)``."""
        logp = self.predict_log_proba(X)
        if len(self.classes_) == 2:
            return logp[:, 1] - logp[:, 0]
        return logp

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class under the calibrated (averaged) probabilities."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_log_proba(X), axis=1)]

    def __sklearn_tags__(self):  # noqa: D105
        return _sklearn_tags_from(super().__sklearn_tags__(), self.estimator)

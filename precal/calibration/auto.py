"""A recommended default: choose a calibrator by cross-validation, never worse than TS by construction."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold

from .._numerics import is_tensor, log_softmax, to_numpy
from .._validation import check_option
from ._base import BaseLogitCalibrator, check_state_keys
from ._crossval import check_cv, cv_splits
from .dirichlet import DirichletCalibrator
from .ensemble_temperature import EnsembleTemperatureScaling
from .matrix_scaling import StructuredMatrixScaling
from .pacs import PACSCalibrator
from .temperature import TemperatureScaling
from .top_label import TopLabelCalibrator

__all__ = ["AutoCalibrator", "accuracy_gain_p", "pooled_ece_standard_error", "CANDIDATES", "DEFAULT_CANDIDATES",
           "MATRIX_FAMILY", "REFERENCE"]

#: The candidates an :class:`AutoCalibrator` knows by name.
CANDIDATES: dict[str, Callable[[], BaseLogitCalibrator]] = {
    "temperature": TemperatureScaling,
    "ets": EnsembleTemperatureScaling,
    "top_label_isotonic": lambda: TopLabelCalibrator(method="isotonic"),
    "top_label_spline": lambda: TopLabelCalibrator(method="spline"),
    "top_label_histogram": lambda: TopLabelCalibrator(method="histogram"),
    "top_label_isotonic_raw": lambda: TopLabelCalibrator(method="isotonic", base=None),
    "top_label_spline_raw": lambda: TopLabelCalibrator(method="spline", base=None),
    "matrix_scaling": StructuredMatrixScaling,
    "top_label_isotonic_matrix": lambda: TopLabelCalibrator(method="isotonic", base="matrix_scaling"),
    "top_label_spline_matrix": lambda: TopLabelCalibrator(method="spline", base="matrix_scaling"),
    "dirichlet": DirichletCalibrator,
    "pacs": PACSCalibrator,
}
#: The candidates tried by default (``candidates=None``): the first six keep the model's argmax;
#: the matrix-scaling family may move it (chosen only under the stricter rule of the Notes).
DEFAULT_CANDIDATES = ("temperature", "ets", "top_label_isotonic", "top_label_spline", "top_label_isotonic_raw",
                      "top_label_spline_raw", "matrix_scaling", "top_label_isotonic_matrix", "top_label_spline_matrix")
#: Candidates built on a map that can change predictions, by name: the name of that map (the
#: family's own reference, added to the candidates when missing).
MATRIX_FAMILY = {"matrix_scaling": "matrix_scaling", "top_label_isotonic_matrix": "matrix_scaling",
                 "top_label_spline_matrix": "matrix_scaling"}
#: The reference every other candidate must beat; always a candidate.
REFERENCE = "temperature"
METRICS = ("nll", "ece")
#: One-sided level of McNemar's exact test (:func:`accuracy_gain_p`) by which the matrix-scaling map's
#: out-of-fold accuracy gain over TS must be significant before it may move predictions.
ACCURACY_GAIN_LEVEL = 0.05
#: Equal-width bins of the cross-validated ECE (as :func:`precal.metrics.expected_calibration_error`).
ECE_BINS = 15
#: Bootstrap resamples of the out-of-fold rows behind the standard error of a candidate's pooled
#: ECE difference to TS (:func:`pooled_ece_standard_error`).
ECE_BOOTSTRAP = 200


def _top_label(log_proba: Any, y_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` of the top label of calibrated log-probabilities."""
    log_proba = to_numpy(log_proba)
    return np.exp(log_proba.max(axis=1)), (log_proba.argmax(axis=1) == y_idx).astype(np.float64)


def _binned_ece(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray) -> float:
    """Weighted top-label ECE with :data:`ECE_BINS` equal-width bins (as the public metric)."""
    from ..metrics.calibration import _uniform_bin_index

    idx = _uniform_bin_index(conf, np.linspace(0.0, 1.0, ECE_BINS + 1))
    gap = np.bincount(idx, weights=weight * (conf - correct), minlength=ECE_BINS)
    return float(np.abs(gap).sum() / weight.sum())


def pooled_ece_standard_error(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray,
                              rng: np.random.Generator, n_boot: int = ECE_BOOTSTRAP) -> np.ndarray:
    r"""Bootstrap standard error of each candidate's pooled ECE minus the reference's (row 0).

    ``conf`` and ``correct`` are ``(candidates, n)`` out-of-fold top-label confidences and
    correctness on the same rows, ``weight`` their sample weights. Each of ``n_boot``
    resamples gives every row a Poisson(1) count that multiplies its weight (the Poisson
    bootstrap: the multinomial resample of ``n`` rows with independent counts, so it can be
    drawn block by block in bounded memory), scores every candidate's :data:`ECE_BINS`-bin
    ECE on it and takes the differences to row 0. The result is their standard deviation
    (0 for the reference). The resample is the same for every candidate, so the noise the
    candidates share cancels in the difference.

    References
    ----------
    B. Efron, R. J. Tibshirani. "An Introduction to the Bootstrap". Chapman & Hall, 1993,
    ch. 6 (bootstrap standard errors). J. A. Hanley, B. MacGibbon. "Creating non-parametric
    bootstrap samples using Poisson frequencies". Computer Methods and Programs in
    Biomedicine 83(1), 2006.
    """
    from ..metrics.calibration import _uniform_bin_index

    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2 (a standard deviation needs two resamples), got {n_boot}.")
    n_candidates, n = conf.shape
    top = float(np.max(weight)) if n else 0.0
    weight = weight / top if top > 0 else weight  # the ECE ignores the weights' scale; this keeps sums finite
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    gaps = np.zeros((n_candidates, n_boot, ECE_BINS))
    total = np.zeros(n_boot)
    for lo in range(0, n, _BOOTSTRAP_BLOCK):
        rows = slice(lo, min(lo + _BOOTSTRAP_BLOCK, n))
        resampled = rng.poisson(1.0, size=(n_boot, rows.stop - lo)) * weight[rows]  # (B, rows)
        total += resampled.sum(axis=1)
        for c in range(n_candidates):
            onehot = np.eye(ECE_BINS)[_uniform_bin_index(conf[c, rows], edges)]  # (rows, bins)
            gaps[c] += resampled @ (onehot * (conf[c, rows] - correct[c, rows])[:, None])
    eces = np.abs(gaps).sum(axis=2) / np.where(total > 0, total, 1.0)  # (candidates, B)
    return (eces - eces[0]).std(axis=1, ddof=1)


#: Rows per block of :func:`pooled_ece_standard_error` (its Poisson counts and resample
#: weights take ``ECE_BOOTSTRAP x block`` numbers each: about 50 MB together).
_BOOTSTRAP_BLOCK = 16384


def _fold_scores(log_proba: Any, y_idx: np.ndarray, weight: np.ndarray, metric: str) -> tuple[float, float]:
    """``(metric, accuracy)`` of held-out calibrated log-probabilities, weighted by ``weight``."""
    log_proba = to_numpy(log_proba)
    conf, correct = _top_label(log_proba, y_idx)
    accuracy = float(np.average(correct, weights=weight))
    if metric == "nll":
        return float(-np.average(log_proba[np.arange(len(y_idx)), y_idx], weights=weight)), accuracy
    return _binned_ece(conf, correct, weight), accuracy


class AutoCalibrator(BaseLogitCalibrator):
    r"""Choose among calibrators by cross-validation; fall back to temperature scaling.

    Every candidate is fitted and scored on the same ``cv`` stratified folds of the
    calibration data (the same splits for all, so scores are paired). Temperature scaling
    is always a candidate and the reference. With ``d_f = score_f(candidate) - score_f(TS)``
    the paired fold differences of a score (lower is better) and ``se(d) = sd(d) /
    sqrt(cv)`` their standard error, a candidate other than TS is *eligible* if

    1. it beats TS on the chosen ``metric``. For ``"nll"``, by more than the noise of that
       comparison: ``mean(d) + se(d) < 0`` (the one-standard-error rule, in favour of TS).
       For ``"ece"``, the score is the *pooled* cross-validated ECE, that of the
       out-of-fold predictions (each calibration row scored once, by the fit that did not
       see it) over all ``n`` rows, and it must be below TS's by more than the bootstrap
       standard error of that difference: ``pooled + se_boot(pooled - pooled_TS) <
       pooled_TS`` (:func:`pooled_ece_standard_error`, paired resamples of the
       out-of-fold rows). The binned plug-in ECE is biased upward by the sampling noise of
       each bin's accuracy, by an amount that shrinks with the number of rows and differs
       between sharper and smoother maps; averaging the ECEs of ``cv`` folds of ``n/cv``
       rows keeps that larger bias and noise, and a one-standard-error margin over the
       fold scores sent the choice back to TS where top-label recalibration was clearly
       better on held-out data (measured in ``benchmarks/quality_bar.py``). Without any
       margin, a few hundred rows let a top-label map win the pooled ECE by chance and
       then calibrate new data worse than TS; the bootstrap margin is the noise of the
       pooled comparison itself (``benchmarks/study_auto_small.py``). It resamples the
       out-of-fold rows with the fold fits held fixed, so it leaves out the variance of
       refitting: a margin, not a test;
    2. its NLL is not worse than TS's by more than one standard error:
       ``mean(d_nll) <= se(d_nll)``. NLL is a proper scoring rule, so this guard stops a
       map that buys a lower binned ECE with worse probabilities (e.g. top-label
       isotonic regression of the raw softmax of a network whose non-top classes TS would
       have fixed); with ``metric="nll"`` it is implied by 1; and
    3. its mean fold accuracy is not below TS's (this only matters for maps that move
       predictions, such as matrix scaling or Dirichlet calibration).

    The **matrix-scaling family** (:data:`MATRIX_FAMILY`: :class:`StructuredMatrixScaling`
    and top-label recalibration on top of it) can change the predicted class, so with
    ``metric="ece"`` it is judged differently: stricter on NLL and accuracy, and without the
    bootstrap margin on the ECE. The map itself is eligible only if its NLL beats
    TS's by more than one standard error (``mean(d_nll) + se(d_nll) < 0``), its
    out-of-fold predictions are significantly more accurate than TS's (McNemar's exact test,
    one-sided, at level :data:`ACCURACY_GAIN_LEVEL`, :func:`accuracy_gain_p`: moving
    predictions must pay off, with evidence) and its pooled ECE is below TS's; a top-label
    recalibration of it only if
    the map is eligible and the recalibration lowers the map's pooled ECE, keeps its accuracy
    and costs at most one standard error of NLL against the map. So a map that moves
    predictions is chosen only where it is clearly more accurate than TS, clearly better on
    a proper score and calibrated at least as well; that is where low-precision models lose accuracy that an
    affine map of the logits recovers (``benchmarks/quality_bar.py``: +2-3 accuracy points
    on an int4 ResNet-20).

    The eligible candidate with the lowest mean score is chosen (TS if none is eligible)
    and refitted on all the data; prediction, ``to_torch()`` and persistence delegate to
    it.

    The default (``metric="ece"``, :data:`DEFAULT_CANDIDATES`) is what issue 14's quality
    bar asks of a recommended calibrator: the top-label ECE of the best of TS, ensemble TS
    and top-label recalibration, at no cost in NLL or accuracy against TS.
    ``benchmarks/quality_bar.py`` measures it against that bar on real and emulated logits
    at every precision (``docs/benchmarks-quality.md``).

    Parameters
    ----------
    candidates : list or None, default=None
        Names from :data:`CANDIDATES` (``"temperature"``, ``"ets"``,
        ``"top_label_isotonic"``, ``"top_label_spline"``, ``"top_label_histogram"`` (on a
        TS base), ``"top_label_isotonic_raw"``, ``"top_label_spline_raw"`` (on the raw
        softmax, ``base=None``), ``"matrix_scaling"``, ``"top_label_isotonic_matrix"``,
        ``"top_label_spline_matrix"`` (on a :class:`StructuredMatrixScaling` base),
        ``"dirichlet"``, ``"pacs"``) or ``(name, calibrator)`` pairs with unfitted precal
        calibrators. ``None`` tries :data:`DEFAULT_CANDIDATES`: temperature scaling,
        ensemble temperature scaling, top-label isotonic and spline recalibration on a TS
        base and on the raw softmax (all keep the model's predicted class), and structured
        matrix scaling with and without top-label recalibration (under the stricter rule
        above). Dirichlet calibration is not a default: its internal cross-validation costs
        tens of Newton fits per candidate fit, and matrix scaling covers the same ground;
        name it to try it. ``"temperature"`` is added when missing (a pair named
        ``"temperature"`` must hold a :class:`TemperatureScaling`), and so is
        ``"matrix_scaling"`` when a member of its family is named. Only names keep the
        calibrator JSON-serialisable (``to_dict``).
    metric : {"ece", "nll"}, default="ece"
        The score compared on held-out folds: the top-label ECE with 15 equal-width bins,
        subject to the NLL guard above, or the mean negative log-likelihood (a proper
        scoring rule: it rewards calibration and sharpness together and cannot be gamed
        by a constant prediction; its fold estimates are less noisy than the binned
        ECE's).
    cv : int, cross-validation splitter or iterable of (train, test) index pairs, default=5
        Number of folds (>= 2; stratified, see *Folds* below), or the folds themselves, as
        :class:`DirichletCalibrator`'s ``cv`` takes them (e.g. ``GroupKFold(5)`` with
        groups, via a list of its splits). Only an int keeps the calibrator JSON-serialisable.
    random_state : int or None, default=0
        Seeds the shuffling of the folds and, with ``metric="ece"``, the bootstrap of rule 1
        (a non-negative int); the default makes the choice reproducible. With ``None`` the
        choice can change from one fit to the next, even with explicit ``cv`` folds.

    Attributes
    ----------
    best_name_ : str
        Name of the chosen candidate.
    best_calibrator_ : BaseLogitCalibrator
        The chosen candidate, refitted on all the data.
    cv_results_ : dict
        One entry per candidate (lists in candidate order): ``"candidate"``,
        ``"mean_score"`` (for ``"ece"``: the pooled out-of-fold ECE), ``"std_score"``,
        ``"split<f>_score"`` (of ``metric``, per fold; numbered over the folds kept, see
        *Folds* below),
        ``"mean_difference"`` and ``"standard_error"`` (of its paired differences to TS),
        ``"pooled_standard_error"`` (``metric="ece"`` only: the bootstrap standard error of
        its pooled ECE minus TS's),
        ``"mean_nll_difference"`` and ``"nll_standard_error"`` (the same for the NLL),
        ``"mean_accuracy"`` and ``"eligible"``; and ``"metric"``.
    classes_, n_features_in_
        As every calibrator.

    Notes
    -----
    **In what sense it is never worse than TS.** By construction, the chosen calibrator's
    cross-validated score on the calibration data is TS's or better (by more than one
    standard error: of the paired fold differences for the NLL, of the bootstrap of the
    pooled difference for the ECE, except for the matrix-scaling family, whose ECE need
    only be lower since its NLL and accuracy gains must be significant), its cross-validated NLL is at most one
    standard error above TS's, and its cross-validated accuracy is not below TS's. That is
    a statement about the estimates on the calibration data: on new data a chosen
    candidate can still do worse than TS would have (the margins make that unlikely, not
    impossible). With ``metric="nll"`` nothing constrains the ECE.

    **Folds.** ``StratifiedKFold(cv, shuffle=True, random_state=random_state)`` when every
    class present has at least ``cv`` samples, else ``KFold`` with the same shuffling.
    Warnings of the candidates' fits on the folds (e.g. Dirichlet's ``ConvergenceWarning``)
    are silenced; those of the final refit are not. Sample weights are used in every fit
    and in the fold scores; because folds are drawn over rows, a weighted fit and a fit
    on repeated rows may see different folds and choose differently (and, with
    ``metric="ece"``, different bootstrap resamples: a row of weight 2 draws twice one
    Poisson count, two copies of it two counts). Folds without positive
    weight on their training or held-out rows are left out (their held-out rows are not
    scored); fewer than two left is an error.

    **Cost.** ``cv + 1`` fits of the chosen candidate and ``cv`` of each other, on
    ``(cv - 1)/cv`` of the data: with the default candidates about 30 one-dimensional or
    isotonic/spline fits and 15 matrix-scaling fits (one L-BFGS-B problem each, full up to
    100 classes, diagonal above; see :class:`StructuredMatrixScaling`); and, for
    ``metric="ece"``, :data:`ECE_BOOTSTRAP` resamples of the out-of-fold confidences
    (about 40 ms at 5 000 rows and nine candidates, quiet machine).

    References
    ----------
    M. Stone. "Cross-validatory choice and assessment of statistical predictions". JRSS B
    36(2), 1974. T. Hastie, R. Tibshirani, J. Friedman. "The Elements of Statistical
    Learning", 2nd ed., 2009, Sec. 7.10 (the one-standard-error rule, applied here in
    favour of the simpler reference). C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. "On
    Calibration of Modern Neural Networks". ICML 2017 (temperature scaling). T. G. Dietterich.
    "Approximate statistical tests for comparing supervised classification learning
    algorithms". Neural Computation 10(7), 1998 (McNemar's test). J. Zhang,
    B. Kailkhura, T. Y.-J. Han. "Mix-n-Match: Ensemble and Compositional Methods for
    Uncertainty Calibration in Deep Learning". ICML 2020 (ETS). C. Gupta, A. Ramdas.
    "Top-label calibration and multiclass-to-binary reductions". ICLR 2022. E. Berta,
    D. Holzmüller, M. I. Jordan, F. Bach. "Structured matrix scaling for multi-class
    calibration". AISTATS 2026.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration import AutoCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=1000)
    >>> logits = 3.0 * (np.eye(4)[y] + rng.normal(size=(1000, 4)))
    >>> auto = AutoCalibrator(candidates=["temperature", "ets"]).fit(logits, y)
    >>> auto.best_name_ in ("temperature", "ets")
    True
    >>> auto.cv_results_["candidate"]
    ['temperature', 'ets']
    """

    _state_keys = ("best_name_", "best_calibrator_", "cv_results_")
    _device_native = True
    #: Rule 1's bootstrap margin for ``metric="ece"``; ``False`` only in the ablation of
    #: ``benchmarks/study_auto_small.py`` (any pooled ECE below TS's then counts).
    _ece_margin = True

    def __init__(
        self,
        *,
        candidates: list | None = None,
        metric: str = "ece",
        cv: int = 5,
        random_state: int | None = 0,
    ) -> None:
        self.candidates = candidates
        self.metric = metric
        self.cv = cv
        self.random_state = random_state

    # ------------------------------------------------------------ parameters
    def _candidate_list(self) -> list[tuple[str, BaseLogitCalibrator]]:
        """``(name, unfitted calibrator)`` pairs, TS first; raises on unknown or malformed entries."""
        specs = DEFAULT_CANDIDATES if self.candidates is None else self.candidates
        if isinstance(specs, (str, bytes)) or not hasattr(specs, "__iter__"):
            raise ValueError(f"candidates must be a list of names or (name, calibrator) pairs, got {specs!r}.")
        pairs: list[tuple[str, BaseLogitCalibrator]] = []
        for spec in specs:
            if isinstance(spec, str):
                if spec not in CANDIDATES:
                    raise ValueError(f"Unknown candidate {spec!r} in candidates; known: {sorted(CANDIDATES)}.")
                pairs.append((spec, CANDIDATES[spec]()))
            elif (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)
                  and isinstance(spec[1], BaseLogitCalibrator)):
                pairs.append((spec[0], clone(spec[1])))
            else:
                raise ValueError(
                    f"candidates entries must be names or (name, precal calibrator) pairs, got {spec!r}."
                )
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates names must be unique, got {names}.")
        for base in dict.fromkeys(MATRIX_FAMILY[name] for name in names if name in MATRIX_FAMILY):
            if base not in names:  # a family is judged against its own map
                pairs.append((base, CANDIDATES[base]()))
        if REFERENCE not in names:
            pairs.insert(0, (REFERENCE, TemperatureScaling()))
        reference = dict(pairs)[REFERENCE]
        if not isinstance(reference, TemperatureScaling):
            raise ValueError(f"The candidate named {REFERENCE!r} must be a TemperatureScaling, got {reference!r}.")
        pairs.sort(key=lambda pair: pair[0] != REFERENCE)  # stable: TS first, the rest in order
        return pairs

    def _validate_hyperparameters(self) -> None:
        check_option(self.metric, "metric", METRICS)
        check_cv(self.cv)
        if self.random_state is not None and (
            isinstance(self.random_state, bool) or not isinstance(self.random_state, numbers.Integral)
            or self.random_state < 0
        ):
            raise ValueError(f"random_state must be a non-negative int or None, got {self.random_state!r}.")
        self._candidate_list()

    # ------------------------------------------------------------ fitting
    def _folds(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(y)
        if not isinstance(self.cv, numbers.Integral):  # a splitter or explicit pairs, used as given
            pairs = cv_splits(self.cv, torch.zeros((n, 1)), torch.from_numpy(y))
            return [(train.numpy(), test.numpy()) for train, test in pairs]
        if n < self.cv:
            raise ValueError(
                f"AutoCalibrator with cv={self.cv} needs at least {self.cv} calibration samples, got {n}."
            )
        counts = np.bincount(y)
        if counts[counts > 0].min() >= self.cv:
            splitter: Any = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        else:
            splitter = KFold(self.cv, shuffle=True, random_state=self.random_state)
        return list(splitter.split(np.zeros((n, 1)), y))

    def _fit(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        pairs = self._candidate_list()
        y = to_numpy(y_idx)
        weight = np.ones(len(y)) if sample_weight is None else to_numpy(sample_weight).astype(np.float64)
        folds = [(tr, te) for tr, te in self._folds(y) if weight[tr].sum() > 0 and weight[te].sum() > 0]
        if len(folds) < 2:
            raise ValueError(
                f"AutoCalibrator needs at least 2 of its cv={self.cv} folds with positive sample_weight on both "
                f"their training and held-out rows, got {len(folds)}: too few rows of positive weight "
                f"({int(np.count_nonzero(weight))}). Fit TemperatureScaling instead, or give more rows positive weight."
            )
        scores = np.empty((len(pairs), len(folds)))
        nll = np.empty((len(pairs), len(folds)))
        accuracy = np.empty((len(pairs), len(folds)))
        conf, correct = np.full((2, len(pairs), len(y)), np.nan)  # out of fold; NaN: not held out by any fold
        scored = np.zeros(len(y), dtype=bool)  # rows held out by a fold kept above
        for f, (train, test) in enumerate(folds):
            rows_train = torch.as_tensor(train, device=logits.device)
            rows_test = torch.as_tensor(test, device=logits.device)
            w_train = None if sample_weight is None else sample_weight[rows_train]
            for c, (_, candidate) in enumerate(pairs):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    fitted = clone(candidate).fit(logits[rows_train], y_idx[rows_train], sample_weight=w_train)
                log_proba = log_softmax(_calibrated(fitted, logits[rows_test]))
                scores[c, f], accuracy[c, f] = _fold_scores(log_proba, y[test], weight[test], self.metric)
                nll[c, f] = scores[c, f] if self.metric == "nll" else _fold_scores(
                    log_proba, y[test], weight[test], "nll")[0]
                conf[c, test], correct[c, test] = _top_label(log_proba, y[test])
            scored[test] = True
        conf, correct, held_weight = conf[:, scored], correct[:, scored], weight[scored]
        pooled = pooled_se = None
        if self.metric == "ece":
            pooled = np.array([_binned_ece(conf[c], correct[c], held_weight) for c in range(len(pairs))])
            pooled_se = (pooled_ece_standard_error(conf, correct, held_weight, np.random.default_rng(self.random_state))
                         if self._ece_margin else np.zeros(len(pairs)))
        gain_p = np.array([accuracy_gain_p(correct[c], correct[0], held_weight) for c in range(len(pairs))])
        self.cv_results_ = _summarise(pairs, scores, accuracy, self.metric, nll, pooled, gain_p, pooled_se)
        best = int(np.argmin(np.where(self.cv_results_["eligible"], self.cv_results_["mean_score"], np.inf)))
        self.best_name_ = pairs[best][0]
        self.best_calibrator_ = clone(pairs[best][1]).fit(logits, y_idx, sample_weight=sample_weight)

    # ------------------------------------------------------------ prediction
    def _calibrated_logits(self, logits: torch.Tensor) -> Any:
        return _calibrated(self.best_calibrator_, logits)

    def _torch_map(self) -> torch.nn.Module:
        return self.best_calibrator_._torch_map()

    # ------------------------------------------------------------ persistence
    def _get_state(self) -> dict[str, Any]:
        results = {key: (value.tolist() if isinstance(value, np.ndarray) else value)
                   for key, value in self.cv_results_.items()}
        return {"best_name_": self.best_name_, "best_calibrator_": self.best_calibrator_.to_dict(),
                "cv_results_": results}

    def _set_state(self, state: dict[str, Any]) -> None:
        """Rebuild the winner with :meth:`BaseLogitCalibrator.from_dict` (precal's classes only, no code run)."""
        check_state_keys(state, self._state_keys, "AutoCalibrator")
        for key, kind in (("best_calibrator_", dict), ("cv_results_", dict), ("best_name_", str)):
            value = state[key]
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Calibrator state {key!r} is not finite: {value!r}.")
            if not isinstance(value, kind) or (kind is dict and not value):
                raise ValueError(
                    f"Calibrator state {key!r} must be a {kind.__name__} (of numbers, strings and lists), got {value!r}."
                )
        best = BaseLogitCalibrator.from_dict(state["best_calibrator_"])
        if len(best.classes_) != len(self.classes_):
            raise ValueError("Calibrator state 'best_calibrator_' has a different number of classes.")
        results = _checked_results(state["cv_results_"])
        pairs = dict(self._candidate_list())
        if results["candidate"] != list(pairs):
            raise ValueError(f"Calibrator state 'cv_results_' candidates {results['candidate']} are not those of "
                             f"params['candidates'] {list(pairs)}.")
        if state["best_name_"] not in pairs:
            raise ValueError(f"Calibrator state 'best_name_' {state['best_name_']!r} is not one of the candidates.")
        chosen = pairs[state["best_name_"]]
        if type(best) is not type(chosen) or best.get_params() != chosen.get_params():
            raise ValueError(f"Calibrator state 'best_calibrator_' is not candidate {state['best_name_']!r}: "
                             f"{best!r} instead of {chosen!r}.")
        self.best_name_, self.best_calibrator_, self.cv_results_ = state["best_name_"], best, results


def _calibrated(calibrator: BaseLogitCalibrator, logits: torch.Tensor) -> Any:
    """A fitted calibrator's calibrated logits of validated ``(n, K)`` logits, through its own hook."""
    if calibrator._device_native:
        return calibrator._calibrated_logits(logits)
    return calibrator._calibrated_logits(to_numpy(logits) if is_tensor(logits) else logits)


def accuracy_gain_p(correct: np.ndarray, correct_ref: np.ndarray, weight: np.ndarray) -> float:
    r"""One-sided p-value of McNemar's exact test that a candidate's out-of-fold predictions are more
    accurate than the reference's.

    With ``b`` the rows (counted by their weights, rounded) the candidate gets right and the
    reference wrong, and ``c`` the reverse, ``p = P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``
    (scipy's ``binomtest``): under equal accuracy the discordant rows split evenly. 1.0 when no
    row is discordant. The test Dietterich (1998) recommends for comparing two classifiers on
    one data set; a paired t-test over a few folds of discrete accuracies is too liberal.
    """
    from scipy.stats import binomtest

    b = float(np.sum(weight * ((correct > 0.5) & (correct_ref < 0.5))))
    c = float(np.sum(weight * ((correct < 0.5) & (correct_ref > 0.5))))
    if b + c > _MAX_DISCORDANT:  # counts beyond binomtest's integers: the same proportions at that size
        shrink = _MAX_DISCORDANT / (b + c)  # first, so that no product overflows
        b, c = b * shrink, c * shrink
    b, c = int(round(b)), int(round(c))
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


#: Discordant weight above which :func:`accuracy_gain_p` rescales the counts (weights summing
#: beyond 2**63 overflow scipy's integers, and floats lose integer precision above 2**53; at
#: this size any real gain is significant anyway).
_MAX_DISCORDANT = float(2**53)


def _summarise(pairs: list, scores: np.ndarray, accuracy: np.ndarray, metric: str,
               nll: np.ndarray | None = None, pooled: np.ndarray | None = None,
               gain_p: np.ndarray | None = None, pooled_se: np.ndarray | None = None) -> dict[str, Any]:
    """``cv_results_`` from the ``(candidates, folds)`` tables of the metric, the accuracy and the
    NLL (row 0 is TS; ``nll=None``: the scores are the NLL). ``gain_p``: per candidate, the
    p-value of its out-of-fold accuracy gain over TS (:func:`accuracy_gain_p`); without it no
    member of the matrix family is eligible under ``metric="ece"``.

    ``pooled`` (one per candidate): the ECE of the out-of-fold predictions over all rows. When
    given it is the ``"mean_score"`` and rule 1 is ``pooled + pooled_se < pooled(TS)`` with
    ``pooled_se`` the bootstrap standard error of ``pooled - pooled(TS)``
    (:func:`pooled_ece_standard_error`; 0 when not given); otherwise rule 1 is the
    one-standard-error rule on the fold scores.
    """
    n_folds = scores.shape[1]
    diff = scores - scores[0]
    mean_diff = diff.mean(axis=1)
    se = diff.std(axis=1, ddof=1) / math.sqrt(n_folds)
    nll = scores if nll is None else nll
    nll_diff = nll - nll[0]
    mean_nll_diff = nll_diff.mean(axis=1)
    nll_se = nll_diff.std(axis=1, ddof=1) / math.sqrt(n_folds)
    mean_acc = accuracy.mean(axis=1)
    if pooled is None:
        mean_score, gain = scores.mean(axis=1), mean_diff + se < 0
    else:
        mean_score = np.asarray(pooled, dtype=np.float64)
        margin = np.zeros(len(mean_score)) if pooled_se is None else np.asarray(pooled_se, dtype=np.float64)
        gain = mean_score + margin < mean_score[0]
    eligible = gain & (mean_acc >= mean_acc[0]) & (mean_nll_diff <= nll_se)
    eligible[0] = True
    names = [name for name, _ in pairs]
    if pooled is not None:  # the matrix family under its own rule (see AutoCalibrator's Notes)
        for c, name in enumerate(names):
            base = MATRIX_FAMILY.get(name)
            if base is None:
                continue
            m = names.index(base)
            if c == m:  # the map itself: clearly better NLL, significantly more accurate, pooled ECE not worse
                eligible[c] = bool(mean_nll_diff[c] + nll_se[c] < 0 and gain_p is not None
                                   and gain_p[c] < ACCURACY_GAIN_LEVEL and mean_score[c] < mean_score[0])
                continue
            d = nll[c] - nll[m]  # a recalibration of the map, against the map itself
            eligible[c] = bool(mean_score[c] < mean_score[m] and mean_acc[c] >= mean_acc[m]
                               and d.mean() <= d.std(ddof=1) / math.sqrt(n_folds))
        for c, name in enumerate(names):  # a member only with its admitted map
            if name in MATRIX_FAMILY:
                eligible[c] = bool(eligible[c] and eligible[names.index(MATRIX_FAMILY[name])])
    results: dict[str, Any] = {"metric": metric, "candidate": [name for name, _ in pairs]}
    results["mean_score"] = mean_score
    results["std_score"] = scores.std(axis=1)
    for f in range(n_folds):
        results[f"split{f}_score"] = scores[:, f]
    results["mean_difference"] = mean_diff
    results["standard_error"] = se
    results["mean_nll_difference"] = mean_nll_diff
    results["nll_standard_error"] = nll_se
    if pooled_se is not None:
        results["pooled_standard_error"] = np.asarray(pooled_se, dtype=np.float64)
    results["mean_accuracy"] = mean_acc
    results["eligible"] = eligible
    return results


def _checked_results(data: dict[str, Any]) -> dict[str, Any]:
    """``cv_results_`` read from JSON: known keys, equal lengths, finite numbers; as arrays."""
    if data.get("metric") not in METRICS:
        raise ValueError(f"Calibrator state 'cv_results_' has an unknown metric {data.get('metric')!r}.")
    names = data.get("candidate")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("Calibrator state 'cv_results_' needs a non-empty list of candidate names.")
    out: dict[str, Any] = {"metric": data["metric"], "candidate": list(names)}
    for key, value in data.items():
        if key in ("metric", "candidate"):
            continue
        numeric = key in ("mean_score", "std_score", "mean_difference", "standard_error", "mean_accuracy",
                          "mean_nll_difference", "nll_standard_error", "pooled_standard_error") or (
            key.startswith("split") and key.endswith("_score"))
        if key == "eligible":
            if not isinstance(value, list) or len(value) != len(names) or not all(isinstance(v, bool) for v in value):
                raise ValueError("Calibrator state 'cv_results_' 'eligible' must be one bool per candidate.")
            out[key] = np.array(value)
        elif numeric:
            arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) else None
            if arr is None or arr.shape != (len(names),) or not np.isfinite(arr).all():
                raise ValueError(f"Calibrator state 'cv_results_' {key!r} must be one finite number per candidate.")
            out[key] = arr
        else:
            raise ValueError(f"Calibrator state 'cv_results_' has an unknown key {key!r}.")
    return out

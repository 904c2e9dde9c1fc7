"""Calibration metrics with scikit-learn signatures: ``metric(y_true, y_prob, *, ...)``.

``y_prob`` holds probabilities, shape ``(n_samples, n_classes)`` (binary: ``(n_samples,)``
positive-class probabilities are accepted too), as a numpy array or torch tensor. Nothing
here guesses whether input is logits: values outside ``[0, 1]`` and rows that do not sum
to 1 are refused. ``labels`` says which class each column is, as in
:func:`sklearn.metrics.log_loss`; without it, integer labels in ``0..K-1`` index the
columns directly and other labels must have exactly ``K`` distinct values.

Binning convention (all binned metrics): ``n_bins`` equal-width bins over ``[0, 1]``,
left-closed ``[e_b, e_{b+1})``, the last bin closed ``[e_{B-1}, 1]`` so that a confidence of
exactly 1.0 (common after float16/bfloat16 softmax) lands in the last bin, never in an
extra one. This is numpy's ``histogram`` rule and netcal's; precal's ECE equals netcal's.

Each public function validates its input and calls a private ``_*`` core on validated
arrays (``y_idx`` integer column indices, ``prob`` float32/float64 ``(n, K)``, sums
always accumulated in float64); the bootstrap in
:func:`calibration_error_ci` reuses those cores.

Memory-mapped input: the cores read ``prob`` in blocks of rows and keep only sufficient
statistics (per-bin counts and sums, per-sample top-label confidence and correctness, which
the equal-mass bins of the ACE sort) plus ``n``-sized vectors. A 2-D ``numpy.memmap`` of
probabilities (``np.load(path, mmap_mode="r")``) is validated and read block by block from
its mapping (:mod:`precal._chunks`; never re-opened by path, so a file replaced or deleted
after mapping does not change the result), so every metric except :func:`calibration_error_ci`
(whose resamples gather rows) works on files larger than memory, with the in-memory
result up to float64 summation order. Probabilities of a large logits file come from a
calibrator's ``predict_proba`` applied block by block, e.g. into an ``np.lib.format.open_memmap``.

Dask arrays: the ECE, MCE, class-wise ECE, Brier score and NLL reduce each chunk to the
statistics vector of :class:`~precal.metrics.CalibrationState` (same per-block code) and
sum the vectors; the ACE gathers the top-label confidence and correctness (two float64 per
sample), and :func:`calibration_error_ci` the one or two numbers per sample its resamples
need (then resamples them as in memory). Dask is imported only for dask input; see
:mod:`precal._dask`.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
from sklearn.utils import check_random_state

from .._chunks import row_blocks, rows_per_block
from .._dask import is_dask_array
from .._numerics import as_tensor
from .._threads import thread_limits, threaded
from .._validation import check_number, check_option, check_probabilities, check_same_length, encode_labels

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
]

Strategy = Literal["uniform", "quantile"]

#: Elements per block of rows read by the cores (8 MB of float64 work per temporary).
_BLOCK_ELEMENTS = 1 << 20

#: Up to this many classes the top label comes from column-wise numpy passes
#: (:func:`_top_label_by_columns`), from there to :data:`_NUMPY_ARGMAX_MIN_CLASSES` from torch's
#: ``max(dim=1)``, from there on from numpy's ``argmax`` and a gather (the crossovers of the
#: three on one core at 50 000 rows; ``benchmarks/bench_speed.py`` times ECE).
_COLUMN_PASSES_MAX_CLASSES = 16
_NUMPY_ARGMAX_MIN_CLASSES = 64


def _one_thread(func: Callable[..., float]) -> Callable[..., float]:
    """Run a top-label metric on one thread (torch, OpenMP and BLAS), restoring the caller's settings.

    Its work is two or three memory-bound passes (the checks, the top label, the bins), a few
    milliseconds per million elements: a second thread saves little on a quiet machine and
    costs a barrier wait per operation on a busy one (``benchmarks/bench_speed.py``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> float:
        with thread_limits(0):
            return func(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- validation
def _validate(y_true: Any, y_prob: Any, labels: Any, *, stream: bool = True) -> tuple[np.ndarray, Any]:
    """Label indices and validated probabilities: an array, or a ``FileRows`` for a memmap (``stream``)."""
    prob = check_probabilities(y_prob, stream=stream)
    check_same_length(y_true=y_true, y_prob=prob)
    _, y_idx = encode_labels(y_true, prob.shape[1], labels=labels, name="y_true", min_classes=1)
    return y_idx, prob


def _is_dask(*arrays: Any) -> bool:
    return any(is_dask_array(a) for a in arrays)


def _top_label_pairs(y_true: Any, y_prob: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of validated input; of dask input computed chunk by chunk on
    the workers (two float64 per sample gathered, never the ``(n, K)`` rows)."""
    if _is_dask(y_true, y_prob):
        from .._dask import dask_top_label

        return dask_top_label(y_true, y_prob, labels)
    return _top_label(*_validate(y_true, y_prob, labels))


def _dask_state(y_true: Any, y_prob: Any, n_bins: int, labels: Any) -> Any:
    """The :class:`~precal.metrics.CalibrationState` of dask input, chunk by chunk (:mod:`precal._dask`)."""
    from .._dask import dask_state

    return dask_state(y_true, y_prob, n_bins, labels)


def _check_n_bins(n_bins: Any) -> int:
    """``n_bins`` checked, as a Python int (a numpy ``int8`` would overflow in ``n_bins + 1``)."""
    check_number(n_bins, "n_bins", numbers.Integral, min_val=1)
    return int(n_bins)


def _check_strategy(strategy: Any) -> None:
    check_option(strategy, "strategy", ("uniform", "quantile"))


def _check_scale_by_half(scale_by_half: Any) -> None:
    check_option(scale_by_half, "scale_by_half", (True, False, "auto"))


#: The keyword parameters of each named metric of :func:`calibration_error_ci` and their checks.
_METRIC_PARAMS: dict[str, dict[str, Callable[[Any], None]]] = {
    "ece": {"n_bins": _check_n_bins},
    "ace": {"n_bins": _check_n_bins},
    "mce": {"n_bins": _check_n_bins},
    "classwise_ece": {"n_bins": _check_n_bins},
    "brier": {"scale_by_half": _check_scale_by_half},
    "nll": {},
}


# ---------------------------------------------------------------- binning
def _bin_index(conf: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each confidence and the bin edges.

    ``"uniform"``: equal-width bins, left-closed, last bin closed (see module docstring).
    ``"quantile"``: equal-mass bins: the samples sorted by confidence (stable, so ties keep
    their input order) are cut into ``n_bins`` runs whose sizes differ by at most one;
    edges are the smallest confidence of each run and the largest overall.
    """
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return _uniform_bin_index(conf, edges), edges
    if strategy == "quantile":
        n = conf.shape[0]
        order = np.argsort(conf, kind="stable")
        # sorted position i goes to run floor(i B / n), so run b starts at ceil(b n / B)
        idx = np.empty(n, dtype=np.int64)
        idx[order] = (np.arange(n) * n_bins) // max(n, 1)
        starts = -((-np.arange(n_bins) * n) // n_bins)
        sorted_conf = conf[order]
        edges = np.append(sorted_conf[np.minimum(starts, n - 1)], sorted_conf[-1])
        return idx, edges
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}.")


def _uniform_bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index ``b`` with ``edges[b] <= v < edges[b+1]`` (last bin closed), for ``v`` in [0, 1].

    Same result as ``searchsorted(edges, v, side="right") - 1`` clipped to the bins, but
    computed as ``floor(v B)`` plus a one-step correction against the actual (linspace)
    edges, which is several times faster on large inputs. float32 values are binned in
    float32 against each float64 edge rounded up to float32 (for a float32 ``v``,
    ``v >= e`` exactly when ``v >= ceil32(e)``), the same bins at half the memory traffic.
    """
    n_bins = len(edges) - 1
    if values.dtype == np.float32 and n_bins > 2**24:  # float32 cannot tell such bins apart
        values = values.astype(np.float64)
    if values.dtype == np.float32:
        rounded = edges.astype(np.float32)
        edges = np.where(rounded < edges, np.nextafter(rounded, np.float32(np.inf)), rounded)
    idx = (values * values.dtype.type(n_bins)).astype(np.intp)
    np.minimum(idx, n_bins - 1, out=idx)
    idx -= values < edges.take(idx)
    idx += (values >= edges.take(idx + 1)) & (idx < n_bins - 1)
    return idx


def _bin_sums(idx: np.ndarray, conf: np.ndarray, correct: np.ndarray, n_bins: int):
    """Per-bin count, sum of confidence and sum of correctness (sufficient statistics)."""
    return (
        np.bincount(idx, minlength=n_bins).astype(np.float64),
        np.bincount(idx, weights=conf, minlength=n_bins),
        np.bincount(idx, weights=correct, minlength=n_bins),
    )


def _bin_gaps(idx: np.ndarray, conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """``acc_sum - conf_sum`` of each bin (float64): all the ECE needs of a bin."""
    return np.bincount(idx, weights=np.subtract(correct, conf, dtype=np.float64), minlength=n_bins)


def _blocks(prob: Any) -> Any:
    """``(start, block)`` over the rows of ``prob`` (array or ``FileRows``), about 2**20 elements each."""
    return row_blocks(prob, rows_per_block(prob.shape[1], _BLOCK_ELEMENTS))


def _top_label(y_idx: np.ndarray, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness (float64, one per sample); argmax ties go to the first column."""
    conf = np.empty(prob.shape[0], dtype=np.float64)
    correct = np.empty(prob.shape[0], dtype=np.float64)
    for start, block_conf, block_correct in _top_label_blocks(y_idx, prob):
        conf[start : start + len(block_conf)] = block_conf
        correct[start : start + len(block_conf)] = block_correct
    return conf, correct


def _top_label_blocks(y_idx: np.ndarray, prob: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, confidence, correct)`` of each block of rows, in ``prob``'s dtype and as booleans.

    Rows of up to :data:`_COLUMN_PASSES_MAX_CLASSES` columns use :func:`_top_label_by_columns`,
    short rows torch's row reduction (numpy's ``argmax`` over short rows is slow), rows of
    :data:`_NUMPY_ARGMAX_MIN_CLASSES` or more numpy's ``argmax`` and a gather (torch's
    ``max(dim=1)`` is slower there); all three return the first maximal index, so the result
    does not depend on the choice.
    """
    k = prob.shape[1]
    for start, block in _blocks(prob):
        y_block = y_idx[start : start + block.shape[0]]
        if k <= _COLUMN_PASSES_MAX_CLASSES:
            yield start, *_top_label_by_columns(np.asarray(block), y_block)
            continue
        if k >= _NUMPY_ARGMAX_MIN_CLASSES:
            block = np.asarray(block)
            pred = block.argmax(axis=1)
            conf = np.take_along_axis(block, pred[:, None], axis=1)[:, 0]
        else:
            conf_t, pred_t = as_tensor(block).max(dim=1)
            conf, pred = conf_t.numpy(), pred_t.numpy()
        yield start, conf, pred == y_block


def _top_label_by_columns(block: np.ndarray, y_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of a block with few columns, one column at a time.

    A row reduction over a few columns costs torch and numpy a loop per row; passes over the
    columns of the transposed block (contiguous, so each is vectorised) cost less: the row
    maximum ``m`` from ``K - 1`` elementwise maxima, the number of columns equal to ``m`` from
    ``K`` comparisons. The label is right when its own entry equals ``m`` and it is the first
    column that does: rows with a tie at the maximum (rare) are decided by ``argmax``.
    """
    n, k = block.shape
    columns = np.ascontiguousarray(block.T)  # (k, n): one copy of the block (none for a column-major one)
    top = np.maximum(columns[0], columns[1]) if k > 1 else columns[0].copy()
    for j in range(2, k):
        np.maximum(top, columns[j], out=top)
    correct = columns.ravel().take(y_idx * n + np.arange(n)) == top  # the label's own entry is the maximum
    ties = np.zeros(n, dtype=np.uint8)
    equal = np.empty(n, dtype=bool)
    for j in range(k):
        np.equal(columns[j], top, out=equal)
        np.add(ties, equal, out=ties, casting="unsafe")
    tied = np.flatnonzero(correct & (ties > 1))
    if tied.size:
        correct[tied] = block[tied].argmax(axis=1) == y_idx[tied]
    return top, correct


# ---------------------------------------------------------------- cores
def _ece_of_top_label(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15, strategy: str = "uniform") -> float:
    idx, _ = _bin_index(conf, n_bins, strategy)
    return float(np.abs(_bin_gaps(idx, conf, correct, n_bins)).sum() / len(conf))


def _mce_of_top_label(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    idx, _ = _bin_index(conf, n_bins, "uniform")
    count, conf_sum, acc_sum = _bin_sums(idx, conf, correct, n_bins)
    full = count > 0
    return float(np.max(np.abs(acc_sum[full] - conf_sum[full]) / count[full]))


def _ace_of_top_label(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    return _ece_of_top_label(conf, correct, n_bins, "quantile")


def _ece(y_idx: np.ndarray, prob: Any, n_bins: int = 15, strategy: str = "uniform") -> float:
    """ECE of validated input; equal-width bins are filled block by block (no per-sample arrays)."""
    if strategy != "uniform":
        return _ece_of_top_label(*_top_label(y_idx, prob), n_bins, strategy)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    gap = np.zeros(n_bins)
    for _, conf, correct in _top_label_blocks(y_idx, prob):
        gap += _bin_gaps(_uniform_bin_index(conf, edges), conf, correct, n_bins)
    return float(np.abs(gap).sum() / prob.shape[0])


def _ace(y_idx: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    return _ace_of_top_label(*_top_label(y_idx, prob), n_bins)


def _mce(y_idx: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    return _mce_of_top_label(*_top_label(y_idx, prob), n_bins)


def _classwise(y_idx: np.ndarray, prob: Any, n_bins: int = 15) -> float:
    conf_sum, acc_sum = _classwise_sums(y_idx, prob, n_bins)
    return _classwise_of_sums(conf_sum, acc_sum, prob.shape[0], prob.shape[1], n_bins)


def _classwise_of_sums(conf_sum: np.ndarray, acc_sum: np.ndarray, n: int, k: int, n_bins: int) -> float:
    """Class-wise ECE from the ``(class, bin)`` sums of :func:`_classwise_sums` over ``n`` samples."""
    per_class = np.abs(acc_sum - conf_sum).reshape(k, n_bins).sum(axis=1) / n
    return float(per_class.mean())


def _classwise_sums(y_idx: np.ndarray, prob: Any, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Per ``(class, bin)`` (flat, ``class * n_bins + bin``) sums of probability and of correctness."""
    _, k = prob.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    offsets = np.arange(k) * n_bins  # (class, bin) -> class * n_bins + bin
    conf_sum = np.zeros(k * n_bins)
    acc_sum = np.zeros(k * n_bins)
    for start, block in _blocks(prob):
        p = np.asarray(block, dtype=np.float64)
        m = p.shape[0]
        yb = y_idx[start : start + m]
        bins = _uniform_bin_index(p, edges)
        conf_sum += np.bincount((bins + offsets).ravel(), weights=p.ravel(), minlength=k * n_bins)
        # a sample counts as correct for its own class only, in the bin of that class's probability
        acc_sum += np.bincount(offsets[yb] + bins[np.arange(m), yb], minlength=k * n_bins)
    return conf_sum, acc_sum


def _brier_rows(y_idx: np.ndarray, block: Any) -> np.ndarray:
    """Per-sample squared error ``Σ_k (p_k - 1[y = k])²`` of a block of rows."""
    diff = np.array(block, dtype=np.float64)  # a copy: the input is never written to
    diff[np.arange(diff.shape[0]), y_idx] -= 1.0
    return np.sum(diff * diff, axis=1)


def _brier_scale(n_classes: int, scale_by_half: bool | str) -> float:
    _check_scale_by_half(scale_by_half)
    half = n_classes == 2 if scale_by_half == "auto" else bool(scale_by_half)
    return 0.5 if half else 1.0


def _brier(y_idx: np.ndarray, prob: Any, scale_by_half: bool | str = "auto") -> float:
    total = 0.0
    for start, block in _blocks(prob):
        total += float(np.sum(_brier_rows(y_idx[start : start + block.shape[0]], block)))
    return total / prob.shape[0] * _brier_scale(prob.shape[1], scale_by_half)


def _nll_rows(y_idx: np.ndarray, block: Any) -> np.ndarray:
    """Per-sample ``-log p_y`` of a block of rows (``p_y`` clipped at float64's eps)."""
    p_true = block[np.arange(block.shape[0]), y_idx].astype(np.float64)
    return -np.log(np.clip(p_true, np.finfo(np.float64).eps, None))


def _nll(y_idx: np.ndarray, prob: Any) -> float:
    total = 0.0
    for start, block in _blocks(prob):
        total += float(np.sum(_nll_rows(y_idx[start : start + block.shape[0]], block)))
    return total / prob.shape[0]


# ---------------------------------------------------------------- public metrics
@_one_thread
def expected_calibration_error(y_true: Any, y_prob: Any, *, n_bins: int = 15, labels: Any = None) -> float:
    r"""Expected calibration error of the top-label confidence (equal-width bins, L1).

    .. math::

        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|B_b|}{n}
            \left| \operatorname{acc}(B_b) - \operatorname{conf}(B_b) \right|

    where ``conf`` is the largest probability of each sample, ``acc`` whether its argmax is
    the true class, and ``B_b`` the samples whose confidence falls in bin ``b``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_prob : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities (rows sum to 1); binary: positive-class probability.
    n_bins : int, default=15
        Number of equal-width bins on [0, 1].
    labels : array-like of shape (n_classes,), default=None
        The class of each column of ``y_prob``.

    Returns
    -------
    float
        In [0, 1]; 0 is perfect calibration.

    Raises
    ------
    ValueError
        On NaN/inf, values outside [0, 1], rows not summing to 1, unknown labels,
        mismatched lengths, empty input or ``n_bins < 1``.

    Notes
    -----
    Bins are left-closed ``[e_b, e_{b+1})`` and the last is closed, so a confidence of
    exactly 1.0 counts in the last bin. Equals netcal's ``ECE(bins=n_bins)`` (tested).
    Ties in the argmax go to the first column (numpy's ``argmax``).

    References
    ----------
    M. P. Naeini, G. F. Cooper, M. Hauskrecht. "Obtaining Well Calibrated Probabilities
    Using Bayesian Binning". AAAI 2015. C. Guo et al. "On Calibration of Modern Neural
    Networks". ICML 2017.

    Examples
    --------
    >>> from precal.metrics import expected_calibration_error
    >>> y_prob = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]   # confidences 0.9, 0.8 (right), 0.6 (wrong)
    >>> round(expected_calibration_error([0, 1, 1], y_prob, n_bins=5), 4)  # 2/3*|1-0.85| + 1/3*|0-0.6|
    0.3
    """
    n_bins = _check_n_bins(n_bins)
    if _is_dask(y_true, y_prob):
        return _dask_state(y_true, y_prob, n_bins, labels).ece()
    return _ece(*_validate(y_true, y_prob, labels), n_bins)


@_one_thread
def adaptive_calibration_error(y_true: Any, y_prob: Any, *, n_bins: int = 15, labels: Any = None) -> float:
    r"""Top-label calibration error over equal-mass (adaptive) bins.

    The ECE formula of :func:`expected_calibration_error`, with bins that each hold
    ``n / n_bins`` samples (sizes differ by at most one) instead of equal widths, so
    crowded high-confidence regions are resolved finely.

    Parameters
    ----------
    y_true, y_prob, n_bins, labels
        As in :func:`expected_calibration_error`.

    Returns
    -------
    float

    Notes
    -----
    Samples are sorted by confidence with a stable sort and cut into runs; tied
    confidences (e.g. many exact 1.0 after bfloat16 softmax) may therefore be split across
    adjacent bins, in input order. This is the top-label variant (as torch-uncertainty's
    ``AdaptiveCalibrationError``); Nixon et al. also define a class-wise average. netcal's
    ``ACE`` is a different quantity (the unweighted *average* of bin gaps).

    References
    ----------
    J. Nixon, M. Dusenberry, L. Zhang, G. Jerfel, D. Tran. "Measuring Calibration in Deep
    Learning". CVPR Workshops 2019. arXiv:1904.01685.
    """
    n_bins = _check_n_bins(n_bins)
    return _ace_of_top_label(*_top_label_pairs(y_true, y_prob, labels), n_bins)


@_one_thread
def maximum_calibration_error(y_true: Any, y_prob: Any, *, n_bins: int = 15, labels: Any = None) -> float:
    r"""Largest top-label calibration gap over non-empty equal-width bins.

    .. math:: \mathrm{MCE} = \max_{b:\,|B_b|>0} |\operatorname{acc}(B_b) - \operatorname{conf}(B_b)|

    Parameters and bins as in :func:`expected_calibration_error`. Equals netcal's ``MCE``.
    """
    n_bins = _check_n_bins(n_bins)
    if _is_dask(y_true, y_prob):
        return _dask_state(y_true, y_prob, n_bins, labels).mce()
    return _mce(*_validate(y_true, y_prob, labels), n_bins)


@threaded
def classwise_calibration_error(y_true: Any, y_prob: Any, *, n_bins: int = 15, labels: Any = None) -> float:
    r"""Class-wise ECE: the ECE of every class's own probability, averaged over classes.

    .. math::

        \mathrm{cwECE} = \frac{1}{K}\sum_{k=1}^{K}\sum_{b=1}^{B}\frac{|B_{kb}|}{n}
        \left|\frac{1}{|B_{kb}|}\sum_{i\in B_{kb}} [y_i = k]
        - \frac{1}{|B_{kb}|}\sum_{i\in B_{kb}} p_{ik}\right|

    with ``B_kb`` the samples whose probability for class ``k`` falls in bin ``b``
    (equal-width bins as in :func:`expected_calibration_error`).

    References
    ----------
    M. Kull, M. Perello-Nieto, M. Kängsepp, T. Silva Filho, H. Song, P. Flach. "Beyond
    temperature scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet
    calibration". NeurIPS 2019. arXiv:1910.12656.
    """
    n_bins = _check_n_bins(n_bins)
    if _is_dask(y_true, y_prob):
        return _dask_state(y_true, y_prob, n_bins, labels).classwise_ece()
    return _classwise(*_validate(y_true, y_prob, labels), n_bins)


@threaded
def brier_score(y_true: Any, y_prob: Any, *, labels: Any = None, scale_by_half: bool | str = "auto") -> float:
    r"""Multiclass Brier score: mean squared distance to the one-hot label.

    .. math:: \mathrm{BS} = \frac{1}{n}\sum_i \sum_k (p_{ik} - [y_i = k])^2 \in [0, 2]

    Parameters
    ----------
    y_true, y_prob, labels
        As in :func:`expected_calibration_error`.
    scale_by_half : bool or "auto", default="auto"
        Divide by 2; ``"auto"`` does so for binary problems only, so binary scores are the
        familiar ``mean((p_1 - y)^2)`` in [0, 1]. Same convention as scikit-learn's
        ``brier_score_loss``, which this equals.

    References
    ----------
    G. W. Brier. "Verification of forecasts expressed in terms of probability". Monthly
    Weather Review 78(1), 1950.
    """
    _check_scale_by_half(scale_by_half)
    if _is_dask(y_true, y_prob):
        return _dask_state(y_true, y_prob, 1, labels).brier(scale_by_half)
    return _brier(*_validate(y_true, y_prob, labels), scale_by_half)


@threaded
def negative_log_likelihood(y_true: Any, y_prob: Any, *, labels: Any = None) -> float:
    r"""Mean negative log-likelihood of the true class (log loss).

    .. math:: \mathrm{NLL} = -\frac{1}{n}\sum_i \log p_{i y_i}

    Probabilities are clipped below at float64 ``eps`` (2.2e-16) so an exact zero, e.g. from
    a bfloat16 softmax, costs 36.04 nats rather than infinity; this equals scikit-learn's
    ``log_loss`` on float64 input.
    """
    if _is_dask(y_true, y_prob):
        return _dask_state(y_true, y_prob, 1, labels).nll()
    return _nll(*_validate(y_true, y_prob, labels))


# ---------------------------------------------------------------- reliability curve
@dataclass(frozen=True)
class ReliabilityCurve:
    """The numbers behind a reliability diagram (one entry per bin).

    Attributes
    ----------
    bin_edges : ndarray of shape (n_bins + 1,)
    counts : ndarray of shape (n_bins,)
        Samples per bin.
    mean_confidence : ndarray of shape (n_bins,)
        Mean top-label confidence per bin; NaN for empty bins.
    accuracy : ndarray of shape (n_bins,)
        Share of correct predictions per bin; NaN for empty bins.
    """

    bin_edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray


@threaded
def reliability_curve(
    y_true: Any, y_prob: Any, *, n_bins: int = 15, strategy: Strategy = "uniform", labels: Any = None
) -> ReliabilityCurve:
    """Per-bin accuracy and mean confidence of the top-label prediction.

    Parameters
    ----------
    y_true, y_prob, n_bins, labels
        As in :func:`expected_calibration_error`.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins (as the ECE) or equal-mass bins (as the ACE).

    Returns
    -------
    ReliabilityCurve
        ``sum(counts * |accuracy - mean_confidence|) / n`` over non-empty bins is the ECE
        (uniform) or ACE (quantile).
    """
    n_bins = _check_n_bins(n_bins)
    _check_strategy(strategy)
    if _is_dask(y_true, y_prob) and strategy == "uniform":
        return _dask_state(y_true, y_prob, n_bins, labels).reliability_curve()
    conf, correct = _top_label_pairs(y_true, y_prob, labels)  # dask, equal-mass bins: the pairs in memory
    idx, edges = _bin_index(conf, n_bins, strategy)
    count, conf_sum, acc_sum = _bin_sums(idx, conf, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, acc_sum / count, np.nan)
    return ReliabilityCurve(edges, count.astype(np.int64), mean_conf, acc)


# ---------------------------------------------------------------- bootstrap interval
_CORES: dict[str, Callable[..., float]] = {
    "ece": _ece,
    "ace": _ace,
    "mce": _mce,
    "classwise_ece": _classwise,
    "brier": _brier,
    "nll": _nll,
}


def _per_sample_rows(rows: Callable[[np.ndarray, Any], np.ndarray], y_idx: np.ndarray, prob: Any) -> np.ndarray:
    return np.concatenate([rows(y_idx[start : start + block.shape[0]], block) for start, block in _blocks(prob)])


def per_sample(kind: str, y_idx: np.ndarray, prob: Any) -> tuple[np.ndarray, ...]:
    """The numbers each sample enters a resampled metric through: ``"top_label"`` (confidence and
    correctness), ``"nll"`` or ``"brier"`` (its loss), as float64 arrays of one value per sample."""
    if kind == "top_label":
        return _top_label(y_idx, prob)
    return (_per_sample_rows({"nll": _nll_rows, "brier": _brier_rows}[kind], y_idx, prob),)


#: What each named metric's resamples need of a sample (see :func:`per_sample`); the class-wise ECE
#: needs whole rows.
_SUMMARY_KIND = {"ece": "top_label", "ace": "top_label", "mce": "top_label", "nll": "nll", "brier": "brier"}


def _of_summary(metric: str, n_classes: int, params: dict[str, Any]) -> Callable[..., float]:
    """``f`` with ``metric`` of a resample ``s`` equal to ``f(*(a[s] for a in per_sample(_SUMMARY_KIND[metric],
    ...)))``."""
    if metric in ("ece", "ace", "mce"):
        of_top_label = {"ece": _ece_of_top_label, "ace": _ace_of_top_label, "mce": _mce_of_top_label}[metric]
        return lambda conf, correct: of_top_label(conf, correct, **params)
    if metric == "nll":
        return lambda losses: float(np.mean(losses))
    scale = _brier_scale(n_classes, params.get("scale_by_half", "auto"))
    return lambda losses: float(np.mean(losses)) * scale


#: Named metrics whose plug-in estimate is biased (binned gaps: ``|noise|`` adds up); the
#: others (``"brier"``, ``"nll"``) are sample means, unbiased, and need no correction.
_BIASED_METRICS = frozenset({"ece", "ace", "mce", "classwise_ece"})

#: Interval methods of :func:`calibration_error_ci`.
CI_METHODS = ("auto", "bias_corrected", "percentile")


@dataclass(frozen=True)
class CalibrationErrorCI:
    """A metric's point estimate and its bootstrap interval.

    Attributes
    ----------
    estimate : float
        The reported point estimate: the bootstrap bias-corrected estimate
        ``2 * plugin - median(bootstrap values)`` (clipped to the named metrics' range) with
        ``method="bias_corrected"`` (then it always lies in ``[low, high]``), the plug-in
        value with ``method="percentile"`` (then it can fall outside for a biased metric).
    low, high : float
        The interval's ends.
    confidence_level : float
    method : str
        ``"bias_corrected"`` or ``"percentile"``: the method used (``"auto"`` resolved).
    plugin : float or None
        The metric on the full data (the plug-in value), whatever the method; None only
        for instances made by hand without it.
    """

    estimate: float
    low: float
    high: float
    confidence_level: float
    method: str = "percentile"
    plugin: float | None = None


@threaded
def _bootstrap(value_of: Callable[[np.ndarray], float], n: int, n_bootstrap: int, rng: Any) -> np.ndarray:
    """``value_of(sample)`` for ``n_bootstrap`` resamples of ``n`` row indices drawn with replacement."""
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        values[b] = value_of(rng.randint(0, n, size=n))
    return values


def calibration_error_ci(
    y_true: Any,
    y_prob: Any,
    *,
    metric: str | Callable[..., float] = "ece",
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    labels: Any = None,
    random_state: Any = None,
    method: Literal["auto", "bias_corrected", "percentile"] = "auto",
    **metric_params: Any,
) -> CalibrationErrorCI:
    """Bootstrap interval for a calibration metric, bias-corrected for the binned ones.

    Resamples the ``n`` samples with replacement ``n_bootstrap`` times and evaluates the
    metric on each resample, giving bootstrap values ``θ*_b`` around the plug-in value
    ``θ̂`` (the metric on the full data). With ``q_lo``, ``q_hi`` their ``(1 - level)/2``
    and ``(1 + level)/2`` quantiles and ``m`` their median:

    * ``method="percentile"``: the interval ``[q_lo, q_hi]`` and the estimate ``θ̂``
      (Efron & Tibshirani 1993, ch. 13). Right when ``θ̂`` is unbiased, as for the
      sample means ``"brier"`` and ``"nll"``.
    * ``method="bias_corrected"``: the percentile interval of the bias-corrected estimate.
      The bootstrap estimates the bias of ``θ̂`` by ``b = m - θ̂`` (how far the
      resamples' metric sits above the full data's; Efron & Tibshirani 1993, ch. 10,
      with the median rather than the mean so that the estimate always lies in the
      interval). The estimate is ``θ̃ = θ̂ - b = 2 θ̂ - m``. The resamples' values carry
      the bias twice relative to ``θ̃`` (once as ``θ̂`` does, once more from resampling
      ``θ̂``'s data), so ``θ*_b - 2b`` stand in for replications of ``θ̃`` and the
      interval is their percentile interval ``[q_lo - 2b, q_hi - 2b]``, whose median is
      ``θ̃``. For the named binned metrics all three are then clipped to ``[0, 1]``, the
      metric's range (a monotone map: the estimate stays inside).
    * ``method="auto"`` (default): ``"bias_corrected"`` for ``"ece"``, ``"ace"``,
      ``"mce"`` and ``"classwise_ece"``, ``"percentile"`` for ``"brier"``, ``"nll"``
      and callables (precal cannot know whether a callable is biased; pass
      ``method="bias_corrected"`` for a biased one).

    Why: a binned calibration error adds up ``|gap + noise|`` over bins, so it is biased
    upward (a calibrated model scores of order ``sqrt(B / n)``), and a resample's value
    is biased upward again relative to ``θ̂``. The plain percentile interval inherits
    that second bias: it can lie entirely above ``θ̂`` (``ECE 0.63 [0.63, 1.22]``) and
    misses a true error that the bias dominates. The shifted interval is centred on a
    debiased estimate and contains it by construction. The bootstrap's bias estimate is
    itself noisy (too small where the true gaps are near 0, too large where they are a
    few standard errors), so coverage is near, not at, the nominal level; see
    ``docs/metrics.md`` for simulated coverage. The maximum calibration error's bootstrap
    is poorly behaved (a maximum over bins with few samples): read its interval as rough.

    The named metrics other than ``"classwise_ece"``
    depend on each sample through one or two numbers (top-label confidence and
    correctness, or its loss), so those are computed once and resampled instead of the
    ``(n, K)`` rows: the same values, at ``O(n)`` instead of ``O(nK)`` per resample. For
    Dask arrays those numbers are computed chunk by chunk on the workers and gathered (16
    bytes per sample, never the rows), then resampled exactly as in memory: the same
    interval for the same ``random_state``. ``"classwise_ece"`` and callables need whole
    rows and refuse Dask input with a ``TypeError``.

    Parameters
    ----------
    y_true, y_prob, labels
        As in :func:`expected_calibration_error`.
    metric : str or callable, default="ece"
        One of ``"ece"``, ``"ace"``, ``"mce"``, ``"classwise_ece"``, ``"brier"``, ``"nll"``,
        or a function ``f(y_true, y_prob, **metric_params) -> float``.
    n_bootstrap : int, default=1000
    confidence_level : float, default=0.95
        In (0, 1).
    random_state : int, RandomState instance or None
        Seeds the resampling; a fixed value gives a reproducible interval.
    method : {"auto", "bias_corrected", "percentile"}, default="auto"
        How the interval and the estimate are formed (above). Before this parameter
        existed every metric got ``"percentile"``; pass it to reproduce those intervals.
    **metric_params
        Passed to the metric (e.g. ``n_bins=10``). For a named metric only its own
        parameters are accepted (``n_bins`` for the binned ones, ``scale_by_half`` for
        ``"brier"``, none for ``"nll"``), checked like the metric function checks them,
        before any work; anything else is a ``TypeError``.

    Raises
    ------
    ValueError
        On invalid probabilities or labels, an unknown metric name or ``method``,
        ``n_bootstrap < 1``, ``confidence_level`` outside (0, 1) or NaN, or a bad metric
        parameter value.
    TypeError
        On a parameter of the wrong type (``n_bins=True``, ``n_bootstrap=10.5``) or a
        metric parameter the named metric does not take.

    Returns
    -------
    CalibrationErrorCI

    References
    ----------
    B. Efron, R. Tibshirani. "An Introduction to the Bootstrap". Chapman & Hall, 1993:
    ch. 10 (bootstrap estimate of bias, bias-corrected estimate), ch. 13 (percentile
    interval), ch. 14 (BCa; not used: its bias correction ``z0`` is infinite when every
    resample lies above ``θ̂``, as for the maximum calibration error).
    """
    if not isinstance(method, str) or method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}.")
    check_number(n_bootstrap, "n_bootstrap", numbers.Integral, min_val=1)
    check_number(confidence_level, "confidence_level", numbers.Real, min_val=0.0, max_val=1.0,
                 include_boundaries="neither")
    if not callable(metric):
        if not isinstance(metric, str) or metric not in _CORES:
            raise ValueError(f"metric must be one of {sorted(_CORES)} or a callable, got {metric!r}.")
        checks = _METRIC_PARAMS[metric]
        unknown = sorted(set(metric_params) - set(checks))
        if unknown:
            raise TypeError(
                f"calibration_error_ci got metric parameter(s) {unknown} that metric={metric!r} does not take; "
                f"it takes {sorted(checks) or 'none'}."
            )
        for key, value in metric_params.items():
            checks[key](value)
    elif "n_bins" in metric_params:
        _check_n_bins(metric_params["n_bins"])
    if "n_bins" in metric_params:  # checked above: as a Python int for the core functions
        metric_params = {**metric_params, "n_bins": int(metric_params["n_bins"])}
    try:
        rng = check_random_state(random_state)
    except ValueError as exc:
        raise ValueError(f"random_state: {exc}") from exc
    if _is_dask(y_true, y_prob):
        if callable(metric) or metric == "classwise_ece":
            raise TypeError(
                f"calibration_error_ci of {'a callable metric' if callable(metric) else repr(metric)} resamples whole "
                "rows, so it does not take Dask arrays; compute them first (y_prob.compute()). The named metrics "
                "'ece', 'ace', 'mce', 'brier' and 'nll' take them.")
        from .._dask import dask_per_sample

        arrays, n_classes = dask_per_sample(y_true, y_prob, labels, _SUMMARY_KIND[metric])  # O(n) numbers
        of_summary = _of_summary(metric, n_classes, metric_params)
        estimate = of_summary(*arrays)
        values = _bootstrap(lambda sample: of_summary(*(a[sample] for a in arrays)), len(arrays[0]), n_bootstrap,
                            rng)
    else:
        y_idx, prob = _validate(y_true, y_prob, labels, stream=False)  # resamples gather rows: in memory
        if callable(metric):
            classes = np.arange(prob.shape[1])

            def evaluate(yi: np.ndarray, p: np.ndarray) -> float:
                return float(metric(yi, p, labels=classes, **metric_params))
        else:
            core = _CORES[metric]

            def evaluate(yi: np.ndarray, p: np.ndarray) -> float:
                return core(yi, p, **metric_params)
        estimate = evaluate(y_idx, prob)  # first: a callable's bad metric_params fail here
        if callable(metric) or metric not in _SUMMARY_KIND:
            values = _bootstrap(lambda sample: evaluate(y_idx[sample], prob[sample]), len(y_idx), n_bootstrap, rng)
        else:  # the metric depends on each sample through a few numbers: resample those, not the rows
            arrays = per_sample(_SUMMARY_KIND[metric], y_idx, prob)
            of_summary = _of_summary(metric, prob.shape[1], metric_params)
            values = _bootstrap(lambda sample: of_summary(*(a[sample] for a in arrays)), len(y_idx), n_bootstrap,
                                rng)
    alpha = (1.0 - confidence_level) / 2.0
    low, median, high = np.quantile(values, [alpha, 0.5, 1.0 - alpha])
    if method == "auto":
        method = "bias_corrected" if not callable(metric) and metric in _BIASED_METRICS else "percentile"
    if method == "percentile":
        return CalibrationErrorCI(estimate, float(low), float(high), float(confidence_level), method, estimate)
    bias = median - estimate  # the bootstrap's (median) bias estimate of the plug-in
    ends = np.array([low, median, high]) - 2.0 * bias  # median - 2 bias = estimate - bias
    if not callable(metric) and metric in _BIASED_METRICS:
        ends = np.clip(ends, 0.0, 1.0)  # the metric's range; monotone, so the estimate stays inside
    return CalibrationErrorCI(float(ends[1]), float(ends[0]), float(ends[2]), float(confidence_level), method,
                              estimate)

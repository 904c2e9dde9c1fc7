r"""Precision diagnostics: how one model's predictions differ between two precisions.

Every function compares (or describes) probabilities of the *same* model evaluated at a
reference precision (``p_ref``, e.g. float32) and a low one (``p_low``, e.g. a bfloat16
softmax), except :func:`gradient_underflow` and :func:`underflow_margin`, which look at the
cross-entropy gradient of logits whose softmax is evaluated in a float format.

- :func:`precision_split`: per-sample top-confidence gap, low minus reference
  (the PACS paper);
- :func:`swap_analysis`: changed predictions, change in error rate, their ratio and the
  histogram of swaps over reference confidence (Xia et al., 2021);
- :func:`confidence_shift`: change of the true-class confidence per bin of reference
  confidence (Proskurina et al., 2024);
- :func:`jensen_shannon`, :func:`entropy`, :func:`true_class_confidence`: per-sample
  divergence, predictive entropy and true-class probability (Lin, 1991;
  Proskurina et al., 2024);
- :func:`gradient_underflow`, :func:`underflow_margin`: samples whose cross-entropy
  gradient is exactly 0 in a format, and the logit margin where that starts (the PACS paper);
- :func:`saturation_report`: exact 1.0 confidences, exact zeros, tied confidences
  (the PACS paper).

Inputs follow :mod:`precal.metrics.calibration`: probabilities ``(n_samples, n_classes)``
(binary: 1-D positive-class probabilities), numpy arrays or torch tensors, checked by
:func:`~precal._validation.check_probabilities` (finite, in ``[0, 1]``, rows summing to 1
within a tolerance set by the input's dtype); labels as in
:func:`~precal.metrics.expected_calibration_error`. ``p_ref`` and ``p_low`` must have the
same shape. Per-sample quantities come back as float64 numpy arrays (the caller averages);
summaries as Python floats and ints in small frozen dataclasses. Inputs are never modified.

Pass low-precision probabilities in their own dtype (``torch.bfloat16``,
``torch.float8_e4m3fn``, ``ml_dtypes.bfloat16``, ``numpy.float16``) so that the row-sum
tolerance follows that dtype: a bfloat16 softmax carried in float32 has rows that sum to 1
only within about ``5e-3``, beyond float32's tolerance. :func:`precal.emulate.softmax_in_format`
given a tensor returns the format's own torch dtype for this reason.

Binning (:func:`swap_analysis`, :func:`confidence_shift`) is precal's ECE convention:
``n_bins`` equal-width bins over ``[0, 1]``, left-closed, the last bin closed so that a
confidence of exactly 1.0 lands in the last bin. Argmax ties go to the first column.

References
----------
- "Precision-Induced Miscalibration: Understanding and Correcting Confidence Distortion
  in Quantized Neural Networks" (the PACS paper; project seed 000, authors not given there).
- G. Xia, S. Ha, T. Azevedo, P. Maji. "An Underexplored Dilemma between Confidence
  and Calibration in Quantized Neural Networks". NeurIPS 2021 Workshop (I Can't Believe
  It's Not Better). arXiv:2111.08163.
- I. Proskurina, L. Brun, G. Metzler, J. Velcin. "When Quantization Affects
  Confidence of Large Language Models?". Findings of NAACL 2024. arXiv:2405.00632.
- J. Lin. "Divergence measures based on the Shannon entropy". IEEE Transactions on
  Information Theory 37(1), 1991. doi:10.1109/18.61115.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .._validation import (
    check_logits,
    check_number,
    check_option,
    check_probabilities,
    check_same_length,
    encode_labels,
)
from ..emulate.formats import FloatFormat, IntFormat, format_info
from ..emulate.logits import softmax_in_format
from .calibration import _bin_index, _check_n_bins

__all__ = [
    "precision_split",
    "PrecisionSplit",
    "swap_analysis",
    "SwapAnalysis",
    "confidence_shift",
    "ConfidenceShift",
    "jensen_shannon",
    "entropy",
    "true_class_confidence",
    "gradient_underflow",
    "GradientUnderflow",
    "underflow_margin",
    "saturation_report",
    "SaturationReport",
]

SoftmaxMode = Literal["exact", "stepwise"]


# ---------------------------------------------------------------- validation
def _check_pair(p_ref: Any, p_low: Any, names: tuple[str, str] = ("p_ref", "p_low")) -> tuple[np.ndarray, np.ndarray]:
    """Validate two probability arrays of the same shape (1-D binary input becomes 2 columns)."""
    a = check_probabilities(p_ref, name=names[0])
    b = check_probabilities(p_low, name=names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape (the same samples and classes at two "
            f"precisions), got {names[0]} with shape {a.shape} and {names[1]} with shape {b.shape}."
        )
    return a, b


def _check_labeled_pair(y_true: Any, p_ref: Any, p_low: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref, low = _check_pair(p_ref, p_low)
    check_same_length(y_true=y_true, p_ref=ref)
    _, y_idx = encode_labels(y_true, ref.shape[1], labels=labels, name="y_true", min_classes=1)
    return y_idx, ref, low


def _float_format(precision: Any) -> FloatFormat:
    """The :class:`FloatFormat` named by ``precision``; integer formats and unknown names raise."""
    if not isinstance(precision, (str, FloatFormat, IntFormat)):
        raise TypeError(
            f"precision must be a float format name such as 'bf16', 'fp16' or 'fp8_e4m3', "
            f"got {type(precision).__name__}."
        )
    try:
        fmt = format_info(precision)
    except ValueError as exc:
        raise ValueError(f"precision={precision!r} is not a known number format. {exc}") from exc
    if not isinstance(fmt, FloatFormat):
        raise ValueError(
            f"precision must be a float format (a softmax is evaluated in it), got the integer format {fmt.name!r}."
        )
    return fmt


# ---------------------------------------------------------------- per-sample cores
def _top_confidence(prob: np.ndarray) -> np.ndarray:
    return prob.max(axis=1).astype(np.float64)


def _true_class(y_idx: np.ndarray, prob: np.ndarray) -> np.ndarray:
    return prob[np.arange(prob.shape[0]), y_idx].astype(np.float64)


def _xlog_ratio(p: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``p log(num / den)``, 0 where ``p == 0`` (``0 log 0 = 0``); ``den > 0`` where ``p > 0``."""
    pos = p > 0
    ratio = np.divide(num, den, out=np.ones_like(p), where=pos)
    return np.where(pos, p * np.log(ratio), 0.0)


def _jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    s = p + q  # p / m = 2p / (p + q): no (p + q) / 2 that could underflow to 0 for subnormal p
    js = 0.5 * (_xlog_ratio(p, 2.0 * p, s).sum(axis=1) + _xlog_ratio(q, 2.0 * q, s).sum(axis=1))
    return np.clip(js, 0.0, math.log(2.0))


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    h = 0.0 - _xlog_ratio(p, p, np.ones_like(p)).sum(axis=1)  # 0.0 - 0.0 is +0.0, not -0.0
    return np.clip(h, 0.0, math.log(p.shape[1]))


# ---------------------------------------------------------------- precision split
@dataclass(frozen=True)
class PrecisionSplit:
    """Top-confidence gap between two precisions (see :func:`precision_split`).

    Attributes
    ----------
    gap : ndarray of shape (n_samples,)
        ``max_k p_low[i, k] - max_k p_ref[i, k]``; positive: more confident at low precision.
    mean_gap : float
        Mean of ``gap`` (signed: over- or under-confidence drift).
    mean_abs_gap : float
        Mean of ``|gap|``.
    max_abs_gap : float
        Largest ``|gap|``.
    share_above_threshold : float
        Share of samples with ``|gap| > threshold`` (strict).
    threshold : float
        The threshold used.
    """

    gap: np.ndarray
    mean_gap: float
    mean_abs_gap: float
    max_abs_gap: float
    share_above_threshold: float
    threshold: float


def _precision_split(ref: np.ndarray, low: np.ndarray, threshold: float) -> PrecisionSplit:
    gap = _top_confidence(low) - _top_confidence(ref)
    abs_gap = np.abs(gap)
    return PrecisionSplit(
        gap=gap,
        mean_gap=float(gap.mean()),
        mean_abs_gap=float(abs_gap.mean()),
        max_abs_gap=float(abs_gap.max()),
        share_above_threshold=float(np.mean(abs_gap > threshold)),
        threshold=float(threshold),
    )


def precision_split(p_ref: Any, p_low: Any, *, threshold: float = 0.01) -> PrecisionSplit:
    r"""Per-sample gap between the top confidence at low and at reference precision.

    .. math::

        g_i = \max_k p^{\mathrm{low}}_{ik} - \max_k p^{\mathrm{ref}}_{ik}

    Each array's *own* top confidence is used (what a user of each model reads as "the
    confidence"), so for a sample whose predicted class changed the two numbers belong to
    different classes; :func:`swap_analysis` reports those samples. Summaries:
    :math:`\bar g`, :math:`\overline{|g|}`, :math:`\max_i |g_i|` and the share of samples
    with :math:`|g_i| > \tau`.

    Parameters
    ----------
    p_ref : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities at the reference precision (rows sum to 1; binary: positive class).
    p_low : array-like or torch.Tensor, same shape as ``p_ref``
        Probabilities of the same model and samples at the low precision.
    threshold : float, default=0.01
        :math:`\tau` in ``[0, 1]``: a gap counts as a split when ``|g_i| > threshold``.

    Returns
    -------
    PrecisionSplit
        ``gap`` (float64, one per sample), ``mean_gap``, ``mean_abs_gap``, ``max_abs_gap``,
        ``share_above_threshold``, ``threshold``.

    Raises
    ------
    ValueError
        On NaN/inf, values outside [0, 1], rows not summing to 1, empty input, ``p_ref`` and
        ``p_low`` of different shapes (both shapes named), or ``threshold`` outside [0, 1]
        or NaN.
    TypeError
        If ``threshold`` is not a real number (a bool is not).

    Notes
    -----
    The "precision split" of the PACS paper [1]: the same model reports different
    confidences at different precisions; the gap grows with the logit norm and is largest
    for confident but not saturated samples.

    References
    ----------
    .. [1] "Precision-Induced Miscalibration: Understanding and Correcting Confidence
       Distortion in Quantized Neural Networks" (project seed 000). All references of these
       diagnostics: :mod:`precal.metrics.diagnostics`.

    Examples
    --------
    >>> from precal.metrics.diagnostics import precision_split
    >>> p_ref = [[0.7, 0.3], [0.4, 0.6]]
    >>> p_low = [[0.75, 0.25], [0.5, 0.5]]   # top confidences 0.75 - 0.7, 0.5 - 0.6
    >>> s = precision_split(p_ref, p_low)
    >>> s.gap.round(4).tolist(), round(s.mean_gap, 4), round(s.max_abs_gap, 4), s.share_above_threshold
    ([0.05, -0.1], -0.025, 0.1, 1.0)
    """
    check_number(threshold, "threshold", numbers.Real, min_val=0.0, max_val=1.0)
    ref, low = _check_pair(p_ref, p_low)
    return _precision_split(ref, low, float(threshold))


# ---------------------------------------------------------------- swap analysis
@dataclass(frozen=True)
class SwapAnalysis:
    """Predictions that changed between two precisions (see :func:`swap_analysis`).

    Attributes
    ----------
    swapped : ndarray of bool, shape (n_samples,)
        Whether the predicted class (argmax) differs between the precisions.
    n_swapped : int
    share_swapped : float
        ``n_swapped / n_samples``.
    error_ref, error_low : float
        Error rates (1 - accuracy) at reference and at low precision.
    error_change : float
        ``error_low - error_ref``.
    ratio : float
        ``error_change / share_swapped``, in ``[-1, 1]``; 0 when nothing swapped.
    bin_edges : ndarray of shape (n_bins + 1,)
    counts : ndarray of int64, shape (n_bins,)
        Swapped samples per bin of *reference* top confidence (unnormalised).
    n_right_to_wrong, n_wrong_to_right, n_wrong_to_wrong : int
        Swapped samples by correctness at reference -> low precision.
    """

    swapped: np.ndarray
    n_swapped: int
    share_swapped: float
    error_ref: float
    error_low: float
    error_change: float
    ratio: float
    bin_edges: np.ndarray
    counts: np.ndarray
    n_right_to_wrong: int
    n_wrong_to_right: int
    n_wrong_to_wrong: int


def _swap_analysis(y_idx: np.ndarray, ref: np.ndarray, low: np.ndarray, n_bins: int) -> SwapAnalysis:
    n = y_idx.shape[0]
    pred_ref = ref.argmax(axis=1)
    pred_low = low.argmax(axis=1)
    right_ref = pred_ref == y_idx
    right_low = pred_low == y_idx
    swapped = pred_ref != pred_low
    n_swapped = int(swapped.sum())
    share = n_swapped / n
    error_ref = float(np.mean(~right_ref))
    error_low = float(np.mean(~right_low))
    # exact in integers: (right->wrong - wrong->right) / n
    n_rw = int(np.sum(swapped & right_ref))
    n_wr = int(np.sum(swapped & right_low))
    error_change = (n_rw - n_wr) / n
    ratio = (n_rw - n_wr) / n_swapped if n_swapped else 0.0
    idx, edges = _bin_index(_top_confidence(ref)[swapped], n_bins, "uniform")
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    return SwapAnalysis(
        swapped=swapped,
        n_swapped=n_swapped,
        share_swapped=float(share),
        error_ref=error_ref,
        error_low=error_low,
        error_change=float(error_change),
        ratio=float(ratio),
        bin_edges=edges,
        counts=counts,
        n_right_to_wrong=n_rw,
        n_wrong_to_right=n_wr,
        n_wrong_to_wrong=n_swapped - n_rw - n_wr,
    )


def swap_analysis(y_true: Any, p_ref: Any, p_low: Any, *, n_bins: int = 10, labels: Any = None) -> SwapAnalysis:
    r"""Swapped predictions, change in error rate and their ratio (Xia et al., Figure 2).

    With :math:`\hat y^{r}_i = \arg\max_k p^{\mathrm{ref}}_{ik}` and
    :math:`\hat y^{l}_i = \arg\max_k p^{\mathrm{low}}_{ik}`:

    .. math::

        s = \frac{1}{n}\sum_i [\hat y^{l}_i \ne \hat y^{r}_i], \qquad
        \Delta e = \frac{1}{n}\sum_i \bigl([\hat y^{l}_i \ne y_i] - [\hat y^{r}_i \ne y_i]\bigr)
                 = \frac{n_{r\to w} - n_{w\to r}}{n}, \qquad
        \rho = \frac{\Delta e}{s} = \frac{n_{r\to w} - n_{w\to r}}{n_{r\to w} + n_{w\to r} + n_{w\to w}}

    with :math:`\rho = 0` when nothing swapped (:math:`s = 0`, hence :math:`\Delta e = 0`).
    :math:`\rho \in [-1, 1]`: 1 when every swap broke a right prediction, -1 when every swap
    fixed a wrong one. The swapped samples are also counted per equal-width bin of their
    *reference* top confidence :math:`\max_k p^{\mathrm{ref}}_{ik}` (unnormalised, as in the
    paper: the area is the number of swaps).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    p_ref, p_low : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities of the same model at reference and at low precision (same shape).
    n_bins : int, default=10
        Number of equal-width bins on [0, 1] for the histogram.
    labels : array-like of shape (n_classes,), default=None
        The class of each column, as in :func:`~precal.metrics.expected_calibration_error`.

    Returns
    -------
    SwapAnalysis
        ``swapped`` (bool per sample), ``n_swapped``, ``share_swapped``, ``error_ref``,
        ``error_low``, ``error_change``, ``ratio``, ``bin_edges``, ``counts`` (sum is
        ``n_swapped``), ``n_right_to_wrong``, ``n_wrong_to_right``, ``n_wrong_to_wrong``.

    Raises
    ------
    ValueError
        On invalid probabilities (see :func:`precision_split`), shapes that differ, lengths
        of ``y_true`` and the probabilities that differ, unknown labels or ``n_bins < 1``.

    Notes
    -----
    Bins are left-closed ``[e_b, e_{b+1})``, the last one closed, as precal's ECE. A
    wrong -> right swap lowers the error, right -> wrong raises it, wrong -> wrong leaves it
    unchanged; right -> right cannot swap. Argmax ties go to the first column, so a low
    precision that rounds the two top probabilities to the same value may "swap" to the
    lower-indexed class.

    References
    ----------
    .. [1] G. Xia, S. Ha, T. Azevedo, P. Maji. "An Underexplored Dilemma between Confidence
       and Calibration in Quantized Neural Networks". NeurIPS 2021 Workshop.
       arXiv:2111.08163.

    Examples
    --------
    >>> from precal.metrics.diagnostics import swap_analysis
    >>> p_ref = [[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.45, 0.55]]
    >>> p_low = [[0.9, 0.1], [0.45, 0.55], [0.3, 0.7], [0.55, 0.45]]  # samples 1 and 3 swap
    >>> r = swap_analysis([0, 0, 1, 0], p_ref, p_low, n_bins=2)
    >>> r.n_swapped, r.share_swapped, r.n_right_to_wrong, r.n_wrong_to_right
    (2, 0.5, 1, 1)
    >>> r.error_change, r.ratio, r.counts.tolist()   # both swaps have reference confidence 0.55
    (0.0, 0.0, [0, 2])
    """
    n_bins = _check_n_bins(n_bins)
    y_idx, ref, low = _check_labeled_pair(y_true, p_ref, p_low, labels)
    return _swap_analysis(y_idx, ref, low, int(n_bins))


# ---------------------------------------------------------------- confidence shift
@dataclass(frozen=True)
class ConfidenceShift:
    """Change of the true-class confidence (see :func:`confidence_shift`).

    Attributes
    ----------
    shift : ndarray of shape (n_samples,)
        ``p_low[i, y_i] - p_ref[i, y_i]``.
    mean_shift : float
        Mean of ``shift`` over all samples.
    bin_edges : ndarray of shape (n_bins + 1,)
    counts : ndarray of int64, shape (n_bins,)
        Samples per bin of reference top confidence.
    bin_mean_shift : ndarray of shape (n_bins,)
        Mean ``shift`` per bin; NaN for empty bins.
    """

    shift: np.ndarray
    mean_shift: float
    bin_edges: np.ndarray
    counts: np.ndarray
    bin_mean_shift: np.ndarray


def _confidence_shift(y_idx: np.ndarray, ref: np.ndarray, low: np.ndarray, n_bins: int) -> ConfidenceShift:
    shift = _true_class(y_idx, low) - _true_class(y_idx, ref)
    idx, edges = _bin_index(_top_confidence(ref), n_bins, "uniform")
    counts = np.bincount(idx, minlength=n_bins)
    sums = np.bincount(idx, weights=shift, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_mean = np.where(counts > 0, sums / counts, np.nan)
    return ConfidenceShift(shift, float(shift.mean()), edges, counts.astype(np.int64), bin_mean)


def confidence_shift(
    y_true: Any, p_ref: Any, p_low: Any, *, n_bins: int = 10, labels: Any = None
) -> ConfidenceShift:
    r"""Change of the true-class confidence, overall and per bin of reference confidence.

    .. math::

        \delta_i = p^{\mathrm{low}}_{i y_i} - p^{\mathrm{ref}}_{i y_i}, \qquad
        \bar\delta_b = \frac{1}{|B_b|}\sum_{i \in B_b} \delta_i

    where :math:`B_b` holds the samples whose *reference top confidence*
    :math:`\max_k p^{\mathrm{ref}}_{ik}` falls in equal-width bin :math:`b`. Proskurina et
    al. find :math:`\delta` negative after 4-bit GPTQ and largest in magnitude for samples
    the full-precision model was unsure about (low bins).

    Parameters
    ----------
    y_true, p_ref, p_low, labels
        As in :func:`swap_analysis`.
    n_bins : int, default=10
        Number of equal-width bins on [0, 1] (precal's ECE convention).

    Returns
    -------
    ConfidenceShift
        ``shift`` (one per sample), ``mean_shift`` (over all samples), ``bin_edges``,
        ``counts`` and ``bin_mean_shift`` (NaN for empty bins).

    Raises
    ------
    ValueError
        As :func:`swap_analysis`.

    References
    ----------
    .. [1] I. Proskurina, L. Brun, G. Metzler, J. Velcin. "When Quantization Affects
       Confidence of Large Language Models?". Findings of NAACL 2024. arXiv:2405.00632.

    Examples
    --------
    >>> from precal.metrics.diagnostics import confidence_shift
    >>> p_ref = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    >>> p_low = [[0.95, 0.05], [0.5, 0.5], [0.4, 0.6]]
    >>> c = confidence_shift([0, 0, 1], p_ref, p_low, n_bins=2)  # shifts +0.05, -0.1, -0.1
    >>> round(c.mean_shift, 4), c.counts.tolist(), c.bin_mean_shift.round(4).tolist()
    (-0.05, [0, 3], [nan, -0.05])
    """
    n_bins = _check_n_bins(n_bins)
    y_idx, ref, low = _check_labeled_pair(y_true, p_ref, p_low, labels)
    return _confidence_shift(y_idx, ref, low, int(n_bins))


# ---------------------------------------------------------------- per-sample measures
def jensen_shannon(p: Any, q: Any) -> np.ndarray:
    r"""Per-sample Jensen-Shannon divergence between two probability arrays, in nats.

    .. math::

        \mathrm{JS}(p_i, q_i) = \tfrac12 \mathrm{KL}(p_i \,\|\, m_i) + \tfrac12 \mathrm{KL}(q_i \,\|\, m_i),
        \qquad m_i = \tfrac12 (p_i + q_i),
        \qquad \mathrm{KL}(a \,\|\, b) = \sum_k a_k \ln \frac{a_k}{b_k}

    with :math:`0 \ln 0 = 0`. Symmetric, in :math:`[0, \ln 2]`, zero exactly when
    :math:`p_i = q_i` and :math:`\ln 2` when their supports are disjoint; finite even where
    one precision gives an exact 0 (unlike the KL divergence).

    Parameters
    ----------
    p, q : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities (same shape), e.g. the same model at two precisions.

    Returns
    -------
    ndarray of float64, shape (n_samples,)
        One divergence per sample, clipped to :math:`[0, \ln 2]` against rounding; average
        it yourself (``.mean()``) for a data-set summary. Its square root is the
        Jensen-Shannon distance (as :func:`scipy.spatial.distance.jensenshannon` returns).

    Raises
    ------
    ValueError
        On invalid probabilities or ``p`` and ``q`` of different shapes.

    References
    ----------
    .. [1] J. Lin. "Divergence measures based on the Shannon entropy". IEEE Transactions on
       Information Theory 37(1), 1991. doi:10.1109/18.61115.

    Examples
    --------
    >>> from precal.metrics.diagnostics import jensen_shannon
    >>> js = jensen_shannon([[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]])
    >>> js.round(4).tolist()   # disjoint supports: ln 2; equal rows: 0
    [0.6931, 0.0]
    """
    a, b = _check_pair(p, q, names=("p", "q"))
    return _jensen_shannon(a, b)


def entropy(p: Any) -> np.ndarray:
    r"""Per-sample predictive (Shannon) entropy, in nats.

    .. math:: H(p_i) = -\sum_k p_{ik} \ln p_{ik}, \qquad 0 \ln 0 = 0

    Parameters
    ----------
    p : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities.

    Returns
    -------
    ndarray of float64, shape (n_samples,)
        One entropy per sample in :math:`[0, \ln K]` (clipped against rounding); average it
        yourself. Proskurina et al. report the mean entropy rising after quantization.

    Raises
    ------
    ValueError
        On invalid probabilities.

    References
    ----------
    .. [1] C. E. Shannon. "A Mathematical Theory of Communication". Bell System Technical
       Journal 27(3), 1948.
    .. [2] I. Proskurina, L. Brun, G. Metzler, J. Velcin. "When Quantization Affects
       Confidence of Large Language Models?". Findings of NAACL 2024. arXiv:2405.00632.

    Examples
    --------
    >>> from precal.metrics.diagnostics import entropy
    >>> entropy([[0.5, 0.5], [1.0, 0.0]]).round(4).tolist()   # ln 2 and 0
    [0.6931, 0.0]
    """
    return _entropy(check_probabilities(p, name="p"))


def true_class_confidence(y_true: Any, p: Any, *, labels: Any = None) -> np.ndarray:
    r"""Per-sample probability of the true class, :math:`p_{i y_i}`.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    p : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities.
    labels : array-like of shape (n_classes,), default=None
        The class of each column, as in :func:`~precal.metrics.expected_calibration_error`.

    Returns
    -------
    ndarray of float64, shape (n_samples,)
        One value per sample; average it yourself ("confidence in the true class" of
        Proskurina et al.). An exact 0 is a true class that underflowed.

    Raises
    ------
    ValueError
        On invalid probabilities, unknown labels or lengths that differ.

    References
    ----------
    .. [1] I. Proskurina, L. Brun, G. Metzler, J. Velcin. "When Quantization Affects
       Confidence of Large Language Models?". Findings of NAACL 2024. arXiv:2405.00632.

    Examples
    --------
    >>> from precal.metrics.diagnostics import true_class_confidence
    >>> true_class_confidence([1, 0], [[0.2, 0.8], [0.6, 0.4]]).tolist()
    [0.8, 0.6]
    """
    prob = check_probabilities(p, name="p")
    check_same_length(y_true=y_true, p=prob)
    _, y_idx = encode_labels(y_true, prob.shape[1], labels=labels, name="y_true", min_classes=1)
    return _true_class(y_idx, prob)


# ---------------------------------------------------------------- gradient underflow
@dataclass(frozen=True)
class GradientUnderflow:
    """Samples whose cross-entropy gradient vanishes in a format (see :func:`gradient_underflow`).

    Attributes
    ----------
    precision : str
        Canonical name of the float format.
    margin : ndarray of shape (n_samples,)
        ``z_y - max_{j != y} z_j`` of the input logits (float64, before any rounding).
    true_class_zero : ndarray of bool, shape (n_samples,)
        ``p_y`` rounded to exactly 1.0, so the true-class component ``p_y - 1`` is 0.
    all_zero : ndarray of bool, shape (n_samples,)
        The whole gradient ``p - onehot(y)`` is 0 (``p_y == 1`` and every other ``p_j == 0``).
    share_true_class_zero, share_all_zero : float
        Shares of samples with those properties.
    """

    precision: str
    margin: np.ndarray
    true_class_zero: np.ndarray
    all_zero: np.ndarray
    share_true_class_zero: float
    share_all_zero: float


def _margin(z: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
    z = np.array(z, dtype=np.float64)  # a copy: the true-class entry is masked below
    rows = np.arange(z.shape[0])
    true = z[rows, y_idx].copy()
    z[rows, y_idx] = -np.inf
    return true - z.max(axis=1)


def _gradient_underflow(z: np.ndarray, y_idx: np.ndarray, fmt: FloatFormat) -> GradientUnderflow:
    prob = softmax_in_format(torch.from_numpy(np.array(z, dtype=np.float32)), fmt).float().numpy()
    if not np.isfinite(prob).all():
        warnings.warn(
            f"The {fmt.name} softmax of {int((~np.isfinite(prob).all(axis=1)).sum())} sample(s) is not finite "
            f"(logits beyond the format's max {fmt.max:g} overflow); they count as not underflowed.",
            RuntimeWarning,
            stacklevel=3,
        )
    rows = np.arange(prob.shape[0])
    true_zero = prob[rows, y_idx] == 1.0
    others_zero = (prob == 0.0).sum(axis=1) == prob.shape[1] - 1
    all_zero = true_zero & others_zero
    return GradientUnderflow(
        precision=fmt.name,
        margin=_margin(z, y_idx),
        true_class_zero=true_zero,
        all_zero=all_zero,
        share_true_class_zero=float(true_zero.mean()),
        share_all_zero=float(all_zero.mean()),
    )


def gradient_underflow(logits: Any, y: Any, precision: str | FloatFormat, *, labels: Any = None) -> GradientUnderflow:
    r"""Which samples get an exactly-zero cross-entropy gradient when the softmax runs in ``precision``.

    The gradient of :math:`\mathrm{CE} = -\ln p_y` with respect to the logits is

    .. math:: \frac{\partial\, \mathrm{CE}}{\partial z} = p - e_y, \qquad p = \operatorname{softmax}(z)

    Evaluated in a low-precision format, :math:`p_y` rounds to exactly 1.0 once the margin
    :math:`m = z_y - \max_{j \ne y} z_j` is large enough (:func:`underflow_margin`): the
    true-class component :math:`p_y - 1` is then exactly 0 and, once every other
    :math:`p_j` has also rounded to 0, the whole gradient is: the sample silently stops
    contributing to learning.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)
        Logits (not probabilities), at least 2 columns.
    y : array-like of shape (n_samples,)
        True labels.
    precision : str or FloatFormat
        A float format of :mod:`precal.emulate` (``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``,
        ``"fp32"``, ...). The softmax is evaluated with
        :func:`precal.emulate.softmax_in_format`: logits, differences, exponentials, their
        sum and the quotients each rounded to the format.
    labels : array-like of shape (n_classes,), default=None
        The class of each column, as in :func:`~precal.metrics.expected_calibration_error`.

    Returns
    -------
    GradientUnderflow
        ``precision``, ``margin`` (per sample), ``true_class_zero`` and ``all_zero`` (bool
        per sample), ``share_true_class_zero`` and ``share_all_zero``.

    Raises
    ------
    ValueError
        On NaN/inf or non-2-D logits, fewer than 2 columns, unknown labels, lengths that
        differ, an unknown format name or an integer format.
    TypeError
        If ``precision`` is neither a name nor a format record.

    Warns
    -----
    RuntimeWarning
        If logits overflow the format (inf/NaN probabilities); such samples count as not
        underflowed.

    Notes
    -----
    ``all_zero`` implies ``true_class_zero``. For the stepwise softmax used here,
    ``true_class_zero`` happens exactly when the rounded sum of exponentials is 1.0; with
    the other logits all at :math:`z_y - m` that is when
    :math:`m \ge` ``underflow_margin(precision, K, softmax="stepwise")``, and any other
    configuration with the same margin has a smaller sum, so that value bounds the
    threshold from above and its ``K = 2`` value from below. ``all_zero`` additionally needs
    every :math:`e^{z_j - z_y}` to round to 0, i.e. :math:`m \gtrsim \ln(2/\sigma)` with
    :math:`\sigma` the format's smallest subnormal (bf16: 92.9, fp16: 17.3, fp8_e4m3: 6.9).
    Logits are converted to float32 before the format's rounding.

    References
    ----------
    .. [1] "Precision-Induced Miscalibration: Understanding and Correcting Confidence
       Distortion in Quantized Neural Networks" (project seed 000). All references of these
       diagnostics: :mod:`precal.metrics.diagnostics`.

    Examples
    --------
    >>> from precal.metrics.diagnostics import gradient_underflow
    >>> logits = [[8.0, 0.0], [2.0, 0.0], [100.0, 0.0]]   # margins 8, 2, 100
    >>> g = gradient_underflow(logits, [0, 0, 0], "bf16")
    >>> g.true_class_zero.tolist(), g.all_zero.tolist()  # exp(-100) flushes to 0 in bf16
    ([True, False, True], [False, False, True])
    """
    fmt = _float_format(precision)
    z = check_logits(logits, name="logits", allow_1d=False)
    if z.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 columns (one per class), got shape {z.shape}.")
    check_same_length(y=y, logits=z)
    _, y_idx = encode_labels(y, z.shape[1], labels=labels, name="y", min_classes=1)
    return _gradient_underflow(z, y_idx, fmt)


def _half_gap_below_one(fmt: FloatFormat) -> float:
    """Half the spacing of ``fmt`` just below 1.0: ``2**(max(emin, -1) - nmant - 1)``.

    The binade below 1 is ``[1/2, 1)`` with spacing ``eps / 2`` unless 1.0 is the smallest
    normal number (``emin = 0``: fp6_e2m3, fp4_e2m1), where the values below 1 are
    subnormal with spacing ``eps``.
    """
    return 2.0 ** (max(fmt.emin, -1) - fmt.nmant - 1)


def _stepwise_threshold(fmt: FloatFormat, n_classes: int) -> float:
    """Margin at which :func:`softmax_in_format` first gives ``p_y == 1`` (worst case, exact margins).

    ``p_y == 1`` iff the sum ``s = r(1 + (K - 1) t)`` is 1, with ``t = r(exp(-m))``; RNE
    sends ``1 + eps/2`` to 1, so iff ``t <= T = eps / (2 (K - 1))``. ``g``, the largest grid
    value ``<= T``, and its successor ``g + ulp`` bracket ``T``; ``r(x) <= g`` iff
    ``x < g + ulp / 2``, so the threshold is ``m = -ln(g + ulp / 2)``.
    """
    target = fmt.eps / 2.0 / (n_classes - 1)
    if target >= fmt.smallest_normal:
        ulp = 2.0 ** (math.floor(math.log2(target)) - fmt.nmant)
    else:
        ulp = fmt.smallest_subnormal
    g = math.floor(target / ulp) * ulp
    return -math.log(g + ulp / 2.0)


def underflow_margin(precision: str | FloatFormat, n_classes: int = 2, *, softmax: SoftmaxMode = "exact") -> float:
    r"""Logit margin beyond which the true-class probability rounds to exactly 1.0.

    Worst case: the :math:`K - 1` other logits all equal :math:`z_y - m`, so

    .. math:: p_y = \frac{1}{1 + (K - 1) e^{-m}}.

    ``softmax="exact"`` (the exact :math:`p_y`, rounded once to the format, as a correctly
    rounded kernel would give it): with :math:`h` half the spacing of the format just below
    1, :math:`p_y` rounds to 1.0 iff :math:`1 - p_y \le h`, i.e. iff :math:`m \ge m^*` with

    .. math::

        m^* = \ln\frac{(K - 1)(1 - h)}{h} = \ln(K - 1) + \ln\left(2^{\,n_{\mathrm{mant}} + 2} - 1\right),
        \qquad h = 2^{-(n_{\mathrm{mant}} + 2)} = \varepsilon / 4,

    (for the fp4_e2m1 and fp6_e2m3 formats, whose values below 1 are subnormal,
    :math:`h = 2^{-(n_{\mathrm{mant}} + 1)}`). At :math:`m = m^*` exactly, :math:`p_y` lies
    on the midpoint between 1.0 and its predecessor; round-to-nearest-even picks 1.0 (even
    mantissa), hence the :math:`\ge`.

    ``softmax="stepwise"`` (:func:`precal.emulate.softmax_in_format`, which
    :func:`gradient_underflow` uses): :math:`p_y = r(1 / s)` is 1.0 iff the rounded sum
    :math:`s = r(1 + (K - 1)\, r(e^{-m}))` is 1.0, i.e. iff
    :math:`r(e^{-m}) \le T = \varepsilon / (2(K - 1))`. With :math:`g` the largest format
    value :math:`\le T` and :math:`u` the spacing there, this is
    :math:`m \ge -\ln(g + u/2)`, close to :math:`\ln(K - 1) + (n_{\mathrm{mant}} + 1)\ln 2`
    when :math:`T` is a normal number: about :math:`\ln 2` *below* :math:`m^*`, because the
    sum rounds to 1 once :math:`(K-1)e^{-m} \le \varepsilon/2` while the exact
    :math:`p_y` needs :math:`1 - p_y \le \varepsilon/4`. When :math:`T` is below the
    smallest subnormal :math:`\sigma` (fp8_e4m3 with :math:`K = 1000`), every
    :math:`e^{-m}` under :math:`\sigma/2` flushes to 0 and the threshold is
    :math:`\ln(2/\sigma)`. The stepwise value is for the margin *after* the logits are
    rounded to the format, and up to float32 rounding of ``exp`` and of the sum.

    Parameters
    ----------
    precision : str or FloatFormat
        A float format of :mod:`precal.emulate` (``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``, ...).
    n_classes : int, default=2
        Number of classes :math:`K \ge 2`.
    softmax : {"exact", "stepwise"}, default="exact"
        How the softmax is evaluated in the format (see above).

    Returns
    -------
    float
        The margin in nats (logit units).

    Raises
    ------
    ValueError
        For an unknown format, an integer format, ``n_classes < 2`` or an unknown
        ``softmax``.
    TypeError
        If ``precision`` is not a name or format record, or ``n_classes`` not an integer.

    References
    ----------
    .. [1] "Precision-Induced Miscalibration: Understanding and Correcting Confidence
       Distortion in Quantized Neural Networks" (project seed 000). All references of these
       diagnostics: :mod:`precal.metrics.diagnostics`.

    Examples
    --------
    >>> from precal.metrics.diagnostics import underflow_margin
    >>> round(underflow_margin("bf16"), 4)      # ln(2**9 - 1) = ln 511
    6.2364
    >>> round(underflow_margin("fp16", 10), 4)  # ln 9 + ln(2**12 - 1)
    10.5147
    >>> round(underflow_margin("bf16", softmax="stepwise"), 4)  # -ln(2**-8 + 2**-16)
    5.5413
    """
    fmt = _float_format(precision)
    check_number(n_classes, "n_classes", numbers.Integral, min_val=2)
    check_option(softmax, "softmax", ("exact", "stepwise"))
    if softmax == "exact":
        h = _half_gap_below_one(fmt)
        return math.log(n_classes - 1) + math.log((1.0 - h) / h)
    return _stepwise_threshold(fmt, int(n_classes))


# ---------------------------------------------------------------- saturation
@dataclass(frozen=True)
class SaturationReport:
    """How much of the probability resolution a precision has lost (see :func:`saturation_report`).

    Attributes
    ----------
    n_samples : int
    share_saturated : float
        Share of samples whose top confidence is exactly 1.0.
    n_distinct : int
        Number of distinct top-confidence values.
    share_tied : float
        Share of samples whose top confidence equals another sample's.
    n_exact_zeros : int
        Number of entries of ``p`` that are exactly 0.
    """

    n_samples: int
    share_saturated: float
    n_distinct: int
    share_tied: float
    n_exact_zeros: int


def _saturation_report(prob: np.ndarray) -> SaturationReport:
    conf = prob.max(axis=1)
    _, counts = np.unique(conf, return_counts=True)
    n = conf.shape[0]
    return SaturationReport(
        n_samples=int(n),
        share_saturated=float(np.mean(conf == 1.0)),
        n_distinct=int(counts.shape[0]),
        share_tied=float(counts[counts > 1].sum() / n),
        n_exact_zeros=int(np.count_nonzero(prob == 0.0)),
    )


def saturation_report(p: Any) -> SaturationReport:
    r"""Saturation and ties of probabilities: exact 1.0 confidences, exact zeros, tied values.

    With :math:`c_i = \max_k p_{ik}`:

    .. math::

        \text{share\_saturated} = \frac{1}{n}\sum_i [c_i = 1], \qquad
        \text{share\_tied} = \frac{1}{n}\sum_i [\exists j \ne i : c_j = c_i]

    plus the number of distinct :math:`c_i` and the number of entries :math:`p_{ik} = 0`.
    A format with few values near 1 (bfloat16 has 128 in :math:`[1/2, 1)`) maps many
    samples onto the same confidence; binned metrics absorb such ties silently (they all
    fall in one bin, and equal-mass bins split them arbitrarily), and an exact 0 for the
    true class makes the log-likelihood infinite.

    Parameters
    ----------
    p : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Probabilities, ideally in the dtype they were computed in.

    Returns
    -------
    SaturationReport
        ``n_samples``, ``share_saturated``, ``n_distinct``, ``share_tied``, ``n_exact_zeros``.

    Raises
    ------
    ValueError
        On invalid probabilities.

    Notes
    -----
    Values are compared exactly, in the validated dtype (float16/bfloat16 input is held
    exactly in float32). For 1-D binary input the two columns ``[1 - p, p]`` are formed in
    float64 first.

    References
    ----------
    .. [1] "Precision-Induced Miscalibration: Understanding and Correcting Confidence
       Distortion in Quantized Neural Networks" (project seed 000). All references of these
       diagnostics: :mod:`precal.metrics.diagnostics`.

    Examples
    --------
    >>> from precal.metrics.diagnostics import saturation_report
    >>> r = saturation_report([[1.0, 0.0], [1.0, 0.0], [0.75, 0.25], [0.5, 0.5]])
    >>> r.share_saturated, r.n_distinct, r.share_tied, r.n_exact_zeros  # two 1.0 tie
    (0.5, 3, 0.5, 2)
    """
    return _saturation_report(check_probabilities(p, name="p"))

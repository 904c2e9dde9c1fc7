"""Calibration-error estimators with less bias than the binned plug-in ECE.

The plug-in ECE of :func:`~precal.metrics.expected_calibration_error` is biased upward: a
perfectly calibrated model still scores of order ``sqrt(B / n)`` because each bin's accuracy is
a noisy estimate. Two remedies from the literature, with the signatures of the other
metrics (``metric(y_true, y_prob, *, ...)`` on probabilities, top-label):

* :func:`debiased_calibration_error`: the debiased binned L2 estimator of Kumar, Liang &
  Ma (NeurIPS 2019), which subtracts each bin's label variance;
* :func:`smooth_calibration_error`: the smooth ECE of Błasiok & Nakkiran (2023), a kernel
  (not binned) estimate whose bandwidth is chosen by the data, as in the ``relplot``
  package.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import brentq

from .calibration import _check_n_bins, _top_label_pairs, _uniform_bin_index

__all__ = ["debiased_calibration_error", "smooth_calibration_error"]

#: Smallest bandwidth the automatic rule returns (relplot's ``eps``): below it the kernel
#: resolves differences of confidence no calibration set can support.
SMOOTH_ECE_MIN_BANDWIDTH = 1e-3

#: Grid points per bandwidth used to evaluate the kernel smoothing (at least 2001 points).
_POINTS_PER_BANDWIDTH = 20

#: Smallest bandwidth a caller may fix: its grid has 20 / σ = 2 million points (32 MB); a
#: finer one would need gigabytes (1e-9: 300 GB) to resolve what no calibration set can.
SMOOTH_ECE_MIN_FIXED_BANDWIDTH = 1e-5


# ---------------------------------------------------------------- debiased (Kumar et al.)
def _equal_mass_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence for equal-mass bins that never split tied values.

    As in Kumar et al.'s code: the sorted confidences are cut into ``min(n_bins, n)`` runs
    whose sizes differ by at most one (``numpy.array_split``); the edge between two runs is
    the midpoint of the last value of one and the first of the next; duplicate edges are
    merged, and a confidence belongs to the first bin whose upper edge is ``>=`` it (bins
    are right-closed, the last edge is 1).
    """
    n = conf.shape[0]
    b = min(n_bins, n)
    q, r = divmod(n, b)
    starts = np.arange(1, b) * q + np.minimum(np.arange(1, b), r)  # first index of runs 1..b-1
    ordered = np.sort(conf)
    edges = np.unique(np.append((ordered[starts - 1] + ordered[starts]) / 2.0, 1.0))
    return np.searchsorted(edges, conf, side="left")


def _debiased_squared_error(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray) -> float:
    """``sum_b n_b/n [(conf_b - acc_b)^2 - acc_b (1 - acc_b)/(n_b - 1)]`` over bins with n_b >= 2."""
    n_bins = int(idx.max()) + 1
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    full = count >= 2
    nb, acc = count[full], acc_sum[full] / count[full]
    gap = conf_sum[full] / nb - acc
    return float(np.sum(nb / conf.shape[0] * (gap * gap - acc * (1.0 - acc) / (nb - 1.0))))


def debiased_calibration_error(
    y_true: Any,
    y_prob: Any,
    *,
    n_bins: int = 15,
    strategy: Literal["quantile", "uniform"] = "quantile",
    squared: bool = False,
    labels: Any = None,
) -> float:
    r"""Debiased top-label L2 calibration error (Kumar, Liang & Ma, 2019).

    The squared L2 calibration error ``E[(conf - P(correct | conf))^2]`` estimated per bin,
    with each bin's squared gap corrected by the variance of its accuracy estimate:

    .. math::

        \widehat{\mathrm{CE}^2} = \sum_{b:\,n_b \ge 2} \frac{n_b}{n}
            \left[ (\bar f_b - \bar y_b)^2 - \frac{\bar y_b (1 - \bar y_b)}{n_b - 1} \right]

    where ``f̄_b`` is the mean top-label confidence of bin ``b``, ``ȳ_b`` its accuracy and
    ``n_b`` its size. For a bin of Bernoulli outcomes with success rate ``a``, the plug-in
    ``(f̄ - ȳ)^2`` overestimates ``(f̄ - a)^2`` by ``Var(ȳ) = a (1 - a)/n_b``, and
    ``ȳ(1 - ȳ)/(n_b - 1)`` is an unbiased estimate of that variance, so the bracket is an
    unbiased estimate of the bin's squared gap. The function returns
    ``sqrt(max(CE², 0))``, as Kumar et al.'s ``get_calibration_error(..., p=2,
    debias=True)`` does, or the (possibly negative) unbiased ``CE²`` itself with
    ``squared=True``, which averages without bias over repeated splits.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_prob : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities (rows sum to 1); binary: positive-class probability.
    n_bins : int, default=15
        Number of bins (Kumar et al.'s default).
    strategy : {"quantile", "uniform"}, default="quantile"
        ``"quantile"``: equal-mass bins that never split tied confidences, built as in Kumar
        et al.'s code (edges halfway between the runs of a sorted split, bins right-closed);
        ``"uniform"``: the equal-width bins of :func:`expected_calibration_error`.
    squared : bool, default=False
        Return the unbiased estimate of the *squared* error (may be negative) instead of
        its clipped square root.
    labels : array-like of shape (n_classes,), default=None
        The class of each column of ``y_prob``.

    Returns
    -------
    float
        An L2 calibration error in [0, 1] (``squared=False``). It is not on the scale of
        the L1 ECE: for the same bins, the plug-in L2 error is at least the plug-in L1 ECE.

    Raises
    ------
    ValueError
        As :func:`expected_calibration_error`, and for an unknown ``strategy``.

    Notes
    -----
    Bins with a single sample contribute 0 (no variance estimate exists), as in Kumar et
    al.'s code. Equal to ``calibration.get_calibration_error(probs, labels, p=2,
    debias=True, mode="top-label")`` of the authors' ``uncertainty-calibration`` package
    with the same bins (tested). For binary input the confidence is ``max(p, 1 - p)``.

    References
    ----------
    A. Kumar, P. Liang, T. Ma. "Verified Uncertainty Calibration". NeurIPS 2019.
    arXiv:1909.10155.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.metrics import debiased_calibration_error, expected_calibration_error
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.uniform(0.5, 1.0, size=2000)               # a calibrated binary model
    >>> y = (rng.uniform(size=2000) < conf).astype(int)
    >>> p = np.stack([1 - conf, conf], axis=1)
    >>> round(expected_calibration_error(y, p), 3) > round(debiased_calibration_error(y, p), 3)
    True
    """
    n_bins = _check_n_bins(n_bins)
    if strategy not in ("quantile", "uniform"):
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}.")
    if not isinstance(squared, (bool, np.bool_)):
        raise TypeError(f"squared must be a bool, got {squared!r}.")
    conf, correct = _top_label_pairs(y_true, y_prob, labels)
    if strategy == "quantile":
        idx = _equal_mass_bins(conf, n_bins)
    else:
        idx = _uniform_bin_index(conf, np.linspace(0.0, 1.0, n_bins + 1))
    value = _debiased_squared_error(conf, correct, idx)
    return value if squared else math.sqrt(max(value, 0.0))


# ---------------------------------------------------------------- smooth ECE (Błasiok & Nakkiran)
def _smooth_ece_at(conf: np.ndarray, residual: np.ndarray, sigma: float) -> float:
    """smECE at bandwidth ``sigma``: ``∫ |Σ_i K_σ(t, f_i) r_i| dt / n`` with the reflected Gaussian kernel.

    The residuals and the unit masses are spread linearly onto a uniform grid of ``[0, 1]``
    (spacing at most ``sigma / 20``), convolved with the Gaussian reflected at 0 and 1
    (``scipy.ndimage.gaussian_filter1d``, mode ``"mirror"``, with the mass on the two end
    points doubled because each is its own mirror image: exact for mass on grid points),
    and integrated with the trapezoid rule; the ratio of the two integrals makes the result
    independent of the kernel's discrete normalisation.
    """
    n_grid = max(2001, int(math.ceil(_POINTS_PER_BANDWIDTH / sigma)) + 1)
    pos = conf * (n_grid - 1)
    left = np.minimum(pos.astype(np.int64), n_grid - 2)
    frac = pos - left
    splat = np.empty((2, n_grid))
    for row, values in enumerate((residual, np.ones_like(residual))):
        splat[row] = np.bincount(left, weights=(1.0 - frac) * values, minlength=n_grid)
        splat[row] += np.bincount(left + 1, weights=frac * values, minlength=n_grid)
    # "mirror" reflects about the end points, which are their own images: mass there counts twice
    # in the reflected kernel (2 φ(t - 1) near t = 1), once in the filter
    splat[:, [0, -1]] *= 2.0
    smooth = gaussian_filter1d(splat, sigma * (n_grid - 1), axis=1, mode="mirror", truncate=8.0)
    trap = np.ones(n_grid)
    trap[[0, -1]] = 0.5
    return float(np.abs(smooth[0]) @ trap / (smooth[1] @ trap))


def _smooth_ece_bandwidth(conf: np.ndarray, residual: np.ndarray) -> float:
    """The fixed point ``σ* = smECE_σ*`` in ``[1e-3, 1]`` (to 1e-7), or 1e-3 if smECE_1e-3 <= 1e-3."""

    def gap(sigma: float) -> float:
        return _smooth_ece_at(conf, residual, sigma) - sigma

    lo, hi = SMOOTH_ECE_MIN_BANDWIDTH, 1.0
    if gap(lo) <= 0.0:
        return lo
    if gap(hi) >= 0.0:
        return hi
    return float(brentq(gap, lo, hi, xtol=1e-7, rtol=1e-10))


def smooth_calibration_error(
    y_true: Any,
    y_prob: Any,
    *,
    bandwidth: float | str = "auto",
    labels: Any = None,
    return_bandwidth: bool = False,
) -> float | tuple[float, float]:
    r"""Smooth ECE of the top-label confidence (Błasiok & Nakkiran, 2023).

    Kernel-smoothed residuals instead of bins. With ``f_i`` the top-label confidence,
    ``r_i = f_i - [ŷ_i = y_i]`` its residual and ``K_σ`` the Gaussian kernel of width
    ``σ`` reflected at 0 and 1 (so its mass stays in ``[0, 1]``):

    .. math::

        \hat r_σ(t) = \frac{\sum_i K_σ(t, f_i)\, r_i}{\sum_i K_σ(t, f_i)}, \qquad
        \hat δ_σ(t) = \frac{1}{n}\sum_i K_σ(t, f_i), \qquad
        \mathrm{smECE}_σ = \int_0^1 |\hat r_σ(t)|\, \hat δ_σ(t)\, dt

    and ``smECE = smECE_σ*`` at the bandwidth ``σ*`` with ``smECE_σ* = σ*`` (the fixed
    point exists and is unique; it balances smoothing against the size of the error
    measured). This is the definition and bandwidth rule of the authors' ``relplot``
    package (``relplot.smECE``). precal solves the fixed point by Brent's method to 1e-7 in
    ``[1e-3, 1]`` where relplot bisects ten times (to 2⁻¹⁰) and returns the upper end of the
    bracket, and evaluates the kernel on a finer grid; for confidences away from 0 and 1
    the two agree to about 1e-3 (tested). Near the ends they differ: relplot's discrete
    reflection counts mass on its grid's end points once, where the reflected kernel counts
    it twice (an end point is its own mirror image). precal follows the kernel (tested
    against a direct evaluation of it); on the ResNet-50/CIFAR-10 test logits of
    ``../shared/data/logits``, where 94 % of the confidences exceed 0.999, relplot gives
    0.061 and precal 0.043.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_prob : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities (rows sum to 1); binary: positive-class probability.
    bandwidth : float or "auto", default="auto"
        ``σ`` in [1e-5, 1], or ``"auto"`` for the fixed point ``σ*`` (``relplot.smECE``; a
        fixed value is ``relplot.smECE_sigma``).
    labels : array-like of shape (n_classes,), default=None
        The class of each column of ``y_prob``.
    return_bandwidth : bool, default=False
        Also return the bandwidth used.

    Returns
    -------
    float, or (float, float) with ``return_bandwidth=True``
        smECE in [0, 1] (and ``σ``).

    Raises
    ------
    ValueError
        As :func:`expected_calibration_error`, and for a bandwidth outside [1e-5, 1].

    Notes
    -----
    smECE is a *consistent* calibration measure: it is within constant factors of the
    distance to the nearest perfectly calibrated predictor, and continuous in the
    predictions, which the binned ECE is not. The automatic bandwidth is never below 1e-3
    (relplot's floor). For binary input the confidence is ``max(p, 1 - p)`` (top-label,
    as the other metrics); relplot's binary examples use the positive-class probability.
    Cost: each bandwidth takes one pass over the ``n`` confidences and a convolution on a
    grid of ``G = max(2001, 20/σ)`` points; the fixed point takes about 10-20 bandwidths.

    References
    ----------
    J. Błasiok, P. Nakkiran. "Smooth ECE: Principled Reliability Diagrams via Kernel
    Smoothing". ICLR 2024. arXiv:2309.12236. Package: https://github.com/apple/ml-calibration.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.metrics import smooth_calibration_error
    >>> p = np.array([[0.9, 0.1]] * 100)             # says 90%, right 90% of the time
    >>> y = np.array([0] * 90 + [1] * 10)
    >>> round(smooth_calibration_error(y, p, bandwidth=0.05), 6)
    0.0
    """
    if not isinstance(return_bandwidth, (bool, np.bool_)):
        raise TypeError(f"return_bandwidth must be a bool, got {return_bandwidth!r}.")
    if isinstance(bandwidth, str):
        if bandwidth != "auto":
            raise ValueError(f"bandwidth must be a float in [1e-5, 1] or 'auto', got {bandwidth!r}.")
    elif isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real) or not 0.0 < bandwidth <= 1.0:
        raise ValueError(f"bandwidth must be a float in [1e-5, 1] or 'auto', got {bandwidth!r}.")
    elif bandwidth < SMOOTH_ECE_MIN_FIXED_BANDWIDTH:
        raise ValueError(f"bandwidth must be at least {SMOOTH_ECE_MIN_FIXED_BANDWIDTH:g} (its evaluation grid has "
                         f"20 / bandwidth points; {bandwidth!r} would need {20 / bandwidth:.3g}), got {bandwidth!r}.")
    conf, correct = _top_label_pairs(y_true, y_prob, labels)
    residual = conf - correct
    sigma = _smooth_ece_bandwidth(conf, residual) if bandwidth == "auto" else float(bandwidth)
    value = _smooth_ece_at(conf, residual, sigma)
    return (value, sigma) if return_bandwidth else value

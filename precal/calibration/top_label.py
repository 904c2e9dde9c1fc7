"""Top-label calibration (Gupta & Ramdas, 2022): recalibrate the predicted class's confidence only."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from .._numerics import to_numpy
from .._validation import check_number, check_option
from ._base import BaseLogitCalibrator, check_state_keys, state_array, state_float
from .matrix_scaling import StructuredMatrixScaling, _MatrixScalingMap
from .temperature import fit_temperature, temperature_range

__all__ = ["TopLabelCalibrator", "fit_confidence_map", "top_label_log_proba", "METHODS"]

METHODS = ("isotonic", "histogram", "spline")
BASES = ("temperature", "matrix_scaling", None)
#: State of the matrix-scaling base (besides ``temperature_``, its first-stage temperature).
_MATRIX_KEYS = ("base_smoothing_", "base_coef_", "base_intercept_")
#: Degree of the piecewise polynomial each method's map is stored as.
_DEGREE = {"histogram": 0, "isotonic": 1, "spline": 3}
#: Relative margin by which the top confidence is kept above the runner-up's probability.
TIE_MARGIN = 1e-9


def fit_confidence_map(
    conf: np.ndarray, correct: np.ndarray, weight: np.ndarray, method: str, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a map from confidence to accuracy, as a piecewise polynomial.

    Parameters
    ----------
    conf : ndarray of shape (n,)
        Top-label confidences in [0, 1].
    correct : ndarray of shape (n,)
        1.0 where the predicted class is the true one, else 0.0.
    weight : ndarray of shape (n,)
        Positive sample weights (repetitions).
    method : {"isotonic", "histogram", "spline"}
    n_bins : int, default=15
        Bins of ``"histogram"`` (at most one per sample).

    Returns
    -------
    (breakpoints, coef) : ndarray of shape (m,), ndarray of shape (degree + 1, m)
        Column ``j`` of ``coef`` holds the polynomial ``sum_d coef[d, j] t^(degree - d)``
        in ``t = c - breakpoints[j]`` on ``[breakpoints[j], breakpoints[j+1])`` (scipy's
        ``PPoly`` convention); the last column is constant, and a confidence below
        ``breakpoints[0]`` takes the value at ``breakpoints[0]``.

    Notes
    -----
    ``"isotonic"``: scikit-learn's ``IsotonicRegression`` (weighted pool-adjacent-violators,
    values in [0, 1]), linear between its thresholds as its ``predict`` is.
    ``"histogram"``: ``n_bins`` equal-mass bins by cumulative weight (run ``b`` starts at the
    sample covering the ``b/B`` quantile of the weight; tied confidences stay in one bin);
    each bin's value is its (weighted) accuracy; the first bin starts at 0 and the last
    ends at 1. Unlike the other two, it need not be monotone.
    ``"spline"``: scipy's ``PchipInterpolator`` (monotone cubic Hermite, C¹) through the
    weighted centroid ``(mean confidence, value)`` of each block of the isotonic fit: a
    smooth monotone curve through the steps of the isotonic maximum-likelihood fit. Blocks
    whose rounded centroids do not increase (confidences a few ulps apart, as quantized logits
    give) are merged into one knot at their weighted mean value.
    """
    order = np.argsort(conf, kind="stable")
    conf, correct, weight = conf[order], correct[order], weight[order]
    if method == "histogram":
        return _histogram_map(conf, correct, weight, n_bins)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, correct, sample_weight=weight)
    x, y = iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64)
    if method == "isotonic":
        slope = np.append(np.diff(y) / np.diff(x), 0.0)
        return x, np.stack([slope, y])
    # spline: blocks of the isotonic fit (runs of equal fitted value) -> their weighted centroids
    fitted = iso.predict(conf)
    starts = np.flatnonzero(np.append(True, fitted[1:] != fitted[:-1]))
    w_block = np.add.reduceat(weight, starts)
    x_block = np.add.reduceat(conf * weight, starts) / w_block
    y_block = fitted[starts]
    # blocks of confidences a few ulps apart (quantized logits: rows that are permutations of
    # each other) can have centroids that do not increase once rounded; PCHIP needs strictly
    # increasing knots, so such runs become one knot at their weighted mean value
    x_block = np.maximum.accumulate(x_block)
    group = np.cumsum(np.append(True, np.diff(x_block) > 0)) - 1
    if group[-1] + 1 < len(x_block):
        merged_w = np.bincount(group, weights=w_block)
        y_block = np.bincount(group, weights=w_block * y_block) / merged_w
        x_block = x_block[np.flatnonzero(np.append(True, np.diff(group) > 0))]
    if len(x_block) == 1:
        return x_block, np.array([[0.0], [0.0], [0.0], y_block])
    from scipy.interpolate import PchipInterpolator

    pchip = PchipInterpolator(x_block, y_block)
    last = np.array([[0.0], [0.0], [0.0], [y_block[-1]]])
    return x_block, np.concatenate([pchip.c, last], axis=1)


def _histogram_map(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray, n_bins: int):
    """Equal-mass histogram binning on sorted, positively weighted samples."""
    cum = np.cumsum(weight)  # sample i covers [cum[i] - w[i], cum[i]) of the total weight
    n_runs = min(n_bins, len(conf))
    # run b starts at the sample covering position b W / B (weights act as repetitions)
    starts = np.searchsorted(cum, np.arange(1, n_runs) * cum[-1] / n_runs, side="right")
    edges = np.unique(conf[starts[starts < len(conf)]])
    edges = edges[edges > conf[0]]  # the first bin [0, e_1) holds the smallest confidence
    idx = np.searchsorted(edges, conf, side="right")
    acc = np.bincount(idx, weights=weight * correct, minlength=len(edges) + 1)
    acc /= np.bincount(idx, weights=weight, minlength=len(edges) + 1)
    return np.append(0.0, edges), acc[None, :]


def top_label_log_proba(
    logits: torch.Tensor,
    inverse_temperature: torch.Tensor,
    breakpoints: torch.Tensor,
    coef: torch.Tensor,
    class_map: torch.Tensor,
    cap: torch.Tensor,
) -> torch.Tensor:
    """Log of the top-label-calibrated probabilities (float64), the map of :class:`TopLabelCalibrator`.

    ``p = softmax(z / T)``, ``c = argmax p``; ``q_c = clip(g_m(p_c), floor, cap_m)`` with
    ``m = class_map[c]``; ``q_j = (1 - q_c) p_j / sum_{k != c} p_k`` for ``j != c``, computed
    in log space so that no entry is ``-inf``. ``breakpoints`` ``(M, L)`` and ``coef``
    ``(d + 1, M, L)`` hold the ``M`` maps padded to a common length ``L`` (a padded
    breakpoint repeats the last one, with a constant column), so every sample is evaluated
    with one ``searchsorted`` on the maps laid end to end (map ``m`` shifted by ``2m``).
    """
    z = logits.to(torch.float64) * inverse_temperature
    logp = torch.log_softmax(z, dim=-1)
    log_top, pred = logp.max(dim=-1)
    others = logp.scatter(-1, pred.unsqueeze(-1), float("-inf"))
    log_share = others - torch.logsumexp(others, dim=-1, keepdim=True)  # p_j / sum_{k != c} p_k
    runner_up = log_share.amax(dim=-1).exp()
    # the piecewise polynomial of map m at confidence p_c
    m = class_map[pred]
    n_maps, length = breakpoints.shape
    shift = 2.0 * torch.arange(n_maps, dtype=torch.float64, device=z.device)
    flat = (breakpoints + shift.unsqueeze(-1)).reshape(-1)
    conf = torch.maximum(log_top.exp(), breakpoints[:, 0][m])
    idx = torch.searchsorted(flat, conf + shift[m], right=True) - 1
    t = conf - breakpoints.reshape(-1)[idx]
    columns = coef.reshape(coef.shape[0], -1)[:, idx]
    q = columns[0]
    for d in range(1, coef.shape[0]):
        q = q * t + columns[d]
    # cap from the amount of data; floor: strictly above the runner-up (tie at r / (1 + r))
    q = torch.minimum(q, cap[m])
    q = torch.maximum(q, runner_up / (1.0 + runner_up) * (1.0 + 1e-9))  # TIE_MARGIN (TorchScript needs a literal)
    out = torch.log1p(-q).unsqueeze(-1) + log_share
    return out.scatter(-1, pred.unsqueeze(-1), q.log().unsqueeze(-1))


#: The largest float64 below 1: a cap of exactly 1 would give the other classes zero probability.
_LARGEST_CAP = float(np.nextafter(1.0, 0.0))


def _cap(n: float) -> float:
    """Laplace's ``1 - 1/(n + 2)`` for ``n`` samples (counted by weight), kept below 1."""
    return min(1.0 - 1.0 / (n + 2.0), _LARGEST_CAP)


class _TopLabelMap(torch.nn.Module):
    def __init__(self, inverse_temperature: float, breakpoints: np.ndarray, coef: np.ndarray,
                 class_map: np.ndarray, cap: np.ndarray) -> None:
        super().__init__()
        f64 = torch.float64
        self.register_buffer("inverse_temperature", torch.tensor(inverse_temperature, dtype=f64))
        self.register_buffer("breakpoints", torch.tensor(breakpoints, dtype=f64))
        self.register_buffer("coef", torch.tensor(coef, dtype=f64))
        self.register_buffer("class_map", torch.tensor(class_map, dtype=torch.int64))
        self.register_buffer("cap", torch.tensor(cap, dtype=f64))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        out = top_label_log_proba(logits, self.inverse_temperature, self.breakpoints, self.coef, self.class_map,
                                  self.cap)
        return out.to(logits.dtype)


class TopLabelCalibrator(BaseLogitCalibrator):
    r"""Top-label calibration: recalibrate the confidence of the predicted class, keep the prediction.

    Gupta & Ramdas (2022) reduce multiclass calibration to one binary problem per predicted
    class: "is the predicted class right?" as a function of its confidence. This calibrator
    fits that map ``g_c`` (isotonic regression, histogram binning or a monotone spline) on
    top of an optional base map, and leaves the predicted class unchanged:

    .. math::

        p &= \operatorname{softmax}(z / T), \qquad c = \arg\max_k p_k \\
        q_c &= \max\big(\min(g_{c}(p_c),\; 1 - \tfrac{1}{n_c + 2}),\; \tfrac{r}{1 + r}(1 + 10^{-9})\big),
        \qquad r = \max_{j \ne c} \frac{p_j}{\sum_{k \ne c} p_k} \\
        q_j &= (1 - q_c)\, \frac{p_j}{\sum_{k \ne c} p_k} \quad (j \ne c)

    ``T`` is the temperature-scaling fit (``base="temperature"``) or 1 (``base=None``),
    ``g_c`` the map of class ``c`` (its own, or the pooled one) and ``n_c`` the number of
    samples that map was fitted on. The rest of the mass keeps the base model's proportions.
    With ``base="matrix_scaling"``, ``z / T`` is replaced by the calibrated logits of a
    :class:`StructuredMatrixScaling` fitted on the same data (``T = 1`` on top of them).

    Parameters
    ----------
    method : {"isotonic", "histogram", "spline"}, default="isotonic"
        ``"isotonic"``: scikit-learn's ``IsotonicRegression`` of correctness on confidence
        (the monotone maximum-likelihood fit, no tuning parameter), linear between its
        thresholds. ``"histogram"``: equal-mass histogram binning with ``n_bins`` bins
        (Gupta & Ramdas's method). ``"spline"``: a monotone cubic (scipy's
        ``PchipInterpolator``) through the centroids of the isotonic fit's blocks, a smooth
        version of the isotonic fit in the spirit of Gupta et al. (2021).
    base : {"temperature", "matrix_scaling", None}, default="temperature"
        Map applied first. ``"temperature"`` fits temperature scaling on the same data and
        recalibrates the top-label confidence of its probabilities: the temperature fixes
        the shape of the whole distribution (which the top-label map cannot) and the
        top-label map the remaining miscalibration of the confidence.
        ``"matrix_scaling"`` does the same on top of :class:`StructuredMatrixScaling`
        (defaults) fitted on the same data: its affine map can move predictions (on
        low-precision models it recovers accuracy the rounding cost), and the top-label map
        then keeps *its* predicted class. ``None`` recalibrates the model's own softmax. (A PACS base, the "precision-aware
        temperature + top-label" composite, equalled the temperature base within noise in
        all 20 model × precision settings of ``docs/study-cross-precision.md``: ECE within
        ±0.12 points, NLL within ±0.001. It is not offered; ``base=None`` on
        ``PACSCalibrator(...).decision_function(z)`` builds it.)
    per_class : {"auto", True, False}, default="auto"
        Fit one map per predicted class (top-label calibration proper: calibrated given
        the predicted class) or one pooled map for all classes (confidence calibration).
        ``"auto"``: a class gets its own map when at least ``min_samples_per_class``
        calibration samples are predicted as it, the others share the pooled map. ``True``:
        every predicted class gets its own map however few its samples; ``False``: pooled.
    min_samples_per_class : int, default=2000
        Samples (sum of sample weights) a class needs for its own map under
        ``per_class="auto"``. A per-class map trades the pooled map's bias (classes
        miscalibrated differently) for variance: it sees ``1/K`` of the data, and a map's
        estimation error shrinks only like ``n^(-1/3)`` for isotonic regression and like
        ``sqrt(B / n)`` for ``B`` histogram bins. At 2 000 samples the 15 default bins hold
        about 133 each, where a bin's accuracy is known to about ±0.035 (one standard error
        at 80 % accuracy), a few times the 1-2 ECE points that temperature scaling usually
        leaves; with fewer, the per-class maps' noise outweighs what they can fix, so the
        class uses the pooled map. (On the CIFAR-10 logits of ``../shared/data/logits``,
        per-class maps from 500 samples per class raised the test ECE of two of three
        models above the pooled map's: ``benchmarks/quick_quality.py`` at commit ``7bf07ad``, since
        replaced by ``benchmarks/quality_bar.py``.)
    n_bins : int, default=15
        Bins of ``method="histogram"`` (ignored otherwise).

    Attributes
    ----------
    temperature_ : float
        Temperature of the base map (1.0 for ``base=None``; the first-stage temperature of
        the matrix-scaling base).
    base_smoothing_, base_coef_, base_intercept_
        With ``base="matrix_scaling"`` only: the base's ``smoothing_``, ``coef_`` and
        ``intercept_`` (see :class:`StructuredMatrixScaling`).
    breakpoints_ : ndarray of shape (n_maps, length)
        Breakpoints of each map's piecewise polynomial, padded to a common length. Row 0
        is the pooled map; rows 1.. the per-class maps.
    coef_ : ndarray of shape (degree + 1, n_maps, length)
        Their polynomial coefficients (degree 1 for isotonic, 0 for histogram, 3 for
        spline; see :func:`fit_confidence_map`).
    class_map_ : ndarray of int, shape (n_classes,)
        Row of the map used for each predicted class (0: the pooled map).
    cap_ : ndarray of shape (n_maps,)
        Largest confidence each map may give, ``1 - 1/(n + 2)`` for ``n`` fitting samples
        (at most the largest float64 below 1, which it rounds to beyond ``n`` of about 1e16).
    classes_, n_features_in_
        As every calibrator.

    Notes
    -----
    **The prediction stays the model's.** Where the recalibrated confidence would fall
    below the runner-up's share of the rest, i.e. ``g(p_c) < r / (1 + r)`` (``r`` as above),
    the top class would lose the argmax. Then ``q_c`` is raised to the tie point
    ``r / (1 + r)`` (plus a relative 1e-9, so the top class keeps the argmax strictly).
    The tie point is at most the base confidence ``p_c`` (because ``p_c >= r (1 - p_c)``)
    and at most 1/2, so these samples — the least confident ones — are never made more
    confident than the base model, and ``predict`` equals the base model's argmax always
    (``argmax(z)`` for the temperature base and ``None``; the matrix-scaling map's argmax
    for that base). The alternative, letting the argmax move to the runner-up,
    would change predictions on the strength of a one-dimensional confidence map that says
    nothing about which other class is right.

    **No certainty from finite data.** A map fitted on ``n`` samples never gives more than
    ``1 - 1/(n + 2)`` (Laplace's rule of succession for ``n`` successes out of ``n``): the
    top block of an isotonic fit is often all-correct (value 1), and a confidence of
    exactly 1 would put zero probability, infinite log-loss, on every other class. The
    other classes' log-probabilities are computed in log space, so calibrated logits are
    always finite, also for logits of 1e4.

    **Small calibration sets.** Nothing fails for lack of data and nothing is NaN: a class
    with too few samples uses the pooled map; a map fitted on fewer samples than
    ``n_bins`` has one bin per sample; a single block or sample gives a constant map
    (then capped and floored as above). With very few samples the result is, honestly,
    close to a constant confidence.

    **Sample weights** count as repetitions (in the fits, in ``min_samples_per_class`` and
    in the cap), as scikit-learn's conventions require; pass counts, not normalised
    weights. Zero-weight samples are ignored.

    **Devices.** Tensors are calibrated on their device (the map is evaluated in torch,
    float64); fitting moves the per-sample confidence and correctness (two ``n``-vectors)
    to the host for scikit-learn and scipy. ``to_torch()`` returns a module running the
    same function as ``predict_proba``.

    References
    ----------
    C. Gupta, A. Ramdas. "Top-label calibration and multiclass-to-binary reductions".
    ICLR 2022. arXiv:2107.08353.
    K. Gupta, A. Rahimi, T. Ajanthan, T. Mensink, C. Sminchisescu, R. Hartley.
    "Calibration of Neural Networks using Splines". ICLR 2021. arXiv:2006.12800.
    B. Zadrozny, C. Elkan. "Transforming classifier scores into accurate multiclass
    probability estimates". KDD 2002 (isotonic regression for calibration).

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration import TopLabelCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=2000)
    >>> logits = 3.0 * (np.eye(4)[y] + rng.normal(size=(2000, 4)))
    >>> cal = TopLabelCalibrator(method="isotonic").fit(logits, y)
    >>> bool((cal.predict(logits) == logits.argmax(axis=1)).all())
    True
    >>> cal.predict_proba(logits).sum(axis=1)[:3]
    array([1., 1., 1.])
    """

    _state_keys = ("temperature_", "breakpoints_", "coef_", "class_map_", "cap_")
    _device_native = True

    def __init__(
        self,
        *,
        method: str = "isotonic",
        base: str | None = "temperature",
        per_class: bool | str = "auto",
        min_samples_per_class: int = 2000,
        n_bins: int = 15,
    ) -> None:
        self.method = method
        self.base = base
        self.per_class = per_class
        self.min_samples_per_class = min_samples_per_class
        self.n_bins = n_bins

    def _validate_hyperparameters(self) -> None:
        check_option(self.method, "method", METHODS)
        check_option(self.base, "base", BASES)
        check_option(self.per_class, "per_class", ("auto", True, False))
        check_number(self.min_samples_per_class, "min_samples_per_class", numbers.Integral, min_val=1)
        check_number(self.n_bins, "n_bins", numbers.Integral, min_val=1)

    def _fit(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        n_classes = logits.shape[1]
        temperature = 1.0
        base_logits = logits.to(torch.float64)
        if self.base == "temperature":
            temperature = float(fit_temperature(logits, y_idx, sample_weight).temperature)
        elif self.base == "matrix_scaling":
            first = StructuredMatrixScaling()
            first._fit(logits, y_idx, sample_weight)
            self.base_smoothing_, self.base_coef_, self.base_intercept_ = (first.smoothing_, first.coef_,
                                                                           first.intercept_)
            base_map = _MatrixScalingMap(first.temperature_, first.smoothing_, first.coef_, first.intercept_)
            base_logits = base_map.to(logits.device)(base_logits)  # as _calibrated_logits computes them
            temperature_of_base = float(first.temperature_)
        # the confidences exactly as top_label_log_proba computes them (z * (1/T), not z / T):
        # histogram edges sit at calibration confidences, and a sample on an edge must fall in
        # the same bin when it is predicted as when it was fitted
        logp = torch.log_softmax(base_logits * (1.0 / temperature), dim=-1)
        log_top, pred = logp.max(dim=-1)
        conf, pred = to_numpy(log_top.exp()), to_numpy(pred)
        correct = (pred == to_numpy(y_idx)).astype(np.float64)
        weight = np.ones(len(pred)) if sample_weight is None else to_numpy(sample_weight).astype(np.float64)
        keep = weight > 0
        conf, pred, correct, weight = conf[keep], pred[keep], correct[keep], weight[keep]

        maps = [fit_confidence_map(conf, correct, weight, self.method, self.n_bins)]
        caps = [_cap(weight.sum())]
        class_map = np.zeros(n_classes, dtype=np.int64)
        if self.per_class == "auto" or self.per_class:  # also numpy.bool_
            count = np.bincount(pred, weights=weight, minlength=n_classes)
            need = self.min_samples_per_class if self.per_class == "auto" else 0
            for c in np.flatnonzero((count > 0) & (count >= need)):
                mine = pred == c
                maps.append(fit_confidence_map(conf[mine], correct[mine], weight[mine], self.method, self.n_bins))
                caps.append(_cap(count[c]))
                class_map[c] = len(maps) - 1
        self.temperature_ = temperature_of_base if self.base == "matrix_scaling" else temperature
        self.breakpoints_, self.coef_ = _pad_maps(maps)
        self.class_map_ = class_map
        self.cap_ = np.array(caps)

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self._torch_map().to(logits.device)(logits.to(torch.float64))

    def _torch_map(self) -> torch.nn.Module:
        if self.base == "matrix_scaling":
            return torch.nn.Sequential(
                _MatrixScalingMap(self.temperature_, self.base_smoothing_, self.base_coef_, self.base_intercept_),
                _TopLabelMap(1.0, self.breakpoints_, self.coef_, self.class_map_, self.cap_))
        return _TopLabelMap(1.0 / self.temperature_, self.breakpoints_, self.coef_, self.class_map_, self.cap_)

    def _keys(self) -> tuple[str, ...]:
        """The fitted state's keys: the maps', and the matrix-scaling base's with that base."""
        return self._state_keys + (_MATRIX_KEYS if self.base == "matrix_scaling" else ())

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        if self.base == "matrix_scaling":
            state.update({key: np.asarray(getattr(self, key)).tolist() if key != "base_smoothing_"
                          else float(self.base_smoothing_) for key in _MATRIX_KEYS})
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        """Load and check the fitted maps (shapes, order, ranges) before setting anything."""
        check_state_keys(state, self._keys(), "TopLabelCalibrator")
        base = None
        if self.base == "matrix_scaling":  # checked as StructuredMatrixScaling checks its own state
            base = StructuredMatrixScaling()
            base.classes_ = self.classes_
            base._set_state({"temperature_": state["temperature_"], "smoothing_": state["base_smoothing_"],
                             "coef_": state["base_coef_"], "intercept_": state["base_intercept_"], "n_iter_": 0})
        lo, hi = temperature_range()
        temperature = state_float(state, "temperature_", min_val=lo, max_val=hi,
                                  what=" (the temperatures a fit can give)")
        breakpoints, coef = state_array(state, "breakpoints_"), state_array(state, "coef_")
        class_map, cap = state_array(state, "class_map_"), state_array(state, "cap_")
        degree = _DEGREE.get(self.method)
        if degree is None:
            raise ValueError(f"Calibrator params: method must be one of {METHODS}, got {self.method!r}.")
        if breakpoints.ndim != 2 or coef.shape != (degree + 1, *breakpoints.shape):
            raise ValueError(
                f"Calibrator state: 'breakpoints_' must be (n_maps, length) and 'coef_' ({degree + 1}, n_maps, "
                f"length) for method={self.method!r}; got {breakpoints.shape} and {coef.shape}."
            )
        n_maps = breakpoints.shape[0]
        if np.any(np.diff(breakpoints, axis=1) < 0) or breakpoints.min() < 0 or breakpoints.max() > 1:
            raise ValueError("Calibrator state 'breakpoints_' must be non-decreasing rows in [0, 1].")
        if cap.shape != (n_maps,) or not np.all((cap > 0) & (cap <= _LARGEST_CAP)):
            raise ValueError(f"Calibrator state 'cap_' must be {n_maps} numbers in (0, 1).")
        if class_map.shape != (len(self.classes_),) or np.any(class_map != np.round(class_map)) or np.any(
            (class_map < 0) | (class_map >= n_maps)
        ):
            raise ValueError(f"Calibrator state 'class_map_' must be one integer in [0, {n_maps}) per class.")
        self.temperature_ = temperature
        self.breakpoints_, self.coef_, self.cap_ = breakpoints, coef, cap
        self.class_map_ = class_map.astype(np.int64)
        if base is not None:
            self.base_smoothing_, self.base_coef_, self.base_intercept_ = (base.smoothing_, base.coef_,
                                                                           base.intercept_)


def _pad_maps(maps: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack maps of different lengths: pad each with copies of its last breakpoint and constant column."""
    length = max(len(x) for x, _ in maps)
    degree = maps[0][1].shape[0] - 1
    breakpoints = np.empty((len(maps), length))
    coef = np.zeros((degree + 1, len(maps), length))
    for m, (x, c) in enumerate(maps):
        breakpoints[m, : len(x)], breakpoints[m, len(x):] = x, x[-1]
        coef[:, m, : len(x)] = c
        coef[-1, m, len(x):] = c[-1, -1]
    return breakpoints, coef

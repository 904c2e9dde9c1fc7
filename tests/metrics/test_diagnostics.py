"""precal.metrics.diagnostics (issue 4): hand-computed cases, scipy references, hypothesis
properties, the gradient-underflow closed form against the emulated softmax, bad input."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal
from scipy.spatial.distance import jensenshannon as scipy_js_distance
from scipy.stats import entropy as scipy_entropy

from precal.emulate import format_info, softmax_in_format
from precal.emulate.rounding import round_float
from precal.metrics.diagnostics import (
    ConfidenceShift,
    GradientUnderflow,
    PrecisionSplit,
    SaturationReport,
    SwapAnalysis,
    confidence_shift,
    entropy,
    gradient_underflow,
    jensen_shannon,
    precision_split,
    saturation_report,
    swap_analysis,
    true_class_confidence,
    underflow_margin,
)
from tests.conftest import make_logits

LN2 = math.log(2.0)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNDERFLOW_FORMATS = ["bf16", "fp16", "fp8_e4m3"]
UNDERFLOW_CLASSES = [2, 10, 1000]


# ---------------------------------------------------------------- helpers
def softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ref_and_low(n=500, k=5, seed=0, fmt="fp8_e4m3"):
    """Reference (float64 softmax) and low-precision (stepwise softmax in ``fmt``) probabilities."""
    z, y = make_logits(n=n, k=k, seed=seed)
    low = softmax_in_format(torch.from_numpy(z.astype(np.float32)), fmt)
    return y, softmax_np(z), low.to(torch.bfloat16) if fmt == "bf16" else low


def positive_grid(name):
    """Every positive finite value of a format (8 or 16 bits), sorted, via ml_dtypes/numpy."""
    dtype = np.dtype(getattr(ml_dtypes, format_info(name).ml_dtype, None) or format_info(name).ml_dtype)
    codes = np.arange(2 ** (8 * dtype.itemsize), dtype=np.uint8 if dtype.itemsize == 1 else np.uint16)
    with np.errstate(invalid="ignore"):
        values = codes.view(dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values) & (values > 0)])


def p_true_rounds_to_one(m, k, name):
    """Exact p_y = 1 / (1 + (K-1) e^-m) in float64, rounded once to the format (via float32)."""
    p = 1.0 / (1.0 + (k - 1) * math.exp(-m))
    return float(round_float(torch.tensor(np.float32(p)), format_info(name))) == 1.0


@st.composite
def prob_rows(draw, n=None, k=None):
    """Probability rows from small integer weights: exact in float64, distinct rows differ by >= 1/400."""
    n = draw(st.integers(1, 12)) if n is None else n
    k = draw(st.integers(2, 6)) if k is None else k
    w = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 20)))
    w[:, 0] += w.sum(axis=1) == 0  # no all-zero row
    return w / w.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- precision_split
def test_precision_split_hand_computed():
    p_ref = [[0.5, 0.5], [0.75, 0.25], [0.6, 0.4]]
    p_low = [[0.75, 0.25], [0.5, 0.5], [0.3, 0.7]]
    # own maxima: low 0.75, 0.5, 0.7; ref 0.5, 0.75, 0.6 -> gaps +0.25, -0.25, +0.1
    s = precision_split(p_ref, p_low, threshold=0.25)
    assert isinstance(s, PrecisionSplit)
    assert_allclose(s.gap, [0.25, -0.25, 0.1], atol=1e-15)
    assert s.mean_gap == pytest.approx(0.1 / 3)  # (0.25 - 0.25 + 0.1) / 3
    assert s.mean_abs_gap == pytest.approx(0.6 / 3)  # (0.25 + 0.25 + 0.1) / 3
    assert s.max_abs_gap == 0.25
    assert s.share_above_threshold == 0.0  # |gap| > 0.25 is strict: 0.25 itself does not count
    assert precision_split(p_ref, p_low, threshold=0.2).share_above_threshold == pytest.approx(2 / 3)
    assert s.threshold == 0.25
    assert isinstance(s.mean_gap, float) and s.gap.dtype == np.float64


def test_precision_split_uses_each_arrays_own_top_confidence():
    # the prediction swaps: gap = max(p_low) - max(p_ref) = 0.7 - 0.6, not p_low[0] - p_ref[0] = -0.3
    s = precision_split([[0.6, 0.4]], [[0.3, 0.7]])
    assert s.gap[0] == pytest.approx(0.1)


def test_precision_split_binary_1d_and_torch_equal_2d():
    p_ref = np.array([0.9, 0.2, 0.55])
    p_low = np.array([0.95, 0.1, 0.5])
    a = precision_split(p_ref, p_low)
    b = precision_split(np.stack([1 - p_ref, p_ref], 1), torch.from_numpy(np.stack([1 - p_low, p_low], 1)))
    assert_allclose(a.gap, b.gap)  # 0.05, 0.1, -0.05
    assert_allclose(a.gap, [0.05, 0.1, -0.05], atol=1e-12)


@PROPS
@given(data=st.data())
def test_precision_split_is_antisymmetric(data):
    n = data.draw(st.integers(1, 10))
    k = data.draw(st.integers(2, 5))
    a, b = data.draw(prob_rows(n, k)), data.draw(prob_rows(n, k))
    assert_allclose(precision_split(a, b).gap, -precision_split(b, a).gap)
    assert precision_split(a, a).max_abs_gap == 0.0


# ---------------------------------------------------------------- swap_analysis
def test_swap_analysis_hand_computed():
    y = [0, 0, 1, 2, 0, 2]
    p_ref = [
        [1.0, 0.0, 0.0],  # pred 0 right -> low pred 1 wrong: right->wrong, ref conf 1.0 (last bin)
        [0.5, 0.25, 0.25],  # pred 0 right, unchanged
        [0.5, 0.25, 0.25],  # pred 0 wrong -> low pred 1 right: wrong->right, ref conf 0.5 (bin 5)
        [0.25, 0.75, 0.0],  # pred 1 wrong -> low pred 0 wrong: wrong->wrong, ref conf 0.75 (bin 7)
        [0.375, 0.375, 0.25],  # argmax tie -> column 0, right; unchanged
        [0.25, 0.25, 0.5],  # pred 2 right -> low pred 0 wrong: right->wrong, ref conf 0.5 (bin 5)
    ]
    p_low = [
        [0.0, 1.0, 0.0],
        [0.5, 0.25, 0.25],
        [0.25, 0.5, 0.25],
        [0.75, 0.25, 0.0],
        [0.375, 0.375, 0.25],
        [0.5, 0.25, 0.25],
    ]
    r = swap_analysis(y, p_ref, p_low, n_bins=10)
    assert isinstance(r, SwapAnalysis)
    assert_array_equal(r.swapped, [True, False, True, True, False, True])
    assert r.n_swapped == 4 and r.share_swapped == pytest.approx(4 / 6)
    assert r.error_ref == pytest.approx(2 / 6)  # rows 2, 3 wrong
    assert r.error_low == pytest.approx(3 / 6)  # rows 0, 3, 5 wrong
    assert r.error_change == pytest.approx(1 / 6)  # (2 right->wrong - 1 wrong->right) / 6
    assert r.ratio == pytest.approx(0.25)  # (1/6) / (4/6) = (2 - 1) / 4
    assert (r.n_right_to_wrong, r.n_wrong_to_right, r.n_wrong_to_wrong) == (2, 1, 1)
    assert_allclose(r.bin_edges, np.linspace(0, 1, 11))
    # 0.5 sits on an edge and goes right (left-closed); 1.0 goes to the last bin (closed)
    assert r.counts.tolist() == [0, 0, 0, 0, 0, 2, 0, 1, 0, 1]
    assert r.counts.dtype == np.int64


def test_swap_analysis_ratio_is_zero_when_nothing_swapped():
    p = [[0.9, 0.1], [0.3, 0.7]]
    r = swap_analysis([0, 0], p, p)
    assert (r.n_swapped, r.share_swapped, r.error_change, r.ratio) == (0, 0.0, 0.0, 0.0)
    assert r.counts.sum() == 0 and not np.isnan(r.ratio)


def test_swap_analysis_ratio_extremes():
    # every swap breaks a right prediction: ratio 1; every swap fixes a wrong one: ratio -1
    p_a, p_b = [[0.8, 0.2], [0.6, 0.4]], [[0.2, 0.8], [0.4, 0.6]]
    assert swap_analysis([0, 0], p_a, p_b).ratio == 1.0
    assert swap_analysis([0, 0], p_b, p_a).ratio == -1.0


def test_swap_analysis_with_string_labels_and_labels_argument():
    p_ref = [[0.9, 0.1], [0.3, 0.7]]
    p_low = [[0.4, 0.6], [0.3, 0.7]]
    r = swap_analysis(["cat", "dog"], p_ref, p_low, labels=["cat", "dog"])
    assert (r.n_right_to_wrong, r.error_ref, r.error_low) == (1, 0.0, 0.5)


@PROPS
@given(data=st.data(), n_bins=st.integers(1, 12))
def test_swap_analysis_counts_are_consistent(data, n_bins):
    n = data.draw(st.integers(1, 12))
    k = data.draw(st.integers(2, 5))
    p_ref, p_low = data.draw(prob_rows(n, k)), data.draw(prob_rows(n, k))
    y = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    r = swap_analysis(y, p_ref, p_low, n_bins=n_bins)
    assert round(r.share_swapped * n) == r.counts.sum() == r.n_swapped == r.swapped.sum()
    assert r.n_right_to_wrong + r.n_wrong_to_right + r.n_wrong_to_wrong == r.n_swapped
    assert r.error_change == pytest.approx(r.error_low - r.error_ref, abs=1e-12)
    assert -1.0 <= r.ratio <= 1.0
    assert np.sign(r.ratio) == np.sign(r.error_change)
    if r.n_swapped:
        assert r.ratio == pytest.approx(r.error_change / r.share_swapped)


def test_swap_analysis_on_emulated_fp8_softmax():
    y, p_ref, p_low = ref_and_low(fmt="fp8_e4m3")
    # fp8 rows sum to 1 only within ~0.07: renormalise in float64 (argmax unchanged)
    p_low = p_low.double()
    p_low = p_low / p_low.sum(dim=1, keepdim=True)
    r = swap_analysis(y, p_ref, p_low, n_bins=10)
    assert r.n_swapped > 0 and r.counts.sum() == r.n_swapped
    assert r.n_swapped == np.sum(p_ref.argmax(1) != p_low.numpy().argmax(1))
    assert r.error_change == pytest.approx(r.error_low - r.error_ref)


# ---------------------------------------------------------------- confidence_shift
def test_confidence_shift_hand_computed():
    y = [0, 1, 1, 0]
    p_ref = [[0.9, 0.1], [0.5, 0.5], [0.25, 0.75], [1.0, 0.0]]
    p_low = [[0.8, 0.2], [0.25, 0.75], [0.5, 0.5], [1.0, 0.0]]
    # true-class shifts: 0.8-0.9 = -0.1, 0.75-0.5 = +0.25, 0.5-0.75 = -0.25, 1.0-1.0 = 0
    # reference top confidences: 0.9, 0.5, 0.75, 1.0 -> with 4 bins [0,.25) [.25,.5) [.5,.75) [.75,1]
    #   bin 2 (0.5 on its left edge): -> mean +0.25; bin 3: 0.9, 0.75, 1.0 -> mean (-0.1-0.25+0)/3
    c = confidence_shift(y, p_ref, p_low, n_bins=4)
    assert isinstance(c, ConfidenceShift)
    assert_allclose(c.shift, [-0.1, 0.25, -0.25, 0.0], atol=1e-15)
    assert c.mean_shift == pytest.approx(-0.1 / 4)
    assert c.counts.tolist() == [0, 0, 1, 3]
    assert np.isnan(c.bin_mean_shift[:2]).all()
    assert_allclose(c.bin_mean_shift[2:], [0.25, -0.35 / 3])
    assert_allclose(c.bin_edges, [0, 0.25, 0.5, 0.75, 1.0])


def test_confidence_shift_bins_recombine_to_the_overall_mean():
    y, p_ref, p_low = ref_and_low(fmt="bf16")
    c = confidence_shift(y, p_ref, p_low, n_bins=7)
    full = c.counts > 0
    assert c.counts.sum() == len(y)
    assert np.sum(c.counts[full] * c.bin_mean_shift[full]) / len(y) == pytest.approx(c.mean_shift)
    assert_allclose(c.shift, true_class_confidence(y, p_low) - true_class_confidence(y, p_ref))


# ---------------------------------------------------------------- jensen_shannon, entropy, true class
def test_jensen_shannon_hand_computed():
    # p = [1, 0], q = [1/2, 1/2], m = [3/4, 1/4]
    # KL(p||m) = ln(4/3); KL(q||m) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); JS = 3/4 ln(4/3)
    js = jensen_shannon([[1.0, 0.0], [1.0, 0.0], [0.25, 0.75]], [[0.5, 0.5], [0.0, 1.0], [0.25, 0.75]])
    assert_allclose(js, [0.75 * math.log(4 / 3), LN2, 0.0], rtol=1e-14)
    assert js.dtype == np.float64 and js.shape == (3,)


def test_jensen_shannon_subnormal_probability_against_zero_is_tiny_not_ln2():
    # m = (p + q) / 2 would underflow to 0 for p = 5e-324, q = 0; JS must stay ~0
    js = jensen_shannon([[5e-324, 1.0]], [[0.0, 1.0]])
    assert 0.0 <= js[0] < 1e-300


def test_jensen_shannon_equals_scipy_squared_distance():
    _, p_ref, p_low = ref_and_low(fmt="bf16")
    p_low64 = p_low.double().numpy()
    expected = scipy_js_distance(p_ref, p_low64 / p_low64.sum(1, keepdims=True), axis=1) ** 2
    # scipy renormalises rows; ours takes them as given: compare on renormalised input
    ours = jensen_shannon(p_ref, p_low64 / p_low64.sum(1, keepdims=True))
    assert_allclose(ours, expected, rtol=1e-9, atol=1e-15)


@PROPS
@given(data=st.data())
def test_jensen_shannon_symmetric_bounded_and_zero_iff_equal(data):
    n = data.draw(st.integers(1, 10))
    k = data.draw(st.integers(2, 6))
    p, q = data.draw(prob_rows(n, k)), data.draw(prob_rows(n, k))
    pq, qp = jensen_shannon(p, q), jensen_shannon(q, p)
    assert_array_equal(pq, qp)
    assert np.all((pq >= 0.0) & (pq <= LN2))
    assert_array_equal(pq == 0.0, np.all(p == q, axis=1))
    assert_array_equal(jensen_shannon(p, p), 0.0)


def test_entropy_hand_computed_and_scipy():
    # [1/2, 1/4, 1/4]: 1/2 ln 2 + 2 * 1/4 ln 4 = 3/2 ln 2; [1, 0, 0]: 0 (0 log 0 = 0); uniform: ln 3
    p = [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]
    h = entropy(p)
    assert_allclose(h, [1.5 * LN2, 0.0, math.log(3)], rtol=1e-14)
    assert h[1] == 0.0 and not np.signbit(h[1])
    _, p_ref, _ = ref_and_low()
    assert_allclose(entropy(p_ref), scipy_entropy(p_ref, axis=1), rtol=1e-12)


@PROPS
@given(p=prob_rows())
def test_entropy_between_zero_and_log_k(p):
    h = entropy(p)
    assert np.all((h >= 0.0) & (h <= math.log(p.shape[1])))
    assert_array_equal(h == 0.0, p.max(axis=1) == 1.0)


def test_true_class_confidence_hand_computed():
    p = [[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]
    assert true_class_confidence([1, 2], p).tolist() == [0.5, 0.3]
    assert true_class_confidence(["b", "a"], p, labels=["a", "b", "c"]).tolist() == [0.5, 0.6]
    assert true_class_confidence([1, 0], torch.tensor([0.5, 0.25])).tolist() == [0.5, 0.75]  # binary 1-D


# ---------------------------------------------------------------- underflow_margin: closed form
@pytest.mark.parametrize(
    ("name", "k", "expected"),
    [
        ("bf16", 2, math.log(2**9 - 1)),  # nmant 7: h = 2^-9, m* = ln((1 - h) / h) = ln 511
        ("fp16", 2, math.log(2**12 - 1)),  # nmant 10: ln 4095
        ("fp8_e4m3", 2, math.log(31)),  # nmant 3: ln(2^5 - 1)
        ("fp32", 2, math.log(2**25 - 1)),
        ("bf16", 10, math.log(9) + math.log(511)),  # ln(K - 1) shifts it
        ("fp8_e4m3", 1000, math.log(999 * 31)),
        ("fp4_e2m1", 2, math.log(3)),  # 1.0 is the smallest normal: 0.5 below it, h = 1/4
        ("fp6_e2m3", 2, math.log(15)),  # likewise: 0.875 below 1, h = 1/16
    ],
)
def test_underflow_margin_exact_hand_values(name, k, expected):
    assert underflow_margin(name, k) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e2m3", "tf32"])
def test_midpoint_below_one_rounds_to_one(name):
    """The tie rule behind '>=': 1 - h is halfway between 1.0 and its predecessor; RNE picks 1.0."""
    fmt = format_info(name)
    m = underflow_margin(name)  # K = 2: 1 - p_y = e^-m / (1 + e^-m) = h
    h = 1.0 / (1.0 + math.exp(m))
    x = torch.tensor([1.0 - h, 1.0 - 1.01 * h], dtype=torch.float32)
    out = round_float(x, fmt).tolist()
    assert out[0] == 1.0 and out[1] < 1.0


@pytest.mark.parametrize("k", UNDERFLOW_CLASSES)
@pytest.mark.parametrize("name", UNDERFLOW_FORMATS)
def test_underflow_margin_exact_matches_single_rounding(name, k):
    m = underflow_margin(name, k)
    assert not p_true_rounds_to_one(m - 0.01, k, name)
    assert p_true_rounds_to_one(m + 0.01, k, name)
    assert p_true_rounds_to_one(m + 0.5, k, name) and not p_true_rounds_to_one(m - 0.5, k, name)


@pytest.mark.parametrize("k", UNDERFLOW_CLASSES)
@pytest.mark.parametrize("name", UNDERFLOW_FORMATS)
def test_underflow_margin_stepwise_matches_emulated_softmax_on_the_grid(name, k):
    """Margins the format can hold, just below and just above the stepwise threshold, with the
    other K - 1 logits at 0: softmax_in_format gives p_y < 1, then p_y == 1."""
    m = underflow_margin(name, k, softmax="stepwise")
    grid = positive_grid(name)
    below, above = grid[grid < m].max(), grid[grid >= m].min()
    logits = np.zeros((2, k))
    logits[:, 0] = [below, above]
    g = gradient_underflow(logits, [0, 0], name)
    assert g.true_class_zero.tolist() == [False, True]
    # also half a nat either side with margins that must be rounded first
    logits[:, 0] = [m - 0.5, m + 0.5]
    assert gradient_underflow(logits, [0, 0], name).true_class_zero.tolist() == [False, True]


@pytest.mark.parametrize("k", UNDERFLOW_CLASSES)
@pytest.mark.parametrize("name", UNDERFLOW_FORMATS)
def test_stepwise_softmax_underflows_earlier_than_exact_rounding(name, k):
    exact = underflow_margin(name, k)
    stepwise = underflow_margin(name, k, softmax="stepwise")
    assert stepwise < exact
    nmant = format_info(name).nmant
    if not (name == "fp8_e4m3" and k == 1000):  # there exp(-m) flushes to 0 first: ln(2 / 2^-9)
        # about ln 2 below: (K-1) e^-m <= eps/2 versus 1 - p_y <= eps/4
        assert stepwise == pytest.approx(math.log(k - 1) + (nmant + 1) * LN2, abs=0.08)
    else:
        assert stepwise == pytest.approx(10 * LN2)


def test_underflow_margin_stepwise_bounds_random_logits():
    """For any logits, margin >= stepwise(K) + d underflows and margin <= stepwise(2) - d does not
    (d covers the rounding of bf16 logits of magnitude < 16)."""
    rng = np.random.default_rng(0)
    k = 5
    z = rng.normal(scale=2.0, size=(3000, k))
    y = rng.integers(0, k, size=3000)
    z[np.arange(3000), y] += rng.uniform(0.0, 10.0, size=3000)
    g = gradient_underflow(z, y, "bf16")
    d = 0.2
    hi = underflow_margin("bf16", k, softmax="stepwise") + d
    lo = underflow_margin("bf16", 2, softmax="stepwise") - d
    assert np.all(g.true_class_zero[g.margin >= hi])
    assert not np.any(g.true_class_zero[g.margin <= lo])
    assert (g.margin >= hi).sum() > 100 and (g.margin <= lo).sum() > 100


# ---------------------------------------------------------------- gradient_underflow
def test_gradient_underflow_hand_computed():
    logits = np.array(
        [
            [3.0, 5.0, 1.0],  # y=0: margin 3 - 5 = -2, p_0 far from 1
            [20.0, 0.0, 0.0],  # y=0: margin 20 > bf16 stepwise(3) ~ 6.2: p_0 == 1, e^-20 ~ 2e-9 stays
            [100.0, 0.0, 0.0],  # y=0: margin 100: e^-100 ~ 4e-44 < 2^-134, flushes: whole gradient 0
            [0.0, 100.0, 0.0],  # y=0 but class 1 wins: p_0 == 0, gradient -1 on the true class
        ]
    )
    g = gradient_underflow(logits, [0, 0, 0, 0], "bf16")
    assert isinstance(g, GradientUnderflow) and g.precision == "bf16"
    assert_allclose(g.margin, [-2.0, 20.0, 100.0, -100.0])
    assert g.true_class_zero.tolist() == [False, True, True, False]
    assert g.all_zero.tolist() == [False, False, True, False]
    assert (g.share_true_class_zero, g.share_all_zero) == (0.5, 0.25)


def test_gradient_underflow_all_zero_threshold_is_the_subnormal_flush():
    # e^-m rounds to 0 once e^-m < sigma / 2: m > ln(2 / sigma); bf16 sigma = 2^-133 -> 92.88
    for name, m_flush in [("bf16", 134 * LN2), ("fp16", 25 * LN2), ("fp8_e4m3", 10 * LN2)]:
        logits = np.array([[m_flush - 0.4, 0.0], [m_flush + 0.4, 0.0]])
        g = gradient_underflow(logits, [0, 0], name)
        assert g.true_class_zero.all()
        assert g.all_zero.tolist() == [False, True], name


def test_gradient_underflow_fp32_torch_input_and_aliases():
    logits = torch.tensor([[17.5, 0.0], [16.0, 0.0]], dtype=torch.float64)
    # fp32 stepwise: (K-1) e^-m <= 2^-24 -> m >= 24 ln 2 = 16.64
    g = gradient_underflow(logits, torch.tensor([0, 0]), "float32")
    assert g.precision == "fp32" and g.true_class_zero.tolist() == [True, False]
    assert gradient_underflow(logits, [0, 0], format_info("fp32")).true_class_zero.tolist() == [True, False]


def test_gradient_underflow_warns_on_overflowing_logits():
    with pytest.warns(RuntimeWarning, match="not finite"):
        g = gradient_underflow([[1e5, 0.0], [10.0, 0.0]], [0, 0], "fp16")  # 1e5 > fp16 max 65504
    assert g.true_class_zero.tolist() == [False, True]


# ---------------------------------------------------------------- saturation_report
def test_saturation_report_hand_computed():
    p = [
        [1.0, 0.0, 0.0],  # saturated, two zeros
        [1.0, 0.0, 0.0],  # saturated, tied with row 0, two zeros
        [0.5, 0.25, 0.25],  # tied with row 3 (top 0.5)
        [0.25, 0.5, 0.25],
        [0.75, 0.25, 0.0],  # one zero, unique top
    ]
    r = saturation_report(p)
    assert isinstance(r, SaturationReport)
    assert r.n_samples == 5
    assert r.share_saturated == 0.4  # 2 / 5
    assert r.n_distinct == 3  # {1.0, 0.5, 0.75}
    assert r.share_tied == 0.8  # rows 0, 1, 2, 3
    assert r.n_exact_zeros == 5


def test_saturation_report_on_bf16_softmax_sees_saturation():
    _, p_ref, p_low = ref_and_low(n=600, k=4, fmt="bf16")
    low, ref = saturation_report(p_low), saturation_report(p_ref)
    assert low.share_saturated > ref.share_saturated == 0.0
    assert low.n_distinct < ref.n_distinct
    assert low.share_tied > ref.share_tied


# ---------------------------------------------------------------- inputs: forms, not modified
def test_bf16_tensor_low_precision_input_is_accepted():
    y, p_ref, p_low = ref_and_low(fmt="bf16")
    assert p_low.dtype == torch.bfloat16
    s = precision_split(p_ref, p_low)
    assert s.gap.shape == (len(y),) and s.mean_abs_gap > 0


def test_inputs_are_not_modified():
    y, p_ref, p_low = ref_and_low(n=100, fmt="fp16")
    p_low = p_low.numpy().astype(np.float16)
    z, _ = make_logits(n=100, k=5)
    arrays = [y, p_ref, p_low, z]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.setflags(write=False)
    precision_split(p_ref, p_low)
    swap_analysis(y, p_ref, p_low)
    confidence_shift(y, p_ref, p_low)
    jensen_shannon(p_ref, p_low)
    entropy(p_low)
    true_class_confidence(y, p_low)
    gradient_underflow(z, y, "bf16")
    saturation_report(p_low)
    for a, c in zip(arrays, copies):
        assert_array_equal(a, c)
        assert a.dtype == c.dtype


# ---------------------------------------------------------------- bad input
GOOD = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
Y = np.array([0, 1, 1])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([[np.nan, 0.3], [0.4, 0.6], [0.5, 0.5]]), "NaN"),
        (np.array([[np.inf, 0.3], [0.4, 0.6], [0.5, 0.5]]), "infinity"),
        (np.array([[1.2, -0.2], [0.4, 0.6], [0.5, 0.5]]), r"probabilities in \[0, 1\]"),
        (np.array([[0.7, 0.4], [0.4, 0.6], [0.5, 0.5]]), "rows must sum to 1"),
        (np.array([[0.7, 0.3, 0.0], [0.4, 0.6, 0.0], [0.5, 0.5, 0.0]]), r"shape \(3, 3\)"),
        (GOOD[:2], r"p_ref with shape \(3, 2\) and p_low with shape \(2, 2\)"),
        (np.ones((3, 2, 1)) / 2, "2-D"),
    ],
)
def test_bad_p_low_is_refused_by_every_comparison(bad, match):
    with pytest.raises(ValueError, match=match):
        precision_split(GOOD, bad)
    with pytest.raises(ValueError, match=match):
        swap_analysis(Y, GOOD, bad)
    with pytest.raises(ValueError, match=match):
        confidence_shift(Y, GOOD, bad)
    with pytest.raises(ValueError, match=match.replace("p_ref", "p").replace("p_low", "q")):
        jensen_shannon(GOOD, bad)


def test_bad_p_ref_is_named():
    with pytest.raises(ValueError, match="p_ref contains NaN"):
        precision_split([[np.nan, 1.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="p_ref must hold probabilities"):
        swap_analysis([0], [[2.0, -1.0]], [[0.5, 0.5]])


@pytest.mark.parametrize("func", [entropy, saturation_report])
def test_bad_single_probability_input(func):
    with pytest.raises(ValueError, match="p rows must sum to 1"):
        func([[0.5, 0.6]])
    with pytest.raises(ValueError, match="p contains NaN"):
        func([[np.nan, 0.5]])
    with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\]"):
        func([[3.0, -2.0]])


def test_label_problems():
    with pytest.raises(ValueError, match="Inconsistent numbers of samples: y_true has 2, p_ref has 3"):
        swap_analysis([0, 1], GOOD, GOOD)
    with pytest.raises(ValueError, match="Inconsistent numbers of samples: y_true has 2, p has 3"):
        true_class_confidence([0, 1], GOOD)
    with pytest.raises(ValueError, match="y_true has 3 classes"):
        confidence_shift([0, 1, 2], GOOD, GOOD)  # label 2 has no column
    with pytest.raises(ValueError, match="not in labels"):
        swap_analysis([0, 1, 7], GOOD, GOOD, labels=[0, 1])


@pytest.mark.parametrize("func", [swap_analysis, confidence_shift])
def test_bad_n_bins(func):
    with pytest.raises(ValueError, match="n_bins == 0, must be >= 1"):
        func(Y, GOOD, GOOD, n_bins=0)
    with pytest.raises(TypeError, match="n_bins must be an instance of int"):
        func(Y, GOOD, GOOD, n_bins=2.5)


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold == -0.1, must be >= 0.0"):
        precision_split(GOOD, GOOD, threshold=-0.1)
    with pytest.raises(ValueError, match="threshold == 2, must be <= 1.0"):
        precision_split(GOOD, GOOD, threshold=2)
    with pytest.raises(TypeError, match="threshold must be an instance of"):
        precision_split(GOOD, GOOD, threshold="0.1")


@pytest.mark.parametrize("func", [lambda p: underflow_margin(p), lambda p: gradient_underflow([[1.0, 0.0]], [0], p)])
def test_bad_precision(func):
    with pytest.raises(ValueError, match="precision='fp7' is not a known number format"):
        func("fp7")
    with pytest.raises(ValueError, match="precision must be a float format .* integer format 'int8'"):
        func("int8")
    with pytest.raises(TypeError, match="precision must be a float format name"):
        func(8)


def test_bad_underflow_margin_arguments():
    with pytest.raises(ValueError, match="n_classes == 1, must be >= 2"):
        underflow_margin("bf16", 1)
    with pytest.raises(TypeError, match="n_classes must be an instance of int"):
        underflow_margin("bf16", 2.0)
    with pytest.raises(ValueError, match="softmax must be 'exact' or 'stepwise', got 'fused'"):
        underflow_margin("bf16", 2, softmax="fused")


def test_bad_gradient_underflow_logits():
    with pytest.raises(ValueError, match=r"logits must be 2-D \(n_samples, n_classes\) logits"):
        gradient_underflow([1.0, 2.0], [0, 1], "bf16")
    with pytest.raises(ValueError, match="at least 2 columns"):
        gradient_underflow([[1.0], [2.0]], [0, 0], "bf16")
    with pytest.raises(ValueError, match="logits contains NaN"):
        gradient_underflow([[np.nan, 0.0]], [0], "bf16")
    with pytest.raises(ValueError, match="Inconsistent numbers of samples: y has 2, logits has 1"):
        gradient_underflow([[1.0, 0.0]], [0, 1], "bf16")

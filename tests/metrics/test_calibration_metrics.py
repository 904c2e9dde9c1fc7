"""precal.metrics.calibration: references (netcal, scikit-learn, hand arithmetic, loop
implementations), binning conventions, input forms, error messages, bootstrap intervals and
hypothesis properties."""

import doctest
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal
from sklearn.metrics import brier_score_loss, log_loss

import precal.metrics.calibration as calibration_module
from precal.metrics import (
    CalibrationErrorCI,
    ReliabilityCurve,
    adaptive_calibration_error,
    brier_score,
    calibration_error_ci,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

BINNED = {
    "ece": expected_calibration_error,
    "ace": adaptive_calibration_error,
    "mce": maximum_calibration_error,
    "classwise_ece": classwise_calibration_error,
}
ALL_METRICS = {
    **BINNED,
    "brier": brier_score,
    "nll": negative_log_likelihood,
}


# ---------------------------------------------------------------- helpers
def softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_data(n=400, k=5, seed=0, scale=2.5, dtype=np.float64):
    """Over-confident softmax probabilities with >= 3 classes present when k >= 3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * (1.0 * np.eye(k)[y] + rng.normal(size=(n, k)))
    return softmax_np(z).astype(dtype), y


def onehot(y, k):
    return np.eye(k)[y]


def loop_classwise(y, prob, n_bins):
    """Class-wise ECE written as plain loops with explicit comparisons (no searchsorted)."""
    prob = np.asarray(prob, dtype=np.float64)
    n, k = prob.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for c in range(k):
        err_c = 0.0
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            members = []
            for i in range(n):
                p = prob[i, c]
                inside = (lo <= p < hi) or (b == n_bins - 1 and p == hi)
                if inside:
                    members.append(i)
            if members:
                acc = sum(1.0 for i in members if y[i] == c) / len(members)
                conf = sum(prob[i, c] for i in members) / len(members)
                err_c += len(members) / n * abs(acc - conf)
        total += err_c
    return total / k


def loop_top_label(y, prob, n_bins):
    """Top-label ECE and MCE with plain loops (explicit left-closed / last-closed bins)."""
    prob = np.asarray(prob, dtype=np.float64)
    n = prob.shape[0]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = []
        for i in range(n):
            c = prob[i].max()
            if (lo <= c < hi) or (b == n_bins - 1 and c == hi):
                members.append(i)
        if members:
            acc = np.mean([prob[i].argmax() == y[i] for i in members])
            conf = np.mean([prob[i].max() for i in members])
            ece += len(members) / n * abs(acc - conf)
            mce = max(mce, abs(acc - conf))
    return ece, mce


def netcal_measure(cls, prob, y, n_bins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cls(bins=n_bins).measure(np.asarray(prob, dtype=np.float64), np.asarray(y)))


# ---------------------------------------------------------------- netcal references
NETCAL_DATASETS = [
    dict(n=500, k=3, seed=0, scale=2.0, dtype=np.float64),
    dict(n=300, k=5, seed=1, scale=3.0, dtype=np.float64),
    dict(n=800, k=10, seed=2, scale=4.0, dtype=np.float32),
    dict(n=257, k=4, seed=3, scale=1.0, dtype=np.float32),
]


@pytest.mark.parametrize("n_bins", [1, 10, 15, 20])
@pytest.mark.parametrize("spec", NETCAL_DATASETS, ids=lambda s: f"k{s['k']}-{np.dtype(s['dtype']).name}-s{s['seed']}")
def test_ece_and_mce_equal_netcal(spec, n_bins):
    from netcal.metrics import ECE, MCE

    prob, y = make_data(**spec)
    assert len(np.unique(y)) >= 3  # netcal's binary mode would kick in otherwise
    assert prob.dtype == spec["dtype"]
    ece = expected_calibration_error(y, prob, n_bins=n_bins)
    mce = maximum_calibration_error(y, prob, n_bins=n_bins)
    assert ece == pytest.approx(netcal_measure(ECE, prob, y, n_bins), abs=1e-10)
    assert mce == pytest.approx(netcal_measure(MCE, prob, y, n_bins), abs=1e-10)
    assert ece > 0.0


@pytest.mark.parametrize("n_bins", [2, 5, 10, 15])
def test_ece_equals_netcal_with_confidences_on_edges_and_at_one(n_bins):
    """Confidences of exactly 1.0 and exactly on the linspace edges: bin rule must match netcal."""
    from netcal.metrics import ECE, MCE

    k = 4
    prob, y = make_data(n=200, k=k, seed=7)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    extra_rows, extra_y = [], []
    rng = np.random.default_rng(11)
    for e in edges:
        if e < 1.0 / k or e >= 1.0:
            continue  # the top-label confidence of a k-class row is >= 1/k
        rest = (1.0 - e) / (k - 1)
        if rest > e:
            continue
        row = np.full(k, rest)
        row[0] = e
        for _ in range(3):
            extra_rows.append(row)
            extra_y.append(int(rng.integers(0, k)))
    for _ in range(10):  # exact one-hot rows, right and wrong
        c = int(rng.integers(0, k))
        extra_rows.append(onehot(c, k))
        extra_y.append(c if rng.random() < 0.7 else (c + 1) % k)
    prob = np.vstack([prob, np.asarray(extra_rows)])
    y = np.concatenate([y, extra_y])
    assert (prob.max(axis=1) == 1.0).any()
    assert np.isin(prob.max(axis=1), edges[1:-1]).any() or n_bins == 2
    ece = expected_calibration_error(y, prob, n_bins=n_bins)
    assert ece == pytest.approx(netcal_measure(ECE, prob, y, n_bins), abs=1e-10)
    mce = maximum_calibration_error(y, prob, n_bins=n_bins)
    assert mce == pytest.approx(netcal_measure(MCE, prob, y, n_bins), abs=1e-10)
    ref_ece, ref_mce = loop_top_label(y, prob, n_bins)
    assert ece == pytest.approx(ref_ece, abs=1e-12)
    assert mce == pytest.approx(ref_mce, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 3, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_mce_equal_loop_reference(seed, n_bins):
    prob, y = make_data(n=150, k=3, seed=seed)
    ref_ece, ref_mce = loop_top_label(y, prob, n_bins)
    assert expected_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(ref_ece, abs=1e-12)
    assert maximum_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(ref_mce, abs=1e-12)


# ---------------------------------------------------------------- scikit-learn references
@pytest.mark.parametrize("k", [3, 4, 7])
@pytest.mark.parametrize("scale_by_half", ["auto", True, False])
def test_brier_equals_sklearn_multiclass(k, scale_by_half):
    prob, y = make_data(n=300, k=k, seed=k)
    ours = brier_score(y, prob, scale_by_half=scale_by_half)
    ref = brier_score_loss(y, prob, labels=np.arange(k), scale_by_half=scale_by_half)
    assert ours == pytest.approx(ref, abs=1e-12)
    # multiclass "auto" does not halve: the value is the plain sum of squares, in [0, 2]
    plain = np.mean(np.sum((prob - onehot(y, k)) ** 2, axis=1))
    expected = plain / 2 if scale_by_half is True else plain
    assert ours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("scale_by_half", ["auto", True, False])
def test_brier_equals_sklearn_binary(scale_by_half):
    rng = np.random.default_rng(5)
    p1 = rng.random(200)
    y = (rng.random(200) < p1 ** 0.7).astype(int)
    ref = brier_score_loss(y, p1, scale_by_half=scale_by_half)
    assert brier_score(y, p1, scale_by_half=scale_by_half) == pytest.approx(ref, abs=1e-12)
    assert brier_score(y, np.c_[1 - p1, p1], scale_by_half=scale_by_half) == pytest.approx(ref, abs=1e-12)
    # binary "auto" halves: the familiar mean((p1 - y)^2), in [0, 1]
    if scale_by_half in ("auto", True):
        assert brier_score(y, p1, scale_by_half=scale_by_half) == pytest.approx(np.mean((p1 - y) ** 2), abs=1e-12)
    else:
        assert brier_score(y, p1, scale_by_half=False) == pytest.approx(2 * np.mean((p1 - y) ** 2), abs=1e-12)


def test_brier_string_labels_equal_sklearn():
    prob, y = make_data(n=120, k=3, seed=9)
    names = np.array(["ant", "bee", "cat"])
    ref = brier_score_loss(names[y], prob, labels=names)
    assert brier_score(names[y], prob) == pytest.approx(ref, abs=1e-12)
    assert brier_score(names[y], prob, labels=names) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_nll_equals_sklearn_log_loss(k):
    prob, y = make_data(n=250, k=k, seed=20 + k)
    assert negative_log_likelihood(y, prob) == pytest.approx(log_loss(y, prob, labels=np.arange(k)), abs=1e-12)


def test_nll_exact_zero_on_true_class_equals_sklearn():
    prob, y = make_data(n=50, k=4, seed=3)
    prob[0] = [0.0, 0.5, 0.5, 0.0]
    y[0] = 0
    prob[1] = [0.0, 0.0, 0.0, 1.0]
    y[1] = 2
    ours = negative_log_likelihood(y, prob)
    assert np.isfinite(ours)
    assert ours == pytest.approx(log_loss(y, prob, labels=np.arange(4)), abs=1e-12)
    # each zero costs -log(eps) = 36.04 nats
    rest = -np.sum(np.log(prob[np.arange(2, 50), y[2:]]))
    assert ours == pytest.approx((rest - 2 * np.log(np.finfo(np.float64).eps)) / 50, abs=1e-12)
    assert -np.log(np.finfo(np.float64).eps) == pytest.approx(36.04, abs=0.01)


def test_nll_binary_1d_equals_sklearn():
    rng = np.random.default_rng(1)
    p1 = rng.random(100)
    y = rng.integers(0, 2, 100)
    assert negative_log_likelihood(y, p1) == pytest.approx(log_loss(y, p1), abs=1e-12)


# ---------------------------------------------------------------- hand-computed cases
def test_ece_hand_computed():
    # y = [0, 1, 1], prob = [[.9,.1],[.2,.8],[.6,.4]], n_bins = 5 (edges 0, .2, .4, .6000000000000001, .8, 1)
    # top-label: conf .9 correct, conf .8 correct, conf .6 wrong (argmax 0, truth 1)
    # 0.6 < 0.6000000000000001 -> bin 2 ([.4, .6)):  |0 - .6| * 1 = .6
    # .8 and .9 -> bin 4 ([.8, 1]):  |2 - (0.8 + 0.9)| = .3
    # ECE = (.6 + .3) / 3 = 0.3
    y = [0, 1, 1]
    prob = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]
    assert expected_calibration_error(y, prob, n_bins=5) == pytest.approx(0.3, abs=1e-12)
    # MCE: bin 2 gap .6, bin 4 gap |1 - .85| = .15 -> .6
    assert maximum_calibration_error(y, prob, n_bins=5) == pytest.approx(0.6, abs=1e-12)
    # n_bins = 1: |mean(correct) - mean(conf)| = |2/3 - 2.3/3| = 0.1
    assert expected_calibration_error(y, prob, n_bins=1) == pytest.approx(0.1, abs=1e-12)


def test_docstring_examples_hold():
    """The examples in precal.metrics.calibration's docstrings must be what the code returns."""
    result = doctest.testmod(calibration_module, verbose=False, report=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, "a docstring example in precal/metrics/calibration.py gives a different value"


def test_ace_hand_computed():
    # six samples, binary; confidence c of class 1, correct when y == 1
    # (conf, correct): (.9,1) (.6,0) (.7,1) (.95,1) (.55,1) (.8,0)
    # sorted: .55(1) .6(0) .7(1) | .8(0) .9(1) .95(1)    (n_bins = 2, three per bin)
    # bin 0: |2 - (.55 + .6 + .7)| = |2 - 1.85| = .15
    # bin 1: |2 - (.8 + .9 + .95)| = |2 - 2.65| = .65
    # ACE = (.15 + .65) / 6 = 0.8 / 6
    # equal-width ECE with 2 bins puts all six in [.5, 1]: |4 - 4.5| / 6 = 0.5 / 6
    conf = np.array([0.9, 0.6, 0.7, 0.95, 0.55, 0.8])
    correct = np.array([1, 0, 1, 1, 1, 0])
    prob = np.c_[1 - conf, conf]
    y = correct  # predicted class is 1 for every row
    assert adaptive_calibration_error(y, prob, n_bins=2) == pytest.approx(0.8 / 6, abs=1e-12)
    assert expected_calibration_error(y, prob, n_bins=2) == pytest.approx(0.5 / 6, abs=1e-12)
    # three bins of two: (.55,1)(.6,0) | (.7,1)(.8,0) | (.9,1)(.95,1)
    # |1 - 1.15| + |1 - 1.5| + |2 - 1.85| = .15 + .5 + .15 = .8 -> / 6
    assert adaptive_calibration_error(y, prob, n_bins=3) == pytest.approx(0.8 / 6, abs=1e-12)
    # one bin: same as ECE with one bin
    assert adaptive_calibration_error(y, prob, n_bins=1) == pytest.approx(0.5 / 6, abs=1e-12)
    # six bins: every sample alone -> mean |correct - conf|
    assert adaptive_calibration_error(y, prob, n_bins=6) == pytest.approx(np.mean(np.abs(correct - conf)), abs=1e-12)


def test_ace_more_bins_than_samples_is_per_sample_gap():
    prob, y = make_data(n=7, k=3, seed=4)
    conf = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    assert adaptive_calibration_error(y, prob, n_bins=20) == pytest.approx(np.mean(np.abs(correct - conf)), abs=1e-12)


def test_classwise_hand_computed():
    # K = 3, n = 4, n_bins = 2 (edges 0, .5, 1; .5 goes to the upper bin)
    # class 0: p = .7 .2 .1 .6, is0 = 1 0 1 0
    #   bin 0: rows 1, 2 -> |1 - .3| = .7 ; bin 1: rows 0, 3 -> |1 - 1.3| = .3 ; sum 1.0 -> /4 = .25
    # class 1: p = .2 .5 .3 .4, is1 = 0 1 0 0
    #   bin 0: rows 0, 2, 3 -> |0 - .9| = .9 ; bin 1: row 1 (p = .5 on the edge) -> |1 - .5| = .5 ; -> 1.4/4 = .35
    # class 2: p = .1 .3 .6 0, is2 = 0 0 0 1
    #   bin 0: rows 0, 1, 3 -> |1 - .4| = .6 ; bin 1: row 2 -> |0 - .6| = .6 ; -> 1.2/4 = .3
    # cwECE = (.25 + .35 + .3) / 3 = 0.3
    # (if .5 went to the lower bin, class 1 would give |1 - 1.4| / 4 = .1 and cwECE .2167)
    prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.6, 0.4, 0.0]])
    y = np.array([0, 1, 0, 2])
    assert classwise_calibration_error(y, prob, n_bins=2) == pytest.approx(0.3, abs=1e-12)
    assert loop_classwise(y, prob, 2) == pytest.approx(0.3, abs=1e-12)
    # n_bins = 1: per class |mean(is_k) - mean(p_k)|: |.5-.4| + |.25-.35| + |.25-.25| = .2 -> / 3
    assert classwise_calibration_error(y, prob, n_bins=1) == pytest.approx(0.2 / 3, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 2, 7, 15])
@pytest.mark.parametrize("spec", [dict(n=120, k=3, seed=0), dict(n=90, k=6, seed=1, scale=5.0)])
def test_classwise_equals_loop_reference(spec, n_bins):
    prob, y = make_data(**spec)
    # add exact 0 / 1 probabilities and an edge value
    prob[0] = onehot(0, spec["k"])
    prob[1] = onehot(1, spec["k"])
    y[1] = 0
    prob[2] = np.r_[0.5, 0.5, np.zeros(spec["k"] - 2)]
    got = classwise_calibration_error(y, prob, n_bins=n_bins)
    assert got == pytest.approx(loop_classwise(y, prob, n_bins), abs=1e-12)


def test_classwise_binary_1d_equals_loop_reference():
    # 1-D positive-class input is expanded to [1 - p, p] before the class-wise binning
    rng = np.random.default_rng(2)
    p1 = rng.random(80)
    y = rng.integers(0, 2, 80)
    got = classwise_calibration_error(y, p1, n_bins=10)
    assert got == pytest.approx(loop_classwise(y, np.c_[1 - p1, p1], 10), abs=1e-12)


# ---------------------------------------------------------------- reliability curve
@pytest.mark.parametrize("n_bins", [1, 5, 15, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_curve_reproduces_ece_and_ace(seed, n_bins):
    prob, y = make_data(n=301, k=4, seed=seed)
    n = len(y)
    for strategy, metric in [("uniform", expected_calibration_error), ("quantile", adaptive_calibration_error)]:
        curve = reliability_curve(y, prob, n_bins=n_bins, strategy=strategy)
        assert isinstance(curve, ReliabilityCurve)
        assert curve.counts.shape == (n_bins,)
        assert curve.mean_confidence.shape == (n_bins,)
        assert curve.accuracy.shape == (n_bins,)
        assert curve.bin_edges.shape == (n_bins + 1,)
        assert curve.counts.sum() == n
        full = curve.counts > 0
        assert np.isnan(curve.accuracy[~full]).all()
        assert np.isnan(curve.mean_confidence[~full]).all()
        assert np.isfinite(curve.accuracy[full]).all() and np.isfinite(curve.mean_confidence[full]).all()
        value = np.sum(curve.counts[full] * np.abs(curve.accuracy[full] - curve.mean_confidence[full])) / n
        assert value == pytest.approx(metric(y, prob, n_bins=n_bins), abs=1e-12)
        assert np.all(np.diff(curve.bin_edges) >= 0)
        # mean confidence of a bin lies within its edges
        lo, hi = curve.bin_edges[:-1][full], curve.bin_edges[1:][full]
        assert np.all(curve.mean_confidence[full] >= lo - 1e-12)
        assert np.all(curve.mean_confidence[full] <= hi + 1e-12)


def test_reliability_curve_uniform_edges_and_empty_bins():
    prob = np.array([[0.9, 0.05, 0.05], [0.95, 0.03, 0.02], [0.4, 0.35, 0.25]])
    y = np.array([0, 1, 2])
    curve = reliability_curve(y, prob, n_bins=10)
    assert_array_equal(curve.bin_edges, np.linspace(0, 1, 11))
    assert_array_equal(curve.counts, [0, 0, 0, 0, 1, 0, 0, 0, 0, 2])
    assert curve.counts.dtype.kind == "i"
    assert curve.accuracy[9] == pytest.approx(0.5)
    assert curve.mean_confidence[9] == pytest.approx(0.925)
    assert curve.accuracy[4] == 0.0
    assert curve.mean_confidence[4] == pytest.approx(0.4)
    empty = np.array([0, 1, 2, 3, 5, 6, 7, 8])
    assert np.isnan(curve.accuracy[empty]).all() and np.isnan(curve.mean_confidence[empty]).all()


def test_reliability_curve_quantile_bins_equal_mass():
    prob, y = make_data(n=103, k=3, seed=5)
    curve = reliability_curve(y, prob, n_bins=10, strategy="quantile")
    assert curve.counts.sum() == 103
    assert curve.counts.max() - curve.counts.min() <= 1
    conf = np.sort(prob.max(axis=1))
    assert curve.bin_edges[0] == conf[0]
    assert curve.bin_edges[-1] == conf[-1]


@pytest.mark.parametrize("n,n_bins", [(6, 3), (5, 2), (7, 3), (103, 10), (10, 4)])
def test_reliability_curve_quantile_edges_are_smallest_confidence_of_each_bin(n, n_bins):
    """Documented: quantile edges are the smallest confidence of each run and the largest overall."""
    rng = np.random.default_rng(n)
    conf = rng.permutation(np.linspace(0.55, 0.95, n))  # distinct confidences
    prob = np.c_[1 - conf, conf]
    y = rng.integers(0, 2, n)
    curve = reliability_curve(y, prob, n_bins=n_bins, strategy="quantile")
    sorted_conf = np.sort(conf)
    starts = np.concatenate([[0], np.cumsum(curve.counts)[:-1]])
    expected_edges = np.append(sorted_conf[starts], sorted_conf[-1])
    assert_array_equal(curve.bin_edges, expected_edges)
    # and each bin's mean confidence is the mean of its run of sorted confidences
    for b in range(n_bins):
        run = sorted_conf[starts[b] : starts[b] + curve.counts[b]]
        assert curve.mean_confidence[b] == pytest.approx(run.mean(), abs=1e-12)


# ---------------------------------------------------------------- edge conventions
def test_confidence_one_goes_to_last_bin_no_extra_bin():
    prob = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]])
    y = np.array([0, 1, 0, 1])
    for n_bins in (1, 2, 10, 15):
        curve = reliability_curve(y, prob, n_bins=n_bins)
        assert curve.counts.shape == (n_bins,)
        assert curve.counts[-1] >= 3
        assert curve.counts.sum() == 4
    curve = reliability_curve(y, prob, n_bins=10)
    assert_array_equal(curve.counts, [0, 0, 0, 0, 0, 1, 0, 0, 0, 3])
    assert curve.mean_confidence[-1] == 1.0
    assert curve.accuracy[-1] == pytest.approx(2 / 3)
    # ECE: bin 9 |2 - 3| = 1 ; bin 5 |1 - .5| = .5 ; -> 1.5 / 4
    assert expected_calibration_error(y, prob, n_bins=10) == pytest.approx(1.5 / 4, abs=1e-12)
    # MCE: max(1/3, .5)
    assert maximum_calibration_error(y, prob, n_bins=10) == pytest.approx(0.5, abs=1e-12)


def test_all_confidences_one_and_correct_give_zero():
    k = 4
    y = np.array([0, 1, 2, 3, 3, 1])
    prob = onehot(y, k)
    for name, f in ALL_METRICS.items():
        assert f(y, prob) == 0.0, name
    curve = reliability_curve(y, prob, n_bins=15)
    assert curve.counts[-1] == 6 and curve.counts[:-1].sum() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 7, 10, 15, 20, 100])
def test_bin_index_equals_searchsorted_next_to_every_edge(n_bins, dtype):
    """float32 confidences are binned in float32 against edges rounded up to float32: the same bins
    as searchsorted over the float64 linspace edges, for values on, just below and just above each edge."""
    from precal.metrics.calibration import _uniform_bin_index

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    near = []
    for e in edges:
        v = dtype(e)
        near += [v, np.nextafter(v, dtype(0)), np.nextafter(v, dtype(1)), np.nextafter(np.nextafter(v, dtype(1)), dtype(1))]
    rng = np.random.default_rng(n_bins)
    values = np.clip(np.concatenate([np.array(near, dtype=dtype), rng.random(2000).astype(dtype)]), 0, 1).astype(dtype)
    expected = np.clip(np.searchsorted(edges, values.astype(np.float64), side="right") - 1, 0, n_bins - 1)
    assert_array_equal(_uniform_bin_index(values, edges), expected)


def test_interior_edge_goes_to_upper_bin():
    # n_bins = 2: edges [0, .5, 1]; confidence exactly .5 -> bin 1 ([.5, 1])
    assert_array_equal(np.linspace(0, 1, 3), [0.0, 0.5, 1.0])
    curve = reliability_curve([0], [[0.5, 0.5]], n_bins=2)
    assert_array_equal(curve.counts, [0, 1])
    # n_bins = 4: edge .25 is exact in binary; a 4-class uniform row has confidence .25 -> bin 1
    assert np.linspace(0, 1, 5)[1] == 0.25
    curve = reliability_curve([2], [[0.25, 0.25, 0.25, 0.25]], n_bins=4)
    assert_array_equal(curve.counts, [0, 1, 0, 0])
    # n_bins = 5: linspace gives exactly 0.4, so 0.4 -> bin 2 ([.4, .6000000000000001))
    edges5 = np.linspace(0, 1, 6)
    assert edges5[2] == 0.4
    curve = reliability_curve([0], [[0.4, 0.3, 0.3]], n_bins=5)
    assert_array_equal(curve.counts, [0, 0, 1, 0, 0])
    # ... but linspace's third interior edge is 0.6000000000000001 > 0.6, so 0.6 stays in bin 2
    assert edges5[3] > 0.6
    curve = reliability_curve([0], [[0.6, 0.4]], n_bins=5)
    assert_array_equal(curve.counts, [0, 0, 1, 0, 0])
    # n_bins = 10: 0.30000000000000004 is the edge; 0.3 itself is below it
    edges10 = np.linspace(0, 1, 11)
    row = np.full(10, 0.7 / 9)
    row[0] = 0.3
    assert row.sum() == pytest.approx(1.0)
    assert 0.3 < edges10[3] == 0.30000000000000004
    curve = reliability_curve([0], [row], n_bins=10)
    assert_array_equal(curve.counts, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    # whatever linspace gives, an edge value itself goes up: feed the exact edge
    for b in range(4, 10):  # edges >= .4 so a 2/3-class row can have them as top confidence
        e = edges10[b]
        curve = reliability_curve([0], [[e, 1.0 - e]], n_bins=10) if e >= 0.5 else reliability_curve(
            [0], [[e, (1.0 - e) / 2, (1.0 - e) / 2]], n_bins=10
        )
        expected = np.zeros(10, dtype=int)
        expected[b] = 1
        assert_array_equal(curve.counts, expected, err_msg=f"edge {e!r}")


def test_classwise_probability_on_edge_and_at_one():
    # class probabilities 0.0 -> bin 0, 1.0 -> last bin, 0.5 -> upper bin (n_bins = 2)
    prob = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([0, 1])
    # class 0: p = 1 (is0 = 1) in bin 1 ; p = .5 (is0 = 0) in bin 1 -> |1 - 1.5| = .5 -> /2 = .25
    # class 1: p = 0 (is1 = 0) in bin 0 -> 0 ; p = .5 (is1 = 1) in bin 1 -> .5 -> /2 = .25
    assert classwise_calibration_error(y, prob, n_bins=2) == pytest.approx(0.25, abs=1e-12)


def test_n_bins_one():
    prob, y = make_data(n=200, k=3, seed=8)
    conf = prob.max(axis=1)
    acc = np.mean(prob.argmax(axis=1) == y)
    gap = abs(acc - conf.mean())
    assert expected_calibration_error(y, prob, n_bins=1) == pytest.approx(gap, abs=1e-12)
    assert adaptive_calibration_error(y, prob, n_bins=1) == pytest.approx(gap, abs=1e-12)
    assert maximum_calibration_error(y, prob, n_bins=1) == pytest.approx(gap, abs=1e-12)
    curve = reliability_curve(y, prob, n_bins=1)
    assert_array_equal(curve.counts, [200])
    assert_array_equal(curve.bin_edges, [0.0, 1.0])
    cw = np.mean(np.abs(onehot(y, 3).mean(axis=0) - prob.mean(axis=0)))
    assert classwise_calibration_error(y, prob, n_bins=1) == pytest.approx(cw, abs=1e-12)


def test_argmax_ties_go_to_first_column():
    # [.5, .5]: predicted class 0 -> correct iff y == 0
    assert expected_calibration_error([0], [[0.5, 0.5]], n_bins=2) == pytest.approx(0.5)
    assert expected_calibration_error([1], [[0.5, 0.5]], n_bins=2) == pytest.approx(0.5)
    curve = reliability_curve([0, 0], [[0.5, 0.5], [0.5, 0.5]], n_bins=2)
    assert curve.accuracy[1] == 1.0
    curve = reliability_curve([1, 1], [[0.5, 0.5], [0.5, 0.5]], n_bins=2)
    assert curve.accuracy[1] == 0.0


# ---------------------------------------------------------------- input forms
@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_binary_1d_equals_two_column(name):
    f = ALL_METRICS[name]
    rng = np.random.default_rng(0)
    p1 = rng.random(150)
    p1[:3] = [0.0, 1.0, 0.5]
    y = rng.integers(0, 2, 150)
    assert f(y, p1) == pytest.approx(f(y, np.c_[1 - p1, p1]), abs=1e-12)
    # float32 1-D too
    p32 = p1.astype(np.float32)
    assert f(y, p32) == pytest.approx(f(y, np.c_[1 - p32.astype(np.float64), p32.astype(np.float64)]), abs=1e-12)


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_torch_float32_and_float64_equal_numpy(name):
    f = ALL_METRICS[name]
    prob, y = make_data(n=200, k=5, seed=3, dtype=np.float32)
    t = torch.from_numpy(prob.copy())
    assert f(torch.from_numpy(y), t) == pytest.approx(f(y, prob), abs=1e-12)
    assert f(y, t.double()) == pytest.approx(f(y, prob.astype(np.float64)), abs=1e-12)
    assert f(y, t.requires_grad_(True)) == pytest.approx(f(y, prob), abs=1e-12)


def test_torch_float16_is_read_exactly():
    """float16 tensors are accepted and their (rounded) values used as they are, not renormalised."""
    prob, y = make_data(n=200, k=5, seed=4)
    t16 = torch.from_numpy(prob).to(torch.float16)
    p = t16.double().numpy()
    assert np.abs(p.sum(axis=1) - 1).max() > 1e-6  # genuinely rounded
    ece, mce = loop_top_label(y, p, 15)
    assert expected_calibration_error(y, t16) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(y, t16) == pytest.approx(mce, abs=1e-12)
    assert classwise_calibration_error(y, t16) == pytest.approx(loop_classwise(y, p, 15), abs=1e-12)
    assert brier_score(y, t16) == pytest.approx(np.mean(np.sum((p - onehot(y, 5)) ** 2, axis=1)), abs=1e-12)
    assert negative_log_likelihood(y, t16) == pytest.approx(-np.mean(np.log(p[np.arange(200), y])), abs=1e-12)
    assert adaptive_calibration_error(y, t16) == pytest.approx(adaptive_calibration_error(y, prob), abs=5e-3)
    for name, f in ALL_METRICS.items():
        assert f(y, t16) == f(y, t16.numpy()), name  # torch fp16 == numpy fp16


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_torch_bfloat16_exactly_representable_rows(name):
    """bfloat16 tensors are accepted and read exactly (rows that sum to 1 exactly in bf16)."""
    f = ALL_METRICS[name]
    rows = np.array([[0.5, 0.25, 0.25], [0.125, 0.75, 0.125], [0.0, 0.0, 1.0], [0.375, 0.5, 0.125]])
    y = np.array([0, 1, 2, 0])
    t = torch.tensor(rows, dtype=torch.bfloat16)
    assert f(y, t) == pytest.approx(f(y, rows), abs=1e-15)
    a = rows.astype(ml_dtypes.bfloat16)
    assert f(y, a) == pytest.approx(f(y, rows), abs=1e-15)


def test_torch_bfloat16_softmax_output_is_accepted():
    """A bfloat16 softmax's rows sum to 1 only within bfloat16 rounding (~2e-3 here); they are
    probabilities and must be accepted (the tolerance of the *input* dtype: eps + K sigma / 2,
    0.0078 for bfloat16; see tests/metrics/test_parameter_checks.py)."""
    torch.manual_seed(0)
    logits = 2.0 * torch.randn(200, 10)
    y = torch.randint(0, 10, (200,))
    p16 = torch.softmax(logits.to(torch.bfloat16), dim=1)
    off = (p16.double().sum(dim=1) - 1).abs().max().item()
    assert 3.5e-4 < off < 0.05
    ece = expected_calibration_error(y, p16)
    exact = p16.double().numpy()
    assert ece == pytest.approx(expected_calibration_error(y.numpy(), exact / exact.sum(axis=1, keepdims=True)), abs=0.02)
    # the same through ml_dtypes' numpy bfloat16
    assert expected_calibration_error(y.numpy(), p16.float().numpy().astype(ml_dtypes.bfloat16)) == pytest.approx(ece)


def test_numpy_float16_rounded_rows_accepted():
    prob, y = make_data(n=300, k=7, seed=12)
    p16 = prob.astype(np.float16)
    sums = p16.astype(np.float64).sum(axis=1)
    assert np.abs(sums - 1).max() > 1e-6  # would fail a float64 tolerance
    for name, f in ALL_METRICS.items():
        v = f(y, p16)
        assert np.isfinite(v), name
    assert expected_calibration_error(y, p16) == pytest.approx(expected_calibration_error(y, prob), abs=5e-3)
    # but logits in float16 are still refused
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(y, (3 * np.random.default_rng(0).normal(size=(300, 7))).astype(np.float16))


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_string_labels_with_labels_argument(name):
    f = ALL_METRICS[name]
    prob, y = make_data(n=150, k=3, seed=6)
    columns = np.array(["dog", "cat", "bird"])  # column order deliberately not sorted
    y_str = columns[y]
    expected = f(y, prob)
    assert f(y_str, prob, labels=columns) == pytest.approx(expected, abs=1e-12)
    assert f(list(y_str), prob, labels=list(columns)) == pytest.approx(expected, abs=1e-12)
    # without labels, sorted distinct labels index the columns: bird, cat, dog
    perm = np.argsort(columns)
    assert f(y_str, prob[:, perm]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_integer_labels_with_absent_class_map_to_columns(name):
    f = ALL_METRICS[name]
    prob, y = make_data(n=200, k=4, seed=2)
    keep = y != 1  # class 1 never occurs
    prob, y = prob[keep], y[keep]
    assert set(np.unique(y)) == {0, 2, 3}
    expected = f(y, prob, labels=[0, 1, 2, 3])
    assert f(y, prob) == pytest.approx(expected, abs=1e-12)
    # remapping by sorted present labels would be wrong: check the result really depends on it
    if name in ("brier", "nll"):
        wrong = np.searchsorted([0, 2, 3], y)
        assert f(wrong, prob, labels=[0, 1, 2, 3]) != pytest.approx(expected, abs=1e-6)


def test_single_present_class_is_fine():
    prob, _ = make_data(n=30, k=3, seed=1)
    y = np.full(30, 2)
    for name, f in ALL_METRICS.items():
        assert np.isfinite(f(y, prob)), name
    assert negative_log_likelihood(y, prob) == pytest.approx(-np.mean(np.log(prob[:, 2])), abs=1e-12)


def test_python_lists_accepted():
    y = [0, 1, 2, 1]
    prob = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]]
    assert expected_calibration_error(y, prob) == pytest.approx(expected_calibration_error(np.array(y), np.array(prob)))


def test_column_vector_y_true_accepted():
    prob, y = make_data(n=50, k=3, seed=0)
    assert expected_calibration_error(y[:, None], prob) == expected_calibration_error(y, prob)


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_inputs_not_modified_and_read_only_work(name):
    f = ALL_METRICS[name]
    prob, y = make_data(n=100, k=4, seed=1)
    prob32 = prob.astype(np.float32)
    p1 = prob[:, 0] / prob[:, :2].sum(axis=1)
    yb = (y > 1).astype(int)
    for yy, pp in [(y, prob), (y, prob32), (yb, p1)]:
        yy_copy, pp_copy = yy.copy(), pp.copy()
        v1 = f(yy, pp)
        assert_array_equal(yy, yy_copy)
        assert_array_equal(pp, pp_copy)
        assert pp.dtype == pp_copy.dtype
        ro_y, ro_p = yy.copy(), pp.copy()
        ro_y.flags.writeable = False
        ro_p.flags.writeable = False
        assert f(ro_y, ro_p) == v1
    t = torch.from_numpy(prob.copy())
    t_copy = t.clone()
    f(torch.from_numpy(y), t)
    assert torch.equal(t, t_copy)


def test_reliability_curve_and_ci_do_not_modify_inputs():
    prob, y = make_data(n=60, k=3, seed=2)
    pc, yc = prob.copy(), y.copy()
    prob.flags.writeable = False
    y.flags.writeable = False
    reliability_curve(y, prob, strategy="quantile")
    calibration_error_ci(y, prob, metric="brier", n_bootstrap=20, random_state=0)
    assert_array_equal(prob, pc)
    assert_array_equal(y, yc)


# ---------------------------------------------------------------- bad input
P3 = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
Y3 = np.array([0, 2, 1])


@pytest.mark.parametrize(
    "y_true,y_prob,exc,match",
    [
        pytest.param(Y3, np.where(np.eye(3, dtype=bool), np.nan, P3), ValueError, "NaN", id="nan"),
        pytest.param(Y3, np.array([[np.inf, 0.0, 0.0], *P3[1:]]), ValueError, "infinity", id="inf"),
        pytest.param(Y3, np.array([[2.0, -1.0, 0.3], [0.5, 0.2, 0.3], [1.2, -3.0, 0.1]]), ValueError,
                     r"probabilities in \[0, 1\].*logits", id="logits"),
        pytest.param(Y3, np.array([[-0.1, 0.6, 0.5], *P3[1:]]), ValueError, r"\[0, 1\]", id="negative"),
        pytest.param(Y3, np.array([[0.2, 0.2, 0.2], *P3[1:]]), ValueError, "sum to 1", id="rows-not-summing"),
        pytest.param(Y3, np.full((3, 3), 0.999), ValueError, "sum to 1", id="rows-sum-3"),
        pytest.param(Y3, P3[None], ValueError, "2-D", id="3d"),
        pytest.param(Y3, np.float64(0.5), ValueError, "2-D", id="0d"),
        pytest.param([0, 1, 0], np.array([[1.0], [1.0], [1.0]]), ValueError, "single column", id="one-column"),
        pytest.param([], np.empty((0, 3)), ValueError, "0 sample", id="empty-2d"),
        pytest.param([], np.empty((0,)), ValueError, "0 sample", id="empty-1d"),
        pytest.param([0, 1, 2, 1], P3, ValueError, "Inconsistent numbers of samples", id="len-long"),
        pytest.param([0, 1], P3, ValueError, "Inconsistent numbers of samples", id="len-short"),
        pytest.param(["a", "b", "b"], P3, ValueError, "2 classes.*3 columns", id="str-count"),
        pytest.param(["a", "b", "c", "d"][:3], P3[:, :2] / P3[:, :2].sum(1, keepdims=True), ValueError,
                     "3 classes.*2 columns", id="str-count-too-many"),
        pytest.param(np.array([0.0, np.nan, 1.0]), P3, ValueError, "NaN", id="nan-label"),
        pytest.param(np.array([0.5, 1.5, 0.0]), P3, ValueError, "continuous", id="continuous-label"),
        pytest.param(np.array([0, 5, 5]), P3, ValueError, r"2 classes \[0, 5\].*3 columns", id="int-label-out-of-range"),
        pytest.param(np.zeros((3, 2)), P3, ValueError, "1-D", id="2d-labels"),
        pytest.param(Y3, P3.astype(complex), ValueError, "Complex data not supported", id="complex"),
        pytest.param(Y3, np.array([["a", "b", "c"]] * 3), TypeError, "numeric", id="string-probs"),
    ],
)
def test_bad_input_raises(y_true, y_prob, exc, match):
    y_copy, p_copy = np.array(y_true, copy=True), np.array(y_prob, copy=True)
    for name, f in ALL_METRICS.items():
        with pytest.raises(exc, match=match):
            f(y_true, y_prob)
    with pytest.raises(exc, match=match):
        reliability_curve(y_true, y_prob)
    with pytest.raises(exc, match=match):
        calibration_error_ci(y_true, y_prob, n_bootstrap=5)
    # a refused input is left as it was
    assert_array_equal(np.asarray(y_true), y_copy)
    assert_array_equal(np.asarray(y_prob), p_copy)


@pytest.mark.parametrize("name", sorted(ALL_METRICS))
def test_labels_not_in_labels_argument(name):
    with pytest.raises(ValueError, match=r"not in labels.*'z'"):
        ALL_METRICS[name](["a", "z", "b"], P3, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels has 2 entries but the scores have 3 columns"):
        ALL_METRICS[name](["a", "b", "b"], P3, labels=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        ALL_METRICS[name](["a", "b", "b"], P3, labels=["a", "b", "b"])


def test_torch_bad_input_raises():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(torch.tensor([0, 1]), torch.randn(2, 3) * 5)
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error([0, 1], torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]))


@pytest.mark.parametrize("name", sorted(BINNED))
def test_bad_n_bins(name):
    f = BINNED[name]
    with pytest.raises(ValueError, match="n_bins == 0, must be >= 1"):
        f(Y3, P3, n_bins=0)
    with pytest.raises(ValueError, match="n_bins == -3"):
        f(Y3, P3, n_bins=-3)
    with pytest.raises(TypeError, match="n_bins must be an instance of int"):
        f(Y3, P3, n_bins=1.5)
    with pytest.raises(TypeError, match="n_bins"):
        f(Y3, P3, n_bins="10")
    # numpy integers are integers
    assert f(Y3, P3, n_bins=np.int64(4)) == f(Y3, P3, n_bins=4)


def test_reliability_curve_bad_arguments():
    with pytest.raises(ValueError, match="strategy must be 'uniform' or 'quantile', got 'equal'"):
        reliability_curve(Y3, P3, strategy="equal")
    with pytest.raises(ValueError, match="n_bins == 0"):
        reliability_curve(Y3, P3, n_bins=0)
    with pytest.raises(TypeError, match="n_bins"):
        reliability_curve(Y3, P3, n_bins=2.0)
    with pytest.raises(ValueError, match="sum to 1"):
        reliability_curve(Y3, P3 * 0.5)


def test_brier_bad_scale_by_half():
    with pytest.raises(ValueError, match="scale_by_half must be True, False or 'auto'"):
        brier_score(Y3, P3, scale_by_half="yes")


def test_ci_bad_arguments():
    with pytest.raises(ValueError, match="metric must be one of .*'ece'.*got 'foo'"):
        calibration_error_ci(Y3, P3, metric="foo")
    for level in (0, 0.0, 1, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="confidence_level"):
            calibration_error_ci(Y3, P3, confidence_level=level, n_bootstrap=5)
    with pytest.raises(ValueError, match="n_bootstrap == 0"):
        calibration_error_ci(Y3, P3, n_bootstrap=0)
    with pytest.raises(TypeError, match="n_bootstrap"):
        calibration_error_ci(Y3, P3, n_bootstrap=10.5)
    with pytest.raises(ValueError, match="n_bins == 0"):
        calibration_error_ci(Y3, P3, n_bins=0, n_bootstrap=5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_error_ci(Y3, P3 * 3 - 1, n_bootstrap=5)
    with pytest.raises(ValueError, match="Inconsistent numbers of samples"):
        calibration_error_ci(Y3[:2], P3, n_bootstrap=5)


# ---------------------------------------------------------------- bootstrap interval
def test_ci_deterministic_and_estimate_is_full_data_metric():
    prob, y = make_data(n=300, k=4, seed=0)
    a = calibration_error_ci(y, prob, n_bootstrap=200, random_state=0)
    b = calibration_error_ci(y, prob, n_bootstrap=200, random_state=0)
    c = calibration_error_ci(y, prob, n_bootstrap=200, random_state=1)
    assert isinstance(a, CalibrationErrorCI)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.plugin == c.plugin == expected_calibration_error(y, prob)
    assert a.method == "bias_corrected"  # the default for a binned metric
    assert a.low <= a.estimate <= a.high
    pct = calibration_error_ci(y, prob, n_bootstrap=200, random_state=0, method="percentile")
    assert pct.estimate == pct.plugin == a.plugin and pct.method == "percentile"
    assert a.confidence_level == 0.95
    rs = np.random.RandomState(0)
    d = calibration_error_ci(y, prob, n_bootstrap=200, random_state=rs)
    assert (d.low, d.high) == (a.low, a.high)


def test_ci_contains_estimate_on_large_sample():
    prob, y = make_data(n=3000, k=4, seed=1)
    for metric in ("ece", "brier", "nll"):
        ci = calibration_error_ci(y, prob, metric=metric, n_bootstrap=200, random_state=0)
        assert ci.low <= ci.estimate <= ci.high, metric
        assert ci.high - ci.low < 0.2 * max(ci.estimate, 1e-3) + 0.02, metric
        if metric in ("brier", "nll"):  # smooth means: a nearly symmetric percentile interval
            assert ci.low < ci.estimate < ci.high, metric
            mid = (ci.low + ci.high) / 2
            assert abs(mid - ci.estimate) < 0.25 * (ci.high - ci.low), metric


def test_ci_wider_for_higher_level_and_smaller_sample():
    prob, y = make_data(n=1000, k=3, seed=2)
    ci90 = calibration_error_ci(y, prob, n_bootstrap=300, confidence_level=0.9, random_state=0)
    ci99 = calibration_error_ci(y, prob, n_bootstrap=300, confidence_level=0.99, random_state=0)
    assert ci99.low <= ci90.low <= ci90.high <= ci99.high
    assert ci99.confidence_level == 0.99
    small = calibration_error_ci(y[:100], prob[:100], metric="brier", n_bootstrap=300, random_state=0)
    large = calibration_error_ci(y, prob, metric="brier", n_bootstrap=300, random_state=0)
    assert small.high - small.low > large.high - large.low


@pytest.mark.parametrize("metric", ["ece", "ace", "mce", "classwise_ece", "brier", "nll"])
def test_ci_every_named_metric(metric):
    prob, y = make_data(n=400, k=3, seed=3)
    ci = calibration_error_ci(y, prob, metric=metric, n_bootstrap=100, random_state=0)
    fn = {
        "ece": expected_calibration_error,
        "ace": adaptive_calibration_error,
        "mce": maximum_calibration_error,
        "classwise_ece": classwise_calibration_error,
        "brier": brier_score,
        "nll": negative_log_likelihood,
    }[metric]
    assert ci.plugin == pytest.approx(fn(y, prob), abs=1e-12)
    assert ci.method == ("percentile" if metric in ("brier", "nll") else "bias_corrected")
    if ci.method == "percentile":
        assert ci.estimate == ci.plugin
    assert ci.low <= ci.estimate <= ci.high
    assert np.isfinite([ci.low, ci.high]).all()
    assert ci.low >= 0.0


def test_ci_metric_params_pass_through():
    prob, y = make_data(n=300, k=3, seed=4)
    ci = calibration_error_ci(y, prob, metric="ece", n_bins=5, n_bootstrap=50, random_state=0)
    assert ci.plugin == pytest.approx(expected_calibration_error(y, prob, n_bins=5), abs=1e-12)
    assert ci.plugin != pytest.approx(expected_calibration_error(y, prob, n_bins=15), abs=1e-9)
    ci = calibration_error_ci(y, prob, metric="brier", scale_by_half=True, n_bootstrap=50, random_state=0)
    assert ci.estimate == pytest.approx(brier_score(y, prob, scale_by_half=True), abs=1e-12)


def test_ci_callable_metric():
    prob, y = make_data(n=300, k=4, seed=5)
    ci = calibration_error_ci(y, prob, metric=log_loss, n_bootstrap=100, random_state=0)
    assert ci.estimate == pytest.approx(log_loss(y, prob, labels=np.arange(4)), abs=1e-12)
    named = calibration_error_ci(y, prob, metric="nll", n_bootstrap=100, random_state=0)
    assert ci.estimate == pytest.approx(named.estimate, abs=1e-12)
    # same resamples, same metric -> the same interval
    assert ci.low == pytest.approx(named.low, abs=1e-12)
    assert ci.high == pytest.approx(named.high, abs=1e-12)
    # precal's own function as a callable, with a parameter
    # (a callable gets the percentile interval unless told otherwise: precal cannot know it is biased)
    ci2 = calibration_error_ci(y, prob, metric=expected_calibration_error, n_bins=10, n_bootstrap=50, random_state=0)
    named2 = calibration_error_ci(y, prob, metric="ece", n_bins=10, n_bootstrap=50, random_state=0,
                                  method="percentile")
    assert ci2.method == named2.method == "percentile"
    assert (ci2.estimate, ci2.low, ci2.high) == pytest.approx((named2.estimate, named2.low, named2.high), abs=1e-12)
    ci3 = calibration_error_ci(y, prob, metric=expected_calibration_error, n_bins=10, n_bootstrap=50, random_state=0,
                               method="bias_corrected")
    named3 = calibration_error_ci(y, prob, metric="ece", n_bins=10, n_bootstrap=50, random_state=0)
    assert named3.low > 0  # nothing clipped, so the unclipped callable agrees
    assert (ci3.estimate, ci3.low, ci3.high) == pytest.approx((named3.estimate, named3.low, named3.high), abs=1e-12)


@pytest.mark.parametrize(
    "metric,params",
    [("ece", {}), ("ece", {"n_bins": 7}), ("ace", {"n_bins": 10}), ("mce", {}), ("nll", {}), ("brier", {}),
     ("brier", {"scale_by_half": True})],
)
def test_ci_resampled_summaries_equal_resampled_rows(metric, params):
    """Named metrics resample per-sample summaries; the public function as a callable resamples
    whole rows with the same draws: the intervals must agree."""
    prob, y = make_data(n=500, k=6, seed=8)
    fn = {"ece": expected_calibration_error, "ace": adaptive_calibration_error, "mce": maximum_calibration_error,
          "nll": negative_log_likelihood, "brier": brier_score}[metric]
    named = calibration_error_ci(y, prob, metric=metric, n_bootstrap=200, random_state=3, method="percentile",
                                 **params)
    rows = calibration_error_ci(y, prob, metric=fn, n_bootstrap=200, random_state=3, **params)
    assert (named.estimate, named.low, named.high) == pytest.approx((rows.estimate, rows.low, rows.high), abs=1e-12)
    assert named.low < named.high


def _miscalibrated(n, gap, seed):
    """Binary top-label confidences c ~ U(0.55, 1) whose accuracy is c - gap: the population's
    equal-width binned ECE is exactly ``gap`` (every bin's mean gap is ``gap``)."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.55, 1.0, size=n)
    y = np.where(rng.uniform(size=n) < conf - gap, 0, 1)
    return np.column_stack([conf, 1.0 - conf]), y


def _coverage(n, gap, method, seeds=100, level=0.9, n_bootstrap=100):
    hits = 0
    for seed in range(seeds):
        prob, y = _miscalibrated(n, gap, seed)
        ci = calibration_error_ci(y, prob, n_bootstrap=n_bootstrap, confidence_level=level, random_state=seed,
                                  method=method)
        if method != "percentile":
            assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= gap <= ci.high
    return hits / seeds


def test_ci_bias_corrected_covers_known_miscalibration():
    """Accuracy = confidence - 0.05 at n=2000 over 100 seeds: the 90% bias-corrected interval covers
    the true ECE 0.05 at about the nominal rate (0.87 when written; the bootstrap's own bias
    estimate is noisy, see docs/metrics.md), not far below or trivially always."""
    assert 0.7 <= _coverage(2000, 0.05, "auto") <= 0.98


def test_ci_bias_corrected_covers_where_the_percentile_interval_fails():
    """Accuracy = confidence - 0.03 at n=1000: the plug-in's bias is comparable to its spread, and the
    percentile interval, centred on the resamples' doubly biased values, misses the true ECE about
    half the time (0.48 when written; the bias-corrected interval 0.77)."""
    assert _coverage(1000, 0.03, "percentile", seeds=60) < 0.62
    assert _coverage(1000, 0.03, "bias_corrected", seeds=60) >= 0.65


def _well_calibrated(n=5000, k=10, seed=0):
    """Labels drawn from the probabilities themselves: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    prob = softmax_np(2.5 * rng.normal(size=(n, k)))
    y = (prob.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1)
    return prob, np.minimum(y, k - 1)


@pytest.mark.parametrize("metric", ["ece", "mce", "ace", "classwise_ece"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ci_estimate_inside_its_interval_on_calibrated_data(metric, seed):
    """The issue: "ECE 0.63 [0.63, 1.22], MCE 3.98 [5.00, 26.47]" - the percentile interval of a
    binned metric can exclude its own estimate. The bias-corrected one contains it, always."""
    prob, y = _well_calibrated(seed=seed)
    for level in (0.5, 0.9, 0.95):
        ci = calibration_error_ci(y, prob, metric=metric, n_bootstrap=100, confidence_level=level,
                                  random_state=seed)
        assert ci.method == "bias_corrected"
        assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0, (metric, level, ci)
        if metric == "ece":  # its bias is upward, so is the resamples': corrected downward
            assert ci.estimate <= ci.plugin + 1e-12


def test_ci_percentile_interval_can_exclude_its_estimate_which_motivated_the_change():
    prob, y = _well_calibrated(seed=0)
    pct = calibration_error_ci(y, prob, metric="classwise_ece", n_bootstrap=100, random_state=0, method="percentile")
    assert not pct.low <= pct.estimate <= pct.high  # every resample above the plug-in


def test_ci_bias_corrected_formula():
    prob, y = make_data(n=500, k=4, seed=9)
    pct = calibration_error_ci(y, prob, n_bootstrap=101, random_state=0, method="percentile",
                               confidence_level=0.8)
    bc = calibration_error_ci(y, prob, n_bootstrap=101, random_state=0, confidence_level=0.8)
    rng = np.random.RandomState(0)  # the same draws as random_state=0
    values = []
    for _ in range(101):
        s = rng.randint(0, 500, size=500)
        values.append(expected_calibration_error(y[s], prob[s], labels=np.arange(4)))
    lo, med, hi = np.quantile(values, [0.1, 0.5, 0.9])
    assert (pct.low, pct.high) == pytest.approx((lo, hi), abs=1e-12)
    bias = med - bc.plugin
    assert bc.estimate == pytest.approx(2 * bc.plugin - med, abs=1e-12)
    assert (bc.low, bc.high) == pytest.approx((max(lo - 2 * bias, 0.0), hi - 2 * bias), abs=1e-12)


def test_ci_method_validation():
    with pytest.raises(ValueError, match="method must be one of"):
        calibration_error_ci(Y3, P3, n_bootstrap=5, method="bca")
    with pytest.raises(ValueError, match="method must be one of"):
        calibration_error_ci(Y3, P3, n_bootstrap=5, method=None)
    assert calibration_error_ci(Y3, P3, metric="nll", n_bootstrap=5, random_state=0).method == "percentile"
    assert calibration_error_ci(Y3, P3, metric="nll", n_bootstrap=5, random_state=0,
                                method="bias_corrected").method == "bias_corrected"


def test_ci_unknown_metric_parameter_raises():
    with pytest.raises(TypeError):
        calibration_error_ci(Y3, P3, metric="nll", n_bins=5, n_bootstrap=5)


def test_ci_callable_with_string_labels_and_missing_class_in_resample():
    prob, y = make_data(n=60, k=4, seed=6)
    names = np.array(["w", "x", "y", "z"])
    ci = calibration_error_ci(names[y], prob, metric=log_loss, labels=names, n_bootstrap=50, random_state=0)
    assert ci.estimate == pytest.approx(log_loss(names[y], prob, labels=names), abs=1e-12)
    ci_b = calibration_error_ci(names[y], prob, metric="brier", labels=names, n_bootstrap=50, random_state=0)
    assert ci_b.estimate == pytest.approx(brier_score(y, prob), abs=1e-12)


def test_ci_torch_input():
    prob, y = make_data(n=200, k=3, seed=7, dtype=np.float32)
    a = calibration_error_ci(torch.from_numpy(y), torch.from_numpy(prob), n_bootstrap=50, random_state=0)
    b = calibration_error_ci(y, prob, n_bootstrap=50, random_state=0)
    assert a == b


# ---------------------------------------------------------------- hypothesis properties
@st.composite
def prob_and_labels(draw, min_n=1, max_n=60, max_k=6):
    k = draw(st.integers(2, max_k))
    n = draw(st.integers(min_n, max_n))
    raw = draw(
        hnp.arrays(
            np.float64,
            (n, k),
            elements=st.one_of(
                st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False),
                st.sampled_from([0.0, 1.0]),
            ),
        )
    )
    raw[raw.sum(axis=1) == 0] = 1.0
    prob = raw / raw.sum(axis=1, keepdims=True)
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    return prob, y


PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(data=prob_and_labels(), n_bins=st.integers(1, 30))
def test_property_bounds(data, n_bins):
    prob, y = data
    ece = expected_calibration_error(y, prob, n_bins=n_bins)
    ace = adaptive_calibration_error(y, prob, n_bins=n_bins)
    mce = maximum_calibration_error(y, prob, n_bins=n_bins)
    cw = classwise_calibration_error(y, prob, n_bins=n_bins)
    brier = brier_score(y, prob, scale_by_half=False)
    nll = negative_log_likelihood(y, prob)
    assert 0.0 <= ece <= 1.0
    assert 0.0 <= ace <= 1.0
    assert 0.0 <= mce <= 1.0
    assert mce >= ece - 1e-12
    assert 0.0 <= cw <= 1.0
    assert 0.0 <= brier <= 2.0 + 1e-12
    assert 0.0 <= brier_score(y, prob) <= 2.0 + 1e-12
    assert 0.0 <= nll <= -np.log(np.finfo(np.float64).eps) + 1e-9
    # finer bins cannot hide more than coarser ones: the 1-bin ECE is the smallest
    assert expected_calibration_error(y, prob, n_bins=1) <= ece + 1e-12


@PROPS
@given(data=prob_and_labels(), n_bins=st.integers(1, 20))
def test_property_reliability_identity(data, n_bins):
    prob, y = data
    n = len(y)
    for strategy, metric in [("uniform", expected_calibration_error), ("quantile", adaptive_calibration_error)]:
        c = reliability_curve(y, prob, n_bins=n_bins, strategy=strategy)
        assert c.counts.shape == (n_bins,) and c.counts.sum() == n
        full = c.counts > 0
        assert np.isnan(c.accuracy[~full]).all()
        v = np.sum(c.counts[full] * np.abs(c.accuracy[full] - c.mean_confidence[full])) / n
        assert v == pytest.approx(metric(y, prob, n_bins=n_bins), abs=1e-12)


@PROPS
@given(y=hnp.arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 4)), n_bins=st.integers(1, 30))
def test_property_confident_and_correct_is_perfect(y, n_bins):
    prob = onehot(y, 5)
    assert expected_calibration_error(y, prob, n_bins=n_bins) == 0.0
    assert adaptive_calibration_error(y, prob, n_bins=n_bins) == 0.0
    assert maximum_calibration_error(y, prob, n_bins=n_bins) == 0.0
    assert classwise_calibration_error(y, prob, n_bins=n_bins) == 0.0
    assert brier_score(y, prob) == 0.0
    assert negative_log_likelihood(y, prob) == 0.0


@PROPS
@given(y=hnp.arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 1)), n_bins=st.integers(1, 30))
def test_property_confident_and_always_wrong_is_worst(y, n_bins):
    prob = onehot(1 - y, 2)
    assert expected_calibration_error(y, prob, n_bins=n_bins) == 1.0
    assert maximum_calibration_error(y, prob, n_bins=n_bins) == 1.0
    assert brier_score(y, prob, scale_by_half=False) == 2.0
    # class-wise: each class's 0s sit in bin 0 and its 1s in the last bin, all wrong
    # (with a single bin they share it and partly cancel)
    if n_bins >= 2:
        assert classwise_calibration_error(y, prob, n_bins=n_bins) == 1.0
    else:
        share = np.mean(y == 0)
        assert classwise_calibration_error(y, prob, n_bins=1) == pytest.approx(abs(share - (1 - share)), abs=1e-12)


@PROPS
@given(data=prob_and_labels(min_n=2), n_bins=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_property_permutation_invariance(data, n_bins, seed):
    prob, y = data
    perm = np.random.default_rng(seed).permutation(len(y))
    for name in ("ece", "mce", "classwise_ece"):
        f = ALL_METRICS[name]
        assert f(y[perm], prob[perm], n_bins=n_bins) == pytest.approx(f(y, prob, n_bins=n_bins), abs=1e-12), name
    for name in ("brier", "nll"):
        f = ALL_METRICS[name]
        assert f(y[perm], prob[perm]) == pytest.approx(f(y, prob), abs=1e-12), name
    # ACE splits tied confidences by input order (documented), so only distinct ones are invariant
    conf = prob.max(axis=1)
    if len(np.unique(conf)) == len(conf):
        assert adaptive_calibration_error(y[perm], prob[perm], n_bins=n_bins) == pytest.approx(
            adaptive_calibration_error(y, prob, n_bins=n_bins), abs=1e-12
        )


@PROPS
@given(data=prob_and_labels(max_n=40, max_k=4), n_bins=st.integers(1, 12))
def test_property_classwise_equals_loop(data, n_bins):
    prob, y = data
    assert classwise_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(loop_classwise(y, prob, n_bins), abs=1e-12)


@PROPS
@given(data=prob_and_labels(max_n=40), n_bins=st.integers(1, 12))
def test_property_top_label_equals_loop(data, n_bins):
    prob, y = data
    ece, mce = loop_top_label(y, prob, n_bins)
    assert expected_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(mce, abs=1e-12)


@PROPS
@given(data=prob_and_labels(max_n=40))
def test_property_column_relabeling(data):
    """Permuting columns together with the labels leaves every metric unchanged."""
    prob, y = data
    k = prob.shape[1]
    perm = np.random.default_rng(k).permutation(k)
    inv = np.argsort(perm)
    # new column j holds old class perm[j]; a sample of old class c is new class inv[c]
    y_new, prob_new = inv[y], prob[:, perm]
    for name in ("classwise_ece", "brier", "nll"):
        f = ALL_METRICS[name]
        assert f(y_new, prob_new) == pytest.approx(f(y, prob), abs=1e-12), name
    # top-label metrics too, unless an argmax tie resolves to a different class after the shuffle
    if np.all(prob.argmax(axis=1) == perm[prob_new.argmax(axis=1)]):
        for name in ("ece", "ace", "mce"):
            f = ALL_METRICS[name]
            assert f(y_new, prob_new) == pytest.approx(f(y, prob), abs=1e-12), name


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("k", [2, 3, 16, 17, 63, 64, 200])
def test_top_label_takes_the_first_maximal_column_on_every_path(k, order):
    """Few columns go column by column, short rows to torch's max(dim=1), long ones to numpy's
    argmax: the same first-index tie rule, also when the label is a later maximal column."""
    from precal.metrics.calibration import _COLUMN_PASSES_MAX_CLASSES, _NUMPY_ARGMAX_MIN_CLASSES, _top_label

    rng = np.random.default_rng(k)
    counts = rng.integers(0, 3, size=(3000, k)).astype(np.float32)
    counts[:, 0] += 1.0  # no all-zero row
    prob = np.asarray(counts / counts.sum(axis=1, keepdims=True), order=order)  # many tied maxima
    y = rng.integers(0, k, size=3000)
    y[:500] = prob[:500].argmax(axis=1)
    is_max = prob == prob.max(axis=1, keepdims=True)
    y[500:1000] = k - 1 - np.argmax(is_max[500:1000, ::-1], axis=1)  # the last maximal column
    conf, correct = _top_label(y, prob)
    assert (k <= _COLUMN_PASSES_MAX_CLASSES, k >= _NUMPY_ARGMAX_MIN_CLASSES) == (k <= 16, k >= 64)
    assert_array_equal(conf, prob.max(axis=1).astype(np.float64))
    assert_array_equal(correct, (prob.argmax(axis=1) == y).astype(np.float64))
    assert correct[:500].all() and not correct[500:1000][is_max[500:1000].sum(axis=1) > 1].any()
    tied = (prob == prob.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert tied.sum() > 100  # the ties are exercised

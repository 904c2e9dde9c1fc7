"""Debiased (Kumar et al.) and smooth (Błasiok & Nakkiran) calibration-error estimators.

References: the authors' own packages (``uncertainty-calibration`` for the debiased L2
estimator, ``relplot`` for smooth ECE; each test skips when its package is absent), a
direct O(n x grid) evaluation of the reflected-Gaussian kernel, closed forms and hand cases.
"""

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from precal.metrics import (
    debiased_calibration_error,
    expected_calibration_error,
    smooth_calibration_error,
)


def _probs(n, k, seed, shift=2.0, scale=2.0):
    """Softmax probabilities of noisy logits whose true class gets a margin (mis-calibrated)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * rng.normal(size=(n, k))
    z[np.arange(n), y] += shift
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return y, p / p.sum(axis=1, keepdims=True)


def _calibrated_binary(n, seed):
    """A perfectly calibrated binary model: P(y = 1 | p) = p."""
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.0, 1.0, size=n)
    y = (rng.uniform(size=n) < p1).astype(int)
    return y, np.stack([1.0 - p1, p1], axis=1)


def _top_label(y, p):
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


# ---------------------------------------------------------------- debiased: references
@pytest.mark.parametrize("n, k, seed", [(500, 2, 0), (2000, 10, 1), (3000, 100, 2), (37, 3, 3)])
def test_debiased_equals_kumar_et_al_package(n, k, seed):
    calibration = pytest.importorskip("calibration", reason="uncertainty-calibration (Kumar et al.) not installed")
    if not hasattr(calibration, "get_calibration_error"):
        pytest.skip("the 'calibration' module found is not uncertainty-calibration")
    y, p = _probs(n, k, seed)
    ref = calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=15, mode="top-label")
    assert_allclose(debiased_calibration_error(y, p), ref, rtol=1e-12, atol=1e-15)
    ref10 = calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=10, mode="top-label")
    assert_allclose(debiased_calibration_error(y, p, n_bins=10), ref10, rtol=1e-12, atol=1e-15)


def _debiased_by_hand(conf, correct, bins):
    """The paper's formula, bin by bin, for an explicit list of index arrays."""
    n = len(conf)
    total = 0.0
    for members in bins:
        nb = len(members)
        if nb < 2:
            continue
        acc = correct[members].mean()
        total += nb / n * ((conf[members].mean() - acc) ** 2 - acc * (1 - acc) / (nb - 1))
    return total


def test_debiased_uniform_bins_equal_the_formula_bin_by_bin():
    y, p = _probs(800, 5, seed=4)
    conf, correct = _top_label(y, p)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 9)  # [e_b, e_{b+1}), last closed
    bins = [np.flatnonzero(which == b) for b in range(10)]
    expected = _debiased_by_hand(conf, correct, bins)
    got = debiased_calibration_error(y, p, n_bins=10, strategy="uniform", squared=True)
    assert_allclose(got, expected, rtol=1e-12)


def test_debiased_hand_case_can_be_negative_when_squared():
    # one bin: confidence 0.8 always, 3 of 4 right: gap^2 = 0.05^2, variance 0.75 * 0.25 / 3
    p = np.array([[0.8, 0.2]] * 4)
    y = np.array([0, 0, 0, 1])
    expected = 0.05**2 - 0.75 * 0.25 / 3
    assert_allclose(debiased_calibration_error(y, p, n_bins=1, squared=True), expected, rtol=1e-12)
    assert debiased_calibration_error(y, p, n_bins=1) == 0.0  # sqrt(max(., 0))


def test_debiased_single_sample_bins_count_zero():
    p = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert debiased_calibration_error([1, 1], p, n_bins=2, squared=True) == 0.0


def test_debiased_quantile_bins_keep_ties_together():
    # 10 identical confidences cannot be split by equal-mass bins, so one bin remains
    p = np.array([[0.7, 0.3]] * 10)
    y = np.array([0] * 6 + [1] * 4)
    one_bin = debiased_calibration_error(y, p, n_bins=1, squared=True)
    assert_allclose(debiased_calibration_error(y, p, n_bins=5, squared=True), one_bin, rtol=1e-12)
    assert_allclose(one_bin, 0.1**2 - 0.6 * 0.4 / 9, rtol=1e-12)


def test_debiased_is_unbiased_for_the_squared_error_of_one_bin():
    # all confidences 0.75, success rate 0.7: E[estimate] = 0.05^2 exactly; plug-in adds a*(1-a)/n
    rng = np.random.default_rng(7)
    n, reps = 40, 4000
    p = np.array([[0.75, 0.25]] * n)
    estimates, plug_in = np.empty(reps), np.empty(reps)
    for r in range(reps):
        y = (rng.uniform(size=n) >= 0.7).astype(int)  # class 0 (the top label) right w.p. 0.7
        estimates[r] = debiased_calibration_error(y, p, n_bins=1, squared=True)
        acc = np.mean(y == 0)
        plug_in[r] = (0.75 - acc) ** 2
    se = estimates.std() / math.sqrt(reps)
    assert abs(estimates.mean() - 0.05**2) < 4 * se
    assert plug_in.mean() - 0.05**2 > 10 * se  # the bias the correction removes (0.7 * 0.3 / 40)


def test_debiased_is_near_zero_for_a_calibrated_model_where_ece_is_not():
    y, p = _calibrated_binary(3000, seed=8)
    squared = [debiased_calibration_error(*_calibrated_binary(3000, seed=s), squared=True) for s in range(30)]
    assert abs(np.mean(squared)) < 3 * np.std(squared) / math.sqrt(30)
    assert expected_calibration_error(y, p) > 0.01


# ---------------------------------------------------------------- smooth ECE: references
def _smooth_ece_direct(conf, residual, sigma, n_grid=4001):
    """∫|Σ_i K(t, f_i) r_i| dt / n with the reflected Gaussian summed over images, no binning."""
    t = np.linspace(0.0, 1.0, n_grid)
    num = np.zeros(n_grid)
    den = np.zeros(n_grid)
    for m in range(-3, 4):
        for sign in (1.0, -1.0):
            d = t[:, None] - (sign * conf[None, :] + 2.0 * m)
            kern = np.exp(-0.5 * (d / sigma) ** 2)
            num += kern @ residual
            den += kern.sum(axis=1)
    trap = np.full(n_grid, 1.0)
    trap[[0, -1]] = 0.5
    return float(np.abs(num) @ trap / (den @ trap))


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2, 0.8])
def test_smooth_ece_equals_the_direct_kernel_sum(sigma):
    y, p = _probs(1500, 4, seed=5, shift=1.5)
    conf, correct = _top_label(y, p)
    expected = _smooth_ece_direct(conf, conf - correct, sigma)
    assert_allclose(smooth_calibration_error(y, p, bandwidth=sigma), expected, rtol=2e-4)


def test_smooth_ece_equals_the_direct_kernel_sum_for_confidences_crowded_at_one():
    # the end point of the grid is its own mirror image: mass there must count twice
    rng = np.random.default_rng(13)
    p1 = 1.0 - 10.0 ** rng.uniform(-8, -2, size=1000)
    p1[:100] = 1.0
    p = np.stack([p1, 1.0 - p1], axis=1)
    y = (rng.uniform(size=1000) > 0.97).astype(int)  # class 0 right 97% of the time
    conf, correct = _top_label(y, p)
    for sigma in (0.01, 0.05):
        expected = _smooth_ece_direct(conf, conf - correct, sigma)
        assert_allclose(smooth_calibration_error(y, p, bandwidth=sigma), expected, rtol=1e-4)


@pytest.mark.parametrize("n, k, seed, shift", [(3000, 10, 0, 3.0), (1000, 2, 1, 1.0), (5000, 100, 2, 3.0),
                                               (800, 5, 3, 0.5)])
def test_smooth_ece_agrees_with_relplot_away_from_the_ends(n, k, seed, shift):
    relplot = pytest.importorskip("relplot")
    y, p = _probs(n, k, seed, shift=shift)
    # relplot's grid counts mass on its end points once (see the docstring): stay off them
    p = 0.97 * p + 0.03 / k
    conf, correct = _top_label(y, p)
    ref, ref_sigma = relplot.smECE(conf, correct, return_width=True)
    got, sigma = smooth_calibration_error(y, p, return_bandwidth=True)
    # relplot bisects the fixed point to 2**-10 and evaluates on a coarser grid
    assert abs(sigma - ref_sigma) <= 2.0**-10 + 2e-3
    assert abs(got - ref) <= 2e-3
    for s in (0.02, 0.1):
        assert_allclose(smooth_calibration_error(y, p, bandwidth=s), relplot.smECE_sigma(conf, correct, s),
                        rtol=0.02)


def test_smooth_ece_bandwidth_is_the_fixed_point():
    y, p = _probs(2000, 10, seed=6)
    value, sigma = smooth_calibration_error(y, p, return_bandwidth=True)
    assert 1e-3 < sigma < 1
    assert_allclose(value, sigma, atol=1e-6)
    assert_allclose(smooth_calibration_error(y, p, bandwidth=sigma), value, rtol=1e-12)


def test_smooth_ece_of_residuals_of_one_sign_is_their_mean():
    # every prediction wrong: residual = confidence >= 0 everywhere, so smECE_σ = mean(conf) for any σ,
    # and the fixed point is that mean
    rng = np.random.default_rng(9)
    p1 = rng.uniform(0.5, 1.0, size=400)
    p = np.stack([p1, 1.0 - p1], axis=1)  # class 0 predicted, label 1: all wrong
    y = np.ones(400, dtype=int)
    for sigma in (0.01, 0.3, 1.0):
        assert_allclose(smooth_calibration_error(y, p, bandwidth=sigma), p1.mean(), rtol=1e-10)
    value, bandwidth = smooth_calibration_error(y, p, return_bandwidth=True)
    assert_allclose([value, bandwidth], [p1.mean(), p1.mean()], rtol=1e-6)


def test_smooth_ece_of_certain_and_right_predictions_is_zero_at_the_bandwidth_floor():
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] * 50)
    y = np.array([0, 1] * 50)
    value, sigma = smooth_calibration_error(y, p, return_bandwidth=True)
    assert value == 0.0 and sigma == 1e-3


def test_smooth_ece_of_a_calibrated_model_shrinks_with_the_sample_size():
    small = [smooth_calibration_error(*_calibrated_binary(300, seed=s)) for s in range(3)]
    large = [smooth_calibration_error(*_calibrated_binary(20000, seed=s)) for s in range(3)]
    assert max(large) < min(small)
    assert max(large) < 0.01


# ---------------------------------------------------------------- both: inputs
@pytest.mark.parametrize("metric", [debiased_calibration_error, smooth_calibration_error])
def test_row_order_torch_memmap_and_labels_do_not_matter(metric, tmp_path):
    y, p = _probs(600, 3, seed=11)
    ref = metric(y, p)
    perm = np.random.default_rng(0).permutation(len(y))
    assert_allclose(metric(y[perm], p[perm]), ref, rtol=1e-12)
    assert_allclose(metric(torch.from_numpy(y), torch.from_numpy(p)), ref, rtol=1e-12)
    np.save(tmp_path / "p.npy", p)
    assert_allclose(metric(y, np.load(tmp_path / "p.npy", mmap_mode="r")), ref, rtol=1e-12)
    names = np.array(["a", "b", "c"])
    assert_allclose(metric(names[y], p, labels=names), ref, rtol=1e-12)
    assert isinstance(ref, float)


@pytest.mark.parametrize("metric", [debiased_calibration_error, smooth_calibration_error])
def test_binary_positive_class_probabilities_are_top_label(metric):
    y, p = _probs(500, 2, seed=12)
    assert_allclose(metric(y, p[:, 1]), metric(y, p), rtol=1e-12)


@pytest.mark.parametrize("metric", [debiased_calibration_error, smooth_calibration_error])
@pytest.mark.parametrize("bad, match", [
    (np.array([[0.5, np.nan]] * 4), "NaN"),
    (np.array([[2.0, -1.0]] * 4), "logits"),
    (np.array([[0.5, 0.6]] * 4), "sum to 1"),
    (np.empty((0, 2)), "0 sample"),
])
def test_bad_probabilities_are_refused(metric, bad, match):
    with pytest.raises(ValueError, match=match):
        metric(np.zeros(len(bad), dtype=int), bad)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_bins": 0}, ValueError, "n_bins"),
    ({"n_bins": 2.5}, TypeError, "n_bins"),
    ({"strategy": "equal"}, ValueError, "strategy"),
    ({"squared": "yes"}, TypeError, "squared"),
])
def test_debiased_bad_parameters(kwargs, error, match):
    y, p = _probs(50, 2, seed=0)
    with pytest.raises(error, match=match):
        debiased_calibration_error(y, p, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bandwidth": 0.0}, ValueError, "bandwidth"),
    ({"bandwidth": 1.5}, ValueError, "bandwidth"),
    ({"bandwidth": "silverman"}, ValueError, "bandwidth"),
    ({"bandwidth": True}, ValueError, "bandwidth"),
    ({"bandwidth": float("nan")}, ValueError, "bandwidth"),
    ({"bandwidth": 1e-9}, ValueError, "at least 1e-05"),  # 2e10 grid points: a MemoryError before
    ({"return_bandwidth": 1}, TypeError, "return_bandwidth"),
])
def test_smooth_bad_parameters(kwargs, error, match):
    y, p = _probs(50, 2, seed=0)
    with pytest.raises(error, match=match):
        smooth_calibration_error(y, p, **kwargs)


def test_the_smallest_fixed_bandwidth_works():
    y, p = _probs(200, 3, seed=2)
    assert 0.0 <= smooth_calibration_error(y, p, bandwidth=1e-5) <= 1.0


def test_mismatched_lengths_are_refused():
    y, p = _probs(50, 2, seed=0)
    for metric in (debiased_calibration_error, smooth_calibration_error):
        with pytest.raises(ValueError, match="Inconsistent"):
            metric(y[:-1], p)

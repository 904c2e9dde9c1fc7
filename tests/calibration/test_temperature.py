"""TemperatureScaling: references (scikit-learn, netcal, closed form), invariants, numerics."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from precal import TemperatureScaling
from precal._numerics import log_softmax, softmax
from precal.calibration.temperature import fit_temperature, temperature_nll_derivatives

from ..conftest import make_logits


class _Passthrough(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose decision function is its input: lets sklearn calibrate raw logits."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, X):
        X = np.asarray(X)
        return X[:, 1] - X[:, 0] if X.shape[1] == 2 else X  # sklearn's binary convention

    def predict(self, X):
        return self.classes_[np.asarray(X).argmax(axis=1)]


def _sklearn_temperature(z, y):
    est = _Passthrough().fit(z, y)
    cal = CalibratedClassifierCV(FrozenEstimator(est), method="temperature").fit(z, y)
    return 1.0 / float(cal.calibrated_classifiers_[0].calibrators[0].beta_)


def _nll(z, y, temperature):
    return -np.mean(log_softmax(z / temperature)[np.arange(len(y)), y])


@pytest.mark.parametrize("seed, k, scale", [(0, 3, 3.0), (1, 10, 0.5), (2, 5, 6.0), (3, 2, 2.0)])
def test_temperature_matches_sklearn(seed, k, scale):
    z, y = make_logits(n=2000, k=k, scale=scale, seed=seed)
    ours = TemperatureScaling().fit(z, y).temperature_
    ref = _sklearn_temperature(z, y)
    if k == 2:
        # sklearn turns a binary decision value d into the logits [-d, d] (ours: [0, d] from
        # the two columns' difference), so its T is twice ours for the same probabilities.
        ref /= 2.0
    assert_allclose(ours, ref, rtol=1e-4)


@pytest.mark.parametrize("seed, k, scale", [(0, 3, 3.0), (1, 10, 0.5), (2, 5, 2.0)])
def test_temperature_matches_netcal_on_float64_probabilities(seed, k, scale):
    netcal_scaling = pytest.importorskip("netcal.scaling")
    z, y = make_logits(n=2000, k=k, scale=scale, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = netcal_scaling.TemperatureScaling()
        ref.fit(softmax(z), y)
    # netcal's ``temperature`` property holds the multiplier of the logits, i.e. 1/T.
    netcal_t = 1.0 / float(np.ravel(ref.temperature)[0])
    assert_allclose(TemperatureScaling().fit(z, y).temperature_, netcal_t, rtol=1e-4)


def test_unregularised_logistic_regression_on_its_training_data_has_temperature_one():
    # At the MLE of a multinomial logistic regression the gradient of the NLL along the
    # direction that scales all coefficients is zero, so the optimal temperature is 1.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 5))
    y = (X @ rng.normal(size=(5, 3))).argmax(axis=1) ^ (rng.random(800) < 0.2)
    y = y % 3
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    ts = TemperatureScaling(tol=1e-10).fit(lr.decision_function(X), y)
    assert_allclose(ts.temperature_, 1.0, rtol=1e-6)


def test_fitted_temperature_minimises_nll(logits_y):
    z, y = logits_y
    t = TemperatureScaling().fit(z, y).temperature_
    best = _nll(z, y, t)
    for factor in (0.99, 1.01, 0.9, 1.1):
        assert best <= _nll(z, y, t * factor)


def test_derivatives_match_finite_differences(logits_y):
    z, y = logits_y
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    beta, h = 0.6, 1e-5
    f, g, hess = temperature_nll_derivatives(zt, yt, beta)
    fp, gp, _ = temperature_nll_derivatives(zt, yt, beta + h)
    fm, gm, _ = temperature_nll_derivatives(zt, yt, beta - h)
    assert_allclose(f, _nll(z, y, 1 / beta), rtol=1e-12)
    assert_allclose(g, (fp - fm) / (2 * h), rtol=1e-6)
    assert_allclose(hess, (gp - gm) / (2 * h), rtol=1e-6)


def test_newton_converges_in_few_passes(logits_y):
    z, y = logits_y
    result = fit_temperature(z, y)
    assert result.converged
    assert result.n_iter <= 10


def _float64_minimiser(z, y, w=None):
    """The minimiser of the mean NLL of the given values, in float64: the root of its derivative
    in ``beta = 1/T``, ``mean_i w_i (E_softmax(beta z_i)[z_i] - z_{i,y_i})`` (numpy, scipy's brentq)."""
    from scipy.optimize import brentq

    z = np.asarray(z, dtype=np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)

    def slope(log_beta):
        p = softmax(z * np.exp(log_beta))
        return np.average((p * z).sum(axis=1) - z[np.arange(len(y)), y], weights=w)

    return float(np.exp(-brentq(slope, -10.0, 10.0, xtol=1e-14, rtol=1e-15)))


@pytest.mark.parametrize("case", [
    dict(k=10, scale=5.0, margin=3.0),    # over-confident, T > 1
    dict(k=3, scale=1.0, margin=3.0),     # under-confident, T < 1
    dict(k=100, scale=12.0, margin=0.1),  # nearly uninformative: T ~ 100
    dict(k=2, scale=0.3, margin=4.0),     # binary, strongly under-confident
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_temperature_is_the_float64_minimiser_in_few_passes(case, dtype):
    rng = np.random.default_rng(7)
    n, k = 3000, case["k"]
    y = rng.integers(0, k, size=n)
    z = (case["scale"] * (case["margin"] * np.eye(k)[y] + rng.normal(size=(n, k)))).astype(dtype)
    fit = fit_temperature(z, y)
    assert fit.converged and fit.n_iter <= 6
    # the default tol=1e-4 leaves an error of order tol**2; float32 row sums a rounding floor near 1e-7
    ref = _float64_minimiser(z, y)
    assert_allclose(fit.temperature, ref, rtol=3e-7)
    if dtype == np.float64:
        assert_allclose(fit_temperature(z, y, tol=1e-10).temperature, ref, rtol=1e-10)


def test_weighted_temperature_is_the_weighted_float64_minimiser():
    z, y = make_logits(n=2000, k=6, seed=5)
    w = np.random.default_rng(1).uniform(0.0, 3.0, size=len(y))
    assert_allclose(fit_temperature(z, y, w, tol=1e-10).temperature, _float64_minimiser(z, y, w), rtol=1e-10)


def test_logits_no_better_than_chance_get_a_large_temperature():
    # labels independent of the logits: the start from beta = 0 sees f'(0) >= 0 on average
    z, _ = make_logits(n=1000, k=4, seed=2)
    y = np.random.default_rng(0).integers(0, 4, size=1000)
    fit = fit_temperature(z, y)
    assert fit.converged and fit.temperature > 5.0
    assert_allclose(fit.temperature, _float64_minimiser(z, y), rtol=1e-6)


def test_anti_correlated_logits_end_on_the_bound():
    # the true class is always the least likely: the NLL falls all the way to T = e^10
    z, _ = make_logits(n=1000, k=4, seed=2)
    fit = fit_temperature(z, np.argmin(z, axis=1))
    assert fit.converged and fit.n_iter <= 30
    assert_allclose(fit.temperature, np.exp(10.0), rtol=1e-3)


def test_class_major_and_row_major_blocks_agree(monkeypatch):
    from precal.calibration import _blocks

    z, y = make_logits(n=3000, k=12, seed=9, dtype=np.float32)
    class_major = fit_temperature(z, y).temperature  # 12 classes: kept class-major
    monkeypatch.setattr(_blocks, "CLASS_MAJOR_MAX_K", 0)
    row_major = fit_temperature(z, y).temperature
    assert_allclose(class_major, row_major, rtol=3e-7)


def test_warm_start_on_large_input_gives_same_temperature():
    z, y = make_logits(n=20_000, k=5, seed=4)
    big = fit_temperature(z, y, tol=1e-10)  # > 16 384 rows: starts from a subsample fit
    assert big.converged
    ref = fit_temperature(z[:16_000], y[:16_000], tol=1e-10)
    # Different data -> different T; but the warm-started fit must be the exact minimiser:
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    _, g, _ = temperature_nll_derivatives(zt, yt, 1 / big.temperature)
    assert abs(g) < 1e-8
    assert ref.converged


def test_argmax_and_accuracy_unchanged(logits_y):
    z, y = logits_y
    ts = TemperatureScaling().fit(z, y)
    assert_array_equal(ts.predict_proba(z).argmax(axis=1), z.argmax(axis=1))
    assert_array_equal(ts.predict(z), ts.classes_[z.argmax(axis=1)])


def test_overconfident_logits_get_temperature_above_one(logits_y):
    z, y = logits_y
    assert TemperatureScaling().fit(z, y).temperature_ > 1.0
    assert TemperatureScaling().fit(z / 10.0, y).temperature_ < 1.0


def test_decision_function_is_logits_over_temperature(logits_y):
    z, y = logits_y
    ts = TemperatureScaling().fit(z, y)
    assert_allclose(ts.decision_function(z), z / ts.temperature_)
    assert_allclose(ts.predict_proba(z), softmax(z / ts.temperature_))


def test_score_is_mean_log_likelihood_and_not_worse_than_uncalibrated(logits_y):
    z, y = logits_y
    ts = TemperatureScaling().fit(z, y)
    assert_allclose(ts.score(z, y), -_nll(z, y, ts.temperature_))
    assert ts.score(z, y) >= -_nll(z, y, 1.0)


def test_sample_weight_equals_repeating_rows(logits_y):
    z, y = logits_y
    w = np.random.default_rng(0).integers(0, 4, size=len(y))
    weighted = TemperatureScaling(tol=1e-10).fit(z, y, sample_weight=w).temperature_
    repeated = TemperatureScaling(tol=1e-10).fit(np.repeat(z, w, axis=0), np.repeat(y, w)).temperature_
    assert_allclose(weighted, repeated, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_inputs_of_any_float_dtype(logits_y, dtype):
    z, y = logits_y
    zt = torch.from_numpy(z).to(dtype)
    ts = TemperatureScaling().fit(zt, torch.from_numpy(y))
    ref = TemperatureScaling().fit(zt.double().numpy(), y)  # the same (rounded) values in float64
    assert_allclose(ts.temperature_, ref.temperature_, rtol=1e-5)
    proba = ts.predict_proba(zt)
    assert proba.dtype == np.float64
    assert_allclose(proba.sum(axis=1), 1.0)


def test_float16_numpy_input_is_upcast(logits_y):
    z, y = logits_y
    ts = TemperatureScaling().fit(z.astype(np.float16), y)
    assert_allclose(ts.temperature_, TemperatureScaling().fit(z.astype(np.float16).astype(np.float64), y).temperature_,
                    rtol=1e-5)


@pytest.mark.parametrize("magnitude", [1e3, 1e4])
def test_huge_logits_do_not_overflow(logits_y, magnitude):
    z, y = logits_y
    big = z / np.abs(z).max() * magnitude
    ts = TemperatureScaling().fit(big, y)
    assert np.isfinite(ts.temperature_) and ts.temperature_ > 0
    for out in (ts.predict_proba(big), ts.decision_function(big)):
        assert np.isfinite(out).all()
    assert np.isfinite(ts.score(big, y))
    # scaling logits by c scales the temperature by c
    small = TemperatureScaling().fit(big / magnitude, y)
    assert_allclose(ts.temperature_, small.temperature_ * magnitude, rtol=1e-5)


def test_float32_and_float64_agree(logits_y):
    z, y = logits_y
    t32 = TemperatureScaling().fit(z.astype(np.float32), y).temperature_
    t64 = TemperatureScaling().fit(z.astype(np.float32).astype(np.float64), y).temperature_
    assert_allclose(t32, t64, rtol=1e-6)


def test_non_convergence_warns_and_keeps_a_finite_temperature(logits_y):
    z, y = logits_y
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        ts = TemperatureScaling(max_iter=1).fit(z, y)
    assert np.isfinite(ts.temperature_) and ts.temperature_ > 0


def test_a_temperature_on_its_bound_warns_which_way_the_nll_still_falls(logits_y):
    z, y = logits_y
    with pytest.warns(ConvergenceWarning, match=r"bound T=22026.*falls as T grows"):
        assert TemperatureScaling().fit(z * 1e6, y).temperature_ == pytest.approx(math.exp(10.0))
    with pytest.warns(ConvergenceWarning, match=r"bound T=4.53999e-05.*falls as T shrinks"):
        assert TemperatureScaling().fit(z * 1e-6, y).temperature_ == pytest.approx(math.exp(-10.0))
    t_star = TemperatureScaling().fit(z, y).temperature_
    for target in (1.1 * math.exp(10.0), math.exp(-10.0) / 1.1):  # optima just past the bounds: the fit
        with pytest.warns(ConvergenceWarning, match="stopped at its bound"):  # stops a little short of them
            TemperatureScaling().fit(z * (target / t_star), y)  # logits times c: optimum c T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemperatureScaling().fit(z, y)  # an interior optimum: no warning


def test_separable_calibration_data_warn_that_no_optimum_exists_not_to_raise_max_iter():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    z = rng.normal(size=(100, 3))
    z[np.arange(100), y] = z.max(axis=1) + 3.0  # every sample right, with a margin
    with pytest.warns(ConvergenceWarning, match="every calibration sample .* is classified right") as record:
        ts = TemperatureScaling().fit(z, y)
    assert not any("increase max_iter" in str(w.message) for w in record)
    assert 0 < ts.temperature_ < 1  # sharpened towards the separating direction, finite
    w = np.ones(100)
    z[0, (y[0] + 1) % 3] = z[0, y[0]] + 1.0  # one sample wrong ...
    w[0] = 0.0  # ... with no weight: still separable where it counts
    with pytest.warns(ConvergenceWarning, match="is classified right"):
        TemperatureScaling().fit(z, y, sample_weight=w)


def test_to_torch_module_follows_input_dtype(logits_y):
    z, y = logits_y
    module = TemperatureScaling().fit(z, y).to_torch()
    zt = torch.from_numpy(z).half()
    assert module(zt).dtype == torch.float16


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(-50, 50), seed=st.integers(0, 10_000))
def test_shift_invariance(shift, seed):
    z, y = make_logits(n=200, k=3, seed=seed)
    a = TemperatureScaling().fit(z, y)
    b = TemperatureScaling().fit(z + shift, y)
    assert_allclose(a.temperature_, b.temperature_, rtol=1e-6)
    assert_allclose(a.predict_proba(z), b.predict_proba(z + shift), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(temperature=st.floats(0.2, 5.0), seed=st.integers(0, 10_000))
def test_entropy_of_predictions_grows_with_temperature(temperature, seed):
    z, y = make_logits(n=100, k=4, seed=seed)
    ts = TemperatureScaling().fit(z, y)
    def mean_entropy(t):
        ts.temperature_ = t
        p = ts.predict_proba(z)
        return -np.mean(np.sum(p * np.log(np.clip(p, 1e-300, None)), axis=1))
    assert mean_entropy(temperature * 1.5) >= mean_entropy(temperature) - 1e-12

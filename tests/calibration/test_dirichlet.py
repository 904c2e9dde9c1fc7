"""DirichletCalibrator: a reference fit, nesting of the maps, ODIR, numerics, persistence."""

import json
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from precal import TemperatureScaling
from precal import _threads as precal_threads
from precal._numerics import log_softmax, softmax
from precal.calibration import BaseLogitCalibrator
from precal.calibration import dirichlet as dirichlet_module
from precal.calibration.dirichlet import (
    AUTO_FULL_MAX_CLASSES,
    DirichletCalibrator,
    dirichlet_objective,
    fit_dirichlet,
    odir_penalty,
)

from ..conftest import make_logits, spy_map_blocks


def _miscalibrated(n=800, k=4, seed=0):
    """Over-confident logits with class-wise scales and biases: full, diagonal and TS differ."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = 3.0 * (1.5 * np.eye(k)[y] + rng.normal(size=(n, k)))
    z = z * rng.uniform(0.5, 2.0, size=k) + rng.normal(scale=1.5, size=k)
    return z, y


def _nll(cal, z, y):
    return -cal.score(z, y)


def _matrix(coef):
    """W as a K x K matrix, from a full or a diagonal (1-D) ``coef``."""
    return np.diag(coef) if coef.ndim == 1 else coef


def _reference_vector_scaling_on_log_probs(z, y):
    """A plain numpy/scipy fit of softmax(w * log p + b), unregularised: returns (w, b, NLL)."""
    lp = log_softmax(z)
    n, k = lp.shape
    onehot = np.eye(k)[y]

    def fun(theta):
        w, b = theta[:k], theta[k:]
        a = lp * w + b
        lse = logsumexp(a, axis=1)
        r = np.exp(a - lse[:, None]) - onehot
        f = np.mean(lse - a[np.arange(n), y])
        return f, np.concatenate([(r * lp).mean(axis=0), r.mean(axis=0)])

    res = minimize(fun, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="BFGS",
                   options={"gtol": 1e-10, "maxiter": 10_000})
    return res.x[:k], res.x[k:], res.fun


# ------------------------------------------------------------------ references and nesting
def test_diagonal_unregularised_matches_a_reference_vector_scaling_on_log_probabilities():
    z, y = _miscalibrated()
    w_ref, b_ref, nll_ref = _reference_vector_scaling_on_log_probs(z, y)
    cal = DirichletCalibrator(map="diagonal", reg_lambda=0.0).fit(z, y)
    assert cal.coef_.shape == (4,)
    assert abs(_nll(cal, z, y) - nll_ref) <= 1e-6
    assert_allclose(cal.coef_, w_ref, atol=1e-3)
    assert_allclose(cal.intercept_, b_ref - b_ref.mean(), atol=1e-3)  # b is defined up to a constant
    ref_proba = softmax(log_softmax(z) * w_ref + b_ref)
    assert_allclose(cal.predict_proba(z), ref_proba, atol=1e-4)


def test_temperature_scaling_is_the_diagonal_map_w_equal_one_over_t():
    z, y = _miscalibrated()
    t = TemperatureScaling().fit(z, y).temperature_
    # log_softmax(z) and z differ by a per-row constant, which the softmax ignores
    assert_allclose(softmax(log_softmax(z) / t), softmax(z / t), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unregularised_nll_is_nested_full_le_diagonal_le_temperature_scaling(seed):
    z, y = _miscalibrated(seed=seed)
    full = DirichletCalibrator(map="full", reg_lambda=0.0).fit(z, y)
    diag = DirichletCalibrator(map="diagonal", reg_lambda=0.0).fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    assert _nll(full, z, y) <= _nll(diag, z, y) + 1e-9
    assert _nll(diag, z, y) <= _nll(ts, z, y) + 1e-9
    assert _nll(full, z, y) < _nll(ts, z, y) - 1e-3  # class-wise miscalibration: a real gain


@pytest.mark.parametrize("map_", ["full", "diagonal"])
@pytest.mark.parametrize("reg", [1e-3, 1.0, 100.0])
def test_regularised_nll_is_never_above_temperature_scaling(map_, reg):
    # the fit starts from temperature scaling, where ODIR is zero
    z, y = _miscalibrated(seed=3)
    cal = DirichletCalibrator(map=map_, reg_lambda=reg).fit(z, y)
    assert _nll(cal, z, y) <= _nll(TemperatureScaling().fit(z, y), z, y) + 1e-9


def test_identity_map_on_already_calibrated_logits():
    rng = np.random.default_rng(0)
    n, k = 20_000, 3
    z = rng.normal(scale=2.0, size=(n, k))
    y = (rng.random(n)[:, None] > np.cumsum(softmax(z), axis=1)).sum(axis=1)  # y ~ softmax(z)
    cal = DirichletCalibrator(map="full").fit(z, y)
    # sampling error only: W and b move together (b absorbs W's error times the mean log p)
    assert_allclose(cal.coef_, np.eye(k), atol=0.05)
    assert_allclose(cal.intercept_, 0.0, atol=0.1)
    assert np.abs(cal.predict_proba(z) - softmax(z)).mean() < 0.01


def test_fitted_map_is_the_optimum_of_the_papers_objective_in_its_smallest_odir_form():
    z, y = _miscalibrated(seed=4)
    lam, mu = 0.05, 0.02
    cal = DirichletCalibrator(map="full", reg_lambda=lam, reg_mu=mu, reg_diag=0.0).fit(z, y)
    _, g_w, g_b = dirichlet_objective(log_softmax(z), y, cal.coef_, cal.intercept_, reg_lambda=lam, reg_mu=mu)
    # Newton ends at the floating-point floor (the default tol), not at an optimiser tolerance
    assert np.abs(g_w).max() < 1e-12 and np.abs(g_b).max() < 1e-12
    off = cal.coef_ - np.diag(np.diag(cal.coef_))
    assert_allclose(off.sum(axis=0), 0.0, atol=1e-9)  # W + 1 v^T is the same map; this v is ODIR's
    assert abs(cal.intercept_.mean()) < 1e-9


# ------------------------------------------------------------------ the objective
def test_diagonal_spread_penalty_formula():
    w = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0], [0.0, 2.0, 1.0]])
    b = np.zeros(3)
    value, g_w, _ = odir_penalty(w, b, reg_lambda=0.0, reg_mu=0.0, reg_diag=0.9)
    d = np.array([2.0, 3.0, 1.0])
    assert value == pytest.approx(0.9 / 3 * np.sum((d - 2.0) ** 2))
    assert_allclose(np.diag(g_w), 2 * 0.9 / 3 * (d - 2.0))
    assert_allclose(g_w - np.diag(np.diag(g_w)), 0.0)
    value_d, g_d, _ = odir_penalty(d, b, reg_lambda=5.0, reg_mu=0.0, reg_diag=0.9)  # diagonal map
    assert value_d == pytest.approx(value)
    assert_allclose(g_d, np.diag(g_w))


def test_odir_penalty_formula():
    w = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0], [0.0, 2.0, 1.0]])
    b = np.array([1.0, -2.0, 0.5])
    value, g_w, g_b = odir_penalty(w, b, reg_lambda=0.6, reg_mu=0.3)
    off = 1.0 + 1.0 + 0.25 + 0.0 + 0.0 + 4.0
    assert value == pytest.approx(0.6 / 6 * off + 0.3 / 3 * (1 + 4 + 0.25))
    assert_allclose(np.diag(g_w), 0.0)
    assert g_w[0, 1] == pytest.approx(2 * 0.6 / 6 * 1.0)
    assert_allclose(g_b, 2 * 0.3 / 3 * b)
    value_d, g_wd, _ = odir_penalty(np.array([1.0, 2.0, 3.0]), b, reg_lambda=0.6, reg_mu=0.3)
    assert value_d == pytest.approx(0.3 / 3 * (1 + 4 + 0.25)) and not g_wd.any()


@pytest.mark.parametrize("diagonal", [False, True])
def test_gradient_matches_finite_differences(diagonal):
    rng = np.random.default_rng(0)
    n, k = 40, 4
    lp = log_softmax(rng.normal(scale=3.0, size=(n, k)))
    y = rng.integers(0, k, size=n)
    sw = rng.uniform(0.1, 2.0, size=n)
    w = rng.normal(size=k) if diagonal else np.eye(k) + 0.3 * rng.normal(size=(k, k))
    b = rng.normal(size=k)
    kw = {"reg_lambda": 0.7, "reg_mu": 0.4}
    _, g_w, g_b = dirichlet_objective(lp, y, w, b, sw, **kw)
    h = 1e-6
    for arr, grad in ((w, g_w), (b, g_b)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            f_plus = dirichlet_objective(lp, y, w, b, sw, **kw)[0]
            arr[idx] = old - h
            f_minus = dirichlet_objective(lp, y, w, b, sw, **kw)[0]
            arr[idx] = old
            numeric[idx] = (f_plus - f_minus) / (2 * h)
        assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_objective_is_the_weighted_mean_nll_plus_odir():
    z, y = make_logits(n=50, k=3)
    lp = log_softmax(z)
    w, b = np.eye(3) * 0.5 + 0.1, np.array([0.2, -0.1, 0.3])
    sw = np.arange(1.0, 51.0)
    a = lp @ w.T + b
    nll = logsumexp(a, axis=1) - a[np.arange(50), y]
    f, _, _ = dirichlet_objective(lp, y, w, b, sw, reg_lambda=0.3, reg_mu=0.2)
    assert f == pytest.approx(np.average(nll, weights=sw) + odir_penalty(w, b, 0.3, 0.2)[0], rel=1e-12)


# ------------------------------------------------------------------ behaviour of the estimator
@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_rows_sum_to_one_and_outputs_agree(map_):
    z, y = _miscalibrated(k=5)
    cal = DirichletCalibrator(map=map_).fit(z, y)
    p = cal.predict_proba(z)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert_allclose(cal.decision_function(z), log_softmax(z) @ _matrix(cal.coef_).T + cal.intercept_)
    with torch.no_grad():
        out = cal.to_torch()(torch.from_numpy(z))  # float64 in, float64 out
    assert out.dtype == torch.float64
    assert_allclose(torch.softmax(out, -1).numpy(), p, atol=1e-6)


def test_fit_is_deterministic():
    z, y = _miscalibrated()
    a, b = DirichletCalibrator().fit(z, y), DirichletCalibrator().fit(z, y)
    assert_array_equal(a.coef_, b.coef_)
    assert_array_equal(a.intercept_, b.intercept_)


def test_odir_shrinks_off_diagonal_entries_as_reg_lambda_grows():
    z, y = _miscalibrated(seed=5)

    def off_diagonal_energy(lam):
        coef = DirichletCalibrator(map="full", reg_lambda=lam, reg_mu=0.0).fit(z, y).coef_
        return np.sum((coef - np.diag(np.diag(coef))) ** 2)

    energies = [off_diagonal_energy(lam) for lam in (0.0, 0.1, 10.0, 1e3, 1e5)]
    assert all(a >= b for a, b in zip(energies, energies[1:])), energies
    assert energies[0] > 1e-3 and energies[-1] < 1e-4 * energies[0]


def test_reg_mu_none_uses_reg_lambda():
    z, y = _miscalibrated()
    tied = DirichletCalibrator(reg_lambda=0.5).fit(z, y)
    explicit = DirichletCalibrator(reg_lambda=0.5, reg_mu=0.5).fit(z, y)
    assert_array_equal(tied.intercept_, explicit.intercept_)
    assert np.abs(DirichletCalibrator(reg_lambda=0.5, reg_mu=100.0).fit(z, y).intercept_).max() < np.abs(
        tied.intercept_).max()


@pytest.mark.parametrize("k, expected", [(3, "full"), (10, "full"), (AUTO_FULL_MAX_CLASSES, "full"),
                                         (AUTO_FULL_MAX_CLASSES + 1, "diagonal"), (100, "diagonal")])
def test_auto_map_is_full_for_few_classes_and_diagonal_for_many(k, expected):
    z, y = make_logits(n=300, k=k, seed=1)
    cal = DirichletCalibrator().fit(z, y)
    assert cal.map_ == expected
    assert cal.coef_.shape == ((k, k) if expected == "full" else (k,))


@pytest.mark.parametrize("params, error, match", [
    ({"map": "matrix"}, ValueError, "map must be one of"),
    ({"map": None}, ValueError, "map must be one of"),
    ({"reg_lambda": -1e-3}, ValueError, "reg_lambda"),
    ({"reg_lambda": float("nan")}, ValueError, "reg_lambda"),
    ({"reg_lambda": float("inf")}, ValueError, "reg_lambda"),
    ({"reg_lambda": "0.1"}, TypeError, "reg_lambda"),
    ({"reg_mu": -1.0}, ValueError, "reg_mu"),
    ({"reg_mu": True}, TypeError, "reg_mu"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"max_iter": 2.5}, TypeError, "max_iter"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"reg_lambda": "CV"}, TypeError, "reg_lambda must be a float >= 0 or 'cv'"),
    ({"reg_lambda": None}, TypeError, "reg_lambda"),
    ({"reg_diag": -1.0}, ValueError, "reg_diag"),
    ({"reg_diag": "cv"}, TypeError, "reg_diag"),
    ({"cv": 1}, ValueError, "cv must be an int >= 2"),
    ({"cv": True}, TypeError, "cv must be"),
    ({"cv": 2.5}, TypeError, "cv must be"),
    ({"cv": "kfold"}, TypeError, "cv must be"),
    ({"cv": [(np.arange(10), np.arange(10, 60) + 1000)]}, ValueError, "not row numbers"),
    ({"cv": [(np.arange(10),)]}, ValueError, "index pairs"),
])
def test_bad_hyperparameters_raise_at_fit(params, error, match):
    z, y = make_logits(n=50, k=3)
    cal = DirichletCalibrator(**params)  # the constructor only stores
    with pytest.raises(error, match=match):
        cal.fit(z, y)


# ------------------------------------------------------------------ robustness
@pytest.mark.parametrize("map_", ["full", "diagonal"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_separable_data_warns_and_never_gives_non_finite_parameters(map_, scale):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    z = scale * (np.eye(3)[y] + 0.1 * rng.normal(size=(200, 3)))  # argmax is always right
    with pytest.warns(ConvergenceWarning, match="every calibration sample"):
        cal = DirichletCalibrator(map=map_, reg_lambda=0.0).fit(z, y)
    assert np.isfinite(cal.coef_).all() and np.isfinite(cal.intercept_).all()
    p = cal.predict_proba(z)
    assert np.isfinite(p).all()
    assert_array_equal(p.argmax(axis=1), y)


@pytest.mark.parametrize("scale", [1e8, 1e200])
def test_absurdly_large_logits_fit_without_overflow(scale):
    # the standardised features are O(1) whatever the scale, and the temperature start is found
    # on logits scaled down by a power of two (fit_temperature bounds 1/T to [e^-10, e^10])
    z, y = make_logits(n=200, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no ConvergenceWarning
        cal = DirichletCalibrator(map="full").fit(z * scale, y)
    assert np.isfinite(cal.coef_).all() and np.isfinite(cal.intercept_).all()
    assert np.isfinite(cal.predict_proba(z * scale)).all()
    with pytest.warns(ConvergenceWarning, match="stopped at its bound"):  # 1/T = e^-10 cannot undo the scale
        ts = TemperatureScaling().fit(z * scale, y)
    assert _nll(cal, z * scale, y) <= _nll(ts, z * scale, y) + 1e-9


def test_max_iter_reached_warns_and_keeps_the_best_iterate():
    z, y = _miscalibrated()
    with pytest.warns(ConvergenceWarning, match="stopped before converging"):
        cal = DirichletCalibrator(reg_lambda=0.0, max_iter=1).fit(z, y)
    assert cal.n_iter_ == 1
    assert _nll(cal, z, y) <= _nll(TemperatureScaling().fit(z, y), z, y) + 1e-9


def test_converged_fits_do_not_warn():
    z, y = _miscalibrated()
    for map_ in ("full", "diagonal"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            DirichletCalibrator(map=map_).fit(z, y)


def test_chunked_and_uncached_passes_give_the_same_fit(monkeypatch):
    z, y = _miscalibrated(n=500, k=6)
    ref = fit_dirichlet(z, y, reg_lambda=1e-3, reg_mu=1e-3)
    monkeypatch.setattr(dirichlet_module, "_CHUNK_ELEMENTS", 64)  # 10 rows per chunk
    monkeypatch.setattr(dirichlet_module, "_CACHE_ELEMENTS", 0)  # recompute log-probabilities every pass
    got = fit_dirichlet(z, y, reg_lambda=1e-3, reg_mu=1e-3)
    assert_allclose(got.coef, ref.coef, atol=1e-6)
    assert_allclose(got.intercept, ref.intercept, atol=1e-6)


@pytest.mark.parametrize("diagonal", [False, True])
def test_float32_work_reaches_the_float64_optimum(diagonal):
    z, y = _miscalibrated(n=3000, k=5, seed=6)
    lp = log_softmax(z)
    fits = [fit_dirichlet(z, y, diagonal=diagonal, reg_lambda=1e-3, reg_mu=1e-3, dtype=dt)
            for dt in (torch.float64, torch.float32)]
    f64, f32 = (dirichlet_objective(lp, y, f.coef, f.intercept, reg_lambda=1e-3, reg_mu=1e-3)[0] for f in fits)
    assert f32 <= f64 + 1e-6
    p64, p32 = (softmax(lp @ _matrix(f.coef).T + f.intercept) for f in fits)
    assert_allclose(p32, p64, atol=1e-3)


# ------------------------------------------------------------------ persistence
@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_to_dict_round_trip(map_):
    z, y = _miscalibrated()
    cal = DirichletCalibrator(map=map_, reg_lambda=0.01).fit(z, y)
    data = json.loads(json.dumps(cal.to_dict()))
    coef = data["state"]["coef_"]
    assert isinstance(coef, list) and (isinstance(coef[0], list) if map_ == "full" else isinstance(coef[0], float))
    again = DirichletCalibrator.from_dict(data)
    assert again.map_ == map_ and again.n_iter_ == cal.n_iter_ and again.reg_lambda_ == cal.reg_lambda_ == 0.01
    assert_array_equal(again.coef_, cal.coef_)
    assert_array_equal(again.predict_proba(z), cal.predict_proba(z))
    assert again.get_params() == cal.get_params()


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.update(coef_=[[1.0, 0.0], [0.0, 1.0]]), "coef_"),
    (lambda s: s.update(coef_=[[1.0, 0.0, 0.0, 0.0]] * 3 + [[1.0]]), "coef_"),
    (lambda s: s.update(coef_=[1.0, 2.0, float("inf"), 1.0]), "non-finite"),
    (lambda s: s.update(coef_=3.0), "list"),
    (lambda s: s.update(intercept_=[0.0, 1.0]), "intercept_"),
    (lambda s: s.update(intercept_=[[0.0, 1.0, 2.0, 3.0]]), "intercept_"),
    (lambda s: s.update(n_iter_=-1), "n_iter_"),
    (lambda s: s.update(n_iter_=2.5), "n_iter_"),
    (lambda s: s.update(n_iter_=[3]), "n_iter_"),
    (lambda s: s.pop("intercept_"), "missing"),
    (lambda s: s.pop("reg_lambda_"), "missing"),
    (lambda s: s.update(reg_lambda_=-1.0), "reg_lambda_"),
    (lambda s: s.update(reg_lambda_="cv"), "reg_lambda_"),
    (lambda s: s.update(coef_=[1.0, 1.0, 1.0, 1.0]), "diagonal map, but map='auto' fits a full one"),
])
def test_from_dict_rejects_malformed_state(mutate, match):
    z, y = _miscalibrated()
    data = json.loads(json.dumps(DirichletCalibrator().fit(z, y).to_dict()))
    mutate(data["state"])
    with pytest.raises(ValueError, match=match):
        BaseLogitCalibrator.from_dict(data)


# ------------------------------------------------------------------ regularisation by cross-validation
def test_very_strong_regularisation_is_temperature_scaling():
    z, y = _miscalibrated(seed=7)
    ts = TemperatureScaling().fit(z, y)
    for map_ in ("full", "diagonal"):
        cal = DirichletCalibrator(map=map_, reg_lambda=1e9).fit(z, y)
        assert_allclose(cal.predict_proba(z), ts.predict_proba(z), atol=1e-6)
        assert_allclose(_matrix(cal.coef_), np.eye(4) / ts.temperature_, atol=1e-6)


def test_cross_validation_regularises_small_sets_strongly_and_large_sets_weakly():
    # class-wise miscalibration: a free map is worth its parameters only with enough data
    small, large = (DirichletCalibrator().fit(*_miscalibrated(n=n, seed=8)) for n in (40, 5000))
    assert small.reg_lambda_ >= 100.0 and large.reg_lambda_ <= 1.0, (small.reg_lambda_, large.reg_lambda_)
    for cal in (small, large):
        grid = list(cal.cv_scores_)
        assert grid == sorted(grid, reverse=True) and cal.reg_lambda_ in grid  # strongest first
        assert cal.cv_scores_[cal.reg_lambda_] == min(cal.cv_scores_.values())
    # the chosen strength is the one a fixed reg_lambda gives
    fixed = DirichletCalibrator(reg_lambda=large.reg_lambda_).fit(*_miscalibrated(n=5000, seed=8))
    assert_allclose(fixed.coef_, large.coef_, atol=1e-9)


@pytest.mark.parametrize("map_", ["full", "diagonal"])
@pytest.mark.parametrize("reg_lambda", ["cv", 0.01])
def test_weighted_and_repeated_rows_give_the_same_fit_to_rounding(map_, reg_lambda):
    # Newton converges to the floating-point floor, and an integer cv assigns folds by content,
    # so integer weights and repeated rows give the same strength and the same map
    z, y = _miscalibrated(n=300, seed=9)
    w = np.random.default_rng(2).integers(0, 4, size=len(y))
    kw = {"map": map_, "reg_lambda": reg_lambda}
    weighted = DirichletCalibrator(**kw).fit(z, y, sample_weight=w)
    repeated = DirichletCalibrator(**kw).fit(np.repeat(z, w, axis=0), np.repeat(y, w))
    shuffled = np.random.default_rng(3).permutation(int(w.sum()))
    permuted = DirichletCalibrator(**kw).fit(np.repeat(z, w, axis=0)[shuffled], np.repeat(y, w)[shuffled])
    for other in (repeated, permuted):
        assert other.reg_lambda_ == weighted.reg_lambda_
        assert_allclose(other.coef_, weighted.coef_, rtol=1e-10, atol=1e-12)
        assert_allclose(other.decision_function(z), weighted.decision_function(z), rtol=1e-10, atol=1e-12)


def test_content_folds_follow_the_rows_values():
    from precal.calibration._crossval import content_folds

    z, y = make_logits(n=3000, k=5, seed=4)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    folds = content_folds(zt, yt, 5).numpy()
    assert set(folds) == set(range(5)) and np.bincount(folds).min() > 500  # about 600 rows each
    order = np.random.default_rng(0).permutation(3000)
    assert_array_equal(content_folds(zt[order], yt[order], 5).numpy(), folds[order])
    doubled = content_folds(torch.cat([zt, zt]), torch.cat([yt, yt]), 5).numpy()
    assert_array_equal(doubled, np.concatenate([folds, folds]))
    assert_array_equal(content_folds(zt.float(), yt, 5).numpy(),
                       content_folds(zt.float().double(), yt, 5).numpy())  # dtype does not matter
    huge = content_folds(zt * 1e200, yt, 5).numpy()
    assert np.bincount(huge, minlength=5).min() > 400


def test_cv_accepts_splitters_and_index_pairs():
    from sklearn.model_selection import KFold

    z, y = _miscalibrated(n=400, seed=10)
    by_splitter = DirichletCalibrator(cv=KFold(4)).fit(z, y)
    by_pairs = DirichletCalibrator(cv=list(KFold(4).split(z))).fit(z, y)
    assert by_splitter.reg_lambda_ == by_pairs.reg_lambda_
    assert_allclose(by_splitter.coef_, by_pairs.coef_, atol=1e-12)
    assert by_splitter.cv_scores_ == pytest.approx(by_pairs.cv_scores_, rel=1e-12)


@pytest.mark.filterwarnings("ignore:DirichletCalibrator. the fitted map classifies every")
def test_unsplittable_data_falls_back_to_the_strongest_regularisation():
    z, y = _miscalibrated(n=30, seed=11)
    w = np.zeros(30)
    w[:3] = 1.0  # every test fold without weight, or every training fold
    cal = DirichletCalibrator(cv=[(np.arange(3, 30), np.arange(3, 30))]).fit(z, y, sample_weight=w)
    assert cal.reg_lambda_ == 1e6 and cal.cv_scores_ == {}


@pytest.mark.parametrize("diagonal", [False, True])
def test_conjugate_gradient_steps_reach_the_dense_newton_optimum(monkeypatch, diagonal):
    z, y = _miscalibrated(n=600, k=6, seed=12)
    kw = {"diagonal": diagonal, "reg_lambda": 0.1, "reg_mu": 0.05, "reg_diag": 0.02}
    dense = fit_dirichlet(z, y, **kw)
    assert dense.converged and dense.n_cg == 0
    monkeypatch.setattr(dirichlet_module, "_DENSE_MAX_PARAMS", 0)
    cg = fit_dirichlet(z, y, **kw)
    monkeypatch.setattr(dirichlet_module, "_CACHE_ELEMENTS", 600 * 6)  # diagonal: q kept, not [q F, q]
    cg_q_only = fit_dirichlet(z, y, **kw)
    monkeypatch.setattr(dirichlet_module, "_CACHE_ELEMENTS", 0)  # probabilities recomputed in every product
    cg_uncached = fit_dirichlet(z, y, **kw)
    for fit in (cg, cg_q_only, cg_uncached):
        assert fit.converged and fit.n_cg > 0
        assert_allclose(fit.coef, dense.coef, atol=1e-9)
        assert_allclose(fit.intercept, dense.intercept, atol=1e-9)


@pytest.mark.parametrize("diagonal, k", [(False, 12), (True, 300)])
def test_float32_conjugate_gradient_fit_stops_at_the_float64_optimum(monkeypatch, diagonal, k):
    """float32 CG fits end when quadratic convergence predicts the next step below the parameters'
    float32 bound (one Newton step fewer here): the objective and probabilities are still float64's."""
    z, y = _miscalibrated(n=3000, k=k, seed=21)
    lp = log_softmax(z)
    kw = {"diagonal": diagonal, "reg_lambda": 1e-2, "reg_mu": 1e-2}
    ref = fit_dirichlet(z, y, dtype=torch.float64, **kw)
    monkeypatch.setattr(dirichlet_module, "_DENSE_MAX_PARAMS", 0)
    fit = fit_dirichlet(z, y, dtype=torch.float32, **kw)
    monkeypatch.setattr(dirichlet_module, "_PREDICTED_FLOOR_DTYPES", ())
    taken = fit_dirichlet(z, y, dtype=torch.float32, **kw)  # the predicted last step taken
    assert fit.converged and fit.n_cg > 0 and fit.n_iter < taken.n_iter and fit.n_cg < taken.n_cg
    f64, f32 = (dirichlet_objective(lp, y, f.coef, f.intercept, reg_lambda=1e-2, reg_mu=1e-2)[0] for f in (ref, fit))
    assert f32 <= f64 + 1e-6
    p64, p32 = (softmax(lp @ _matrix(f.coef).T + f.intercept) for f in (ref, fit))
    assert_allclose(p32, p64, atol=1e-3)
    assert_allclose(p32, softmax(lp @ _matrix(taken.coef).T + taken.intercept), atol=1e-4)


def test_float32_polishing_solve_is_loosened_and_still_reaches_the_float64_optimum(monkeypatch):
    """A float32 polishing step whose size quadratic convergence predicts is solved only as tightly
    as the predicted last step needs; the fit still ends at float64's objective."""
    z, y = _miscalibrated(n=2000, k=300, seed=21)
    kw = {"diagonal": True, "reg_lambda": 1e-2, "reg_mu": 1e-2}
    ref = fit_dirichlet(z, y, dtype=torch.float64, **kw)
    loosened = []
    original = dirichlet_module._polish_rtol

    def spy(rtol, previous_steps, bound):
        out = original(rtol, previous_steps, bound)
        loosened.append(out > dirichlet_module._POLISH_RTOL[torch.float32])
        return out

    monkeypatch.setattr(dirichlet_module, "_polish_rtol", spy)
    fit = fit_dirichlet(z, y, dtype=torch.float32, **kw)
    assert any(loosened) and fit.converged
    assert fit.objective == pytest.approx(ref.objective, rel=1e-7)


def test_clone_keeps_the_parameters():
    cal = DirichletCalibrator(map="diagonal", reg_lambda=0.1, reg_mu=None, reg_diag=0.3, cv=3, max_iter=50,
                              tol=1e-6)
    assert clone(cal).get_params() == cal.get_params()


@pytest.mark.slow
def test_large_diagonal_map_conjugate_gradients_match_the_dense_newton_fit(monkeypatch):
    # K = 600 (1200 parameters): the block-preconditioned CG path with kept probabilities, on
    # enough weighted rows (n > 2 * 8192) that the standardisation and the start come from a
    # strided sample; forcing the dense Cholesky steps on the same problem must give the same fit
    z, y = _miscalibrated(n=17000, k=600, seed=13)
    w = np.random.default_rng(13).uniform(0.5, 2.0, size=len(y))
    kw = {"diagonal": True, "reg_lambda": 0.01, "reg_mu": 0.01, "reg_diag": 0.01, "dtype": torch.float64}
    cg = fit_dirichlet(z, y, w, **kw)
    assert cg.converged and cg.n_cg > 0
    monkeypatch.setattr(dirichlet_module, "_DENSE_MAX_PARAMS", 1200)
    dense = fit_dirichlet(z, y, w, **kw)
    assert dense.converged and dense.n_cg == 0
    assert_allclose(cg.coef, dense.coef, rtol=1e-8, atol=1e-8 * np.abs(dense.coef).max())
    assert_allclose(cg.intercept, dense.intercept, rtol=1e-8, atol=1e-8 * np.abs(dense.intercept).max())
    assert cg.objective == pytest.approx(dense.objective, rel=1e-12)


def test_content_subsample_keeps_identical_rows_together_and_their_folds():
    from precal.calibration._crossval import content_folds, content_subsample, cv_splits

    z, y = make_logits(n=4000, k=7, seed=5)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    assert content_subsample(zt, yt, 4000) is None  # n <= max_rows: every row
    kept = content_subsample(zt, yt, 1000).numpy()
    assert 850 < len(kept) < 1150 and np.all(np.diff(kept) > 0)
    order = np.random.default_rng(1).permutation(4000)
    assert_array_equal(np.sort(order[content_subsample(zt[order], yt[order], 1000).numpy()]), kept)
    # a doubled data set keeps both copies of a kept row (at the same rate: max_rows doubles too)
    doubled = content_subsample(torch.cat([zt, zt]), torch.cat([yt, yt]), 2000).numpy()
    assert_array_equal(doubled, np.concatenate([kept, kept + 4000]))
    # the folds of cv_splits on the subsample are the kept rows' content folds
    pairs = cv_splits(5, zt, yt, max_rows=1000)
    folds = content_folds(zt, yt, 5).numpy()
    assert_array_equal(np.sort(np.concatenate([te.numpy() for _, te in pairs])), kept)
    for f, (tr, te) in enumerate(pairs):
        assert set(folds[te.numpy()]) == {f}
        assert_array_equal(np.sort(np.concatenate([tr.numpy(), te.numpy()])), kept)


def test_cv_on_a_subsample_chooses_from_the_kept_rows_and_fits_all(monkeypatch):
    z, y = _miscalibrated(n=3000, k=4, seed=12)
    full = DirichletCalibrator().fit(z, y)
    monkeypatch.setattr(dirichlet_module, "_CV_MIN_ROWS", 1)
    monkeypatch.setattr(dirichlet_module, "_CV_MAX_WORK", 1000 * 4 * 5)  # 1000 rows of a full 4-class map
    sub = DirichletCalibrator().fit(z, y)
    assert sub.cv_scores_ and sub.cv_scores_ != full.cv_scores_
    # the final fit is on all rows: refitting at the chosen strength gives the same map
    fixed = DirichletCalibrator(reg_lambda=sub.reg_lambda_).fit(z, y)
    assert_allclose(sub.coef_, fixed.coef_, rtol=1e-8, atol=1e-10)


def test_count_errors_is_the_strict_argmax_test():
    rng = np.random.default_rng(3)
    k = 6
    feats = torch.from_numpy(rng.integers(-2, 3, size=(500, k)).astype(np.float64))  # many ties
    y = torch.from_numpy(rng.integers(0, k, size=500))
    weights = torch.from_numpy(rng.integers(0, 3, size=500).astype(np.float64))
    weights /= weights.sum()
    theta = np.concatenate([np.ones(k), np.zeros(k)])
    for w in (None, weights):
        data = dirichlet_module._DataTerm(dirichlet_module._Rows(feats), y, w, diagonal=True, dtype=torch.float64,
                                          device=torch.device("cpu"), keep_probs=False)
        a = feats.numpy()
        true = a[np.arange(500), y.numpy()]
        others = np.where(np.eye(k, dtype=bool)[y.numpy()], -np.inf, a).max(axis=1)
        wrong = others >= true
        if w is not None:
            wrong &= w.numpy() > 0
        assert data.count_errors(theta) == int(wrong.sum()) > 0
        assert data.evaluate(theta, grad=False, count_errors=True).n_errors == int(wrong.sum())


def _cg_problem(monkeypatch, lazy):
    """A diagonal map on K = 300 classes (600 parameters: conjugate-gradient steps), float64;
    ``lazy``: kept probabilities only from the second Newton step on, whatever the size."""
    monkeypatch.setattr(dirichlet_module, "_FRESH_BYTES", 0 if lazy else 1 << 40)
    z, y = _miscalibrated(n=400, k=300, seed=14)
    return dirichlet_module._Problem(torch.from_numpy(z), torch.from_numpy(y), None, diagonal=True,
                                     dtype=torch.float64)


@pytest.mark.parametrize("lazy", [False, True])
def test_hessian_products_with_and_without_kept_probabilities_match_the_dense_hessian(monkeypatch, lazy):
    problem = _cg_problem(monkeypatch, lazy)
    data = problem.data
    rng = np.random.default_rng(15)
    theta = problem.start() + 0.1 * rng.normal(size=600)
    v = rng.normal(size=600)
    dense = data.evaluate(theta, grad=True, hess=True).hess @ v
    data.evaluate(theta, grad=True, hess_diag=True, keep=True)
    assert (data.probs is None) == lazy  # a lazy first step recomputes q in every product
    assert_allclose(data.hessp(v), dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
    data.evaluate(theta + 0.01, grad=True, hess_diag=True, keep=True)
    data.evaluate(theta, grad=True, hess_diag=True, keep=True)  # second step on: q and q F kept
    assert data.probs is not None and data.probs_f is not None
    assert_allclose(data.hessp(v), dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())


def test_lazily_kept_probabilities_give_the_same_fit_and_a_warm_one_step_fit_allocates_none(monkeypatch):
    kw = {"reg_lambda": 0.1, "reg_mu": 0.1, "reg_diag": 0.1, "max_iter": 100, "tol": 1e-14}
    eager = _cg_problem(monkeypatch, lazy=False)
    ref = dirichlet_module._fit_problem(eager, **kw, init=None)
    lazy = _cg_problem(monkeypatch, lazy=True)
    fit = dirichlet_module._fit_problem(lazy, **kw, init=None)
    assert fit.converged and fit.n_iter > 1 and lazy.data.probs is not None
    assert_allclose(fit.coef, ref.coef, rtol=1e-9, atol=1e-12)
    assert_allclose(fit.intercept, ref.intercept, atol=1e-9 * np.abs(ref.intercept).max())
    warm = _cg_problem(monkeypatch, lazy=True)
    again = dirichlet_module._fit_problem(warm, **kw, init=(fit.coef, fit.intercept))
    assert again.converged and again.n_iter == 1 and warm.data.probs is None
    assert_allclose(again.coef, fit.coef, rtol=1e-9, atol=1e-12)


def test_the_last_pass_of_a_fit_counts_its_errors(monkeypatch):
    z, y = _miscalibrated(n=400, k=300, seed=16)
    w = np.random.default_rng(16).integers(0, 3, size=400).astype(float)

    def unused(self, theta):  # the value pass after the last step counts them
        raise AssertionError("a separate error-counting pass")

    monkeypatch.setattr(dirichlet_module._Problem, "n_errors", unused)
    for weights in (None, w):
        fit = fit_dirichlet(z, y, weights, diagonal=True, reg_lambda=1.0, reg_mu=1.0, reg_diag=1.0)
        a = log_softmax(z) * fit.coef + fit.intercept
        true = a[np.arange(len(y)), y]
        others = np.where(np.eye(300, dtype=bool)[y], -np.inf, a).max(axis=1)
        wrong = others >= true
        if weights is not None:
            wrong &= weights > 0
        assert fit.converged and fit.n_errors == int(wrong.sum()) > 0


@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cached", [True, False])
def test_passes_on_several_threads_give_the_same_bits_as_on_one(monkeypatch, diagonal, weighted, cached):
    # small chunks, so that every pass has many (and waves of a few), shared among threads;
    # uncached: the features are recomputed chunk by chunk and q in every Hessian-vector product
    monkeypatch.setattr(dirichlet_module, "_CHUNK_ELEMENTS", 1 << 11)
    if not cached:
        monkeypatch.setattr(dirichlet_module, "_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(dirichlet_module, "_WAVE_BYTES", 1)
    calls = spy_map_blocks(monkeypatch, precal_threads)
    k = 40 if diagonal else 12  # conjugate-gradient steps either way (80 and 156 parameters > 64)
    monkeypatch.setattr(dirichlet_module, "_DENSE_MAX_PARAMS", 64)
    z, y = _miscalibrated(n=900, k=k, seed=21)
    w = np.random.default_rng(21).integers(0, 3, size=900).astype(float) if weighted else None
    weights = None if w is None else torch.from_numpy(w / w.sum())
    rng = np.random.default_rng(22)
    results = []
    for n_threads in (1, 3):
        problem = dirichlet_module._Problem(torch.from_numpy(z), torch.from_numpy(y), weights, diagonal=diagonal,
                                            dtype=torch.float32, n_threads=n_threads)
        data = problem.data
        theta = problem.start() + 0.05 * rng.normal(size=data.n_params)
        v = rng.normal(size=data.n_params)
        ev = data.evaluate(theta, grad=True, hess_diag=True, keep=True, count_errors=True)
        dense = data.evaluate(theta, grad=True, hess=True)
        fit = dirichlet_module._fit_problem(problem, 0.1, 0.1, 0.1, max_iter=100, tol=1e-14, init=None)
        data.evaluate(theta, grad=True, hess_diag=True, keep=True)
        results.append((ev.f, ev.g, ev.hess_diag, ev.n_errors, dense.hess, data.hessp(v), data.count_errors(theta),
                        data.gram_eigen()[0], fit.coef, fit.intercept, fit.n_iter))
        rng = np.random.default_rng(22)  # the same point and vector for the next thread count
    assert any(n == 3 and blocks > 1 for blocks, n in calls)  # the passes did run on three threads
    for one, three in zip(*results):
        assert_array_equal(one, three)


def test_a_dense_fit_below_the_element_threshold_still_shares_its_chunks(monkeypatch):
    # 3 000 x 150: 450 000 logits, under MIN_PARALLEL_ELEMENTS, but each pass forms a 300 x 300
    # Hessian (900 000 elements of work per pass): the fit's thread budget counts that. At 300
    # parameters OpenBLAS's Cholesky differs in the last bits between one and two threads, so
    # the same bits on one and two threads also says BLAS stayed on one
    from threadpoolctl import threadpool_limits

    import precal
    from precal._threads import MIN_PARALLEL_ELEMENTS

    z, y = _miscalibrated(n=3000, k=150, seed=23)
    assert z.size < MIN_PARALLEL_ELEMENTS <= dirichlet_module.fit_work(z, "diagonal")
    calls = spy_map_blocks(monkeypatch, precal_threads)
    monkeypatch.setattr(precal._threads, "available_cpus", lambda *a, **k: 2)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2), precal.config_context(n_threads=2):
            cal = DirichletCalibrator(map="diagonal", reg_lambda=0.01).fit(z, y)
    finally:
        torch.set_num_threads(saved)
    assert any(n == 2 and blocks > 1 for blocks, n in calls)
    ref = DirichletCalibrator(map="diagonal", reg_lambda=0.01)
    with threadpool_limits(limits=2), precal.config_context(n_threads=1):
        ref.fit(z, y)
    assert_array_equal(cal.coef_, ref.coef_)
    assert_array_equal(cal.intercept_, ref.intercept_)


def test_fit_work_counts_a_pass_of_the_map_the_fit_will_use():
    fit_work = dirichlet_module.fit_work
    assert fit_work(np.zeros((1000, 10)), "auto") == 1000 * 110  # full map: a dense 110 x 110 Hessian
    assert fit_work(np.zeros((1000, 10)), "diagonal") == 1000 * 20
    assert fit_work(np.zeros((1000, 300)), "diagonal") == 1000 * 300  # 600 parameters: conjugate gradients
    assert fit_work(torch.zeros(1000), "auto") == 1000 * 6  # one binary logit: two classes, full map
    assert fit_work([[0.0, 1.0]], "auto") is None  # a list: precal's whole budget, as any fit
    assert fit_work(np.zeros((2, 3, 4)), "auto") == 24


def test_a_warm_start_at_the_end_of_a_solve_reuses_its_derivatives(monkeypatch):
    problem = _cg_problem(monkeypatch, lazy=False)
    data = problem.data
    end = problem.solve(problem.start(), 1.0, 1.0, 1.0, max_iter=100, tol=1e-14).theta
    passes = data.n_passes
    kept = data.evaluate(end, grad=True, hess_diag=True, keep=True)
    assert data.n_passes == passes  # remembered by the solve's last pass
    data._memo = None
    fresh = data.evaluate(end, grad=True, hess_diag=True, keep=True)
    assert data.n_passes == passes + 1
    assert kept.f == fresh.f
    assert_array_equal(kept.g, fresh.g)
    assert_array_equal(kept.hess_diag, fresh.hess_diag)


def test_rows_whose_true_class_probability_underflows_keep_a_finite_exact_nll():
    # float32 work: exp(-200) underflows, so these rows take the log-sum-exp of their logits
    rng = np.random.default_rng(17)
    k = 5
    log_probs = rng.normal(size=(300, k)).astype(np.float32)
    y = rng.integers(0, k, size=300)
    log_probs[:40, :] = 0.0
    log_probs[np.arange(40), y[:40]] = -200.0
    coef, intercept = np.ones(k), np.zeros(k)
    value, _, _ = dirichlet_objective(log_probs, y, coef, intercept)
    a = log_probs.astype(np.float64)
    expected = np.mean(logsumexp(a, axis=1) - a[np.arange(300), y])
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-6)

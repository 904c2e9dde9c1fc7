"""FuzzyDirichletCalibrator: confidence-gated Dirichlet maps trained under emulated INT4 noise."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from precal.calibration.dirichlet import DirichletCalibrator
from precal.calibration.fuzzy import (
    FuzzyDirichletCalibrator,
    _n_theta,
    _unpack,
    fuzzy_objective,
    int4_noise_copies,
)

from ..conftest import make_logits, spy_map_blocks


@pytest.fixture(scope="module")
def data():
    return make_logits(n=400, k=4, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    z, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FuzzyDirichletCalibrator(random_state=0).fit(z, y)


def test_one_region_without_noise_is_dirichlet_calibration(data):
    """Stage 1 is DirichletCalibrator itself: with nothing for stage 2 to add, the maps are its maps."""
    z, y = data
    for map_ in ("full", "diagonal"):
        ref = DirichletCalibrator(map=map_).fit(z, y)  # the cross-validated default
        fz = FuzzyDirichletCalibrator(n_regions=1, noise=None, map=map_).fit(z, y)
        assert fz.map_ == ref.map_ == map_ and fz.reg_lambda_ == ref.reg_lambda_
        assert not fz.gated_ and fz.gate_scores_ == []
        assert_allclose(fz.coefs_[0], ref.coef_, rtol=0, atol=1e-12)  # re-canonicalised: rounding only
        assert_allclose(fz.intercepts_[0], ref.intercept_, rtol=0, atol=1e-12)
        assert_allclose(fz.predict_proba(z), ref.predict_proba(z), rtol=0, atol=1e-14)
    # fixed strengths are passed on as they are (the paper's ODIR: reg_diag=0)
    ref = DirichletCalibrator(reg_lambda=0.3, reg_mu=0.1, reg_diag=0.0).fit(z, y)
    fz = FuzzyDirichletCalibrator(n_regions=1, noise=None, reg_lambda=0.3, reg_mu=0.1, reg_diag=0.0).fit(z, y)
    assert fz.reg_lambda_ == 0.3
    assert_allclose(fz.predict_proba(z), ref.predict_proba(z), rtol=0, atol=1e-14)


def test_gates_are_kept_only_when_they_win_on_every_held_out_fold(data):
    """Stage 2 replaces the Dirichlet map only if its held-out loss is lower on every fold;
    otherwise the calibrator is DirichletCalibrator with the same settings, exactly."""
    z, y = data
    ref = DirichletCalibrator().fit(z, y)
    for params in ({"random_state": 0}, {"noise": None}, {"n_regions": 2, "cv": 3}, {"loss": "nll+soft_ece"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fz = FuzzyDirichletCalibrator(max_iter=60, **params).fit(z, y)
        n_folds = params.get("cv", 5)
        wins = [gated < base for base, gated in fz.gate_scores_]
        # folds are visited until the first the gates lose
        assert 1 <= len(wins) <= n_folds and all(wins[:-1])
        assert fz.gated_ == (len(wins) == n_folds and wins[-1])
        if not fz.gated_:
            ref_here = ref if "cv" not in params else DirichletCalibrator(cv=params["cv"]).fit(z, y)
            assert_allclose(fz.predict_proba(z), ref_here.predict_proba(z), rtol=0, atol=1e-14)
            assert_allclose(fz.coefs_, np.broadcast_to(fz.coefs_[0], fz.coefs_.shape), rtol=0, atol=0)


def _confidence_dependent(n, seed):
    """Three classes whose true temperature depends on the confidence: the labels are drawn from
    softmax(z / T(c)) with T = 0.5 below c = 0.75 and T = 2 above, which no single affine map of
    log p reproduces (a Dirichlet map applies one set of coefficients at every confidence)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.5, size=(n, 3))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    t = np.where(p.max(axis=1) < 0.75, 0.5, 2.0)[:, None]
    q = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(axis=1)
    return z, y


def test_gates_that_help_are_kept_and_beat_dirichlet_on_new_data():
    z, y = _confidence_dependent(3000, seed=1)
    z_new, y_new = _confidence_dependent(20000, seed=2)
    fz = FuzzyDirichletCalibrator(noise=None).fit(z, y)
    ref = DirichletCalibrator().fit(z, y)
    assert fz.gated_, fz.gate_scores_
    assert fz.score(z_new, y_new) > ref.score(z_new, y_new)  # score is the mean log-likelihood


def test_rows_sum_to_one_and_shapes(fitted, data):
    z, y = data
    p = fitted.predict_proba(z)
    assert p.shape == z.shape and np.isfinite(p).all()
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert fitted.map_ == "full"
    assert fitted.centers_.shape == fitted.widths_.shape == (3,)
    assert fitted.coefs_.shape == (3, 4, 4) and fitted.intercepts_.shape == (3, 4)
    assert np.all(np.diff(fitted.centers_) >= 0)  # regions sorted by centre
    assert np.all(fitted.widths_ > 0) and np.all((fitted.centers_ >= 0.25) & (fitted.centers_ <= 1.0))
    assert fitted.n_iter_ >= 1


def test_fit_is_deterministic_for_a_fixed_random_state(data):
    z, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = FuzzyDirichletCalibrator(random_state=3, max_iter=60).fit(z, y)
        b = FuzzyDirichletCalibrator(random_state=3, max_iter=60).fit(z, y)
        # the gated maps (kept here without the held-out check) depend on the noise copies' seed
        c, d = (FuzzyDirichletCalibrator(random_state=seed, max_iter=60, check_gates=False).fit(z, y)
                for seed in (3, 4))
    assert_array_equal(a.predict_proba(z), b.predict_proba(z))
    assert not np.array_equal(c.predict_proba(z), d.predict_proba(z))  # other noise copies


def test_noise_copies_differ_and_are_seeded(data):
    z, _ = data
    zt = torch.from_numpy(z)
    copies = int4_noise_copies(zt, 3, torch.Generator().manual_seed(0))
    again = int4_noise_copies(zt, 3, torch.Generator().manual_seed(0))
    other = int4_noise_copies(zt, 3, torch.Generator().manual_seed(1))
    assert copies.shape == (3,) + z.shape and copies.dtype == torch.float64
    assert torch.equal(copies, again)
    assert not torch.equal(copies[1:], other[1:])
    for i in range(3):
        assert not torch.equal(copies[i], zt)
        for j in range(i):
            assert not torch.equal(copies[i], copies[j])
    # copy 0 is plain per-row INT4 rounding; every copy errs by at most about one INT4 step
    from precal.emulate import quantize

    assert torch.equal(copies[0], quantize(zt, "int4", axis=0))
    step = zt.abs().amax(dim=1, keepdim=True) / 7.0
    assert ((copies - zt).abs() <= 1.01 * step).all()
    # the estimator's copies follow random_state
    est = FuzzyDirichletCalibrator(random_state=5, n_noise_copies=2)
    assert torch.equal(est._noisy_copies(zt), clone(est)._noisy_copies(zt))
    assert est._noisy_copies(zt).shape == (2,) + z.shape
    assert FuzzyDirichletCalibrator(noise=None)._noisy_copies(zt).shape[0] == 0


def test_callable_noise(data):
    z, y = data
    calls = []

    def jitter(logits, generator):
        calls.append(generator)
        return logits + 0.1 * torch.randn(logits.shape, generator=generator, dtype=logits.dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cal = FuzzyDirichletCalibrator(noise=jitter, n_noise_copies=2, random_state=0, max_iter=40).fit(z, y)
    assert len(calls) == 2 and isinstance(calls[0], torch.Generator)
    assert_allclose(cal.predict_proba(z).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="shape"):
        FuzzyDirichletCalibrator(noise=lambda x, g: x[:, :2]).fit(z, y)


def test_objective_gradient_matches_finite_differences():
    z, y = make_logits(n=12, k=3, seed=1)
    zt = torch.from_numpy(z)
    versions = torch.cat([zt[None], int4_noise_copies(zt, 2, torch.Generator().manual_seed(0))])
    lp = torch.log_softmax(versions, dim=-1)
    conf = lp.max(dim=-1).values.exp()
    yi = torch.from_numpy(y)
    w = torch.full((12,), 1.0 / 12, dtype=torch.float64)
    shift = torch.tensor([-1.0, -2.0, -1.5], dtype=torch.float64)
    scale = torch.tensor([1.5, 2.0, 1.0], dtype=torch.float64)
    rng = np.random.default_rng(0)
    for diagonal, r in ((False, 2), (True, 3)):
        n_theta = 2 * r + (r + 1) * ((3 if diagonal else 9) + 3)
        assert _n_theta(r, 3, diagonal) == n_theta
        theta = torch.tensor(rng.normal(scale=0.5, size=n_theta), requires_grad=True)
        for ece in (0.0, 1.0):
            def f(t):
                return fuzzy_objective(t, (lp - shift) / scale, conf, yi, w, n_regions=r, diagonal=diagonal,
                                       reg_lambda=0.2, reg_mu=0.1, reg_region=0.3, soft_ece_weight=ece,
                                       shift=shift, scale=scale, reg_diag=0.4)
            assert torch.autograd.gradcheck(f, (theta,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("r", [1, 3])
def test_closed_form_data_gradient_matches_autograd(diagonal, r):
    """Stage 2's closed-form value and gradient (flat rows, weights over versions) are autograd's of _data_term."""
    from precal.calibration.fuzzy import _data_term, _data_term_grad

    gen = torch.Generator().manual_seed(r + 2 * diagonal)
    c, n, k = 3, 41, 5
    # a scale of 30: saturated rows too
    lp = torch.log_softmax(30.0 * torch.randn(c, n, k, generator=gen, dtype=torch.float64), dim=-1)
    conf = lp.max(dim=-1).values.exp()
    y = torch.randint(0, k, (n,), generator=gen)
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    w /= w.sum()
    theta = torch.randn(_n_theta(r, k, diagonal), generator=gen, dtype=torch.float64).requires_grad_(True)
    want = _data_term(theta, lp, conf, y, w, n_regions=r, diagonal=diagonal)
    want.backward()
    params = _unpack(theta, r, k, diagonal)
    value, grads = _data_term_grad(tuple(p.detach() for p in params), lp.reshape(-1, k), conf.reshape(-1),
                                   y.repeat(c), (w / c).repeat(c))
    again = theta.detach().clone().requires_grad_(True)
    torch.autograd.backward(_unpack(again, r, k, diagonal), grads)
    assert value == pytest.approx(float(want.detach()), rel=1e-13)
    assert_allclose(again.grad.numpy(), theta.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("diagonal", [False, True])
def test_gauss_newton_blocks_are_the_data_terms_hessian_in_one_row_of_one_map(diagonal):
    """The preconditioner's curvature block of row k of region r's map is the exact Hessian of the data term in
    (W_r[k, ...], b_r[k]) alone (the logits are linear in them): autograd's, at a point where the regions differ."""
    from precal.calibration.fuzzy import _data_term, _gauss_newton_blocks

    gen = torch.Generator().manual_seed(7 + diagonal)
    r, n, k = 3, 37, 4
    lp = torch.log_softmax(3.0 * torch.randn(1, n, k, generator=gen, dtype=torch.float64), dim=-1)
    conf = lp.max(dim=-1).values.exp()
    y = torch.randint(0, k, (n,), generator=gen)
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    w /= w.sum()
    theta = torch.randn(_n_theta(r, k, diagonal), generator=gen, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(
        lambda t: _data_term(t, lp, conf, y, w, n_regions=r, diagonal=diagonal), theta)
    params = tuple(p.detach() for p in _unpack(theta, r, k, diagonal))
    blocks = _gauss_newton_blocks(params, lp[0], conf[0], w)
    n_w = k if diagonal else k * k
    assert blocks.shape == ((r, k, 2, 2) if diagonal else (r, k, k + 1, k + 1))
    for region in range(r):
        dev_w = 2 * r + n_w + k + region * n_w  # where ΔW_r starts: W_r = W + ΔW_r
        dev_b = 2 * r + (r + 1) * n_w + k + region * k
        for row in range(k):
            coef = [dev_w + row] if diagonal else [dev_w + row * k + j for j in range(k)]
            ids = torch.tensor(coef + [dev_b + row])
            assert_allclose(blocks[region, row].numpy(), hess[ids[:, None], ids[None, :]].numpy(), rtol=1e-10,
                            atol=1e-14)


def _stage_two_problem(diagonal, *, max_iter, tol):
    """A stage-2 problem on 300 x 4 logits and two INT4 copies: (logits, labels, versions, weights, stage-1 fit,
    _GateFit) as the estimator builds them."""
    import precal.calibration.fuzzy as fuzzy

    z, y = make_logits(n=300, k=4, seed=5)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    versions = torch.cat([zt[None], int4_noise_copies(zt, 2, torch.Generator().manual_seed(0))])
    w = torch.full((300,), 1.0 / 300, dtype=torch.float64)
    first = DirichletCalibrator(map="diagonal" if diagonal else "full", reg_lambda=1.0).fit(z, y)
    gates = fuzzy._GateFit(r=3, diagonal=diagonal, strengths=first._strengths(1.0), reg_region=1.0,
                           ece_weight=0.0, max_iter=max_iter, tol=tol)
    return zt, yt, versions, w, first, gates


@pytest.mark.parametrize("diagonal", [False, True])
def test_stage_two_data_term_runs_in_float32_above_dirichlets_float64_size(diagonal, monkeypatch):
    """Above DirichletCalibrator's float64 size the data term's rows are float32 (sums across blocks in float64):
    the same gated fit as in float64, to float32's rounding of the objective."""
    import precal.calibration.dirichlet as dirichlet
    import precal.calibration.fuzzy as fuzzy

    zt, yt, versions, w, first, gates = _stage_two_problem(diagonal, max_iter=500, tol=1e-10)
    monkeypatch.setattr(fuzzy, "_BLOCK_ELEMENTS", 16 * 40)  # 40 rows per block: the sums across blocks too
    seen, real = [], fuzzy._data_term_grad

    def spy(params, lp, *rest):
        seen.append((params[2].dtype, lp.dtype))
        return real(params, lp, *rest)

    monkeypatch.setattr(fuzzy, "_data_term_grad", spy)
    fits = {}
    for name, limit in (("float64", dirichlet._FLOAT64_MAX_ELEMENTS), ("float32", 3 * 300 * 4 - 1)):
        monkeypatch.setattr(dirichlet, "_FLOAT64_MAX_ELEMENTS", limit)
        seen.clear()
        fits[name] = gates.fit(versions, yt, w, first.coef_, first.intercept_)
        want = torch.float64 if name == "float64" else torch.float32
        assert len(seen) > 1 and set(seen) == {(want, want)}
    assert fits["float32"][2] is None  # converged, no warning
    probs = {}
    for name, (params, _, _) in fits.items():
        centers, widths, coefs, intercepts = (torch.from_numpy(a) for a in params)
        lp = torch.log_softmax(zt, dim=-1)
        gate = fuzzy._gates(lp.amax(dim=1).exp(), centers, widths)
        probs[name] = torch.softmax(fuzzy._mixed_logits(lp, gate, coefs, intercepts), dim=-1).numpy()
    assert_allclose(probs["float32"], probs["float64"], atol=2e-4)
    loss = {name: gates.heldout_loss(zt, yt, w, params) for name, (params, _, _) in fits.items()}
    assert loss["float32"] == pytest.approx(loss["float64"], rel=1e-5)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_a_float32_line_search_ending_at_its_rounding_floor_does_not_warn(preconditioned, monkeypatch):
    """An abnormal line-search end with a gradient between sqrt(tol) and float32's sqrt(eps) is float32's rounding
    floor when the gradient is in the preconditioned coordinates: no warning there; in float64, or on θ's own
    gradient (no preconditioner), the same end is reported."""
    import precal.calibration.dirichlet as dirichlet
    import precal.calibration.fuzzy as fuzzy

    zt, yt, versions, w, first, gates = _stage_two_problem(True, max_iter=50, tol=1e-8)
    real = fuzzy.minimize

    def ends_abnormally(fun, x0, **kw):
        result = real(fun, x0, **kw)
        result.status, result.message = 2, "ABNORMAL: "
        result.jac = np.full_like(x0, 2e-4)  # above sqrt(tol) = 1e-4, below sqrt(eps32) = 3.5e-4
        return result

    monkeypatch.setattr(fuzzy, "minimize", ends_abnormally)
    if not preconditioned:
        monkeypatch.setattr(fuzzy, "_PRECONDITION_MAX_PARAMS", 0)
    reasons = {}
    for name, limit in (("float64", dirichlet._FLOAT64_MAX_ELEMENTS), ("float32", 0)):
        monkeypatch.setattr(dirichlet, "_FLOAT64_MAX_ELEMENTS", limit)
        reasons[name] = gates.fit(versions, yt, w, first.coef_, first.intercept_)[2]
    assert reasons["float64"] is not None and "ABNORMAL" in reasons["float64"]
    if preconditioned:
        assert reasons["float32"] is None
    else:
        assert reasons["float32"] is not None and "2.00e-04" in reasons["float32"]
    # float64 keeps the plain sqrt(tol) test however small tol is: 1e-9 is above sqrt(1e-20) = 1e-10
    zt, yt, versions, w, first, tight = _stage_two_problem(True, max_iter=50, tol=1e-20)

    def ends_just_above(fun, x0, **kw):
        result = real(fun, x0, **kw)
        result.status, result.message, result.jac = 2, "ABNORMAL: ", np.full_like(x0, 1e-9)
        return result

    monkeypatch.setattr(fuzzy, "minimize", ends_just_above)
    monkeypatch.setattr(dirichlet, "_FLOAT64_MAX_ELEMENTS", 1 << 20)
    reason = tight.fit(versions, yt, w, first.coef_, first.intercept_)[2]
    assert reason is not None and "1.00e-09" in reason


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_data_gradient_shared_shift_equals_the_per_row_shift(diagonal, far, monkeypatch):
    """Short rows take one shift for the block (falling back to each row's maximum when a row lies far
    below it, ``far``); the value and gradient are those of the per-row shift."""
    import precal._numerics as precal_numerics
    import precal.calibration.fuzzy as fuzzy

    gen = torch.Generator().manual_seed(7 + diagonal)
    n, k, r = 300, 6, 3
    lp = torch.log_softmax(5.0 * torch.randn(n, k, generator=gen, dtype=torch.float64), dim=-1)
    if far:
        lp[::7] -= 3000.0  # exp underflows for these rows under the block's shift
    conf = torch.rand(n, generator=gen, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=gen)
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    theta = torch.randn(_n_theta(r, k, diagonal), generator=gen, dtype=torch.float64) * 0.3
    theta[2 * r : 2 * r + (k if diagonal else k * k)] += (1.0 if diagonal else torch.eye(k, dtype=torch.float64).ravel())
    params = _unpack(theta, r, k, diagonal)
    shared = fuzzy._data_term_grad(params, lp, conf, y, w)
    monkeypatch.setattr(precal_numerics, "SHORT_ROWS", 0)
    per_row = fuzzy._data_term_grad(params, lp, conf, y, w)
    assert math.isfinite(shared[0]) and shared[0] == pytest.approx(per_row[0], rel=1e-13)
    for a, b in zip(shared[1], per_row[1]):
        assert_allclose(a.numpy(), b.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("diagonal", [False, True])
def test_preconditioned_stage_two_reaches_the_plain_optimum(diagonal, monkeypatch):
    """Preconditioning changes L-BFGS' coordinates, not the problem: with a tight tolerance the gated fit
    reaches the objective plain L-BFGS reaches (or lower), in fewer iterations."""
    import precal.calibration.fuzzy as fuzzy

    zt, yt, versions, w, first, gates = _stage_two_problem(diagonal, max_iter=2000, tol=1e-12)
    results = {}
    for name, cap in (("plain", 0), ("preconditioned", fuzzy._PRECONDITION_MAX_PARAMS)):
        monkeypatch.setattr(fuzzy, "_PRECONDITION_MAX_PARAMS", cap)
        seen = []
        original = fuzzy.minimize

        def recording(fun, x0, _seen=seen, _original=original, **kw):
            result = _original(fun, x0, **kw)
            _seen.append(result)
            return result

        monkeypatch.setattr(fuzzy, "minimize", recording)
        gates.fit(versions, yt, w, first.coef_, first.intercept_)
        monkeypatch.setattr(fuzzy, "minimize", original)
        results[name] = seen[0]
    plain, pre = results["plain"], results["preconditioned"]
    assert pre.fun <= plain.fun + 1e-9 * abs(plain.fun)
    assert pre.nit < plain.nit


@pytest.mark.parametrize("diagonal", [False, True])
def test_penalty_is_the_quadratic_form_of_its_hessian(diagonal):
    """Stage 2 evaluates the penalty as ½ θᵀ P θ with P its Hessian at one point: that holds only because every
    term is the square of a linear map of θ (no constant, no linear term), at any θ and any standardisation."""
    from precal.calibration.fuzzy import _penalty

    gen = torch.Generator().manual_seed(3 + diagonal)
    r, k = 3, 5
    shift = torch.randn(k, generator=gen, dtype=torch.float64)
    scale = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5

    def penalty(t):
        return _penalty(t, k, n_regions=r, diagonal=diagonal, reg_lambda=0.7, reg_mu=0.2, reg_region=3.0,
                        shift=shift, scale=scale, reg_diag=0.4)

    n = _n_theta(r, k, diagonal)
    hess = torch.autograd.functional.hessian(penalty, torch.randn(n, generator=gen, dtype=torch.float64))
    for _ in range(3):
        theta = (5.0 * torch.randn(n, generator=gen, dtype=torch.float64)).requires_grad_(True)
        value = penalty(theta)
        value.backward()
        assert float(value.detach()) == pytest.approx(0.5 * float(theta.detach() @ hess @ theta.detach()), rel=1e-12)
        assert_allclose(theta.grad.numpy(), (hess @ theta.detach()).numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("diagonal", [False, True])
def test_shared_map_penalty_is_dirichlets(diagonal):
    """The shared map's penalty is DirichletCalibrator's (odir_penalty, with reg_diag) at the
    equivalent map with the smallest penalty, so stage 2 starts from stage 1's objective."""
    from precal.calibration.dirichlet import _canonical_coef, odir_penalty
    from precal.calibration.fuzzy import _penalty

    k, r = 4, 2
    rng = np.random.default_rng(3)
    theta = rng.normal(size=_n_theta(r, k, diagonal))
    at = 2 * r + (k if diagonal else k * k) + k
    theta[at:] = 0.0  # no deviations
    ones, zeros = torch.ones(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    got = _penalty(torch.from_numpy(theta), k, n_regions=r, diagonal=diagonal, reg_lambda=0.3, reg_mu=0.2,
                   reg_region=5.0, shift=zeros, scale=ones, reg_diag=0.7)
    _, _, coefs, intercepts = _unpack(torch.from_numpy(theta), r, k, diagonal)
    w, b = coefs[0].numpy(), intercepts[0].numpy()
    w = w if diagonal else _canonical_coef(w)
    want = odir_penalty(w, b - b.mean(), 0.3, 0.2, 0.7)[0]
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_confidence_labels(fitted, data):
    z, _ = data
    labels = fitted.predict_confidence_label(z)
    assert labels.shape == (len(z),)
    assert set(labels) <= {"low", "moderate", "high"}
    # the region whose centre is nearest to the calibrated top confidence
    q = fitted.predict_proba(z).max(axis=1)
    nearest = np.abs(q[:, None] - fitted.centers_).argmin(axis=1)
    assert_array_equal(labels, np.array(["low", "moderate", "high"])[nearest])


def test_confidence_labels_are_monotone_in_confidence(fitted, data):
    """Unequal widths must not make a higher confidence get a lower label."""
    z, _ = data
    skewed = clone(fitted)
    skewed.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    skewed.widths_ = np.array([0.05, 0.02, 0.5])  # the widest membership would win far from all centres
    scaled = z[:, None, :] * np.linspace(0.0, 3.0, 40)[None, :, None]
    flat = scaled.reshape(-1, z.shape[1])
    rank = {"low": 0, "moderate": 1, "high": 2}
    conf = skewed.predict_proba(flat).max(axis=1)
    order = np.argsort(conf, kind="stable")
    ranks = np.array([rank[v] for v in skewed.predict_confidence_label(flat)])[order]
    assert (np.diff(ranks) >= 0).all()


def test_custom_region_names_and_defaults(data):
    z, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cal = FuzzyDirichletCalibrator(n_regions=2, region_names=["unsure", "sure"], max_iter=30).fit(z, y)
    assert set(cal.predict_confidence_label(z)) <= {"unsure", "sure"}
    assert FuzzyDirichletCalibrator(n_regions=2)._names() == ("low", "high")
    assert FuzzyDirichletCalibrator(n_regions=1)._names() == ("all",)
    assert FuzzyDirichletCalibrator(n_regions=4)._names() == ("region 1", "region 2", "region 3", "region 4")


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_regions": 0}, "n_regions"),
        ({"n_regions": 2.5}, "n_regions"),
        ({"map": "dense"}, "map"),
        ({"noise": "int3"}, "noise"),
        ({"loss": "brier"}, "loss"),
        ({"region_names": ("a", "b")}, "region_names"),
        ({"region_names": "low"}, "region_names"),
        ({"region_names": ("low", "low", "high")}, "distinct"),
        ({"n_noise_copies": -1}, "n_noise_copies"),
        ({"reg_lambda": -1.0}, "reg_lambda"),
        ({"soft_ece_weight": float("nan")}, "soft_ece_weight"),
    ],
)
def test_bad_hyperparameters_raise(data, params, match):
    z, y = data
    with pytest.raises(ValueError, match=match):
        FuzzyDirichletCalibrator(**params).fit(z, y)


@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_torch_export_of_the_gated_maps_takes_batches(data, map_):
    z, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cal = FuzzyDirichletCalibrator(map=map_, check_gates=False, max_iter=30, random_state=0).fit(z, y)
    assert cal.gated_
    module = cal.to_torch(output="proba")
    with torch.no_grad():
        batched = module(torch.from_numpy(z).reshape(2, 10, -1, z.shape[1]))
    assert_allclose(batched.reshape(len(z), -1).numpy(), cal.predict_proba(z), atol=1e-6)


def test_json_round_trip_and_torch_export(fitted, data):
    z, _ = data
    blob = json.loads(json.dumps(fitted.to_dict()))
    again = FuzzyDirichletCalibrator.from_dict(blob)
    assert_array_equal(again.predict_proba(z), fitted.predict_proba(z))
    assert_array_equal(again.predict_confidence_label(z), fitted.predict_confidence_label(z))
    assert again.get_params() == fitted.get_params()
    with torch.no_grad():
        p32 = fitted.to_torch(output="proba")(torch.from_numpy(z).float()).numpy()
        p64 = fitted.to_torch(output="proba")(torch.from_numpy(z)).numpy()
    assert_allclose(p32, fitted.predict_proba(z), atol=1e-5)
    assert_allclose(p64, fitted.predict_proba(z), atol=1e-5)  # float32 buffers, as every calibrator
    for key, value in (("coefs_", [[1.0]]), ("widths_", [-1.0, 1.0, 1.0]), ("centers_", [0.5])):
        bad = json.loads(json.dumps(blob))
        bad["state"][key] = value
        with pytest.raises(ValueError, match=key):
            FuzzyDirichletCalibrator.from_dict(bad)


def test_parameter_count_and_size(fitted, data):
    z, y = data
    r, k = 3, 4
    assert fitted.n_parameters_ == 2 * r + r * (k * k + k) == 66
    assert fitted.nbytes_ == 4 * fitted.n_parameters_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        diag = FuzzyDirichletCalibrator(map="diagonal", n_regions=5, max_iter=20).fit(z, y)
    assert diag.n_parameters_ == 2 * 5 + 5 * 2 * k
    theta = torch.zeros(_n_theta(5, k, True), dtype=torch.float64)
    assert [t.numel() for t in _unpack(theta, 5, k, True)] == [5, 5, 5 * k, 5 * k]


def test_loss_with_soft_ece(data):
    z, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cal = FuzzyDirichletCalibrator(loss="nll+soft_ece", noise=None, max_iter=100).fit(z, y)
    p = cal.predict_proba(z)
    assert np.isfinite(p).all()
    assert_allclose(p.sum(axis=1), 1.0)


def test_non_convergence_warns_and_keeps_finite_parameters(data):
    z, y = data
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        cal = FuzzyDirichletCalibrator(max_iter=2, check_gates=False).fit(z, y)
    for name in ("centers_", "widths_", "coefs_", "intercepts_"):
        assert np.isfinite(getattr(cal, name)).all()


def test_chunked_objective_gives_the_same_fit(data, monkeypatch):
    """The fit accumulates the NLL's gradient chunk by chunk; chunks must not change the result."""
    import precal.calibration.fuzzy as fuzzy

    z, y = data
    params = {"random_state": 0, "max_iter": 30, "loss": "nll+soft_ece"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = FuzzyDirichletCalibrator(**params).fit(z, y)
        monkeypatch.setattr(fuzzy, "_CHUNK_ELEMENTS", 7 * 3 * 3 * 16)  # 7 rows per chunk
        chunked = FuzzyDirichletCalibrator(**params).fit(z, y)
    assert_allclose(chunked.predict_proba(z), whole.predict_proba(z), atol=1e-9)
    assert_allclose(chunked.coefs_, whole.coefs_, atol=1e-7)


def test_stage_two_blocks_on_several_threads_give_the_same_bits(data, monkeypatch):
    """The data term's blocks are shared among threads and summed in block order, and everything else
    runs on one thread: precal's budget 1 or 3, the same fit to the last bit."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import precal
    import precal.calibration.fuzzy as fuzzy

    z, y = data
    monkeypatch.setattr(fuzzy, "_BLOCK_ELEMENTS", 16 * 40)  # 40 rows per block: about 30 blocks
    calls = spy_map_blocks(monkeypatch, precal._threads)
    inside = []  # torch's and the BLAS pools' thread counts inside each stage-2 fit
    real_fit = fuzzy._GateFit._fit

    def spying_fit(self, *args):
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        inside.append((torch.get_num_threads(), max(blas, default=1)))
        return real_fit(self, *args)

    monkeypatch.setattr(fuzzy._GateFit, "_fit", spying_fit)
    # the fit's own budget above one thread for this small data, on any machine
    monkeypatch.setattr(precal._threads, "MIN_PARALLEL_ELEMENTS", 1)  # 0 elements still mean one thread
    monkeypatch.setattr(precal._threads, "available_cpus", lambda *a, **k: 3)
    fits = []
    saved = torch.get_num_threads()
    for n_threads in (1, 3):
        monkeypatch.setattr(fuzzy, "thread_budget", lambda size, n=n_threads: n)  # whatever the data's size
        torch.set_num_threads(n_threads)
        try:
            with threadpool_limits(limits=n_threads), precal.config_context(n_threads=n_threads):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    # check_gates=False: the fitted maps are stage 2's own (the gates are not dropped)
                    fits.append(FuzzyDirichletCalibrator(random_state=0, max_iter=30, check_gates=False).fit(z, y))
        finally:
            torch.set_num_threads(saved)
    assert any(n == 3 and blocks > 1 for blocks, n in calls)
    assert inside and set(inside) == {(1, 1)}  # stage 2's own torch and BLAS work on one thread
    assert fits[0].gated_ and fits[1].gated_
    for name in ("centers_", "widths_", "coefs_", "intercepts_"):
        assert_array_equal(getattr(fits[0], name), getattr(fits[1], name))


def test_fit_work_counts_stage_two():
    x = np.zeros((1000, 10))
    # three versions (two noise copies) of 1 000 rows, R K^2 = 300 products each for a full map
    assert FuzzyDirichletCalibrator()._fit_work(x) == 3 * 1000 * 300
    assert FuzzyDirichletCalibrator(noise=None, map="diagonal")._fit_work(x) == 1000 * 3 * 10  # R K per row
    assert FuzzyDirichletCalibrator(n_noise_copies="two")._fit_work(x) > 0  # the fit's checks say what is wrong


def test_strong_region_penalty_nests_dirichlet_calibration(data):
    """``reg_region -> inf`` ties every region to the shared map: Dirichlet calibration."""
    z, y = data
    ref = DirichletCalibrator().fit(z, y)
    fz = FuzzyDirichletCalibrator(noise=None, reg_region=1e6).fit(z, y)
    assert_allclose(fz.predict_proba(z), ref.predict_proba(z), atol=1e-4)
    assert_allclose(fz.coefs_, np.broadcast_to(fz.coefs_[0], fz.coefs_.shape), atol=1e-4)


def test_stage_two_fit_warns_nothing_in_a_fresh_process():
    """The preconditioner's Hessian must not go through torch's forward-mode AD, whose first use in a process
    emits torch.jit's DeprecationWarning at the user (a fresh process: the warning comes once per process)."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from precal.calibration import FuzzyDirichletCalibrator\n"
            "rng = np.random.default_rng(0)\n"
            "z, y = rng.normal(size=(300, 4)), rng.integers(0, 4, 300)\n"
            "assert FuzzyDirichletCalibrator(check_gates=False).fit(z, y).gated_\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("check_gates", [True, False])
def test_logits_whose_curvature_overflows_fall_back_to_plain_lbfgs(check_gates):
    """Finite logits so large that the squared log-probabilities overflow give a non-finite preconditioner:
    stage 2 then runs unpreconditioned (as before it existed) instead of failing in the Cholesky factor."""
    rng = np.random.default_rng(0)
    z, y = 1e160 * rng.normal(size=(200, 3)), rng.integers(0, 3, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fz = FuzzyDirichletCalibrator(check_gates=check_gates).fit(z, y)
    assert np.isfinite(fz.predict_proba(z)).all()

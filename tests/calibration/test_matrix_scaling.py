"""StructuredMatrixScaling against its formulas, its invariants and probmetrics' reference implementation."""

import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning

from precal.calibration import StructuredMatrixScaling, TemperatureScaling, load_calibrator
from precal.calibration.matrix_scaling import (
    AUTO_FULL_MAX_CLASSES,
    fit_matrix_scaling,
    matrix_scaling_objective,
    mixture_weight,
    penalty_strengths,
    scaled_log_probabilities,
)

from ..conftest import make_logits

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _biased_logits(n, k, seed, bias=2.0):
    """Over-confident logits with class 0 under-scored by ``bias``: one temperature cannot fix the
    ranking, an intercept can."""
    z, y = make_logits(n=n, k=k, seed=seed)
    z = z.copy()
    z[:, 0] -= bias
    return z, y


def _features(z, y, w=None):
    """The features the estimator builds: TS's temperature and the uniform share ``1 / (n + 1)``."""
    zt = torch.from_numpy(z)
    t = TemperatureScaling().fit(z, y, sample_weight=w).temperature_
    n = len(y) if w is None else float(np.sum(w))
    return scaled_log_probabilities(zt, t, mixture_weight(n)), t


def _numpy_objective(theta, x, y, w, strengths, diagonal):
    """The paper's objective written out with numpy, independently of the torch code."""
    n, k = x.shape
    if diagonal:
        delta, b = np.diag(theta[:k]), theta[k:]
    else:
        delta, b = theta[: k * k].reshape(k, k), theta[k * k:]
    a = x @ (np.eye(k) + delta).T + b
    logp = a - a.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    w = np.ones(n) if w is None else w
    nll = -np.sum(w * logp[np.arange(n), y]) / w.sum()
    r_b, r_d, r_o = strengths
    off = delta - np.diag(np.diag(delta))
    return nll + r_b * np.sum(b**2) + r_d * np.sum(np.diag(delta) ** 2) + r_o * np.sum(off**2)


# --------------------------------------------------------------------------- formulas
def test_penalty_strengths_are_the_papers_formulas():
    r_b, r_d, r_o = penalty_strengths(500.0, 10, reg_intercept=2.0, reg_diagonal=3.0, reg_off_diagonal=0.5,
                                      rho=1.5, tau=0.5)
    assert r_b == pytest.approx(2.0 * 10**1.5 / 500**0.5, rel=1e-14)
    assert r_d == pytest.approx(3.0 * 10**1.5 / 500**0.5, rel=1e-14)
    assert r_o == pytest.approx(0.5 * 90**1.5 / 500**0.5, rel=1e-14)


def test_features_are_the_log_of_the_uniform_mixed_ts_probabilities():
    z, y = make_logits(n=300, k=5, seed=1)
    x = scaled_log_probabilities(torch.from_numpy(z), 2.5, 0.01).numpy()
    assert_allclose(x, np.log(0.99 * _softmax(z / 2.5) + 0.01 / 5), rtol=1e-12)
    huge = scaled_log_probabilities(torch.from_numpy(z * 1e4), 1.0, 0.01).numpy()
    assert np.isfinite(huge).all() and huge.min() >= np.log(0.01 / 5) - 1e-12


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_equals_the_formula_and_its_gradient_is_exact(diagonal, weighted):
    z, y = make_logits(n=200, k=4, seed=2)
    rng = np.random.default_rng(3)
    w = rng.uniform(0.1, 2.0, size=len(y)) if weighted else None
    x, _ = _features(z, y, w)
    k = 4
    theta = 0.3 * rng.normal(size=2 * k if diagonal else k * (k + 1))
    strengths = (0.05, 0.2, 0.7)
    wt = None if w is None else torch.from_numpy(w)
    yt = torch.from_numpy(y)
    value, grad = matrix_scaling_objective(torch.from_numpy(theta), x, yt, wt, strengths, diagonal=diagonal)
    assert float(value) == pytest.approx(_numpy_objective(theta, x.numpy(), y, w, strengths, diagonal), rel=1e-12)
    # central finite differences of the objective
    h = 1e-6
    fd = np.array([
        (float(matrix_scaling_objective(torch.from_numpy(theta + h * e), x, yt, wt, strengths, diagonal=diagonal)[0])
         - float(matrix_scaling_objective(torch.from_numpy(theta - h * e), x, yt, wt, strengths, diagonal=diagonal)[0]))
        / (2 * h) for e in np.eye(len(theta))])
    assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-8)

    # torch.autograd.gradcheck of an autograd Function whose backward is the hand-written gradient
    class _Objective(torch.autograd.Function):
        @staticmethod
        def forward(ctx, th):
            v, g = matrix_scaling_objective(th, x, yt, wt, strengths, diagonal=diagonal)
            ctx.save_for_backward(g)
            return v

        @staticmethod
        def backward(ctx, upstream):
            return upstream * ctx.saved_tensors[0]

    assert torch.autograd.gradcheck(_Objective.apply, (torch.from_numpy(theta).requires_grad_(),), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_fit_is_the_optimum_of_the_objective(map_):
    z, y = _biased_logits(800, 5, seed=4)
    sms = StructuredMatrixScaling(map=map_).fit(z, y)
    x, t = _features(z, y)
    assert sms.temperature_ == pytest.approx(t, rel=1e-14)
    assert sms.smoothing_ == pytest.approx(1.0 / 801.0, rel=1e-14)
    k = 5
    delta = sms.coef_ - (1.0 if map_ == "diagonal" else np.eye(k))
    theta = np.concatenate([delta.reshape(-1), sms.intercept_])
    strengths = penalty_strengths(len(y), k, reg_intercept=1.0, reg_diagonal=1.0, reg_off_diagonal=1.0, rho=1.0,
                                  tau=1.0)
    value, grad = matrix_scaling_objective(torch.from_numpy(theta), x, torch.from_numpy(y), None, strengths,
                                           diagonal=map_ == "diagonal")
    assert float(grad.abs().max()) < 1e-6
    # a few random perturbations never do better (convexity: the stationary point is the minimum)
    rng = np.random.default_rng(5)
    for _ in range(5):
        other = theta + 1e-3 * rng.normal(size=theta.shape)
        assert float(matrix_scaling_objective(torch.from_numpy(other), x, torch.from_numpy(y), None, strengths,
                                              diagonal=map_ == "diagonal")[0]) >= float(value)


@pytest.mark.parametrize("map_", ["full", "diagonal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_objective_is_never_above_temperature_scalings(map_, seed):
    z, y = make_logits(n=150, k=3, scale=float(1 + 5 * seed), seed=seed)
    x, _ = _features(z, y)
    strengths = penalty_strengths(len(y), 3, reg_intercept=1.0, reg_diagonal=1.0, reg_off_diagonal=1.0, rho=1.0,
                                  tau=1.0)
    diagonal = map_ == "diagonal"
    yt = torch.from_numpy(y)
    start = float(matrix_scaling_objective(torch.zeros(6 if diagonal else 12, dtype=torch.float64), x, yt, None,
                                           strengths, diagonal=diagonal)[0])
    fit = fit_matrix_scaling(x, yt, None, strengths, diagonal=diagonal)
    assert fit.objective <= start
    # the start is the NLL of the TS-mix probabilities (1 - c) softmax(z/T) + c/K
    p0 = np.exp(x.numpy())
    assert start == pytest.approx(-np.mean(np.log(p0[np.arange(len(y)), y])), rel=1e-12)


def test_huge_regularisation_is_temperature_scaling_mixed_with_the_uniform():
    z, y = make_logits(n=400, k=4, seed=6)
    sms = StructuredMatrixScaling(reg_intercept=1e12, reg_diagonal=1e12, reg_off_diagonal=1e12).fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    c = 1.0 / 401.0
    assert_allclose(sms.coef_, np.eye(4), atol=1e-10)
    assert_allclose(sms.intercept_, 0.0, atol=1e-10)
    assert_allclose(sms.predict_proba(z), (1 - c) * ts.predict_proba(z) + c / 4, rtol=1e-9, atol=1e-12)
    assert_array_equal(sms.predict(z), ts.predict(z))


def test_regularisation_shrinks_the_map_towards_temperature_scaling():
    z, y = _biased_logits(1000, 4, seed=7)
    distances = []
    for reg in (0.01, 1.0, 100.0):
        sms = StructuredMatrixScaling(reg_intercept=reg, reg_diagonal=reg, reg_off_diagonal=reg).fit(z, y)
        distances.append(np.linalg.norm(sms.coef_ - np.eye(4)) + np.linalg.norm(sms.intercept_))
    assert distances[0] > distances[1] > distances[2] > 0


def test_the_intercept_recovers_accuracy_that_temperature_scaling_cannot():
    z, y = _biased_logits(4000, 4, seed=8, bias=3.0)
    fit, test = slice(0, 2000), slice(2000, None)
    sms = StructuredMatrixScaling().fit(z[fit], y[fit])
    ts = TemperatureScaling().fit(z[fit], y[fit])
    acc_sms = np.mean(sms.predict(z[test]) == y[test])
    acc_ts = np.mean(ts.predict(z[test]) == y[test])
    assert acc_sms > acc_ts + 0.02
    assert sms.intercept_[0] > sms.intercept_[1:].max()  # the under-scored class is lifted
    assert sms.score(z[test], y[test]) > ts.score(z[test], y[test])


# --------------------------------------------------------------------------- the map's form
@pytest.mark.parametrize("k", [3, 7])
def test_diagonal_map_has_2k_parameters_and_full_map_k_k_plus_1(k):
    z, y = make_logits(n=300, k=k, seed=9)
    diag = StructuredMatrixScaling(map="diagonal").fit(z, y)
    full = StructuredMatrixScaling(map="full").fit(z, y)
    assert diag.coef_.shape == (k,) and diag.intercept_.shape == (k,) and diag.map_ == "diagonal"
    assert diag.coef_.size + diag.intercept_.size == 2 * k
    assert full.coef_.shape == (k, k) and full.intercept_.shape == (k,) and full.map_ == "full"
    # the diagonal map is the full map restricted to a diagonal Δ: its predictions follow the formula
    x, _ = _features(z, y)
    assert_allclose(diag.predict_proba(z), _softmax(x.numpy() * diag.coef_ + diag.intercept_), rtol=1e-10)
    assert_allclose(full.predict_proba(z), _softmax(x.numpy() @ full.coef_.T + full.intercept_), rtol=1e-10)


@pytest.mark.parametrize("k, expected", [(AUTO_FULL_MAX_CLASSES, "full"), (AUTO_FULL_MAX_CLASSES + 1, "diagonal")])
def test_auto_map_is_full_up_to_the_documented_class_count(k, expected):
    rng = np.random.default_rng(10)
    y = np.arange(300) % k
    z = 3.0 * (np.eye(k)[y] + rng.normal(size=(300, k)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert StructuredMatrixScaling(max_iter=20).fit(z, y).map_ == expected


# --------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_sample_weight_equals_repeated_rows(map_):
    z, y = _biased_logits(400, 4, seed=11)
    w = np.random.default_rng(12).integers(0, 4, size=len(y))
    weighted = StructuredMatrixScaling(map=map_).fit(z, y, sample_weight=w)
    repeated = StructuredMatrixScaling(map=map_).fit(np.repeat(z, w, axis=0), np.repeat(y, w))
    assert weighted.smoothing_ == pytest.approx(repeated.smoothing_, rel=1e-14)
    assert_allclose(weighted.coef_, repeated.coef_, atol=1e-6)
    assert_allclose(weighted.intercept_, repeated.intercept_, atol=1e-6)
    assert_allclose(weighted.predict_proba(z), repeated.predict_proba(z), atol=1e-7)


def test_float32_float64_and_tensor_inputs_give_the_same_fit():
    z, y = _biased_logits(600, 5, seed=13)
    ref = StructuredMatrixScaling().fit(z, y)
    tensor = StructuredMatrixScaling().fit(torch.from_numpy(z), torch.from_numpy(y))
    assert_allclose(tensor.coef_, ref.coef_, rtol=1e-10, atol=1e-12)
    assert_allclose(tensor.intercept_, ref.intercept_, rtol=1e-10, atol=1e-12)
    out = tensor.predict_proba(torch.from_numpy(z), return_tensor=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert_allclose(out.numpy(), ref.predict_proba(z), atol=1e-12)
    z32 = z.astype(np.float32)
    f32 = StructuredMatrixScaling().fit(z32, y)
    f64 = StructuredMatrixScaling().fit(z32.astype(np.float64), y)
    assert_allclose(f32.predict_proba(z32), f64.predict_proba(z32), atol=1e-6)
    half = StructuredMatrixScaling().fit(torch.from_numpy(z32).half(), y)
    assert np.isfinite(half.coef_).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_to_torch_reproduces_predict_proba(device, map_):
    z, y = _biased_logits(800, 6, seed=14)
    sms = StructuredMatrixScaling(map=map_).fit(z, y)
    with torch.no_grad():
        p64 = sms.to_torch(output="proba").to(device)(torch.from_numpy(z).to(device)).cpu().numpy()
        p32 = sms.to_torch(output="proba").to(device)(torch.from_numpy(z).float().to(device)).cpu().numpy()
    assert_allclose(p64, sms.predict_proba(z), rtol=1e-12, atol=1e-15)
    assert_allclose(p32, sms.predict_proba(z), atol=1e-5)


@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_to_dict_round_trip(map_):
    z, y = _biased_logits(500, 4, seed=15)
    sms = StructuredMatrixScaling(map=map_, reg_intercept=0.5, rho=0.8).fit(z, y)
    data = json.loads(json.dumps(sms.to_dict()))
    again = load_calibrator(data)
    assert isinstance(again, StructuredMatrixScaling) and again.map_ == sms.map_
    assert again.get_params() == sms.get_params()
    for name in ("temperature_", "smoothing_", "coef_", "intercept_", "n_iter_"):
        assert_array_equal(getattr(again, name), getattr(sms, name))
    assert_array_equal(again.predict_proba(z), sms.predict_proba(z))


@pytest.mark.parametrize("key, value, match", [
    ("coef_", [[1.0, 0.0], [0.0, 1.0]], "coef_"),
    ("coef_", [1.0, 1.0, 1.0], "coef_"),
    ("intercept_", [0.0, 0.0], "intercept_"),
    ("smoothing_", 0.0, "smoothing_"),
    ("smoothing_", 1.5, "smoothing_"),
    ("temperature_", -1.0, "temperature_"),
    ("n_iter_", 2.5, "n_iter_"),
])
def test_from_dict_rejects_malformed_state(key, value, match):
    z, y = make_logits(n=300, k=4, seed=16)
    data = json.loads(json.dumps(StructuredMatrixScaling().fit(z, y).to_dict()))
    data["state"][key] = value
    with pytest.raises(ValueError, match=match):
        load_calibrator(data)


@pytest.mark.parametrize("params, error, match", [
    ({"map": "banded"}, ValueError, "map"),
    ({"map": None}, ValueError, "map"),
    ({"reg_intercept": -1.0}, ValueError, "reg_intercept"),
    ({"reg_diagonal": float("nan")}, ValueError, "reg_diagonal"),
    ({"reg_off_diagonal": float("inf")}, ValueError, "reg_off_diagonal"),
    ({"reg_off_diagonal": "strong"}, TypeError, "reg_off_diagonal"),
    ({"rho": -0.5}, ValueError, "rho"),
    ({"tau": True}, TypeError, "tau"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"max_iter": 2.5}, TypeError, "max_iter"),
    ({"tol": 0.0}, ValueError, "tol"),
])
def test_bad_parameters_are_refused_at_fit(params, error, match):
    z, y = make_logits(n=100, k=3)
    with pytest.raises(error, match=match):
        StructuredMatrixScaling(**params).fit(z, y)


@pytest.mark.parametrize("X, y, match", [
    (np.array([[0.0, np.nan, 1.0]] * 4), [0, 1, 2, 0], "NaN"),
    (np.ones((4, 3, 1)), [0, 1, 2, 0], "2-D"),
    (np.ones((4, 3)), [0, 1, 2], "Inconsistent"),
    (np.ones((4, 2)), [0, 1, 2, 0], "columns"),
])
def test_bad_data_is_refused(X, y, match):
    with pytest.raises(ValueError, match=match):
        StructuredMatrixScaling().fit(X, np.asarray(y))


def test_max_iter_reached_warns_and_keeps_a_map_no_worse_than_the_start():
    z, y = _biased_logits(500, 5, seed=17)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        short = StructuredMatrixScaling(max_iter=2).fit(z, y)
    full = StructuredMatrixScaling().fit(z, y)
    assert short.n_iter_ == 2 and full.n_iter_ > 2
    assert np.isfinite(short.coef_).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        StructuredMatrixScaling().fit(z, y)


def test_single_logit_binary_is_the_two_column_map():
    z, y = make_logits(n=400, k=2, seed=18)
    d = z[:, 1] - z[:, 0]
    one = StructuredMatrixScaling().fit(d, y)
    two = StructuredMatrixScaling().fit(np.stack([np.zeros_like(d), d], axis=1), y)
    assert one.coef_.shape == (2, 2)
    assert_allclose(one.predict_proba(d), two.predict_proba(np.stack([np.zeros_like(d), d], axis=1)), atol=1e-12)


# --------------------------------------------------------------------------- probmetrics
_PROBMETRICS_SCRIPT = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from probmetrics.calibrators.logistic import SMSCalibrator, SVSCalibrator
d = np.load(sys.argv[1]); kind = sys.argv[3]
cal = (SMSCalibrator if kind == "full" else SVSCalibrator)(print_init_info=False)
cal.fit(d["p_fit"], d["y_fit"])                       # as shipped: float32 features, float32 BFGS
p32 = cal.predict_proba(d["p_eval"])
ts = cal.ts_                                           # its 'ts-mix' first stage
x_fit = np.log(ts.predict_proba(d["p_fit"]))           # the same features without the float32 rounding
x_eval = np.log(ts.predict_proba(d["p_eval"]))
n, k = x_fit.shape
y = torch.as_tensor(d["y_fit"], dtype=torch.long)
if kind == "full":
    W = cal._fit_bfgs(torch.tensor(x_fit), y, num_classes=k, reg_intercept=k / n, reg_diagonal=k / n,
                      reg_off_diagonal=k * (k - 1) / n)
    coef, intercept = W[:, :k], W[:, k]
else:
    coef, intercept = cal._fit_bfgs(torch.tensor(x_fit), y, num_classes=k, reg_intercept=k / n, reg_diagonal=k / n)
np.savez(sys.argv[2], p32=p32, x_fit=x_fit, coef=coef, intercept=intercept, invtemp=np.float64(ts.cal_.invtemp_))
"""


def _probmetrics_python():
    """The interpreter of the separate venv that has probmetrics, or a skip reason."""
    candidate = os.environ.get("PRECAL_PROBMETRICS_PYTHON") or "/work/venvs/qbar/bin/python"
    if not Path(candidate).is_file():
        return None, f"no probmetrics interpreter at {candidate} (set PRECAL_PROBMETRICS_PYTHON)"
    proc = subprocess.run([candidate, "-c", "import probmetrics.calibrators.logistic"], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        return None, f"{candidate} cannot import probmetrics: {proc.stderr.strip().splitlines()[-1:]}"
    return candidate, None


@pytest.mark.slow
@pytest.mark.parametrize("map_", ["full", "diagonal"])
def test_agrees_with_probmetrics_structured_matrix_scaling(map_, tmp_path):
    """probmetrics' SMSCalibrator (full) / SVSCalibrator (diagonal) on the same probabilities.

    probmetrics rounds its features to float32 and stops its (float32) BFGS at torchmin's
    gradient tolerance 1e-5: its probabilities agree with precal's to about 1e-4 - 1e-3.
    The sharp checks run on the same features in float64: the same temperature and features
    (to 1e-7), and precal's objective at precal's optimum is no higher than at probmetrics'.
    """
    python, reason = _probmetrics_python()
    if python is None:
        pytest.skip(reason)
    z, y = _biased_logits(1200, 5, seed=19)
    fit, ev = slice(0, 600), slice(600, None)
    p = _softmax(z)
    np.savez(tmp_path / "in.npz", p_fit=p[fit], y_fit=y[fit], p_eval=p[ev])
    proc = subprocess.run([python, "-c", _PROBMETRICS_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
                           map_], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ref = np.load(tmp_path / "out.npz")
    sms = StructuredMatrixScaling(map=map_).fit(z[fit], y[fit])
    assert sms.temperature_ * float(ref["invtemp"]) == pytest.approx(1.0, abs=1e-7)
    x, _ = _features(z[fit], y[fit])
    assert_allclose(x.numpy(), ref["x_fit"], atol=1e-7)
    k = 5
    strengths = penalty_strengths(600, k, reg_intercept=1.0, reg_diagonal=1.0, reg_off_diagonal=1.0, rho=1.0, tau=1.0)
    eye = 1.0 if map_ == "diagonal" else np.eye(k)

    def objective(coef, intercept):
        theta = np.concatenate([(np.asarray(coef, dtype=np.float64) - eye).reshape(-1), intercept])
        return float(matrix_scaling_objective(torch.from_numpy(theta), x, torch.from_numpy(y[fit]), None, strengths,
                                              diagonal=map_ == "diagonal")[0])

    ours, theirs = objective(sms.coef_, sms.intercept_), objective(ref["coef"], ref["intercept"])
    assert ours <= theirs + 1e-12
    assert theirs - ours < 1e-6  # both at the same minimum, probmetrics to its gradient tolerance
    assert_allclose(sms.coef_, ref["coef"], atol=1e-3)
    assert_allclose(sms.intercept_, ref["intercept"], atol=1e-3)
    assert_allclose(sms.predict_proba(z[ev]), ref["p32"], atol=2e-3)


def test_weights_are_counts_and_a_total_near_zero_gives_uniform_probabilities():
    """c = 1 / (n + 1) with n the total weight: 1e-300 rounded c to 1 and log(1 - c) failed
    ("math domain error"); it is kept below 1, so the features are the uniform floor."""
    z, y = _biased_logits(200, 3, seed=23)
    for total in (1e-300 * 200, 1e-16 * 200):
        cal = StructuredMatrixScaling().fit(z, y, sample_weight=np.full(200, total / 200))
        assert 0.0 < cal.smoothing_ < 1.0
        assert_allclose(cal.predict_proba(z), 1.0 / 3.0, atol=1e-6)
    counts = StructuredMatrixScaling().fit(z, y, sample_weight=np.full(200, 2.0))
    assert_allclose(counts.predict_proba(z), StructuredMatrixScaling().fit(np.repeat(z, 2, 0), np.repeat(y, 2)
                                                                            ).predict_proba(z), atol=1e-6)

"""PACSCalibrator: the properties seed 000's method promises, pinned."""

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

from precal import PACSCalibrator, TemperatureScaling
from precal._numerics import log_softmax, softmax
from precal.calibration.pacs import pacs_objective, pacs_risk, precision_epsilon
from precal.emulate import format_info

from ..conftest import make_logits


def heteroscedastic_logits(n=4000, k=6, seed=0):
    """Samples with large logit norms are over-confident, small ones are not: the case PACS targets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    scale = rng.uniform(0.5, 4.0, size=(n, 1))
    return scale * 2.0 * (2.0 * np.eye(k)[y] + rng.normal(size=(n, k))), y


def _nll(p, y):
    return -np.mean(np.log(p[np.arange(len(y)), y]))


@pytest.mark.parametrize("precision, eps", [("bf16", 2.0**-8), ("fp16", 2.0**-11), ("fp8_e4m3", 2.0**-4),
                                             ("fp32", 2.0**-24), (1e-3, 1e-3), ("int8", 0.5 / 127)])
def test_precision_epsilon_is_the_unit_roundoff(precision, eps):
    assert precision_epsilon(precision) == pytest.approx(eps)


def test_risk_formula():
    z = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    assert_allclose(pacs_risk(z, 0.01), [0.05, 0.0])
    p_top = softmax(z).max(axis=1)
    assert_allclose(pacs_risk(z, 0.01, risk="peaked"), np.array([0.05, 0.0]) * 4 * p_top * (1 - p_top))
    assert_allclose(pacs_risk(z, 0.01, norm=1), [0.07, 0.0])
    assert_allclose(pacs_risk(z, 0.01, norm=math.inf), [0.04, 0.0])


@pytest.mark.parametrize("risk", ["norm", "peaked"])
def test_argmax_and_accuracy_unchanged(risk):
    z, y = heteroscedastic_logits()
    pacs = PACSCalibrator(risk=risk).fit(z, y)
    assert_array_equal(pacs.predict_proba(z).argmax(axis=1), z.argmax(axis=1))


def test_lambda_zero_is_temperature_scaling_exactly():
    z, y = heteroscedastic_logits()
    pacs = PACSCalibrator().fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    assert pacs.temperature_scaling_ == ts.temperature_
    pacs.lambda_, pacs.temperature_ = 0.0, ts.temperature_
    assert_array_equal(pacs.predict_proba(z), ts.predict_proba(z))
    assert_array_equal(pacs.decision_function(z), ts.decision_function(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("risk", ["norm", "peaked"])
def test_fitted_nll_never_worse_than_temperature_scaling(seed, risk):
    z, y = heteroscedastic_logits(seed=seed)
    pacs = PACSCalibrator(risk=risk).fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    assert _nll(pacs.predict_proba(z), y) <= _nll(ts.predict_proba(z), y) + 1e-12


def test_homoscedastic_logits_give_small_lambda():
    # one global scale: a sample-adaptive temperature has nothing to add
    z, y = make_logits(n=4000, k=6, scale=3.0)
    pacs = PACSCalibrator().fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    assert _nll(pacs.predict_proba(z), y) == pytest.approx(_nll(ts.predict_proba(z), y), abs=2e-3)


def test_heteroscedastic_logits_are_corrected_better_than_by_temperature_scaling():
    z, y = heteroscedastic_logits(n=8000)  # over-confidence grows with the logit norm itself
    pacs = PACSCalibrator(risk="norm").fit(z[:4000], y[:4000])
    ts = TemperatureScaling().fit(z[:4000], y[:4000])
    assert pacs.lambda_ > 0
    assert _nll(pacs.predict_proba(z[4000:]), y[4000:]) < _nll(ts.predict_proba(z[4000:]), y[4000:]) - 0.02


def test_retargeting_precision_follows_the_formula():
    z, y = heteroscedastic_logits()
    pacs = PACSCalibrator(precision="bf16").fit(z, y)
    t0, lam = pacs.temperature_, pacs.lambda_
    pacs.set_params(precision="fp8_e4m3")
    eps = format_info("fp8_e4m3").unit_roundoff
    expected_t = t0 * (1 + lam * eps * np.linalg.norm(z, axis=1))
    assert_allclose(pacs.sample_temperature(z), expected_t)
    assert_allclose(pacs.predict_proba(z), softmax(z / expected_t[:, None]))
    assert pacs.epsilon_ == format_info("bf16").unit_roundoff  # what it was fitted at


def test_precision_and_lambda_trade_off_exactly():
    # only the product lambda * epsilon matters for the fit: the fitted map is the same
    z, y = heteroscedastic_logits()
    a = PACSCalibrator(precision=1e-3).fit(z, y)
    b = PACSCalibrator(precision=1e-2).fit(z, y)
    assert_allclose(a.lambda_ * 1e-3, b.lambda_ * 1e-2, rtol=1e-5)
    assert_allclose(a.predict_proba(z), b.predict_proba(z), atol=1e-6)


def test_no_full_precision_logits_needed():
    # the signature is the proof: fit(X, y) and predict_proba(X) with the deployed logits only
    z, y = heteroscedastic_logits()
    low = torch.from_numpy(z).to(torch.bfloat16)
    pacs = PACSCalibrator(precision="bf16").fit(low, torch.from_numpy(y))
    assert np.isfinite(pacs.predict_proba(low)).all()


def test_to_torch_equals_predict_proba_for_both_risks():
    z, y = heteroscedastic_logits(n=500)
    for risk in ("norm", "peaked"):
        pacs = PACSCalibrator(risk=risk).fit(z, y)
        with torch.no_grad():
            got = pacs.to_torch(output="proba")(torch.from_numpy(z).float()).numpy()
        assert_allclose(got, pacs.predict_proba(z), atol=1e-5)


@pytest.mark.parametrize("theta", [(1.0, 0.0), (0.7, 0.4), (1e-3, 2.5)])
def test_objective_gradient_matches_finite_differences(theta):
    z, y = heteroscedastic_logits(n=1000)
    zt = torch.from_numpy(z)
    u = zt - zt.amax(dim=1, keepdim=True)
    u_true = u[torch.arange(len(y)), torch.from_numpy(y)]
    r = pacs_risk(z, 2.0**-8)
    rho = torch.from_numpy(r / r.mean())
    w = torch.full((len(y),), 1.0 / len(y), dtype=torch.float64)
    f, grad = pacs_objective(np.array(theta), u, u_true, rho, w, 1.3)
    # the objective is the mean NLL of softmax(z / T(x))
    t = 1.3 * (theta[0] + theta[1] * rho.numpy())
    assert f == pytest.approx(-np.mean(log_softmax(z / t[:, None])[np.arange(len(y)), y]), rel=1e-12)
    h = 1e-6
    for i in range(2):
        step = np.zeros(2)
        step[i] = h * max(abs(theta[i]), 1e-3)
        fd = (pacs_objective(np.array(theta) + step, u, u_true, rho, w, 1.3)[0]
              - pacs_objective(np.array(theta) - step, u, u_true, rho, w, 1.3)[0]) / (2 * step[i])
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_set_params_and_clone():
    pacs = PACSCalibrator(precision="fp16", risk="peaked", norm=1)
    assert clone(pacs).get_params() == pacs.get_params()


@pytest.mark.parametrize("params, exc, match", [
    ({"precision": "fp7"}, ValueError, "Unknown number format"),
    ({"precision": 0.0}, ValueError, r"in \(0, 1\)"),
    ({"precision": -1e-3}, ValueError, r"in \(0, 1\)"),
    ({"precision": float("nan")}, ValueError, r"in \(0, 1\)"),
    ({"precision": 2.0}, ValueError, r"in \(0, 1\)"),  # a 200 % rounding error is no number format
    ({"precision": 10**400}, ValueError, r"in \(0, 1\)"),
    ({"precision": True}, TypeError, "format name"),
    ({"risk": "cubic"}, ValueError, "risk"),
    ({"norm": 0.5}, ValueError, "norm"),
    ({"max_iter": 0}, ValueError, "max_iter"),
])
def test_bad_parameters(params, exc, match):
    z, y = make_logits(n=50, k=3)
    with pytest.raises(exc, match=match):
        PACSCalibrator(**params).fit(z, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_module_stays_finite_where_a_float32_norm_overflows(dtype):
    """||z||² passes float32's maximum for logits beyond about 1e19: the module's norm runs in
    float64, as predict_proba's, instead of returning NaN."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    z = 2.0 * np.eye(3)[y] + rng.normal(size=(300, 3))
    cal = PACSCalibrator().fit(z, y)
    big = torch.from_numpy(z * 1e20).to(dtype)
    with torch.no_grad():
        out = cal.to_torch(output="proba")(big)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.double().numpy(), cal.predict_proba(big.double().numpy()), atol=1e-2)

"""EnsembleTemperatureScaling against a direct implementation of Zhang et al.'s formulas."""

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import minimize, minimize_scalar

from precal.calibration import EnsembleTemperatureScaling, TemperatureScaling, load_calibrator

from ..conftest import make_logits


def _softmax(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _loss(p, y, loss):
    if loss == "nll":
        return -np.mean(np.log(p[np.arange(len(y)), y]))
    onehot = np.eye(p.shape[1])[y]
    return np.mean(np.sum((p - onehot) ** 2, axis=1))


def _paper_ets(z, y, loss):
    """Mix-n-Match ETS written from the paper: T by the loss, then w on the simplex by the loss (SLSQP)."""
    k = z.shape[1]
    t = minimize_scalar(lambda log_t: _loss(_softmax(z / np.exp(log_t)), y, loss), bounds=(-5, 5),
                        method="bounded", options={"xatol": 1e-10}).x
    t = float(np.exp(t))
    p0, p1, p2 = _softmax(z / t), _softmax(z), np.full_like(z, 1.0 / k)

    def objective(w):
        return _loss(w[0] * p0 + w[1] * p1 + w[2] * p2, y, loss)

    res = minimize(objective, np.array([1.0, 0.0, 0.0]), method="SLSQP", bounds=[(0, 1)] * 3,
                   constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1}, options={"ftol": 1e-14})
    return t, res.x, objective(res.x)


def _hard_logits(n, k, seed):
    """Logits whose over-confidence varies by sample, so the mixture helps beyond one temperature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.5
    z *= rng.choice([1.0, 6.0], size=n)[:, None]
    return z, y


@pytest.mark.parametrize("loss", ["nll", "mse"])
@pytest.mark.parametrize("n, k, seed", [(3000, 10, 0), (2000, 100, 1), (1500, 3, 2)])
def test_fit_equals_the_papers_formulas(loss, n, k, seed):
    z, y = _hard_logits(n, k, seed)
    t_ref, w_ref, f_ref = _paper_ets(z, y, loss)
    ets = EnsembleTemperatureScaling(loss=loss).fit(z, y)
    assert_allclose(ets.temperature_, t_ref, rtol=1e-5)
    p = ets.predict_proba(z)
    assert _loss(p, y, loss) <= f_ref + 1e-7  # T agrees to ~1e-8 (Newton stops at tol=1e-4, error ~tol²)
    assert_allclose(ets.weights_, w_ref, atol=2e-4)


def test_predict_proba_is_the_mixture_formula():
    z, y = _hard_logits(2000, 5, 3)
    ets = EnsembleTemperatureScaling().fit(z, y)
    w = ets.weights_
    expected = w[0] * _softmax(z / ets.temperature_) + w[1] * _softmax(z) + w[2] / 5
    assert_allclose(ets.predict_proba(z), expected, rtol=1e-12)
    assert_allclose(np.exp(ets.decision_function(z)), expected, rtol=1e-12)
    assert np.all(w >= 0) and np.isclose(w.sum(), 1.0)


def test_nll_temperature_is_temperature_scalings():
    z, y = _hard_logits(1000, 4, 4)
    assert EnsembleTemperatureScaling().fit(z, y).temperature_ == TemperatureScaling().fit(z, y).temperature_


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 8), scale=st.floats(0.2, 15.0))
def test_fitted_loss_is_never_above_temperature_scalings(seed, k, scale):
    z, y = make_logits(n=150, k=k, scale=scale, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ets = EnsembleTemperatureScaling().fit(z, y)
    ts = TemperatureScaling().fit(z, y)
    assert ets.score(z, y) >= ts.score(z, y) - 1e-10
    assert_array_equal(ets.predict(z), z.argmax(axis=1))


def test_uniform_weight_helps_when_logits_are_far_too_confident_and_stays_finite():
    # huge logits: the raw softmax gives wrong samples probability exp(-1e3) = 0 in float64
    z, y = _hard_logits(2000, 10, 5)
    z = z * 200.0
    ets = EnsembleTemperatureScaling().fit(z, y)
    assert np.isfinite(ets.decision_function(z)).all()
    assert np.isfinite(ets.score(z, y))


def test_memmap_is_streamed_and_equals_the_in_memory_fit(tmp_path):
    z, y = _hard_logits(3000, 10, 6)
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    mm = np.load(tmp_path / "z.npy", mmap_mode="r")
    for loss in ("nll", "mse"):
        a = EnsembleTemperatureScaling(loss=loss).fit(mm, y)
        b = EnsembleTemperatureScaling(loss=loss).fit(torch.from_numpy(z.astype(np.float32)), y)
        assert_allclose(a.temperature_, b.temperature_, rtol=1e-6)
        assert_allclose(a.weights_, b.weights_, atol=1e-6)


def test_tensor_fit_equals_numpy_fit():
    z, y = _hard_logits(1000, 7, 7)
    a = EnsembleTemperatureScaling().fit(torch.from_numpy(z), torch.from_numpy(y))
    b = EnsembleTemperatureScaling().fit(z, y)
    assert_allclose(a.weights_, b.weights_, atol=1e-10)
    assert a.temperature_ == b.temperature_


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_to_torch_reproduces_predict_proba(device):
    z, y = _hard_logits(1000, 7, 8)
    ets = EnsembleTemperatureScaling().fit(z, y)
    with torch.no_grad():
        got = ets.to_torch(output="proba").to(device)(torch.from_numpy(z).to(device)).cpu().numpy()
    assert_allclose(got, ets.predict_proba(z), rtol=1e-12)


def test_json_round_trip_and_malformed_weights():
    z, y = _hard_logits(500, 3, 9)
    data = json.loads(json.dumps(EnsembleTemperatureScaling(loss="mse").fit(z, y).to_dict()))
    assert_array_equal(load_calibrator(data).predict_proba(z), EnsembleTemperatureScaling(loss="mse").fit(z, y)
                       .predict_proba(z))
    for bad in ([0.5, 0.5, 0.5], [1.2, -0.2, 0.0], [1.0, 0.0]):
        data["state"]["weights_"] = bad
        with pytest.raises(ValueError, match="weights_"):
            load_calibrator(data)


@pytest.mark.parametrize("params, error, match", [
    ({"loss": "brier"}, ValueError, "loss"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"tol": "small"}, TypeError, "tol"),
])
def test_bad_parameters_are_refused_at_fit(params, error, match):
    z, y = make_logits(n=100, k=3)
    with pytest.raises(error, match=match):
        EnsembleTemperatureScaling(**params).fit(z, y)

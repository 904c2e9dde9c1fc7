"""Device-resident fitting: torch logits are validated, fitted and calibrated on their device.

Issue #7 (item 2): "Given CUDA tensors, every calibrator fits on the GPU without copying to
the host." The CUDA tests skip without a GPU; the CPU-tensor tests always run and pin the
same property in two ways:

* no host conversion: ``Tensor.numpy``, ``Tensor.cpu``, ``Tensor.__array__`` and
  ``Tensor.tolist`` raise for any floating tensor with at least ``n_samples`` elements
  during ``fit`` and the tensor-returning predictions, so neither the logits nor anything
  of their size (per-sample risks, shifted logits, probabilities) reaches numpy;
* no tensor on the wrong device: under ``with torch.device("meta")`` every tensor created
  without an explicit ``device=`` lands on the data-less meta device, and mixing it with
  the CPU data raises. That is exactly the bug a CUDA run would hit (a helper tensor left
  on the default device next to CUDA logits), caught without a GPU.
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from precal import (
    DirichletCalibrator,
    FuzzyDirichletCalibrator,
    PACSCalibrator,
    StructuredMatrixScaling,
    TemperatureScaling,
)

from .conftest import make_logits

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

#: (calibrator factory, fitted attributes compared with the numpy fit)
CASES = [
    pytest.param(TemperatureScaling, ("temperature_",), id="TemperatureScaling"),
    pytest.param(PACSCalibrator, ("temperature_", "lambda_", "temperature_scaling_"), id="PACSCalibrator"),
    pytest.param(DirichletCalibrator, ("coef_", "intercept_"), id="DirichletCalibrator"),
    pytest.param(lambda: DirichletCalibrator(map="diagonal"), ("coef_", "intercept_"), id="DirichletDiagonal"),
    pytest.param(
        lambda: FuzzyDirichletCalibrator(max_iter=30), ("centers_", "widths_", "coefs_", "intercepts_"),
        id="FuzzyDirichletCalibrator",
    ),
    pytest.param(StructuredMatrixScaling, ("temperature_", "coef_", "intercept_"), id="StructuredMatrixScaling"),
    pytest.param(lambda: StructuredMatrixScaling(map="diagonal"), ("temperature_", "coef_", "intercept_"),
                 id="StructuredMatrixScalingDiagonal"),
]


def heteroscedastic(n=1500, k=5, seed=0, dtype=np.float64):
    """Logits whose over-confidence grows with their norm (so PACS's lambda is not 0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    scale = rng.uniform(0.5, 4.0, size=(n, 1))
    z = scale * 2.0 * (2.0 * np.eye(k)[y] + rng.normal(size=(n, k)))
    return z.astype(dtype), y


@pytest.fixture
def forbid_host_copies(monkeypatch):
    """Make host conversions of sample-sized floating tensors raise; returns a setter for n.

    One caller is exempt: :func:`precal._numerics.matmul` shares a CPU tensor's memory with numpy
    (its BLAS is faster on the CPU) on a branch that only CPU tensors reach, so it is no host copy.
    """
    import sys

    from precal._numerics import matmul

    limit = {"n": None}

    def guard(name):
        original = getattr(torch.Tensor, name)

        def checked(self, *args, **kwargs):
            shared = name == "numpy" and self.device.type == "cpu" and sys._getframe(1).f_code is matmul.__code__
            if limit["n"] is not None and self.is_floating_point() and self.numel() >= limit["n"] and not shared:
                raise AssertionError(f"Tensor.{name}() on a floating tensor of shape {tuple(self.shape)}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, checked)

    for name in ("numpy", "cpu", "__array__", "tolist"):
        guard(name)

    def arm(n):
        limit["n"] = n

    return arm


def _fit_and_predict_on_tensor(factory, zt, y):
    est = factory().fit(zt, y)
    outputs = {
        "proba": est.predict_proba(zt, return_tensor=True),
        "log_proba": est.predict_log_proba(zt, return_tensor=True),
        "decision": est.decision_function(zt, return_tensor=True),
    }
    return est, outputs


@pytest.mark.parametrize("factory, attrs", CASES)
def test_cpu_tensor_fit_and_predict_never_convert_to_numpy(factory, attrs, forbid_host_copies):
    z, y = heteroscedastic()
    zt = torch.from_numpy(z)
    forbid_host_copies(len(y))
    est, outputs = _fit_and_predict_on_tensor(factory, zt, y)
    labels = est.predict(zt)  # the labels (int) come back as numpy: an output, not the logits
    score = est.score(zt, y)
    forbid_host_copies(None)
    for out in outputs.values():
        assert isinstance(out, torch.Tensor) and out.device == zt.device and out.dtype == torch.float64
    ref = factory().fit(z, y)
    for name in attrs:
        assert_allclose(getattr(est, name), getattr(ref, name), rtol=1e-10, atol=1e-12, err_msg=name)
    assert_allclose(outputs["proba"].numpy(), ref.predict_proba(z), rtol=1e-10, atol=1e-13)
    assert_allclose(outputs["decision"].numpy(), ref.decision_function(z), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(labels, ref.predict(z))
    assert score == pytest.approx(ref.score(z, y), rel=1e-12)


@pytest.mark.parametrize("factory, attrs", CASES)
def test_every_tensor_the_fit_makes_follows_the_logits_device(factory, attrs):
    """With the default device set to meta, a helper tensor created without ``device=`` cannot
    meet the CPU logits: the fit only passes if it puts everything on the logits' device."""
    from precal.calibration import _blocks

    z, y = heteroscedastic(n=600)
    zt = torch.from_numpy(z)
    ref = factory().fit(z, y)
    _blocks.scratch.clear()  # the reference fit's work buffers would hide a fresh one made on meta
    with torch.device("meta"):
        est, outputs = _fit_and_predict_on_tensor(factory, zt, y)
    for name in attrs:
        assert_allclose(getattr(est, name), getattr(ref, name), rtol=1e-10, atol=1e-12, err_msg=name)
    assert all(out.device == zt.device for out in outputs.values())


@pytest.mark.parametrize("factory", [TemperatureScaling, PACSCalibrator, DirichletCalibrator])
def test_tensor_validation_matches_numpy_messages(factory):
    z, y = make_logits(n=40, k=3)
    for bad, match in ((np.nan, "NaN"), (np.inf, "infinity")):
        zb = z.copy()
        zb[3, 1] = bad
        with pytest.raises(ValueError, match=match):
            factory().fit(zb, y)
        with pytest.raises(ValueError, match=match):
            factory().fit(torch.from_numpy(zb), y)
    with pytest.raises(ValueError, match="0 sample"):
        factory().fit(torch.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        factory().fit(torch.zeros((4, 3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="Complex"):
        factory().fit(torch.zeros((4, 3), dtype=torch.complex64), np.array([0, 1, 2, 0]))
    fitted = factory().fit(torch.from_numpy(z), y)
    with pytest.raises(ValueError, match="expecting 3 features"):
        fitted.predict_proba(torch.zeros((5, 4)))


@pytest.mark.parametrize("factory", [TemperatureScaling, PACSCalibrator, DirichletCalibrator])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64])
def test_tensor_dtypes_are_upcast_on_the_device(factory, dtype):
    z, y = make_logits(n=400, k=4)
    zt = torch.from_numpy(z).to(dtype)
    est = factory().fit(zt, y)
    ref = factory().fit(zt.to(torch.float64).numpy(), y)
    assert_allclose(est.predict_proba(zt), ref.predict_proba(zt.to(torch.float64).numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [TemperatureScaling, PACSCalibrator, DirichletCalibrator])
def test_single_logit_binary_tensor(factory):
    z, y = make_logits(n=500, k=2, seed=3)
    margin = z[:, 1] - z[:, 0]
    est = factory().fit(torch.from_numpy(margin), y)
    ref = factory().fit(margin, y)
    out = est.predict_proba(torch.from_numpy(margin), return_tensor=True)
    assert out.shape == (500, 2)
    assert_allclose(out.numpy(), ref.predict_proba(margin), rtol=1e-10)
    assert_allclose(est.decision_function(torch.from_numpy(margin)), ref.decision_function(margin), rtol=1e-10)


def test_pacs_sample_temperature_follows_the_input_kind():
    z, y = heteroscedastic(n=500)
    pacs = PACSCalibrator().fit(z, y)
    t_np = pacs.sample_temperature(z)
    t_t = pacs.sample_temperature(torch.from_numpy(z))
    assert isinstance(t_np, np.ndarray) and isinstance(t_t, torch.Tensor)
    assert_allclose(t_t.numpy(), t_np, rtol=1e-12)


def test_sample_weight_with_tensor_logits():
    z, y = heteroscedastic(n=800)
    w = np.random.default_rng(1).uniform(0.1, 2.0, size=len(y))
    for factory in (TemperatureScaling, PACSCalibrator, DirichletCalibrator):
        est = factory().fit(torch.from_numpy(z), y, sample_weight=w)
        ref = factory().fit(z, y, sample_weight=w)
        assert_allclose(est.predict_proba(z), ref.predict_proba(z), rtol=1e-9, atol=1e-12)
        assert est.score(torch.from_numpy(z), y, sample_weight=w) == pytest.approx(ref.score(z, y, sample_weight=w))


# ----------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("factory, attrs", CASES)
def test_cuda_fit_stays_on_the_gpu(factory, attrs, forbid_host_copies):
    z, y = heteroscedastic(n=3000, dtype=np.float32)
    zc = torch.from_numpy(z).cuda()
    forbid_host_copies(len(y))
    est, outputs = _fit_and_predict_on_tensor(factory, zc, y)
    forbid_host_copies(None)
    for out in outputs.values():
        assert out.is_cuda and out.dtype == torch.float64
    ref = factory().fit(z, y)
    for name in attrs:
        # float32 sums on the GPU differ from the CPU's in order: agree to float32 rounding
        assert_allclose(getattr(est, name), getattr(ref, name), rtol=1e-4, atol=1e-5, err_msg=name)
    assert_allclose(outputs["proba"].cpu().numpy(), ref.predict_proba(z), atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("factory", [TemperatureScaling, PACSCalibrator, DirichletCalibrator])
def test_cuda_labels_and_weights_as_cuda_tensors(factory):
    z, y = heteroscedastic(n=1000)
    w = np.random.default_rng(2).uniform(0.5, 1.5, size=len(y))
    zc, yc, wc = (torch.from_numpy(a).cuda() for a in (z, y, w))
    est = factory().fit(zc, yc, sample_weight=wc)
    ref = factory().fit(z, y, sample_weight=w)
    assert_allclose(est.predict_proba(z), ref.predict_proba(z), rtol=1e-7, atol=1e-9)
    assert est.predict_proba(torch.from_numpy(z).cuda(), return_tensor=True).is_cuda


@needs_cuda
def test_cuda_nan_is_refused_on_the_device():
    z, y = make_logits(n=50, k=3)
    z[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TemperatureScaling().fit(torch.from_numpy(z).cuda(), y)

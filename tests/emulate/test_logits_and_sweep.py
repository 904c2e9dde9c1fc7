"""Logit-space emulation and the sweep API."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from precal._numerics import softmax
from precal.emulate import quantize, round_logits, softmax_in_format, sweep


def test_round_logits_float_and_int():
    z = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32) * 5
    assert np.array_equal(round_logits(z, "bf16"), quantize(z, "bf16"))
    per_row = round_logits(z, "int4")
    for i in (0, 7):  # one scale per sample
        assert np.array_equal(per_row[i], quantize(z[i : i + 1], "int4")[0])
    assert isinstance(round_logits(torch.from_numpy(z), "fp8_e4m3"), torch.Tensor)
    with pytest.raises(ValueError, match="2-D"):
        round_logits(z[0], "bf16")


def test_softmax_in_bf16_saturates_confident_predictions():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(2000, 100)) * 3 + 12 * np.eye(100)[rng.integers(0, 100, 2000)]).astype(np.float32)
    p16 = softmax_in_format(z, "bf16")
    p32 = softmax(z)
    assert (p16.max(axis=1) == 1.0).sum() > 100
    assert (p32.max(axis=1) == 1.0).sum() == 0
    rows = np.arange(len(z))  # the fp32 winner is still a winner (bf16 may create ties)
    assert np.array_equal(p16[rows, p32.argmax(axis=1)], p16.max(axis=1))
    assert np.all(p16 == quantize(p16, "bf16"))  # every probability is a bf16 value


def test_softmax_in_fp32_equals_softmax():
    z = np.random.default_rng(1).normal(size=(100, 7)).astype(np.float32)
    assert np.allclose(softmax_in_format(z, "fp32"), softmax(z), atol=1e-6)
    with pytest.raises(ValueError, match="float format"):
        softmax_in_format(z, "int8")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def test_sweep_returns_logits_per_config_in_order(tiny):
    x = torch.randn(300, 12)
    cal = torch.randn(64, 12)
    state = copy.deepcopy(tiny.state_dict())
    out = sweep(tiny, x, ["fp32", "bf16", "w8a8", "w4a4", "w4a16-g4"], calibration_data=cal, batch_size=128,
                progress=False)
    assert list(out) == ["fp32", "bf16", "w8a8", "w4a4", "w4a16-g4"]
    for logits in out.values():
        assert isinstance(logits, np.ndarray) and logits.shape == (300, 5) and logits.dtype == np.float32
    with torch.no_grad():
        assert np.array_equal(out["fp32"], tiny(x).numpy())
    assert not np.array_equal(out["w4a4"], out["fp32"])
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, state[key])


def test_sweep_accepts_arrays_and_dataloaders_alike(tiny):
    x = torch.randn(100, 12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(100)), batch_size=32)
    a = sweep(tiny, x, ["bf16", "w8a8"], calibration_data=x[:32], progress=False)
    b = sweep(tiny, loader, ["bf16", "w8a8"], calibration_data=x[:32].numpy(), progress=False)
    c = sweep(tiny, x.numpy(), ["bf16", "w8a8"], calibration_data=x[:32], progress=False, batch_size=7)
    for key in a:
        assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], c[key])


def test_sweep_with_dict_batches():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, features, scale):
            return self.fc(features) * scale

    model = Keyword().eval()
    batches = [{"features": torch.randn(10, 4), "scale": 2.0} for _ in range(3)]
    out = sweep(model, batches, ["fp32", "fp16"], progress=False)
    assert out["fp32"].shape == (30, 3)


def test_sweep_progress_bar_runs(tiny, capsys):
    sweep(tiny, torch.randn(20, 12), ["fp32", "bf16"], progress=True)


@pytest.mark.parametrize("configs, match", [
    (["fp32", "fp32"], "Duplicate"),
    (["fp33"], "Unknown config"),
    ([], "empty"),
    (["w8a8"], "calibration_data"),
])
def test_sweep_bad_configs(tiny, configs, match):
    with pytest.raises(ValueError, match=match):
        sweep(tiny, torch.randn(10, 12), configs, progress=False)


def test_sweep_rejects_non_float_and_non_iterable_data(tiny):
    with pytest.raises(TypeError, match="iterable"):
        sweep(tiny, 3.0, ["fp32"], progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sweep_on_cuda_matches_cpu(tiny):
    x = torch.randn(256, 12)
    cpu = sweep(tiny, x, ["fp32", "w8a8", "fp8_e4m3"], calibration_data=x[:64], progress=False)
    gpu = sweep(tiny, x, ["fp32", "w8a8", "fp8_e4m3"], calibration_data=x[:64], progress=False, device="cuda")
    for key in cpu:
        assert np.allclose(cpu[key], gpu[key], atol=1e-4)


@pytest.mark.parametrize("fmt, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                         ("fp8_e4m3", torch.float8_e4m3fn), ("fp4_e2m1", torch.float32)])
def test_softmax_in_format_keeps_its_dtype_so_metrics_accept_it(fmt, dtype):
    from precal.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    z = torch.from_numpy((rng.normal(size=(300, 10)) * 4).astype(np.float32))
    p = softmax_in_format(z, fmt)
    assert p.dtype == dtype
    if fmt != "fp4_e2m1":  # fp4 has no torch dtype: its float32 rows are too far from 1
        assert 0.0 <= expected_calibration_error(rng.integers(0, 10, 300), p) <= 1.0

"""quantize(): bit-exact float rounding against ml_dtypes; integer fake quantization
against torch.fake_quantize_*; stochastic rounding; granularity; bad input."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from precal.emulate import FORMATS, FloatFormat, format_info, quantize
from precal.emulate.rounding import round_float

NEAREST_FORMATS = [f for f in FORMATS.values() if isinstance(f, FloatFormat) and f.ml_dtype and f.name != "fp32"]


def _ml_dtype(f):
    return getattr(ml_dtypes, f.ml_dtype, None) or np.dtype(f.ml_dtype)


def _test_values(f, rng):
    """>= 1M float32 values: random bit patterns, log-uniform magnitudes across the format's
    subnormal to overflow range, every code, every tie (midpoint) and +-1 ulp around it, specials."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _make_test_values(f, rng)


def _make_test_values(f, rng):
    bits = rng.integers(0, 2**32, size=600_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    lo, hi = np.log2(f.smallest_subnormal) - 3, np.log2(f.max) + 2
    mags = (2.0 ** rng.uniform(lo, hi, 400_000)).astype(np.float32)
    logu = mags * rng.choice(np.array([-1, 1], dtype=np.float32), size=mags.size)
    n_codes = 2**f.bits
    raw = np.arange(n_codes, dtype=np.uint16 if f.bits == 16 else np.uint8)
    codes = raw.view(_ml_dtype(f)).astype(np.float64)
    codes = np.unique(codes[np.isfinite(codes)])
    mids = ((codes[1:] + codes[:-1]) / 2).astype(np.float32)
    assert np.all(mids.astype(np.float64) == (codes[1:] + codes[:-1]) / 2), "midpoints must be exact in float32"
    around = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, f.max, -f.max, f.max * 1.01, 3e38], dtype=np.float32)
    values = np.concatenate([bits, logu, codes.astype(np.float32), around, -around, specials])
    assert values.size >= 1_000_000
    return values


def _oracle(x, f, saturate):
    with np.errstate(over="ignore", invalid="ignore"):
        src = np.clip(x, -f.max, f.max) if saturate else x  # clip maps +-inf to +-max too
        return src.astype(_ml_dtype(f)).astype(np.float32)


def _assert_bit_equal(ours, ref, x):
    nan_in = np.isnan(x)
    assert np.isnan(ours[nan_in]).all(), "NaN must stay NaN"
    ok = (ours.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(ours) & np.isnan(ref))
    bad = ~ok & ~nan_in
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        pytest.fail(f"{bad.sum()} mismatches, e.g. x={x[i]} ours={ours[i]} ml_dtypes={ref[i]}")


@pytest.mark.parametrize("path", ["default", "bit-emulation"])
@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("fmt", NEAREST_FORMATS, ids=lambda f: f.name)
def test_round_to_nearest_is_bit_exact_against_ml_dtypes(fmt, saturate, path):
    if not saturate and not fmt.has_nan:
        pytest.skip("formats without inf/NaN always saturate (as ml_dtypes does)")
    f = fmt if path == "default" else dataclasses.replace(fmt, torch_dtype=None)
    x = _test_values(fmt, np.random.default_rng(fmt.bits + 7 * saturate))
    ours = round_float(torch.from_numpy(x), f, saturate=saturate).numpy()
    _assert_bit_equal(ours, _oracle(x, fmt, saturate), x)


def test_ties_go_to_even_in_fp4():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0])
    assert quantize(x, "fp4_e2m1").tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -4.0]


def test_e4m3_overflow_rules():
    x = torch.tensor([464.0, 465.0, 1e6, float("inf"), -float("inf")])
    assert quantize(x, "fp8_e4m3").tolist() == [448.0, 448.0, 448.0, 448.0, -448.0]
    non_sat = quantize(x, "fp8_e4m3", saturate=False)
    assert non_sat[0] == 448.0 and torch.isnan(non_sat[1:]).all()


def test_fp16_overflow_to_inf_or_saturate():
    x = torch.tensor([65519.0, 65520.0, 1e9])
    assert quantize(x, "fp16").tolist() == [65504.0, float("inf"), float("inf")]
    assert quantize(x, "fp16", saturate=True).tolist() == [65504.0, 65504.0, 65504.0]


def test_tf32_matches_the_rne_bit_trick():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.integers(0, 2**32, size=500_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.normal(size=500_000).astype(np.float32),
    ])
    b = x.view(np.uint32).astype(np.uint64)
    ref = (((b + 0xFFF + ((b >> 13) & 1)) & ~np.uint64(0x1FFF)) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    ours = quantize(torch.from_numpy(x), "tf32").numpy()
    finite = np.isfinite(x) & np.isfinite(ref)
    assert_array_equal(ours[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert np.isnan(ours[np.isnan(x)]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_keeps_input_dtype_and_shape(dtype):
    x = torch.randn(3, 4, 5).to(dtype)
    for fmt in ("fp8_e4m3", "int4", "bf16"):
        out = quantize(x, fmt, axis=0) if fmt == "int4" else quantize(x, fmt)
        assert out.dtype == dtype and out.shape == x.shape


def test_float64_input_is_rounded_through_float32():
    x = torch.randn(1000, dtype=torch.float64) * 10
    assert torch.equal(quantize(x, "fp8_e5m2"), quantize(x.float(), "fp8_e5m2").double())


def test_numpy_in_numpy_out_and_input_untouched():
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    before = x.copy()
    out = quantize(x, "int8", axis=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_array_equal(x, before)


@pytest.mark.parametrize("fmt_name", ["int8", "int4", "uint8"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int_per_channel_equals_torch_fake_quantize(fmt_name, symmetric):
    f = format_info(fmt_name)
    if symmetric and not f.signed:
        pytest.skip("unsigned formats are asymmetric")
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 16)[:, None]
    ours = quantize(x, f, axis=0, symmetric=symmetric)
    lo = torch.clamp(x.amin(1), max=0)
    hi = torch.clamp(x.amax(1), min=0)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / f.qmax
        zero = torch.zeros(16, dtype=torch.int32)
    else:
        scale = (hi - lo) / (f.qmax - f.qmin)
        zero = torch.clamp(f.qmin - torch.round(lo / scale), f.qmin, f.qmax).to(torch.int32)
    ref = torch.fake_quantize_per_channel_affine(x, scale.float(), zero, 0, f.qmin, f.qmax)
    assert torch.equal(ours, ref)


def test_int_per_tensor_half_range_equals_torch_observer_convention():
    x = torch.randn(64, 64)
    scale = float(x.abs().max()) / 127.5  # torch.ao MinMaxObserver, symmetric qint8
    ref = torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)
    assert torch.equal(quantize(x, "int8", scale_rule="half_range"), ref)


def test_scale_rules_map_amax_as_documented():
    x = torch.tensor([[-1.0, 0.3, 1.0]])
    assert quantize(x, "int4", scale_rule="qmax")[0, 2] == 1.0  # amax -> qmax exactly
    half = quantize(x, "int4", scale_rule="half_range")  # s = amax / 7.5
    assert half[0, 2] == pytest.approx(7 / 7.5)  # +amax lands on ~7.5, clipped to code 7
    assert half[0, 2] < 1.0


def test_per_group_equals_per_channel_on_a_view():
    w = torch.randn(8, 256)
    grouped = quantize(w, "int4", group_size=64)
    by_view = quantize(w.reshape(32, 64), "int4", axis=0).reshape(8, 256)
    assert torch.equal(grouped, by_view)


def test_per_group_on_conv_weights_groups_each_output_channel():
    w = torch.randn(4, 8, 3, 3)  # 72 elements per output channel
    out = quantize(w, "int4", axis=0, group_size=24)
    ref = quantize(w.reshape(12, 24), "int4", axis=0).reshape(4, 8, 3, 3)
    assert torch.equal(out, ref)


def test_float_format_with_axis_uses_amax_scaling():
    x = torch.tensor([[1e-4, 2e-4, 4e-4], [100.0, 10.0, 1.0]])
    out = quantize(x, "fp8_e4m3", axis=0)
    assert out[0, 2] == pytest.approx(4e-4, rel=1e-6) and out[1, 0] == 100.0  # amax maps to 448 exactly
    assert (out[0] != 0).all()  # a plain cast would flush 1e-4 towards the subnormal grid


def test_nan_stays_nan_and_does_not_spoil_its_block():
    x = torch.tensor([[float("nan"), 1.0, -0.5, 0.25]])
    for fmt in ("int8", "int4", "fp4_e2m1", "fp8_e4m3", "bf16"):
        out = quantize(x, fmt, axis=0)
        assert torch.isnan(out[0, 0]) and torch.isfinite(out[0, 1:]).all()


def test_inf_saturates_integer_codes():
    out = quantize(torch.tensor([float("inf"), 1.0, -float("inf")]), "int8")
    assert out.tolist() == pytest.approx([1.0, 1.0, -128 / 127], rel=1e-6)  # codes 127, 127, -128


def test_all_zero_block_stays_zero():
    assert torch.equal(quantize(torch.zeros(4, 8), "int4", axis=0), torch.zeros(4, 8))


# ------------------------------------------------------------------ stochastic rounding
@pytest.mark.parametrize("fmt", ["bf16", "fp8_e4m3", "fp4_e2m1", "int8"])
def test_stochastic_rounding_is_unbiased_and_uses_the_two_neighbours(fmt):
    x = torch.full((200_000,), 1.0375)
    gen = torch.Generator().manual_seed(0)
    out = quantize(x, fmt, rounding="stochastic", generator=gen) if fmt != "int8" else \
        quantize(torch.cat([x, torch.tensor([127.0])]), fmt, rounding="stochastic", generator=gen)[:-1]
    values = torch.unique(out)
    assert len(values) == 2 and values[0] < 1.0375 < values[1]
    lo, hi = values.tolist()
    p = (1.0375 - lo) / (hi - lo)
    sigma = (hi - lo) * (p * (1 - p) / len(x)) ** 0.5
    assert abs(out.double().mean().item() - 1.0375) < 5 * sigma


def test_stochastic_rounding_is_seeded():
    x = torch.randn(1000)
    a = quantize(x, "fp8_e5m2", rounding="stochastic", generator=torch.Generator().manual_seed(1))
    b = quantize(x, "fp8_e5m2", rounding="stochastic", generator=torch.Generator().manual_seed(1))
    c = quantize(x, "fp8_e5m2", rounding="stochastic", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ properties
finite_f32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite_f32, min_size=1, max_size=50), name=st.sampled_from(
    ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "tf32"]))
def test_float_rounding_is_idempotent_monotone_and_within_half_ulp(values, name):
    f = format_info(name)
    x = torch.tensor(sorted(values), dtype=torch.float32)
    q = quantize(x, f)
    assert torch.equal(quantize(q, f), q)
    assert (q[1:] >= q[:-1]).all()
    inside = x.abs() <= f.max
    ulp = torch.ldexp(torch.ones_like(x), (torch.clamp(torch.frexp(x.abs())[1] - 1, min=f.emin) - f.nmant).int())
    assert ((q - x).abs()[inside] <= ulp[inside] / 2).all()


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite_f32, min_size=2, max_size=40), bits=st.integers(2, 8))
def test_int_quantization_error_is_at_most_half_a_step(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    amax = x.abs().max()
    q = quantize(x, f"int{bits}")
    step = amax / (2 ** (bits - 1) - 1)
    assert ((q - x).abs() <= step / 2 * (1 + 1e-5) + 1e-30).all()
    assert torch.equal(quantize(q, f"int{bits}"), q) or amax == 0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"fmt": "fp7"}, ValueError, "Unknown number format"),
    ({"fmt": "int1"}, ValueError, "bits must be"),
    ({"fmt": "int4", "group_size": 5}, ValueError, "does not divide"),
    ({"fmt": "int4", "group_size": 0}, ValueError, "positive integer"),
    ({"fmt": "int4", "axis": 3}, ValueError, "out of range"),
    ({"fmt": "bf16", "symmetric": False}, ValueError, "float format"),
    ({"fmt": "uint8"}, ValueError, "unsigned"),
    ({"fmt": "int8", "rounding": "up"}, ValueError, "rounding"),
    ({"fmt": "int8", "scale_rule": "max"}, ValueError, "scale_rule"),
])
def test_bad_arguments_raise(kwargs, exc, match):
    x = torch.randn(4, 8)
    fmt = kwargs.pop("fmt")
    with pytest.raises(exc, match=match):
        quantize(x, fmt, **kwargs)


def test_non_float_input_raises():
    with pytest.raises(ValueError, match="floating-point"):
        quantize(torch.arange(10), "int8")
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        quantize([1.0, 2.0], "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp4_e2m1", "tf32", "int8"])
def test_cuda_matches_cpu_bit_for_bit(fmt):
    x = torch.randn(4096, 256) * 100
    kwargs = {"axis": 0} if fmt == "int8" else {}
    cpu = quantize(x, fmt, **kwargs)
    gpu = quantize(x.cuda(), fmt, **kwargs)
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu.view(torch.int32), gpu.cpu().view(torch.int32))


@pytest.mark.parametrize("fmt, symmetric", [("int2", True), ("int8", True), ("uint8", False), ("int4", False)])
def test_subnormal_ranges_give_finite_values(fmt, symmetric):
    """Found by hypothesis: amax = 2^-149 made 1/s infinite and 0 * inf = NaN."""
    x = torch.tensor([0.0, 1.401298464324817e-45, -1e-40])
    out = quantize(x, fmt, symmetric=symmetric)
    assert torch.isfinite(out).all() and (out - x).abs().max() <= 1e-38

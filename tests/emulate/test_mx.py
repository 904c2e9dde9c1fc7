"""Block-scaled formats (OCP MX v1.0, NVFP4): against a scalar reference written from the
specs over ml_dtypes' element formats, against torchao's MXTensor/NVFP4Tensor (when it is
installed), invariants, model configs and every bad input."""

import copy
import math
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from precal.emulate import (
    BLOCK_FORMATS,
    MX_ELEMENTS,
    MX_SCALE_ROUNDINGS,
    EmulatedLayer,
    block_quantize,
    emulate_model,
    mx_decode,
    mx_encode,
    mx_quantize,
    nvfp4_decode,
    nvfp4_encode,
    nvfp4_quantize,
    format_info,
    parse_config,
    sweep,
)
from precal.emulate.model import QuantConfig

# --------------------------------------------------------------------------- the spec, scalar
ML = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}
#: emax_elem of the OCP MX v1.0 spec (Table 1 and section 5.3): exponent of the largest power of two
EMAX = {"fp8_e4m3": 8, "fp8_e5m2": 15, "fp6_e3m2": 4, "fp6_e2m3": 2, "fp4_e2m1": 2, "int8": 0}
MBITS = {"fp8_e4m3": 3, "fp8_e5m2": 2, "fp6_e3m2": 2, "fp6_e2m3": 3, "fp4_e2m1": 1, "int8": 6}
ELEMS = list(EMAX)


def elem_max(elem):
    return 127 / 64 if elem == "int8" else float(ml_dtypes.finfo(ML[elem]).max)


def ref_exponent(amax, elem, rounding):
    """Shared scale exponent from a block's amax (a finite float >= 0 or inf), before the clamp."""
    if math.isinf(amax):
        return 128 - EMAX[elem] if rounding != "rceil" else 128  # float32's exponent field of inf
    if rounding == "rceil":  # NVIDIA: ceil(log2(amax / max_elem)), the division in float32
        d = float(np.float32(amax) / np.float32(elem_max(elem)))
        if d == 0:
            return -math.inf
        m, ex = math.frexp(d)  # d = m 2**ex, m in [0.5, 1)
        return ex - 1 if m == 0.5 else ex
    if amax == 0:
        return -math.inf
    m, ex = math.frexp(amax)
    floor_log2 = ex - 1
    if rounding == "floor":
        e = floor_log2
    elif rounding == "ceil":
        e = floor_log2 + (m != 0.5)
    else:  # "even": the significand 2m rounded (half up) to the element's mantissa bits first
        step = 2.0 ** -MBITS[elem]
        e = floor_log2 + (math.floor(2 * m / step + 0.5) * step >= 2.0)
    return e - EMAX[elem]


def ref_element(y, elem):
    """RNE of the exact real ``y`` onto the element grid, saturating (inf -> max)."""
    top = elem_max(elem)
    y = min(max(y, -top), top)
    if elem == "int8":
        return float(np.round(y * 64.0)) / 64.0  # numpy rounds half to even
    return float(np.array(y, dtype=np.float64).astype(ML[elem]))


def ref_mx_block(values, elem, rounding="floor"):
    """(dequantized float32 values, E8M0 code) of one block, from the spec's conversion (6.3)."""
    if any(math.isnan(v) for v in values):
        return [math.nan] * len(values), 255
    amax = max(abs(v) for v in values)
    e = ref_exponent(amax, elem, rounding)
    e = int(min(max(e, -127), 127))
    scale = 2.0**e
    assert float(np.array(scale).astype(ml_dtypes.float8_e8m0fnu)) == scale  # an E8M0 value
    with np.errstate(over="ignore"):
        out = [float(np.float32(ref_element(v / scale, elem) * scale)) for v in values]
    return out, e + 127


def ref_mx(x, elem, block, rounding="floor"):
    """Reference along the last axis of a 2-D float32 array (short last block allowed)."""
    out = np.empty_like(x)
    codes = []
    for r, row in enumerate(x):
        row_codes = []
        for start in range(0, len(row), block):
            vals, code = ref_mx_block([float(v) for v in row[start:start + block]], elem, rounding)
            out[r, start:start + block] = vals
            row_codes.append(code)
        codes.append(row_codes)
    return out, np.array(codes, dtype=np.uint8)


def same_bits(a, b):
    """Equal float32 values, NaN equal to NaN, and the sign of zero checked."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.int32) == b.view(np.int32))))


def grid(elem):
    """Non-negative finite values of the element format (checked against ml_dtypes)."""
    if elem == "int8":
        return np.arange(128) / 64.0
    f = format_info(elem)
    values = [k * f.smallest_subnormal for k in range(2**f.nmant)]
    values += [(1 + k / 2**f.nmant) * 2.0**e for e in range(f.emin, f.emax + 1) for k in range(2**f.nmant)]
    values = np.array([v for v in values if v <= f.max])
    assert np.array_equal(values.astype(ML[elem]).astype(np.float64), values)
    return values


# --------------------------------------------------------------------------- hypothesis blocks
@st.composite
def mx_blocks(draw, elem):
    """A block (list of float32 values): random floats, element-grid ties and values exactly
    on the grid, put on a scale by an anchor that fixes the block's exponent; sometimes a
    zero block, a NaN or an inf."""
    n = draw(st.integers(1, 40))
    e = draw(st.integers(-150, 130))
    g = grid(elem)
    mids = (g[1:] + g[:-1]) / 2
    special = st.sampled_from([0.0, -0.0, 2.0**-149, 3.4028235e38, -3.4028235e38, 2.0**-126])

    def on_scale(v):
        with np.errstate(over="ignore"):
            y = float(np.float32(v * 2.0**e))
        return y if math.isfinite(y) else 0.0

    value = st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False),
        st.sampled_from(list(mids) + list(-mids)).map(on_scale),
        st.sampled_from(list(g) + list(-g)).map(on_scale),
        st.floats(-2.0, 2.0, width=32).map(lambda v: on_scale(v * 2.0 ** EMAX[elem])),
        special,
    )
    values = draw(st.lists(value, min_size=n, max_size=n))
    kind = draw(st.sampled_from(["plain", "anchor", "zeros", "nan", "inf"]))
    if kind == "anchor":  # an exact power of two sets the exponent: the ties land on element midpoints
        values[0] = on_scale(2.0 ** EMAX[elem]) or values[0]
    elif kind == "zeros":
        values = [draw(st.sampled_from([0.0, -0.0])) for _ in values]
    elif kind == "nan":
        values[draw(st.integers(0, n - 1))] = math.nan
    elif kind == "inf":
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.inf, -math.inf]))
    return values


@pytest.mark.parametrize("rounding", MX_SCALE_ROUNDINGS)
@pytest.mark.parametrize("elem", ELEMS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mx_matches_spec_reference_on_edge_blocks(elem, rounding, data):
    values = data.draw(mx_blocks(elem))
    amax = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    # "ceil"/"even" read the float32 exponent field (torchao's rule), which differs from the real
    # ceil/round of log2 only for a subnormal amax; that matters for INT8 alone (emax_elem = 0).
    assume(not (elem == "int8" and rounding in ("ceil", "even") and 0 < amax < 2.0**-126))
    x = np.array([values], dtype=np.float32)
    expected, codes = ref_mx(x, elem, block=len(values), rounding=rounding)
    got = mx_quantize(torch.from_numpy(x), elem, block_size=len(values), scale_rounding=rounding)
    assert same_bits(got.numpy(), expected), (values, got, expected)
    _, got_codes = mx_encode(torch.from_numpy(x), elem, block_size=len(values), scale_rounding=rounding)
    assert np.array_equal(got_codes.numpy(), codes)


@pytest.mark.parametrize("elem", ELEMS)
def test_mx_matches_spec_reference_on_many_random_blocks(elem):
    """Vectorised over 96 rows x 3 blocks (the last one short), log-uniform magnitudes."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 80)) * np.exp2(rng.integers(-30, 30, size=(96, 1)))
    x *= np.exp2(rng.uniform(-6, 6, size=x.shape))
    x = x.astype(np.float32)
    for rounding in MX_SCALE_ROUNDINGS:
        expected, codes = ref_mx(x, elem, 32, rounding)
        got = mx_quantize(torch.from_numpy(x), elem, scale_rounding=rounding)
        assert same_bits(got.numpy(), expected), rounding
        elements, got_codes = mx_encode(torch.from_numpy(x), elem, scale_rounding=rounding)
        assert np.array_equal(got_codes.numpy(), codes)
        assert torch.equal(mx_decode(elements, got_codes), got)


@pytest.mark.parametrize("elem", ELEMS)
def test_elements_lie_on_the_element_grid_and_codes_are_e8m0(elem):
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3)) * 100
    elements, codes = mx_encode(x, elem)
    assert codes.dtype == torch.uint8 and codes.shape == (64, 2)
    g = grid(elem)
    assert np.isin(np.abs(elements.numpy()), g).all()
    # ml_dtypes decodes the codes as E8M0 scales; scale * element is the quantized value
    scales = codes.numpy().view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    dequant = elements.numpy().reshape(64, 2, 32) * scales[..., None]
    assert same_bits(dequant.reshape(64, 64), mx_quantize(x, elem).numpy())


# --------------------------------------------------------------------------- MX rules, one at a time
def test_floor_rule_saturates_and_rceil_does_not():
    # amax 480: floor(log2 480) = 8 = emax(e4m3) -> X = 1 and 480 saturates to 448
    x = torch.tensor([[480.0, 1.0] + [0.0] * 30])
    assert mx_quantize(x, "fp8_e4m3")[0, 0] == 448.0
    _, codes = mx_encode(x, "fp8_e4m3")
    assert codes.item() == 127
    # rceil: X = 2**ceil(log2(480 / 448)) = 2 -> 480 is on the grid
    assert mx_quantize(x, "fp8_e4m3", scale_rounding="rceil")[0, 0] == 480.0
    assert mx_encode(x, "fp8_e4m3", scale_rounding="rceil")[1].item() == 128
    # ceil: ceil(log2 480) - 8 = 1, the same X here
    assert mx_encode(x, "fp8_e4m3", scale_rounding="ceil")[1].item() == 128


@pytest.mark.parametrize("elem", ELEMS)
def test_rceil_never_saturates(elem):
    """RCEIL: amax / X <= max_elem in every block, so no element is clipped (FLOOR clips some)."""
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(5)) * 1e3
    for rounding, clips in (("rceil", False), ("floor", True)):
        _, codes = mx_encode(x, elem, scale_rounding=rounding)
        scale = torch.exp2(codes.double() - 127).repeat_interleave(32, dim=1)
        ratio = (x.double() / scale).abs().reshape(256, 2, 32).amax(-1)
        assert bool((ratio > MX_ELEMENTS[elem].max).any()) == clips


def test_special_blocks():
    x = torch.tensor([
        [1.0, float("nan")] + [2.0] * 30,  # NaN block: code 255, all NaN
        [0.0, -0.0] * 16,  # zero block: smallest scale, zeros with their signs
        [3.0e38, -1.0] + [0.0] * 30,  # largest binade: e = 127 - emax
        [float("inf"), 3.0e38, 1.0] + [0.0] * 29,  # inf: exponent field 255 -> e = 128 - emax
        [1e-40] * 32,  # subnormal amax: e clamps at -127
    ])
    for elem in ("fp8_e4m3", "fp4_e2m1", "int8"):
        q = mx_quantize(x, elem)
        _, codes = mx_encode(x, elem)
        assert codes[0].item() == 255 and torch.isnan(q[0]).all()
        assert codes[1].item() == 0
        assert torch.equal(torch.signbit(q[1]), torch.signbit(x[1])) and (q[1] == 0).all()
        assert codes[2].item() == 127 + 127 - EMAX[elem]
        assert codes[3].item() == min(127 + 128 - EMAX[elem], 254)
        assert codes[4].item() == 0
    q = mx_quantize(x, "fp8_e4m3")
    assert q[3, 0] == float("inf")  # 448 * 2**120 overflows float32
    assert q[3, 1] == 224.0 * 2.0**120  # 3e38 / 2**120 = 225.7 -> 224 on the e4m3 grid
    assert mx_quantize(x, "int8")[3, 0] == 127 / 64 * 2.0**127  # MX INT8's scale stops at 2**127


def test_a_nan_spoils_only_its_own_block():
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(0))
    x[1, 40] = float("nan")
    q = mx_quantize(x, "fp4_e2m1")
    nan = torch.isnan(q)
    assert nan[1, 32:64].all() and nan.sum() == 32


@pytest.mark.parametrize("elem", ["fp8_e4m3", "fp6_e2m3", "int8"])
def test_axis_partial_blocks_and_dtypes(elem):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, 3, generator=gen)
    # blocks along axis 0 equal blocks along the last axis of the transposed tensor
    moved = mx_quantize(x.movedim(0, -1).contiguous(), elem)
    assert torch.equal(mx_quantize(x, elem, axis=0), moved.movedim(-1, 0))
    # a short last block (40 = 32 + 8) is quantized on its own
    row = torch.randn(1, 40, generator=gen)
    parts = torch.cat([mx_quantize(row[:, :32], elem), mx_quantize(row[:, 32:], elem)], dim=1)
    assert torch.equal(mx_quantize(row, elem), parts)
    elements, codes = mx_encode(x, elem, axis=0)
    assert codes.shape == (2, 6, 3)
    assert torch.equal(mx_decode(elements, codes, axis=0), mx_quantize(x, elem, axis=0))
    # dtype, device and numpy in/out; the input is not modified
    before = x.clone()
    bf = mx_quantize(x.bfloat16(), elem, axis=0)
    assert bf.dtype == torch.bfloat16 and torch.equal(bf.float(), mx_quantize(x.bfloat16().float(), elem, axis=0))
    arr = mx_quantize(x.numpy(), elem)
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, mx_quantize(x, elem).numpy())
    assert torch.equal(x, before)


def test_block_size_one_is_a_per_element_power_of_two_scale():
    x = np.array([[0.3, 5.0, -1e-3, 1000.0, 480.0]], dtype=np.float32)
    expected, codes = ref_mx(x, "fp8_e4m3", 1)
    assert same_bits(mx_quantize(x, "fp8_e4m3", block_size=1), expected)
    assert np.array_equal(mx_encode(torch.from_numpy(x), "fp8_e4m3", block_size=1)[1].numpy(), codes)
    assert expected[0, 4] == 448.0  # 480 = 1.875 * 2**8 saturates even alone in its block


def test_mx_error_is_bounded_by_the_element_precision():
    """|x - q| <= max(ulp_elem(|x| / X) / 2, saturation) * X: for values below the element max,
    half a grid step at their binade; spot-checked on normal data for FP8 E4M3."""
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(9))
    q = mx_quantize(x, "fp8_e4m3")
    _, codes = mx_encode(x, "fp8_e4m3")
    scale = torch.exp2(codes.float() - 127).repeat_interleave(32, dim=1)
    y = x / scale
    ulp = torch.exp2(torch.floor(torch.log2(y.abs().clamp(min=2.0**-6))) - 3)
    bound = torch.where(y.abs() > 448, y.abs() - 448, ulp / 2) * scale
    assert ((x - q).abs() <= bound).all()


# --------------------------------------------------------------------------- NVFP4
def ref_nvfp4(x, per_tensor="amax"):
    """NVFP4 from torchao's and NVIDIA's recipe, one scalar float32 operation at a time."""
    f32 = np.float32
    flat_amax = f32(np.max(np.abs(x))) if x.size else f32(0)
    if per_tensor == "amax":
        s = f32(flat_amax) / f32(448.0 * 6.0)
        s = f32(1.0) if s == 0 else s
    else:
        s = None if per_tensor is None else f32(per_tensor)
    out = np.empty_like(x)
    scales = []
    for r, row in enumerate(x):
        row_scales = []
        for start in range(0, len(row), 16):
            block = row[start:start + 16]
            b = f32(np.max(np.abs(block))) / f32(6.0)
            if s is not None:
                b = b / s
            b = f32(min(max(b, f32(2.0**-6)), f32(448.0))) if not np.isnan(b) else b
            b8 = f32(np.array(b).astype(ml_dtypes.float8_e4m3fn))
            recip = (f32(1.0) / s) / b8 if s is not None else f32(1.0) / b8
            total = s * b8 if s is not None else b8
            for i, v in enumerate(block):
                y = f32(v) * recip
                q = f32(np.array(np.clip(y, -6.0, 6.0)).astype(ml_dtypes.float4_e2m1fn)) if not np.isnan(y) else y
                out[r, start + i] = q * total
            row_scales.append(b8)
        scales.append(row_scales)
    return out, np.array(scales, dtype=np.float32), s


@settings(max_examples=80, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 40)),
    log_scale=st.integers(-40, 40),
    seed=st.integers(0, 2**31 - 1),
    per_tensor=st.sampled_from(["amax", None, 0.01]),
    spread=st.floats(0.0, 12.0),
)
def test_nvfp4_matches_reference(shape, log_scale, seed, per_tensor, spread):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(log_scale + rng.uniform(-spread, spread, size=(shape[0], 1)))
    x = x.astype(np.float32)
    expected, scales, s = ref_nvfp4(x, per_tensor)
    got = nvfp4_quantize(torch.from_numpy(x), per_tensor_scale=per_tensor)
    assert same_bits(got.numpy(), expected)
    elements, block_scales, tensor_scale = nvfp4_encode(torch.from_numpy(x), per_tensor_scale=per_tensor)
    assert same_bits(block_scales.numpy(), scales)
    assert (tensor_scale is None) == (s is None)
    if s is not None:
        assert tensor_scale.item() == float(s)
    assert torch.equal(nvfp4_decode(elements, block_scales, tensor_scale), got)


def test_nvfp4_encoding_facts():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(4)) * 50
    elements, b, s = nvfp4_encode(x)
    assert np.isin(np.abs(elements.numpy()), [0, 0.5, 1, 1.5, 2, 3, 4, 6]).all()
    assert b.shape == (8, 4) and (b >= 2.0**-6).all() and (b <= 448).all()
    assert same_bits(b.numpy(), b.numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    assert s.item() == np.float32(x.abs().max().item()) / np.float32(2688.0)
    # the block holding the tensor's amax gets the top block scale
    assert b.max().item() == 448.0
    # axis: blocks along axis 0
    e0, b0, _ = nvfp4_encode(x.T.contiguous(), axis=0)
    assert b0.shape == (4, 8) and torch.equal(b0, b.T) and torch.equal(e0, elements.T)


def test_nvfp4_special_values():
    zeros = torch.zeros(2, 32)
    assert torch.equal(nvfp4_quantize(zeros), zeros)  # torchao gives NaN here; s is taken as 1
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    x[0, 3] = float("nan")
    assert torch.isnan(nvfp4_quantize(x)).all()  # the per-tensor scale is NaN
    assert torch.isnan(nvfp4_quantize(x, per_tensor_scale=None)[0, :16]).all()
    assert not torch.isnan(nvfp4_quantize(x, per_tensor_scale=None)[0, 16:]).any()


# --------------------------------------------------------------------------- torchao, bit for bit
def _torchao():
    """torchao's MX/NVFP4 modules (``pip install -c .ci/constraints.txt torchao``), or a skip."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor
            from torchao.prototype.mx_formats.config import ScaleCalculationMode
            from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    except ImportError as exc:
        pytest.skip(f"torchao's MX/NVFP4 reference is not importable: {exc}")
    dtypes = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "fp6_e2m3": DTYPE_FP6_E2M3,
              "fp6_e3m2": DTYPE_FP6_E3M2, "fp4_e2m1": torch.float4_e2m1fn_x2}
    return mx_tensor, nvfp4_tensor, ScaleCalculationMode, dtypes


def _mixed_magnitudes(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(192, 256, generator=gen) * torch.exp2(torch.randint(-60, 60, (192, 1), generator=gen).float())
    x *= torch.exp2(torch.rand(x.shape, generator=gen) * 8 - 4)
    x[0, :32] = 0.0
    x[1, :32] = -0.0
    x[2, 5] = float("nan")
    x[3, 7] = float("inf")
    x[4, 40] = -float("inf")
    x[5, :32] = torch.randn(32, generator=gen) * 3e38 / 4
    x[6, 64:96] = torch.tensor([2.0**-126] * 16 + [2.0**-130] * 16)  # scale 2**-127 (torchao's corner)
    # amax / max just above 2**111 for e4m3, e5m2 and e3m2: torch.log2 rounds to 111 (RCEIL below)
    x[7, :32] = torch.randn(32, generator=gen) * 1e35
    x[7, 0] = 1.1630763977877017e36
    return x


@pytest.mark.parametrize("rounding", MX_SCALE_ROUNDINGS)
@pytest.mark.parametrize("elem", ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"])
def test_mx_bit_exact_with_torchao(elem, rounding):
    mx_tensor, _, mode, dtypes = _torchao()
    x = _mixed_magnitudes()
    scale, data = mx_tensor.to_mx(x.clone(), dtypes[elem], 32, mode(rounding))
    ref = mx_tensor.to_dtype(data, scale, dtypes[elem], 32, torch.float32)
    elements, codes = mx_encode(x, elem, scale_rounding=rounding)
    theirs = scale.view(torch.uint8)
    missed = torch.zeros_like(codes, dtype=torch.bool)
    if rounding == "rceil":
        # torchao's eager RCEIL takes ceil(torch.log2(amax / max)); where amax / max lies just above
        # a power of two, torch.log2 rounds to the integer and misses the ceiling by one (NVIDIA's
        # instruction and precal round up exactly).
        d = x.reshape(192, -1, 32).abs().amax(-1) / MX_ELEMENTS[elem].max
        log2 = torch.log2(d)
        missed = (log2 == torch.round(log2)) & ((d.view(torch.int32) & 0x7FFFFF) != 0) & (d >= 2.0**-126)
        assert torch.equal(codes[missed].int(), theirs[missed].int() + 1)
        assert missed.any() == (elem in ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2"))
    assert torch.equal(codes[~missed], theirs[~missed])  # every other E8M0 code
    # torchao divides by 2**-126 where the scale is 2**-127 (and RCEIL multiplies by 1 there)
    # but multiplies back by 2**-127; precal uses 2**-127 both ways, as the spec does.
    corner = (codes == 0).repeat_interleave(32, dim=1)
    assert corner.any() and corner.sum() < x.numel() // 20
    compared = ~corner & ~missed.repeat_interleave(32, dim=1)
    got = mx_quantize(x, elem, scale_rounding=rounding)
    assert same_bits(got[compared].numpy(), ref[compared].numpy())
    # the corner blocks without nonzero elements agree as well (zeros)
    zero_rows = corner & (x == 0)
    assert same_bits(got[zero_rows].numpy(), ref[zero_rows].numpy())


def test_mx_bit_exact_with_torchao_mxtensor_bf16():
    mx_tensor, _, mode, dtypes = _torchao()
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(8)).bfloat16() * 7
    t = mx_tensor.MXTensor.to_mx(x, torch.float8_e4m3fn, 32)
    assert torch.equal(t.dequantize(torch.bfloat16), mx_quantize(x, "fp8_e4m3"))
    t4 = mx_tensor.MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32)
    assert torch.equal(t4.dequantize(torch.bfloat16), mx_quantize(x, "fp4_e2m1"))


@pytest.mark.parametrize("per_tensor", ["amax", None, "static"])
def test_nvfp4_bit_exact_with_torchao(per_tensor):
    _, nvfp4_tensor, _, _ = _torchao()
    x = _mixed_magnitudes(1)[:, :]
    x = torch.where(torch.isfinite(x), x, torch.ones_like(x))
    x[5] = 1.0  # keep the tensor amax moderate so that the block scales span e4m3's range
    x = x.clamp(-1e30, 1e30)
    if per_tensor == "amax":
        s = nvfp4_tensor.per_tensor_amax_to_scale(x.abs().max())
        ours = nvfp4_quantize(x)
    elif per_tensor == "static":
        s = torch.tensor(0.37)
        ours = nvfp4_quantize(x, per_tensor_scale=0.37)
    else:
        s = None
        ours = nvfp4_quantize(x, per_tensor_scale=None)
    ref = nvfp4_tensor.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=s).dequantize(torch.float32)
    assert same_bits(ours.numpy(), ref.numpy())


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_nvfp4_special_values_like_torchao(fill):
    _, nvfp4_tensor, _, _ = _torchao()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    x[1, 3] = fill
    s = nvfp4_tensor.per_tensor_amax_to_scale(x.abs().max())
    ref = nvfp4_tensor.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=s).dequantize(torch.float32)
    assert same_bits(nvfp4_quantize(x).numpy(), ref.numpy())


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"elem_format": "fp16"}, "not an MX element format"),
    ({"elem_format": "int4"}, "not an MX element format"),
    ({"elem_format": "fp7"}, "not an MX element format"),
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"block_size": 2.5}, "block_size must be a positive integer"),
    ({"block_size": True}, "block_size must be a positive integer"),
    ({"axis": 2}, "axis=2 is out of range"),
    ({"axis": 1.0}, "axis=1.0 is out of range"),
    ({"scale_rounding": "nearest"}, "scale_rounding must be one of"),
])
def test_mx_bad_arguments(kwargs, match):
    args = {"elem_format": "fp8_e4m3"} | kwargs
    with pytest.raises(ValueError, match=match):
        mx_quantize(torch.ones(2, 32), **args)
    with pytest.raises(ValueError, match=match):
        mx_encode(torch.ones(2, 32), **args)


def test_bad_tensors():
    with pytest.raises(ValueError, match="floating-point"):
        mx_quantize(torch.ones(32, dtype=torch.int32), "fp4")
    with pytest.raises(ValueError, match="0-d"):
        mx_quantize(torch.tensor(1.0), "fp4")
    with pytest.raises(ValueError, match="0-d"):
        nvfp4_quantize(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        nvfp4_quantize([1.0, 2.0])
    with pytest.raises(TypeError, match="elem_format must be a format name"):
        mx_quantize(torch.ones(32), 4)
    assert mx_quantize(torch.ones(0, 32), "fp4").shape == (0, 32)
    assert nvfp4_quantize(torch.ones(3, 0)).shape == (3, 0)
    elements, codes = mx_encode(torch.ones(0, 40), "fp8_e4m3")
    assert elements.shape == (0, 40) and codes.shape == (0, 2)
    elements, scales, s = nvfp4_encode(torch.ones(0, 40))
    assert elements.shape == (0, 40) and scales.shape == (0, 3) and s.item() == 1.0


@pytest.mark.parametrize("value, error, match", [
    ("max", ValueError, "per_tensor_scale must be 'amax'"),
    (-1.0, ValueError, "finite and > 0"),
    (0.0, ValueError, "finite and > 0"),
    (float("nan"), ValueError, "finite and > 0"),
    (torch.ones(2), ValueError, "a single number"),
    ([1.0], TypeError, "per_tensor_scale must be"),
    (True, TypeError, "per_tensor_scale must be"),
])
def test_nvfp4_bad_per_tensor_scale(value, error, match):
    with pytest.raises(error, match=match):
        nvfp4_quantize(torch.ones(2, 16), per_tensor_scale=value)


def test_decode_bad_input():
    elements, codes = mx_encode(torch.randn(4, 64), "fp4")
    with pytest.raises(ValueError, match="uint8 E8M0 codes"):
        mx_decode(elements, codes.int())
    with pytest.raises(ValueError, match="one code per block"):
        mx_decode(elements, codes[:, :1])
    with pytest.raises(TypeError, match="torch tensors"):
        mx_decode(elements.numpy(), codes)
    e, b, s = nvfp4_encode(torch.randn(4, 64))
    with pytest.raises(ValueError, match="one scale per block"):
        nvfp4_decode(e, b[:, :2], s)


@pytest.mark.parametrize("name, match", [
    ("mxfp5", "Unknown block format"), ("nvfp4-rceil", "takes no scale rule"), ("mxfp4-up", "Unknown block format"),
])
def test_block_format_names(name, match):
    with pytest.raises(ValueError, match=match):
        block_quantize(torch.ones(32), name)


def test_block_quantize_names_map_to_the_formats():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    for name, elem in BLOCK_FORMATS.items():
        expected = nvfp4_quantize(x) if elem == "nvfp4" else mx_quantize(x, elem)
        assert torch.equal(block_quantize(x, name), expected), name
    assert torch.equal(block_quantize(x, "MXFP4-rceil", axis=0), mx_quantize(x, "fp4", axis=0, scale_rounding="rceil"))


# --------------------------------------------------------------------------- model configs
class BlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)  # 3 input channels: one short block
        self.conv = nn.Conv2d(32, 64, 3, padding=1)
        self.conv1d = nn.Conv1d(64, 16, 1, bias=False)
        self.fc1 = nn.Linear(16 * 16, 48)  # 256 = 8 blocks of 32 / 16 of 16
        self.fc2 = nn.Linear(48, 10)  # 48 = 32 + 16: a short last MX block

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        x = nn.functional.max_pool2d(x, 2).flatten(2)  # (n, 64, 16)
        x = torch.relu(self.conv1d(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _by_hand(model, x, wq, aq):
    """The model's forward with weights and inputs of every layer quantized by hand."""
    def linear(layer, h):
        return nn.functional.linear(aq(h, -1), wq(layer.weight.detach(), 1), layer.bias)

    def conv(layer, h):
        return layer._conv_forward(aq(h, 1), wq(layer.weight.detach(), 1), layer.bias)

    h = torch.relu(conv(model.conv, torch.relu(conv(model.stem, x))))
    h = nn.functional.max_pool2d(h, 2).flatten(2)
    h = torch.relu(conv(model.conv1d, h)).flatten(1)
    return linear(model.fc2, torch.relu(linear(model.fc1, h)))


def _mx(elem, rounding="floor"):
    return lambda t, axis: mx_quantize(t, elem, axis=axis, scale_rounding=rounding)


CONFIGS = {
    "mxfp8": (_mx("fp8_e4m3"), _mx("fp8_e4m3")),
    "mxfp6": (_mx("fp6_e2m3"), _mx("fp6_e2m3")),
    "mxfp4": (_mx("fp4_e2m1"), _mx("fp4_e2m1")),
    "mxint8": (_mx("int8"), _mx("int8")),
    "mxfp4-rceil": (_mx("fp4_e2m1", "rceil"), _mx("fp4_e2m1", "rceil")),
    "nvfp4": ((lambda t, axis: nvfp4_quantize(t, axis=axis)),) * 2,
    "w-mxfp4": (_mx("fp4_e2m1"), lambda t, axis: t),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_model_config_equals_quantizing_by_hand(config):
    torch.manual_seed(0)
    model = BlockNet().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    emulated = emulate_model(model, config)
    layers = [m for m in emulated.modules() if isinstance(m, EmulatedLayer)]
    assert len(layers) == 5
    wq, aq = CONFIGS[config]
    with torch.no_grad():
        got = emulated(x)
        expected = _by_hand(model, x, wq, aq)
        fp32 = model(x)
    assert torch.equal(got, expected)
    assert not torch.equal(got, fp32)
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[key])


def test_parse_block_configs():
    cfg = parse_config("mxfp4")
    assert (cfg.weight_block, cfg.act_block, cfg.weight_format, cfg.act_format) == ("mxfp4", "mxfp4", None, None)
    assert not cfg.is_identity
    w = parse_config("W-MXFP8-rceil")
    assert (w.name, w.weight_block, w.act_block) == ("w-mxfp8-rceil", "mxfp8-rceil", None)
    assert parse_config("nvfp4").act_block == "nvfp4"
    for bad in ("mxfp5", "w-nvfp4-floor", "mx"):
        with pytest.raises(ValueError, match="Unknown config"):
            parse_config(bad)
    with pytest.raises(ValueError, match="Unknown block format"):
        QuantConfig(name="custom", weight_block="mxfp3")


def test_block_configs_in_sweep_need_no_calibration_data():
    torch.manual_seed(0)
    model = BlockNet().eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = sweep(model, x, ["fp32", "mxfp8", "mxfp4", "nvfp4"], batch_size=8, progress=False)
    ref = out["fp32"]
    err = {k: float(np.abs(v - ref).mean()) for k, v in out.items()}
    assert 0 < err["mxfp8"] < err["mxfp4"]
    assert err["nvfp4"] > 0

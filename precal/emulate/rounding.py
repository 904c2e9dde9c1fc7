"""Element-wise rounding of float32 values onto a float format's grid (the emulator's core).

Every format is emulated as float32 values restricted to the format's grid ("fp32
carrier"), on the input's device, with plain torch element-wise ops:

* **round to nearest, ties to even** on the float32 bit pattern: add ``2**(s-1) - 1`` plus
  the lowest kept bit, then clear the ``s = 23 - nmant`` dropped bits (a carry moves into
  the exponent as it must); below the format's smallest normal the grid is uniform, and
  float32 addition of the "magic" constant ``2**(emin - nmant + 23)`` rounds to it; the
  masks (NaN, subnormal range, overflow) are integer comparisons on the sign-less bits;
* **stochastic rounding**: ``floor(|x| / ulp + U) * ulp`` with ``U ~ Uniform[0, 1)`` from a
  caller's ``torch.Generator``, unbiased;
* then the overflow rule: saturate to ``±max``, or inf (IEEE formats), or NaN (``...fn``
  formats); NaN stays NaN (also for fp6/fp4, which have no NaN encoding: NaN is kept as a
  poison value in the carrier, where ml_dtypes would return -0.0); the sign of zero is kept.

Where torch has the format natively (bf16, fp16, fp8 e4m3fn, fp8 e5m2) and its cast already
follows the requested overflow rule, the cast is used instead (same bits, faster).
"""

from __future__ import annotations

import torch

from .formats import FloatFormat

__all__ = ["round_float", "ROUNDING_MODES"]

ROUNDING_MODES = ("nearest", "stochastic")

# Overflow behaviour of torch 2.x native casts from float32: e4m3fn saturates (torch >= 2.13;
# older releases gave NaN, which is why the fast path is only taken when it has been checked
# at import time), the IEEE-like formats overflow to inf.
_NATIVE_SATURATES: dict[str, bool] = {}


def _native_cast_saturates(dtype: torch.dtype) -> bool:
    key = str(dtype)
    if key not in _NATIVE_SATURATES:
        probe = torch.tensor([1e6, float("inf")], dtype=torch.float32).to(dtype).float()
        _NATIVE_SATURATES[key] = bool(torch.isfinite(probe).all())
    return _NATIVE_SATURATES[key]


def _float_bits(value: float) -> int:
    """The float32 bit pattern of ``value`` as a Python int."""
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))


_SIGN = -(2**31)  # 0x80000000 as int32
_MAG = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_NAN_BITS = 0x7FC00000


def _round_nearest_bits(x: torch.Tensor, fmt: FloatFormat, saturate: bool) -> torch.Tensor:
    """RNE of float32 ``x`` onto ``fmt``'s grid, done on the int32 bit pattern.

    Positive float32 bit patterns are ordered like the values, so masks and the overflow
    test are integer comparisons; the sign bit is set aside and restored at the end. Work
    buffers are reused in place (this path is memory-bound).
    """
    bits = x.view(torch.int32)
    sign = bits & _SIGN
    mag = bits & _MAG
    is_nan = mag > _INF_BITS
    shift = 23 - fmt.nmant
    out = (mag >> shift) & 1
    out += mag
    out += (1 << (shift - 1)) - 1
    out &= ~((1 << shift) - 1)
    # Below 2**emin the grid is uniform with step 2**(emin - nmant): float32 addition of a
    # constant whose ulp is that step rounds to it (RNE), exactly.
    is_sub = mag < _float_bits(2.0**fmt.emin)
    magic = 2.0 ** (fmt.emin - fmt.nmant + 23)
    sub = mag.view(torch.float32) + magic
    sub -= magic
    torch.where(is_sub, sub.view(torch.int32), out, out=out)
    if saturate:
        overflow_bits = _float_bits(fmt.max)
    else:
        overflow_bits = _INF_BITS if fmt.has_inf else _NAN_BITS
    out.masked_fill_(out > _float_bits(fmt.max), overflow_bits)
    torch.where(is_nan, mag, out, out=out)
    out |= sign
    return out.view(torch.float32)


def _round_stochastic_magnitude(a: torch.Tensor, fmt: FloatFormat, generator: torch.Generator | None) -> torch.Tensor:
    _, exponent = torch.frexp(a)  # a = m 2^E, m in [0.5, 1): floor(log2 a) = E - 1
    e = torch.clamp(exponent - 1, min=fmt.emin)
    ulp = torch.ldexp(torch.ones_like(a), (e - fmt.nmant).to(torch.int32))
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32)
    return torch.floor(a / ulp + u) * ulp


def round_float(
    x: torch.Tensor,
    fmt: FloatFormat,
    *,
    rounding: str = "nearest",
    saturate: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round float32 ``x`` to the grid of ``fmt``; returns float32 on ``x``'s device.

    Parameters
    ----------
    x : torch.Tensor of float32
    fmt : FloatFormat
    rounding : {"nearest", "stochastic"}
        Round to nearest with ties to even, or stochastic rounding (unbiased).
    saturate : bool, optional
        Overflow to ``±max`` (True) or to inf/NaN per the format (False); default
        ``fmt.saturate``.
    generator : torch.Generator, optional
        Source of the uniform draws for stochastic rounding (on ``x``'s device).
    """
    saturate = fmt.saturate if saturate is None else saturate
    if fmt.nmant >= 23 and fmt.nexp >= 8:  # fp32 itself
        return x
    native = getattr(torch, fmt.torch_dtype) if fmt.torch_dtype else None
    if rounding == "nearest" and native is not None and native != torch.float32:
        if _native_cast_saturates(native) == saturate:
            return x.to(native).to(torch.float32)
        if saturate:  # clamping first is exact: every value past max rounds to max or beyond
            return x.clamp(-fmt.max, fmt.max).to(native).to(torch.float32)
    if rounding == "nearest":
        return _round_nearest_bits(x.contiguous(), fmt, saturate)
    if rounding != "stochastic":
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}.")
    q = _round_stochastic_magnitude(torch.nan_to_num(x.abs(), nan=0.0, posinf=fmt.max * 4), fmt, generator)
    over = q > fmt.max
    if saturate:
        q = torch.where(over, torch.full_like(q, fmt.max), q)
    else:
        q = torch.where(over, torch.full_like(q, float("inf") if fmt.has_inf else float("nan")), q)
    q = torch.copysign(q, x)
    return torch.where(torch.isnan(x), x, q)

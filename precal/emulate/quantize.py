"""Fake quantization: round a tensor to a number format and return it in its own dtype.

One function, :func:`quantize`, covers every format of :mod:`precal.emulate.formats` and
the three granularities of a scale:

=====================  ======================  =========================================
granularity            arguments               one scale per
=====================  ======================  =========================================
per-tensor             ``axis=None``           the whole tensor
per-channel            ``axis=a``              index along axis ``a``
per-group              ``group_size=g``        ``g`` consecutive elements of each channel
                       (``axis`` default 0)    (the channel's elements flattened)
=====================  ======================  =========================================

Float formats without ``axis``/``group_size`` are a plain cast (no scale). With them, each
block is scaled so that its largest magnitude maps to the format's ``max`` (amax scaling,
as FP8 per-tensor recipes do), rounded, and scaled back.

Integer formats always use scales: symmetric ``q = clamp(round(x / s), qmin, qmax)``,
``x_hat = q s``; asymmetric ``q = clamp(round(x / s) + z, qmin, qmax)``,
``x_hat = (q - z) s``. Like ``torch.fake_quantize_*`` it multiplies by ``1/s`` (not divides)
and rounds ties to even, so it is bit-identical to those ops for the same scales.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from .formats import FloatFormat, IntFormat, format_info
from .rounding import ROUNDING_MODES, round_float

__all__ = ["quantize", "fake_quantize_int", "int_qparams", "SCALE_RULES"]

#: ``"qmax"``: ``s = amax / qmax`` (amax maps onto the largest code; TensorRT and most papers).
#: ``"half_range"``: ``s = amax / ((qmax - qmin) / 2)`` = ``amax / (qmax + 0.5)`` for signed
#: formats (torch.ao observers, torchao ``SYMMETRIC``, GPTQ): +amax lands on ``qmax + 0.5``
#: and is clipped to ``qmax``.
SCALE_RULES = ("qmax", "half_range")


def _check_tensor(x: Any) -> tuple[torch.Tensor, bool]:
    """Return (tensor, was_numpy); refuse non-float input."""
    was_numpy = isinstance(x, np.ndarray)
    if was_numpy:
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize takes a torch.Tensor or numpy array, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ValueError(f"quantize needs a floating-point tensor, got dtype {x.dtype}.")
    return x, was_numpy


def _blocks(x: torch.Tensor, axis: int | None, group_size: int | None) -> tuple[torch.Tensor, Any]:
    """View ``x`` as ``(channels, groups, block)`` and return it with a function undoing the view."""
    shape = x.shape
    if axis is None and group_size is None:
        return x.reshape(1, 1, -1), lambda b: b.reshape(shape)
    if x.dim() == 0:
        raise ValueError("axis/group_size need a tensor with at least one dimension.")
    axis = 0 if axis is None else axis
    if not isinstance(axis, numbers.Integral) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis!r} is out of range for a tensor with {x.dim()} dimensions.")
    axis = int(axis) % x.dim()
    moved = torch.movedim(x, axis, 0)
    moved_shape = moved.shape
    channels = moved_shape[0]
    per_channel = int(np.prod(moved_shape[1:], dtype=np.int64))
    if group_size is None:
        g = max(per_channel, 1)
    else:
        if not isinstance(group_size, numbers.Integral) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
        g = int(group_size)
        if per_channel % g:
            raise ValueError(
                f"group_size={g} does not divide the {per_channel} elements per channel along axis {axis}."
            )
    blocks = moved.reshape(channels, -1, g)
    return blocks, lambda b: torch.movedim(b.reshape(moved_shape), 0, axis)


def _finite_stats(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block min and max over finite values (NaN/inf excluded; all-non-finite -> 0)."""
    finite = torch.isfinite(blocks)
    lo = torch.where(finite, blocks, torch.zeros_like(blocks)).amin(dim=-1, keepdim=True)
    hi = torch.where(finite, blocks, torch.zeros_like(blocks)).amax(dim=-1, keepdim=True)
    return lo, hi


def int_qparams(
    lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat, *, symmetric: bool = True, scale_rule: str = "qmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32 tensors) that map ``[lo, hi]`` onto ``fmt``'s codes.

    Symmetric: ``s = amax / qmax`` or ``amax / ((qmax - qmin) / 2)`` (``scale_rule``),
    ``z = 0``. Asymmetric (the range is first widened to include 0, as torch.ao does):
    ``s = (hi - lo) / (qmax - qmin)``, ``z = clamp(qmin - round(lo / s), qmin, qmax)``.
    A zero range gets ``s = 1``; a scale below the smallest normal float32 is raised to it
    (``1/s`` must stay finite).
    """
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}.")
    lo = lo.float()
    hi = hi.float()
    if symmetric:
        if not fmt.signed:
            raise ValueError(f"{fmt.name} is unsigned: use symmetric=False (asymmetric with a zero point).")
        amax = torch.maximum(lo.abs(), hi.abs())
        denom = fmt.qmax if scale_rule == "qmax" else (fmt.qmax - fmt.qmin) / 2.0
        scale = amax / denom
        zero = torch.zeros_like(scale)
    else:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        scale = (hi - lo) / float(fmt.qmax - fmt.qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(fmt.qmin - torch.round(lo / safe), fmt.qmin, fmt.qmax)
    # a zero range gets s = 1; a subnormal one the smallest normal float32, so that 1/s stays finite
    scale = torch.where(scale > 0, torch.clamp(scale, min=torch.finfo(torch.float32).tiny), torch.ones_like(scale))
    return scale, zero


def fake_quantize_int(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    *,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(clamp(round(x * (1/s)) + z, qmin, qmax) - z) * s`` on float32 ``x`` (broadcast scales).

    ``rounding="nearest"`` rounds ties to even (``torch.round``), which makes this
    bit-identical to ``torch.fake_quantize_per_channel_affine``; ``"stochastic"`` uses
    ``floor(y + U)``. NaN stays NaN; ±inf saturates to the extreme codes.
    """
    y = x * (1.0 / scale)
    if rounding == "nearest":
        q = torch.round(y)
    elif rounding == "stochastic":
        u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        q = torch.floor(y + u)
    else:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}.")
    q = torch.clamp(q + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def quantize(
    x: Any,
    fmt: str | FloatFormat | IntFormat,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    symmetric: bool = True,
    rounding: str = "nearest",
    saturate: bool | None = None,
    scale_rule: str = "qmax",
    generator: torch.Generator | None = None,
) -> Any:
    r"""Fake-quantize ``x`` to a number format; same dtype, device and shape as ``x``.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, floating point
        Values to round. Computation uses a float32 carrier on ``x``'s device: float16 and
        bfloat16 inputs are exact in it; float64 inputs are first rounded to float32.
    fmt : str or format record
        A name known to :func:`~precal.emulate.format_info` (``"bf16"``, ``"fp8_e4m3"``,
        ``"fp4_e2m1"``, ``"int8"``, ``"int4"``, ...).
    axis : int, optional
        Per-channel scales along this axis (see the module docstring).
    group_size : int, optional
        Per-group scales: groups of this many consecutive elements of each channel.
        Must divide the number of elements per channel.
    symmetric : bool, default=True
        Integer formats: symmetric (zero point 0) or asymmetric scales. Unsigned formats
        need ``symmetric=False``; float formats only scale symmetrically.
    rounding : {"nearest", "stochastic"}, default="nearest"
        Ties to even, or unbiased stochastic rounding drawn from ``generator``.
    saturate : bool, optional
        Float formats: clamp overflow to ``±max`` (True) or give inf/NaN as the format
        defines (False); default is the format's (:attr:`FloatFormat.saturate`: True for
        fp8_e4m3, fp6, fp4; False for fp16, bf16, fp8_e5m2, tf32). Integer codes always clamp.
    scale_rule : {"qmax", "half_range"}, default="qmax"
        Symmetric integer scale ``amax / qmax`` or ``amax / ((qmax - qmin) / 2)``
        (torch.ao/GPTQ convention; see :data:`SCALE_RULES`).
    generator : torch.Generator, optional
        Seeds stochastic rounding (the same seed gives the same result on one device).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Like ``x``, with every value on the format's grid (times its block's scale).

    Raises
    ------
    ValueError
        Unknown format or rounding, non-float input, bad axis, a group size that does
        not divide the channel, a float format with ``symmetric=False``, an unsigned
        format with ``symmetric=True``.

    Notes
    -----
    NaN inputs stay NaN in every format (fp6/fp4 have no NaN code: NaN is kept as a poison
    value). Scales are computed from finite values only, so a NaN or inf does not spoil its
    block; inf saturates (integer formats, saturating floats) or stays inf/NaN per the
    format. Round-to-nearest results are bit-identical to ml_dtypes' casts (tests cover
    every tie, subnormal and overflow case).

    Examples
    --------
    >>> import torch
    >>> from precal.emulate import quantize
    >>> quantize(torch.tensor([0.3, 1.3, 2.5, 5.0, 100.0]), "fp4_e2m1")
    tensor([0.5000, 1.5000, 2.0000, 4.0000, 6.0000])
    >>> quantize(torch.tensor([[1.0, -0.5], [0.1, 0.2]]), "int4", axis=0)  # codes [7, -3], [4, 7]
    tensor([[ 1.0000, -0.4286],
            [ 0.1143,  0.2000]])
    """
    t, was_numpy = _check_tensor(x)
    f = format_info(fmt)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}.")
    x32 = t.to(torch.float32)
    if isinstance(f, FloatFormat):
        if not symmetric:
            raise ValueError(f"{f.name} is a float format: only symmetric (amax) scaling applies.")
        if axis is None and group_size is None:
            out = round_float(x32, f, rounding=rounding, saturate=saturate, generator=generator)
        else:
            blocks, restore = _blocks(x32, axis, group_size)
            lo, hi = _finite_stats(blocks)
            amax = torch.maximum(lo.abs(), hi.abs())
            scale = torch.where(amax > 0, amax / f.max, torch.ones_like(amax))
            scaled = round_float(blocks / scale, f, rounding=rounding, saturate=saturate, generator=generator)
            out = restore(scaled * scale)
    else:
        blocks, restore = _blocks(x32, axis, group_size)
        lo, hi = _finite_stats(blocks)
        scale, zero = int_qparams(lo, hi, f, symmetric=symmetric, scale_rule=scale_rule)
        out = restore(fake_quantize_int(blocks, scale, zero, f.qmin, f.qmax, rounding=rounding, generator=generator))
    out = out.to(t.dtype)
    return out.numpy() if was_numpy else out

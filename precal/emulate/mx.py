r"""Block-scaled formats: OCP Microscaling (MX v1.0) and NVIDIA NVFP4, as fake quantization.

Both formats cut a tensor into short blocks along one axis (the reduction dimension of a
matrix product) and give each block its own scale; the elements are tiny floats.

**MX** (OCP Microscaling Formats Specification v1.0, 2023; Rouhani et al., "Microscaling
Data Formats for Deep Learning", arXiv:2310.10537): blocks of ``k = 32`` elements share
one E8M0 scale ``X = 2**e`` (an 8-bit biased exponent, ``e`` in -127..127, code
``e + 127``; code 255 is NaN; no zero, no sign). Elements are FP8 (E4M3, E5M2), FP6
(E3M2, E2M3), FP4 (E2M1) or INT8 (two's complement with an implicit ``2**-6``). The
conversion of the spec (section 6.3) takes

.. math::

    e = \mathrm{clamp}\big(\lfloor \log_2 \max_i |V_i| \rfloor - e_{\max,\mathrm{elem}},\ -127,\ 127\big),
    \qquad P_i = \mathrm{RNE}_{\mathrm{sat}}(V_i / 2^e), \qquad \hat V_i = 2^e P_i,

where ``emax_elem`` is the exponent of the element format's largest power of two (8 for
E4M3, 15 for E5M2, 4 for E3M2, 2 for E2M3 and E2M1, 0 for INT8). Because the floor keeps
``2**e`` at or below ``amax / 2**emax_elem``, ``amax / X`` lies in
``[2**emax_elem, 2**(emax_elem + 1))`` and may exceed the element's max (e.g. 480 > 448 for
E4M3): elements saturate to ``±max``. Other scale rules (``scale_rounding``, as torchao's
``ScaleCalculationMode`` names them): ``"ceil"`` (``ceil(log2 amax) - emax_elem``: never
saturates, loses a bit at the bottom), ``"even"`` (round ``amax`` to the element's
mantissa width before the floor) and ``"rceil"`` (NVIDIA cuBLAS/TransformerEngine:
``X = 2**ceil(log2(amax / max_elem))``, the smallest power of two that avoids saturation).

**NVFP4** (NVIDIA Blackwell; TransformerEngine, torchao ``NVFP4Tensor``): blocks of 16
FP4 E2M1 elements, one FP8 E4M3 scale per block and one float32 scale per tensor:

.. math::

    s = \frac{\max|x|}{448 \cdot 6},\qquad
    b_j = \mathrm{RNE}_{\mathrm{e4m3}}\Big(\mathrm{clamp}\big(\tfrac{\max_{i \in j}|x_i| / 6}{s},\ 2^{-6},\ 448\big)\Big),\qquad
    P_i = \mathrm{RNE}_{\mathrm{e2m1,sat}}\Big(x_i \cdot \tfrac{1/s}{b_j}\Big),\qquad
    \hat x_i = P_i \cdot (s\, b_j),

each operation in float32, in this order (torchao's ``nvfp4_quantize`` and
``per_tensor_amax_to_scale``).

Every result is bit-identical to torchao 0.18's ``to_mx`` / ``MXTensor`` and
``NVFP4Tensor`` quantize-dequantize on CPU (tested), except in documented corners:
blocks whose MX scale is ``2**-127`` (torchao divides by ``2**-126`` there but multiplies
back by ``2**-127``; precal uses ``2**-127`` both ways, as the spec does), and an all-zero
tensor in NVFP4 (torchao returns NaN; precal returns zeros, with the per-tensor scale
taken as 1 as TransformerEngine does). See the docs page ``emulate-mx.md``.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .formats import FloatFormat, format_info
from .quantize import _check_tensor
from .rounding import round_float

__all__ = [
    "MXElement",
    "MX_ELEMENTS",
    "MX_SCALE_ROUNDINGS",
    "BLOCK_FORMATS",
    "mx_quantize",
    "mx_encode",
    "mx_decode",
    "nvfp4_quantize",
    "nvfp4_encode",
    "nvfp4_decode",
    "block_quantize",
]

#: Scale rules for MX blocks (torchao ``ScaleCalculationMode`` names); ``"floor"`` is the spec's.
MX_SCALE_ROUNDINGS = ("floor", "ceil", "even", "rceil")

E8M0_BIAS = 127
E8M0_NAN = 255
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127
MX_BLOCK_SIZE = 32
NVFP4_BLOCK_SIZE = 16
_E4M3 = format_info("fp8_e4m3")
_E2M1 = format_info("fp4_e2m1")
#: NVFP4's per-tensor scale maps the tensor's amax onto ``448 * 6`` (e4m3 max times e2m1 max).
NVFP4_TENSOR_DENOMINATOR = _E4M3.max * _E2M1.max


@dataclass(frozen=True)
class MXElement:
    """An MX element format: what the shared-scale rule needs to know about it.

    Parameters
    ----------
    name : str
        precal's format name (``"fp8_e4m3"``, ..., ``"int8"``).
    emax : int
        Exponent of the largest power of two the element can hold (``emax_elem`` of the
        spec): 8 (E4M3), 15 (E5M2), 4 (E3M2), 2 (E2M3, E2M1), 0 (INT8).
    max : float
        Largest magnitude: 448, 57344, 28, 7.5, 6, and 127/64 for INT8.
    mbits : int
        Fraction bits (used by the ``"even"`` scale rule): 3, 2, 2, 3, 1, and 6 for INT8.
    """

    name: str
    emax: int
    max: float
    mbits: int

    @property
    def float_format(self) -> FloatFormat | None:
        """The element's :class:`FloatFormat` (None for INT8)."""
        return None if self.name == "int8" else format_info(self.name)


def _float_element(name: str) -> MXElement:
    f = format_info(name)
    return MXElement(f.name, f.emax, f.max, f.nmant)


#: MX element formats of the OCP v1.0 spec, by precal format name. MX INT8 is symmetric,
#: ``k / 64`` for ``k`` in -127..127 (as in Microsoft's microxcaling reference code).
MX_ELEMENTS: dict[str, MXElement] = {
    **{n: _float_element(n) for n in ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1")},
    "int8": MXElement("int8", 0, 127 / 64, 6),
}

#: Named block formats (model config names): MX element format, or ``"nvfp4"``.
BLOCK_FORMATS: dict[str, str] = {
    "mxfp8": "fp8_e4m3",
    "mxfp8_e4m3": "fp8_e4m3",
    "mxfp8_e5m2": "fp8_e5m2",
    "mxfp6": "fp6_e2m3",
    "mxfp6_e2m3": "fp6_e2m3",
    "mxfp6_e3m2": "fp6_e3m2",
    "mxfp4": "fp4_e2m1",
    "mxint8": "int8",
    "nvfp4": "nvfp4",
}

_BLOCK_RE = re.compile(r"^([a-z0-9_]+?)(?:-(floor|ceil|even|rceil))?$")


# --------------------------------------------------------------------------- validation
def mx_element(elem_format: str | MXElement) -> MXElement:
    """The :class:`MXElement` of a name (aliases of :func:`format_info` accepted)."""
    if isinstance(elem_format, MXElement):
        return elem_format
    if not isinstance(elem_format, str):
        raise TypeError(f"elem_format must be a format name (str), got {type(elem_format).__name__}.")
    try:
        name = format_info(elem_format).name
    except ValueError:
        name = None
    if name not in MX_ELEMENTS:
        raise ValueError(
            f"elem_format={elem_format!r} is not an MX element format; valid: {sorted(MX_ELEMENTS)}."
        )
    return MX_ELEMENTS[name]


def _check_scale_rounding(scale_rounding: str) -> None:
    if scale_rounding not in MX_SCALE_ROUNDINGS:
        raise ValueError(f"scale_rounding must be one of {MX_SCALE_ROUNDINGS}, got {scale_rounding!r}.")


def _check_block_size(block_size: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    return int(block_size)


def _check_axis(axis: Any, ndim: int) -> int:
    if ndim == 0:
        raise ValueError("Block formats need a tensor with at least one dimension (got a 0-d tensor).")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis!r} is out of range for a tensor with {ndim} dimensions.")
    return int(axis) % ndim


# --------------------------------------------------------------------------- blocks and powers of two
def _to_blocks(x: torch.Tensor, block_size: int, axis: int):
    """View ``x`` as ``(..., n_blocks, block_size)`` along ``axis`` (zero-padded at the end).

    Returns the blocks and a function that maps a tensor of the blocks' shape back to ``x``'s
    layout (dropping the padding). Zero padding does not change a block's amax, so a short
    last block gets the scale of its own elements.
    """
    last = axis == x.dim() - 1
    moved = x if last else x.movedim(axis, -1)
    length = moved.shape[-1]
    n_blocks = -(-length // block_size)
    pad = n_blocks * block_size - length
    if pad:
        moved = nn.functional.pad(moved, (0, pad))
    lead = moved.shape[:-1]
    blocks = moved.reshape(*lead, n_blocks, block_size)

    def restore(b: torch.Tensor) -> torch.Tensor:
        out = b.reshape(*lead, n_blocks * block_size)
        if pad:
            out = out[..., :length]
        return out if last else out.movedim(-1, axis).contiguous()

    return blocks, restore


def _block_amax(blocks: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over the last dimension (keepdim); NaN if the block holds a NaN."""
    # amax and amin are each a fast reduction; abs() first would cost a full extra pass.
    return torch.maximum(blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True).neg_()).abs_()


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """``2.0**e`` as float32, exactly, for integer ``e`` in -149..127 (bit construction)."""
    normal = (e + 127).clamp_(min=0) << 23
    subnormal = torch.ones_like(e) << (e + 149).clamp_(0, 30)
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def _field_exponent(bits: torch.Tensor) -> torch.Tensor:
    """The float32 exponent field minus the bias: ``floor(log2 a)`` for normal ``a``; -127 for
    zero and subnormals; 128 for inf and NaN."""
    return ((bits >> 23) & 0xFF) - 127


def _ceil_log2(d: torch.Tensor) -> torch.Tensor:
    """``ceil(log2 d)`` for float32 ``d >= 0``, exact, clamped below at -127 (inf -> 128)."""
    bits = d.view(torch.int32)
    mant = bits & 0x7FFFFF
    normal = _field_exponent(bits) + (mant != 0).to(torch.int32)
    # subnormal d = m * 2**-149 <= 2**-127 iff m <= 2**22; above that (and below 2**-126): -126
    subnormal = torch.where(mant > (1 << 22), -126, -127).to(torch.int32)
    return torch.where(((bits >> 23) & 0xFF) == 0, subnormal, normal)


def _scale_exponents(amax: torch.Tensor, elem: MXElement, scale_rounding: str) -> torch.Tensor:
    """Shared exponent ``e`` (int32, clamped to -127..127) of each block from its amax.

    ``floor``/``ceil``/``even`` read the float32 exponent field of amax (torchao's rule: it
    equals ``floor(log2 amax)`` for every normal amax, and after the clamp for subnormal
    amax too); ``rceil`` is ``ceil(log2(amax / max_elem))``, computed exactly. The value for
    a NaN amax is meaningless: callers mark those blocks with the NaN code.
    """
    if scale_rounding == "rceil":
        e = _ceil_log2(amax / elem.max)
    else:
        bits = amax.view(torch.int32)
        if scale_rounding == "even":  # round amax to the element's mantissa width first
            bits = (bits + (1 << (22 - elem.mbits))) & 0x7F800000
        e = _field_exponent(bits)
        if scale_rounding == "ceil":
            e = e + ((bits & 0x7FFFFF) != 0).to(torch.int32)
        e = e - elem.emax
    return e.clamp_(E8M0_MIN_EXP, E8M0_MAX_EXP)


def _round_elements(y: torch.Tensor, elem: MXElement) -> torch.Tensor:
    """Round scaled values onto the element grid, ties to even, saturating (may reuse ``y``)."""
    if elem.name == "int8":
        return y.mul_(64.0).round_().clamp_(-127.0, 127.0).mul_(1.0 / 64.0)
    return round_float(y, elem.float_format, saturate=True)


def _mx_core(
    x32: torch.Tensor, elem: MXElement, block_size: int, axis: int, scale_rounding: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """(elements as blocks, scale exponents, NaN-block mask, restore) of float32 ``x32``."""
    blocks, restore = _to_blocks(x32, block_size, axis)
    amax = _block_amax(blocks)
    e = _scale_exponents(amax, elem, scale_rounding)
    elements = _round_elements(blocks * _pow2(-e), elem)  # x * 2**-e is exact, as x / 2**e is
    return elements, e, torch.isnan(amax), restore


def _finish(out: torch.Tensor, t: torch.Tensor, was_numpy: bool) -> Any:
    out = out.to(t.dtype)
    return out.numpy() if was_numpy else out


# --------------------------------------------------------------------------- MX
def mx_quantize(
    x: Any,
    elem_format: str,
    block_size: int = MX_BLOCK_SIZE,
    axis: int = -1,
    scale_rounding: str = "floor",
) -> Any:
    r"""Fake-quantize ``x`` to an OCP MX format; same shape, dtype and device as ``x``.

    Blocks of ``block_size`` consecutive elements along ``axis`` share a power-of-two scale
    ``X = 2**e`` (E8M0); each element is rounded to ``elem_format`` after division by ``X``
    (round to nearest, ties to even, saturating at the element's max) and multiplied back:

    .. math::

        e = \mathrm{clamp}(\lfloor\log_2 \max_{i}|x_i|\rfloor - e_{\max,\mathrm{elem}}, -127, 127),\qquad
        \hat x_i = 2^{e}\,\mathrm{RNE}_{\mathrm{sat}}(x_i / 2^{e})

    (OCP Microscaling Formats Specification v1.0, section 6.3; torchao ``ScaleCalculationMode.FLOOR``).

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, floating point
        Computation uses a float32 carrier on ``x``'s device (float64 is first rounded to
        float32); the result is cast back to ``x``'s dtype.
    elem_format : {"fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8"}
        Element format (aliases such as ``"e4m3"`` or ``"fp4"`` work). ``"int8"`` is MX
        INT8: ``k / 64`` for ``k`` in -127..127.
    block_size : int, default=32
        Elements per block (32 in the spec). A length along ``axis`` that is not a multiple
        leaves a shorter last block (as if zero-padded: padding does not change the amax).
    axis : int, default=-1
        Axis along which blocks run: the reduction dimension of the matrix product.
    scale_rounding : {"floor", "ceil", "even", "rceil"}, default="floor"
        ``"floor"``: the spec's rule above. ``"ceil"``: ``ceil(log2 amax) - emax_elem``.
        ``"even"``: ``amax`` is first rounded to the element's mantissa width. ``"rceil"``
        (NVIDIA): ``e = ceil(log2(amax / max_elem))``, exact, so no element saturates.

    Returns
    -------
    torch.Tensor or numpy.ndarray

    Raises
    ------
    ValueError
        Unknown element format or scale rule, bad block size or axis, 0-d or non-float input.

    Notes
    -----
    Special values: a NaN makes its block's scale NaN (code 255) and the whole block NaN.
    A zero block gives ``e = -127`` and zeros (signs kept). The clamp at -127 flushes the
    small elements of blocks with tiny amax; at the top, finite inputs never reach
    ``e = 127`` except in MX INT8. An inf makes amax inf, whose float32 exponent field reads
    as ``2**128`` (torchao's rule), so its block gets ``e = 128 - emax_elem``: the inf
    saturates to ``max * X``, which overflows float32 back to inf for the float elements
    (MX INT8, clamped at ``e = 127``, gives ``±(127/64) * 2**127``), and the finite elements
    are rounded on that coarse scale (all but the very largest become 0). The spec leaves
    inf/NaN inputs to the implementation; this is torchao's behaviour.

    Examples
    --------
    >>> import torch
    >>> from precal.emulate import mx_quantize
    >>> x = torch.tensor([[0.3, -1.3, 2.5, 5.0, 100.0, 0.0, 7.0, 1.0]])
    >>> mx_quantize(x, "fp4_e2m1", block_size=8)  # amax 100: X = 2**(6 - 2) = 16
    tensor([[ 0., -0.,  0.,  8., 96.,  0.,  8.,  0.]])
    """
    t, was_numpy = _check_tensor(x)
    elem = mx_element(elem_format)
    block_size = _check_block_size(block_size)
    axis = _check_axis(axis, t.dim())
    _check_scale_rounding(scale_rounding)
    if t.numel() == 0:
        return _finish(t.clone(), t, was_numpy)
    elements, e, nan_blocks, restore = _mx_core(t.to(torch.float32), elem, block_size, axis, scale_rounding)
    scale = _pow2(e).masked_fill_(nan_blocks, float("nan"))
    return _finish(restore(elements.mul_(scale)), t, was_numpy)


def mx_encode(
    x: Any,
    elem_format: str,
    block_size: int = MX_BLOCK_SIZE,
    axis: int = -1,
    scale_rounding: str = "floor",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MX encoding of ``x``: element values and E8M0 scale codes, for inspection.

    Same parameters as :func:`mx_quantize`.

    Returns
    -------
    elements : torch.Tensor of float32, shape of ``x``
        The elements ``P_i`` (values on the element grid, e.g. ``{0, ±0.5, ..., ±6}`` for
        FP4; ``k / 64`` for INT8). In a NaN block they carry no meaning.
    scale_codes : torch.Tensor of uint8
        Biased E8M0 exponents ``e + 127`` (0..254; 255 = NaN), shape of ``x`` with the
        ``axis`` dimension replaced by the number of blocks. The scale is ``2**(code - 127)``.

    ``mx_decode(*mx_encode(x, f, b, a, r), block_size=b, axis=a)`` equals
    ``mx_quantize(x, f, b, a, r)`` in float32.
    """
    t, _ = _check_tensor(x)
    elem = mx_element(elem_format)
    block_size = _check_block_size(block_size)
    axis = _check_axis(axis, t.dim())
    _check_scale_rounding(scale_rounding)
    elements, e, nan_blocks, restore = _mx_core(t.to(torch.float32), elem, block_size, axis, scale_rounding)
    codes = (e + E8M0_BIAS).masked_fill_(nan_blocks, E8M0_NAN).to(torch.uint8)
    codes = codes.squeeze(-1)
    if axis != t.dim() - 1:
        codes = codes.movedim(-1, axis).contiguous()
    return restore(elements), codes


def _blocks_and_scales(elements: torch.Tensor, scales: torch.Tensor, block_size: int, axis: int, name: str,
                       what: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``elements`` as float32 blocks along ``axis`` (that axis last), ``scales`` moved to match them
    (one per block, checked), and the function that restores the blocks' layout."""
    axis = _check_axis(axis, elements.dim())
    blocks, restore = _to_blocks(elements.to(torch.float32), block_size, axis)
    moved = scales if axis == elements.dim() - 1 else scales.movedim(axis, -1)
    if moved.shape != blocks.shape[:-1]:
        raise ValueError(f"{name} has shape {tuple(scales.shape)}; expected one {what} per block of "
                         f"{block_size} along axis {axis}: {tuple(blocks.shape[:-1])} with that axis last.")
    return blocks, moved, restore


def mx_decode(elements: torch.Tensor, scale_codes: torch.Tensor, *, block_size: int = MX_BLOCK_SIZE,
              axis: int = -1) -> torch.Tensor:
    """Float32 values ``P_i * 2**(code - 127)`` of an MX encoding (code 255: NaN block).

    Parameters
    ----------
    elements : torch.Tensor
        Element values, as :func:`mx_encode` returns them.
    scale_codes : torch.Tensor of uint8
        E8M0 codes, one per block along ``axis``.
    block_size, axis : int
        As given to :func:`mx_encode`.
    """
    if not isinstance(elements, torch.Tensor) or not isinstance(scale_codes, torch.Tensor):
        raise TypeError("elements and scale_codes must be torch tensors (as mx_encode returns them).")
    if scale_codes.dtype != torch.uint8:
        raise ValueError(f"scale_codes must be uint8 E8M0 codes, got dtype {scale_codes.dtype}.")
    blocks, codes, restore = _blocks_and_scales(elements, scale_codes, _check_block_size(block_size), axis,
                                                "scale_codes", "code")
    codes = codes.to(torch.int32).unsqueeze(-1)
    scale = _pow2(codes - E8M0_BIAS).masked_fill_(codes == E8M0_NAN, float("nan"))
    return restore(blocks * scale)


# --------------------------------------------------------------------------- NVFP4
def _nvfp4_tensor_scale(x32: torch.Tensor, per_tensor_scale: Any) -> torch.Tensor | None:
    if per_tensor_scale is None:
        return None
    if isinstance(per_tensor_scale, str):
        if per_tensor_scale != "amax":
            raise ValueError(f"per_tensor_scale must be 'amax', None or a positive number, got {per_tensor_scale!r}.")
        if x32.numel() == 0:
            return torch.ones((), dtype=torch.float32, device=x32.device)
        amax = torch.maximum(x32.amax(), x32.amin().neg()).abs()
        scale = amax / NVFP4_TENSOR_DENOMINATOR
        # An all-zero tensor: 0/0 would make every block NaN (torchao); use 1 as TransformerEngine does.
        return torch.where(scale == 0, torch.ones_like(scale), scale)
    if isinstance(per_tensor_scale, torch.Tensor):
        if per_tensor_scale.numel() != 1:
            raise ValueError(f"per_tensor_scale must be a single number, got shape {tuple(per_tensor_scale.shape)}.")
        value = float(per_tensor_scale)
    elif isinstance(per_tensor_scale, numbers.Real) and not isinstance(per_tensor_scale, bool):
        value = float(per_tensor_scale)
    else:
        raise TypeError(f"per_tensor_scale must be 'amax', None or a number, got {type(per_tensor_scale).__name__}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"per_tensor_scale must be finite and > 0, got {value!r}.")
    return torch.tensor(value, dtype=torch.float32, device=x32.device)


def _nvfp4_core(x32: torch.Tensor, axis: int, per_tensor_scale: Any):
    blocks, restore = _to_blocks(x32, NVFP4_BLOCK_SIZE, axis)
    tensor_scale = _nvfp4_tensor_scale(x32, per_tensor_scale)
    block_scale = _block_amax(blocks) / _E2M1.max
    if tensor_scale is None:  # one level: the e4m3 block scale holds amax / 6 itself
        b8 = round_float(block_scale.clamp_(_E4M3.smallest_normal, _E4M3.max), _E4M3)
        reciprocal = 1.0 / b8
        total = b8
    else:
        b8 = round_float((block_scale / tensor_scale).clamp_(_E4M3.smallest_normal, _E4M3.max), _E4M3)
        reciprocal = (1.0 / tensor_scale) / b8
        total = tensor_scale * b8
    elements = round_float(blocks * reciprocal, _E2M1, saturate=True)
    return elements, b8, tensor_scale, total, restore


def _check_nvfp4(x: Any, axis: Any) -> tuple[torch.Tensor, bool, int]:
    t, was_numpy = _check_tensor(x)
    return t, was_numpy, _check_axis(axis, t.dim())


def nvfp4_quantize(x: Any, *, axis: int = -1, per_tensor_scale: Any = "amax") -> Any:
    r"""Fake-quantize ``x`` to NVFP4; same shape, dtype and device as ``x``.

    Blocks of 16 elements along ``axis``; FP4 E2M1 elements; an FP8 E4M3 scale per block;
    a float32 scale per tensor (two-level scaling):

    .. math::

        s = \frac{\max|x|}{448 \cdot 6},\quad
        b_j = \mathrm{e4m3}\Big(\mathrm{clamp}\big(\tfrac{\max_{i\in j}|x_i|/6}{s}, 2^{-6}, 448\big)\Big),\quad
        \hat x_i = \mathrm{e2m1}_{\mathrm{sat}}\Big(x_i\,\tfrac{1/s}{b_j}\Big)\,(s\,b_j),

    every step in float32 and in this order, as torchao's ``NVFP4Tensor.to_nvfp4`` with
    ``per_tensor_scale = per_tensor_amax_to_scale(max|x|)`` and ``dequantize()`` compute it.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, floating point
    axis : int, default=-1
        Axis along which the blocks of 16 run (the reduction dimension). A length that is
        not a multiple of 16 leaves a shorter last block.
    per_tensor_scale : "amax", None or float, default="amax"
        ``"amax"``: ``s = max|x| / 2688`` from this tensor (dynamic, torchao's default for
        weights and activations); a positive number: that ``s`` (static, e.g. from a
        calibrated activation amax divided by 2688); ``None``: one-level scaling, the block
        scale is ``e4m3(clamp(amax_j / 6, 2**-6, 448))`` alone.

    Returns
    -------
    torch.Tensor or numpy.ndarray

    Notes
    -----
    An all-zero tensor returns zeros (its ``s`` is taken as 1; torchao gives NaN there). A
    NaN anywhere makes ``s`` NaN and the whole result NaN; an inf makes it NaN as well
    (``inf / inf`` in the scale arithmetic), as in torchao. Block scales below ``2**-6`` (the
    smallest normal E4M3 number) are raised to it, so blocks far below the tensor's amax
    lose their small elements.

    Examples
    --------
    >>> import torch
    >>> from precal.emulate import nvfp4_quantize
    >>> x = torch.linspace(-1.0, 1.0, 16)
    >>> nvfp4_quantize(x)[:4]  # s = 1/2688, b = 448: elements x * 6 on the E2M1 grid, / 6
    tensor([-1.0000, -1.0000, -0.6667, -0.6667])
    """
    t, was_numpy, axis = _check_nvfp4(x, axis)
    if t.numel() == 0:
        _nvfp4_tensor_scale(t.to(torch.float32), per_tensor_scale)  # validate the argument
        return _finish(t.clone(), t, was_numpy)
    elements, _, _, total, restore = _nvfp4_core(t.to(torch.float32), axis, per_tensor_scale)
    return _finish(restore(elements.mul_(total)), t, was_numpy)


def nvfp4_encode(
    x: Any, *, axis: int = -1, per_tensor_scale: Any = "amax"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The NVFP4 encoding of ``x``: E2M1 elements, E4M3 block scales, float32 tensor scale.

    Same parameters as :func:`nvfp4_quantize`.

    Returns
    -------
    elements : torch.Tensor of float32, shape of ``x``
        Values on the E2M1 grid ``{0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}``.
    block_scales : torch.Tensor of float32
        The E4M3 block scales ``b_j`` (values on the E4M3 grid), shape of ``x`` with
        ``axis`` replaced by the number of blocks.
    per_tensor_scale : 0-d torch.Tensor of float32, or None
        ``s`` (None for one-level scaling).
    """
    t, _, axis = _check_nvfp4(x, axis)
    elements, b8, tensor_scale, _, restore = _nvfp4_core(t.to(torch.float32), axis, per_tensor_scale)
    b8 = b8.squeeze(-1)
    if axis != t.dim() - 1:
        b8 = b8.movedim(-1, axis).contiguous()
    return restore(elements), b8, tensor_scale


def nvfp4_decode(elements: torch.Tensor, block_scales: torch.Tensor, per_tensor_scale: torch.Tensor | None = None,
                 *, axis: int = -1) -> torch.Tensor:
    """Float32 values ``P_i * (s * b_j)`` of an NVFP4 encoding (``P_i * b_j`` when ``s`` is None)."""
    if not isinstance(elements, torch.Tensor) or not isinstance(block_scales, torch.Tensor):
        raise TypeError("elements and block_scales must be torch tensors (as nvfp4_encode returns them).")
    blocks, scales, restore = _blocks_and_scales(elements, block_scales, NVFP4_BLOCK_SIZE, axis, "block_scales",
                                                 "scale")
    total = scales.to(torch.float32).unsqueeze(-1)
    if per_tensor_scale is not None:
        total = per_tensor_scale.to(torch.float32) * total
    return restore(blocks * total)


# --------------------------------------------------------------------------- named formats (model configs)
def parse_block_format(name: str) -> tuple[str, str]:
    """``"mxfp4-rceil"`` -> ``("mxfp4", "rceil")``; the scale rule defaults to ``"floor"``.

    Raises ValueError for a name that is not in :data:`BLOCK_FORMATS` (with an optional
    ``-floor``/``-ceil``/``-even``/``-rceil`` suffix, MX only).
    """
    if not isinstance(name, str):
        raise TypeError(f"block format must be a name (str), got {type(name).__name__}.")
    match = _BLOCK_RE.match(name.strip().lower())
    if not match or match.group(1) not in BLOCK_FORMATS:
        raise ValueError(f"Unknown block format {name!r}: use one of {sorted(BLOCK_FORMATS)}, optionally with a "
                         f"scale rule suffix -{'/-'.join(MX_SCALE_ROUNDINGS)} (MX only), e.g. 'mxfp4-rceil'.")
    base, rounding = match.group(1), match.group(2)
    if base == "nvfp4" and rounding is not None:
        raise ValueError(f"Block format {name!r}: NVFP4's block scales are E4M3, not E8M0; it takes no scale rule.")
    return base, rounding or "floor"


def block_quantize(x: Any, block_format: str, *, axis: int = -1) -> Any:
    """Fake-quantize ``x`` in a named block format along ``axis``.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
    block_format : str
        A key of :data:`BLOCK_FORMATS` (``"mxfp8"``, ``"mxfp6"``, ``"mxfp4"``, ``"mxint8"``,
        ``"nvfp4"``, ...), MX names optionally with a scale rule, e.g. ``"mxfp4-rceil"``.
        MX formats use blocks of 32 (:func:`mx_quantize`); ``"nvfp4"`` uses
        :func:`nvfp4_quantize` with the dynamic per-tensor scale.
    axis : int, default=-1
    """
    base, rounding = parse_block_format(block_format)
    if base == "nvfp4":
        return nvfp4_quantize(x, axis=axis)
    return mx_quantize(x, BLOCK_FORMATS[base], MX_BLOCK_SIZE, axis, rounding)


def parse_block_config(name: str) -> tuple[str | None, str | None] | None:
    """Weight and activation block formats of a model config name, or None if it is not one.

    ``"mxfp4"`` -> ``("mxfp4", "mxfp4")`` (weights and activations); ``"w-mxfp4"`` ->
    ``("mxfp4", None)`` (weights only); a scale-rule suffix is kept (``"mxfp8-rceil"``).
    """
    key = name.strip().lower()
    weights_only = key.startswith("w-")
    fmt = key[2:] if weights_only else key
    try:
        parse_block_format(fmt)
    except ValueError:
        return None
    return (fmt, None) if weights_only else (fmt, fmt)

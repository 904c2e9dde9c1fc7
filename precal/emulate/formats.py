"""Number formats and their facts: one frozen record per format, facts derived from a few fields.

Float formats follow numpy/ml_dtypes ``finfo`` field names (``bits``, ``eps``, ``max``,
``smallest_normal``, ``smallest_subnormal``, ``nexp``, ``nmant``); every derived fact is
checked against ml_dtypes in the tests. Integer formats give their code range.

Run ``python -m precal.emulate.formats`` to print the facts table in markdown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["FloatFormat", "IntFormat", "FORMATS", "format_info", "format_names", "facts_table"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with a sign bit.

    Parameters
    ----------
    name : str
        precal's name (``"fp8_e4m3"``).
    nexp, nmant : int
        Exponent bits and explicit fraction bits (as ``numpy.finfo`` counts them).
    bias : int
        Exponent bias.
    nan : {"ieee", "outer", "none"}
        ``"ieee"``: the all-ones exponent holds inf and NaN; ``"outer"``: no inf, only the
        all-ones code is NaN (OCP ``...fn`` formats, e.g. e4m3fn); ``"none"``: neither
        (OCP fp6/fp4).
    saturate : bool
        Default overflow rule of :func:`~precal.emulate.quantize`: ``True`` clamps to
        ``±max``; ``False`` overflows to inf (``"ieee"``) or NaN (``"outer"``).
    ml_dtype : str or None
        Name of the matching ml_dtypes/numpy dtype (the reference in tests).
    torch_dtype : str or None
        Name of the native torch dtype whose cast is used as a fast path.
    description : str
    """

    name: str
    nexp: int
    nmant: int
    bias: int
    nan: Literal["ieee", "outer", "none"]
    saturate: bool
    ml_dtype: str | None = None
    torch_dtype: str | None = None
    description: str = ""

    kind: Literal["float"] = "float"

    @property
    def bits(self) -> int:
        return 1 + self.nexp + self.nmant

    @property
    def eps(self) -> float:
        """Unit roundoff as ``finfo.eps``: the gap between 1 and the next value, ``2**-nmant``.

        Round-to-nearest has relative error at most ``eps / 2`` on normal numbers.
        """
        return 2.0 ** -self.nmant

    @property
    def unit_roundoff(self) -> float:
        """``u = eps / 2 = 2**-(nmant + 1)``: round-to-nearest gives ``|fl(x) - x| <= u |x|`` for normal ``x``."""
        return self.eps / 2.0

    @property
    def has_inf(self) -> bool:
        return self.nan == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.nan != "none"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        top = 2**self.nexp - 1  # all-ones exponent field
        return top - 1 - self.bias if self.nan == "ieee" else top - self.bias

    @property
    def max(self) -> float:
        # "outer" NaN takes the all-ones mantissa of the top binade: one code fewer there.
        frac = 2.0 - 2.0 ** -self.nmant * (2 if self.nan == "outer" else 1)
        return frac * 2.0**self.emax

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.nmant)

    @property
    def overflow(self) -> str:
        """What a value beyond ``max`` becomes by default: ``"saturate"``, ``"inf"`` or ``"nan"``."""
        if self.saturate:
            return "saturate"
        return "inf" if self.has_inf else "nan"


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement (``signed``) or unsigned integer format of ``bits`` bits."""

    name: str
    bits: int
    signed: bool
    description: str = ""

    kind: Literal["int"] = "int"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def eps(self) -> float:
        """Relative step of a symmetric grid at full scale: ``1 / (2**(bits-1) - 1)`` (``1/qmax`` when signed)."""
        return 1.0 / (2 ** (self.bits - 1) - 1)

    @property
    def unit_roundoff(self) -> float:
        """Half a step relative to full scale, ``eps / 2``: the largest rounding error of a
        symmetric grid divided by the block's largest magnitude."""
        return self.eps / 2.0


Format = FloatFormat | IntFormat

_FLOATS = (
    FloatFormat("fp32", 8, 23, 127, "ieee", False, "float32", "float32", "IEEE 754 binary32"),
    FloatFormat("tf32", 8, 10, 127, "ieee", False, None, None,
                "NVIDIA TensorFloat-32: fp32 range, fp16 precision (tensor-core operands)"),
    FloatFormat("bf16", 8, 7, 127, "ieee", False, "bfloat16", "bfloat16", "bfloat16 (brain float)"),
    FloatFormat("fp16", 5, 10, 15, "ieee", False, "float16", "float16", "IEEE 754 binary16"),
    FloatFormat("fp8_e4m3", 4, 3, 7, "outer", True, "float8_e4m3fn", "float8_e4m3fn",
                "OCP FP8 E4M3 (e4m3fn): no inf, NaN = S.1111.111"),
    FloatFormat("fp8_e5m2", 5, 2, 15, "ieee", False, "float8_e5m2", "float8_e5m2", "OCP FP8 E5M2 (IEEE-like)"),
    FloatFormat("fp6_e3m2", 3, 2, 3, "none", True, "float6_e3m2fn", None, "OCP FP6 E3M2 (MX element)"),
    FloatFormat("fp6_e2m3", 2, 3, 1, "none", True, "float6_e2m3fn", None, "OCP FP6 E2M3 (MX element)"),
    FloatFormat("fp4_e2m1", 2, 1, 1, "none", True, "float4_e2m1fn", None, "OCP FP4 E2M1 (MX/NVFP4 element)"),
)

_INTS = tuple(
    IntFormat(f"{'' if signed else 'u'}int{bits}", bits, signed,
              f"{'signed' if signed else 'unsigned'} {bits}-bit integer")
    for bits in (8, 4)
    for signed in (True, False)
)

#: The registry: canonical name -> format record.
FORMATS: dict[str, Format] = {f.name: f for f in (*_FLOATS, *_INTS)}

_ALIASES = {
    "float32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "fp8_e4m3fn": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "fp8": "fp8_e4m3",
    "e5m2": "fp8_e5m2",
    "fp6": "fp6_e3m2",
    "fp4": "fp4_e2m1",
    "e2m1": "fp4_e2m1",
}

_INT_RE = re.compile(r"^(u?)int(\d+)$")


def format_names() -> list[str]:
    """Canonical names of the registered formats (integer widths 2..16 are accepted too)."""
    return list(FORMATS)


def format_info(name: str | Format) -> Format:
    """The facts of a number format, by name.

    Parameters
    ----------
    name : str or FloatFormat or IntFormat
        A registered name (``"bf16"``, ``"fp8_e4m3"``, ``"int4"``, ...), an alias
        (``"bfloat16"``, ``"e4m3"``, ``"fp4"``), ``"int{b}"``/``"uint{b}"`` for ``2 <= b <= 16``,
        or a format record (returned as is).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or integer bits out of range.

    Examples
    --------
    >>> from precal.emulate import format_info
    >>> f = format_info("fp8_e4m3")
    >>> f.max, f.eps, f.smallest_subnormal
    (448.0, 0.125, 0.001953125)
    """
    if isinstance(name, (FloatFormat, IntFormat)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"format must be a name (str), got {type(name).__name__}.")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    match = _INT_RE.match(key)
    if match:
        bits = int(match.group(2))
        if not 2 <= bits <= 16:
            raise ValueError(f"Integer format {name!r}: bits must be in 2..16, got {bits}.")
        signed = match.group(1) == ""
        return IntFormat(key, bits, signed, f"{'signed' if signed else 'unsigned'} {bits}-bit integer")
    raise ValueError(
        f"Unknown number format {name!r}. Valid: {format_names()} (aliases: {sorted(_ALIASES)}; "
        "and int2..int16, uint2..uint16)."
    )


def _fmt_number(x: float) -> str:
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:g}"
    return f"{x:.4g}"


def facts_table() -> str:
    """The registry's facts as a markdown table (docs/emulate.md includes it)."""
    lines = [
        "| format | bits | exp/mant | bias | eps | max | min normal | min subnormal | inf | NaN | overflow |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FORMATS.values():
        if isinstance(f, FloatFormat):
            lines.append(
                f"| `{f.name}` | {f.bits} | {f.nexp}/{f.nmant} | {f.bias} | 2^-{f.nmant} | {_fmt_number(f.max)} | "
                f"2^{f.emin} | 2^{f.emin - f.nmant} | {'yes' if f.has_inf else 'no'} | "
                f"{ {'ieee': 'IEEE', 'outer': 'all-ones only', 'none': 'none'}[f.nan] } | {f.overflow} |"
            )
        else:
            lines.append(
                f"| `{f.name}` | {f.bits} | integer | - | - | {f.qmax} | codes {f.qmin}..{f.qmax} | - | no | no | clamp |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(facts_table())

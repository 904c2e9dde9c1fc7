"""Format registry: every fact checked against ml_dtypes' finfo or a closed form."""

import ml_dtypes
import numpy as np
import pytest

from precal.emulate import FORMATS, FloatFormat, IntFormat, facts_table, format_info, format_names

FLOATS = [f for f in FORMATS.values() if isinstance(f, FloatFormat)]
WITH_REFERENCE = [f for f in FLOATS if f.ml_dtype is not None]


def _finfo(f):
    dtype = getattr(ml_dtypes, f.ml_dtype, None) or np.dtype(f.ml_dtype)
    return ml_dtypes.finfo(dtype)


@pytest.mark.parametrize("fmt", WITH_REFERENCE, ids=lambda f: f.name)
def test_float_facts_match_ml_dtypes_finfo(fmt):
    ref = _finfo(fmt)
    assert fmt.bits == ref.bits
    assert fmt.nexp == ref.nexp
    assert fmt.nmant == ref.nmant
    assert fmt.eps == float(ref.eps)
    assert fmt.max == float(ref.max)
    assert fmt.smallest_normal == float(ref.smallest_normal)
    assert fmt.smallest_subnormal == float(ref.smallest_subnormal)


@pytest.mark.parametrize("fmt", FLOATS, ids=lambda f: f.name)
def test_float_identities(fmt):
    assert 1 + fmt.nexp + fmt.nmant == fmt.bits
    assert fmt.smallest_subnormal * 2**fmt.nmant == fmt.smallest_normal
    assert fmt.max < 2.0 ** (fmt.emax + 1)
    assert fmt.has_inf == (fmt.nan == "ieee")
    assert fmt.overflow in ("saturate", "inf", "nan")


def test_tf32_facts_closed_form():
    f = format_info("tf32")
    assert (f.bits, f.eps, f.smallest_normal) == (19, 2.0**-10, 2.0**-126)
    assert f.max == (2 - 2.0**-10) * 2.0**127


@pytest.mark.parametrize("name, qmin, qmax", [("int8", -128, 127), ("uint8", 0, 255), ("int4", -8, 7),
                                               ("uint4", 0, 15), ("int3", -4, 3), ("uint2", 0, 3)])
def test_integer_ranges(name, qmin, qmax):
    f = format_info(name)
    assert isinstance(f, IntFormat)
    assert (f.qmin, f.qmax) == (qmin, qmax)


@pytest.mark.parametrize("alias, name", [("bfloat16", "bf16"), ("E4M3", "fp8_e4m3"), ("fp8_e4m3fn", "fp8_e4m3"),
                                          ("fp4", "fp4_e2m1"), ("half", "fp16")])
def test_aliases(alias, name):
    assert format_info(alias).name == name


def test_unknown_format_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown number format 'fp7'.*bf16"):
        format_info("fp7")


@pytest.mark.parametrize("name", ["int1", "int17", "uint32"])
def test_integer_bits_out_of_range(name):
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        format_info(name)


def test_non_string_format_is_a_type_error():
    with pytest.raises(TypeError):
        format_info(8)


def test_facts_table_lists_every_format():
    table = facts_table()
    for name in format_names():
        assert f"`{name}`" in table
    assert "448" in table and "65504" in table


def test_docs_table_is_the_generated_one():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "emulate.md"
    assert facts_table() in docs.read_text(), "regenerate with: python -m precal.emulate.formats"

"""softmax_rows: torch's softmax and log_softmax over rows, short rows with one shared shift."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from precal._numerics import SHORT_ROWS, softmax_rows

DTYPES = {"float64": (torch.float64, 1e-13), "float32": (torch.float32, 2e-6)}


def _check(a: torch.Tensor, rtol: float) -> None:
    """Probabilities to ``rtol`` of torch's (absolute, as probabilities are at most 1);
    log-probabilities to a few ``eps`` times the largest distance of an entry below the block's
    maximum (the documented bound of the shared shift; torch's own error is of that order too)."""
    p, lp = softmax_rows(a), softmax_rows(a, log=True)
    assert p.dtype == lp.dtype == a.dtype and p.shape == lp.shape == a.shape
    assert_allclose(p.numpy(), torch.softmax(a, dim=1).numpy(), rtol=rtol, atol=rtol)
    eps = torch.finfo(a.dtype).eps
    atol = 8.0 * eps * max(1.0, float((a.max() - a).max()))
    assert_allclose(lp.numpy(), torch.log_softmax(a, dim=1).numpy(), rtol=0, atol=atol)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(sorted(DTYPES)), n=st.integers(1, 40), k=st.integers(1, SHORT_ROWS + 4),
       scale=st.sampled_from([0.1, 3.0, 30.0, 300.0]), spread=st.sampled_from([0.0, 10.0, 60.0, 400.0]),
       seed=st.integers(0, 2**16))
def test_softmax_rows_equals_torch(dtype, n, k, scale, spread, seed):
    """Any logits, rows shifted far apart (so that some blocks fall back to torch's kernel) included."""
    torch_dtype, rtol = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=gen, dtype=torch.float64) * scale
    a += torch.rand(n, 1, generator=gen, dtype=torch.float64) * -spread  # rows far below the block's maximum
    _check(a.to(torch_dtype), rtol)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_a_row_far_below_the_block_keeps_its_small_probabilities(dtype):
    """A row 1000 below the others would underflow under the shared shift: the block takes torch's kernel."""
    torch_dtype, rtol = DTYPES[dtype]
    a = torch.tensor([[0.0, -1.0, -2.0], [-1000.0, -1001.0, -1040.0]], dtype=torch_dtype)
    p = softmax_rows(a)
    assert (p[1] > 0).all()
    _check(a, rtol)


def test_out_is_written_and_non_finite_input_gives_torchs_answer():
    a = torch.randn(50, 10, dtype=torch.float64)
    out = torch.empty_like(a)
    assert softmax_rows(a, out=out).data_ptr() == out.data_ptr()
    assert_allclose(out.numpy(), torch.softmax(a, dim=1).numpy(), rtol=1e-13, atol=1e-15)
    a[3, 4] = float("nan")
    a[7, 1] = float("inf")
    assert_allclose(softmax_rows(a).numpy(), torch.softmax(a, dim=1).numpy(), rtol=1e-13, atol=1e-15)
    assert torch.isnan(softmax_rows(a)[3]).all()


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_log_probabilities_of_logits_far_from_zero(dtype):
    """A common offset of the logits (10 000) does not cost digits: the block is shifted by its
    maximum before the sum's log is subtracted."""
    torch_dtype, _ = DTYPES[dtype]
    gen = torch.Generator().manual_seed(3)
    a = (torch.randn(200, 10, generator=gen, dtype=torch.float64) * 3.0 + 1e4).to(torch_dtype)
    eps = torch.finfo(torch_dtype).eps
    assert_allclose(softmax_rows(a, log=True).numpy(), torch.log_softmax(a, dim=1).numpy(), rtol=0,
                    atol=64 * eps)


def test_short_rows_take_the_shared_shift_and_long_rows_torchs_kernel(monkeypatch):
    """The fast path is taken for short, finite, well-spread rows; torch's kernel otherwise."""
    calls = []
    for name in ("softmax", "log_softmax"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _f=original, _n=name, **kw: calls.append(_n) or _f(*args, **kw))
    a = torch.randn(100, SHORT_ROWS, dtype=torch.float64)
    softmax_rows(a), softmax_rows(a, log=True)
    assert calls == []
    softmax_rows(torch.randn(100, SHORT_ROWS + 1, dtype=torch.float64), log=True)
    softmax_rows(torch.randn(100, 4, dtype=torch.float16))
    assert calls == ["log_softmax", "softmax"]

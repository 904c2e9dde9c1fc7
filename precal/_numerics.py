"""Numerically stable softmax helpers, numpy and torch (float64, safe for logits of 1e4).

Each helper takes a numpy array or a torch tensor and returns the same kind: tensors stay
on their device, so the calibrators' prediction path never moves a tensor to the host.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["log_softmax", "softmax", "softmax_rows", "row_sums", "matmul", "binary_logit_to_two_columns", "as_tensor", "to_tensor", "is_tensor", "to_numpy"]


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch for numpy-only callers)."""
    import torch

    return isinstance(x, torch.Tensor)


def log_softmax(z: Any) -> Any:
    """Row-wise ``log softmax(z) = z - logsumexp(z)`` in float64, stable for huge logits.

    The row maximum is subtracted first, so ``exp`` never overflows.
    """
    if is_tensor(z):
        import torch

        z = z.to(torch.float64)
        shifted = z - z.amax(dim=1, keepdim=True)
        return shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z: Any) -> Any:
    """Row-wise softmax in float64; rows sum to 1 up to rounding."""
    p = log_softmax(z)
    if is_tensor(p):
        p = p.exp()
        return p / p.sum(dim=1, keepdim=True)
    p = np.exp(p)
    return p / p.sum(axis=1, keepdims=True)


def row_sums(a: "torch.Tensor") -> "torch.Tensor":
    """Sums over the last axis of a 2-D tensor as a product with a vector of ones: one read of
    ``a`` (a reduction over a few columns costs torch a loop per row, several times longer)."""
    return a @ a.new_ones(a.shape[-1])


#: Rows of at most this many columns take :func:`softmax_rows`' shared shift on the CPU: torch's
#: row softmax loops over rows (1.3 ms for 10 000 x 10 in float32 or float64 on one core, 0.14-0.26
#: ms with the shared shift); from about 32 columns on torch's own kernel is as fast or faster.
SHORT_ROWS = 16

#: Smallest row sum of ``exp(a - max(a))`` (by dtype) for which :func:`softmax_rows` keeps the
#: shared shift for probabilities. A row whose maximum lies ``B`` below the block's has a sum of
#: at least ``exp(-B)`` (at most ``K`` times more), and its entries stay normal numbers down to
#: ``exp(-(708 - B - log K))`` (float64) or ``exp(-(87 - B - log K))`` (float32) of its largest:
#: with ``B`` = 200 and 35, ``exp(-506)`` and ``exp(-49)``, below the ``sqrt(tiny)`` (``exp(-354)``,
#: ``exp(-43.6)``) under which the Dirichlet fit takes a true class's NLL from its logits anyway.
_SHARED_SHIFT_MIN_SUM = {"torch.float64": math.exp(-200.0), "torch.float32": math.exp(-35.0)}

#: The same for log-probabilities, ``(a - M) - log(sum)``: only the sum must stay a normal number
#: (its largest term is ``exp(-B)``), and the result is within about ``eps B`` of torch's
#: ``(a - m) - log(sum_row)`` (``m`` the row's maximum): 1.6e-13 in float64, 3.6e-6 in float32.
_SHARED_SHIFT_MIN_SUM_LOG = {"torch.float64": math.exp(-700.0), "torch.float32": math.exp(-60.0)}


def softmax_rows(a: "torch.Tensor", *, out: "torch.Tensor | None" = None, log: bool = False) -> "torch.Tensor":
    """``softmax`` (or ``log_softmax`` with ``log=True``) over the rows of a 2-D tensor.

    Short rows (up to :data:`SHORT_ROWS` columns) of float32/float64 CPU tensors are shifted by
    the block's largest entry ``M`` instead of each row's, ``q = exp(a - M) / (exp(a - M) 1)``
    and ``log q = (a - M) - log(exp(a - M) 1)``: three vectorised passes and a matrix-vector
    product instead of torch's per-row loop. When some row lies so far below the block's
    maximum that its sum falls under :data:`_SHARED_SHIFT_MIN_SUM` (probabilities) or
    :data:`_SHARED_SHIFT_MIN_SUM_LOG` (log-probabilities), or ``a`` is not finite, the block
    takes torch's kernel; so probabilities match torch's to rounding and log-probabilities to
    within ``eps`` times the distance of the row's maximum below ``M``. ``out`` must not
    alias ``a``.
    """
    import torch

    k = a.shape[1] if a.dim() == 2 else 0
    key = str(a.dtype)
    if not (0 < k <= SHORT_ROWS and a.shape[0] > 0 and a.device.type == "cpu" and key in _SHARED_SHIFT_MIN_SUM):
        return (torch.log_softmax if log else torch.softmax)(a, dim=1, out=out)
    top = a.max()
    if bool(torch.isfinite(top)):
        e = torch.sub(a, top, out=out)
        sums = row_sums(e.exp() if log else e.exp_())
        if float(sums.min()) >= (_SHARED_SHIFT_MIN_SUM_LOG if log else _SHARED_SHIFT_MIN_SUM)[key]:
            return e.sub_(sums.log_()[:, None]) if log else e.div_(sums[:, None])
    return (torch.log_softmax if log else torch.softmax)(a, dim=1, out=out)


#: Whether :func:`matmul` sends CPU products to numpy's BLAS (a switch for timing the two).
NUMPY_BLAS = True


def matmul(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """``a @ b`` for float32/float64 tensors; matrix products on the CPU through numpy's BLAS.

    torch's CPU wheels link MKL, which on the project's AMD EPYC machine ran the skinny matrix
    products of the Dirichlet and fuzzy fits 1.5-2.2 times slower than the OpenBLAS of numpy's
    wheels (``(26 214, 20)ᵀ (26 214, 20)``: 0.85 against 0.39 ms in float64 on one thread), and
    numpy turns ``uᵀu`` of one buffer into a ``syrk`` (half the work); they scale the same over
    precal's threads. Matrix-vector products stay with torch: OpenBLAS's ``gemv`` called from
    two threads at once ran slower than from one (32 against 20 ms for a Dirichlet
    Hessian-vector product at 50 000 x 1 000). The tensors are shared with numpy, not copied;
    the result is a CPU tensor. Other devices, other dtypes, vectors and tensors that require
    gradients use torch's ``@``. Threads: numpy's BLAS pool, which
    :func:`precal._threads.thread_limits` caps as it caps torch's.
    """
    import torch

    if not (NUMPY_BLAS and a.device.type == "cpu" and b.device.type == "cpu" and a.dtype == b.dtype
            and a.dtype in (torch.float32, torch.float64) and not (a.requires_grad or b.requires_grad)
            and a.dim() == 2 and b.dim() == 2):
        return a @ b
    return torch.from_numpy(np.asarray(np.matmul(a.numpy(), b.numpy())))


def binary_logit_to_two_columns(z: Any) -> Any:
    """Map single binary logits ``z`` (shape ``(n,)`` or ``(n, 1)``) to two-class logits ``[0, z]``.

    ``softmax([0, z])[1] = sigmoid(z)``, so every multiclass formula applies unchanged.
    """
    if is_tensor(z):
        import torch

        z = z.reshape(-1)
        return torch.stack([torch.zeros_like(z), z], dim=1)
    z = np.asarray(z).reshape(-1)
    return np.stack([np.zeros_like(z), z], axis=1)


def as_tensor(arr: np.ndarray) -> "torch.Tensor":
    """A torch view of a numpy array (no copy for C-contiguous input), read-only arrays included.

    torch warns that it cannot protect read-only numpy memory; precal never writes to these
    tensors, so the warning is silenced here and only here.
    """
    import warnings

    import torch

    arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def to_tensor(x: Any) -> "torch.Tensor":
    """A tensor as it is (same device, no copy); anything else through :func:`as_tensor` (CPU)."""
    if is_tensor(x):
        return x
    return as_tensor(np.asarray(x))


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x``: tensors are detached and copied to the host (results, not inputs)."""
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)

"""Numerically stable softmax helpers, numpy and torch (float64, safe for logits of 1e4).

Each helper takes a numpy array or a torch tensor and returns the same kind: tensors stay
on their device, so the calibrators' prediction path never moves a tensor to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["log_softmax", "softmax", "binary_logit_to_two_columns", "as_tensor", "to_tensor", "is_tensor", "to_numpy"]


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

"""Numerically stable softmax helpers on numpy arrays (float64, safe for logits of 1e4)."""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "softmax", "binary_logit_to_two_columns", "as_tensor"]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax(z) = z - logsumexp(z)`` in float64, stable for huge logits."""
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; rows sum to 1 up to rounding."""
    p = np.exp(log_softmax(z))
    return p / p.sum(axis=1, keepdims=True)


def binary_logit_to_two_columns(z: np.ndarray) -> np.ndarray:
    """Map single binary logits ``z`` (shape ``(n,)``) to two-class logits ``[0, z]``.

    ``softmax([0, z])[1] = sigmoid(z)``, so every multiclass formula applies unchanged.
    """
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

"""Logit-space emulation: round given logits to a format, or evaluate the softmax in one.

The probability-level "precision split" shows here: a softmax evaluated in bfloat16 turns
many top confidences into exactly 1.0, and the true-class probability of confident
mistakes into exactly 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .formats import FloatFormat, format_info
from .quantize import _check_tensor, quantize
from .rounding import round_float

__all__ = ["round_logits", "softmax_in_format"]


def round_logits(logits: Any, fmt: str) -> Any:
    """Logits as a model computing its last layer in ``fmt`` would emit them.

    Float formats: element-wise rounding (no scale), with the format's overflow rule.
    Integer formats: symmetric, one scale per sample (row), ``amax / qmax``. Returns the
    input's type, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.emulate import round_logits
    >>> round_logits(np.array([[3.3, -1.01, 0.2]], dtype=np.float32), "fp8_e4m3")
    array([[ 3.25    , -1.      ,  0.203125]], dtype=float32)
    """
    t, was_numpy = _check_tensor(logits)
    if t.dim() != 2:
        raise ValueError(f"logits must be 2-D (n_samples, n_classes), got shape {tuple(t.shape)}.")
    f = format_info(fmt)
    out = quantize(t, f) if isinstance(f, FloatFormat) else quantize(t, f, axis=0)
    return out.numpy() if was_numpy else out


def softmax_in_format(logits: Any, fmt: str) -> Any:
    """Softmax evaluated step by step in a float format, as low-precision kernels do.

    With every intermediate rounded to ``fmt`` (round-to-nearest-even):
    ``z = r(logits)``, ``d = r(z - max z)``, ``e = r(exp d)``, ``s = r(sum e)`` (the sum
    accumulated in float32, then rounded), ``p = r(e / s)``. Rows sum to 1 only up to the
    format's rounding, so the result carries its format: a torch tensor input gives a tensor
    of the format's torch dtype where one exists (``bfloat16``, ``float16``,
    ``float8_e4m3fn``, ``float8_e5m2``; float32 for tf32/fp6/fp4), and precal's metrics then
    apply that dtype's row-sum tolerance. A numpy input gives float32 (float16 for
    ``"fp16"``); convert it with ``torch.from_numpy(p).to(torch.bfloat16)`` (exact) before
    handing bf16/fp8 probabilities to a metric.

    Raises
    ------
    ValueError
        If ``fmt`` is not a float format or the logits are not 2-D.
    """
    t, was_numpy = _check_tensor(logits)
    if t.dim() != 2:
        raise ValueError(f"logits must be 2-D (n_samples, n_classes), got shape {tuple(t.shape)}.")
    f = format_info(fmt)
    if not isinstance(f, FloatFormat):
        raise ValueError(f"softmax_in_format needs a float format, got {f.name!r}.")

    def r(v: torch.Tensor) -> torch.Tensor:
        return round_float(v, f)

    z = r(t.float())
    d = r(z - z.amax(dim=1, keepdim=True))
    e = r(torch.exp(d))
    s = r(e.sum(dim=1, keepdim=True))
    p = r(e / s)
    if was_numpy:
        return p.numpy().astype(np.float16) if f.name == "fp16" else p.numpy()
    return p.to(getattr(torch, f.torch_dtype)) if f.torch_dtype else p

"""Activation range observers for post-training quantization.

An observer watches the activations that reach a layer during calibration and then
proposes the range ``[lo, hi]`` that :func:`~precal.emulate.int_qparams` turns into a
per-tensor scale and zero point.

* ``"minmax"``: the smallest and largest value seen (torch.ao ``MinMaxObserver``).
* ``"percentile"``: the ``(100 - p)``-th and ``p``-th percentiles of a sample of the values
  (``p = 99.99`` by default), which ignores rare outliers.
* ``"mse"``: the range ``[c lo, c hi]`` whose fake quantization of the sample has the
  smallest mean squared error, over a grid of shrink factors ``c`` in ``[0.3, 1]``
  (the range search of GPTQ/brevitas-style MSE calibration).

Percentile and MSE work on a bounded, seeded reservoir sample of the activations
(``max_samples`` values), so memory does not grow with the calibration set.
"""

from __future__ import annotations

import torch

from .formats import IntFormat
from .quantize import fake_quantize_int, int_qparams

__all__ = ["RangeObserver", "OBSERVERS"]

#: Names of the activation-range observers :class:`RangeObserver` knows (the ``observer``
#: argument of :func:`~precal.emulate.emulate_model` and :class:`~precal.emulate.QuantConfig`).
OBSERVERS = ("minmax", "percentile", "mse")


class RangeObserver:
    """Collects activation statistics and proposes a quantization range.

    Parameters
    ----------
    method : {"minmax", "percentile", "mse"}
    percentile : float, default=99.99
        For ``"percentile"``.
    max_samples : int, default=2**18
        Size of the reservoir sample used by ``"percentile"`` and ``"mse"``.
    seed : int, default=0
        Seeds the reservoir sampling.
    """

    def __init__(self, method: str = "minmax", *, percentile: float = 99.99, max_samples: int = 1 << 18,
                 seed: int = 0) -> None:
        if method not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {method!r}.")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}.")
        self.method = method
        self.percentile = percentile
        self.max_samples = max_samples
        self._generator = torch.Generator().manual_seed(seed)
        self.lo: float | None = None
        self.hi: float | None = None
        self.n_seen = 0
        self._sample: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        """Update the statistics with a batch of activations (non-finite values ignored)."""
        flat = x.detach().reshape(-1).float()
        flat = flat[torch.isfinite(flat)]
        if flat.numel() == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if self.method != "minmax":
            self._update_sample(flat.cpu())
        self.n_seen += flat.numel()

    def _update_sample(self, flat: torch.Tensor) -> None:
        # A uniform sample of everything seen: while it fits, keep all; afterwards the new
        # batch gets a share of the reservoir proportional to its size.
        old = torch.empty(0) if self._sample is None else self._sample
        total = self.n_seen + flat.numel()
        if total <= self.max_samples:
            self._sample = torch.cat([old, flat])
            return
        k_new = min(flat.numel(), round(self.max_samples * flat.numel() / total))
        k_old = min(len(old), self.max_samples - k_new)
        new = flat[torch.randperm(flat.numel(), generator=self._generator)[:k_new]]
        kept = old[torch.randperm(len(old), generator=self._generator)[:k_old]]
        self._sample = torch.cat([kept, new])

    def range(self, fmt: IntFormat) -> tuple[float, float]:
        """The proposed ``(lo, hi)``; raises ``RuntimeError`` if nothing was observed."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("The observer has seen no finite activation; calibrate it first.")
        if self.method == "minmax" or self._sample is None:
            return self.lo, self.hi
        sample = self._sample
        if self.method == "percentile":
            q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
            lo, hi = torch.quantile(sample.double(), q.double()).tolist()
            return min(lo, 0.0), max(hi, 0.0)
        best, best_err = (self.lo, self.hi), float("inf")
        for c in torch.linspace(0.3, 1.0, 36).tolist():
            lo_c, hi_c = self.lo * c, self.hi * c
            scale, zero = int_qparams(torch.tensor(lo_c), torch.tensor(hi_c), fmt, symmetric=False)
            err = float((fake_quantize_int(sample, scale, zero, fmt.qmin, fmt.qmax) - sample).square().mean())
            if err < best_err:
                best, best_err = (lo_c, hi_c), err
        return best

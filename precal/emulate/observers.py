"""Activation range observers for post-training quantization.

An observer watches the activations that reach a layer during calibration and then
proposes the range ``[lo, hi]`` that :func:`~precal.emulate.int_qparams` turns into a
per-tensor scale and zero point.

* ``"minmax"``: the smallest and largest value seen (torch.ao ``MinMaxObserver``).
* ``"percentile"``: the ``(100 - p)``-th and ``p``-th percentiles of a sample of the values
  (``p = 99.99`` by default), which ignores rare outliers.
* ``"mse"``: the range ``[c lo, c hi]`` whose fake quantization of the sample has the
  smallest mean squared error, over a grid of shrink factors ``c`` in ``[0.3, 1]``
  (the range search of GPTQ/brevitas-style MSE calibration);
* ``"histogram"``: torch.ao's ``HistogramObserver`` (2048-bin histogram of everything
  seen, then the range with the smallest L2 quantization error of the histogram), the
  default activation observer of torch.ao's x86/fbgemm qconfigs; it runs torch.ao's own
  code (``torch.ao.quantization``) and needs the format (8 bits or fewer) up front.

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
OBSERVERS = ("minmax", "percentile", "mse", "histogram")


class RangeObserver:
    """Collects activation statistics and proposes a quantization range.

    Parameters
    ----------
    method : {"minmax", "percentile", "mse", "histogram"}
    percentile : float, default=99.99
        For ``"percentile"``.
    max_samples : int, default=2**18
        Size of the reservoir sample used by ``"percentile"`` and ``"mse"``.
    seed : int, default=0
        Seeds the reservoir sampling.
    fmt : IntFormat, optional
        The activation format; required by ``"histogram"``, whose search depends on it.
    """

    def __init__(self, method: str = "minmax", *, percentile: float = 99.99, max_samples: int = 1 << 18,
                 seed: int = 0, fmt: IntFormat | None = None) -> None:
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
        self._histogram = None
        if method == "histogram":
            self._histogram = _torch_ao_histogram(fmt)

    def observe(self, x: torch.Tensor) -> None:
        """Update the statistics with a batch of activations (non-finite values ignored)."""
        flat = x.detach().reshape(-1).float()
        flat = flat[torch.isfinite(flat)]
        if flat.numel() == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if self._histogram is not None:
            self._histogram(flat)
        elif self.method != "minmax":
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

    def qparams(self, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor asymmetric scale and zero point (float32 tensors) for ``fmt``.

        ``"histogram"`` gives torch.ao's own scale and zero point; the other methods map
        :meth:`range` with :func:`~precal.emulate.int_qparams`.
        """
        if self._histogram is not None:
            self.range(fmt)  # checks the format
            scale, zero = self._histogram.calculate_qparams()
            return scale.float().reshape(()), zero.float().reshape(())
        lo, hi = self.range(fmt)
        return int_qparams(torch.tensor(lo), torch.tensor(hi), fmt, symmetric=False)

    def range(self, fmt: IntFormat) -> tuple[float, float]:
        """The proposed ``(lo, hi)``; raises ``RuntimeError`` if nothing was observed."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("The observer has seen no finite activation; calibrate it first.")
        if self._histogram is not None:
            obs = self._histogram
            if (obs.quant_min, obs.quant_max) != (fmt.qmin, fmt.qmax):
                raise ValueError(f"This histogram observer was made for codes {obs.quant_min}..{obs.quant_max}, "
                                 f"not {fmt.name}.")
            scale, zero = obs.calculate_qparams()
            scale, zero = float(scale), int(zero)
            return (fmt.qmin - zero) * scale, (fmt.qmax - zero) * scale
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


def _torch_ao_histogram(fmt: IntFormat | None):
    """torch.ao's HistogramObserver for ``fmt``'s codes (affine, per tensor)."""
    if fmt is None or not isinstance(fmt, IntFormat) or fmt.bits > 8:
        raise ValueError("observer='histogram' needs an integer activation format of at most 8 bits.")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization.observer import HistogramObserver
    except ImportError as exc:  # pragma: no cover - torch without torch.ao.quantization
        raise ValueError("observer='histogram' runs torch.ao.quantization's HistogramObserver, which this torch "
                         "does not have.") from exc
    dtype = torch.qint8 if fmt.signed else torch.quint8
    return HistogramObserver(dtype=dtype, qscheme=torch.per_tensor_affine, quant_min=fmt.qmin, quant_max=fmt.qmax)

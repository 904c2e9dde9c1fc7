"""Activation quantization schemes: how a layer's input is fake-quantized.

A scheme is a small ``nn.Module`` made per layer by a factory registered under a name
(``QuantConfig.act_scheme``). Two are built in:

* ``"static"`` (default): one scale and zero point for the whole tensor, **asymmetric**,
  from a range observer (min-max, percentile, MSE) calibrated on a few batches before
  evaluation, then frozen — torch.ao/TensorRT-style static PTQ of CNNs;
* ``"dynamic"``: **symmetric per token**, computed at run time from each row of the
  layer's input (the feature axis reduced: the last axis of a linear layer's input, the
  channel axis of a convolution's): ``s_t = max_j |x_tj| / 127`` for int8,
  ``x̂ = clamp(round(x / s_t), -128, 127) s_t``. This is the W8A8 recipe of vLLM's
  ``scaled_int8_quant`` and of llmcompressor's ``W8A8`` scheme (Xiao et al., 2023,
  SmoothQuant, Sec. 3; Yao et al., 2022, ZeroQuant, "token-wise" quantization). No
  calibration is needed.

Adding a scheme: subclass :class:`ActQuantizer`, then
``register_act_scheme("name", factory)``, with ``factory(fmt, config, feature_dim)``
returning the module; ``QuantConfig(act_scheme="name")`` selects it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .formats import IntFormat, format_info
from .observers import RangeObserver
from .quantize import SCALE_RULES, fake_quantize_int

__all__ = ["ActQuantizer", "StaticActQuantizer", "DynamicTokenActQuantizer", "ACT_SCHEMES",
           "register_act_scheme", "make_act_quantizer"]


class ActQuantizer(nn.Module):
    """Base class: fake-quantizes a layer's input; calibration hooks do nothing by default.

    Parameters
    ----------
    fmt : IntFormat or FloatFormat
        Format of the quantized activations.
    config : QuantConfig
        The layer's config (for options such as the observer).
    feature_dim : int
        Axis of the layer's input that holds its features (-1 for linear layers, 1 for
        convolutions): per-token schemes reduce over it.
    """

    needs_calibration = False

    def __init__(self, fmt: Any, config: Any, feature_dim: int) -> None:
        super().__init__()
        self.fmt = fmt
        self.config = config
        self.feature_dim = feature_dim

    def calibrate_begin(self) -> None:
        """Start collecting statistics (static schemes)."""

    def calibrate_end(self) -> None:
        """Freeze the quantization parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class StaticActQuantizer(ActQuantizer):
    """Per-tensor asymmetric fake quantization with a range calibrated by an observer.

    With ``config.act_reduce_range`` the scale and zero point are computed for a format one
    bit narrower (uint8: codes 0..127) while values are clamped to the full format (0..255),
    as torch.ao's ``reduce_range`` observers and the x86/fbgemm kernels do.
    """

    needs_calibration = True

    def __init__(self, fmt: IntFormat, config: Any, feature_dim: int) -> None:
        super().__init__(fmt, config, feature_dim)
        # reduce_range (torch.ao x86/fbgemm): scales for one bit fewer, codes clamped to the full format
        self.qparam_fmt = fmt
        if getattr(config, "act_reduce_range", False):
            self.qparam_fmt = format_info(f"{'int' if fmt.signed else 'uint'}{fmt.bits - 1}")
        self.observer: RangeObserver | None = None
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self.calibrating = False

    def calibrate_begin(self) -> None:
        self.observer = RangeObserver(self.config.observer, fmt=self.qparam_fmt)
        self.calibrating = True

    def calibrate_end(self) -> None:
        self.calibrating = False
        self.scale, self.zero_point = self.observer.qparams(self.qparam_fmt)
        self.observer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.observe(x)
            return x
        if self.scale is None:
            raise RuntimeError(
                f"Config {self.config.name!r} quantizes activations statically but this layer was never "
                "calibrated: pass calibration_data to emulate_model."
            )
        scale, zero = self.scale.to(x.device), self.zero_point.to(x.device)
        return fake_quantize_int(x, scale, zero, self.fmt.qmin, self.fmt.qmax)


class DynamicTokenActQuantizer(ActQuantizer):
    """Symmetric per-token fake quantization with scales computed from each input at run time.

    ``s = amax_token / qmax`` (``act_scale_rule="qmax"``, as vLLM's int8 kernels compute it)
    or ``amax_token / ((qmax - qmin) / 2)`` (``"half_range"``, compressed-tensors' rule).
    An all-zero token keeps ``s = 1`` (it stays zero).
    """

    def __init__(self, fmt: IntFormat, config: Any, feature_dim: int) -> None:
        super().__init__(fmt, config, feature_dim)
        if not isinstance(fmt, IntFormat) or not fmt.signed:
            raise ValueError(f"act_scheme='dynamic' needs a signed integer format, got {fmt.name!r}.")
        rule = getattr(config, "act_scale_rule", "qmax")
        if rule not in SCALE_RULES:
            raise ValueError(f"act_scale_rule must be one of {SCALE_RULES}, got {rule!r}.")
        self.denominator = float(fmt.qmax) if rule == "qmax" else (fmt.qmax - fmt.qmin) / 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amax = x.detach().abs().amax(dim=self.feature_dim, keepdim=True)
        amax = torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax))
        scale = amax / self.denominator
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return fake_quantize_int(x, scale, torch.zeros_like(scale), self.fmt.qmin, self.fmt.qmax)


def _static(fmt: Any, config: Any, feature_dim: int) -> ActQuantizer:
    if not isinstance(fmt, IntFormat):
        raise ValueError(f"act_scheme='static' needs an integer format, got {fmt.name!r}.")
    return StaticActQuantizer(fmt, config, feature_dim)


_static.needs_calibration = True

#: Activation schemes by name: ``factory(fmt, config, feature_dim) -> ActQuantizer``.
ACT_SCHEMES: dict[str, Callable[..., ActQuantizer]] = {
    "static": _static,
    "dynamic": DynamicTokenActQuantizer,
}


def register_act_scheme(name: str, factory: Callable[..., ActQuantizer]) -> None:
    """Make ``QuantConfig(act_scheme=name)`` build activation quantizers with ``factory``.

    ``factory(fmt, config, feature_dim)`` gets the activation format record, the layer's
    :class:`~precal.emulate.QuantConfig` and the feature axis of the layer's input, and
    returns an :class:`ActQuantizer` (``needs_calibration = True``, on the quantizer and
    on the factory, makes
    :func:`~precal.emulate.emulate_model` run the calibration data through it between
    ``calibrate_begin()`` and ``calibrate_end()``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Activation scheme names are non-empty strings, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}.")
    ACT_SCHEMES[name] = factory


def make_act_quantizer(config: Any, feature_dim: int) -> ActQuantizer | None:
    """The activation quantizer of ``config`` for a layer, or None when activations stay float."""
    if config.act_format is None:
        return None
    return ACT_SCHEMES[config.act_scheme](format_info(config.act_format), config, feature_dim)

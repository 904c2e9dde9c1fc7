"""Weight quantization schemes: how a layer's weight becomes its fake-quantized copy.

A scheme is an object registered under a name (``QuantConfig.weight_scheme``). It sees
the weight as a 2-D matrix ``(out_channels, inputs per output channel)`` — a convolution's
``(out, in/groups, kh, kw)`` weight flattened, a GPT-2 ``Conv1D``'s ``(in, out)`` weight
transposed — and returns its fake-quantized version of the same shape.

The built-in ``"rtn"`` (round to nearest) quantizes with :func:`~precal.emulate.quantize`:
one scale per output channel, or per group of ``weight_group_size`` consecutive inputs,
symmetric (``weight_scale_rule``) or asymmetric with a zero point (``weight_symmetric``).

Algorithms that need calibration activations (GPTQ's Hessian, AWQ's and SmoothQuant's
per-channel activation magnitudes) set ``needs_inputs = True``: before any weight is
quantized, :func:`~precal.emulate.emulate_model` runs the calibration batches through the
float model (BatchNorm folded) and hands each layer's inputs, as a 2-D matrix
``(rows, inputs per output channel)`` (a linear layer's tokens; a convolution's unfolded
patches), to ``observe(state, x)``. A grouped or depthwise convolution's output channels
each read only their group's input channels: its inputs come as ``(groups, rows, inputs per
output channel)``, group ``i`` multiplying the weight rows of output group ``i``, and only to
schemes that set ``grouped_inputs = True`` (the built-in GPTQ, AWQ and SmoothQuant do;
:func:`~precal.emulate.emulate_model` refuses the others on such layers before any forward
pass). ``quantize`` may also return a per-input-feature
``input_scale``: the emulated layer then divides its input by it before the activation
quantizer (SmoothQuant's smoothing, whose inverse the scheme has folded into the weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .formats import format_info
from .quantize import SCALE_RULES, quantize

__all__ = ["WeightScheme", "WeightResult", "WEIGHT_SCHEMES", "register_weight_scheme"]


@dataclass
class WeightResult:
    """What a weight scheme returns for one layer.

    Attributes
    ----------
    weight : torch.Tensor
        The fake-quantized weight, ``(out_channels, inputs per output channel)``, float32.
    input_scale : torch.Tensor, optional
        One positive factor per input feature (a linear layer's ``in_features``, a
        convolution's input channels); the layer's input is divided by it before
        activation quantization. None leaves the input as is.
    """

    weight: torch.Tensor
    input_scale: torch.Tensor | None = None


class WeightScheme:
    """Round-to-nearest weights; the base class of weight-quantization algorithms.

    Subclasses override :meth:`quantize` and, if they need calibration activations, set
    ``needs_inputs = True`` and implement :meth:`begin` / :meth:`observe`.
    """

    name = "rtn"
    needs_inputs = False
    #: A ``needs_inputs`` scheme that accepts a grouped convolution's 3-D inputs
    #: ``(groups, rows, inputs per output channel)`` in ``observe``.
    grouped_inputs = False

    def check(self, config: Any) -> None:
        """Raise ``ValueError`` if ``config`` asks for something this scheme cannot do."""
        if config.weight_format is None:
            return
        fmt = format_info(config.weight_format)
        if config.weight_scale_rule not in SCALE_RULES:
            raise ValueError(f"weight_scale_rule must be one of {SCALE_RULES}, got {config.weight_scale_rule!r}.")
        if not config.weight_symmetric and not hasattr(fmt, "qmin"):
            raise ValueError(f"Asymmetric weights need an integer format, got {fmt.name!r}.")

    def begin(self, name: str, layer: Any) -> Any:
        """Per-layer state to accumulate calibration inputs into (``needs_inputs`` schemes).

        A subclass whose ``begin`` also takes a ``config`` keyword gets the layer's
        :class:`~precal.emulate.QuantConfig` (e.g. to size its buffers from the options).
        """
        return None

    def observe(self, state: Any, x: torch.Tensor) -> None:
        """Accumulate one batch of the layer's inputs, ``(rows, inputs per output channel)``.

        ``(groups, rows, inputs per output channel)`` for a grouped convolution (schemes
        with ``grouped_inputs``).
        """

    def quantize(self, weight: torch.Tensor, config: Any, *, group_size: int | None, state: Any = None,
                 name: str = "") -> WeightResult:
        """Fake-quantize a ``(out_channels, inputs per output channel)`` float32 weight.

        ``group_size`` is the group to use (None: one scale per output channel); it divides
        the number of inputs (checked by the caller).
        """
        return WeightResult(quantize(weight, config.weight_format, axis=0, group_size=group_size,
                                     symmetric=config.weight_symmetric, scale_rule=config.weight_scale_rule))


#: Weight schemes by name (``QuantConfig.weight_scheme``).
WEIGHT_SCHEMES: dict[str, WeightScheme] = {"rtn": WeightScheme()}


def register_weight_scheme(name: str, scheme: WeightScheme) -> None:
    """Make ``QuantConfig(weight_scheme=name)`` quantize weights with ``scheme``.

    Parameters
    ----------
    name : str
    scheme : WeightScheme
        An instance of a :class:`WeightScheme` subclass (see the module docstring for the
        calibration-input protocol).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Weight scheme names are non-empty strings, got {name!r}.")
    if not isinstance(scheme, WeightScheme):
        raise TypeError(f"scheme must be a WeightScheme instance, got {type(scheme).__name__}.")
    WEIGHT_SCHEMES[name] = scheme

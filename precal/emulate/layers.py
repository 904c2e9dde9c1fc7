"""The layer registry: which module types precal emulates, and how.

Each registered type has an adapter. A :class:`LayerAdapter` describes a layer with one
weight matrix — how to read the weight with its output channels first, how to run the
layer's operation with another weight, and which input axis holds the features — and
:class:`EmulatedLayer` does the rest (weight scheme, activation scheme, compute format).
Built in:

=====================================  =======================================================
module type                            adapter
=====================================  =======================================================
``nn.Linear`` (and subclasses)         weight ``(out, in)``, features on the last axis
``nn.Conv1d/2d/3d`` (depthwise too)    weight ``(out, in/groups, *kernel)``, features on axis 1
``transformers.pytorch_utils.Conv1D``  GPT-2's layer: weight stored ``(in, out)``, read
                                       transposed; registered when transformers is imported
``nn.MultiheadAttention``              :class:`~precal.emulate.attention.EmulatedMultiheadAttention`
=====================================  =======================================================

A user adds a type with ``register_layer(MyLayer, MyAdapter())``: subclass
:class:`LayerAdapter` for a one-weight layer, or give any object with an
``emulate(module, config, *, name, group_size, state) -> nn.Module`` method for a module
that needs its own forward (as multi-head attention does). Such an adapter takes part in
weight schemes that learn from calibration inputs (GPTQ, AWQ, SmoothQuant) through
``calibration_layers(module) -> (stand_in, {part: (layer, LayerAdapter)})``: a module run
in ``module``'s place for the calibration pass and the layers in it whose inputs are
observed; ``emulate`` then gets ``state={part: state}``. Without it, such configs refuse
the module before any forward pass.

An :class:`EmulatedLayer` keeps the module's interface for code that reads it directly:
``.weight`` is the fake-quantized weight in the module's own layout, ``.bias`` its bias,
and other attributes (``in_features``, ``kernel_size``, ``nf``...) come from the wrapped
module.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from .activations import make_act_quantizer
from .formats import FloatFormat, format_info
from .mx import block_quantize
from .rounding import round_float
from .weights import WEIGHT_SCHEMES

__all__ = [
    "LayerAdapter",
    "LinearAdapter",
    "ConvAdapter",
    "TransposedLinearAdapter",
    "EmulatedLayer",
    "register_layer",
    "registered_layers",
    "adapter_for",
]


def scaled_round(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Per-tensor amax scaling onto an 8-bit float format, rounding, and scaling back."""
    amax = x.detach().abs().amax()
    scale = amax / fmt.max if float(amax) > 0 else torch.ones((), device=x.device)
    return round_float(x / scale, fmt) * scale


def round_operand(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """An operand of a product in a compute format: 8-bit formats amax-scaled per tensor."""
    return scaled_round(x, fmt) if fmt.bits <= 8 else round_float(x, fmt)


def round_output(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """A product's output: rounded to fp16/bf16, bf16 for 8-bit formats, float32 for tf32."""
    if fmt.name in ("fp16", "bf16"):
        return round_float(x, fmt)
    if fmt.bits <= 8:
        return round_float(x, format_info("bf16"))
    return x


class LayerAdapter:
    """How precal reads and runs a layer with one weight tensor (subclass to add a type).

    Attributes
    ----------
    feature_dim : int
        Axis of the layer's input that holds its input features (per-token activation
        scales reduce over it; a SmoothQuant-style ``input_scale`` broadcasts along it).
    """

    feature_dim = -1

    def weight(self, layer: nn.Module) -> torch.Tensor:
        """The weight with output channels on axis 0 (a view or copy, float or not)."""
        return layer.weight

    def layout(self, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`weight`: an output-first weight in the module's own layout."""
        return weight

    def bias(self, layer: nn.Module) -> torch.Tensor | None:
        return getattr(layer, "bias", None)

    def forward(self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's operation on ``x`` with an output-first ``weight`` and ``bias``."""
        raise NotImplementedError

    def inputs_2d(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as ``(rows, inputs per output channel)``, rows multiplying the weight.

        Needed only by weight schemes that learn from calibration inputs (GPTQ-like). A
        layer whose output channels read disjoint groups of inputs (:meth:`groups` > 1)
        gives ``(groups, rows, inputs per output channel)``.
        """
        return x.reshape(-1, x.shape[-1])

    def groups(self, layer: nn.Module) -> int:
        """Groups of output channels that read disjoint groups of inputs (a grouped convolution's)."""
        return 1

    def check_inputs(self, layer: nn.Module) -> None:
        """Raise ``ValueError`` if :meth:`inputs_2d` cannot give this layer's inputs (checked before any forward)."""

    def emulate(self, module: nn.Module, config: Any, *, name: str = "", group_size: Any = "config",
                state: Any = None) -> nn.Module:
        """The emulated replacement of ``module`` under ``config``."""
        return EmulatedLayer(module, config, adapter=self, name=name, group_size=group_size, state=state)


class LinearAdapter(LayerAdapter):
    """``nn.Linear``: ``y = x W^T + b``."""

    def forward(self, layer, x, weight, bias):
        return nn.functional.linear(x, weight, bias)


class TransposedLinearAdapter(LinearAdapter):
    """A linear layer that stores its weight ``(in, out)``: transformers' GPT-2 ``Conv1D``."""

    def weight(self, layer):
        return layer.weight.t()

    def layout(self, weight):
        return weight.t()


class ConvAdapter(LayerAdapter):
    """``nn.Conv1d/2d/3d`` (grouped and depthwise too): the module's own ``_conv_forward``."""

    feature_dim = 1

    def forward(self, layer, x, weight, bias):
        return layer._conv_forward(x, weight, bias)

    def groups(self, layer):
        return layer.groups

    def check_inputs(self, layer):
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or not isinstance(layer, (nn.Conv1d,
                                                                                                     nn.Conv2d)):
            raise ValueError(
                f"Calibration inputs of {type(layer).__name__}(padding={layer.padding!r}, "
                f"padding_mode={layer.padding_mode!r}) cannot be unfolded into rows: weight schemes that learn "
                "from inputs support Conv1d/Conv2d (grouped and depthwise too) with numeric zero padding."
            )

    def inputs_2d(self, layer, x):
        """Unfolded patches ``(rows, in_channels * kernel)``; grouped: ``(groups, rows, in/groups * kernel)``."""
        self.check_inputs(layer)
        if isinstance(layer, nn.Conv1d):
            x = x.unsqueeze(2)
            kernel, dilation, padding, stride = ((1, k) for k in (layer.kernel_size[0], layer.dilation[0],
                                                                  layer.padding[0], layer.stride[0]))
        else:
            kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        cols = nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        if layer.groups == 1:
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        # (batch, channels * kernel, positions), channels outermost: group i is one contiguous slice
        n, width, positions = cols.shape
        per_group = width // layer.groups
        return cols.reshape(n, layer.groups, per_group, positions).permute(1, 0, 3, 2).reshape(
            layer.groups, n * positions, per_group)


_REGISTRY: dict[type, Any] = {
    nn.Linear: LinearAdapter(),
    nn.Conv1d: ConvAdapter(),
    nn.Conv2d: ConvAdapter(),
    nn.Conv3d: ConvAdapter(),
}


def _register_optional_types() -> None:
    """Types from libraries the model may come from, registered once they are imported."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    if conv1d is not None and conv1d not in _REGISTRY:
        _REGISTRY[conv1d] = TransposedLinearAdapter()
    if nn.MultiheadAttention not in _REGISTRY:
        from .attention import MultiheadAttentionAdapter

        _REGISTRY[nn.MultiheadAttention] = MultiheadAttentionAdapter()


def register_layer(cls: type, adapter: Any) -> None:
    """Make precal emulate modules of type ``cls`` (and its subclasses) with ``adapter``.

    Parameters
    ----------
    cls : type
        An ``nn.Module`` subclass.
    adapter : LayerAdapter or object with an ``emulate`` method
        A :class:`LayerAdapter` for a layer with one weight (implement ``forward``, and
        ``weight``/``layout`` if the weight is not stored output-first), or any object with
        ``emulate(module, config, *, name, group_size, state) -> nn.Module``.

    Examples
    --------
    >>> import torch
    >>> from precal.emulate import LayerAdapter, register_layer
    >>> class Scaled(torch.nn.Linear):  # a Linear subclass is already covered; shown for the pattern
    ...     pass
    >>> class ScaledAdapter(LayerAdapter):
    ...     def forward(self, layer, x, weight, bias):
    ...         return torch.nn.functional.linear(x, weight, bias)
    >>> register_layer(Scaled, ScaledAdapter())
    """
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"cls must be an nn.Module subclass, got {cls!r}.")
    if not callable(getattr(adapter, "emulate", None)):
        raise TypeError(f"adapter must be a LayerAdapter or have an emulate() method, got {type(adapter).__name__}.")
    _REGISTRY[cls] = adapter


def registered_layers() -> list[type]:
    """The module types precal emulates (after registering the optional ones present)."""
    _register_optional_types()
    return list(_REGISTRY)


def adapter_for(module: nn.Module) -> Any:
    """The adapter of ``module``'s type, or of its nearest registered base class; None if none."""
    _register_optional_types()
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


class EmulatedLayer(nn.Module):
    """A one-weight layer computing under a :class:`~precal.emulate.QuantConfig`.

    The fake-quantized weight is computed once at construction (``weight_q``, output
    channels first; ``weight`` gives it in the module's own layout); the activation
    quantizer (``act``, see :mod:`precal.emulate.activations`) is calibrated by
    :func:`~precal.emulate.emulate_model` when its scheme needs it.

    Parameters
    ----------
    layer : nn.Module
        The module to emulate (kept as ``.layer`` for its hyper-parameters).
    config : QuantConfig
    adapter : LayerAdapter, optional
        Default: the registered adapter of ``layer``'s type.
    name : str
        The layer's name in the model (for error messages).
    group_size : int or None, optional
        Group size actually used (None: per output channel); default
        ``config.weight_group_size``.
    state : optional
        Calibration state of the weight scheme (schemes with ``needs_inputs``).
    """

    def __init__(self, layer: nn.Module, config: Any, *, adapter: LayerAdapter | None = None, name: str = "",
                 group_size: Any = "config", state: Any = None) -> None:
        super().__init__()
        adapter = adapter if adapter is not None else adapter_for(layer)
        if not isinstance(adapter, LayerAdapter):
            raise TypeError(f"EmulatedLayer wraps a layer with a LayerAdapter; {type(layer).__name__} has "
                            f"{type(adapter).__name__ if adapter is not None else 'none'}.")
        self.adapter = adapter
        self.config = config
        self.name = name
        self.layer = layer
        weight = adapter.weight(layer).detach().float()
        bias = adapter.bias(layer)
        bias = None if bias is None else bias.detach().float()
        if group_size == "config":
            group_size = config.weight_group_size
        compute = format_info(config.compute) if config.compute else None
        self.weight_group_size = group_size if config.weight_format else None
        input_scale = None
        if config.weight_format:
            flat = weight.reshape(weight.shape[0], -1)
            result = WEIGHT_SCHEMES[config.weight_scheme].quantize(flat, config, group_size=group_size, state=state,
                                                                   name=name)
            weight = result.weight.reshape(weight.shape).float()
            input_scale = result.input_scale
        self.act_block = getattr(config, "act_block", None)
        if getattr(config, "weight_block", None):  # blocks along the reduction axis of the output-first weight
            weight = block_quantize(weight, config.weight_block, axis=1)
        if compute is not None:
            weight = round_operand(weight, compute)
            if bias is not None and compute.bits > 8 and compute.name != "tf32":
                bias = round_float(bias, compute)
        self.compute_format = compute
        self.register_buffer("weight_q", weight)
        self.register_buffer("bias_f", bias)
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().float())
        # with quantize_outputs, the graph quantizes tensors between layers instead (backend.py)
        outputs_mode = getattr(config, "quantize_outputs", False)
        self.act = None if outputs_mode else make_act_quantizer(config, adapter.feature_dim)

    @property
    def weight(self) -> torch.Tensor:
        """The fake-quantized weight in the wrapped module's own layout."""
        return self.adapter.layout(self.weight_q)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.bias_f

    @property
    def act_format(self) -> Any:
        return None if self.act is None else self.act.fmt

    @property
    def act_scale(self) -> torch.Tensor | None:
        """The static activation scale (None before calibration or for other schemes)."""
        return getattr(self.act, "scale", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "layer" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["layer"], name)

    #: While True, the layer computes with its float weights (observers downstream then see
    #: the float model's activations, as torch.ao's post-training calibration does).
    float_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if self.float_weights:
            bias = self.adapter.bias(self.layer)
            return self.adapter.forward(self.layer, x, self.adapter.weight(self.layer).float(),
                                        None if bias is None else bias.float()).to(dtype)
        if self.input_scale is not None:
            shape = [1] * x.dim()
            shape[self.adapter.feature_dim] = -1
            x = x / self.input_scale.reshape(shape)
        if self.act_block:  # blocks along the input's feature (reduction) axis
            x = block_quantize(x, self.act_block, axis=self.adapter.feature_dim)
        if self.act is not None:
            x = self.act(x)
        fmt = self.compute_format
        if fmt is not None:
            x = round_operand(x, fmt)
        out = self.adapter.forward(self.layer, x, self.weight_q, self.bias_f)  # bias inside the float32 GEMM
        if fmt is not None:
            out = round_output(out, fmt)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"{type(self.layer).__name__}, config={self.config.name!r}"

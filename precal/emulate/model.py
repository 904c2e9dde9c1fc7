"""Model-level emulation: a copy of a torch model whose layers compute at a lower precision.

:func:`emulate_model` deep-copies the model (the caller's model is never touched), folds
BatchNorm into the preceding convolution or linear layer when weights are quantized, and
swaps every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` for an :class:`EmulatedLayer`
that applies a :class:`QuantConfig`:

* **weights** (``wN``): fake-quantized once, symmetric, one scale per output channel, or
  per group of ``g`` input elements (``-gG``), after BatchNorm folding; a layer whose
  input size per output channel is not a multiple of ``g`` (e.g. a first 3x3 conv on one
  channel: 9 elements) falls back to per-output-channel scales
  (``EmulatedLayer.weight_group_size`` is then None);
* **activations** (``aN``, N < 16): the layer's input is fake-quantized per tensor,
  asymmetric, with a range from an observer (min-max, percentile or MSE) calibrated on a
  few batches the caller gives; ``a16`` leaves activations in floating point;
* **compute precision** (``"fp16"``, ``"bf16"``, ``"tf32"``, ``"fp8_e4m3"``, ...): the
  layer's operands are rounded to the format, the product is accumulated in float32, and
  the output (bias included) is rounded once: to the format for fp16/bf16, kept float32
  for tf32, rounded to bf16 for 8-bit formats, whose operands are first scaled per tensor
  so their largest magnitude maps to the format's max (weights once, activations per
  batch: "current scaling"). Other operations (activations functions, pooling, residual
  additions, normalisation) stay in float32.

Config names: ``"fp32"`` (no change), a float format name (compute precision),
``"w{bits}a{bits}[-g{group}]"`` such as ``"w8a8"``, ``"w4a8"``, ``"w4a4"``,
``"w4a16-g128"``, or a block format (:mod:`precal.emulate.mx`): ``"mxfp8"``, ``"mxfp6"``,
``"mxfp4"``, ``"mxint8"``, ``"nvfp4"`` quantize weights and layer inputs in blocks along the
reduction dimension (``"w-mxfp4"``: weights only; ``"mxfp4-rceil"``: another MX scale rule).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import mx
from .formats import FloatFormat, IntFormat, format_info
from .observers import OBSERVERS, RangeObserver
from .quantize import SCALE_RULES, fake_quantize_int, int_qparams, quantize
from .rounding import round_float

__all__ = [
    "QuantConfig",
    "parse_config",
    "EmulatedLayer",
    "emulate_model",
    "fold_batchnorm",
    "iter_batches",
    "quantizable_layers",
]

_WA_RE = re.compile(r"^w(\d+)a(\d+)(?:-g(\d+))?$")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class QuantConfig:
    """What an emulated layer does; usually made from a name by :func:`parse_config`.

    Parameters
    ----------
    name : str
    weight_format : str, optional
        Integer format of the weights (``"int8"``, ``"int4"``), symmetric.
    weight_group_size : int, optional
        Per-group weight scales of this many input elements; per-output-channel if None.
    act_format : str, optional
        Integer format of the layer inputs, per-tensor asymmetric.
    compute : str, optional
        Float format of the layer's operands and output (see module docstring).
    observer : {"minmax", "percentile", "mse"}, default="minmax"
        How activation ranges are calibrated.
    weight_scale_rule : {"qmax", "half_range"}, default="qmax"
    fold_bn : bool, default=True
        Fold BatchNorm into the preceding layer before quantizing weights.
    weight_block, act_block : str, optional
        Block format (``"mxfp8"``, ``"mxfp4"``, ``"nvfp4"``, ...; see
        :func:`~precal.emulate.block_quantize`) of the weights and of the layer inputs,
        blocks along the reduction dimension, scales computed per call (dynamic).
    """

    name: str
    weight_format: str | None = None
    weight_group_size: int | None = None
    act_format: str | None = None
    compute: str | None = None
    observer: str = "minmax"
    weight_scale_rule: str = "qmax"
    fold_bn: bool = True
    weight_block: str | None = None
    act_block: str | None = None

    def __post_init__(self) -> None:
        for block in (self.weight_block, self.act_block):
            if block is not None:
                mx.parse_block_format(block)
        for fmt_name, kind in ((self.weight_format, IntFormat), (self.act_format, IntFormat),
                               (self.compute, FloatFormat)):
            if fmt_name is not None and not isinstance(format_info(fmt_name), kind):
                raise ValueError(f"{fmt_name!r} is not a{'n integer' if kind is IntFormat else ' float'} format.")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}.")
        if self.weight_scale_rule not in SCALE_RULES:
            raise ValueError(f"weight_scale_rule must be one of {SCALE_RULES}, got {self.weight_scale_rule!r}.")

    @property
    def is_identity(self) -> bool:
        return (self.weight_format is None and self.act_format is None and self.compute is None
                and self.weight_block is None and self.act_block is None)


def parse_config(config: str | QuantConfig, **options: Any) -> QuantConfig:
    """Turn a config name into a :class:`QuantConfig`; ``options`` override its fields.

    Examples
    --------
    >>> from precal.emulate import parse_config
    >>> parse_config("w4a16-g128")
    QuantConfig(name='w4a16-g128', weight_format='int4', weight_group_size=128, act_format=None, compute=None, observer='minmax', weight_scale_rule='qmax', fold_bn=True, weight_block=None, act_block=None)
    """
    if isinstance(config, QuantConfig):
        return replace(config, **options) if options else config
    if not isinstance(config, str):
        raise TypeError(f"config must be a name or a QuantConfig, got {type(config).__name__}.")
    key = config.strip().lower()
    match = _WA_RE.match(key)
    if match:
        w_bits, a_bits = int(match.group(1)), int(match.group(2))
        group = int(match.group(3)) if match.group(3) else None
        if not 2 <= w_bits <= 8:
            raise ValueError(f"Config {config!r}: weight bits must be in 2..8, got {w_bits}.")
        if not (2 <= a_bits <= 8 or a_bits in (16, 32)):
            raise ValueError(f"Config {config!r}: activation bits must be in 2..8, or 16/32 for float, got {a_bits}.")
        if group is not None and group < 1:
            raise ValueError(f"Config {config!r}: group size must be >= 1.")
        return QuantConfig(
            name=key,
            weight_format=f"int{w_bits}",
            weight_group_size=group,
            act_format=f"int{a_bits}" if a_bits <= 8 else None,
            **options,
        )
    if key == "fp32":
        return QuantConfig(name=key, **options)
    blocks = mx.parse_block_config(key)
    if blocks is not None:
        return QuantConfig(name=key, weight_block=blocks[0], act_block=blocks[1], **options)
    try:
        fmt = format_info(key)
    except ValueError:
        fmt = None
    if isinstance(fmt, FloatFormat):
        return QuantConfig(name=key, compute=fmt.name, **options)
    raise ValueError(
        f"Unknown config {config!r}: use 'fp32', a float format name for compute precision "
        "('fp16', 'bf16', 'tf32', 'fp8_e4m3', 'fp8_e5m2', ...), or 'w<bits>a<bits>[-g<group>]' "
        "such as 'w8a8', 'w4a8', 'w4a4', 'w4a16-g128', or a block format ('mxfp8', 'mxfp6', 'mxfp4', "
        "'nvfp4', 'w-mxfp4', 'mxfp4-rceil', ...)."
    )


def _scaled_round(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Per-tensor amax scaling onto an 8-bit float format, rounding, and scaling back."""
    amax = x.detach().abs().amax()
    scale = amax / fmt.max if float(amax) > 0 else torch.ones((), device=x.device)
    return round_float(x / scale, fmt) * scale


class EmulatedLayer(nn.Module):
    """A Linear/Conv1d/Conv2d layer computing under a :class:`QuantConfig`.

    The fake-quantized weight is computed once at construction and kept as a buffer;
    activation quantization parameters come from :meth:`calibrate_begin` /
    :meth:`calibrate_end` around a few forward passes.
    """

    def __init__(self, layer: nn.Module, config: QuantConfig) -> None:
        super().__init__()
        if not isinstance(layer, _LAYERS):
            raise TypeError(f"EmulatedLayer wraps nn.Linear/Conv1d/Conv2d, got {type(layer).__name__}.")
        self.config = config
        self.layer = layer  # kept for its hyper-parameters (stride, padding, ...)
        weight = layer.weight.detach().float()
        bias = None if layer.bias is None else layer.bias.detach().float()
        compute = format_info(config.compute) if config.compute else None
        group = config.weight_group_size
        per_channel = weight[0].numel()
        if group is not None and per_channel % group:
            group = None  # e.g. a 3x3 conv with one input channel: per-output-channel scales
        self.weight_group_size = group
        if config.weight_format:
            weight = quantize(weight, config.weight_format, axis=0, group_size=group,
                              scale_rule=config.weight_scale_rule)
        if config.weight_block or config.act_block:  # blocks along the reduction dimension
            self.weight_block_axis, self.input_block_axis = mx.layer_block_axes(layer)
            if config.weight_block:
                weight = mx.block_quantize(weight, config.weight_block, axis=self.weight_block_axis)
        if compute is not None:
            weight = _scaled_round(weight, compute) if compute.bits <= 8 else round_float(weight, compute)
            if bias is not None and compute.bits > 8 and compute.name != "tf32":
                bias = round_float(bias, compute)
        self.compute_format = compute
        self.register_buffer("weight_q", weight)
        self.register_buffer("bias_f", bias)
        self.act_format = format_info(config.act_format) if config.act_format else None
        self.observer: RangeObserver | None = None
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self.calibrating = False

    def calibrate_begin(self) -> None:
        if self.act_format is not None:
            self.observer = RangeObserver(self.config.observer)
            self.calibrating = True

    def calibrate_end(self) -> None:
        if self.act_format is None:
            return
        self.calibrating = False
        lo, hi = self.observer.range(self.act_format)
        device = self.weight_q.device
        scale, zero = int_qparams(torch.tensor(lo, device=device), torch.tensor(hi, device=device),
                                  self.act_format, symmetric=False)
        self.act_scale, self.act_zero_point = scale, zero
        self.observer = None

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if self.config.act_block:
            x = mx.block_quantize(x, self.config.act_block, axis=self.input_block_axis)
        if self.act_format is not None:
            if self.calibrating:
                self.observer.observe(x)
            elif self.act_scale is None:
                raise RuntimeError(
                    f"Config {self.config.name!r} quantizes activations but this layer was never calibrated: "
                    "pass calibration_data to emulate_model."
                )
            else:
                x = fake_quantize_int(x, self.act_scale, self.act_zero_point, self.act_format.qmin,
                                      self.act_format.qmax)
        fmt = self.compute_format
        if fmt is not None:
            x = _scaled_round(x, fmt) if fmt.bits <= 8 else round_float(x, fmt)
        out = self._op(x, self.weight_q, self.bias_f)  # bias inside the float32 GEMM, as kernels do
        if fmt is not None:
            if fmt.name in ("fp16", "bf16"):
                out = round_float(out, fmt)
            elif fmt.bits <= 8:
                out = round_float(out, format_info("bf16"))
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"{type(self.layer).__name__}, config={self.config.name!r}"


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv1d/Conv2d layers, in registration order (first conv first)."""
    return [name for name, module in model.named_modules() if isinstance(module, _LAYERS)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Conv/Linear into it, in place.

    Pairs are found by tracing the model with ``torch.fx`` (a BatchNorm whose only input is
    a conv/linear output used nowhere else). The layer gets the folded weight and bias and
    the BatchNorm becomes ``nn.Identity``. Call it on a copy in eval mode. Returns the
    folded ``(layer, batchnorm)`` names; a model that cannot be traced is left as is with a
    warning.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot fold"
        warnings.warn(f"BatchNorm folding skipped: the model could not be traced by torch.fx ({exc}).",
                      RuntimeWarning, stacklevel=2)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = modules.get(src.target)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            fused = nn.utils.fusion.fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = nn.utils.fusion.fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        _set_module(model, src.target, fused)
        _set_module(model, node.target, nn.Identity())
        pairs.append((src.target, node.target))
    return pairs


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[Any]:
    """Yield model inputs from a tensor, a numpy array or an iterable of batches.

    Tensors and arrays are cut into ``batch_size`` rows. From an iterable (a DataLoader),
    each item is used as is if it is a tensor or a dict (passed as keyword arguments), and
    its first element if it is a tuple or list ``(inputs, labels, ...)``.
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("data must have a batch dimension.")
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a tensor, an array or an iterable of batches, got {type(data).__name__}.")
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        yield item


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return batch.to(device)


def _call(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def emulate_model(
    model: nn.Module,
    config: str | QuantConfig,
    *,
    calibration_data: Any = None,
    n_calibration_batches: int = 8,
    batch_size: int = 256,
    skip: Iterable[str] = (),
    overrides: dict[str, str | QuantConfig | None] | None = None,
    observer: str | None = None,
) -> nn.Module:
    """A copy of ``model`` that computes under ``config``; ``model`` itself is not modified.

    Parameters
    ----------
    model : torch.nn.Module
    config : str or QuantConfig
        ``"fp32"``, a float format (``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``, ...) or
        ``"w{b}a{b}[-g{g}]"`` (see the module docstring).
    calibration_data : tensor, array or iterable of batches, optional
        Inputs for activation observers; required when the config quantizes activations.
        Keep these out of your evaluation data.
    n_calibration_batches : int, default=8
        At most this many batches of ``calibration_data`` are used.
    batch_size : int, default=256
        Batch size when ``calibration_data`` is a tensor or array.
    skip : iterable of str
        Layer names (as in ``model.named_modules()``) left in float32.
    overrides : dict, optional
        Layer name -> config for that layer (``None`` = leave in float32). Keeping the
        first conv and last linear at 8 bit is common: see :func:`quantizable_layers`.
    observer : {"minmax", "percentile", "mse"}, optional
        Overrides the config's activation observer.

    Returns
    -------
    torch.nn.Module
        The emulated copy, in eval mode, on the model's device.

    Raises
    ------
    ValueError
        Unknown config, unknown layer names in ``skip``/``overrides``, or an activation
        config without calibration data.
    """
    options = {"observer": observer} if observer else {}
    cfg = parse_config(config, **options)
    overrides = dict(overrides or {})
    layer_cfgs = {name: parse_config(c, **options) if c is not None else None for name, c in overrides.items()}
    for name in skip:
        layer_cfgs[name] = None
    emulated = copy.deepcopy(model).eval()
    known = set(quantizable_layers(emulated))
    unknown = sorted(set(layer_cfgs) - known)
    if unknown:
        raise ValueError(f"Unknown layer name(s) {unknown}; quantizable layers are {sorted(known)}.")
    all_cfgs = [cfg, *[c for c in layer_cfgs.values() if c is not None]]
    if all(c.is_identity for c in all_cfgs):
        return emulated
    if not known:
        raise ValueError(
            f"Config {cfg.name!r} has nothing to emulate: the model has no nn.Linear or nn.Conv layers "
            f"({type(model).__name__}; a TorchScript or torch.export graph hides them). Pass the nn.Module itself."
        )
    if any((c.weight_format or c.weight_block) and c.fold_bn for c in all_cfgs):
        fold_batchnorm(emulated)
    layers: list[EmulatedLayer] = []
    for name in quantizable_layers(emulated):
        layer_cfg = layer_cfgs.get(name, cfg)
        if layer_cfg is None or layer_cfg.is_identity:
            continue
        wrapped = EmulatedLayer(emulated.get_submodule(name), layer_cfg)
        _set_module(emulated, name, wrapped)
        layers.append(wrapped)
    if any(layer.act_format is not None for layer in layers):
        if calibration_data is None:
            raise ValueError(
                f"Config {cfg.name!r} quantizes activations: pass calibration_data (a few batches of "
                "inputs kept out of the evaluation) to calibrate the activation observers."
            )
        device = _model_device(emulated)
        for layer in layers:
            layer.calibrate_begin()
        with torch.no_grad():
            for i, batch in enumerate(iter_batches(calibration_data, batch_size)):
                if i >= n_calibration_batches:
                    break
                _call(emulated, _to_device(batch, device))
        for layer in layers:
            layer.calibrate_end()
    return emulated

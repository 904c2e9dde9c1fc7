"""Model-level emulation: a copy of a torch model whose layers compute at a lower precision.

:func:`emulate_model` deep-copies the model (the caller's model is never touched), folds
BatchNorm into the preceding convolution or linear layer when weights are quantized and
the model has BatchNorm, and replaces every layer of a registered type
(:mod:`precal.emulate.layers`: ``nn.Linear``, ``nn.Conv1d/2d/3d``, transformers'
``Conv1D``, ``nn.MultiheadAttention``, and whatever :func:`register_layer` adds) by an
emulated one that applies a :class:`QuantConfig`:

* **weights** (``wN``): fake-quantized once by the config's weight scheme (default
  ``"rtn"``, round to nearest; :mod:`precal.emulate.weights`), one scale per output
  channel or per group of ``g`` inputs (``-gG``), symmetric with the ``half_range`` rule
  (``s = amax / ((qmax - qmin) / 2)``: torch.ao, torchao, GPTQ, llmcompressor) or
  asymmetric with a zero point (``-asym``). A layer whose inputs per output channel are
  not a multiple of ``g`` is an error naming the layer, unless ``group_fallback`` says
  otherwise;
* **activations** (``aN``, N < 16): the layer's input is fake-quantized by the config's
  activation scheme (:mod:`precal.emulate.activations`): ``"static"`` per-tensor
  asymmetric with an observer range calibrated on a few batches, or ``"dynamic"``
  (``-dyn``) symmetric per token at run time; ``a16`` leaves activations in floating point;
* **compute precision** (``"fp16"``, ``"bf16"``, ``"tf32"``, ``"fp8_e4m3"``, ...): the
  layer's operands are rounded to the format, the product is accumulated in float32, and
  the output (bias included) is rounded once: to the format for fp16/bf16, kept float32
  for tf32, rounded to bf16 for 8-bit formats, whose operands are first scaled per tensor
  so their largest magnitude maps to the format's max (weights once, activations per
  batch: "current scaling"). With ``-attn`` the attention products and softmax follow the
  fused-kernel recipe in that format too (:mod:`precal.emulate.attention`). Other
  operations (activation functions, pooling, residual additions, normalisation) stay in
  float32.

Config names: ``"fp32"`` (no change), a float format name (compute precision) with an
optional ``-attn``, or ``"w{bits}a{bits}[-g{group}][-asym][-dyn][-gptq|-awq|-sq]"`` such as ``"w8a8"``,
``"w4a8"``, ``"w4a4"``, ``"w4a16-g128"``, ``"w4a16-g128-asym"``, ``"w8a8-dyn"``, and
``"w8a8-x86"`` (backend-faithful static int8 as torch.ao's x86 backend runs it:
:mod:`precal.emulate.backend`), with a PTQ algorithm for the weights
(:mod:`precal.emulate.ptq`): ``"w4a16-g128-gptq"``, ``"w4a16-g128-gptq-actorder"``,
``"w4a16-g128-awq"``, ``"w8a8-sq"`` (SmoothQuant), or a block format (:mod:`precal.emulate.mx`): ``"mxfp8"``,
``"mxfp6"``, ``"mxfp4"``, ``"mxint8"``, ``"nvfp4"`` quantize weights and layer inputs in
blocks along the reduction dimension (``"w-mxfp4"``: weights only; ``"mxfp4-rceil"``:
another MX scale rule).
Group-wise and dynamic configs are LLM-style: they keep the model's output layer
(``lm_head``, the final classifier) in float, as GPTQ/AWQ/llmcompressor deployments do.
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .activations import ACT_SCHEMES
from .batches import call_model, check_batch, iter_batches, to_device
from .formats import FloatFormat, IntFormat, format_info
from . import mx
from .layers import EmulatedLayer, LayerAdapter, adapter_for, registered_layers
from .observers import OBSERVERS
from .quantize import SCALE_RULES
from .rounding import round_float
from .weights import WEIGHT_SCHEMES
from . import ptq as _ptq  # noqa: F401  (registers the gptq/awq/smoothquant weight schemes)

del _ptq

__all__ = [
    "QuantConfig",
    "parse_config",
    "EmulatedLayer",
    "emulate_model",
    "fold_batchnorm",
    "iter_batches",
    "quantizable_layers",
    "output_layer",
    "GROUP_FALLBACKS",
]

_WA_RE = re.compile(r"^w(\d+)a(\d+)((?:-[a-z0-9]+)*)$")
_FLOAT_RE = re.compile(r"^([a-z0-9_]+?)(-attn)?$")
#: Config-name suffixes that select a PTQ weight scheme (:mod:`precal.emulate.ptq`).
_PTQ_SUFFIXES = {"gptq": "gptq", "awq": "awq", "sq": "smoothquant"}
_SUFFIX_OF = {v: k for k, v in _PTQ_SUFFIXES.items()}

#: What to do with a layer whose inputs per output channel are not a multiple of the
#: group size: ``"error"`` (default), ``"channel"`` (one scale per output channel for
#: that layer), ``"skip"`` (leave that layer in float).
GROUP_FALLBACKS = ("error", "channel", "skip")


@dataclass(frozen=True)
class QuantConfig:
    """What an emulated layer does; usually made from a name by :func:`parse_config`.

    Parameters
    ----------
    name : str
    weight_format : str, optional
        Format of the weights (``"int8"``, ``"int4"``, or a float format such as
        ``"fp8_e4m3"``, amax-scaled per channel/group).
    weight_group_size : int, optional
        Per-group weight scales of this many consecutive inputs of each output channel;
        per-output-channel if None.
    weight_symmetric : bool, default=True
        Symmetric integer weights (zero point 0), or asymmetric with a zero point per
        channel/group (``-asym``: ``s = (max - min) / (qmax - qmin)``).
    weight_scale_rule : {"half_range", "qmax"}, default="half_range"
        Symmetric scale ``amax / ((qmax - qmin) / 2)`` (torch.ao, torchao, GPTQ,
        llmcompressor; bit-equal with their fake quantization) or ``amax / qmax``.
    weight_scheme : str, default="rtn"
        Name of a weight scheme in :data:`~precal.emulate.weights.WEIGHT_SCHEMES`.
    act_format : str, optional
        Integer format of the layer inputs.
    act_scheme : {"static", "dynamic"} or a registered name, default="static"
        Per-tensor asymmetric with calibrated ranges, or per-token symmetric at run time.
    act_scale_rule : {"qmax", "half_range"}, default="qmax"
        Scale rule of the ``"dynamic"`` scheme (``amax / 127`` for int8, as vLLM).
    act_reduce_range : bool, default=False
        Static scheme: scales computed for one bit fewer (uint8: codes 0..127) and values
        clamped to the full format, as torch.ao's ``reduce_range`` (x86/fbgemm).
    observer : {"minmax", "percentile", "mse"}, default="minmax"
        How static activation ranges are calibrated.
    compute : str, optional
        Float format of the layer's operands and output (see module docstring).
    attention : bool, default=False
        Emulate the attention products and softmax in ``compute`` too (``-attn``).
    embeddings : bool, default=False
        Also quantize ``nn.Embedding`` tables (one scale per row, i.e. per token vector,
        or per group of the row) with the weight format; with a compute format, round them
        to it (bf16 for 8-bit formats).
    keep_head : bool, default=False
        Leave the model's output layer (:func:`output_layer`) in float; True by default for
        group-wise and dynamic (LLM-style) config names.
    group_fallback : {"error", "channel", "skip"}, default="error"
        See :data:`GROUP_FALLBACKS`.
    quantize_outputs : bool, default=False
        Backend-faithful static quantization (``-x86``): activations are quantized where an
        int8 backend keeps int8 tensors — the network input, every layer output (after a
        fused ReLU), residual additions, averages rounded back onto their input's grid —
        instead of at each layer's input (:mod:`precal.emulate.backend`; needs a model
        that ``torch.fx`` can trace).
    fold_bn : bool, default=True
        Fold BatchNorm into the preceding layer before quantizing weights.
    weight_block, act_block : str, optional
        Block format (``"mxfp8"``, ``"mxfp4"``, ``"nvfp4"``, ...; see
        :func:`~precal.emulate.block_quantize`) of the weights and of the layer inputs,
        blocks along the reduction dimension, scales computed per call (dynamic).
    options : dict
        Free-form options for registered schemes (e.g. a PTQ algorithm's damping).
    """

    name: str
    weight_format: str | None = None
    weight_group_size: int | None = None
    weight_symmetric: bool = True
    weight_scale_rule: str = "half_range"
    weight_scheme: str = "rtn"
    act_format: str | None = None
    act_scheme: str = "static"
    act_scale_rule: str = "qmax"
    act_reduce_range: bool = False
    observer: str = "minmax"
    compute: str | None = None
    attention: bool = False
    embeddings: bool = False
    keep_head: bool = False
    group_fallback: str = "error"
    quantize_outputs: bool = False
    fold_bn: bool = True
    weight_block: str | None = None
    act_block: str | None = None
    options: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for block in (self.weight_block, self.act_block):
            if block is not None:
                mx.parse_block_format(block)
        for label, fmt_name in (("weight_format", self.weight_format), ("act_format", self.act_format),
                                ("compute", self.compute)):
            if fmt_name is not None:
                format_info(fmt_name)  # raises ValueError naming the valid formats
        if self.compute is not None and not isinstance(format_info(self.compute), FloatFormat):
            raise ValueError(f"{self.compute!r} is not a float format (compute).")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"weight_scheme must be one of {sorted(WEIGHT_SCHEMES)}, got {self.weight_scheme!r}.")
        if self.act_scheme not in ACT_SCHEMES:
            raise ValueError(f"act_scheme must be one of {sorted(ACT_SCHEMES)}, got {self.act_scheme!r}.")
        if self.act_format is not None and self.act_scheme in ("static", "dynamic"):
            fmt = format_info(self.act_format)
            if not isinstance(fmt, IntFormat) or (self.act_scheme == "dynamic" and not fmt.signed):
                raise ValueError(f"{self.act_format!r} is not a{' signed' if self.act_scheme == 'dynamic' else 'n'} "
                                 f"integer format (act_format with act_scheme={self.act_scheme!r}).")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}.")
        for label, rule in (("weight_scale_rule", self.weight_scale_rule), ("act_scale_rule", self.act_scale_rule)):
            if rule not in SCALE_RULES:
                raise ValueError(f"{label} must be one of {SCALE_RULES}, got {rule!r}.")
        if self.group_fallback not in GROUP_FALLBACKS:
            raise ValueError(f"group_fallback must be one of {GROUP_FALLBACKS}, got {self.group_fallback!r}.")
        if self.weight_group_size is not None and (isinstance(self.weight_group_size, bool)
                                                   or not isinstance(self.weight_group_size, int)
                                                   or self.weight_group_size < 1):
            raise ValueError(f"weight_group_size must be a positive integer, got {self.weight_group_size!r}.")
        if self.quantize_outputs and self.act_format is None:
            raise ValueError("quantize_outputs=True quantizes activations: set act_format too.")
        if self.attention and self.compute is None:
            raise ValueError("attention=True emulates attention in the compute format: set compute too.")
        WEIGHT_SCHEMES[self.weight_scheme].check(self)

    @property
    def is_identity(self) -> bool:
        return (self.weight_format is None and self.act_format is None and self.compute is None
                and self.weight_block is None and self.act_block is None)


def parse_config(config: str | QuantConfig, **options: Any) -> QuantConfig:
    """Turn a config name into a :class:`QuantConfig`; ``options`` override its fields.

    Names: ``"fp32"``; a float format (``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp8_e4m3"``,
    ...) with an optional ``-attn``; ``"w{2..8}a{2..8|16}"`` with optional suffixes
    ``-g{G}`` (weight groups), ``-asym`` (asymmetric weights), ``-dyn`` (dynamic per-token
    activations); ``"w8a8-x86"`` is torch.ao's x86 int8 recipe, backend-faithful
    (``quantize_outputs``, uint8 activations with ``reduce_range``, histogram observer).

    PTQ algorithms (:mod:`precal.emulate.ptq`; they need ``calibration_data``): ``-gptq``
    (GPTQ, ``weight_scheme="gptq"``; with ``-actorder``, act-order, and static groups when
    ``-g`` is set), ``-awq`` (AWQ), ``-sq`` (SmoothQuant), e.g. ``"w4a16-g128-gptq"``,
    ``"w4a16-g128-gptq-actorder"``, ``"w4a16-g128-awq"``, ``"w8a8-sq"``,
    ``"w8a8-dyn-sq"``. Their parameters go in ``options`` (``options={"damp": 0.05}``),
    merged with those the name sets.

    Examples
    --------
    >>> from precal.emulate import parse_config
    >>> cfg = parse_config("w4a16-g128")
    >>> cfg.weight_format, cfg.weight_group_size, cfg.act_format, cfg.keep_head
    ('int4', 128, None, True)
    >>> parse_config("w8a8-dyn").act_scheme
    'dynamic'
    >>> cfg = parse_config("w4a16-g128-gptq-actorder")
    >>> cfg.weight_scheme, cfg.options
    ('gptq', {'act_order': True})
    """
    if isinstance(config, QuantConfig):
        return replace(config, **options) if options else config
    if not isinstance(config, str):
        raise TypeError(f"config must be a name or a QuantConfig, got {type(config).__name__}.")
    key = config.strip().lower()
    match = _WA_RE.match(key)
    if match:
        w_bits, a_bits = int(match.group(1)), int(match.group(2))
        if not 2 <= w_bits <= 8:
            raise ValueError(f"Config {config!r}: weight bits must be in 2..8, got {w_bits}.")
        if not (2 <= a_bits <= 8 or a_bits in (16, 32)):
            raise ValueError(f"Config {config!r}: activation bits must be in 2..8, or 16/32 for float, got {a_bits}.")
        fields: dict[str, Any] = {"weight_format": f"int{w_bits}",
                                  "act_format": f"int{a_bits}" if a_bits <= 8 else None}
        for suffix in filter(None, match.group(3).split("-")):
            if re.fullmatch(r"g\d+", suffix):
                group = int(suffix[1:])
                if group < 1:
                    raise ValueError(f"Config {config!r}: group size must be >= 1.")
                fields["weight_group_size"] = group
            elif suffix == "asym":
                fields["weight_symmetric"] = False
            elif suffix == "dyn":
                if a_bits > 8:
                    raise ValueError(f"Config {config!r}: -dyn quantizes activations; a{a_bits} leaves them float.")
                fields["act_scheme"] = "dynamic"
            elif suffix == "x86":
                if (w_bits, a_bits) != (8, 8):
                    raise ValueError(f"Config {config!r}: -x86 is torch.ao's x86 int8 recipe: use w8a8-x86.")
                # quint8 with reduce_range, histogram observer, int8 tensors between layers
                fields.update(act_format="uint8", act_reduce_range=True, observer="histogram", quantize_outputs=True)
            elif suffix in _PTQ_SUFFIXES:
                scheme = _PTQ_SUFFIXES[suffix]
                if fields.get("weight_scheme", scheme) != scheme:
                    raise ValueError(f"Config {config!r}: one PTQ algorithm per config "
                                     f"(-{_SUFFIX_OF[fields['weight_scheme']]} and -{suffix}).")
                fields["weight_scheme"] = scheme
            elif suffix == "actorder":
                fields.setdefault("options", {})["act_order"] = True
            else:
                raise ValueError(f"Config {config!r}: unknown suffix {suffix!r} (use -g<group>, -asym, -dyn, -x86, "
                                 "-gptq, -actorder, -awq, -sq).")
        if fields.get("options", {}).get("act_order") and fields.get("weight_scheme") != "gptq":
            raise ValueError(f"Config {config!r}: -actorder is a GPTQ option: use it with -gptq.")
        fields["keep_head"] = "weight_group_size" in fields or fields.get("act_scheme") == "dynamic"
        if "options" in fields and "options" in options:  # name-given options, overridden by explicit ones
            options = {**options, "options": {**fields["options"], **dict(options["options"] or {})}}
        return QuantConfig(name=key, **{**fields, **options})
    if key == "fp32":
        return QuantConfig(name=key, **options)
    blocks = mx.parse_block_config(key)
    if blocks is not None:
        return QuantConfig(name=key, weight_block=blocks[0], act_block=blocks[1], **options)
    match = _FLOAT_RE.match(key)
    try:
        fmt = format_info(match.group(1)) if match else None
    except ValueError:
        fmt = None
    if isinstance(fmt, FloatFormat):
        return QuantConfig(name=key, **{"compute": fmt.name, "attention": bool(match.group(2)), **options})
    raise ValueError(
        f"Unknown config {config!r}: use 'fp32', a float format name for compute precision "
        "('fp16', 'bf16', 'tf32', 'fp8_e4m3', 'fp8_e5m2', ..., optionally with '-attn'), or "
        "'w<bits>a<bits>[-g<group>][-asym][-dyn][-gptq|-awq|-sq]' such as 'w8a8', 'w4a8', 'w4a4', 'w4a16-g128', "
        "'w8a8-dyn', 'w4a16-g128-gptq', 'w8a8-sq', "
        "or a block format ('mxfp8', 'mxfp6', 'mxfp4', 'mxint8', 'nvfp4', 'w-mxfp4', 'mxfp4-rceil', ...)."
    )


def _walk(module: nn.Module, prefix: str = ""):
    """(name, module, adapter) of registered layers, not descending into them."""
    for child_name, child in module.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        adapter = adapter_for(child)
        if adapter is not None:
            yield name, child, adapter
        else:
            yield from _walk(child, name)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers precal emulates, in registration order (first conv first).

    Layers of registered types (:func:`~precal.emulate.register_layer`); the sub-layers of
    a registered module (``out_proj`` of an ``nn.MultiheadAttention``) are not listed.
    """
    if adapter_for(model) is not None:
        return [""]
    return [name for name, _, _ in _walk(model)]


def output_layer(model: nn.Module) -> str | None:
    """Name of the model's output layer, which ``keep_head`` configs leave in float.

    The module that ``model.get_output_embeddings()`` returns (a transformers model's
    ``lm_head``) when it is a quantizable layer, otherwise the last quantizable layer in
    registration order (a classifier's final linear layer); None for a model without one.
    """
    names = quantizable_layers(model)
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # noqa: BLE001 - models that do not implement it raise various errors
            head = None
        if isinstance(head, nn.Module):
            for name, module in model.named_modules():
                if module is head and name in names:
                    return name
    return names[-1] if names and names[-1] else None


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


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _input_sizes(module: nn.Module, adapter: Any) -> list[int]:
    if hasattr(adapter, "input_sizes"):
        return list(adapter.input_sizes(module))
    if isinstance(adapter, LayerAdapter):
        return [adapter.weight(module)[0].numel()]
    return []


def _layer_configs(model: nn.Module, cfg: QuantConfig, layer_cfgs: dict[str, QuantConfig | None],
                   embeddings: list[str]) -> list[tuple[str, nn.Module, Any, QuantConfig, int | None]]:
    """Validate names and group sizes; the (name, module, adapter, config, group) to emulate.

    Every check runs here, on the caller's model, before any copy or forward pass.
    """
    layers = list(_walk(model)) if adapter_for(model) is None else [("", model, adapter_for(model))]
    names = [name for name, _, _ in layers]
    modules = dict(model.named_modules())
    known = set(names) | set(embeddings)
    for name in layer_cfgs:
        if name not in modules:
            shown = names if len(names) <= 20 else names[:10] + ["..."] + names[-5:]
            raise ValueError(f"Layer {name!r} named in skip/overrides does not exist in {type(model).__name__}; "
                             f"its quantizable layers are {shown}.")
        if name not in known and not any(n.startswith(name + ".") for n in known):
            types = sorted({t.__name__ for t in registered_layers()})
            raise ValueError(
                f"Layer {name!r} named in skip/overrides is a {type(modules[name]).__name__}, which precal does not "
                f"quantize, and holds no layer it does (types: {types}, plus nn.Embedding with embeddings=True); "
                "add the type with precal.emulate.register_layer."
            )

    def config_of(name: str) -> QuantConfig | None:
        # the most specific name in skip/overrides that is the layer or one of its parents
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in layer_cfgs:
                return layer_cfgs[prefix]
        return cfg

    plan = []
    for name, module, adapter in layers:
        layer_cfg = config_of(name)
        if layer_cfg is None or layer_cfg.is_identity:
            continue
        group = layer_cfg.weight_group_size if layer_cfg.weight_format else None
        if group is not None:
            sizes = _input_sizes(module, adapter)
            bad = sorted({s for s in sizes if s % group})
            if bad:
                if layer_cfg.group_fallback == "error":
                    raise ValueError(
                        f"Layer {name!r} ({type(module).__name__}) has {bad[0]} inputs per output channel, not a "
                        f"multiple of the group size {group} of config {layer_cfg.name!r}. Leave it in float "
                        f"(skip=[{name!r}]), give it another config (overrides={{{name!r}: 'w8a8'}}), or set "
                        "group_fallback='channel' (per-output-channel scales) or 'skip' (float) for such layers "
                        "(precal sweep: --group-fallback channel or skip)."
                    )
                if layer_cfg.group_fallback == "skip":
                    continue
                group = None
        plan.append((name, module, adapter, layer_cfg, group))
    return plan


def _begin(scheme: Any, name: str, module: nn.Module, config: QuantConfig) -> Any:
    """``scheme.begin(name, module)``, with ``config=`` too when the scheme's ``begin`` takes it."""
    try:
        takes_config = "config" in inspect.signature(scheme.begin).parameters
    except (TypeError, ValueError):
        takes_config = False
    return scheme.begin(name, module, config=config) if takes_config else scheme.begin(name, module)


def _check_calibration_data(data: Any) -> None:
    """The first calibration batch must be a tensor or a dict of tensors (no forward pass)."""
    if isinstance(data, (torch.Tensor, dict)) or hasattr(data, "shape"):
        batch = next(iter_batches(data, 1), None)
    else:
        if iter(data) is data:
            return  # a one-shot iterator: checked batch by batch as it is consumed
        batch = next(iter(iter_batches(data, 1)), None)
    if batch is None:
        raise ValueError("calibration_data yielded no batch.")
    check_batch(batch, "calibration_data")


def _run(model: nn.Module, data: Any, n_batches: int, batch_size: int) -> None:
    device = _model_device(model)
    seen = 0
    with torch.no_grad():
        for i, batch in enumerate(iter_batches(data, batch_size)):
            if i >= n_batches:
                break
            check_batch(batch, "calibration_data")
            call_model(model, to_device(batch, device))
            seen += 1
    if seen == 0:
        raise ValueError("calibration_data yielded no batch.")


def _quantize_embeddings(model: nn.Module, names: list[str], cfg_of: Any) -> None:
    for name in names:
        emb = model.get_submodule(name)
        cfg = cfg_of(name)
        if cfg is None or cfg.is_identity or not cfg.embeddings:
            continue
        table = emb.weight.detach().float()
        if cfg.weight_format:
            group = cfg.weight_group_size
            if group is not None and table.shape[1] % group:
                if cfg.group_fallback == "error":
                    raise ValueError(f"Embedding {name!r} has rows of {table.shape[1]}, not a multiple of the "
                                     f"group size {group}; set group_fallback or skip it.")
                if cfg.group_fallback == "skip":
                    continue
                group = None
            table = WEIGHT_SCHEMES["rtn"].quantize(table, cfg, group_size=group, name=name).weight
        if cfg.compute:
            fmt = format_info(cfg.compute)
            if fmt.name != "tf32":
                table = round_float(table, fmt if fmt.bits > 8 else format_info("bf16"))
        # a new Parameter: weights tied to this table (an lm_head) keep their own values
        emb.weight = nn.Parameter(table.to(emb.weight.dtype), requires_grad=False)


def _prepare(model: nn.Module, config: Any, *, calibration_data: Any = None, skip: Iterable[str] = (),
             overrides: dict[str, Any] | None = None, observer: str | None = None, check_data: bool = True,
             **options: Any) -> tuple | None:
    """Every check of :func:`emulate_model` that needs no forward pass; None for an identity config."""
    if observer:
        options["observer"] = observer
    cfg = parse_config(config, **options)
    layer_cfgs: dict[str, QuantConfig | None] = {
        name: parse_config(c, **options) if c is not None else None for name, c in dict(overrides or {}).items()}
    if isinstance(skip, str):
        skip = [skip]
    for name in skip:
        layer_cfgs[name] = None
    all_cfgs = [cfg, *[c for c in layer_cfgs.values() if c is not None]]
    if all(c.is_identity for c in all_cfgs):
        if layer_cfgs:
            _layer_configs(model, cfg, layer_cfgs, [])  # still refuse names that do not exist
        return None
    if cfg.keep_head:
        head = output_layer(model)
        if head is not None and head not in layer_cfgs:
            layer_cfgs[head] = None
    embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)] \
        if any(c.embeddings for c in all_cfgs) else []
    plan = _layer_configs(model, cfg, layer_cfgs, embeddings)
    if not plan and not embeddings:
        if not quantizable_layers(model):
            raise ValueError(
                f"Config {cfg.name!r} has nothing to emulate: the model has no layer of a type precal quantizes "
                f"({type(model).__name__}; a TorchScript or torch.export graph hides its layers). Pass the "
                "nn.Module itself, or register its layer types with precal.emulate.register_layer."
            )
    needs_act = [c for _, _, _, c, _ in plan if c.act_format is not None]
    needs_inputs = [(n, c) for n, _, _, c, _ in plan
                    if c.weight_format and WEIGHT_SCHEMES[c.weight_scheme].needs_inputs]
    if needs_act or needs_inputs:
        what = "quantizes activations" if needs_act else f"uses weight scheme {needs_inputs[0][1].weight_scheme!r}"
        static = any(getattr(ACT_SCHEMES[c.act_scheme], "needs_calibration", True) for c in needs_act) \
            or bool(needs_inputs)
        if static and calibration_data is None:
            raise ValueError(
                f"Config {cfg.name!r} {what}: pass calibration_data (a few batches of inputs kept out of the "
                "evaluation) to calibrate it."
            )
        if static and check_data:
            _check_calibration_data(calibration_data)
    for name, module, adapter, layer_cfg, _ in plan:
        if layer_cfg.weight_format and WEIGHT_SCHEMES[layer_cfg.weight_scheme].needs_inputs:
            _check_layer_inputs(name, module, adapter, WEIGHT_SCHEMES[layer_cfg.weight_scheme])
    return cfg, layer_cfgs, plan, embeddings, all_cfgs, needs_inputs


def _check_layer_inputs(name: str, module: nn.Module, adapter: Any, scheme: Any) -> None:
    """Can the layer hand ``scheme`` its calibration inputs? (Checked before any copy or forward pass.)"""
    if isinstance(adapter, LayerAdapter):
        adapter.check_inputs(module)
        if adapter.groups(module) > 1 and not scheme.grouped_inputs:
            raise ValueError(f"Weight scheme {scheme.name!r} does not take the grouped inputs of layer {name!r} "
                             f"({type(module).__name__}, groups={adapter.groups(module)}): it cannot learn from them "
                             "(set grouped_inputs on the scheme once its observe() handles them).")
    elif not callable(getattr(adapter, "calibration_layers", None)):
        raise ValueError(f"Weight scheme {scheme.name!r} learns from layer inputs, which layer {name!r} "
                         f"({type(module).__name__}) cannot provide: its adapter has no calibration_layers().")


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
    **options: Any,
) -> nn.Module:
    """A copy of ``model`` that computes under ``config``; ``model`` itself is not modified.

    Parameters
    ----------
    model : torch.nn.Module
    config : str or QuantConfig
        ``"fp32"``, a float format (``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``, ``"bf16-attn"``,
        ...) or ``"w{b}a{b}[-g{g}][-asym][-dyn][-gptq[-actorder]|-awq|-sq]"`` (see the module docstring).
    calibration_data : tensor, array, dict of tensors or iterable of batches, optional
        Inputs for static activation observers (and weight schemes that learn from
        inputs); required when the config needs them. Keep these out of your evaluation
        data.
    n_calibration_batches : int, default=8
        At most this many batches of ``calibration_data`` are used.
    batch_size : int, default=256
        Batch size when ``calibration_data`` is a tensor, array or dict of tensors.
    skip : iterable of str
        Layer names (as in ``model.named_modules()``) left in float32; a parent module's
        name covers every layer under it.
    overrides : dict, optional
        Layer (or parent module) name -> config for that layer (``None`` = leave in
        float32). The most specific name wins. Keeping the first conv and last linear at
        8 bit is common: see :func:`quantizable_layers`. Overriding the output layer
        quantizes it under ``keep_head`` configs.
    observer : {"minmax", "percentile", "mse"}, optional
        Overrides the config's activation observer.
    **options
        Other :class:`QuantConfig` fields applied to every config (e.g.
        ``group_fallback="channel"``, ``embeddings=True``, ``keep_head=False``).

    Returns
    -------
    torch.nn.Module
        The emulated copy, in eval mode, on the model's device.

    Raises
    ------
    ValueError
        Unknown config; names in ``skip``/``overrides`` that do not exist or are not
        quantizable; a group size that does not divide a layer (``group_fallback="error"``);
        a config that needs calibration data without it, or calibration batches that are
        not tensors or dicts of tensors; a weight scheme that learns from inputs on a layer
        that cannot give them (a ``Conv3d``, ``"same"`` padding). All of these before any
        forward pass.
    """
    prep = _prepare(model, config, calibration_data=calibration_data, skip=skip, overrides=overrides,
                    observer=observer, **options)
    if prep is None:
        return copy.deepcopy(model).eval()
    cfg, layer_cfgs, plan, embeddings, all_cfgs, needs_inputs = prep
    emulated = copy.deepcopy(model).eval()
    from .attention import disable_fused_transformer_paths

    disable_fused_transformer_paths(emulated)
    if any((c.weight_format or c.weight_block) and c.fold_bn for c in all_cfgs) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in emulated.modules()):
        fold_batchnorm(emulated)
    targets = {name: (emulated.get_submodule(name) if name else emulated) for name, *_ in plan}

    states: dict[str, Any] = {}
    if needs_inputs:
        hooks, swapped, runner = [], {}, emulated
        for name, _, adapter, layer_cfg, _ in plan:
            scheme = WEIGHT_SCHEMES[layer_cfg.weight_scheme]
            if not (layer_cfg.weight_format and scheme.needs_inputs):
                continue
            module = targets[name]
            if isinstance(adapter, LayerAdapter):
                parts = {None: (module, adapter)}
            else:  # a module with its own forward (nn.MultiheadAttention): a float stand-in whose layers are hooked
                stand_in, parts = adapter.calibration_layers(module)
                swapped[name] = module
                if name:
                    _set_module(emulated, name, stand_in)
                else:
                    runner = stand_in
            layer_states = {}
            for part, (sub, sub_adapter) in parts.items():
                label = name if part is None else f"{name}.{part}"
                layer = sub.layer if isinstance(sub, EmulatedLayer) else sub
                layer_states[part] = state = _begin(scheme, label, layer, layer_cfg)

                def hook(mod, args, _state=state, _scheme=scheme, _adapter=sub_adapter):
                    _scheme.observe(_state, _adapter.inputs_2d(mod, args[0].detach().float()))

                hooks.append(sub.register_forward_pre_hook(hook))
            states[name] = layer_states[None] if None in layer_states else layer_states
        try:
            _run(runner, calibration_data, n_calibration_batches, batch_size)
        finally:
            for handle in hooks:
                handle.remove()
            for name, module in swapped.items():
                if name:
                    _set_module(emulated, name, module)

    for name, _, adapter, layer_cfg, group in plan:
        replacement = adapter.emulate(targets[name], layer_cfg, name=name, group_size=group, state=states.get(name))
        if name:
            _set_module(emulated, name, replacement)
        else:
            emulated = replacement

    if embeddings:
        def cfg_of(name: str) -> QuantConfig | None:
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in layer_cfgs:
                    return layer_cfgs[".".join(parts[:i])]
            return cfg

        _quantize_embeddings(emulated, embeddings, cfg_of)
    if cfg.quantize_outputs:
        from .backend import quantize_between_layers

        emulated = quantize_between_layers(emulated, cfg)
    if cfg.attention and hasattr(emulated, "config") and hasattr(emulated, "set_attn_implementation"):
        from .attention import use_emulated_attention

        use_emulated_attention(emulated, cfg.compute)

    quantizers = [m for m in emulated.modules() if getattr(m, "needs_calibration", False)]
    if quantizers:
        # backend-faithful configs calibrate on the float model's activations, as torch.ao does
        float_layers = [m for m in emulated.modules() if isinstance(m, EmulatedLayer)] if cfg.quantize_outputs else []
        for q in quantizers:
            q.calibrate_begin()
        for layer in float_layers:
            layer.float_weights = True
        try:
            _run(emulated, calibration_data, n_calibration_batches, batch_size)
        finally:
            for layer in float_layers:
                layer.float_weights = False
        for q in quantizers:
            q.calibrate_end()
    return emulated

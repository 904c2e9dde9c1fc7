"""Backend-faithful static int8: quantized tensors between layers, as an int8 backend runs them.

An int8 inference backend (torch.ao's x86/fbgemm and qnnpack, TensorRT, ONNX Runtime
QDQ) keeps the tensors *between* quantized operators in int8: the network input is
quantized, every convolution or linear output is requantized to its own per-tensor scale
(after a ReLU fused into it), residual additions are quantized operators with their own
output scale, tensors leaving a non-quantized operator (a zero padding) are quantized again
before the next quantized operator, and average pooling rounds back onto its input's grid.
:func:`quantize_between_layers` rewrites an emulated model's ``torch.fx`` graph that way
(QuantConfig ``quantize_outputs=True``; the ``-x86`` config suffix), with the config's
activation scheme at every quantization point.

Jacob et al., 2018, "Quantization and training of neural networks for efficient
integer-arithmetic-only inference" (CVPR), Sec. 2.2-2.4 (fused ReLU, requantized outputs,
quantized addition); torch.ao.quantization's FX graph mode (``prepare_fx``/``convert_fx``
with the x86 qconfig: histogram observer, ``reduce_range``: activation codes 0..127).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from .activations import ActQuantizer, make_act_quantizer
from .attention import EmulatedMultiheadAttention
from .layers import EmulatedLayer
from .quantize import fake_quantize_int

__all__ = ["quantize_between_layers", "SameGridRounding"]

_RELU_FUNCTIONS = {torch.relu, nn.functional.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
# values stay on their input's grid through these
_KEEP_GRID_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.transpose, torch.squeeze,
                        torch.unsqueeze, nn.functional.max_pool1d, nn.functional.max_pool2d,
                        nn.functional.dropout}
_KEEP_GRID_METHODS = {"flatten", "reshape", "view", "permute", "transpose", "contiguous", "squeeze",
                      "unsqueeze", "relu", "relu_"}
_KEEP_GRID_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
# rounded back onto the input's grid (quantized mean/avg-pool kernels; relu6/hardtanh clamp on it)
_AVERAGE_FUNCTIONS = {torch.mean, nn.functional.avg_pool1d, nn.functional.avg_pool2d,
                      nn.functional.adaptive_avg_pool1d, nn.functional.adaptive_avg_pool2d,
                      nn.functional.relu6, nn.functional.hardtanh}
_AVERAGE_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.ReLU6,
                    nn.Hardtanh)


class SameGridRounding(nn.Module):
    """Rounds onto the grid (scale, zero point) of another quantizer, once it is calibrated.

    While that quantizer calibrates, its observer also sees this operation's outputs, as
    torch.ao's shared-qparams operators (mean, ReLU6, ...) share their input's observer.
    """

    def __init__(self, source: ActQuantizer) -> None:
        super().__init__()
        self._source = [source]  # a reference, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self._source[0]
        if getattr(src, "calibrating", False):
            src.observer.observe(x)
            return x
        scale = getattr(src, "scale", None)
        if scale is None:
            return x
        return fake_quantize_int(x, scale.to(x.device), src.zero_point.to(x.device), src.fmt.qmin, src.fmt.qmax)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (EmulatedLayer, EmulatedMultiheadAttention, ActQuantizer, SameGridRounding)):
            return True
        return super().is_leaf_module(m, qualname)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return ((node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_"))
            or (node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ("add", "add_"))


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, EmulatedLayer):
            return "layer"
        if isinstance(module, _AVERAGE_MODULES):
            return "average"
        if isinstance(module, _KEEP_GRID_MODULES):
            return "keep"
        return None
    if _is_add(node):
        return "add"
    if node.op == "call_function":
        if node.target in _AVERAGE_FUNCTIONS:
            return "average"
        if node.target in _KEEP_GRID_FUNCTIONS or node.target in _RELU_FUNCTIONS:
            return "keep"
    if node.op == "call_method":
        if node.target == "mean":
            return "average"
        if node.target in _KEEP_GRID_METHODS:
            return "keep"
    return None


def quantize_between_layers(model: nn.Module, config: Any) -> fx.GraphModule:
    """An ``fx.GraphModule`` of ``model`` with activation quantizers where an int8 backend has them.

    ``model`` is an emulated copy (its layers :class:`~precal.emulate.EmulatedLayer`\\ s made
    with ``quantize_outputs=True``, so they do not quantize their own inputs). Quantization
    points, each a fresh activation quantizer of ``config`` (``act_format``, ``act_scheme``,
    ``observer``):

    * the output of every emulated layer and of every addition, after the ReLU that follows
      it when that ReLU is its only user (fused, as backends do);
    * an input of an emulated layer or an addition that is not already on a quantizer's
      grid (the network input; a tensor from a zero padding or another float operator);
    * averages (mean, average pooling) and ReLU6/hardtanh of a quantized tensor are rounded
      back onto that tensor's grid; ReLU, max pooling, slicing and reshapes keep the grid.

    Raises
    ------
    ValueError
        If ``torch.fx`` cannot trace the model.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure
        raise ValueError(f"quantize_outputs needs a model that torch.fx can trace ({type(exc).__name__}: {exc}); "
                         "use a config without -x86 / quantize_outputs.") from exc
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):  # folded BatchNorms (Identity) and eval-mode dropout do nothing
        if node.op == "call_module" and isinstance(modules.get(node.target), (nn.Identity, nn.Dropout)):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    count = [0]

    def new_quantizer(after: fx.Node, module: nn.Module) -> fx.Node:
        name = f"precal_act_{count[0]}"
        count[0] += 1
        gm.add_submodule(name, module)
        with graph.inserting_after(after):
            return graph.call_module(name, (after,))

    grid: dict[fx.Node, ActQuantizer] = {}  # node -> the quantizer whose grid its values are on
    entry: dict[fx.Node, fx.Node] = {}  # float node -> its quantized version (shared by consumers)

    def ensure_quantized(arg: Any) -> Any:
        if not isinstance(arg, fx.Node) or arg in grid:
            return arg
        if arg not in entry:
            quantizer = make_act_quantizer(config, 1)
            q = new_quantizer(arg, quantizer)
            grid[q] = quantizer
            entry[arg] = q
        return entry[arg]

    for node in list(graph.nodes):
        kind = _kind(node, modules)
        if kind in ("layer", "add"):
            if kind == "layer":
                node.args = (ensure_quantized(node.args[0]), *node.args[1:])
            else:
                node.args = tuple(ensure_quantized(a) for a in node.args)
            users = list(node.users)
            target = users[0] if len(users) == 1 and _is_relu(users[0], modules) else node
            quantizer = make_act_quantizer(config, 1)
            q = new_quantizer(target, quantizer)
            target.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
            grid[q] = quantizer
        elif kind == "keep" and node.args and node.args[0] in grid:
            grid[node] = grid[node.args[0]]
        elif kind == "average" and node.args and node.args[0] in grid:
            source = grid[node.args[0]]
            rounding = SameGridRounding(source)
            name = f"precal_grid_{count[0]}"
            count[0] += 1
            gm.add_submodule(name, rounding)
            with graph.inserting_after(node):
                r = graph.call_module(name, (node,))
            node.replace_all_uses_with(r, delete_user_cb=lambda user, r=r: user is not r)
            grid[r] = source
    graph.lint()
    gm.recompile()
    return gm

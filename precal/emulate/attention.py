"""Attention under emulation: ``nn.MultiheadAttention`` and Hugging Face attention functions.

**nn.MultiheadAttention** is replaced by :class:`EmulatedMultiheadAttention`, which runs
the same computation in plain torch with its four projections (query, key, value from the
packed ``in_proj_weight``, and ``out_proj``) as :class:`~precal.emulate.EmulatedLayer`\\ s:
weights, activations and compute format as every linear layer. Code that reads the
module's tensors directly still works: ``in_proj_weight``, ``in_proj_bias`` and
``out_proj.weight`` are the emulated (fake-quantized) tensors. Weight schemes that learn
from inputs (GPTQ, AWQ, SmoothQuant) calibrate through
:meth:`MultiheadAttentionAdapter.calibration_layers`. In an ``nn.TransformerEncoder``, the
emulated copy is kept off torch's fused encoder kernel (:func:`disable_fused_transformer_paths`).

**The attention products** (``softmax(Q K^T / sqrt(d) + mask) V``) run in float32 unless
the config asks for ``attention=True`` (``"bf16-attn"``...), which emulates the recipe of
fused attention kernels (FlashAttention, SDPA's flash/efficient kernels) in the config's
compute format: ``Q`` and ``K`` rounded to the format, ``S = Q K^T`` accumulated in
float32 and scaled, softmax in float32, the probabilities ``P`` and ``V`` rounded to the
format, ``P V`` accumulated in float32 and the output rounded once (to the format for
fp16/bf16; to bf16 for 8-bit formats, whose operands are amax-scaled per tensor, as FP8
attention kernels do). Dao et al., 2022, "FlashAttention", Alg. 1; Shah et al., 2024,
"FlashAttention-3" (FP8).

**Hugging Face models** dispatch attention through ``transformers``' ``AttentionInterface``:
with ``attention=True``, :func:`use_emulated_attention` registers a function
``"precal_<format>"`` (and the SDPA mask builder under the same name) and switches the
emulated copy to it with ``set_attn_implementation``; the original model is untouched.
Not covered: soft-capping (Gemma 2), attention sinks (``s_aux``), and models that do not
dispatch through the interface (they raise ``ValueError``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .formats import FloatFormat, format_info
from .layers import EmulatedLayer, LinearAdapter, round_operand, round_output

__all__ = ["attention_core", "EmulatedMultiheadAttention", "MultiheadAttentionAdapter", "use_emulated_attention",
           "disable_fused_transformer_paths"]


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                   fmt: FloatFormat | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + mask) v`` on ``(..., L, d)`` tensors; returns (output, probabilities).

    ``mask`` is additive (float, ``-inf`` for blocked positions) or boolean (True = attend),
    broadcast to ``(..., L, S)``; a query with every key masked gets zero weights (torch's SDPA
    "safe softmax"). With ``fmt``, the kernel recipe of the module docstring.
    """
    q, k, v = q.float(), k.float(), v.float()
    if fmt is not None:
        q, k = round_operand(q, fmt), round_operand(k, fmt)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    # a query that may attend to no key (a padded position) gets zero weights, as torch's SDPA gives
    probs = torch.where(torch.isneginf(scores).all(dim=-1, keepdim=True), torch.zeros_like(probs), probs)
    if fmt is None:
        return torch.matmul(probs, v), probs
    probs_r = round_operand(probs, fmt)
    return round_output(torch.matmul(probs_r, round_operand(v, fmt)), fmt), probs_r


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class EmulatedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with emulated projections and, optionally, attention products.

    Same call signature and outputs as ``nn.MultiheadAttention.forward`` (``batch_first``,
    unbatched inputs, ``key_padding_mask``, boolean or float ``attn_mask``, ``is_causal``,
    ``need_weights``, ``average_attn_weights``). Modules built with ``add_bias_kv`` or
    ``add_zero_attn`` are refused.

    ``state`` (weight schemes that learn from inputs, such as GPTQ) maps ``"q_proj"``,
    ``"k_proj"``, ``"v_proj"`` and ``"out_proj"`` to each projection's calibration state,
    collected by :meth:`MultiheadAttentionAdapter.calibration_layers`.
    """

    def __init__(self, mha: nn.MultiheadAttention, config: Any, *, name: str = "", group_size: Any = "config",
                 state: Any = None) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(f"{name or 'nn.MultiheadAttention'}: add_bias_kv/add_zero_attn are not supported.")
        self.mha = mha
        self.config = config
        self.name = name
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        biases = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        adapter = LinearAdapter()
        states = state or {}
        for part, w, b in zip(("q_proj", "k_proj", "v_proj"), (wq, wk, wv), biases):
            setattr(self, part, EmulatedLayer(_linear(w, b), config, adapter=adapter, name=f"{name}.{part}",
                                              group_size=group_size, state=states.get(part)))
        self.out_proj = EmulatedLayer(mha.out_proj, config, adapter=adapter, name=f"{name}.out_proj",
                                      group_size=group_size, state=states.get("out_proj"))
        compute = format_info(config.compute) if config.compute else None
        self.attention_format = compute if getattr(config, "attention", False) else None

    @property
    def _qkv_same_embed_dim(self) -> bool:  # read by nn.TransformerEncoderLayer
        return self.mha._qkv_same_embed_dim

    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        if not self.mha._qkv_same_embed_dim:
            return None
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        if self.mha.in_proj_bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "mha" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["mha"], name)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mha = self.mha
        unbatched = query.dim() == 2
        # the projections act on each token: applied in the caller's layout, so that in
        # self-attention q, k and v read one tensor (GPTQ computes its X^T X once for the three)
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if unbatched:
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif mha.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        # (L, N, E) from here on, as F.multi_head_attention_forward
        length, batch, embed = q.shape
        heads, head_dim = mha.num_heads, mha.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, H, L, d)

        q, k, v = split(q), split(k), split(v)
        source = k.shape[2]
        mask = torch.zeros(1, 1, 1, 1, device=q.device)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            add = _additive(attn_mask, q.device)
            mask = mask + (add.reshape(batch, heads, length, source) if add.dim() == 3 else add)
        if key_padding_mask is not None:
            mask = mask + _additive(key_padding_mask, q.device).reshape(batch, 1, 1, source)
        out, probs = attention_core(q, k, v, mask, 1.0 / math.sqrt(head_dim), self.attention_format)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
        out = self.out_proj(out).to(query.dtype)
        if unbatched:
            out = out.squeeze(1)
        elif mha.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = probs.mean(dim=1) if average_attn_weights else probs
        return out, (weights.squeeze(0) if unbatched else weights)

    def extra_repr(self) -> str:
        return f"MultiheadAttention, config={self.config.name!r}, attention_format=" \
               f"{None if self.attention_format is None else self.attention_format.name}"


def _additive(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """MHA's mask convention (bool True = blocked, float = added) as an additive float mask."""
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=device).masked_fill(mask, float("-inf"))
    return mask.float()


def disable_fused_transformer_paths(model: nn.Module) -> None:
    """Keep torch's fused transformer kernels off an emulated copy (in place).

    In eval mode without gradients, ``nn.TransformerEncoderLayer`` (and
    ``nn.TransformerEncoder``'s nested-tensor path) run one fused kernel
    (``torch._transformer_encoder_layer_fwd``) that reads the attention and MLP weights as
    tensors and never calls the submodules: on an emulated copy it would use the
    fake-quantized weights but skip activation quantization, the compute format and the
    input scales of SmoothQuant/AWQ. The copy's encoder layers are marked so that torch
    takes its module-by-module path (``activation_relu_or_gelu = 0``, which only selects
    the fused kernel; ``use_nested_tensor = False``); the computation is otherwise the same.
    """
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False


class MultiheadAttentionAdapter:
    """Registry entry of ``nn.MultiheadAttention``: replaced by :class:`EmulatedMultiheadAttention`."""

    def input_sizes(self, module: nn.MultiheadAttention) -> list[int]:
        return [module.embed_dim, module.kdim, module.vdim, module.embed_dim]

    def calibration_layers(self, module: nn.MultiheadAttention) -> tuple[nn.Module, dict[str, tuple[nn.Module, Any]]]:
        """A float stand-in for the calibration pass of weight schemes that learn from inputs.

        ``nn.MultiheadAttention`` computes its projections inside one functional call
        (``out_proj`` is never called as a module), so no hook sees their inputs. The
        stand-in is an :class:`EmulatedMultiheadAttention` at ``"fp32"`` (the same
        computation in float32, plain torch) whose four projections are modules:
        ``q_proj`` sees the query, ``k_proj`` the key, ``v_proj`` the value (one tensor in
        self-attention, whose ``X^T X`` GPTQ then computes once), ``out_proj`` the
        attention output. Returns the stand-in and ``{part: (module to hook, its adapter)}``.
        """
        from .model import QuantConfig

        stand_in = EmulatedMultiheadAttention(module, QuantConfig("fp32"), name="calibration")
        adapter = LinearAdapter()
        return stand_in, {part: (getattr(stand_in, part), adapter) for part in ("q_proj", "k_proj", "v_proj",
                                                                                 "out_proj")}

    def emulate(self, module: nn.Module, config: Any, *, name: str = "", group_size: Any = "config",
                state: Any = None) -> nn.Module:
        return EmulatedMultiheadAttention(module, config, name=name, group_size=group_size, state=state)


def _hf_attention(fmt: FloatFormat):
    def precal_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        for unsupported in ("softcap", "s_aux"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"precal's emulated attention does not support {unsupported!r}.")
        groups = getattr(module, "num_key_value_groups", 1)
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        q_len, kv_len = query.shape[2], key.shape[2]
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        mask = attention_mask
        if mask is not None:
            mask = mask[..., :kv_len]
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if mask is None and causal and q_len > 1:
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        bias = kwargs.get("position_bias")
        if bias is not None:
            extra = bias.float()
            mask = extra if mask is None else (
                extra.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else extra + mask)
        out, probs = attention_core(query, key, value, mask, scaling, fmt)
        return out.to(query.dtype).transpose(1, 2).contiguous(), probs.to(query.dtype)

    return precal_attention


def use_emulated_attention(model: nn.Module, fmt_name: str) -> None:
    """Switch a Hugging Face model (an emulated copy) to precal's attention in ``fmt_name``.

    Raises
    ------
    ValueError
        If the model does not dispatch attention through ``transformers``' AttentionInterface.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation") or not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"attention=True: {type(model).__name__} is not a transformers model with a "
                         "configurable attention implementation.")
    if hasattr(model, "_can_set_attn_implementation") and not model._can_set_attn_implementation():
        raise ValueError(f"attention=True: {type(model).__name__} does not dispatch attention through "
                         "transformers' AttentionInterface, so its attention products cannot be emulated.")
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    fmt = format_info(fmt_name)
    name = f"precal_{fmt.name}"
    AttentionInterface.register(name, _hf_attention(fmt))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    model.set_attn_implementation(name)

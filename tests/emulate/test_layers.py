"""The layer registry: transformers' Conv1D, nn.MultiheadAttention, user-registered types."""

import copy

import pytest
import torch
from torch import nn

from precal.emulate import (
    EmulatedLayer,
    EmulatedMultiheadAttention,
    LayerAdapter,
    QuantConfig,
    emulate_model,
    parse_config,
    quantizable_layers,
    quantize,
    register_layer,
    registered_layers,
)
from precal.emulate.layers import _REGISTRY

FP32_COMPUTE = QuantConfig("fp32-compute", compute="fp32")  # every rounding a no-op: the plain torch path


def test_transformers_conv1d_is_quantized_per_output_column():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    layer = pytorch_utils.Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs: weight (16, 24)
    model = nn.Sequential(layer)
    emulated = emulate_model(model, "w4a16")
    wrapped = emulated[0]
    assert isinstance(wrapped, EmulatedLayer) and quantizable_layers(model) == ["0"]
    expected = quantize(layer.weight.detach().t(), "int4", axis=0, scale_rule="half_range").t()
    assert wrapped.weight.shape == layer.weight.shape == (16, 24)
    assert torch.equal(wrapped.weight, expected)
    assert wrapped.nf == 24  # attributes of the wrapped layer stay readable
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), x @ expected + layer.bias, atol=1e-6)
        assert torch.allclose(emulate_model(model, FP32_COMPUTE)(x), layer(x), atol=1e-6)


def _mha_inputs(batch_first):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 16, generator=gen)  # (N, L, E)
    return x if batch_first else x.transpose(0, 1)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "bool_causal", "float", "is_causal"])
def test_emulated_mha_matches_torch_in_float(batch_first, masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = _mha_inputs(batch_first)
    kwargs = {}
    if masks == "padding":
        pad = torch.zeros(4, 7, dtype=torch.bool)
        pad[1, 5:] = True
        kwargs["key_padding_mask"] = pad
    elif masks in ("bool_causal", "is_causal"):
        kwargs["attn_mask"] = torch.ones(7, 7, dtype=torch.bool).triu(1)
        kwargs["is_causal"] = masks == "is_causal"
    elif masks == "float":
        kwargs["attn_mask"] = torch.randn(4 * 4, 7, 7, generator=torch.Generator().manual_seed(5))
    emulated = EmulatedMultiheadAttention(copy.deepcopy(mha), FP32_COMPUTE)
    with torch.no_grad():
        ref_out, ref_w = mha(x, x, x, **kwargs)
        out, w = emulated(x, x, x, **kwargs)
        ref_heads = mha(x, x, x, average_attn_weights=False, **kwargs)[1]
        heads = emulated(x, x, x, average_attn_weights=False, **kwargs)[1]
        assert emulated(x, x, x, need_weights=False, **kwargs)[1] is None
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(w, ref_w, atol=1e-6) and torch.allclose(heads, ref_heads, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_attention_recipe_errs_like_torch_bf16_sdpa(causal):
    """The ``-attn`` bf16 attention products against torch's own CPU bf16 SDPA, on a fixed seed.

    Both are measured against the float32 SDPA output: precal's mean error is within 1.5x
    of torch bf16's either way (1.03-1.12x at these shapes and seeds, torch 2.13 CPU) and
    precal's output is closer to torch's bf16 output than to float32. Attention left in
    float32, or bf16 operands without Q/K rounding, fails one of the two.
    """
    import math

    from torch.nn import functional as F

    from precal.emulate import format_info
    from precal.emulate.attention import attention_core

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=gen) for _ in range(3))
    mask = torch.ones(64, 64, dtype=torch.bool).tril() if causal else None
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    fp32, _ = attention_core(q, k, v, mask, 1 / math.sqrt(32))
    ours, _ = attention_core(q, k, v, mask, 1 / math.sqrt(32), format_info("bf16"))
    theirs = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=causal).float()
    assert torch.allclose(fp32, ref, atol=1e-5)  # the float32 path is SDPA
    assert torch.equal(ours, ours.bfloat16().float())  # the output is rounded to bf16
    ours_err, torch_err = (ours - ref).abs().mean(), (theirs - ref).abs().mean()
    assert torch_err / 1.5 <= ours_err <= 1.5 * torch_err
    assert (ours - theirs).abs().mean() < ours_err


def test_emulated_mha_unbatched_and_separate_kv_dims():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12).eval()
    q, k, v = torch.randn(5, 16), torch.randn(6, 8), torch.randn(6, 12)
    emulated = EmulatedMultiheadAttention(copy.deepcopy(mha), FP32_COMPUTE)
    with torch.no_grad():
        assert torch.allclose(emulated(q, k, v)[0], mha(q, k, v)[0], atol=1e-5)
    assert emulated.in_proj_weight is None  # as torch: separate q/k/v weights
    with pytest.raises(ValueError, match="add_bias_kv"):
        EmulatedMultiheadAttention(nn.MultiheadAttention(16, 2, add_bias_kv=True), FP32_COMPUTE)


class ReadsWeightsDirectly(nn.Module):
    """Calls the functional attention with the module's tensors, as some model code does."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4)

    def forward(self, x):
        a = self.attn
        return nn.functional.multi_head_attention_forward(
            x, x, x, 16, 4, a.in_proj_weight, a.in_proj_bias, None, None, False, 0.0,
            a.out_proj.weight, a.out_proj.bias, training=False, need_weights=False)[0]


def test_mha_weights_are_quantized_and_readable_by_code_that_reads_them():
    torch.manual_seed(0)
    model = ReadsWeightsDirectly().eval()
    emulated = emulate_model(model, "w4a16")
    attn = emulated.attn
    assert isinstance(attn, EmulatedMultiheadAttention) and quantizable_layers(model) == ["attn"]
    w = model.attn.in_proj_weight.detach()
    expected = torch.cat([quantize(p, "int4", axis=0, scale_rule="half_range") for p in w.chunk(3)])
    assert torch.equal(attn.in_proj_weight, expected)
    assert torch.equal(attn.out_proj.weight,
                       quantize(model.attn.out_proj.weight.detach(), "int4", axis=0, scale_rule="half_range"))
    x = torch.randn(7, 2, 16)
    with torch.no_grad():
        direct = emulated(x)  # the functional path with the emulated tensors
        module = attn(x, x, x, need_weights=False)[0]
        assert torch.allclose(direct, module, atol=1e-5)
        assert not torch.allclose(direct, model(x), atol=1e-4)


def test_mha_activation_quantization_and_attention_emulation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    x = torch.randn(8, 5, 16)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = model[0]

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    wrap = Wrap().eval()
    emulated = emulate_model(wrap, "w8a8", calibration_data=x)
    assert all(p.act_scale is not None for p in (emulated.mha.q_proj, emulated.mha.out_proj))
    bf16 = emulate_model(wrap, "bf16")
    attn = emulate_model(wrap, "bf16-attn")
    assert attn.mha.attention_format.name == "bf16" and bf16.mha.attention_format is None
    with torch.no_grad():
        ref, a, b = wrap(x), bf16(x), attn(x)
    assert not torch.equal(a, b)
    assert (b - ref).abs().max() < 0.05


def test_register_layer_adds_a_type():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return x @ self.weight.t()

    class ScaleAdapter(LayerAdapter):
        def forward(self, layer, x, weight, bias):
            return x @ weight.t()

    model = nn.Sequential(Scale(), nn.ReLU())
    try:
        assert quantizable_layers(model) == []
        register_layer(Scale, ScaleAdapter())
        assert Scale in registered_layers() and quantizable_layers(model) == ["0"]
        emulated = emulate_model(model, "w4a16")
        assert torch.equal(emulated[0].weight, quantize(model[0].weight.detach(), "int4", axis=0,
                                                        scale_rule="half_range"))
    finally:
        _REGISTRY.pop(Scale, None)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_layer(int, ScaleAdapter())
    with pytest.raises(TypeError, match="emulate"):
        register_layer(Scale, object())


def test_subclasses_of_registered_types_use_their_base_adapter():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(4, 3))
    assert quantizable_layers(model) == ["0"]
    assert isinstance(emulate_model(model, "w8a16")[0], EmulatedLayer)


def test_embeddings_are_quantized_per_row_only_on_request():
    torch.manual_seed(0)

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    model = Bag().eval()
    plain = emulate_model(model, "w4a16")
    assert torch.equal(plain.emb.weight, model.emb.weight)
    quant = emulate_model(model, parse_config("w4a16", embeddings=True))
    assert torch.equal(quant.emb.weight, quantize(model.emb.weight.detach(), "int4", axis=0, scale_rule="half_range"))
    bf16 = emulate_model(model, "bf16", embeddings=True)
    assert torch.equal(bf16.emb.weight, model.emb.weight.detach().bfloat16().float())
    assert not quant.emb.weight.requires_grad
    skipped = emulate_model(model, "w4a16", embeddings=True, skip=["emb"])
    assert torch.equal(skipped.emb.weight, model.emb.weight)

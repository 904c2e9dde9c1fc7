"""Every config through ``sweep`` on small random-initialised vision and language models."""

import numpy as np
import pytest
import torch

from precal.emulate import (
    EmulatedLayer,
    EmulatedMultiheadAttention,
    emulate_model,
    output_layer,
    quantizable_layers,
    sweep,
)

from .zoo import VISION, hf_model, torchvision_models, vision_model

CONFIGS = ["fp32", "tf32", "fp16", "bf16", "bf16-attn", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3-attn",
           "w8a8", "w8a8-dyn", "w4a8", "w4a4", "w8a16", "w4a16-g32", "w4a16-g32-asym"]
QUANTIZED = [c for c in CONFIGS if c not in ("fp32", "tf32")]


def _check(model, data, cal, output=None, extra=(), **kwargs):
    configs = CONFIGS + list(extra)
    out = sweep(model, data, configs, calibration_data=cal, batch_size=4, progress=False, output=output,
                group_fallback="channel", **kwargs)
    with torch.no_grad():
        raw = model(**data) if isinstance(data, dict) else model(data)
        ref = (output(raw) if output else getattr(raw, "logits", raw)).float().numpy()
    assert list(out) == configs
    assert np.allclose(out["fp32"], ref, rtol=0, atol=1e-5)  # batches of 4 vs 6 rows: float32 summation order
    for config in configs:
        assert out[config].shape == ref.shape and np.isfinite(out[config]).all(), config
    for config in QUANTIZED + list(extra):
        assert not np.array_equal(out[config], ref), config
    names = quantizable_layers(model)
    emulated = emulate_model(model, "w8a8", calibration_data=cal)
    top_level = [n for n, m in emulated.named_modules()
                 if isinstance(m, (EmulatedLayer, EmulatedMultiheadAttention)) and n in names]
    assert top_level == names  # every quantizable layer is emulated
    llm = emulate_model(model, "w8a8-dyn")
    assert output_layer(model) not in [n for n, m in llm.named_modules() if isinstance(m, EmulatedLayer)]
    return out


@pytest.mark.parametrize("name", sorted(VISION))
def test_vision_model_at_every_config(name):
    model = vision_model(name)
    gen = torch.Generator().manual_seed(1)
    # torch.fx traces these: the backend-faithful int8 mode runs too
    _check(model, torch.randn(6, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen),
           extra=["w8a8-x86"])


def test_vit_attention_is_emulated_by_the_attn_configs():
    model = vision_model("vit")
    emulated = emulate_model(model, "bf16-attn")
    mha = emulated.layers[0].self_attention
    assert isinstance(mha, EmulatedMultiheadAttention) and mha.attention_format.name == "bf16"


TV = torchvision_models()


@pytest.mark.skipif(TV is None, reason="torchvision cannot be imported beside this torch")
@pytest.mark.parametrize("name", sorted(TV or {}))
def test_torchvision_model_at_every_config(name):
    torch.manual_seed(0)
    model = TV[name]().eval()
    gen = torch.Generator().manual_seed(1)
    _check(model, torch.randn(4, 3, 32, 32, generator=gen), torch.randn(4, 3, 32, 32, generator=gen),
           extra=["w8a8-x86"])


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "qwen2"])
def test_transformers_model_at_every_config(name):
    pytest.importorskip("transformers")
    model = hf_model(name)
    gen = torch.Generator().manual_seed(1)

    def tokens(n):
        ids = torch.randint(2, 96, (n, 8), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0  # one padded row
        return {"input_ids": ids, "attention_mask": mask}

    output = None if name == "bert" else (lambda o: o.logits[:, -1])
    out = _check(model, tokens(6), tokens(4), output=output)
    assert out["fp32"].shape == ((6, 3) if name == "bert" else (6, 96))

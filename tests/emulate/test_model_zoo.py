"""Every config through ``sweep`` on small random-initialised vision and language models."""

import numpy as np
import pytest
import torch
from torch import nn

from precal.emulate import (
    BLOCK_FORMATS,
    EmulatedLayer,
    EmulatedMultiheadAttention,
    FloatFormat,
    emulate_model,
    format_info,
    format_names,
    output_layer,
    parse_config,
    quantizable_layers,
    sweep,
)

from .zoo import CONFIGS, EVERY, FLOATS, PTQ, VISION, hf_model, torchvision_models, vision_model

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
    x = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.no_grad():  # logits that depend on the input (zoo: BatchNorm statistics, ViT head), not ~0
        assert float(model(x).std(0).mean()) > 1e-2
    _check(model, x, torch.randn(4, 3, 32, 32, generator=gen), extra=["w8a8-x86"])


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


# --------------------------------------------------------------------------- every config family


def test_every_config_family_is_in_the_zoo_tests():
    """A format, block format or PTQ suffix added to the emulator without a zoo run fails here."""
    from precal.emulate.model import _PTQ_SUFFIXES

    assert set(FLOATS) | {"fp32"} == {n for n in format_names() if isinstance(format_info(n), FloatFormat)}
    assert set(BLOCK_FORMATS) <= set(EVERY)
    assert {s for c in PTQ for s in c.split("-")} >= set(_PTQ_SUFFIXES) | {"actorder"}
    for name in EVERY:
        assert parse_config(name).name == name


def _every(model, data, cal, output=None, traceable=True):
    """``sweep`` at every config of :data:`EVERY`: finite, fp32 exact, every other config changes the logits.

    PTQ configs run on every layer, grouped/depthwise convolutions and ``nn.MultiheadAttention``
    included. ``-x86`` needs a model ``torch.fx`` traces (the CNNs); the others get its clear error.
    """
    with torch.no_grad():
        raw = model(**data) if isinstance(data, dict) else model(data)
        ref = (output(raw) if output else getattr(raw, "logits", raw)).float().numpy()
    configs = [c for c in EVERY if traceable or c != "w8a8-x86"]
    out = sweep(model, data, configs, calibration_data=cal, batch_size=4, progress=False, output=output,
                group_fallback="channel")
    if not traceable:
        with pytest.raises(ValueError, match="torch.fx"):
            sweep(model, data, ["w8a8-x86"], calibration_data=cal, progress=False, output=output)
    np.testing.assert_allclose(out["fp32"], ref, rtol=0, atol=1e-5)
    for config, z in out.items():
        assert z.shape == ref.shape and np.isfinite(z).all(), config
        if config not in ("fp32", "tf32"):
            assert not np.array_equal(z, ref), config
    return out


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2", "efficientnet", "vit"])
def test_gptq_reaches_the_depthwise_convs_and_attention_of_the_zoo(name):
    """No round-to-nearest override: GPTQ's weights differ from RTN's on every such layer."""
    model = vision_model(name)
    cal = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    gptq = dict(emulate_model(model, "w4a16-gptq", calibration_data=cal).named_modules())
    rtn = dict(emulate_model(model, "w4a16").named_modules())
    special = [n for n, m in model.named_modules()
               if isinstance(m, nn.MultiheadAttention) or (isinstance(m, nn.Conv2d) and m.groups > 1)]
    assert special
    for n in special:
        parts = ["q_proj", "k_proj", "v_proj", "out_proj"] if isinstance(gptq[n], EmulatedMultiheadAttention) else [""]
        for part in parts:
            key = f"{n}.{part}" if part else n
            assert not torch.equal(gptq[key].weight_q, rtn[key].weight_q), key


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VISION))
def test_vision_model_at_every_config_family(name):
    model = vision_model(name)
    gen = torch.Generator().manual_seed(2)
    out = _every(model, torch.randn(6, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen))
    assert set(out) == set(EVERY)


@pytest.mark.slow
@pytest.mark.skipif(TV is None, reason="torchvision cannot be imported beside this torch")
@pytest.mark.parametrize("name", sorted(TV or {}))
def test_torchvision_model_at_every_config_family(name):
    """torchvision's own classifiers (torch.fx traces them all: ``w8a8-x86`` included).

    Runs where torchvision imports (docs/emulate.md: a torch 2.14.1 + torchvision 0.29.1
    venv); ``benchmarks/check_torchvision.py`` records the same sweep as a table.
    """
    torch.manual_seed(0)
    model = TV[name]().eval()
    gen = torch.Generator().manual_seed(2)
    out = _every(model, torch.randn(4, 3, 32, 32, generator=gen), torch.randn(4, 3, 32, 32, generator=gen))
    assert set(out) == set(EVERY)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "qwen2"])
def test_transformers_model_at_every_config_family(name):
    pytest.importorskip("transformers")
    model = hf_model(name)
    gen = torch.Generator().manual_seed(2)

    def tokens(n):
        return {"input_ids": torch.randint(2, 96, (n, 8), generator=gen), "attention_mask": torch.ones(n, 8).long()}

    output = None if name == "bert" else (lambda o: o.logits[:, -1])
    out = _every(model, tokens(6), tokens(4), output=output, traceable=False)
    assert set(out) == set(EVERY) - {"w8a8-x86"}

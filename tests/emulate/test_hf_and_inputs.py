"""Hugging Face models and real inputs: outputs with .logits, dict batches, output=/predict=,
{name: model} entries, multiple-choice log-likelihoods, and every bad input failing early."""

import numpy as np
import pytest
import torch
from torch import nn

from precal.emulate import QuantConfig, emulate_model, multiple_choice_logits, output_layer, parse_config, sweep

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 64


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64,
                                  bos_token_id=1, eos_token_id=1)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                   bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tokens(n, t=9, seed=0):
    ids = torch.randint(2, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def last_token(out):
    return out.logits[:, -1]


class CountingForward(nn.Module):
    """Counts forward passes; returns what ``kind`` says."""

    def __init__(self, kind="tensor"):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)
        self.kind = kind
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        z = self.fc(self.conv(x).mean((2, 3)))
        return {"features": z} if self.kind == "dict" else z


def test_causal_lm_outputs_and_dict_batches_sweep():
    model = tiny_gpt2()
    data, cal = tokens(6), tokens(4, seed=1)
    out = sweep(model, data, ["fp32", "bf16", "w8a8", "w8a8-dyn", "w4a16-g32"], calibration_data=cal,
                batch_size=4, progress=False, output=last_token)
    with torch.no_grad():
        ref = model(**data).logits[:, -1].numpy()
    assert np.array_equal(out["fp32"], ref) and out["w8a8"].shape == (6, VOCAB)
    assert all(not np.array_equal(out[c], ref) for c in ("bf16", "w8a8", "w8a8-dyn", "w4a16-g32"))


def test_dataloader_of_dicts_and_of_tuples_agree_with_a_dict_of_tensors():
    model = tiny_llama()
    data = tokens(8)
    rows = [{k: v[i] for k, v in data.items()} for i in range(8)]
    dict_loader = torch.utils.data.DataLoader(rows, batch_size=3)
    tuple_loader = torch.utils.data.DataLoader([(r, 0) for r in rows], batch_size=3)
    kw = dict(configs=["fp32", "w8a8-dyn"], progress=False, output=last_token)
    a = sweep(model, data, batch_size=3, **kw)
    b = sweep(model, dict_loader, **kw)
    c = sweep(model, tuple_loader, **kw)
    for key in a:
        assert np.allclose(a[key], b[key], atol=1e-5) and np.allclose(a[key], c[key], atol=1e-5)


def test_dict_keys_the_model_does_not_take_are_dropped():
    model = CountingForward()
    batches = [{"x": torch.randn(2, 3, 5, 5), "label": torch.zeros(2)} for _ in range(2)]
    assert sweep(model, batches, ["fp32"], progress=False)["fp32"].shape == (4, 5)


def test_llm_configs_keep_lm_head_in_float_unless_overridden():
    model = tiny_gpt2()
    assert output_layer(model) == "lm_head"
    emulated = emulate_model(model, "w4a16-g32")
    assert isinstance(emulated.lm_head, nn.Linear) and type(emulated.transformer.h[0].attn.c_attn).__name__ \
        == "EmulatedLayer"
    forced = emulate_model(model, "w4a16-g32", overrides={"lm_head": "w4a16-g32"})
    assert type(forced.lm_head).__name__ == "EmulatedLayer"
    assert type(emulate_model(model, "w4a16-g32", keep_head=False).lm_head).__name__ == "EmulatedLayer"
    assert type(emulate_model(model, "w8a16").lm_head).__name__ == "EmulatedLayer"  # CNN-style: all layers
    # the tied input embedding is left alone
    assert torch.equal(emulated.transformer.wte.weight, model.transformer.wte.weight)


def test_no_batchnorm_no_folding_warning(recwarn):
    emulate_model(tiny_gpt2(), "w8a16")
    assert not [w for w in recwarn if "BatchNorm" in str(w.message)]


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_hf_attention_emulation(make):
    model = make()
    data = tokens(3)
    data["attention_mask"][0, :3] = 0  # left padding on one row
    implementation = model.config._attn_implementation
    exact = emulate_model(model, QuantConfig("fp32-compute", compute="fp32", attention=True))
    assert exact.config._attn_implementation == "precal_fp32"
    assert model.config._attn_implementation == implementation  # the caller's model keeps its attention
    with torch.no_grad():
        ref = model(**data).logits
        assert torch.allclose(exact(**data).logits, ref, atol=1e-4)  # precal's float path = SDPA
        plain, attn = emulate_model(model, "bf16")(**data).logits, emulate_model(model, "bf16-attn")(**data).logits
    assert not torch.equal(plain, attn)
    assert (attn - ref).abs().max() < 0.1


def test_other_tools_models_are_swept_beside_configs():
    model = CountingForward().eval()
    other = CountingForward().eval()  # e.g. a torchao-quantized copy
    x = torch.randn(6, 3, 5, 5)
    out = sweep(model, x, ["fp32", ("theirs", other), {"mine-w8": parse_config("w8a16")}], progress=False)
    assert list(out) == ["fp32", "theirs", "mine-w8"]
    with torch.no_grad():
        assert np.array_equal(out["theirs"], other(x).numpy())
    mapping = sweep(model, x, {"ref": "fp32", "theirs": other}, progress=False)
    assert np.array_equal(mapping["theirs"], out["theirs"])
    with pytest.raises(ValueError, match="needs a name"):
        sweep(model, x, [other], progress=False)


def test_predict_callable_replaces_the_batched_forward():
    model = CountingForward()
    x = torch.randn(4, 3, 5, 5)
    out = sweep(model, None, ["fp32", "bf16"], predict=lambda m: m(x) * 2, progress=False)
    with torch.no_grad():
        assert np.allclose(out["fp32"], model(x).numpy() * 2)


# ------------------------------------------------------------------- bad input, before any forward


@pytest.mark.parametrize("kwargs, error, match", [
    ({"overrides": {"conv": "w8a8", "nope": "w8a8"}}, ValueError, "'nope' .* does not exist"),
    ({"skip": ["conv.weight"]}, ValueError, "does not exist"),
    ({"configs": ["w4a16-g8"]}, ValueError, r"Layer 'conv' \(Conv2d\) has 27 inputs"),
    ({"calibration_data": [["a", "b"]]}, TypeError, "calibration_data: a batch must be"),
    ({"calibration_data": torch.randn(4, 3, 7, 7)}, ValueError, "calibration_data rows have shape"),
    ({"calibration_data": [{"x": torch.randn(2, 3, 5, 5)}]}, ValueError, "calibration_data batches are dicts"),
    ({"configs": ["w8a8", "w4a8"], "calibration_data": iter([torch.randn(2, 3, 5, 5)])}, TypeError,
     "one-shot iterator"),
    ({"configs": ["w8a8"], "calibration_data": None}, ValueError, "pass calibration_data"),
    ({"configs": ["fp32", "fp32"]}, ValueError, "Duplicate"),
    ({"configs": ["w4a8-g"]}, ValueError, "unknown suffix"),
])
def test_bad_input_fails_before_any_forward_pass(kwargs, error, match):
    model = CountingForward()
    kwargs = {"configs": ["fp32", "w8a8"], "calibration_data": torch.randn(4, 3, 5, 5), **kwargs}
    with pytest.raises(error, match=match):
        sweep(model, torch.randn(6, 3, 5, 5), progress=False, **kwargs)
    assert model.calls == 0


def test_unknown_layer_type_in_an_override_fails_before_any_forward_pass():
    class WithNorm(CountingForward):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(5)

    model = WithNorm()
    with pytest.raises(ValueError, match="'norm' .* is a LayerNorm, which precal does not quantize"):
        sweep(model, torch.randn(6, 3, 5, 5), ["w8a16"], overrides={"norm": "w8a8"}, progress=False)
    assert model.calls == 0


def test_data_of_the_wrong_structure_fails_before_any_forward_pass():
    model = CountingForward()
    for data, error in ((3.0, TypeError), ([[]], ValueError), ([{"x": 1}], TypeError), ([], ValueError),
                        (iter([torch.randn(2, 3, 5, 5)]), TypeError)):
        with pytest.raises(error):
            sweep(model, data, ["fp32", "bf16"], progress=False)
    assert model.calls == 0


def test_model_without_logits_fails_after_one_probe_forward():
    model = CountingForward(kind="dict")
    with pytest.raises(TypeError, match=r"dict with keys \['features'\] with no logits.*output="):
        sweep(model, torch.randn(6, 3, 5, 5), ["fp32", "w8a8"], calibration_data=torch.randn(4, 3, 5, 5),
              progress=False)
    assert model.calls == 1  # the probe on two rows, before any emulated copy is built
    out = sweep(model, torch.randn(6, 3, 5, 5), ["fp32"], output=lambda o: o["features"], progress=False)
    assert out["fp32"].shape == (6, 5)


def test_variable_length_token_logits_need_output():
    model = tiny_gpt2()
    batches = [tokens(2, t=5)["input_ids"], tokens(2, t=7)["input_ids"]]
    with pytest.raises(ValueError, match="output="):
        sweep(model, batches, ["fp32"], progress=False)


# -------------------------------------------------------------------------- multiple choice


def char_tokenizer(text):
    return [2 + (ord(c) % (VOCAB - 2)) for c in text]


def reference_loglik(model, context, continuation):
    """One sequence, no padding: sum of log p(continuation tokens | prefix)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    ctx, cont = char_tokenizer(context), char_tokenizer(context + continuation)[len(char_tokenizer(context)):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(cont))


def test_multiple_choice_logits_match_one_sequence_at_a_time():
    model = tiny_llama()
    contexts = ["Question: 2+2?\nAnswer:", "Sky is ", "A"]
    choices = [[" 4", " five", " 22"], ["blue", "green", "a colour of the rainbow"], ["b", "cc", "ddd"]]
    got = multiple_choice_logits(model, char_tokenizer, contexts, choices, batch_size=4)
    want = np.array([[reference_loglik(model, c, x) for x in ch] for c, ch in zip(contexts, choices)])
    assert got.shape == (3, 3) and got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-4)
    chars = multiple_choice_logits(model, char_tokenizer, contexts, choices, normalize="chars")
    lengths = np.array([[len(x) for x in ch] for ch in choices], dtype=float)  # the choices as given
    assert np.allclose(chars, want / lengths, atol=1e-4)


def test_arc_style_varying_choice_counts_are_scored_one_call_per_count():
    """The recipe docs/emulate.md gives for ARC (3-5 choices): one logits matrix per choice count."""
    model = tiny_llama()
    contexts = ["Q1:", "Q2:", "Q3:", "Q4:"]
    choices = [[" a", " b", " c"], [" a", " b", " c", " d"], [" x", " y", " z"], [" 1", " 2", " 3", " 4", " 5"]]
    groups = {}
    for i, options in enumerate(choices):
        groups.setdefault(len(options), []).append(i)
    logits = {k: multiple_choice_logits(model, char_tokenizer, [contexts[i] for i in idx], [choices[i] for i in idx])
              for k, idx in groups.items()}
    assert {k: z.shape for k, z in logits.items()} == {3: (2, 3), 4: (1, 4), 5: (1, 5)}
    for k, idx in groups.items():
        want = [[reference_loglik(model, contexts[i], c) for c in choices[i]] for i in idx]
        np.testing.assert_allclose(logits[k], want, atol=1e-4)


def test_multiple_choice_with_a_transformers_tokenizer_and_sweep():
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[BOS]", "[UNK]", "the", "cat", "dog", "sat", "ran", "on", "mat"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]")
    model = tiny_llama()
    contexts, choices = ["the cat", "the dog"], [[" sat", " ran"], [" sat on the mat", " ran"]]
    scores = multiple_choice_logits(model, tok, contexts, choices, normalize="tokens")
    assert scores.shape == (2, 2) and np.isfinite(scores).all()
    out = sweep(model, None, ["fp32", "w8a8-dyn", "w4a16-g32"], progress=False,
                predict=lambda m: multiple_choice_logits(m, tok, contexts, choices, normalize="tokens"))
    assert np.allclose(out["fp32"], scores, atol=1e-6)
    assert not np.array_equal(out["w4a16-g32"], scores)


@pytest.mark.parametrize("contexts, choices, kwargs, match", [
    (["a", "b"], [["x"]], {}, "2 questions"),
    (["a", "b"], [["x", "y"], ["z"]], {}, r"same number.*counts \[1, 2\]\. Score each group"),
    (["a"], [["x"]], {"normalize": "bytes"}, "normalize"),
    (["a"], [[""]], {}, "no token"),
    ([], [], {}, "empty"),
])
def test_multiple_choice_bad_input(contexts, choices, kwargs, match):
    with pytest.raises(ValueError, match=match):
        multiple_choice_logits(tiny_gpt2(), char_tokenizer, contexts, choices, **kwargs)

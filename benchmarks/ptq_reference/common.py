"""The tiny Llama and the calibration/evaluation tokens shared by the reference run and precal's.

Both sides (``run_reference.py`` in the llmcompressor venv, ``compare.py`` and the test in
precal's venv) build the same model from this file: a ``transformers`` ``LlamaForCausalLM``
whose parameters are drawn here from one seeded generator, in the order of
``named_parameters()``, so they do not depend on the ``transformers`` version's own
initialisation (the two venvs may carry different versions; ``fp32_logits_sum`` in the
reference JSON checks that the float models agree).

Weights: ``N(0, 1/fan_in)`` for linear layers, ``N(0, 1)`` for the embedding; the RMSNorm
weights are 1 except a few "outlier" channels set to 20, so that the activations have the
outlier channels that AWQ and SmoothQuant are built for (a random-initialised model has
none otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

#: Model shape: 2 decoder layers, hidden 256 (every linear input divides into groups of 128).
CONFIG = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
          "tie_word_embeddings": False}
#: Hidden channels whose RMSNorm weight is 20 (activation outliers).
OUTLIER_CHANNELS = (3, 50, 101, 200)
#: Calibration: 64 sequences of 64 tokens; evaluation: 16 other sequences.
N_CAL, N_EVAL, SEQ_LEN = 64, 16, 64

#: precal config -> the reference recipe that should match it (run_reference.py builds them).
CONFIGS = {
    "w4a16-g128": "rtn-w4a16",
    "w4a16-g128-gptq": "gptq-w4a16",
    "w4a16-g128-gptq-actorder": "gptq-w4a16-actorder",
    "w4a16-g128-awq": "awq-w4a16",
    "w8a8-dyn": "rtn-w8a8",
    "w8a8-dyn-sq": "smoothquant-w8a8",
}


def build_model() -> Any:
    """The tiny ``LlamaForCausalLM`` in float32, eval mode, weights from seed 0."""
    import transformers

    cfg = transformers.LlamaConfig(**CONFIG)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                p[list(OUTLIER_CHANNELS)] = 20.0
            elif p.dim() == 2 and "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.zero_()
    return model


def tokens() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Calibration and evaluation batches: random token ids (seeds 1 and 2), full attention masks."""
    vocab = CONFIG["vocab_size"]
    cal = torch.randint(0, vocab, (N_CAL, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    ev = torch.randint(0, vocab, (N_EVAL, SEQ_LEN), generator=torch.Generator().manual_seed(2))
    return ({"input_ids": cal, "attention_mask": torch.ones_like(cal)},
            {"input_ids": ev, "attention_mask": torch.ones_like(ev)})


@torch.no_grad()
def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's float32 logits on ``batch``, ``(sequences, tokens, vocab)``."""
    return model(**batch).logits.float()


def rel_error(q: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative logit error ``||q - ref|| / ||ref||`` (Frobenius norms over every token and class)."""
    return float((q.double() - ref.double()).norm() / ref.double().norm())

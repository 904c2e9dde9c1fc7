"""Run llmcompressor's GPTQ, AWQ and SmoothQuant on the tiny Llama of ``common.py``; save the errors.

Run it in the reference venv (README.md in this folder says how to make it), not in
precal's::

    /work/venvs/ptqref/bin/python benchmarks/ptq_reference/run_reference.py

For each recipe a fresh copy of the float model goes through ``llmcompressor.oneshot``
with the calibration tokens of ``common.tokens()`` (64 x 64, in order, no shuffling); the
quantized model (compressed-tensors fake quantization in its forward) is then run on the
evaluation tokens and its relative logit error against the float model is recorded.

Recipes (all keep ``lm_head`` in float, as precal's LLM-style configs do):

* ``rtn-w4a16``: ``QuantizationModifier(scheme="W4A16")``: int4 symmetric, groups of 128,
  min-max scales ``amax / 7.5``;
* ``gptq-w4a16``: ``GPTQModifier(scheme="W4A16", dampening_frac=0.01, block_size=128,
  actorder=None)``; ``gptq-w4a16-actorder``: the same with ``actorder="static"`` (an alias
  of ``"weight"``: columns by descending Hessian diagonal, group scales of the original
  consecutive columns);
* ``awq-w4a16``: ``AWQModifier(scheme="W4A16", duo_scaling=False)`` (the paper's
  ``s = mean|x|^α``, 20 grid points); ``awq-w4a16-duo``: llmcompressor's default
  ``duo_scaling=True`` (``s = mean|x|^α / mean|w|^(1-α)``);
* ``rtn-w8a8``: ``QuantizationModifier(scheme="W8A8")``: int8 per-channel weights, dynamic
  per-token int8 activations; ``smoothquant-w8a8``: ``SmoothQuantModifier(0.5)`` before it.

Each recipe also runs with ``pipeline="basic"`` (every layer calibrated on the float
model's activations in one pass, as precal does) beside llmcompressor's default
pipeline (layer by layer, the next layer fed the quantized layer's outputs); both are in
the JSON. Writes ``benchmarks/results/ptq_reference_llmcompressor.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, logits, rel_error, tokens  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "ptq_reference_llmcompressor.json"


def recipes() -> dict:
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    ignore = ["lm_head"]
    return {
        "rtn-w4a16": lambda: [QuantizationModifier(targets="Linear", scheme="W4A16", ignore=ignore)],
        "gptq-w4a16": lambda: [GPTQModifier(targets="Linear", scheme="W4A16", ignore=ignore, dampening_frac=0.01,
                                            block_size=128, actorder=None)],
        "gptq-w4a16-actorder": lambda: [GPTQModifier(targets="Linear", scheme="W4A16", ignore=ignore,
                                                     dampening_frac=0.01, block_size=128, actorder="static")],
        "awq-w4a16": lambda: [AWQModifier(targets="Linear", scheme="W4A16", ignore=ignore, duo_scaling=False)],
        "awq-w4a16-duo": lambda: [AWQModifier(targets="Linear", scheme="W4A16", ignore=ignore, duo_scaling=True)],
        "rtn-w8a8": lambda: [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=ignore)],
        "smoothquant-w8a8": lambda: [SmoothQuantModifier(smoothing_strength=0.5),
                                     QuantizationModifier(targets="Linear", scheme="W8A8", ignore=ignore)],
    }


def tokenizer(vocab: int):
    """A word-level tokenizer made here (no download): llmcompressor wants a processor beside a dataset."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0")


def cpu_workarounds() -> list[str]:
    """Patches llmcompressor needs to run on a CPU-only machine; returns what was patched.

    llmcompressor 0.14's AWQ pins its cached layer inputs (``IntermediatesCache.pin_memory``,
    a speed-up for host-to-device copies), which raises "Cannot access accelerator device
    when none is available" without a GPU; on CPU the pinning is skipped (nothing else
    changes: the cache keeps the same tensors).
    """
    if torch.cuda.is_available():
        return []
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    return ["IntermediatesCache.pin_memory skipped (CPU only)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--pipelines", nargs="*", default=["default", "basic"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import datasets
    import llmcompressor
    import transformers
    from llmcompressor import oneshot

    patches = cpu_workarounds()
    base = build_model()
    cal, ev = tokens()
    ref = logits(base, ev)
    ds = datasets.Dataset.from_dict({"input_ids": cal["input_ids"].tolist(),
                                     "attention_mask": cal["attention_mask"].tolist()})
    processor = tokenizer(base.config.vocab_size)
    config_dir = tempfile.mkdtemp(prefix="ptqref-")  # oneshot reads the config from name_or_path
    base.config.save_pretrained(config_dir)
    base.config.name_or_path = config_dir
    rows = {}
    for name, make in recipes().items():
        if args.recipes and name not in args.recipes:
            continue
        for pipeline in args.pipelines:
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            kwargs = {} if pipeline == "default" else {"pipeline": pipeline}
            oneshot(model=model, dataset=ds, recipe=make(), num_calibration_samples=cal["input_ids"].shape[0],
                    max_seq_length=cal["input_ids"].shape[1], shuffle_calibration_samples=False, processor=processor, **kwargs)
            seconds = time.perf_counter() - t0
            err = rel_error(logits(model, ev), ref)
            rows[f"{name}/{pipeline}"] = {"recipe": name, "pipeline": pipeline, "rel_error": err,
                                          "seconds": round(seconds, 2)}
            print(f"{name:22s} {pipeline:8s} rel. logit error {err:.5f}  ({seconds:.1f} s)", flush=True)
            del model
    meta = {"reference": "llmcompressor", "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": __import__("compressed_tensors").__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "patches": patches, "fp32_logits_sum": float(ref.double().sum()),
            "fp32_logits_norm": float(ref.double().norm())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

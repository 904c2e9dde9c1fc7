"""Compare precal's GPTQ, AWQ and SmoothQuant with llmcompressor's on the same tiny Llama.

Run in precal's venv, after ``run_reference.py`` ran in the reference venv (README.md)::

    python benchmarks/ptq_reference/compare.py

Reads ``benchmarks/results/ptq_reference_llmcompressor.json``, runs precal's
``emulate_model`` at each config of ``common.CONFIGS`` on the same model, calibration
tokens (64 x 64, batches of 16) and evaluation tokens, and prints and writes
``benchmarks/results/ptq_reference.{md,json}``: the relative logit error
``||z_q - z|| / ||z||`` of each side and their ratio. The issue's bar: precal's error at
most 5 % above the reference's (``ratio <= 1.05``); a ratio below 1 means precal's
emulated model is closer to the float model than the reference's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for p in (str(REPO_ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)
from common import CONFIGS, build_model, logits, rel_error, tokens  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"

#: Extra reference rows shown beside a precal config (same config, another reference setting).
EXTRA = {"w4a16-g128-awq": ["awq-w4a16-duo"]}


def precal_errors(configs: list[str]) -> dict[str, dict[str, float]]:
    """precal's relative logit error (and emulate_model's seconds) for each config."""
    from precal.emulate import emulate_model

    model = build_model()
    cal, ev = tokens()
    ref = logits(model, ev)
    out = {"fp32_logits_sum": float(ref.double().sum())}
    for name in configs:
        t0 = time.perf_counter()
        em = emulate_model(model, name, calibration_data=cal, batch_size=16,
                           n_calibration_batches=-(-cal["input_ids"].shape[0] // 16))
        seconds = time.perf_counter() - t0
        out[name] = {"rel_error": rel_error(logits(em, ev), ref), "seconds": round(seconds, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=RESULTS / "ptq_reference_llmcompressor.json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--pipeline", default="default", help="reference pipeline to compare with (default, basic)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    refdata = json.loads(args.reference.read_text(encoding="utf-8"))
    ours = precal_errors(list(CONFIGS))
    if abs(ours["fp32_logits_sum"] - refdata["meta"]["fp32_logits_sum"]) > 1e-6 * abs(ours["fp32_logits_sum"]) + 1e-3:
        raise SystemExit("the float models differ between the two venvs (fp32_logits_sum); the comparison is void")
    rows = []
    for name, recipe in CONFIGS.items():
        for rec in [recipe] + EXTRA.get(name, []):
            ref = {p: refdata["rows"].get(f"{rec}/{p}", {}).get("rel_error") for p in ("default", "basic")}
            main_ref = ref[args.pipeline]
            e = ours[name]["rel_error"]
            rows.append({"config": name, "reference": rec, "precal": round(e, 5),
                         "reference_default": None if ref["default"] is None else round(ref["default"], 5),
                         "reference_basic": None if ref["basic"] is None else round(ref["basic"], 5),
                         "ratio": None if main_ref is None else round(e / main_ref, 4),
                         "precal_seconds": ours[name]["seconds"]})
    meta = {**refdata["meta"], "precal_torch": torch.__version__, "compared_pipeline": args.pipeline}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq_reference.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n",
                                                 encoding="utf-8")

    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = ["# precal's PTQ algorithms against llmcompressor on a tiny Llama", "",
             "Relative logit error `||z_q - z|| / ||z||` against the float model on 16 x 64 evaluation tokens; "
             "the same random-initialised `LlamaForCausalLM` (2 layers, hidden 256, RMSNorm outlier channels; "
             "`benchmarks/ptq_reference/common.py`) and the same 64 x 64 calibration tokens on both sides; "
             "`lm_head` in float. Reference: llmcompressor "
             f"{meta['llmcompressor']} (compressed-tensors {meta['compressed_tensors']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}), its default pipeline (layer by layer, each layer "
             "calibrated on the quantized previous layers' outputs) and `pipeline=\"basic\"` (one pass of the "
             "float model, as precal). Ratio: precal / reference "
             f"({args.pipeline} pipeline); the issue's bar is ratio <= 1.05.", "",
             "| precal config | reference recipe | precal | reference (default) | reference (basic) | ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `{r['config']}` | `{r['reference']}` | {f(r['precal'])} | {f(r['reference_default'])} | "
              f"{f(r['reference_basic'])} | {f(r['ratio'])} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (args.out / "ptq_reference.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

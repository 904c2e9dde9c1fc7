"""PTQ on grouped/depthwise convolutions and nn.MultiheadAttention: speed of batched GPTQ, and errors.

Two tables.

1. **Batched GPTQ on depthwise convolutions.** The depthwise 3x3 layers of a MobileNetV2
   (channels 96, 144, 192, 384, 576, 960: one 9 x 9 Hessian per channel) quantized by
   ``gptq_quantize`` on the ``(channels, 1, 9)`` weight with the ``(channels, 9, 9)``
   Hessians in one batched call, against one call per channel (the same Hessians, random
   correlated inputs, seed 0). Wall time of each (``time.perf_counter``, best of
   ``--repeat``) and whether the two results are equal bit for bit.
2. **Output error** ``||z_q - z|| / ||z||`` of round to nearest, GPTQ (with act-order too),
   AWQ and SmoothQuant on small random-initialised models: the plain-torch MobileNetV2,
   ShuffleNetV2, EfficientNet and ViT of ``tests/emulate/zoo.py`` (16 x 16 images; the ViT's
   attention is ``nn.MultiheadAttention``) and a 4-layer ``nn.TransformerEncoder``
   (d = 64, 4 heads). Calibration on 64 random inputs, evaluation on 64 others; ``w4a16``
   for the weight-only algorithms (per output channel: the depthwise rows have 9
   inputs), ``w8a8`` for SmoothQuant. Every layer is quantized (``keep_head=False``), with no
   round-to-nearest overrides. Random weights have no trained structure: the numbers show
   the algorithms run on these layers and how they move the error, not how a trained
   network fares.

Writes ``benchmarks/results/ptq_layers.md`` and ``ptq_layers.json`` (``--out`` elsewhere).
Run: ``python benchmarks/bench_ptq_layers.py`` (under a minute on 1 thread); ``--quick``: two
depthwise sizes, the MobileNetV2 and the ViT, three configs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # measure this checkout's precal, not another installed copy
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads  # noqa: E402

DEPTHWISE = [96, 144, 192, 384, 576, 960]
CONFIGS = ["w4a16", "w4a16-gptq", "w4a16-gptq-actorder", "w4a16-awq", "w8a8", "w8a8-sq"]


def _depthwise_rows(repeat: int, sizes: list[int]) -> list[dict]:
    from precal.emulate import gptq_quantize

    g = torch.Generator().manual_seed(0)
    rows = []
    for channels in sizes:
        X = torch.randn(channels, 4096, 9, generator=g) @ torch.randn(channels, 9, 9, generator=g)
        H = 2 * X.mT @ X / X.shape[1]
        W = torch.randn(channels, 1, 9, generator=g)
        times = {"batched": [], "per_channel": []}
        for _ in range(repeat):
            t = time.perf_counter()
            batched = gptq_quantize(W, H, "int4")
            times["batched"].append(time.perf_counter() - t)
            t = time.perf_counter()
            each = torch.stack([gptq_quantize(W[i], H[i], "int4") for i in range(channels)])
            times["per_channel"].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        rows.append({"channels": channels, "batched_s": best["batched"], "per_channel_s": best["per_channel"],
                     "speedup": best["per_channel"] / best["batched"], "bit_equal": bool(torch.equal(batched, each))})
    return rows


def _models() -> dict:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "emulate"))
    from zoo import vision_model

    def encoder():
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
        return nn.TransformerEncoder(layer, 4).eval()

    g = torch.Generator().manual_seed(1)
    images = torch.randn(128, 3, 16, 16, generator=g)
    tokens = torch.randn(128, 16, 64, generator=g)
    out = {name: (vision_model(name), images) for name in ("mobilenet_v2", "shufflenet_v2", "efficientnet", "vit")}
    out["transformer_encoder"] = (encoder(), tokens)
    return out


def _error_rows(models: list[str] | None, configs: list[str]) -> list[dict]:
    from precal.emulate import emulate_model

    rows = []
    for name, (model, data) in _models().items():
        if models is not None and name not in models:
            continue
        cal, test = data[:64], data[64:]
        with torch.no_grad():
            ref_cal, ref_test = model(cal), model(test)
            for config in configs:
                t = time.perf_counter()
                em = emulate_model(model, config, calibration_data=cal, keep_head=False, batch_size=32)
                seconds = time.perf_counter() - t
                rows.append({"model": name, "config": config, "seconds": seconds,
                             "error_calibration": float((em(cal) - ref_cal).norm() / ref_cal.norm()),
                             "error_evaluation": float((em(test) - ref_test).norm() / ref_test.norm())})
    return rows


def _markdown(depthwise: list[dict], errors: list[dict], meta: dict) -> str:
    lines = ["# PTQ on grouped/depthwise convolutions and nn.MultiheadAttention", "",
             f"Generated by `benchmarks/bench_ptq_layers.py` on {meta['machine']} ({meta['threads']} thread(s), "
             f"load average {meta['load']:.1f} before the run; wall times on a shared machine).", "",
             "## Batched GPTQ on depthwise 3x3 layers (one 9 x 9 Hessian per channel)", "",
             "| channels | batched (ms) | one call per channel (ms) | speed-up | bit-equal |", "|---|---|---|---|---|"]
    for r in depthwise:
        lines.append(f"| {r['channels']} | {1e3 * r['batched_s']:.1f} | {1e3 * r['per_channel_s']:.0f} | "
                     f"{r['speedup']:.0f}x | {'yes' if r['bit_equal'] else 'NO'} |")
    lines += ["", "## Relative output error, every layer quantized (random-initialised models)", "",
              "| model | config | error (calibration inputs) | error (other inputs) | emulate_model (s) |",
              "|---|---|---|---|---|"]
    for r in errors:
        lines.append(f"| {r['model']} | `{r['config']}` | {r['error_calibration']:.4f} | "
                     f"{r['error_evaluation']:.4f} | {r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    load = os.getloadavg()[0]
    if args.quick:
        depthwise = _depthwise_rows(1, DEPTHWISE[:2])
        errors = _error_rows(["mobilenet_v2", "vit"], ["w4a16", "w4a16-gptq", "w8a8-sq"])
    else:
        depthwise = _depthwise_rows(args.repeat, DEPTHWISE)
        errors = _error_rows(None, CONFIGS)
    meta = {"machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
            "threads": args.threads, "load": load}
    text = _markdown(depthwise, errors, meta)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq_layers.md").write_text(text)
    (args.out / "ptq_layers.json").write_text(json.dumps({"meta": meta, "depthwise": depthwise, "errors": errors},
                                                         indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

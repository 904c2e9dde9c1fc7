"""Timing of precal's PTQ weight schemes (GPTQ, AWQ, SmoothQuant) on a MiniLM-size encoder.

The model is ``transformers.BertModel(BertConfig(hidden_size=384, num_hidden_layers=12,
num_attention_heads=12, intermediate_size=1536))`` with **random** weights (seed 0; no
download), the size of all-MiniLM-L12: 73 linear layers, 72 of them in the encoder
(the pooler, the output layer, stays float under group-wise and dynamic configs). Calibration data:
``--n-seq`` random token sequences of ``--seq-len`` tokens (default 128 x 128 = 16,384
rows per layer), in batches of 16; evaluation data: 32 other sequences.

For each config the wall time of ``emulate_model(model, config, calibration_data=...)``
is measured once (``time.perf_counter``; and the process's CPU time, ``time.process_time``,
with the 1-minute load average before it, since a shared machine inflates wall times), on
``--threads`` CPU threads (default 2, the issue's target: GPTQ on a 12-layer MiniLM-size
encoder in at most 60 s on 2 cores). It
includes the deep copy, the calibration pass through the float model that collects the
layers' inputs (Hessians for GPTQ, statistics for AWQ/SmoothQuant), the algorithm and, for
static-activation configs, the activation calibration pass. Also printed: the relative
error of the last hidden state on the evaluation sequences, ``||h_q - h|| / ||h||``. With
random weights (no outlier channels, no learned structure) these errors say little about a
trained model; they are there to show the algorithms run end to end, not to rank them.

``--breakdown`` (with ``--threads 1``) prints instead the CPU time of the parts of one
``w4a16-g128-gptq`` call: the plain forward pass over the calibration tokens, the Hessian
accumulation, GPTQ and its inverse-Hessian factor (docs/emulate-ptq.md).

Writes ``benchmarks/results/ptq.md`` and ``ptq.json`` (``--out`` elsewhere). Run:
``python benchmarks/bench_ptq.py``; ``--quick`` runs a 2-layer, hidden-128 model on 16 x 32 tokens.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # measure this checkout's precal, not another installed copy
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads  # noqa: E402

CONFIGS = ["w4a16-g128", "w4a16-g128-gptq", "w4a16-g128-gptq-actorder", "w4a16-g128-awq", "w8a8-dyn",
           "w8a8-dyn-sq"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-seq", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the table: CPU time of the plain forward pass, the Hessian accumulation, "
                             "GPTQ and its inverse-Hessian factor in one w4a16-g128-gptq run (use --threads 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a 2-layer, hidden-128 encoder and 16 x 32 calibration tokens "
                             "(checks that the script runs)")
    args = parser.parse_args(argv)
    layers, hidden, heads = 12, 384, 12
    if args.quick:
        layers, hidden, heads, args.n_seq, args.seq_len = 2, 128, 4, 16, 32
    limit_threads(args.threads)
    import transformers

    from precal.emulate import emulate_model

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=4 * hidden)
    model = transformers.BertModel(cfg).eval()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    g = torch.Generator().manual_seed(1)
    cal = {"input_ids": torch.randint(1000, cfg.vocab_size, (args.n_seq, args.seq_len), generator=g),
           "attention_mask": torch.ones(args.n_seq, args.seq_len, dtype=torch.long)}
    test = {"input_ids": torch.randint(1000, cfg.vocab_size, (32, args.seq_len), generator=g),
            "attention_mask": torch.ones(32, args.seq_len, dtype=torch.long)}
    batch = 16
    if args.breakdown:
        return breakdown(model, cal, batch, args.n_seq)
    with torch.no_grad():
        ref = model(**test).last_hidden_state
    rows = []
    for name in args.configs:
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        emulated = emulate_model(model, name, calibration_data=cal, batch_size=batch,
                                 n_calibration_batches=-(-args.n_seq // batch))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        with torch.no_grad():
            err = float((emulated(**test).last_hidden_state - ref).norm() / ref.norm())
        rows.append({"config": name, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                     "load_before": round(load, 2), "rel_error": round(err, 5)})
        print(f"{name:28s} {seconds:7.2f} s wall  {cpu:7.2f} s CPU  (load {load:.1f})  rel. error {err:.4f}",
              flush=True)
        del emulated

    meta = {"model": f"BertModel(hidden {hidden}, {layers} layers, {heads} heads, intermediate {4 * hidden}), "
                     "random weights, seed 0",
            "linear_layers": n_linear,
            "calibration": f"{args.n_seq} x {args.seq_len} random tokens, batches of {batch}",
            "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    lines = ["# PTQ weight schemes: time of emulate_model on a MiniLM-size encoder", "",
             f"{meta['model']}; {n_linear} linear layers; calibration {meta['calibration']}; "
             f"{args.threads} CPU threads; torch {torch.__version__}, transformers {transformers.__version__}.", "",
             f"Machine: {os.cpu_count()} logical CPUs; the 1-minute load average before each config is shown "
             "(a load above the thread count means other processes shared the cores, and wall times are "
             "inflated; CPU time is the process's own, all threads).", "",
             "| config | emulate_model wall time (s) | CPU time (s) | load before | "
             "rel. error of last hidden state (random weights) |",
             "|---|---|---|---|---|"]
    lines += [f"| `{r['config']}` | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['load_before']:.1f} | "
              f"{r['rel_error']:.4f} |" for r in rows]
    (args.out / "ptq.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def breakdown(model, cal, batch: int, n_seq: int) -> int:
    """Print the CPU time (``time.process_time``) of each part of one ``w4a16-g128-gptq`` call."""
    from precal.emulate import emulate_model, ptq

    acc = {"observe": 0.0, "quantize": 0.0, "inverse_cholesky_upper": 0.0}

    def timed(owner, name):
        f = getattr(owner, name)

        def wrapper(*a, **k):
            c0 = time.process_time()
            try:
                return f(*a, **k)
            finally:
                acc[name] += time.process_time() - c0
        setattr(owner, name, wrapper)
        return f

    originals = [(ptq.GPTQScheme, n, timed(ptq.GPTQScheme, n)) for n in ("observe", "quantize")]
    originals.append((ptq, "inverse_cholesky_upper", timed(ptq, "inverse_cholesky_upper")))
    try:
        c0 = time.process_time()
        with torch.no_grad():
            for i in range(0, n_seq, batch):
                model(**{k: v[i:i + batch] for k, v in cal.items()})
        forward = time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        emulate_model(model, "w4a16-g128-gptq", calibration_data=cal, batch_size=batch,
                      n_calibration_batches=-(-n_seq // batch))
        total, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        for owner, name, f in originals:
            setattr(owner, name, f)
    print(f"CPU s: plain forward {forward:.1f} | emulate_model total {total:.1f} (wall {wall:.1f}, load "
          f"{os.getloadavg()[0]:.1f}) | Hessian accumulation {acc['observe']:.1f} | GPTQ {acc['quantize']:.1f} "
          f"(inverse-Hessian factor {acc['inverse_cholesky_upper']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

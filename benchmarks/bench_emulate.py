"""Speed benchmark of precal's precision emulator (``precal.emulate``) against plain torch.

What is measured, in one run, on every available device (the CPU, and the GPU when
``torch.cuda.is_available()``; on the GPU every timed region starts and ends with
``torch.cuda.synchronize()``):

1. **Element-wise fake quantization**: ``precal.emulate.quantize(x, fmt)`` on a seeded
   4096 x 4096 float32 tensor ``x = 3 * N(0, 1)`` (made outside the timed region, on the
   device), for

   * the formats torch can cast to natively: ``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2``;
   * the formats precal emulates with integer bit operations: ``tf32``, ``fp6_e3m2``,
     ``fp6_e2m3``, ``fp4_e2m1`` (plain element rounding, no scale);
   * integer formats with scales: ``int8`` and ``int4`` per tensor, ``int8`` per channel
     (``axis=0``), ``int4`` per group of 128 (``group_size=128``);
   * block-scaled formats (``precal.emulate.block_quantize``, blocks along the last axis):
     MX with E8M0 scales and the spec's floor rule, blocks of 32, elements fp8_e4m3
     (``mxfp8``), fp6_e2m3 (``mxfp6``), fp4_e2m1 (``mxfp4``) and int8 (``mxint8``); MXFP4
     with NVIDIA's RCEIL rule (``mxfp4-rceil``); NVFP4 (blocks of 16, e4m3 block scales, a
     float32 per-tensor scale); and, for comparison, ``fp4_e2m1`` with a float32 amax scale
     per group of 32 (``quantize(x, "fp4_e2m1", group_size=32)``).

   The baseline is a *plain cast* round trip ``x.to(torch.bfloat16).to(torch.float32)``,
   timed in the same run. Every operation gets one untimed warm-up call; then the timed
   repeats go round-robin (one call of each operation per round, R rounds), so a change
   of load on a shared machine hits every operation alike. Reported: median and minimum
   wall time (``time.perf_counter``), throughput, and the ratio of the median to the
   plain cast's median.

2. **Model-level emulation**, for the configs ``fp32, bf16, fp16, fp8_e4m3, w8a8, w4a8,
   w4a4, w4a16-g128``, on two models with random (seeded) weights, in eval mode:

   * ``DigitsCNN`` (``precal.demo``: two 3x3 convs and a linear head, about 12 k
     parameters) on the 1 797 real 8x8 images of ``sklearn.datasets.load_digits``
     (scaled to [0, 1]); calibration data: the first 256 of them. This model is so small
     that per-call Python overhead, not arithmetic, dominates its times.
   * ``CNN32``, defined in this file: four 3x3 convs (64, 64, 128, 128 channels) with
     BatchNorm and ReLU, two max-pools, global average pooling and a linear head, on 256
     seeded ``N(0, 1)`` images of 3 x 32 x 32; calibration data: 256 other seeded images.
     Its time is dominated by the convolutions, so its ratios reflect compute.

   The block-format configs ``mxfp8, mxfp4, nvfp4`` (weights and layer inputs in blocks)
   are timed in (a) and (b) as well, without a target and outside the sweep of (c).

   For each config: (a) the one-time cost of ``emulate_model(model, config,
   calibration_data=...)`` (deep copy, BatchNorm folding, weight quantization, activation
   calibration: one forward pass of up to 8 batches of 256 calibration inputs), and (b)
   one forward pass of the emulated copy over all the data, in batches of 256, under
   ``torch.no_grad()``, compared with the same pass of the original fp32 model (BatchNorm
   unfolded, as the user has it). Warm-up and round-robin repeats as in part 1. Finally
   ``sweep(model, data, configs, calibration_data=..., progress=False)`` over the whole
   config list is timed once (the user-facing number: copies, quantization, calibration,
   forward passes and the copies of the logits to numpy).

3. **Sweep of ResNet-20** (issue 15): the CIFAR ResNet-20 of ``benchmarks/seeds/models.py``
   (random seeded weights and BatchNorm statistics, eval mode) on 256 seeded ``N(0, 1)``
   images of 3 x 32 x 32, calibration on 256 others; ``sweep(model, data, ["fp32", "bf16",
   "w8a8", "w4a4"], calibration_data=...)`` (the configs of ``precal sweep``'s default) and
   the plain fp32 forward over the same data, round-robin, R rounds after a warm-up. Reported:
   the sweep's median over four fp32 forwards' median (the cost per config in units of the
   forward it emulates: copies, BatchNorm folding, weight quantization, observer calibration
   and the emulated forward).

Targets (from the issue that asked for the emulator):

* native-cast formats (fp16, bf16, fp8_e4m3, fp8_e5m2): ``quantize`` <= 2x a plain cast;
* emulated formats (tf32, fp6, fp4): ``quantize`` <= 15x a plain cast;
* block-scaled formats (MX, NVFP4): <= 15x a plain cast (issue 15);
* integer ``w*a*`` configs: forward pass of the emulated model <= 3x the fp32 forward
  pass once the weights are quantized (part 2b);
* ``sweep`` over four ResNet-20 configs <= 4x the plain fp32 forward per config (part 3). Integer ``quantize`` calls and the float
  model configs are reported without a target.

Threads: ``--threads 1`` (default) caps torch's intra-op pool, OpenMP and BLAS at one
thread, so times are per core and far less sensitive to other load on a shared machine;
``--threads 0`` keeps the library defaults. The 1-, 5- and 15-minute load averages at the
start and end of the run are recorded with the results.

Results go to ``benchmarks/results/emulate.{md,json}`` and the docs page
``docs/benchmarks-emulate.md`` (written from the results, never by hand). ``--quick`` runs
small sizes with one repeat and writes to a temporary directory; ``--out DIR`` writes
everything (docs page included) under DIR instead of the committed locations;
``--render-only`` rewrites the markdown outputs from an existing ``emulate.json``.

Run from the repository root::

    python benchmarks/bench_emulate.py            # full run, refreshes the committed results
    python benchmarks/bench_emulate.py --quick    # smoke test, writes to a temp dir
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # measure this checkout's precal, not another installed copy
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, limit_threads  # noqa: E402  (benchmarks/_common.py)

DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_PAGE = REPO_ROOT / "docs" / "benchmarks-emulate.md"
RERUN_COMMAND = "python benchmarks/bench_emulate.py"

#: Targets checked by this benchmark (ratios of median times).
NATIVE_TARGET = 2.0
EMULATED_TARGET = 15.0
BLOCK_TARGET = 15.0
MODEL_INT_TARGET = 3.0
SWEEP_PER_CONFIG_TARGET = 4.0
#: Part 3: the configs of ``precal sweep``'s default.
RESNET_SWEEP_CONFIGS = ("fp32", "bf16", "w8a8", "w4a4")

NATIVE_FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")
EMULATED_FORMATS = ("tf32", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1")
#: (label, format, keyword arguments of quantize)
INT_CASES = (
    ("int8 per-tensor", "int8", {}),
    ("int4 per-tensor", "int4", {}),
    ("int8 per-channel (axis=0)", "int8", {"axis": 0}),
    ("int4 per-group (group_size=128)", "int4", {"group_size": 128}),
)
#: (label, block format name of block_quantize)
BLOCK_CASES = (
    ("mxfp8 (fp8_e4m3, 32)", "mxfp8"),
    ("mxfp6 (fp6_e2m3, 32)", "mxfp6"),
    ("mxfp4 (fp4_e2m1, 32)", "mxfp4"),
    ("mxint8 (int8, 32)", "mxint8"),
    ("mxfp4-rceil", "mxfp4-rceil"),
    ("nvfp4 (fp4_e2m1, 16, e4m3 + fp32)", "nvfp4"),
)
GROUP32_LABEL = "fp4_e2m1, fp32 scale per 32 (group_size=32)"
BASELINE_LABEL = "plain cast x.to(bfloat16).to(float32)"
MODEL_CONFIGS = ("fp32", "bf16", "fp16", "fp8_e4m3", "w8a8", "w4a8", "w4a4", "w4a16-g128")
#: timed per config (emulate_model, forward), not in the sweep, no target
MODEL_BLOCK_CONFIGS = ("mxfp8", "mxfp4", "nvfp4")
MODEL_BATCH = 256


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repeats (timed rounds after one warm-up round)."""

    quant_shape: tuple[int, int]
    quant_repeats: int
    digits_n: int
    digits_repeats: int
    digits_emulate_repeats: int
    cnn_n: int
    cnn_calibration_n: int
    cnn_repeats: int
    cnn_emulate_repeats: int
    cuda_min_repeats: int  # GPU calls are short: at least this many rounds there
    resnet_n: int = 256
    resnet_repeats: int = 3


FULL = Sizes(
    quant_shape=(4096, 4096), quant_repeats=9,
    digits_n=1797, digits_repeats=10, digits_emulate_repeats=5,
    cnn_n=256, cnn_calibration_n=256, cnn_repeats=3, cnn_emulate_repeats=2,
    cuda_min_repeats=20,
)
QUICK = Sizes(
    quant_shape=(512, 512), quant_repeats=1,
    digits_n=512, digits_repeats=1, digits_emulate_repeats=1,
    cnn_n=32, cnn_calibration_n=32, cnn_repeats=1, cnn_emulate_repeats=1,
    cuda_min_repeats=1, resnet_n=32, resnet_repeats=1,
)


# --------------------------------------------------------------------------- threads, timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, *, keep_last: bool = False
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """One warm-up call of each function, then ``repeats`` rounds of one timed call each.

    Returns the wall times (seconds) per function and, with ``keep_last``, the value of each
    function's last call (otherwise every result is freed at once).
    """
    last: dict[str, Any] = {}

    def call(name: str) -> float:
        last.pop(name, None)  # free the previous result before the next call allocates
        _sync(device)
        start = time.perf_counter()
        value = fns[name]()
        _sync(device)
        elapsed = time.perf_counter() - start
        if keep_last:
            last[name] = value
        return elapsed

    for name in fns:
        call(name)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name in fns:
            times[name].append(call(name))
    return times, last


def _stats_ms(times_s: list[float]) -> dict[str, Any]:
    return {
        "median_ms": statistics.median(times_s) * 1e3,
        "min_ms": min(times_s) * 1e3,
        "times_ms": [round(t * 1e3, 4) for t in times_s],
    }


# --------------------------------------------------------------------------- part 1: quantize
def bench_quantize(device: torch.device, sizes: Sizes, seed: int) -> dict[str, Any]:
    """Time ``quantize`` for every format against the plain bf16 cast round trip."""
    from precal.emulate import block_quantize, format_info, quantize

    repeats = _repeats(sizes.quant_repeats, sizes, device)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(sizes.quant_shape, generator=gen) * 3.0).to(device)
    cases: list[dict[str, Any]] = []
    fns: dict[str, Callable[[], Any]] = {BASELINE_LABEL: lambda: x.to(torch.bfloat16).to(torch.float32)}
    for fmt in NATIVE_FORMATS + EMULATED_FORMATS:
        native = fmt in NATIVE_FORMATS
        torch_dtype = format_info(fmt).torch_dtype
        cases.append({
            "label": fmt,
            "format": fmt,
            "kwargs": {},
            "category": "native cast" if native else "emulated",
            "path": f"torch cast to torch.{torch_dtype}" if native else "bit-level rounding on float32",
            "target": NATIVE_TARGET if native else EMULATED_TARGET,
        })
        fns[fmt] = (lambda f=fmt: quantize(x, f))
        if native:  # torch's own cast round trip, to separate precal's overhead from torch's cast
            dtype = getattr(torch, torch_dtype)
            fns[_own_cast_label(fmt)] = (lambda d=dtype: x.to(d).to(torch.float32))
    for label, fmt, kwargs in INT_CASES:
        cases.append({"label": label, "format": fmt, "kwargs": kwargs, "category": "integer",
                      "path": "scales + round + clamp", "target": None})
        fns[label] = (lambda f=fmt, kw=kwargs: quantize(x, f, **kw))
    for label, name in BLOCK_CASES:
        cases.append({"label": label, "format": name, "kwargs": {"axis": -1}, "category": "block-scaled",
                      "path": "block amax, scale exponents, element rounding", "target": BLOCK_TARGET})
        fns[label] = (lambda n=name: block_quantize(x, n, axis=-1))
    cases.append({"label": GROUP32_LABEL, "format": "fp4_e2m1", "kwargs": {"group_size": 32},
                  "category": "float, fp32 group scales", "path": "amax / max scale per group", "target": None})
    fns[GROUP32_LABEL] = lambda: quantize(x, "fp4_e2m1", group_size=32)
    times, _ = time_round_robin(fns, repeats, device)
    base = _stats_ms(times[BASELINE_LABEL])
    numel = x.numel()
    for case in cases:
        case |= _stats_ms(times[case["label"]])
        case["ratio_to_cast"] = case["median_ms"] / base["median_ms"]
        case["melem_per_s"] = numel / (case["median_ms"] * 1e3)
        if case["category"] == "native cast":
            own = _stats_ms(times[_own_cast_label(case["format"])])
            case["own_torch_cast"] = {"label": _own_cast_label(case["format"])} | own
            case["ratio_to_own_torch_cast"] = case["median_ms"] / own["median_ms"]
            case["own_torch_cast_ratio_to_cast"] = own["median_ms"] / base["median_ms"]
        case["met"] = None if case["target"] is None else bool(case["ratio_to_cast"] <= case["target"])
    base["melem_per_s"] = numel / (base["median_ms"] * 1e3)
    return {"shape": list(sizes.quant_shape), "dtype": "float32", "repeats": repeats,
            "baseline": {"label": BASELINE_LABEL} | base, "formats": cases}


def _own_cast_label(fmt: str) -> str:
    from precal.emulate import format_info

    return f"x.to(torch.{format_info(fmt).torch_dtype}).to(float32)"


def _repeats(r: int, sizes: Sizes, device: torch.device) -> int:
    return max(r, sizes.cuda_min_repeats) if device.type == "cuda" else r


# --------------------------------------------------------------------------- part 2: models
class CNN32(nn.Module):
    """Four 3x3 conv + BatchNorm + ReLU blocks (64, 64, 128, 128 channels) for 3 x 32 x 32 inputs."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), *block(128, 128), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so that folding is real work."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def _macs_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Multiply-accumulates of the conv and linear layers for one input sample."""
    total = 0

    def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += out[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += out[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def make_models(sizes: Sizes, seed: int) -> list[dict[str, Any]]:
    """The two benchmark models (random seeded weights, eval mode) with their data, on the CPU."""
    from sklearn.datasets import load_digits

    from precal.demo import DigitsCNN

    torch.manual_seed(seed)
    digits = DigitsCNN().eval()
    images = torch.from_numpy((load_digits().images / 16.0).astype(np.float32)[:, None])[: sizes.digits_n]
    gen = torch.Generator().manual_seed(seed + 1)
    cnn = CNN32().eval()
    _randomise_batchnorm(cnn, gen)
    cnn_data = torch.randn(sizes.cnn_n, 3, 32, 32, generator=gen)
    cnn_cal = torch.randn(sizes.cnn_calibration_n, 3, 32, 32, generator=gen)
    return [
        {
            "name": "DigitsCNN",
            "description": "precal.demo.DigitsCNN (2 convs + linear), random weights; load_digits images",
            "model": digits, "data": images, "calibration": images[:MODEL_BATCH],
            "calibration_note": f"the first {min(MODEL_BATCH, len(images))} images of the data",
            "repeats": sizes.digits_repeats, "emulate_repeats": sizes.digits_emulate_repeats,
        },
        {
            "name": "CNN32",
            "description": "4 x (3x3 conv + BN + ReLU), 64-64-128-128 channels, 2 max-pools, linear head; "
                           "random weights; N(0,1) inputs",
            "model": cnn, "data": cnn_data, "calibration": cnn_cal,
            "calibration_note": f"{len(cnn_cal)} other N(0,1) images",
            "repeats": sizes.cnn_repeats, "emulate_repeats": sizes.cnn_emulate_repeats,
        },
    ]


def _forward_all(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = None
        for batch in batches:
            out = model(batch)
    return out


def bench_model(spec: dict[str, Any], device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """emulate_model cost, emulated forward vs fp32 forward, and one sweep, for one model."""
    from precal.emulate import EmulatedLayer, emulate_model, sweep

    model = spec["model"].to(device)
    data = spec["data"].to(device)
    cal = spec["calibration"].to(device)
    batches = list(data.split(MODEL_BATCH))
    repeats = _repeats(spec["repeats"], sizes, device)
    emulate_repeats = _repeats(spec["emulate_repeats"], sizes, device)

    # (a) one-time cost of emulate_model; the copies of the last round are kept for (b)
    all_configs = MODEL_CONFIGS + MODEL_BLOCK_CONFIGS
    build = {c: (lambda c=c: emulate_model(model, c, calibration_data=cal, group_fallback="channel"))
             for c in all_configs}
    build_times, emulated = time_round_robin(build, emulate_repeats, device, keep_last=True)

    # (b) forward pass over the data: the original fp32 model and every emulated copy
    fwd = {"original (fp32)": lambda: _forward_all(model, batches)}
    fwd |= {c: (lambda m=emulated[c]: _forward_all(m, batches)) for c in all_configs}
    fwd_times, _ = time_round_robin(fwd, repeats, device)
    base = _stats_ms(fwd_times["original (fp32)"])

    configs = []
    for c in all_configs:
        layers = [m for m in emulated[c].modules() if isinstance(m, EmulatedLayer)]
        is_int = c in MODEL_CONFIGS and c.startswith("w")
        entry = {
            "config": c,
            "emulated_layers": len(layers),
            "grouped_layers": sum(1 for m in layers if m.weight_group_size is not None),
            "emulate_model": _stats_ms(build_times[c]),
            "forward": _stats_ms(fwd_times[c]),
            "target": MODEL_INT_TARGET if is_int else None,
        }
        entry["forward_ratio"] = entry["forward"]["median_ms"] / base["median_ms"]
        entry["met"] = bool(entry["forward_ratio"] <= MODEL_INT_TARGET) if is_int else None
        configs.append(entry)

    # the user-facing call, once (everything above has warmed it up)
    _sync(device)
    start = time.perf_counter()
    logits = sweep(model, data, list(MODEL_CONFIGS), calibration_data=cal, batch_size=MODEL_BATCH,
                   group_fallback="channel", progress=False)
    _sync(device)
    sweep_s = time.perf_counter() - start
    with torch.no_grad():
        reference = torch.cat([model(b) for b in batches]).float().cpu().numpy()
    sum_parts_ms = sum(e["emulate_model"]["median_ms"] + e["forward"]["median_ms"] for e in configs
                       if e["config"] in MODEL_CONFIGS)
    return {
        "name": spec["name"],
        "description": spec["description"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs_per_sample": _macs_per_sample(model, data),
        "input_shape": list(data.shape),
        "batch_size": MODEL_BATCH,
        "n_batches": len(batches),
        "calibration_rows": len(cal),
        "calibration_note": spec["calibration_note"],
        "repeats": repeats,
        "emulate_repeats": emulate_repeats,
        "fp32_forward": base,
        "configs": configs,
        "sweep": {
            "seconds": sweep_s,
            "n_configs": len(MODEL_CONFIGS),
            "ratio_to_fp32_forward": sweep_s * 1e3 / base["median_ms"],
            "sum_of_parts_ms": sum_parts_ms,
            "fp32_logits_max_abs_diff": float(np.max(np.abs(logits["fp32"] - reference))),
            "logits_shape": list(logits["fp32"].shape),
        },
    }


def bench_resnet_sweep(device: torch.device, sizes: Sizes, seed: int) -> dict[str, Any]:
    """Part 3: ``sweep`` over :data:`RESNET_SWEEP_CONFIGS` of ResNet-20 against its fp32 forward."""
    from benchmarks.seeds.models import cifar_resnet
    from precal.emulate import sweep

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    model = cifar_resnet(20).eval()
    _randomise_batchnorm(model, gen)
    model = model.to(device)
    data = torch.randn(sizes.resnet_n, 3, 32, 32, generator=gen).to(device)
    cal = torch.randn(sizes.resnet_n, 3, 32, 32, generator=gen).to(device)
    batches = list(data.split(MODEL_BATCH))
    configs = list(RESNET_SWEEP_CONFIGS)
    out: dict[str, Any] = {}

    def run_sweep() -> None:
        out["logits"] = sweep(model, data, configs, calibration_data=cal, batch_size=MODEL_BATCH, progress=False)

    times, _ = time_round_robin({"fp32 forward": lambda: _forward_all(model, batches), "sweep": run_sweep},
                                _repeats(sizes.resnet_repeats, sizes, device), device)
    fwd, swp = _stats_ms(times["fp32 forward"]), _stats_ms(times["sweep"])
    with torch.no_grad():
        reference = torch.cat([model(b) for b in batches]).float().cpu().numpy()
    per_config = swp["median_ms"] / (len(configs) * fwd["median_ms"])
    return {
        "name": "ResNet-20",
        "description": "CIFAR ResNet-20 (benchmarks/seeds/models.py), random weights and BatchNorm statistics; "
                       "N(0,1) inputs",
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_shape": list(data.shape),
        "calibration_rows": len(cal),
        "configs": configs,
        "repeats": len(times["sweep"]),
        "fp32_forward": fwd,
        "sweep": swp,
        "ratio_per_config": per_config,
        "target": SWEEP_PER_CONFIG_TARGET,
        "met": bool(per_config <= SWEEP_PER_CONFIG_TARGET),
        "fp32_logits_max_abs_diff": float(np.max(np.abs(out["logits"]["fp32"] - reference))),
    }


def _resnet_line(r: dict[str, Any]) -> str:
    return (f"{r['name']} ({r['description']}; {_spaced(r['parameters'])} parameters; data "
            f"{' x '.join(map(str, r['input_shape']))}, calibration {r['calibration_rows']} other images): "
            f"`sweep` over {', '.join(r['configs'])}, median of R = {r['repeats']} rounds, {r['sweep']['median_ms']:.0f} ms "
            f"(min {r['sweep']['min_ms']:.0f}); plain fp32 forward {r['fp32_forward']['median_ms']:.1f} ms "
            f"(min {r['fp32_forward']['min_ms']:.1f}), timed in the same rounds; the sweep costs "
            f"{r['ratio_per_config']:.2f}x the fp32 forward per config (target <= {r['target']:g}x: "
            f"{_met_text(r['met'], md=True)}); its fp32 logits differ from the model's by at most "
            f"{r['fp32_logits_max_abs_diff']:.1e}")


# --------------------------------------------------------------------------- environment
def environment(threads: int) -> dict[str, Any]:
    import ml_dtypes

    import precal

    env = {
        "python": platform.python_version(),
        "precal": precal.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "threads_setting": threads or "library defaults",
        "platform": platform.platform(),
        "cuda": None,
        "git": _git_state(),
    }
    if torch.cuda.is_available():
        env["cuda"] = {"device": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda}
    return env


def _git_state() -> dict[str, Any] | None:
    """Commit of the checkout and whether precal/emulate differs from it (the code measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "precal/emulate"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "precal_emulate_uncommitted_changes": dirty}


def _cpu_seconds(start: Any) -> dict[str, float]:
    """User and system CPU time of this process since ``start`` (system time: page faults, mmap)."""
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": round(end.ru_utime - start.ru_utime, 1), "system": round(end.ru_stime - start.ru_stime, 1)}


def _load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages (a shared machine: high values mean noisy times)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- rendering
QUANT_HEADERS = ["operation", "kind", "median ms", "min ms", "Melem/s", "x plain cast", "target", "met",
                 "torch cast alone: x plain cast"]
MODEL_HEADERS = ["config", "emulate_model ms", "forward ms", "x fp32 forward", "target", "met"]


def _met_text(met: bool | None, md: bool) -> str:
    if met is None:
        return "no target"
    if md:
        return "met" if met else "**not met**"
    return "met" if met else "NOT MET"


def quant_rows(q: dict[str, Any], md: bool) -> list[list[str]]:
    b = q["baseline"]
    rows = [[b["label"], "baseline", f"{b['median_ms']:.2f}", f"{b['min_ms']:.2f}", f"{b['melem_per_s']:.0f}",
             "1.00", "-", "-", "-"]]
    for c in q["formats"]:
        rows.append([
            c["label"], c["category"], f"{c['median_ms']:.2f}", f"{c['min_ms']:.2f}", f"{c['melem_per_s']:.0f}",
            f"{c['ratio_to_cast']:.2f}", "-" if c["target"] is None else f"<= {c['target']:g}x",
            _met_text(c["met"], md),
            f"{c['own_torch_cast_ratio_to_cast']:.2f}" if "own_torch_cast" in c else "-",
        ])
    return rows


def model_rows(m: dict[str, Any], md: bool) -> list[list[str]]:
    rows = [["original fp32 model", "-", f"{m['fp32_forward']['median_ms']:.2f}", "1.00", "-", "-"]]
    for c in m["configs"]:
        name = c["config"]
        if "-g" in name:
            name += f" ({c['grouped_layers']}/{c['emulated_layers']} layers grouped)"
        rows.append([
            name, f"{c['emulate_model']['median_ms']:.2f}", f"{c['forward']['median_ms']:.2f}",
            f"{c['forward_ratio']:.2f}", "-" if c["target"] is None else f"<= {c['target']:g}x",
            _met_text(c["met"], md),
        ])
    return rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _model_caption(m: dict[str, Any]) -> str:
    n, *shape = m["input_shape"]
    return (
        f"{m['name']}: {m['description']}; {_spaced(m['parameters'])} parameters, "
        f"{m['macs_per_sample'] / 1e6:.2f} M multiply-adds per sample; data {_spaced(n)} x "
        f"{' x '.join(map(str, shape))} in {m['n_batches']} batch(es) of at most {m['batch_size']}; calibration: "
        f"{m['calibration_note']}; R = {m['repeats']} forward rounds, {m['emulate_repeats']} emulate_model rounds"
    )


def _spaced(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _sweep_line(m: dict[str, Any]) -> str:
    s = m["sweep"]
    return (
        f"sweep over all {s.get('n_configs', len(m['configs']))} configs of the list, once: {s['seconds']:.3f} s = "
        f"{s['ratio_to_fp32_forward']:.1f}x one fp32 forward pass (sum of the medians of emulate_model + "
        f"forward above: {s['sum_of_parts_ms'] / 1e3:.3f} s); its fp32 logits differ from the original "
        f"model's by at most {s['fp32_logits_max_abs_diff']:.1e}"
    )


def check_targets(devices: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target and device: met when every row under it is met."""
    out = []
    for dev, res in devices.items():
        q = res["quantize"]
        for category, formats, target in (("native cast", NATIVE_FORMATS, NATIVE_TARGET),
                                           ("emulated", EMULATED_FORMATS, EMULATED_TARGET),
                                           ("block-scaled", [n for _, n in BLOCK_CASES], BLOCK_TARGET)):
            rows = [c for c in q["formats"] if c["category"] == category]
            misses = [f"{c['label']} {c['ratio_to_cast']:.2f}x" for c in rows if not c["met"]]
            worst = max(rows, key=lambda c: c["ratio_to_cast"])
            out.append({
                "device": dev,
                "statement": f"quantize to {', '.join(formats)} <= {target:g}x a plain cast",
                "met": not misses,
                "detail": (f"worst: {worst['label']} at {worst['ratio_to_cast']:.2f}x" if not misses
                           else "missed by " + "; ".join(misses)),
            })
        r = res.get("resnet_sweep")
        if r is not None:
            out.append({
                "device": dev,
                "statement": f"{r['name']}: sweep over {len(r['configs'])} configs ({', '.join(r['configs'])}) "
                             f"<= {r['target']:g}x the fp32 forward per config",
                "met": r["met"],
                "detail": f"{r['ratio_per_config']:.2f}x per config",
            })
        for m in res["models"]:
            rows = [c for c in m["configs"] if c["target"] is not None]
            misses = [f"{c['config']} {c['forward_ratio']:.2f}x" for c in rows if not c["met"]]
            worst = max(rows, key=lambda c: c["forward_ratio"])
            out.append({
                "device": dev,
                "statement": f"{m['name']}: forward of every integer config "
                             f"({', '.join(c['config'] for c in rows)}) <= {MODEL_INT_TARGET:g}x the fp32 forward",
                "met": not misses,
                "detail": (f"worst: {worst['config']} at {worst['forward_ratio']:.2f}x" if not misses
                           else "missed by " + "; ".join(misses)),
            })
    return out


def _env_line(report: dict[str, Any]) -> str:
    env = report["environment"]
    load = report["load_average"]
    cpu = report["process_cpu_seconds"]
    gpu = f"; GPU {env['cuda']['device']} (CUDA {env['cuda']['cuda_version']})" if env["cuda"] else "; no GPU"
    git = env.get("git")
    git_text = ""
    if git:
        git_text = f"; git {git['commit'][:10]}" + (
            " with uncommitted changes in precal/emulate" if git["precal_emulate_uncommitted_changes"] else "")
    return (
        f"{env['cpu_model'] or env['machine']} ({env['machine']}), {env['cpu_count']} CPUs, torch threads "
        f"{env['torch_num_threads']}{gpu}; Python {env['python']}, precal {env['precal']}, torch {env['torch']}, "
        f"numpy {env['numpy']}, ml_dtypes {env['ml_dtypes']}{git_text}; load average (1/5/15 min) "
        f"{_fmt_load(load['start'])} at start, {_fmt_load(load['end'])} at end; run time "
        f"{report['total_seconds']:.0f} s, process CPU time {cpu['user']:.0f} s user + {cpu['system']:.0f} s system"
    )


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else "/".join(f"{v:.2f}" for v in load)


def results_markdown(report: dict[str, Any]) -> str:
    lines = ["## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- [{t['device']}] {t['statement']}: {_met_text(t['met'], md=True)} ({t['detail']}).")
    for dev, res in report["devices"].items():
        q = res["quantize"]
        lines += [
            "",
            f"## `quantize` on {dev}: {q['shape'][0]} x {q['shape'][1]} float32",
            "",
            f"Median and minimum wall time over R = {q['repeats']} round-robin rounds after one warm-up call; "
            "`x plain cast` is the median over the plain cast's median, timed in the same rounds; the last "
            "column is the same ratio for torch's own cast round trip to the format's torch dtype (what precal's "
            "native path calls), timed in the same rounds.",
            "",
            markdown_table(QUANT_HEADERS, quant_rows(q, md=True)),
        ]
        for m in res["models"]:
            lines += [
                "",
                f"## Models on {dev}: {m['name']}",
                "",
                _model_caption(m) + ".",
                "",
                markdown_table(MODEL_HEADERS, model_rows(m, md=True)),
                "",
                _sweep_line(m)[0].upper() + _sweep_line(m)[1:] + ".",
            ]
        if res.get("resnet_sweep") is not None:
            lines += ["", f"## Sweep of ResNet-20 on {dev}", "", _resnet_line(res["resnet_sweep"]) + "."]
    lines += ["", "## Environment", "", f"{_env_line(report)}. Run {report['created']}; seed {report['seed']}."]
    cpu = report["process_cpu_seconds"]
    share = cpu["system"] / max(cpu["user"] + cpu["system"], 1e-9)
    rows, cols = report["sizes"]["quant_shape"]
    if share >= 0.25:
        lines += ["", (
            f"{share:.0%} of this process's CPU time was system time. Nearly all of it is the kernel handing out "
            f"fresh zeroed pages: every element-wise torch op on the {rows} x {cols} tensor allocates a new "
            f"{rows * cols * 4 / 2**20:.0f} MB output, which the allocator maps from the OS and unmaps when it is freed, so each op pays for "
            "page faults on top of its arithmetic. The `quantize` ratios above therefore depend on the "
            "machine's page-fault cost and load as well as on precal's arithmetic."
        )]
    return "\n".join(lines) + "\n"


def method_text(report: dict[str, Any]) -> str:
    threads = report["threads"]
    thread_text = (
        f"with torch, OpenMP and BLAS capped at {threads} thread{'s' if threads != 1 else ''} so that CPU "
        "times are per core (`--threads 0` lifts the cap)"
        if isinstance(threads, int) else "with torch's default thread count"
    )
    devices = " and ".join({"cpu": "the CPU", "cuda": "the GPU"}.get(d, d) for d in report["devices"])
    rows, cols = report["sizes"]["quant_shape"]
    return "\n".join([
        "## Method",
        "",
        f"The script `benchmarks/bench_emulate.py` times, on {devices}, {thread_text}; on a GPU every timed "
        "region is bracketed by `torch.cuda.synchronize()`:",
        "",
        f"1. `precal.emulate.quantize(x, fmt)` on a seeded {rows} x {cols} float32 tensor `x = 3 N(0, 1)` for the "
        "formats torch casts natively (fp16, bf16, fp8_e4m3, fp8_e5m2), the formats precal rounds with integer "
        "bit operations (tf32, fp6_e3m2, fp6_e2m3, fp4_e2m1), and integer fake quantization with scales (int8 "
        "and int4 per tensor, int8 per output channel, int4 per group of 128), block-scaled formats "
        "(`block_quantize` along the last axis: MXFP8, MXFP6 (e2m3), MXFP4, MXINT8 with E8M0 floor scales over "
        "blocks of 32, MXFP4 with the RCEIL rule, NVFP4 with e4m3 scales over blocks of 16 and a float32 tensor "
        "scale; and fp4_e2m1 with a float32 scale per group of 32 for comparison), against a plain cast round "
        "trip `x.to(torch.bfloat16).to(torch.float32)` timed in the same run.",
        "2. For the configs " + ", ".join(f"`{c}`" for c in MODEL_CONFIGS) + ", on two models with random "
        "seeded weights: (a) the one-time cost of `emulate_model(model, config, calibration_data=...)` (copy, "
        "BatchNorm folding, weight quantization, activation calibration), (b) one forward pass of the emulated "
        f"copy over the data in batches of {MODEL_BATCH} under `torch.no_grad()`, divided by the same pass of the "
        "original fp32 model (which keeps its BatchNorm layers), and (c) one call of "
        "`sweep(model, data, configs, calibration_data=..., progress=False)` over the whole list. The block "
        "configs " + ", ".join(f"`{c}`" for c in MODEL_BLOCK_CONFIGS) + " (weights and layer inputs in blocks "
        "along the reduction dimension) are timed in (a) and (b) too, outside the sweep and without a target. The tiny "
        "`DigitsCNN` of the demo shows the fixed per-call overhead; `CNN32` (defined in the script, "
        "convolution-bound) shows the cost relative to compute.",
        "",
        "Every operation gets one untimed warm-up call; the timed calls then go round-robin, one call of each "
        "operation per round, so that a change in the machine's load affects all of them alike. Times are "
        "medians of `time.perf_counter`. The machine may be shared: its load average at the start and end of "
        "the run is given under Environment. All numbers on this page are written by the script from its last "
        "run; they depend on the machine.",
        "",
        "## What the targets mean",
        "",
        f"- **Native-cast formats <= {NATIVE_TARGET:g}x a plain cast.** torch has dtypes for fp16, bf16, "
        "fp8_e4m3 (e4m3fn) and fp8_e5m2, so emulating them should cost little more than the cast round trip "
        "itself; precal adds only its argument checks, the float32 carrier and, where torch's overflow rule "
        "differs from the format's, a clamp. Where torch's own cast round trip is itself slower than the bf16 "
        "one (last column of the `quantize` table), that part of the time is torch's.",
        f"- **Emulated formats <= {EMULATED_TARGET:g}x a plain cast.** tf32, fp6 and fp4 have no torch dtype: "
        "precal rounds the float32 bit pattern (ties to even), handles subnormals, overflow, the sign and NaN "
        "with element-wise ops, each of which is a full pass over memory. The target bounds that cost.",
        f"- **Block-scaled formats <= {BLOCK_TARGET:g}x a plain cast** (issue 15). MX and NVFP4 add to the "
        "element rounding a per-block amax, the scale exponent (E8M0) or e4m3 block scale, and two multiplies; "
        "no Python loop runs over blocks.",
        f"- **Integer model configs <= {MODEL_INT_TARGET:g}x the fp32 forward pass.** Once `emulate_model` has "
        "quantized the weights (a one-time cost, reported separately), an emulated forward pass only adds the "
        "fake quantization of each layer's input. The target says that evaluating a model at w8a8/w4a8/w4a4/"
        "w4a16 must not cost more than three fp32 evaluations.",
        "- Integer `quantize` calls, the float configs of the models and `sweep` have no stated target; their "
        "ratios are reported for information.",
    ])


def docs_page(report: dict[str, Any]) -> str:
    return "\n".join([
        "# Speed benchmark: the precision emulator",
        "",
        "<!-- Generated by benchmarks/bench_emulate.py from its results; do not edit by hand. -->",
        "",
        method_text(report),
        "",
        "To rerun (from the repository root):",
        "",
        "```bash",
        RERUN_COMMAND + "                # refreshes benchmarks/results/emulate.{md,json} and this page",
        RERUN_COMMAND + " --quick        # small smoke test, writes to a temporary directory",
        RERUN_COMMAND + " --threads 0    # torch's default thread count",
        RERUN_COMMAND + " --render-only  # rewrite this page from benchmarks/results/emulate.json",
        "```",
        "",
        f"This page was produced by `{report['command']}`.",
        "",
        results_markdown(report),
    ])


def emulate_md(report: dict[str, Any]) -> str:
    title = "# precal emulator speed benchmark" + (" (quick smoke test)" if report["quick"] else "")
    return f"{title}\n\nGenerated by `{report['command']}`.\n\n" + results_markdown(report)


def write_outputs(report: dict[str, Any], out_dir: Path, docs_path: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    files = {
        out_dir / "emulate.json": json.dumps(report, indent=2) + "\n",
        out_dir / "emulate.md": emulate_md(report),
        docs_path: docs_page(report),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)


def print_report(report: dict[str, Any]) -> None:
    for dev, res in report["devices"].items():
        q = res["quantize"]
        print(f"\nquantize on {dev}, {q['shape'][0]} x {q['shape'][1]} float32, R = {q['repeats']}")
        print(text_table(QUANT_HEADERS, quant_rows(q, md=False)))
        for m in res["models"]:
            print(f"\n{_model_caption(m)} [{dev}]")
            print(text_table(MODEL_HEADERS, model_rows(m, md=False)))
            print(_sweep_line(m))
        if res.get("resnet_sweep") is not None:
            print("\n" + _resnet_line(res["resnet_sweep"]))
    print()
    for t in report["targets"]:
        print(f"target [{t['device']}]: {t['statement']}: {_met_text(t['met'], md=False)} ({t['detail']})")
    print("\n" + _env_line(report))


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat; writes to a temp dir")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="write emulate.json, emulate.md and benchmarks-emulate.md here instead of\n"
             "benchmarks/results/ and docs/ (default with --quick: a new temp dir)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="threads for torch, OpenMP and BLAS; 0 = library defaults (default 1)",
    )
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even when CUDA is available")
    parser.add_argument(
        "--render-only", action="store_true",
        help="do not benchmark: rewrite emulate.md and the docs page from an existing emulate.json\n"
             "(in --out DIR, default benchmarks/results/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and weights (default 0)")
    return parser.parse_args(argv)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results dir, docs page): the committed locations only for a full run without --out."""
    if args.out is not None:
        return args.out, args.out / "benchmarks-emulate.md"
    if args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="precal-bench-emulate-"))
        return out_dir, out_dir / "benchmarks-emulate.md"
    return DEFAULT_RESULTS_DIR, DEFAULT_DOCS_PAGE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir, docs_path = output_paths(args)
    if args.render_only:
        source = out_dir / "emulate.json"
        if not source.is_file():
            sys.exit(f"--render-only needs {source}; run the benchmark first.")
        report = json.loads(source.read_text(encoding="utf-8"))
        print_report(report)
        written = write_outputs(report, out_dir, docs_path)
        print("\nrewrote: " + ", ".join(str(p) for p in written))
        return 0
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    limit_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))

    load_start = _load_average()
    wall_start = time.perf_counter()
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    results: dict[str, Any] = {}
    for device in devices:
        print(f"[{device.type}] quantize {sizes.quant_shape[0]} x {sizes.quant_shape[1]} ...", flush=True)
        quant = bench_quantize(device, sizes, args.seed)
        models = []
        for spec in make_models(sizes, args.seed):
            print(f"[{device.type}] {spec['name']}: emulate_model, forward, sweep ...", flush=True)
            models.append(bench_model(spec, device, sizes))
        print(f"[{device.type}] ResNet-20: sweep over {', '.join(RESNET_SWEEP_CONFIGS)} vs fp32 forward ...", flush=True)
        resnet = bench_resnet_sweep(device, sizes, args.seed)
        results[device.type] = {"quantize": quant, "models": models, "resnet_sweep": resnet}
    report = {
        "benchmark": "precal.emulate speed: quantize vs a plain cast; emulated model forward vs fp32",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/bench_emulate.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "seed": args.seed,
        "threads": args.threads or "library defaults",
        "sizes": asdict(sizes),
        "model_configs": list(MODEL_CONFIGS),
        "model_block_configs": list(MODEL_BLOCK_CONFIGS),
        "load_average": {"start": load_start, "end": _load_average()},
        "total_seconds": round(time.perf_counter() - wall_start, 1),
        "process_cpu_seconds": _cpu_seconds(usage_start),
        "environment": environment(args.threads),
        "devices": results,
    }
    report["targets"] = check_targets(results)
    print_report(report)
    written = write_outputs(report, out_dir, docs_path)
    print("\nwrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

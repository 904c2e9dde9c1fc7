"""Seed 000 -- precision-induced miscalibration: the confidence bound, gradient underflow, PACS vs TS.

Seed paper: "Precision-Induced Miscalibration: Understanding and Correcting Confidence
Distortion in Quantized Neural Networks" (project seed 000). Softmax
amplifies logit rounding errors ``|δ_i| <= ε |z_i|``: the confidence moves by at most about
``2 ε ||z|| p (1 - p)``; when the logit margin exceeds a precision-dependent threshold the
cross-entropy gradient underflows to zero; PACS, a per-sample temperature rising with
``ε ||z||``, corrects the resulting miscalibration better than one temperature.

What runs (every number in the outputs comes from this run):

* **Models and data** (``benchmarks.seeds.data``): the pretrained CIFAR-10 ResNet-20 and
  ResNet-56 on the first 5,000 of the JPEG-q75 test copy minus the 256 observer-calibration
  images (``cifar10_jpeg`` limited to ``data.JPEG_FIRST`` rows, for the time budget; seed 002
  uses all 9,744) and on the 1,017 exact test images (``cifar10_lossless``).
* **Compute precisions** (``precal.emulate.emulate_model`` via the cached
  ``data.emulated_logits``): bf16, fp16, fp8_e4m3 on every conv and linear layer (operands
  rounded to the format, products accumulated in float32, outputs rounded to the format --
  bf16 for fp8, whose operands are amax-scaled per tensor); pooling, ReLU and residual
  additions stay float32. fp32 is the reference.
* **Bound**: per sample, the top-confidence gap ``|max p_low - max p_fp32|``
  (``precal.metrics.precision_split``) against ``ε ||z||_2 p (1 - p)`` of the fp32 logits
  ``z`` and fp32 top confidence ``p`` (``ε`` = the format's unit roundoff,
  ``precal.calibration.precision_epsilon``): share of samples inside ``2 ε ||z|| p (1 - p)``
  and Spearman's rank correlation, for the end-to-end low-precision run and for the fp32
  logits only rounded to the format (``precal.emulate.round_logits``, the paper's model).
* **Gradient underflow** (``precal.metrics.gradient_underflow``): share of samples whose
  cross-entropy gradient ``p - e_y`` has an exactly-zero true-class component (and is zero
  altogether) when the softmax of the low-precision logits is evaluated in the format, with
  the margin threshold of ``underflow_margin(format, 10, softmax="stepwise")``.
* **PACS vs TS**: on ``--splits`` (20) stratified 50/50 calibration/test splits, the
  uncalibrated softmax, ``TemperatureScaling``, ``PACSCalibrator(precision=format)`` (default
  ``risk="peaked"``) and the paper's ``risk="norm"``, and beside them (not judged) precal's
  recommended ``AutoCalibrator()``; test ECE, ACE, NLL, accuracy; paired per-split differences
  against TS.
* **Outputs**: ``benchmarks/results/seeds/seed_000.{json,md}``, ``docs/seeds/seed-000.md``,
  ``docs/figures/seed-000-*.png``.

``--quick``: ResNet-20 on the first 400 exact images, 3 splits, into a temp dir (or
``--out``). Missing or unreadable shared data: one line naming the file and the README on
stderr, nothing written, exit status 3. Run from the repository root::

    python benchmarks/seeds/seed_000.py
    python benchmarks/seeds/seed_000.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from benchmarks import harness as h
from benchmarks.seeds import data as sd

NUMBER = "000"
RERUN = "python benchmarks/seeds/seed_000.py"
PAPER = ("Precision-Induced Miscalibration: Understanding and Correcting Confidence Distortion in Quantized Neural "
         "Networks (project seed 000)")
CLAIM = ("Low-precision arithmetic distorts confidence by at most about 2 ε ‖z‖ p (1 − p), silences the "
         "cross-entropy gradient of samples whose logit margin passes a precision-dependent threshold, and PACS "
         "(a temperature rising with ε ‖z‖) corrects the resulting miscalibration better than temperature "
         "scaling.")
MODELS = ("resnet20", "resnet56")
DATASETS = ("cifar10_jpeg", "cifar10_lossless")
FORMATS = ("bf16", "fp16", "fp8_e4m3")
QUICK = {"models": ("resnet20",), "datasets": ("cifar10_lossless",), "limit": 400}
LABELS = {"resnet20": "ResNet-20", "resnet56": "ResNet-56",
          "cifar10_jpeg": f"CIFAR-10 JPEG-q75 (first {sd.JPEG_FIRST:,})",
          "cifar10_lossless": "CIFAR-10 exact (1,017)"}
METHODS = ("uncalibrated", "TS", "PACS", "PACS-norm", "Auto")
#: Compared with TS split by split (Auto, the recommended default, is shown beside the seed's methods, not judged).
VS_TS = ("PACS", "PACS-norm", "Auto")
BOUND_SHARE = 0.9   # the bound "holds" in a setting when at least this share of samples lies inside it
MIN_SPEARMAN = 0.3  # ... and the gap rises with the proxy at least this clearly (rank correlation)


def methods(precision: str) -> dict[str, Any]:
    return h.method_table({"uncalibrated": None, "TS": "ts", "PACS": "pacs", "PACS-norm": "pacs-norm", "Auto": "auto"},
                          precision=precision)[0]


def fit_setting(item: tuple[np.ndarray, np.ndarray, str, int, int]) -> dict[str, Any]:
    """Every method on every split of one (model, data, precision) setting (run in a worker process)."""
    z, y, precision, n_splits, seed = item
    return h.compare_calibrators(z, y, h.make_splits(y, n_splits, seed), methods(precision))


# --------------------------------------------------------------------------- analyses
def bound_analysis(z32: np.ndarray, z_low: np.ndarray, fmt: str) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from precal.calibration import precision_epsilon
    from precal.emulate import round_logits
    from precal.metrics import precision_split

    eps = precision_epsilon(fmt)
    p32 = h.softmax64(z32)
    top = p32.max(axis=1)
    proxy = eps * np.linalg.norm(z32.astype(np.float64), axis=1) * top * (1.0 - top)
    out: dict[str, Any] = {"epsilon": eps, "proxy_median": float(np.median(proxy))}
    for name, z in (("end_to_end", z_low), ("logit_rounding", round_logits(z32, fmt))):
        gap = np.abs(precision_split(p32, h.softmax64(z)).gap)
        rho = spearmanr(gap, proxy).statistic if np.ptp(gap) > 0 else float("nan")
        out[name] = {"share_within_bound": float(np.mean(gap <= 2.0 * proxy)), "spearman": float(rho),
                     "mean_abs_gap": float(gap.mean()), "max_abs_gap": float(gap.max()),
                     "share_gap_zero": float(np.mean(gap == 0)),
                     "median_gap_over_proxy": float(np.median(gap[proxy > 0] / proxy[proxy > 0]))}
        out[f"_{name}_gap"] = gap  # for the figure only; removed before the JSON
    out["_proxy"] = proxy
    return out


def underflow_analysis(z32: np.ndarray, z_low: np.ndarray, y: np.ndarray, fmt: str) -> dict[str, Any]:
    import warnings

    from precal.metrics import gradient_underflow, underflow_margin

    thr = underflow_margin(fmt, z32.shape[1], softmax="stepwise")
    out: dict[str, Any] = {"threshold_stepwise": thr, "threshold_exact": underflow_margin(fmt, z32.shape[1])}
    for name, z in (("low_logits", z_low), ("fp32_logits", z32)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = gradient_underflow(z, y, fmt)
        beyond = g.margin >= thr
        out[name] = {"share_true_class_zero": g.share_true_class_zero, "share_all_zero": g.share_all_zero,
                     "share_margin_beyond_threshold": float(beyond.mean()),
                     "share_zero_among_beyond": float(g.true_class_zero[beyond].mean()) if beyond.any() else None,
                     "share_zero_among_below": float(g.true_class_zero[~beyond].mean()) if (~beyond).any() else None,
                     "n_warnings": len(caught)}
        if name == "fp32_logits":
            out["_margin"] = g.margin
    return out


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    bound_ok, under_ok, pacs_ok, lines = [], [], [], []
    for key, st in report["settings"].items():
        parts = []
        for fmt, r in st["formats"].items():
            b = r["bound"]["end_to_end"]
            ok = b["share_within_bound"] >= BOUND_SHARE and (b["spearman"] or 0) >= MIN_SPEARMAN
            bound_ok.append(ok)
            cmp_ = r["pacs_vs_ts"]["PACS"]["ece"]
            pacs_ok.append(cmp_["verdict"] == "lower")
            parts.append(f"{fmt}: {100 * b['share_within_bound']:.1f} % of samples inside the bound "
                         f"(logit rounding alone: {100 * r['bound']['logit_rounding']['share_within_bound']:.1f} %), "
                         f"Spearman {b['spearman']:.2f}; zero true-class gradient for "
                         f"{100 * r['underflow']['low_logits']['share_true_class_zero']:.2f} % "
                         f"(margin threshold {r['underflow']['threshold_stepwise']:.2f}); "
                         f"ECE % uncal {100 * r['calibration']['summary']['uncalibrated']['ece']['mean']:.2f}, "
                         f"TS {100 * r['calibration']['summary']['TS']['ece']['mean']:.2f}, "
                         f"PACS {100 * r['calibration']['summary']['PACS']['ece']['mean']:.2f} "
                         f"(PACS − TS {100 * cmp_['mean']:+.3f} ± {100 * cmp_['sd']:.3f}, {cmp_['verdict']})")
        sh = {f: st["formats"][f]["underflow"]["low_logits"]["share_true_class_zero"] for f in st["formats"]}
        ordered = all(k in sh for k in FORMATS) and sh["fp8_e4m3"] >= sh["bf16"] >= sh["fp16"] and sh["bf16"] > 0
        mech = all(r["underflow"]["fp32_logits"]["share_zero_among_beyond"] in (None, 1.0)
                   for r in st["formats"].values())
        under_ok.append(ordered and mech)
        lines.append(f"{st['label']}: " + "; ".join(parts) + f". Underflow shares ordered fp8_e4m3 ≥ bf16 ≥ fp16 "
                     f"with bf16 > 0: {'yes' if ordered else 'no'}; every fp32 sample beyond the stepwise "
                     f"threshold underflows: {'yes' if mech else 'no'}.")
    claims = {"bound": (sum(bound_ok), len(bound_ok)), "underflow": (sum(under_ok), len(under_ok)),
              "pacs": (sum(pacs_ok), len(pacs_ok))}
    held = [a == n and n > 0 for a, n in claims.values()]
    if all(held):
        word = "reproduced"
    elif not any(a for a, _ in claims.values()):
        word = "not reproduced"
    else:
        word = "partly reproduced"
    reason = (f"The confidence gap lies inside 2 ε ‖z‖ p (1 − p) for ≥ {100 * BOUND_SHARE:.0f} % of samples "
              f"with Spearman ≥ {MIN_SPEARMAN} in {claims['bound'][0]} of {claims['bound'][1]} model × data × "
              f"format settings; gradient underflow behaves as described (more at lower precision, every sample "
              f"past the margin threshold) in {claims['underflow'][0]} of {claims['underflow'][1]} model × data "
              f"settings; "
              f"PACS has a clearly lower test ECE than TS in {claims['pacs'][0]} of {claims['pacs'][1]} settings.")
    return {"word": word, "reason": reason, "claims": {k: {"holds": a, "of": n} for k, (a, n) in claims.items()},
            "details": lines}


# --------------------------------------------------------------------------- markdown
def tables(report: dict[str, Any]) -> list[str]:
    lines = ["", "### Confidence gap against the bound, and gradient underflow", "",
             "| setting | format | ε | inside 2ε‖z‖p(1−p), end to end % | Spearman | mean abs gap | "
             "inside, logit rounding only % | zero true-class gradient % | zero gradient % | "
             "same, fp32 logits % | margin threshold |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for st in report["settings"].values():
        for fmt, r in st["formats"].items():
            b, u = r["bound"], r["underflow"]
            lines.append(f"| {st['label']} | {fmt} | {b['epsilon']:.3g} | "
                         f"{100 * b['end_to_end']['share_within_bound']:.1f} | "
                         f"{b['end_to_end']['spearman']:.2f} | {b['end_to_end']['mean_abs_gap']:.2e} | "
                         f"{100 * b['logit_rounding']['share_within_bound']:.1f} | "
                         f"{100 * u['low_logits']['share_true_class_zero']:.2f} | "
                         f"{100 * u['low_logits']['share_all_zero']:.2f} | "
                         f"{100 * u['fp32_logits']['share_true_class_zero']:.2f} | {u['threshold_stepwise']:.2f} |")
    for st in report["settings"].values():
        first = next(iter(st["formats"].values()))["calibration"]
        lines += ["", f"### {st['label']}: calibrators", "",
                  f"{st['n']} images, {report['n_splits']} splits of {first['n_calibration']} calibration / "
                  f"{first['n_test']} test; mean ± sd over splits; − TS is the method's paired per-split "
                  f"difference to temperature scaling.", "",
                  "| precision | method | accuracy % | ECE % | ACE % | NLL | − TS, ECE pts |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for fmt, r in {"fp32": {"calibration": st["fp32_calibration"], "pacs_vs_ts": st["fp32_pacs_vs_ts"]},
                       **st["formats"]}.items():
            for m in METHODS:
                s = r["calibration"]["summary"][m]
                c = r["pacs_vs_ts"].get(m, {}).get("ece")
                diff = (f"{100 * c['mean']:+.3f} ± {100 * c['sd']:.3f} ({c['verdict']}, lower on "
                        f"{c['n_lower']}/{c['n']})" if c else "")
                lines.append(f"| {fmt if m == 'uncalibrated' else ''} | {m} | {h.fmt_ms(s['accuracy'], 100, 2)} | "
                             f"{h.fmt_ms(s['ece'], 100, 2)} | {h.fmt_ms(s['ace'], 100, 2)} | "
                             f"{h.fmt_ms(s['nll'], 1, 4)} | {diff} |")
    return lines


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = (["**Quick smoke test** (`--quick`): one model, 400 images, 3 splits; not the study's results.", ""]
             if report["quick"] else [])
    notes += [x for w in report["warnings"] for x in (w, "")]
    method = [
        "- **Models and data**: " + "; ".join(f"{st['label']} ({st['n']} images)" for st in report["settings"].values())
        + (". The JPEG-q75 set is cut to its first rows for the time budget of the full set of studies "
           "(30 min on 2 CPU cores); seed 002 uses all of it." if any(
               st["dataset"] == "cifar10_jpeg" for st in report["settings"].values()) else "."),
        f"- **Compute precision** (`precal.emulate.emulate_model`): {', '.join(report['formats'])} on every "
        "conv and linear layer: operands rounded to the format, products accumulated in float32, outputs "
        "rounded to the format (bf16 for fp8_e4m3, whose operands are amax-scaled per tensor); ReLU, pooling "
        "and residual additions in float32. Reference: fp32.",
        "- **Bound**: per sample, the gap between the top confidences at the format and at fp32 "
        "(`precision_split`) against `ε ‖z‖₂ p (1 − p)` of the fp32 logits (`ε` the unit roundoff: "
        "`precision_epsilon`); inside the bound means gap ≤ 2 ε ‖z‖ p (1 − p). The paper derives it for "
        "logits "
        "rounded once (`|δ_i| ≤ ε |z_i|`), so it is also checked with the fp32 logits only rounded to the "
        "format (`round_logits`); the end-to-end run accumulates rounding through the whole network.",
        "- **Gradient underflow**: `gradient_underflow` with the softmax of the low-precision logits evaluated "
        "step by step in the format; threshold `underflow_margin(format, 10, softmax=\"stepwise\")`.",
        f"- **Calibrators**: {report['n_splits']} stratified 50/50 splits (split s from "
        f"`default_rng(seed + s)`), `TemperatureScaling` vs `PACSCalibrator(precision=format)` with the default "
        f"`risk=\"peaked\"` and the paper's `risk=\"norm\"`, and beside them (not part of the verdict) precal's "
        f"recommended `AutoCalibrator()`; test ECE/ACE ({h.N_BINS} bins), NLL, accuracy. "
        f"A difference is clear when the mean paired per-split difference is beyond one standard deviation.",
    ]
    run_note = (f", CPU time {report['cpu_time_s']:.0f} s (worker processes included; `--threads {report['threads']}`; "
                f"{report['logits_cache']['computed']} emulated logit sets computed, "
                f"{report['logits_cache']['read']} read from the cache of earlier runs)")
    return h.claim_pages(report, title="Seed 000: precision-induced miscalibration", results_title="Seed 000: results",
                         rerun=RERUN, json_name="seeds/seed_000.json", doc_name="seeds/seed-000.md", source=PAPER,
                         claim=CLAIM, run_note=run_note, notes=notes, method=method, tables=tables(report))


# --------------------------------------------------------------------------- figures
def figures(report: dict[str, Any], arrays: dict[str, Any], staged: h.StagedOutputs,
            paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    out = []
    for key, st in report["settings"].items():
        if st["dataset"] != report["figure_dataset"]:
            continue
        fmts = list(st["formats"])
        fig = Figure(figsize=(4.0 * len(fmts), 3.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(fmts)))
        for ax, fmt in zip(axes, fmts):
            a = arrays[key][fmt]
            proxy = a["proxy"]
            floor = 1e-9
            ax.scatter(np.maximum(proxy, floor), np.maximum(a["logit_rounding"], floor), s=2, c="0.7",
                       label="fp32 logits rounded to the format", rasterized=True)
            ax.scatter(np.maximum(proxy, floor), np.maximum(a["end_to_end"], floor), s=2, c="C3", alpha=0.5,
                       label="whole network in the format", rasterized=True)
            lo, hi = max(floor, proxy[proxy > 0].min() if (proxy > 0).any() else floor), max(proxy.max(), 1e-6)
            xs = np.geomspace(lo, hi, 50)
            ax.plot(xs, 2 * xs, "k--", lw=1, label="bound 2 ε‖z‖p(1−p)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(bottom=floor / 2)
            b = st["formats"][fmt]["bound"]["end_to_end"]
            ax.set_title(f"{fmt}: {100 * b['share_within_bound']:.1f} % inside, Spearman {b['spearman']:.2f}",
                         fontsize="small")
            ax.set_xlabel("ε ‖z‖ p (1 − p), fp32")
            ax.set_ylabel(f"|confidence gap| (zero shown at {floor:g})")
        axes[0].legend(fontsize="x-small", loc="upper left", markerscale=4)
        fig.suptitle(st["label"], fontsize="medium")
        out.append({"path": h.save_figure(fig, staged, paths, f"seed-000-bound-{st['model']}.png"),
                    "caption": f"{st['label']}: per-sample top-confidence gap to fp32 against ε ‖z‖ p (1 − p), "
                               f"with the bound 2 ε ‖z‖ p (1 − p) (dashed); red: the whole network computed in "
                               f"the format, grey: only the fp32 logits rounded to it."})
    keys = [k for k, st in report["settings"].items() if st["dataset"] == report["figure_dataset"]]
    fig = Figure(figsize=(4.4 * len(keys), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        st = report["settings"][key]
        margin = arrays[key]["margin"]
        ax.hist(margin, bins=80, color="0.6")
        for i, (fmt, r) in enumerate(st["formats"].items()):
            u = r["underflow"]
            ax.axvline(u["threshold_stepwise"], color=f"C{i}", ls="--",
                       label=f"{fmt}: m* = {u['threshold_stepwise']:.1f}, "
                             f"{100 * u['low_logits']['share_true_class_zero']:.1f} % zero gradient")
        ax.set_xlabel("fp32 logit margin z_y − max_{j≠y} z_j")
        ax.set_ylabel("samples")
        ax.set_title(st["label"], fontsize="small")
        ax.legend(fontsize="x-small")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-000-underflow.png"),
                "caption": "True-class logit margins at fp32, with each format's stepwise underflow threshold "
                           "(dashed) and the share of samples whose cross-entropy gradient has an exactly-zero "
                           "true-class component when the model and its softmax run in that format."})
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd.add_study_arguments(parser)
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    paths = sd.output_paths(NUMBER, args)
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    models = QUICK["models"] if args.quick else MODELS
    datasets = QUICK["datasets"] if args.quick else DATASETS
    limit = QUICK["limit"] if args.quick else None
    opts = sd.emulation_options(args)
    print(f"seed 000: {', '.join(models)} on {', '.join(datasets)}, formats {', '.join(FORMATS)}, "
          f"{args.splits} splits{' (quick)' if args.quick else ''}", flush=True)
    limits = {d: limit if args.quick else sd.JPEG_FIRST if d == "cifar10_jpeg" else None for d in datasets}
    loaded = {d: sd.load_dataset(d, limit=limits[d]) for d in datasets}

    logits: dict[tuple[str, str, str], np.ndarray] = {}
    for model in models:
        for config in ("fp32", *FORMATS):
            for d in datasets:
                t0 = time.perf_counter()
                logits[model, d, config] = sd.emulated_logits(model, loaded[d], config, **opts)
                print(f"  {model} {d} {config}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    keys = [(m, d, c) for m in models for d in datasets for c in ("fp32", *FORMATS)]
    fits = dict(zip(keys, h.parallel_map(fit_setting, [(logits[k], loaded[k[1]].labels, k[2], args.splits, args.seed)
                                                        for k in keys], args.threads)))
    print(f"  calibrators fitted in {time.perf_counter() - t0:.1f} s ({args.threads} processes)", flush=True)

    settings: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    fit_warnings: dict[str, Any] = {}
    for model in models:
        for d in datasets:
            y = loaded[d].labels
            key = f"{model}/{d}"
            z32 = logits[model, d, "fp32"]
            fp32_cal = fits[model, d, "fp32"]
            h.merge_warnings(fit_warnings, fp32_cal)
            st: dict[str, Any] = {"label": f"{LABELS[model]}, {LABELS[d]}", "model": model, "dataset": d,
                                  "n": int(len(y)), "fp32_calibration": fp32_cal, "formats": {}}
            arrays[key] = {}
            for fmt in FORMATS:
                zl = logits[model, d, fmt]
                bound = bound_analysis(z32, zl, fmt)
                under = underflow_analysis(z32, zl, y, fmt)
                cal = fits[model, d, fmt]
                h.merge_warnings(fit_warnings, cal)
                arrays[key][fmt] = {"proxy": bound.pop("_proxy"), "end_to_end": bound.pop("_end_to_end_gap"),
                                    "logit_rounding": bound.pop("_logit_rounding_gap")}
                arrays[key]["margin"] = under.pop("_margin")
                st["formats"][fmt] = {"bound": bound, "underflow": under, "calibration": cal}
                s = cal["summary"]
                print(f"  {key} {fmt}: inside bound {100 * bound['end_to_end']['share_within_bound']:.1f} %, "
                      f"zero grad {100 * under['low_logits']['share_true_class_zero']:.2f} %, ECE % "
                      + "  ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}" for m in METHODS), flush=True)
            settings[key] = st

    for st in settings.values():
        for r in [*st["formats"].values(), None]:
            cal = r["calibration"] if r is not None else st["fp32_calibration"]
            cmp_ = {m: {"ece": h.paired(cal["per_split"][m]["ece"], cal["per_split"]["TS"]["ece"]),
                        "nll": h.paired(cal["per_split"][m]["nll"], cal["per_split"]["TS"]["nll"])}
                    for m in VS_TS}
            if r is None:
                st["fp32_pacs_vs_ts"] = cmp_
            else:
                r["pacs_vs_ts"] = cmp_
    report: dict[str, Any] = {
        "study": "seed 000: precision-induced miscalibration in CIFAR-10 ResNets",
        "paper": PAPER, "claim": CLAIM, "script": "benchmarks/seeds/seed_000.py", "date": h.utc_now(),
        "quick": args.quick, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "versions": h.versions(), "formats": list(FORMATS), "figure_dataset": datasets[0],
        "criteria": {"bound_share": BOUND_SHARE, "min_spearman": MIN_SPEARMAN,
                     "clear": "mean paired per-split difference beyond one sd"},
        "datasets": {d: {"n": int(len(ds.labels)), "description": ds.description, "files": list(ds.files)}
                     for d, ds in loaded.items()},
        "settings": settings, "warnings": h.warning_notes(fit_warnings),
    }
    report["figures"] = figures(h.json_ready(report), arrays, staged, paths)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)
    report = h.json_ready(report)
    report["verdict"] = verdict(report)
    results_md, doc_md = render(report)
    written = h.write_study(staged, paths, report, results_md, doc_md)
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("seed_000", main))

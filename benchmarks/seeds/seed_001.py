"""Seed 001 -- which predictions does post-training quantization swap, and what does it cost?

Seed paper: Xia, Ha, Azevedo and Maji, "An Underexplored Dilemma between Confidence and
Calibration in Quantized Neural Networks": with activations at 8 bit and weights going from
8 down to 4 bit, the predictions that change are at first the low-confidence ones, which are
also the inaccurate ones, so many swaps cost little accuracy; the ratio of the change in
error rate to the share of swapped predictions grows once higher-confidence predictions
start to swap (their Figures 1 and 2).

What runs (every number in the outputs comes from this run):

* **Models and data** (``benchmarks.seeds.data``): the pretrained CIFAR-10 ResNet-20 and
  ResNet-56 on the first 5,000 of the JPEG-q75 test copy minus the 256 observer-calibration
  images (``cifar10_jpeg`` limited to ``data.JPEG_FIRST`` rows, for the time budget; seed 002
  uses all 9,744) and on the 1,017 exact test images (``cifar10_lossless``); the
  all-MiniLM-L6-v2 + linear head pipeline on the 1,934 Financial PhraseBank test sentences
  (``fpb_test``; skipped with a note when the encoder package is not installed).
* **Precisions** (``precal.emulate.emulate_model`` via the cached ``data.emulated_logits``):
  fp32 and W8A8, W7A8, W6A8, W5A8, W4A8 -- weights per-output-channel symmetric after
  BatchNorm folding, activations per-tensor asymmetric with MSE-observer ranges calibrated on
  held-out inputs (ResNets: 256 JPEG test images in neither evaluation set; MiniLM: the first
  256 head-training sentences); first conv / last linear (MiniLM: the head) kept at W8A8.
* **Analyses** (``precal.metrics``): ``swap_analysis`` of every config against the fp32
  softmax -- share of swapped predictions, change in error rate, their ratio, right→wrong /
  wrong→right / wrong→wrong counts and the swaps histogrammed over fp32 confidence (10 bins)
  -- and the fp32 reliability (``reliability_curve``, ECE) of each model (the paper's
  Figure 1). No calibrator is fitted here, so there are no splits.
* **Backend-faithful int8** (ResNets only; a contrast, not part of the verdict): the same swap
  analysis at ``w8a8-x86``, torch.ao's x86 int8 recipe as ``precal.emulate`` emulates it
  (uint8 activations with ``reduce_range`` at every layer output and residual addition,
  histogram observer, every layer at int8), beside the static ``w8a8``; its logits are
  seed 002's (the same cache entries).
* **Outputs**: ``benchmarks/results/seeds/seed_001.{json,md}``, ``docs/seeds/seed-001.md``,
  ``docs/figures/seed-001-*.png``.

``--quick``: ResNet-20 on the first 400 exact images (and its ``w8a8-x86``) and MiniLM on the first 120 test
sentences, at fp32, W8A8, W4A8, observers on 128 inputs; into a temp dir (or ``--out``).
Missing or unreadable shared data: one line naming the file and the README on stderr,
nothing written, exit status 3. Run from the repository root::

    python benchmarks/seeds/seed_001.py
    python benchmarks/seeds/seed_001.py --quick
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

NUMBER = "001"
RERUN = "python benchmarks/seeds/seed_001.py"
PAPER = ("Xia, Ha, Azevedo and Maji: An Underexplored Dilemma between Confidence and Calibration in Quantized "
         "Neural Networks")
CLAIM = ("As weight precision falls (activations at 8 bit), post-training quantization first swaps low-confidence "
         "predictions, which are mostly wrong already, so the error rate rises far less than the share of swapped "
         "predictions; the ratio of the two grows once higher-confidence predictions start to swap.")
SETTINGS = (("resnet20", "cifar10_jpeg"), ("resnet56", "cifar10_jpeg"), ("minilm", "fpb_test"),
            ("resnet20", "cifar10_lossless"), ("resnet56", "cifar10_lossless"))
QUICK_SETTINGS = (("resnet20", "cifar10_lossless", 400), ("minilm", "fpb_test", 120))
CONFIGS = ("w8a8", "w7a8", "w6a8", "w5a8", "w4a8")
QUICK_CONFIGS = ("w8a8", "w4a8")
LABELS = {"resnet20": "ResNet-20", "resnet56": "ResNet-56", "minilm": "MiniLM + head",
          "cifar10_jpeg": f"CIFAR-10 JPEG-q75 (first {sd.JPEG_FIRST:,})", "cifar10_lossless": "CIFAR-10 exact (1,017)",
          "fpb_test": "FPB test"}
N_SWAP_BINS = 10
MIN_SWAPS = 5  # fewer swaps than this: the swap-confidence checks are not evaluated for that config
#: Backend-faithful int8 (torch.ao's x86 recipe), beside the static W8A8; needs a model torch.fx traces.
X86 = "w8a8-x86"
X86_MODELS = ("resnet20", "resnet56")


def label(model: str, ds: str) -> str:
    return f"{LABELS[model]}, {LABELS[ds]}"


# --------------------------------------------------------------------------- analysis
def fp32_reliability(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from precal.metrics import expected_calibration_error, reliability_curve

    conf = p.max(axis=1)
    right = p.argmax(axis=1) == y
    curve = reliability_curve(y, p, n_bins=h.N_BINS)
    high = conf >= 0.5
    return {"accuracy": float(right.mean()), "mean_confidence": float(conf.mean()),
            "ece": expected_calibration_error(y, p, n_bins=h.N_BINS),
            "overconfidence_above_0.5": float(conf[high].mean() - right[high].mean()) if high.any() else None,
            "share_above_0.5": float(high.mean()),
            "curve": {"bin_edges": curve.bin_edges, "counts": curve.counts, "accuracy": curve.accuracy,
                      "mean_confidence": curve.mean_confidence}}


def swaps(y: np.ndarray, p32: np.ndarray, plow: np.ndarray) -> dict[str, Any]:
    from precal.metrics import swap_analysis

    r = swap_analysis(y, p32, plow, n_bins=N_SWAP_BINS)
    conf = p32.max(axis=1)
    sw = conf[r.swapped]
    return {"n_swapped": r.n_swapped, "share_swapped": r.share_swapped, "error_fp32": r.error_ref,
            "error_low": r.error_low, "error_change": r.error_change, "ratio": r.ratio,
            "n_right_to_wrong": r.n_right_to_wrong, "n_wrong_to_right": r.n_wrong_to_right,
            "n_wrong_to_wrong": r.n_wrong_to_wrong, "bin_edges": r.bin_edges, "counts": r.counts,
            "mean_fp32_conf_swapped": float(sw.mean()) if sw.size else None,
            "median_fp32_conf_swapped": float(np.median(sw)) if sw.size else None,
            "fp32_accuracy_of_swapped": float(np.mean(p32.argmax(axis=1)[r.swapped] == y[r.swapped])) if sw.size
            else None}


def setting_checks(st: dict[str, Any]) -> dict[str, Any]:
    """The paper's three observations, tested on one model × data setting."""
    cfg = list(st["configs"])
    share = [st["configs"][c]["share_swapped"] for c in cfg]
    n_down = sum(b < a for a, b in zip(share, share[1:]))
    grows = share[-1] > share[0] and n_down <= 1
    mean_conf = st["fp32"]["mean_confidence"]
    enough = [c for c in cfg if st["configs"][c]["n_swapped"] >= MIN_SWAPS]
    low_first = bool(enough) and all(st["configs"][c]["mean_fp32_conf_swapped"] < mean_conf for c in enough)
    # the error rate rises by at most half the share swapped: (right->wrong - wrong->right) <= swapped / 2
    cheap = all(2 * (st["configs"][c]["n_right_to_wrong"] - st["configs"][c]["n_wrong_to_right"])
                <= st["configs"][c]["n_swapped"] for c in enough)
    ends = [c for c in (cfg[0], cfg[-1]) if c in enough]
    ratio_grows = (st["configs"][cfg[-1]]["ratio"] >= st["configs"][cfg[0]]["ratio"]) if len(ends) == 2 else None
    conf_swapped = [st["configs"][c]["mean_fp32_conf_swapped"] for c in enough]
    conf_rises = conf_swapped[-1] > conf_swapped[0] if len(enough) >= 2 else None
    return {"swaps_grow": grows, "low_confidence_first": low_first, "error_change_small": cheap,
            "ratio_grows": ratio_grows, "swap_confidence_rises": conf_rises, "configs_with_enough_swaps": enough,
            "consistent": bool(grows and low_first and cheap and ratio_grows is not False)}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    lines, consistent = [], []
    for key, st in report["settings"].items():
        ch = st["checks"]
        consistent.append(ch["consistent"])
        cfg = list(st["configs"])
        c0, c1 = st["configs"][cfg[0]], st["configs"][cfg[-1]]
        ratio_text = ("" if ch["ratio_grows"] is None else
                      f"; the ratio {'grows' if ch['ratio_grows'] else 'does not grow'} ({c0['ratio']:+.2f} at "
                      f"{cfg[0]}, {c1['ratio']:+.2f} at {cfg[-1]})")
        rises = "rises" if ch["swap_confidence_rises"] else "does not rise"
        conf_text = ("" if ch["swap_confidence_rises"] is None else
                     f"; the swapped predictions' mean fp32 confidence {rises} as bits fall")
        small = (f"a rise of at most half the share swapped at every config with ≥ {MIN_SWAPS} swaps"
                 if ch["error_change_small"] else "not always small")
        below = (f"below at every config with ≥ {MIN_SWAPS} swaps" if ch["low_confidence_first"]
                 else "not always below")
        lines.append(
            f"{st['label']}: swapped {100 * c0['share_swapped']:.2f} % at {cfg[0]} → "
            f"{100 * c1['share_swapped']:.2f} % "
            f"at {cfg[-1]} ({'grows' if ch['swaps_grow'] else 'does not grow steadily'}); error rate "
            f"{100 * c0['error_change']:+.2f} → {100 * c1['error_change']:+.2f} points "
            f"({small}); "
            f"swapped predictions have mean fp32 confidence "
            + ", ".join(f"{st['configs'][c]['mean_fp32_conf_swapped']:.2f}" for c in ch["configs_with_enough_swaps"])
            + f" against {st['fp32']['mean_confidence']:.2f} over all samples"
            f" ({below})" + ratio_text + conf_text
            + f"; fp32 ECE {100 * st['fp32']['ece']:.2f} %, confidence − accuracy above 0.5: "
            f"{100 * (st['fp32']['overconfidence_above_0.5'] or 0):+.2f} points.")
    for st in report["settings"].values():
        if "x86" in st:
            w, x = st["configs"]["w8a8"], st["x86"]
            lines.append(f"{st['label']}, {X86} (backend-faithful, not judged) vs w8a8 (static): swapped "
                         f"{100 * x['share_swapped']:.2f} % vs {100 * w['share_swapped']:.2f} %, error rate "
                         f"{100 * x['error_change']:+.2f} vs {100 * w['error_change']:+.2f} points.")
    n = len(consistent)
    word = ("reproduced" if n and all(consistent) else "not reproduced" if not any(consistent)
            else "partly reproduced")
    reason = (f"the four observations (swaps grow as weight bits fall; swapped predictions are less confident "
              f"than average; the error rate rises by at most half the share swapped; the ratio of the two is "
              f"larger at the lowest than at the highest precision) all hold in {sum(consistent)} of {n} model × "
              f"data settings (configs with fewer than {MIN_SWAPS} swaps are not judged).")
    return {"word": word, "reason": reason[0].upper() + reason[1:], "details": lines}


# --------------------------------------------------------------------------- markdown
def table(report: dict[str, Any]) -> list[str]:
    lines = ["| setting | n | fp32 acc % | fp32 ECE % | config | swapped % | Δ error, pts | ratio | right→wrong | "
             "wrong→right | wrong→wrong | mean fp32 conf. of swapped (all) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for st in report["settings"].values():
        for i, (c, r) in enumerate(st["configs"].items()):
            head = (f"| {st['label']} | {st['n']} | {100 * st['fp32']['accuracy']:.2f} | {100 * st['fp32']['ece']:.2f} "
                    if i == 0 else "| | | | ")
            conf = "–" if r["mean_fp32_conf_swapped"] is None else f"{r['mean_fp32_conf_swapped']:.3f}"
            lines.append(f"{head}| {c} | {100 * r['share_swapped']:.2f} | {100 * r['error_change']:+.2f} | "
                         f"{r['ratio']:+.3f} | {r['n_right_to_wrong']} | {r['n_wrong_to_right']} | "
                         f"{r['n_wrong_to_wrong']} | {conf} ({st['fp32']['mean_confidence']:.3f}) |")
    return lines


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = [n for note in report["notes"] for n in (note, "")]
    if report["quick"]:
        notes = ["**Quick smoke test** (`--quick`): subsets and fewer configs; not the study's results.", ""] + notes
    p = report["protocol"]
    method = [
        "- **Models and data**: " + "; ".join(f"{st['label']} ({st['n']} samples)"
                                              for st in report["settings"].values())
        + (". The JPEG-q75 set is cut to its first rows for the time budget of the full set of studies "
           "(30 min on 2 CPU cores); seed 002 uses all of it." if any(
               st["dataset"] == "cifar10_jpeg" for st in report["settings"].values()) else "."),
        f"- **Quantization** (`precal.emulate.emulate_model`): {', '.join(p['configs'])} against fp32. Weights "
        f"per-output-channel symmetric after BatchNorm folding; activations (every conv/linear input) "
        f"per-tensor asymmetric with the `{p['observer']}` observer (as the paper's histogram/MSE observer), "
        f"calibrated on held-out inputs ({p['calibration']}); {p['overrides']}. The paper quantized every "
        f"layer; keeping the ends at 8 bit is the common deployment choice and is what seed 002 uses, so the "
        f"two studies share their logits.",
        "- **Analysis**: `precal.metrics.swap_analysis` of each config's softmax against the fp32 softmax "
        f"(float64): share of predictions whose argmax changed, change in error rate, their ratio and the "
        f"swaps histogrammed over fp32 top confidence ({N_SWAP_BINS} equal-width bins, unnormalised as in the "
        f"paper); fp32 reliability with {h.N_BINS} bins. The swap-confidence checks skip configs with fewer "
        f"than {MIN_SWAPS} swaps.",
    ]
    run_note = (f", CPU time {report['cpu_time_s']:.0f} s (worker processes included; `--threads {report['threads']}`; "
                f"{report['logits_cache']['computed']} emulated logit sets computed, "
                f"{report['logits_cache']['read']} read from the cache of earlier runs)")
    tables = table(report) + x86_table(report)
    return h.claim_pages(report, title="Seed 001: swapped predictions under post-training quantization",
                         results_title="Seed 001: results", rerun=RERUN, json_name="seeds/seed_001.json",
                         doc_name="seeds/seed-001.md", source=PAPER, claim=CLAIM, run_note=run_note, notes=notes,
                         method=method, tables=tables, doc_tables=[""] + tables)


def x86_table(report: dict[str, Any]) -> list[str]:
    """Swaps at the backend-faithful int8 mode beside the static W8A8 (ResNet settings)."""
    rows = [(st, c, st[k] if k == "x86" else st["configs"][c]) for st in report["settings"].values() if "x86" in st
            for k, c in (("configs", "w8a8"), ("x86", X86))]
    if not rows:
        return []
    lines = ["", f"**Backend-faithful int8** (`{X86}`: torch.ao's x86 recipe, every layer output and residual "
                 f"addition quantized, `reduce_range`, histogram observer, all layers at int8) beside the static "
                 f"`w8a8` (layer inputs only, ends at W8A8, MSE observer), against fp32:", "",
             "| setting | config | swapped % | Δ error, pts | ratio | right→wrong | wrong→right | wrong→wrong | "
             "mean fp32 conf. of swapped |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for st, c, r in rows:
        conf = "–" if r["mean_fp32_conf_swapped"] is None else f"{r['mean_fp32_conf_swapped']:.3f}"
        lines.append(f"| {st['label'] if c == 'w8a8' else ''} | {c} | {100 * r['share_swapped']:.2f} | "
                     f"{100 * r['error_change']:+.2f} | {r['ratio']:+.3f} | {r['n_right_to_wrong']} | "
                     f"{r['n_wrong_to_right']} | {r['n_wrong_to_wrong']} | {conf} |")
    return lines


# --------------------------------------------------------------------------- figures
def figures(report: dict[str, Any], probs: dict[str, Any], staged: h.StagedOutputs,
            paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    from precal.plotting import reliability_diagram

    out = []
    keys = list(report["settings"])
    fig = Figure(figsize=(3.6 * len(keys), 4.6), layout="constrained")
    axes = fig.subplots(2, len(keys), gridspec_kw={"height_ratios": (3, 1)}, squeeze=False)
    for j, key in enumerate(keys):
        st = report["settings"][key]
        y, p32 = probs[key]["y"], probs[key]["fp32"]
        ax = reliability_diagram(y, p32, ax=axes[0, j], label="fp32", n_bins=h.N_BINS)
        ax.set_title(st["label"], fontsize="small")
        ax.set_xlabel("")
        curve = st["fp32"]["curve"]
        edges = np.asarray(curve["bin_edges"])
        axes[1, j].bar((edges[:-1] + edges[1:]) / 2, curve["counts"], width=np.diff(edges), color="C0", alpha=0.6)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("fp32 confidence")
        axes[1, j].set_ylabel("samples")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-001-reliability.png"),
                "caption": "Figure 1 of the paper, on our models: fp32 reliability diagrams (accuracy per confidence "
                           "bin, ECE in the legend) and confidence histograms."})

    fig = Figure(figsize=(13.0, 2.9 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 4, squeeze=False)
    for i, key in enumerate(keys):
        st = report["settings"][key]
        cfg = list(st["configs"])
        x = np.arange(len(cfg))
        rows = [("share_swapped", "swapped %", 100), ("error_change", "Δ error rate, pts", 100), ("ratio", "ratio", 1)]
        for ax, (field, name, scale) in zip(axes[i, :3], rows):
            ax.plot(x, [scale * st["configs"][c][field] for c in cfg], "o-")
            ax.set_xticks(x, cfg, fontsize="small")
            ax.set_ylabel(name)
            ax.axhline(0, color="0.6", lw=0.8)
        axes[i, 0].set_title(st["label"], fontsize="small", loc="left")
        ax = axes[i, 3]
        for c in cfg:
            r = st["configs"][c]
            ax.stairs(r["counts"], r["bin_edges"], label=c)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fp32 confidence")
        ax.set_ylabel("swapped predictions")
        ax.legend(fontsize="x-small")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-001-swaps.png"),
                "caption": "Figure 2 of the paper, on our models: from fp32 to each config, the share of swapped "
                           "predictions, the change in error rate, their ratio, and the swapped predictions "
                           "histogrammed over fp32 confidence (unnormalised)."})
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd.add_study_arguments(parser)
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    paths = sd.output_paths(NUMBER, args)
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    settings = QUICK_SETTINGS if args.quick else tuple((m, d, sd.JPEG_FIRST if d == "cifar10_jpeg" else None)
                                                       for m, d in SETTINGS)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    opts = sd.emulation_options(args)
    print(f"seed 001: {len(settings)} model × data settings, configs {', '.join(configs)}"
          f"{' (quick)' if args.quick else ''}", flush=True)

    notes: list[str] = []
    loaded = {}
    for model, ds, limit in settings:  # DataError on a required file: skip before any work
        if model == "minilm":
            try:
                sd.minilm_weights_path()
            except sd.DataError as exc:
                notes.append(f"**MiniLM part skipped**: {exc}.")
                print(f"  MiniLM part skipped: {exc}", flush=True)
                continue
        loaded[model, ds] = sd.load_dataset(ds, limit=limit)

    results: dict[str, Any] = {}
    probs: dict[str, Any] = {}
    by_model: dict[str, list[str]] = {}
    for model, ds in loaded:
        by_model.setdefault(model, []).append(ds)
    for model, dss in by_model.items():
        logits: dict[tuple[str, str], np.ndarray] = {}
        for config in ("fp32", *configs):  # config outer: one emulated copy serves both CIFAR sets
            for ds in dss:
                t0 = time.perf_counter()
                logits[ds, config] = sd.emulated_logits(model, loaded[model, ds], config,
                                                        overrides=sd.ends_at_8bit(model, config), **opts)
                print(f"  {model} {ds} {config}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
        if model in X86_MODELS:
            for ds in dss:
                t0 = time.perf_counter()
                logits[ds, X86] = sd.emulated_logits(model, loaded[model, ds], X86, observer="histogram", **opts)
                print(f"  {model} {ds} {X86}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
        for ds in dss:
            y = loaded[model, ds].labels
            p32 = h.softmax64(logits[ds, "fp32"])
            key = f"{model}/{ds}"
            st = {"label": label(model, ds), "model": model, "dataset": ds, "n": int(len(y)),
                  "fp32": fp32_reliability(y, p32),
                  "configs": {c: swaps(y, p32, h.softmax64(logits[ds, c])) for c in configs}}
            if (ds, X86) in logits:
                st["x86"] = swaps(y, p32, h.softmax64(logits[ds, X86]))
            results[key] = st
            probs[key] = {"y": y, "fp32": p32}
    # the paper's order: the CIFAR JPEG settings and MiniLM first
    order = [f"{m}/{d}" for m, d, *_ in (SETTINGS if not args.quick else QUICK_SETTINGS)]
    results = {k: results[k] for k in order if k in results}
    report: dict[str, Any] = {
        "study": "seed 001: swapped predictions under post-training quantization",
        "paper": PAPER, "claim": CLAIM, "script": "benchmarks/seeds/seed_001.py", "date": h.utc_now(),
        "quick": args.quick, "threads": args.threads, "versions": h.versions(), "notes": notes,
        "protocol": {"configs": list(configs), "observer": "mse",
                     "calibration": "; ".join(sorted({ds.calibration_note for ds in loaded.values()})),
                     "overrides": "the first conv and the last linear (MiniLM: the head) at W8A8"},
        "datasets": {f"{m}/{d}": {"description": ds.description, "n": int(len(ds.labels)), "files": list(ds.files)}
                     for (m, d), ds in loaded.items()},
        "settings": results,
    }
    report = h.json_ready(report)
    for st in report["settings"].values():
        st["checks"] = setting_checks(st)
    report["figures"] = figures(report, probs, staged, paths)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)
    report["verdict"] = verdict(report)
    results_md, doc_md = render(report)
    written = h.write_study(staged, paths, report, results_md, doc_md)
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("seed_001", main))

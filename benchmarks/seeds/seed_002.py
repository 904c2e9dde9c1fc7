"""Seed 002 -- calibration of quantized CIFAR-10 ResNets, uncalibrated vs three post-hoc calibrators.

Seed paper: "On Calibration of Modern Quantized Efficient Neural Networks" (arXiv:2309.13866):
calibration error grows as post-training quantization precision falls (fp32 -> W8A8 -> W4A8
-> W4A4), tracking the accuracy loss; temperature scaling helps, with limits at 4 bit.

What runs (every number in the outputs comes from this run):

* **Models and data** (``benchmarks.seeds.data``): the pretrained CIFAR-10 ResNet-20 and
  ResNet-56 on the 1,017 exact test images (``cifar10_lossless``) and on the JPEG-q75
  copy of the test set minus the 256 images that calibrate the activation observers
  (``cifar10_jpeg``, 9,744 images).
* **Precisions** (``precal.emulate.emulate_model`` through ``data.emulated_logits``, cached):
  fp32, W8A8, W4A8, W4A4. Weights per-output-channel symmetric after BatchNorm folding;
  activations (every conv/linear input) per-tensor asymmetric, ranges from the MSE observer
  on 256 JPEG test images that are in neither evaluation set; the first conv and the last
  linear stay at W8A8 (``data.ends_at_8bit``), as is common.
* **Calibrators**, on ``--splits`` (20) stratified 50/50 calibration/test splits of each
  evaluation set (split ``s`` from ``default_rng(seed + s)``; the same for every precision and
  method): uncalibrated softmax, ``TemperatureScaling``, ``PACSCalibrator`` (default
  ``risk="peaked"``, ``precision`` = the config's activation format via
  ``precal.demo.config_precision``) and ``FuzzyDirichletCalibrator`` (its defaults), beside
  ``EnsembleTemperatureScaling``, ``TopLabelCalibrator`` and ``AutoCalibrator``. The fits run in
  ``--threads`` worker processes. Scores on the test
  half: accuracy, ECE, ACE (15 bins, top label), NLL; mean ± sd over splits.
* **Outputs**: ``benchmarks/results/seeds/seed_002.{json,md}``, ``docs/seeds/seed-002.md``
  (claim, method, tables, figures, a verdict computed from the numbers) and
  ``docs/figures/seed-002-*.png``.

``--quick``: ResNet-20 only, the first 400 exact images, 3 splits, observers on 128 images, into a temp dir (or
``--out``). Missing or unreadable shared data: one line naming the file and the README on
stderr, nothing written, exit status 3 (``data.SKIP_EXIT_CODE``). Run from the repository
root::

    python benchmarks/seeds/seed_002.py            # full run, refreshes the committed outputs
    python benchmarks/seeds/seed_002.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks import harness as h
from benchmarks.seeds import data as sd  # noqa: E402

NUMBER = "002"
RERUN = "python benchmarks/seeds/seed_002.py"
PAPER = "On Calibration of Modern Quantized Efficient Neural Networks (arXiv:2309.13866)"
CLAIM = ("Calibration error grows as post-training quantization precision falls (fp32 → W8A8 → W4A8 → W4A4), "
         "tracking the loss of accuracy, and temperature scaling reduces it, with limits at 4 bit.")
MODELS = ("resnet20", "resnet56")
MODEL_NAMES = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}
DATASETS = ("cifar10_lossless", "cifar10_jpeg")
DATASET_NAMES = {"cifar10_lossless": "CIFAR-10 exact (1,017)", "cifar10_jpeg": "CIFAR-10 JPEG-q75"}
#: The claim's path of falling precision (the verdict reads it in this order).
CONFIGS = ("fp32", "w8a8", "w4a8", "w4a4")
#: Backend-faithful int8 (torch.ao's x86 recipe: layer outputs and residual additions quantized,
#: ``reduce_range``, histogram observer), a contrast to the static ``w8a8`` beside it; not on
#: the verdict's path.
X86 = "w8a8-x86"
#: Every config that runs, in table order.
RUN_CONFIGS = ("fp32", "w8a8", X86, "w4a8", "w4a4")
METHODS = ("uncalibrated", "TS", "PACS", "FuzzyDirichlet", "ETS", "TopLabel (TS base)", "Auto")
QUICK = {"models": ("resnet20",), "datasets": ("cifar10_lossless",), "limit": 400}
FUZZY_PARAMS: dict[str, Any] = {}  # the defaults users get


def methods(config: str, seed: int) -> dict[str, Any]:
    from precal.demo import config_precision

    return h.method_table({"uncalibrated": None, "TS": "ts", "PACS": "pacs", "FuzzyDirichlet": ("fuzzy", FUZZY_PARAMS),
                           "ETS": "ets", "TopLabel (TS base)": "top-label-isotonic", "Auto": "auto"},
                          precision=config_precision(config.removesuffix("-x86")), random_state=seed)[0]


def overrides(model: str, config: str) -> dict[str, str]:
    """First conv and last linear at W8A8 for the static configs; the x86 recipe quantizes every layer at int8."""
    return {} if config == X86 else sd.ends_at_8bit(model, config)


def observer(config: str) -> str:
    """MSE ranges for the static configs; the x86 recipe keeps its histogram observer (torch.ao's)."""
    return "histogram" if config == X86 else "mse"


def path_of(st: dict[str, Any]) -> dict[str, Any]:
    """The settings of the claim's precision path (:data:`CONFIGS`), without the x86 contrast."""
    return {c: st[c] for c in CONFIGS if c in st}


def fit_setting(item: tuple[np.ndarray, np.ndarray, str, int, int]) -> dict[str, Any]:
    """Every method on every split of one (model, data, config) setting (run in a worker process)."""
    z, y, config, n_splits, seed = item
    return h.compare_calibrators(z, y, h.make_splits(y, n_splits, seed), methods(config, seed))


# --------------------------------------------------------------------------- verdict (computed)
def _ece_path(st: dict[str, Any], method: str = "uncalibrated") -> str:
    return " → ".join(f"{100 * st[c]['summary'][method]['ece']['mean']:.2f}" for c in st)


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Reproduced / partly / not, with the reason, from the per-split numbers."""
    rises, ts_helps, lines = [], [], []
    for model, by_ds in report["settings"].items():
        for ds, st_all in by_ds.items():
            st = path_of(st_all)
            label = f"{MODEL_NAMES[model]}, {DATASET_NAMES[ds]}"
            configs = list(st)
            ece = {c: st[c]["per_split"]["uncalibrated"]["ece"] for c in configs}
            acc = {c: st[c]["per_split"]["uncalibrated"]["accuracy"] for c in configs}
            total = h.paired(ece[configs[-1]], ece[configs[0]])
            steps = [h.paired(ece[b], ece[a]) for a, b in zip(configs, configs[1:])]
            acc_drop = h.paired(acc[configs[-1]], acc[configs[0]])
            rise = total["verdict"] == "higher" and all(s["verdict"] != "lower" for s in steps)
            ts = [h.paired(st[c]["per_split"]["TS"]["ece"], ece[c]) for c in configs[1:]]
            helps = all(t["verdict"] == "lower" for t in ts)
            ts_rest = h.paired(st[configs[-1]]["per_split"]["TS"]["ece"], st[configs[0]]["per_split"]["TS"]["ece"])
            rises.append(rise)
            ts_helps.append(helps)
            lines.append(
                f"{label}: uncalibrated ECE % {_ece_path(st)} over {', '.join(configs)} "
                f"({'rises' if rise else 'does not rise steadily'}: {configs[-1]} − {configs[0]} "
                f"{100 * total['mean']:+.2f} ± {100 * total['sd']:.2f} points, {total['verdict']}); accuracy "
                f"{100 * acc_drop['mean']:+.2f} points ({acc_drop['verdict']}); TS ECE % {_ece_path(st, 'TS')} "
                f"({'below' if helps else 'not always clearly below'} the uncalibrated ECE at every quantized config; "
                f"after TS, {configs[-1]} − {configs[0]} {100 * ts_rest['mean']:+.2f} ± {100 * ts_rest['sd']:.2f} "
                f"points, {ts_rest['verdict']}).")
    n = len(rises)
    if n and all(rises) and all(ts_helps):
        word = "reproduced"
    elif not any(rises):
        word = "not reproduced"
    else:
        word = "partly reproduced"
    reason = (f"ECE rises from fp32 to the lowest precision (clearly, with no step clearly down) in {sum(rises)} of "
              f"{n} model × data settings, and temperature scaling clearly lowers the ECE of every quantized config "
              f"in {sum(ts_helps)} of {n}.")
    lines += x86_contrast(report)
    return {"word": word, "reason": reason, "details": lines, "n_settings": n, "n_rise": int(sum(rises)),
            "n_ts_helps": int(sum(ts_helps))}


def x86_contrast(report: dict[str, Any]) -> list[str]:
    """Backend-faithful int8 against the static W8A8 beside it: uncalibrated ECE and accuracy, paired per split."""
    out = []
    for model, by_ds in report["settings"].items():
        for ds, st in by_ds.items():
            if X86 not in st or "w8a8" not in st:
                continue
            x, w = st[X86]["per_split"], st["w8a8"]["per_split"]
            ece = h.paired(x["uncalibrated"]["ece"], w["uncalibrated"]["ece"])
            acc = h.paired(x["uncalibrated"]["accuracy"], w["uncalibrated"]["accuracy"])
            ts = h.paired(x["TS"]["ece"], x["uncalibrated"]["ece"])
            out.append(f"{MODEL_NAMES[model]}, {DATASET_NAMES[ds]}, {X86} (backend-faithful) vs w8a8 (static): "
                       f"uncalibrated ECE {100 * st[X86]['summary']['uncalibrated']['ece']['mean']:.2f} % vs "
                       f"{100 * st['w8a8']['summary']['uncalibrated']['ece']['mean']:.2f} % "
                       f"({100 * ece['mean']:+.2f} ± {100 * ece['sd']:.2f} points, {ece['verdict']}), accuracy "
                       f"{100 * acc['mean']:+.2f} points ({acc['verdict']}); TS at {X86} "
                       f"{100 * ts['mean']:+.2f} ± {100 * ts['sd']:.2f} points of ECE ({ts['verdict']}).")
    return out


def quality_bar(report: dict[str, Any]) -> list[str]:
    """precal's own bar (DESIGN.md): each calibrator vs TS on ECE; accuracy kept by TS/PACS."""
    out = []
    for method in METHODS[2:]:
        counts = {"lower": [], "higher": [], "within noise": [], "identical": []}
        for model, by_ds in report["settings"].items():
            for ds, st in by_ds.items():
                for c, r in st.items():
                    p = h.paired(r["per_split"][method]["ece"], r["per_split"]["TS"]["ece"])
                    counts[p["verdict"]].append(f"{MODEL_NAMES[model]} {DATASET_NAMES[ds]} {c} "
                                                f"({100 * p['mean']:+.2f})")
        total = sum(len(v) for v in counts.values())
        out.append(f"{method} vs TS on ECE over {total} settings: clearly lower in {len(counts['lower'])}, clearly "
                   f"higher in {len(counts['higher'])}, within noise in {len(counts['within noise'])}, identical in "
                   f"{len(counts['identical'])}." + (f" Higher: {'; '.join(counts['higher'])} (points)."
                                                     if counts["higher"] else "")
                   + (f" Lower: {'; '.join(counts['lower'])} (points)." if counts["lower"] else ""))
    kept = all(r["per_split"][m]["accuracy"] == r["per_split"]["uncalibrated"]["accuracy"]
               for by_ds in report["settings"].values() for st in by_ds.values() for r in st.values()
               for m in ("TS", "PACS"))
    out.append(f"TS and PACS {'leave the accuracy unchanged on every split' if kept else 'changed the accuracy'}.")
    return out


# --------------------------------------------------------------------------- markdown
def tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for model, by_ds in report["settings"].items():
        for ds, st in by_ds.items():
            info = report["datasets"][ds]
            first = next(iter(st.values()))
            lines += ["", f"### {MODEL_NAMES[model]}, {DATASET_NAMES[ds]}", "",
                      f"{info['n']} images, {report['n_splits']} splits of {first['n_calibration']} calibration / "
                      f"{first['n_test']} test; mean ± sd over splits.", "",
                      "| precision | method | accuracy % | ECE % | ACE % | NLL |", "|---|---|---:|---:|---:|---:|"]
            for config, r in st.items():
                for method in METHODS:
                    s = r["summary"][method]
                    lines.append(f"| {config if method == 'uncalibrated' else ''} | {method} | "
                                 f"{h.fmt_ms(s['accuracy'], 100, 2)} | {h.fmt_ms(s['ece'], 100, 2)} | "
                                 f"{h.fmt_ms(s['ace'], 100, 2)} | {h.fmt_ms(s['nll'], 1, 4)} |")
    return lines


def header(report: dict[str, Any]) -> list[str]:
    notes = []
    if report["quick"]:
        notes.append("**Quick smoke test** (`--quick`): one model, 400 images, 3 splits; not the study's results.")
    notes += report["warnings"]
    return [x for note in notes for x in (note, "")]


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = header(report)
    p = report["protocol"]
    method = [
        "- **Models**: the pretrained CIFAR-10 ResNet-20 and ResNet-56 of `../shared/data/models` "
        "(plain-torch re-implementations in `benchmarks/seeds/models.py`, equal to the README's reference "
        "logits).",
        "- **Data**: " + "; ".join(f"`{d}`: {i['description']} ({i['n']} images)"
                                   for d, i in report["datasets"].items()) + ".",
        f"- **Quantization** (`precal.emulate.emulate_model`): {', '.join(p['configs'])}. Weights "
        f"per-output-channel symmetric after BatchNorm folding; activations (the input of every conv/linear) "
        f"per-tensor asymmetric, ranges from the `{p['observer']}` observer calibrated on "
        f"{p['calibration']}; the first conv and the last linear stay at W8A8, as is common "
        f"(`{p['overrides']}`). Residual additions, pooling and ReLU stay in float32.",
        f"- **Calibrators**: on each of {report['n_splits']} stratified 50/50 calibration/test splits "
        f"({p['splits']}), the same for every precision and method: `TemperatureScaling`, `PACSCalibrator` "
        f"(`{p['pacs']}`), `FuzzyDirichletCalibrator` (`{p['fuzzy']}`), `EnsembleTemperatureScaling` (ETS), "
        f"`TopLabelCalibrator` (isotonic, on the temperature-scaled probabilities: `base='temperature'`, the "
        f"default), and the uncalibrated softmax, scored on the test half: accuracy, ECE and ACE "
        f"({p['n_bins']} bins, top label), NLL. Auto is `AutoCalibrator()` with its defaults (5-fold choice among TS, ETS, "
        "top-label recalibration and structured matrix scaling, see docs/which-calibrator.md).",
        f"- **Backend-faithful int8** (`{X86}`, a contrast beside `w8a8`, not on the verdict's path): torch.ao's "
        f"x86 int8 recipe as `precal.emulate` emulates it — uint8 activations with `reduce_range` at the network "
        f"input, every layer output (after a fused ReLU) and every residual addition, histogram observer, "
        f"per-channel int8 weights, every layer (the first and last too) at int8.",
        "- **Verdict rule**: a change is clear when the mean paired per-split difference is beyond one "
        "standard deviation of those differences. The claim counts as holding in a model × data setting when "
        "the uncalibrated ECE at the lowest precision is clearly above fp32's with no step clearly down.",
    ]
    run_note = (f", CPU time {report['cpu_time_s']:.0f} s (worker processes included; `--threads {report['threads']}`; "
                f"{report['logits_cache']['computed']} emulated logit sets computed, "
                f"{report['logits_cache']['read']} read from the cache of earlier runs)")
    return h.claim_pages(report, title="Seed 002: calibration of quantized networks", results_title="Seed 002: results",
                         rerun=RERUN, json_name="seeds/seed_002.json", doc_name="seeds/seed-002.md", source=PAPER,
                         claim=CLAIM, run_note=run_note, notes=notes, method=method, tables=tables(report),
                         reading=[f"precal's quality bar: {x}" for x in report["quality_bar"]])


# --------------------------------------------------------------------------- figures
def figures(report: dict[str, Any], split_data: dict[str, Any], staged: h.StagedOutputs,
            paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    from precal.plotting import precision_split_diagram

    out = []
    settings = report["settings"]
    pairs = [(m, d) for m in settings for d in settings[m]]
    fig = Figure(figsize=(4.2 * len(pairs), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    for ax, (model, ds) in zip(axes, pairs):
        st = settings[model][ds]
        st = path_of(st)
        x = np.arange(len(st))
        for i, method in enumerate(METHODS):
            mean = [100 * st[c]["summary"][method]["ece"]["mean"] for c in st]
            sdv = [100 * st[c]["summary"][method]["ece"]["sd"] for c in st]
            ax.errorbar(x + (i - (len(METHODS) - 1) / 2) * 0.06, mean, yerr=sdv, marker="o", ms=3, capsize=2, label=method)
        ax.set_xticks(x, list(st))
        ax.set_title(f"{MODEL_NAMES[model]}, {DATASET_NAMES[ds]}", fontsize="medium")
        ax.set_ylabel("test ECE %")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    out.append({"path": h.save_figure(fig, staged, paths, "seed-002-ece.png"),
                "caption": f"Test ECE (mean ± sd over {report['n_splits']} splits) against precision, uncalibrated "
                           f"and after each calibrator."})
    for model, d in split_data.items():
        low = d["low"]
        ax = precision_split_diagram(d["y"], d["p_fp32"], d["p_low"], names=("fp32", low))
        ax.set_title(f"{MODEL_NAMES[model]}, {DATASET_NAMES[d['dataset']]}: fp32 vs {low}", fontsize="medium")
        out.append({"path": h.save_figure(ax.figure, staged, paths, f"seed-002-split-{model}.png"),
                    "caption": f"{MODEL_NAMES[model]} on {DATASET_NAMES[d['dataset']]} ({len(d['y'])} images, "
                               f"uncalibrated): reliability and confidence histograms at fp32 and {low}."})
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
    cache = sd.emulation_options(args)
    print(f"seed 002: {', '.join(models)} on {', '.join(datasets)}, {args.splits} splits"
          f"{' (quick)' if args.quick else ''}", flush=True)

    loaded = {d: sd.load_dataset(d, limit=limit) for d in datasets}  # DataError here: skip before any work
    logits: dict[tuple[str, str, str], np.ndarray] = {}
    for model in models:
        for config in RUN_CONFIGS:  # config outer: the emulated copy is reused across the two data sets
            for d in datasets:
                t0 = time.perf_counter()
                logits[model, d, config] = sd.emulated_logits(model, loaded[d], config,
                                                               overrides=overrides(model, config),
                                                               observer=observer(config), **cache)
                print(f"  {model} {d} {config}: logits in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    keys = [(m, d, c) for m in models for d in datasets for c in RUN_CONFIGS]
    fits = h.parallel_map(fit_setting, [(logits[k], loaded[k[1]].labels, k[2], args.splits, args.seed)
                                         for k in keys], args.threads)
    print(f"  calibrators fitted in {time.perf_counter() - t0:.1f} s ({args.threads} processes)", flush=True)
    settings: dict[str, dict[str, dict[str, Any]]] = {}
    fit_warnings: dict[str, Any] = {}
    for (model, d, config), r in zip(keys, fits):
        h.merge_warnings(fit_warnings, r)
        settings.setdefault(model, {}).setdefault(d, {})[config] = r
        s = r["summary"]
        print(f"  {model} {d} {config}: ECE % " + "  ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}" for m in METHODS),
              flush=True)
    fig_ds = datasets[-1]
    split_data = {model: {"dataset": fig_ds, "y": loaded[fig_ds].labels, "low": CONFIGS[-1],
                          "p_fp32": h.softmax64(logits[model, fig_ds, "fp32"]),
                          "p_low": h.softmax64(logits[model, fig_ds, CONFIGS[-1]])} for model in models}

    report: dict[str, Any] = {
        "study": "seed 002: calibration of quantized CIFAR-10 ResNets",
        "paper": PAPER, "claim": CLAIM, "script": "benchmarks/seeds/seed_002.py",
        "date": h.utc_now(),
        "quick": args.quick, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "versions": h.versions(),
        "protocol": {
            "configs": list(RUN_CONFIGS), "observer": "mse (w8a8-x86: its own histogram observer)",
            "calibration": loaded[datasets[0]].calibration_note,
            "overrides": "first conv and last linear at w8a8 for w*a* configs (data.ends_at_8bit), none for w8a8-x86",
            "splits": "stratified 50/50; split s uses np.random.default_rng(seed + s)",
            "pacs": "PACSCalibrator(precision=config_precision(config)), risk='peaked' (default)",
            "fuzzy": "FuzzyDirichletCalibrator(" + ", ".join(
                ["random_state=seed", *(f"{k}={v}" for k, v in FUZZY_PARAMS.items())]) + ")",
            "n_bins": h.N_BINS,
        },
        "datasets": {d: {"n": int(len(ds.labels)), "description": ds.description, "files": list(ds.files),
                         "calibration": ds.calibration_note, "limit": ds.limit} for d, ds in loaded.items()},
        "settings": settings,
        "warnings": h.warning_notes(fit_warnings),
    }
    report["figures"] = figures(report, split_data, staged, paths)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)
    report = h.json_ready(report)
    report["verdict"] = verdict(report)
    report["quality_bar"] = quality_bar(report)
    results_md, doc_md = render(report)
    written = h.write_study(staged, paths, report, results_md, doc_md)
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("seed_002", main))

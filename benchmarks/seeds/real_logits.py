"""Real logits at logit-space low precision: raw vs TS vs PACS vs FuzzyDirichlet vs AutoCalibrator; and
the "Reproducing the papers" page.

The claim tested (seed 000's logit-space mechanism and precal's quality bar, DESIGN.md):
rounding real classifiers' logits to a low-precision format raises their ECE, and
``PACSCalibrator``, ``FuzzyDirichletCalibrator`` and the recommended ``AutoCalibrator`` cut the
ECE of the rounded logits at least as much as temperature scaling, with TS and PACS leaving the
accuracy unchanged.

What runs (every number in the outputs comes from this run), on ``../shared/data/logits``
(``README.md`` there):

A. **True logits.** Only the two ResNet-50 / CIFAR-10 files (cross-entropy and focal loss)
   hold the networks' logits. Their 10,000 test rows are rounded with
   ``precal.emulate.round_logits``: ``fp32`` (as stored), ``bf16`` and ``fp8_e4m3``
   (element-wise, no scale), ``int8`` and ``int4`` (symmetric, one scale per row), as a model
   whose last layer emits that format would give them. On ``--splits`` (20) stratified 50/50
   calibration/test splits (split ``s`` from ``default_rng(seed + s)``; the same for every
   format and method): the raw softmax, ``TemperatureScaling``,
   ``PACSCalibrator(precision=format)`` (default ``risk="peaked"``),
   ``FuzzyDirichletCalibrator(random_state=seed)`` and ``AutoCalibrator()`` (both at their
   defaults), fitted on the calibration half of the rounded logits, scored on its test half: accuracy,
   ECE, ACE (15 bins, top label), NLL. Also, on all test rows, what the rounding does to
   the fp32 softmax (``precal.metrics.precision_split``, changed predictions).
B. **Log-probabilities** (flagged, never pooled with A). The other four files store
   ``log p``: each row is the network's logits minus an unknown per-row constant (row
   maximum near 0, all values <= 0). Softmax and TS are invariant to that shift, so at the
   stored precision they give exactly what the logits would; PACS's risk uses the raw logit
   norm and logit-space rounding the raw magnitudes, so neither is the network's. These
   files are therefore studied at their stored precision only, with raw, TS, PACS (flagged)
   and AutoCalibrator (whose candidates all see the softmax only). FuzzyDirichlet is not fitted on them: its INT4 training copies would round
   the shifted values too.
C. **What the shift does to rounding**, measured where the truth is known: the ResNet-50
   test logits rounded as they are, against the same rows turned into log-probabilities
   (``log_softmax``, as the other files store them) and then rounded: mean and largest
   change of the top confidence against the fp32 softmax, changed predictions, raw ECE.

Outputs: ``benchmarks/results/seeds/real_logits.{json,md}``, ``docs/seeds/real-logits.md``,
``docs/figures/real-logits-*.png``; a full run also rebuilds ``docs/reproducing-papers.md``
from the results of every seed study (``--page-only`` rebuilds just that page).

``--quick``: the cross-entropy ResNet-50 at fp32 and int4 and one log-probability file
(WRN-16-4 / CIFAR-10), the first 2,000 test rows each, 3 splits, fuzzy fits capped at 30
iterations and one noisy copy, into a temp dir (or ``--out``). A missing or unreadable file: one line naming it
and the README on stderr, nothing written, exit status 3. Run from the repository root::

    python benchmarks/seeds/real_logits.py              # full run, refreshes the committed outputs
    python benchmarks/seeds/real_logits.py --quick      # smoke test
    python benchmarks/seeds/real_logits.py --page-only  # rebuild docs/reproducing-papers.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks import harness as h
from benchmarks.seeds import data as sd  # noqa: E402

RERUN = "python benchmarks/seeds/real_logits.py"
TITLE = "Real logits at logit-space low precision"
CLAIM = ("Rounding real classifiers' logits to a low-precision format raises their ECE (seed 000's logit-space "
         "mechanism), and PACS, FuzzyDirichlet and the recommended AutoCalibrator cut the ECE of the rounded logits at least as much as temperature "
         "scaling, with TS and PACS leaving the accuracy unchanged (precal's quality bar).")
PAPER = ("precal's quality bar (DESIGN.md) on real logits; mechanism from seed 000, \"Precision-Induced "
         "Miscalibration\" (project seed 000)")
TRUE_LOGITS = {
    "resnet50_cifar10.npz": "ResNet-50 (cross-entropy), CIFAR-10",
    "resnet50-focal_cifar10.npz": "ResNet-50 (focal loss), CIFAR-10",
}
LOG_PROBS = {
    "wrn-16-4_cifar10.npz": "WRN-16-4, CIFAR-10",
    "densenet-bc-100_cifar100.npz": "DenseNet-BC-100, CIFAR-100",
    "wrn-16-4_cifar100.npz": "WRN-16-4, CIFAR-100",
    "cv-textclf_imdb.npz": "text classifier (cross-validated), IMDB",
}
FORMATS = ("fp32", "bf16", "fp8_e4m3", "int8", "int4")
#: Formats whose unit roundoff is at least 1/16: where a rise of the ECE would show first.
COARSE = ("fp8_e4m3", "int4")
METHODS = ("raw", "TS", "PACS", "FuzzyDirichlet", "Auto")
#: FuzzyDirichletCalibrator at its defaults (every keyword here would override one).
FUZZY_PARAMS: dict[str, Any] = {}
#: Methods run on the log-probability files (see the module docstring, part B).
LOG_PROB_METHODS = ("raw", "TS", "PACS", "Auto")
#: The method that sees the per-row shift of log-probability files (its risk uses the raw logit norm).
FLAGS = {"PACS": " †"}
QUICK = {"true": ("resnet50_cifar10.npz",), "logprob": ("wrn-16-4_cifar10.npz",), "formats": ("fp32", "int4"),
         "limit": 2000, "fuzzy": {"max_iter": 30, "n_noise_copies": 1}}


# --------------------------------------------------------------------------- data
def logits_dir() -> Path:
    return sd.shared_dir() / "data" / "logits"


def logits_readme() -> Path:
    return logits_dir() / "README.md"


def load_logits(name: str, limit: int | None = None) -> dict[str, Any]:
    """Test logits and labels of one shared file, checked as its README says.

    Raises
    ------
    data.DataError
        One line naming the file and the README: missing, unreadable, or not finite 2-D
        float scores with integer labels in ``0..K-1``.
    """
    path = logits_dir() / name

    def fail(problem: str) -> sd.DataError:
        return sd.DataError(f"{path}: {problem}; see {logits_readme()}")

    if not path.is_file():
        raise fail("missing")
    try:
        with np.load(path, allow_pickle=False) as d:
            keys = ("logits_test", "labels_test") if "logits_test" in d.files else ("logits", "labels")
            if not set(keys) <= set(d.files):
                raise fail(f"has no arrays {list(keys)} (has {sorted(d.files)})")
            z, y = np.asarray(d[keys[0]]), np.asarray(d[keys[1]])
    except sd.DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, value and OS errors alike mean "unreadable"
        raise fail(f"cannot be read ({type(exc).__name__})") from None
    if z.ndim != 2 or z.shape[1] < 2 or not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise fail(f"{keys[0]} is not a finite 2-D float array (dtype {z.dtype}, shape {z.shape})")
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise fail(f"{keys[1]} are not integer labels in 0..{z.shape[1] - 1}, one per row")
    z, y = z[:limit].astype(np.float32), y[:limit].astype(np.int64)
    return {"file": name, "split": keys[0].replace("logits", "").lstrip("_") or "single", "logits": z, "labels": y,
            "n": int(len(y)), "n_classes": int(z.shape[1]), "max_value": float(z.max(axis=1).max()),
            "mean_row_max": float(z.max(axis=1).mean()), "mean_norm": float(np.linalg.norm(z, axis=1).mean())}


def _facts(d: dict[str, Any]) -> dict[str, Any]:
    """A loaded file's description without its arrays."""
    return {k: v for k, v in d.items() if k not in ("logits", "labels")}


def methods(fmt: str, seed: int, fuzzy: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"raw": None, "TS": "ts", "PACS": "pacs"}
    if fuzzy is not None:
        spec["FuzzyDirichlet"] = ("fuzzy", fuzzy)
    spec["Auto"] = "auto"
    return h.method_table(spec, precision=fmt, random_state=seed)[0]


def rounding_effect(z_ref: np.ndarray, z_low: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """What rounding did to the softmax of all rows: top-confidence gap and changed predictions."""
    from precal.metrics import expected_calibration_error, precision_split

    p_ref, p_low = h.softmax64(z_ref), h.softmax64(z_low)
    split = precision_split(p_ref, p_low)
    return {"mean_abs_confidence_change": split.mean_abs_gap, "max_abs_confidence_change": split.max_abs_gap,
            "mean_confidence_change": split.mean_gap,
            "changed_predictions": float(np.mean(p_ref.argmax(axis=1) != p_low.argmax(axis=1))),
            "max_abs_logit_change": float(np.abs(z_low.astype(np.float64) - z_ref).max()),
            "ece": expected_calibration_error(y, p_low, n_bins=h.N_BINS),
            "accuracy": float(np.mean(p_low.argmax(axis=1) == y))}


# --------------------------------------------------------------------------- verdict (computed)
def comparisons(st: dict[str, Any]) -> dict[str, Any]:
    e = {m: st["per_split"][m]["ece"] for m in st["per_split"]}
    out = {f"{m} vs raw": h.paired(e[m], e["raw"]) for m in e if m != "raw"}
    out.update({f"{m} vs TS": h.paired(e[m], e["TS"]) for m in ("PACS", "FuzzyDirichlet", "Auto") if m in e})
    return out


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    a = report["true_logits"]
    rises, pacs_ok, fuzzy_ok, auto_ok, lines = [], [], [], [], []
    kept = True
    for name, f in a.items():
        fmts = [x for x in f["formats"] if x != "fp32"]
        raw = {x: f["formats"][x]["per_split"]["raw"]["ece"] for x in f["formats"]}
        change = {x: h.paired(raw[x], raw["fp32"]) for x in fmts}
        coarse = [x for x in COARSE if x in change]
        rise = bool(coarse) and all(change[x]["verdict"] == "higher" for x in coarse)
        rises.append(rise)
        p_bad = [x for x in fmts if f["formats"][x]["comparisons"]["PACS vs TS"]["verdict"] == "higher"]
        z_bad = [x for x in fmts if f["formats"][x]["comparisons"]["FuzzyDirichlet vs TS"]["verdict"] == "higher"]
        a_bad = [x for x in fmts if f["formats"][x]["comparisons"]["Auto vs TS"]["verdict"] == "higher"]
        pacs_ok.append(not p_bad)
        fuzzy_ok.append(not z_bad)
        auto_ok.append(not a_bad)
        for x, st in f["formats"].items():
            ps = st["per_split"]
            kept &= all(ps[m]["accuracy"] == ps["raw"]["accuracy"] for m in ("TS", "PACS"))
        fuzzy_acc = {x: h.paired(st["per_split"]["FuzzyDirichlet"]["accuracy"], st["per_split"]["raw"]["accuracy"])
                     ["mean"] for x, st in f["formats"].items()}
        lines.append(
            f"{f['label']}: raw ECE % " + " → ".join(f"{x} {100 * np.mean(raw[x]):.2f}" for x in f["formats"])
            + "; change against fp32 " + ", ".join(f"{x} {100 * change[x]['mean']:+.3f} ± {100 * change[x]['sd']:.3f} "
                                                   f"({change[x]['verdict']})" for x in fmts)
            + ". PACS − TS ECE points " + ", ".join(
                f"{x} {100 * f['formats'][x]['comparisons']['PACS vs TS']['mean']:+.3f} "
                f"({f['formats'][x]['comparisons']['PACS vs TS']['verdict']})" for x in f["formats"])
            + ". FuzzyDirichlet − TS " + ", ".join(
                f"{x} {100 * f['formats'][x]['comparisons']['FuzzyDirichlet vs TS']['mean']:+.3f} "
                f"({f['formats'][x]['comparisons']['FuzzyDirichlet vs TS']['verdict']})" for x in f["formats"]) + "."
            + " Auto − TS " + ", ".join(
                f"{x} {100 * f['formats'][x]['comparisons']['Auto vs TS']['mean']:+.3f} "
                f"({f['formats'][x]['comparisons']['Auto vs TS']['verdict']})" for x in f["formats"]) + "."
            + " Accuracy change by FuzzyDirichlet (its full maps can re-weigh the classes; TS and PACS keep the argmax): "
            + ", ".join(f"{x} {100 * d:+.2f} points" for x, d in fuzzy_acc.items()) + ".")
    n = len(rises)
    coarse_run = [c for c in COARSE if c in report["protocol"]["formats"]]
    parts = {
        "ECE rises at the coarse formats": (all(rises), f"{sum(rises)} of {n} files: raw ECE clearly above fp32's at "
                                                        f"{' and '.join(coarse_run)}"),
        "PACS at least as good as TS": (all(pacs_ok), f"{sum(pacs_ok)} of {n} files with PACS never clearly above TS "
                                                      f"at a low format"),
        "FuzzyDirichlet at least as good as TS": (all(fuzzy_ok), f"{sum(fuzzy_ok)} of {n} files with FuzzyDirichlet "
                                                                 f"never clearly above TS at a low format"),
        "AutoCalibrator at least as good as TS": (all(auto_ok), f"{sum(auto_ok)} of {n} files with AutoCalibrator "
                                                                f"never clearly above TS at a low format"),
        "TS and PACS keep the accuracy": (kept, "on every split and format" if kept else "accuracy changed somewhere"),
    }
    held = [k for k, (ok, _) in parts.items() if ok]
    word = "reproduced" if len(held) == len(parts) else ("not reproduced" if not held else "partly reproduced")
    reason = (f"On the {n} true-logit files, {len(held)} of {len(parts)} parts hold: "
              + "; ".join(f"{k} {'✓' if ok else '✗'} ({why})" for k, (ok, why) in parts.items()) + ".")
    for name, f in report["log_probabilities"].items():
        c = f["comparisons"]
        lines.append(f"{f['label']} (log-probabilities, stored precision, flagged): ECE % " + ", ".join(
            f"{m} {100 * f['summary'][m]['ece']['mean']:.2f}" for m in f["summary"]) + "; " + ", ".join(
            f"{k} {100 * v['mean']:+.2f} ({v['verdict']})" for k, v in c.items()) + ".")
    for name, f in report["shift"].items():
        ratios = []
        for fmt, st in f.items():
            a = st["as_logits"]["mean_abs_confidence_change"]
            b = st["as_log_probabilities"]["mean_abs_confidence_change"]
            ratios.append(f"{fmt} {b / a:.2f}×" if a > 0 else f"{fmt} {b:.1e} (logits: 0)")
        lines.append(f"{TRUE_LOGITS[name]}: rounded as log-probabilities instead of logits, the mean |Δ top "
                     f"confidence| against fp32 is " + ", ".join(ratios) + " that of the logits: the stored shift "
                     "changes what rounding does, so rounding the log-probability files would not emulate their "
                     "networks.")
    return {"word": word, "reason": reason, "details": lines, "held": held}


# --------------------------------------------------------------------------- markdown
def tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, f in report["true_logits"].items():
        first = next(iter(f["formats"].values()))
        lines += ["", f"### {f['label']} (`{name}`, true logits)", "",
                  f"Test split, {f['n']} images, {f['n_classes']} classes; {report['n_splits']} splits of "
                  f"{first['n_calibration']} calibration / {first['n_test']} test; mean ± sd over splits. Rounding: "
                  f"`round_logits(logits, format)`. Δ vs TS: paired per-split ECE difference to temperature scaling "
                  f"(points) with the one-sd verdict.", "",
                  "| format | method | accuracy % | ECE % | ACE % | NLL | Δ ECE vs TS |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for fmt, st in f["formats"].items():
            for m in METHODS:
                s = st["summary"][m]
                c = st["comparisons"].get(f"{m} vs TS")
                delta = "–" if c is None else f"{100 * c['mean']:+.3f} ± {100 * c['sd']:.3f} ({c['verdict']})"
                lines.append(f"| {fmt if m == 'raw' else ''} | {m} | {h.fmt_ms(s['accuracy'], 100, 2)} | "
                             f"{h.fmt_ms(s['ece'], 100, 2)} | {h.fmt_ms(s['ace'], 100, 2)} | "
                             f"{h.fmt_ms(s['nll'], 1, 4)} | {delta} |")
    lines += ["", "### What the rounding does to the fp32 softmax (all test rows)", "",
              "| file | format | mean \\|Δ top conf.\\| | max \\|Δ top conf.\\| | changed predictions % | "
              "max \\|Δ logit\\| | raw ECE % |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, f in report["true_logits"].items():
        for fmt, st in f["formats"].items():
            r = st["rounding"]
            lines.append(f"| {name} | {fmt} | {r['mean_abs_confidence_change']:.2e} | "
                         f"{r['max_abs_confidence_change']:.2e} | {100 * r['changed_predictions']:.2f} | "
                         f"{r['max_abs_logit_change']:.3g} | {100 * r['ece']:.2f} |")
    lines += ["", "### Log-probability files (flagged: shifted logits, stored precision only)", "",
              "Each row of these files is the network's logits minus an unknown per-row constant. The softmax and TS "
              "do not see that shift, and neither do AutoCalibrator's candidates (each is a function of the "
              "softmax), so their numbers here are the networks'. PACS's risk uses the raw logit norm, "
              "so its rows (†) are not what PACS would do on the networks' logits. FuzzyDirichlet is not fitted "
              "here: its INT4 training copies would round the shifted values too. Not rounded: see the next table "
              "for what rounding shifted logits does.", "",
              "| file | n | K | method | accuracy % | ECE % | ACE % | NLL | Δ ECE vs raw |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, f in report["log_probabilities"].items():
        for m, s in f["summary"].items():
            c = f["comparisons"].get(f"{m} vs raw")
            delta = "–" if c is None else f"{100 * c['mean']:+.2f} ± {100 * c['sd']:.2f} ({c['verdict']})"
            first = m == "raw"
            lines.append(f"| {f'`{name}`' if first else ''} | {f['n'] if first else ''} | "
                         f"{f['n_classes'] if first else ''} | {m}{FLAGS.get(m, '')} | "
                         f"{h.fmt_ms(s['accuracy'], 100, 2)} | {h.fmt_ms(s['ece'], 100, 2)} | "
                         f"{h.fmt_ms(s['ace'], 100, 2)} | {h.fmt_ms(s['nll'], 1, 4)} | {delta} |")
    lines += ["", "### Rounding logits vs rounding the same rows as log-probabilities", "",
              "The ResNet-50 test logits `z`, rounded as they are, and `log_softmax(z)` (what the other files store) "
              "rounded the same way; both against the fp32 softmax of `z`, all test rows. Float formats round each "
              "value relative to its own magnitude, and the integer formats' row scale is set by the largest "
              "magnitude, so the stored shift changes which values lose precision.", "",
              "| file | format | rounded | mean \\|Δ top conf.\\| | max \\|Δ top conf.\\| | changed predictions % | "
              "raw ECE % |", "|---|---|---|---:|---:|---:|---:|"]
    for name, f in report["shift"].items():
        for fmt, st in f.items():
            for kind in ("as_logits", "as_log_probabilities"):
                r = st[kind]
                lines.append(f"| {name if kind == 'as_logits' else ''} | {fmt if kind == 'as_logits' else ''} | "
                             f"{kind.replace('as_', '').replace('_', '-')} | {r['mean_abs_confidence_change']:.2e} | "
                             f"{r['max_abs_confidence_change']:.2e} | {100 * r['changed_predictions']:.2f} | "
                             f"{100 * r['ece']:.2f} |")
    return lines


def render(report: dict[str, Any]) -> tuple[str, str]:
    notes = []
    if report["quick"]:
        notes += [f"**Quick smoke test** (`--quick`): one true-logit file at {', '.join(QUICK['formats'])}, one "
                  f"log-probability file, the first {QUICK['limit']} rows, {report['n_splits']} splits; not the "
                  f"study's results.", ""]
    notes += [x for w in report["warnings"] for x in (f"Fit warnings: {w}", "")]
    p = report["protocol"]
    method = [
        "- **Data**: `../shared/data/logits` (read its `README.md`): classifier outputs on standard test sets. "
        "Only the two ResNet-50 / CIFAR-10 files hold true logits (bit-identical to the source); the "
        "DenseNet/WRN (net:cal) and IMDB files hold log-probabilities, i.e. logits shifted by an unknown "
        "per-row constant.",
        f"- **Logit-space precision** (`precal.emulate.round_logits`): {', '.join(FORMATS)} — float formats "
        "round every value to the format (round-to-nearest-even, no scale), so the error of a logit is relative "
        "to its own size; integer formats use one symmetric scale per row, `max |z| / qmax`, so the step is "
        "set by the row's largest magnitude. This is the model whose last layer emits that format; the "
        "network before it is unchanged (seed 002 and seed 000 emulate whole networks).",
        f"- **Calibrators**: {p['splits']}: {p['methods']}",
        "- **Why the log-probability files are not rounded**: a per-row shift leaves the softmax unchanged but "
        "not the rounding. Rounded as log-probabilities, the top class (value near 0) keeps almost all its "
        "precision while the small classes (large negative values) set the integer scale, which is not what "
        "the network's own logits would undergo; the last table measures the difference on the ResNet-50 "
        "logits, where both are known. The verdict uses the true-logit files only.",
        "- **Verdict rule**: a difference is clear when the mean paired per-split difference is beyond one "
        "standard deviation of those differences. Reproduced when, on both true-logit files, the raw ECE is "
        f"clearly above fp32's at {' and '.join(COARSE)} (unit roundoff ≥ 1/16), PACS, FuzzyDirichlet and Auto are "
        "never clearly above TS at a low format, and TS and PACS never change the accuracy; not reproduced "
        "when none of these holds; partly otherwise.",
    ]
    run_note = (f" (`--threads {report['threads']}`: the fits over {report['threads']} processes of one torch "
                f"thread)")
    return h.claim_pages(report, title=TITLE, results_title="Real logits: results", rerun=RERUN,
                         json_name="seeds/real_logits.json", doc_name="seeds/real-logits.md", source=PAPER,
                         claim=CLAIM, run_note=run_note, notes=notes, method=method, tables=tables(report),
                         needs=["Needs `../shared/data/logits` (six `.npz` files and their `README.md`).", ""],
                         source_label="Source", full_run="full run")


# --------------------------------------------------------------------------- figures
def figures(report: dict[str, Any], staged: h.StagedOutputs, paths: dict[str, Path]) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    out = []
    files = list(report["true_logits"])
    fig = Figure(figsize=(4.6 * len(files), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(files)))
    for ax, name in zip(axes, files):
        f = report["true_logits"][name]
        x = np.arange(len(f["formats"]))
        for i, m in enumerate(METHODS):
            ax.errorbar(x + (i - (len(METHODS) - 1) / 2) * 0.07,
                        [100 * f["formats"][c]["summary"][m]["ece"]["mean"] for c in f["formats"]],
                        yerr=[100 * f["formats"][c]["summary"][m]["ece"]["sd"] for c in f["formats"]], marker="o",
                        ms=3, capsize=2, label=m)
        ax.set_xticks(x, list(f["formats"]))
        ax.set_title(f["label"], fontsize="medium")
        ax.set_ylabel("test ECE %")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    out.append({"path": h.save_figure(fig, staged, paths, "real-logits-ece.png"),
                "caption": f"True logits: test ECE (mean ± sd over {report['n_splits']} splits) against the "
                           f"logit-space format, raw and after each calibrator."})

    fig = Figure(figsize=(4.6 * len(files), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(files)))
    for ax, name in zip(axes, files):
        f = report["shift"][name]
        x = np.arange(len(f))
        for kind, label in (("as_logits", "rounded as logits"),
                            ("as_log_probabilities", "rounded as log-probabilities")):
            ax.plot(x, [max(f[c][kind]["mean_abs_confidence_change"], 1e-12) for c in f], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xticks(x, list(f))
        ax.set_title(report["true_logits"][name]["label"], fontsize="medium")
        ax.set_ylabel("mean |Δ top confidence| vs fp32")
    axes[0].legend(fontsize="small")
    out.append({"path": h.save_figure(fig, staged, paths, "real-logits-shift.png"),
                "caption": "The same ResNet-50 test rows rounded as logits and as log-probabilities (what the other "
                           "files store): mean change of the top confidence against the fp32 softmax."})

    lp = report["log_probabilities"]
    if lp:
        fig = Figure(figsize=(2.6 * len(lp) + 1, 3.4), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(lp))
        shown = list(next(iter(lp.values()))["summary"])
        width = 0.8 / len(shown)
        for i, m in enumerate(shown):
            vals = [100 * f["summary"][m]["ece"]["mean"] for f in lp.values()]
            errs = [100 * f["summary"][m]["ece"]["sd"] for f in lp.values()]
            ax.bar(x + (i - (len(shown) - 1) / 2) * width, vals, width=0.95 * width, yerr=errs, capsize=2,
                   label=m + FLAGS.get(m, ""))
        ax.set_xticks(x, [f["label"].replace(", ", "\n") for f in lp.values()], fontsize="small")
        ax.set_ylabel("test ECE % (stored precision)")
        ax.legend(fontsize="small")
        out.append({"path": h.save_figure(fig, staged, paths, "real-logits-logprob.png"),
                    "caption": "Log-probability files (flagged; stored precision only): test ECE by method (mean ± sd "
                               "over splits). † PACS's risk sees shifted logits."})
    return out


# --------------------------------------------------------------------------- outputs
def output_paths(args: Any) -> dict[str, Path]:
    """As ``data.output_paths`` for the names ``real_logits`` / ``real-logits``."""
    committed = {"json": sd.REPO_ROOT / "benchmarks" / "results" / "seeds" / "real_logits.json",
                 "md": sd.REPO_ROOT / "benchmarks" / "results" / "seeds" / "real_logits.md",
                 "doc": sd.REPO_ROOT / "docs" / "seeds" / "real-logits.md",
                 "figures": sd.REPO_ROOT / "docs" / "figures"}
    return h.output_paths(args, committed, prefix="precal-real-logits-")


# --------------------------------------------------------------------------- "Reproducing the papers"
#: (key, results stem, page under docs/seeds, command, data it needs)
STUDIES = (
    ("Seed 000", "seed_000", "seed-000", "python benchmarks/seeds/seed_000.py",
     "`../shared/data/models` (CIFAR-10 ResNet-20/56, CIFAR-10 test images)"),
    ("Seed 001", "seed_001", "seed-001", "python benchmarks/seeds/seed_001.py",
     "`../shared/data/models` (CIFAR-10 ResNet-20/56 and test images; MiniLM + Financial PhraseBank when the "
     "encoder package is installed)"),
    ("Seed 002", "seed_002", "seed-002", "python benchmarks/seeds/seed_002.py",
     "`../shared/data/models` (CIFAR-10 ResNet-20/56, CIFAR-10 test images)"),
    ("Seed 003", "seed_003", "seed-003", "python benchmarks/seeds/seed_003.py",
     "`../shared/data/models` (Financial PhraseBank, MiniLM head) + the encoder package"),
    ("Seed 004", "seed_004", "seed-004", "python benchmarks/seeds/seed_004.py",
     "`../shared/data/models` (Financial PhraseBank, MiniLM head) + the encoder package"),
    ("Real logits", "real_logits", "real-logits", RERUN, "`../shared/data/logits`"),
)
PAGE_RERUN = f"{RERUN} --page-only"


def _first_table(md: str) -> list[str]:
    """The first markdown table of a results file, with the ``###`` heading above it."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            heading = next((x for x in reversed(lines[:i]) if x.startswith("#")), "")
            return ([f"**{heading.lstrip('#').strip()}**", ""] if heading.startswith("###") else []) + lines[i:end]
    return []


def _script_constants(stem: str) -> dict[str, str]:
    """``PAPER`` and ``CLAIM`` of a study script (so a study not run yet still shows its claim)."""
    import importlib

    try:
        module = sys.modules[__name__] if stem == "real_logits" else importlib.import_module(f"benchmarks.seeds.{stem}")
    except Exception:  # noqa: BLE001 - a script that cannot be imported just shows less
        return {}
    return {k.lower(): getattr(module, k) for k in ("PAPER", "CLAIM") if isinstance(getattr(module, k, None), str)}


def build_reproducing_page(results_dir: Path | None = None, docs_dir: Path | None = None) -> str:
    """docs/reproducing-papers.md from the studies' results files (missing ones: "not run yet")."""
    results_dir = Path(results_dir or sd.REPO_ROOT / "benchmarks" / "results" / "seeds")
    docs_dir = Path(docs_dir or sd.REPO_ROOT / "docs")
    entries = []
    for key, stem, page, command, needs in STUDIES:
        path = results_dir / f"{stem}.json"
        report = None
        if path.is_file():
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                report = None
        md_path = results_dir / f"{stem}.md"
        entries.append({"key": key, "stem": stem, "page": page, "command": command, "needs": needs, "report": report,
                        "script": _script_constants(stem),
                        "table": _first_table(md_path.read_text(encoding="utf-8")) if md_path.is_file() else [],
                        "page_exists": (docs_dir / "seeds" / f"{page}.md").is_file()})
    lines = ["# Reproducing the papers", "",
             f"*Generated by `{PAGE_RERUN}` from the results files in `benchmarks/results/seeds/`; no number on "
             f"this page is typed by hand. Each study's own page has the method, every table and every figure.*", "",
             "precal grew out of five papers and posts (the *seeds*). For each, a script in `benchmarks/seeds/` "
             "reruns its central claim with precal's emulator, metrics and calibrators on real pretrained models "
             "and data (calibrators over 20 random calibration/test splits, mean ± sd) and computes a verdict from "
             "the numbers: "
             "**reproduced**, **partly reproduced** or **not reproduced**. A last study runs the calibrators on "
             "published logits of six real classifiers. The models are small stand-ins for the papers' (CIFAR-10 "
             "ResNets, a MiniLM sentence encoder with a linear head), so a verdict says whether the *effect* shows "
             "in precal's setting, not whether the papers' numbers are right.", "",
             "## Summary", "", "| study | source | verdict | page |", "|---|---|---|---|"]
    for e in entries:
        r = e["report"]
        word = "not run yet" if r is None else r.get("verdict", {}).get("word", "no verdict in the results")
        if r is not None and r.get("quick"):
            word += " (quick run only)"
        link = f"[{e['page']}](seeds/{e['page']}.md)" if e["page_exists"] else "page not written yet"
        source = ((r or {}).get("paper") or e["script"].get("paper", "")).replace("|", "\\|")
        lines.append(f"| {e['key']} | {source or '–'} | **{word}** | {link} |")
    for e in entries:
        r = e["report"]
        lines += ["", f"## {e['key']}" + (f": {r['study'].split(': ', 1)[-1]}" if r and "study" in r else ""), ""]
        if r is None:
            if e["script"].get("claim"):
                lines += [f"**Claim:** {e['script']['claim']}", ""]
            lines += [f"Not run yet: `{e['command']}` writes `benchmarks/results/seeds/{e['stem']}.json`, "
                      f"`docs/seeds/{e['page']}.md` and its figures; then `{PAGE_RERUN}` fills this section."]
            if e["page_exists"]:
                lines += ["", f"See [its page](seeds/{e['page']}.md)."]
            continue
        v = r.get("verdict", {})
        lines += [f"**Claim:** {r.get('claim', '–')}", "",
                  f"**Verdict: {v.get('word', '–')}.** {v.get('reason', '')}", ""]
        if r.get("quick"):
            lines += ["*These are the numbers of a `--quick` smoke test, not of the study.*", ""]
        if e["table"]:
            lines += [f"From `benchmarks/results/seeds/{e['stem']}.md` (its first table; all tables on the study's "
                      f"page):", ""] + e["table"] + [""]
        figs = r.get("figures") or []
        if figs:
            f = figs[0]
            rel = os.path.relpath(os.path.normpath(os.path.join("seeds", f["path"])), ".")
            if (docs_dir / rel).is_file():
                lines += [f"![{f['caption']}]({rel})", "", f"*{f['caption']}*", ""]
        page = f"[the study's page](seeds/{e['page']}.md)" if e["page_exists"] else "the study's page (not written yet)"
        lines += [f"Details, method and all figures: {page}. Rerun: `{e['command']}` "
                  f"(last full run: {r.get('date', '?')}, wall time {r.get('wall_time_s', float('nan')):.0f} s)."]
    lines += ["", "## How to run the studies", "",
              "From the repository root, with precal installed (`pip install -e \".[dev]\"`) and the shared data "
              "beside the repository (`../shared`, or set `PRECAL_SHARED_DIR` to a folder holding `data/`):", "",
              "| study | command | needs | last full run: wall time | CPU time | emulated logit sets computed / "
              "read from the cache |", "|---|---|---|---:|---:|---:|"]
    total, computed, read = 0.0, 0, 0
    for e in entries:
        r = e["report"]
        full = r is not None and not r.get("quick")
        wall = f"{r.get('wall_time_s', float('nan')):.0f} s" if full else "not run"
        cpu = f"{r['cpu_time_s']:.0f} s" if full and isinstance(r.get("cpu_time_s"), (int, float)) else "–"
        cache = r.get("logits_cache") if full else None
        sets = f"{cache['computed']} / {cache['read']}" if cache else "–"
        total += float(r.get("wall_time_s") or 0.0) if full else 0.0
        computed += cache["computed"] if cache else 0
        read += cache["read"] if cache else 0
        lines.append(f"| {e['key']} | `{e['command']}` | {e['needs']} | {wall} | {cpu} | {sets} |")
    # Every study ran and says what it computed: then the runs, made in one sequence from an empty
    # cache (as the committed ones were), add up to one cold run of the full set.
    cold = ("; run one after another from an empty cache, as they were, that is the time of the full set on this "
            "machine." if all(e["report"] and not e["report"].get("quick") and e["report"].get("logits_cache")
                              for e in entries) else ".")
    lines += ["", f"Times are those of the committed runs on the project machine (2 CPU cores; CPU time counts the "
                  f"worker processes). The forward passes of the pretrained models are most of the work: a study "
                  f"reads from the cache the emulated logits that an earlier run computed (seed 001 shares seed "
                  f"002's W8A8 and W4A8 ResNet logits, for instance) and computes the rest. Together the committed "
                  f"runs took {total / 60:.1f} min of wall time and computed {computed} emulated logit sets "
                  f"({read} read from the cache){cold} `--quick` runs take seconds to about a minute each."]
    lines += ["", f"- The MiniLM studies need the encoder weights: `{sd.MINILM_INSTALL}` (`--no-deps` keeps it from "
              "pulling another torch).",
              "- `--quick` runs a smoke test of any study (few rows, 3 splits) into a temporary folder and never "
              "touches the committed outputs; `--out DIR` writes a run's outputs under `DIR`; `--splits N` and "
              "`--seed S` change the protocol.",
              "- Emulated logits of the pretrained models are cached in `benchmarks/results/cache/` (keyed by every "
              "input file's hash and the emulator's source, so a stale entry is never reused); a second full run "
              "skips the forward passes.",
              "- A study whose data is missing or unreadable prints one line naming the file and the README to read, "
              "writes nothing and exits with status 3.",
              f"- `{PAGE_RERUN}` rebuilds this page from the results files (a full run of `seed_003.py`, "
              "`seed_004.py` or `real_logits.py` does it too).", ""]
    pages = [f"seeds/{e['page']}" for e in entries if e["page_exists"]]
    if pages:
        lines += ["```{toctree}", ":hidden:", "", *pages, "```", ""]
    return "\n".join(lines)


def write_reproducing_page(out: Path | None = None) -> Path:
    """Write the page (to ``docs/reproducing-papers.md`` or ``out``) through a temporary file."""
    target = Path(out) if out is not None else sd.REPO_ROOT / "docs" / "reproducing-papers.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = h.StagedOutputs()
    staged.write_text(target, build_reproducing_page())
    staged.commit()
    return target


# --------------------------------------------------------------------------- main
def fit_item(item: tuple[Any, ...]) -> dict[str, Any]:
    """:func:`h.compare_calibrators` of one file at one format (module level: runs in worker processes)."""
    zq, y, fmt, splits, seed, fuzzy = item
    return h.compare_calibrators(zq, y, splits, methods(fmt, seed, fuzzy))


def rounded(z: np.ndarray, fmt: str) -> np.ndarray:
    from precal.emulate import round_logits

    return z if fmt == "fp32" else round_logits(z, fmt)


def run_true_logits(data: dict[str, Any], formats: tuple[str, ...],
                    fits: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], set[str], dict[str, Any]]:
    """The fitted comparisons ``fits[format]`` of one true-logit file, with what the rounding did."""
    from scipy.special import log_softmax

    z, y = data["logits"], data["labels"]
    out, warns, shift = {}, set(), {}
    for fmt in formats:
        zq = rounded(z, fmt)
        r = fits[fmt]
        warns.update(r.pop("warnings"))
        r["comparisons"] = comparisons(r)
        r["rounding"] = rounding_effect(z, zq, y)
        out[fmt] = r
        if fmt != "fp32":
            lp = log_softmax(z.astype(np.float64), axis=1).astype(np.float32)  # as the other files store rows
            shift[fmt] = {"as_logits": r["rounding"],
                          "as_log_probabilities": rounding_effect(z, rounded(lp, fmt), y)}
        s = r["summary"]
        print(f"  {data['file']} {fmt}: ECE % " + "  ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}" for m in s),
              flush=True)
    return out, warns, shift


def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd.add_study_arguments(parser)
    parser.add_argument("--page-only", action="store_true",
                        help="only rebuild docs/reproducing-papers.md (or --out DIR/reproducing-papers.md) from the "
                             "committed results files")
    args = parser.parse_args(argv)
    args = h.finish_study_arguments(parser, args)
    if args.page_only:
        target = write_reproducing_page(args.out / "reproducing-papers.md" if args.out else None)
        print(f"wrote {target}")
        return 0
    paths = output_paths(args)
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    true_files = QUICK["true"] if args.quick else tuple(TRUE_LOGITS)
    lp_files = QUICK["logprob"] if args.quick else tuple(LOG_PROBS)
    formats = QUICK["formats"] if args.quick else FORMATS
    fuzzy = QUICK["fuzzy"] if args.quick else FUZZY_PARAMS
    limit = QUICK["limit"] if args.quick else None
    print(f"real logits: {len(true_files)} true-logit and {len(lp_files)} log-probability files, "
          f"{args.splits} splits{' (quick)' if args.quick else ''}", flush=True)
    loaded = {f: load_logits(f, limit) for f in true_files + lp_files}  # DataError here: skip before any work

    # Every (file, format) comparison is one item over --threads processes of one torch thread
    # (the small autograd problems of the fuzzy fits run 10-20x slower on two shared threads);
    # the expensive ones (with FuzzyDirichlet) first.
    splits = {name: h.make_splits(loaded[name]["labels"], args.splits, args.seed) for name in loaded}
    keys = [(name, fmt) for name in true_files for fmt in formats] + [(name, "fp32") for name in lp_files]
    items = [(rounded(loaded[name]["logits"], fmt), loaded[name]["labels"], fmt, splits[name], args.seed,
              fuzzy if name in true_files else None) for name, fmt in keys]
    t0 = time.perf_counter()
    fits = dict(zip(keys, h.parallel_map(fit_item, items, args.threads)))
    print(f"  {len(items)} calibrator comparisons in {time.perf_counter() - t0:.1f} s ({args.threads} processes)",
          flush=True)

    true_logits, shift, warnings_seen = {}, {}, set()
    for name in true_files:
        d = loaded[name]
        res, warns, sh = run_true_logits(d, formats, {fmt: fits[name, fmt] for fmt in formats})
        warnings_seen |= {f"{name}: {w}" for w in warns}
        true_logits[name] = {"label": TRUE_LOGITS[name], **_facts(d), "formats": res}
        shift[name] = sh
    log_probs = {}
    for name in lp_files:
        d = loaded[name]
        r = fits[name, "fp32"]
        warnings_seen |= {f"{name}: {w}" for w in r.pop("warnings")}
        r["comparisons"] = comparisons(r)
        log_probs[name] = {"label": LOG_PROBS[name], **_facts(d), **r}
        print(f"  {name} (log-probabilities, stored): ECE % " + "  ".join(
            f"{m} {100 * r['summary'][m]['ece']['mean']:.2f}" for m in r["summary"]), flush=True)

    report: dict[str, Any] = {
        "study": f"real logits: {TITLE.lower()}", "paper": PAPER, "claim": CLAIM,
        "script": "benchmarks/seeds/real_logits.py", "date": h.utc_now(), "quick": args.quick, "seed": args.seed,
        "n_splits": args.splits, "threads": args.threads, "versions": h.versions(),
        "protocol": {
            "formats": list(formats), "coarse_formats": list(COARSE),
            "splits": (f"{args.splits} stratified 50/50 calibration/test splits of each file's test rows, split s from "
                       f"np.random.default_rng(seed + s)"),
            "methods": ("raw softmax; TemperatureScaling(); PACSCalibrator(precision=<format>) (risk='peaked'); "
                        "FuzzyDirichletCalibrator(random_state=seed"
                        + "".join(f", {k}={v}" for k, v in fuzzy.items()) + ") (true logits only); AutoCalibrator(); "
                        "fitted on the calibration half of "
                        "the (rounded) logits, scored on the test half at the same format."),
            "n_bins": h.N_BINS, "readme": "../shared/data/logits/README.md",
        },
        "true_logits": true_logits, "log_probabilities": log_probs, "shift": shift,
        "warnings": sorted(warnings_seen),
    }
    report = h.json_ready(report)
    report["figures"] = figures(report, staged, paths)
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    report["logits_cache"] = dict(sd.CACHE_STATS)  # none: these logits are files, rounded here
    report["verdict"] = verdict(report)
    results_md, doc_md = render(report)
    written = h.write_study(staged, paths, report, results_md, doc_md)
    if not args.quick and args.out is None:
        written.append(write_reproducing_page())
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print(f"wall time {report['wall_time_s']:.1f} s, CPU time {report['cpu_time_s']:.1f} s; "
          f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("real_logits", main))

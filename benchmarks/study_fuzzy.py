"""Study: is FuzzyDirichletCalibrator robust to INT4 deployment? (issue #5, item 3; seed 003)

Seed 003 claims that fuzzy confidence gates over Dirichlet maps, trained under simulated INT4
noise, calibrate a compressed model better than one global correction. This script measures
it against the baselines on real models and data, over random splits, with the calibrator's
current design and defaults (stage 1 a cross-validated ``DirichletCalibrator``; the gated,
noise-trained maps kept only when they win on every held-out fold).

A. **Data sets**, each a pool of held-out logits with labels at several *test precisions*,
   with two *fit sources* (the logits a calibrator is fitted on):

   - ``digits-10``: the precal demo CNN (``precal.demo.digits_logits(random_state=seed)``)
     run by ``precal.emulate.sweep`` at ``fp32, w8a8, w4a8, w4a4`` on its 899 held-out images
     (observers calibrated on the training images), plus ``logit-int4`` (the fp32 logits
     rounded by ``precal.emulate.round_logits``, symmetric INT4, one scale per row). Fit
     sources ``fp32`` and ``w4a4`` (the INT4 model).
   - ``digits-3``: the seed's three-class case: the three most mutually confused classes of
     the fp32 model (largest sum of confusion counts among them, ties to the lowest labels),
     their rows and their three logit columns, as a 3-output head would give them.
   - ``resnet50-10`` and ``resnet50-3``: the CIFAR-10 test logits of a ResNet-50
     (``../shared/data/logits/resnet50_cifar10.npz``) and its most confused three classes, at
     ``fp32`` and rounded to ``logit-bf16``, ``logit-int8``, ``logit-int4``; fit sources
     ``fp32`` and ``logit-int4``. Skipped with a note when the file is absent.

B. **Protocol.** ``--splits`` (20) stratified 50/50 calibration/test splits of every pool
   (``harness.make_splits``), shared by every test precision, fit source and method. On the
   calibration half of each fit source: ``TemperatureScaling()``, ``DirichletCalibrator()``,
   ``PACSCalibrator(precision=<format of the fit source>)``, ``FuzzyDirichletCalibrator()``
   ("Fuzzy+noise", its default ``noise="int4"``) and ``FuzzyDirichletCalibrator(noise=None)``
   ("Fuzzy"), both with ``random_state=seed + s``, all at their defaults. Every method and
   the uncalibrated softmax are scored on the test half at every test precision
   (``harness.scores``: accuracy, ECE, ACE, class-wise ECE, NLL).

C. **Comparisons**, paired over splits (``harness.paired``, the one-sd rule; the Wilcoxon p
   is reported as a description): Fuzzy+noise − Fuzzy (the INT4 noise), Fuzzy − Dirichlet
   (the gates), Fuzzy+noise − Dirichlet and Fuzzy+noise − TS (the seed's calibrator against
   one global correction), and per method fit-on-INT4 − fit-on-fp32.

D. **Verdict.** The claim holds when, fitted on the INT4 source and tested at INT4, Fuzzy+noise
   has clearly lower ECE than both TS and Dirichlet on every data set; it does not hold when it
   does on none; otherwise it holds partly.

Outputs: ``benchmarks/results/study_fuzzy.{json,md}``, ``docs/figures/study-fuzzy-{ece,nll}.png``
and the generated region of ``docs/study-fuzzy.md`` (the hand-written text around it is kept).
Run from the repository root::

    python benchmarks/study_fuzzy.py --threads 1   # full run
    python benchmarks/study_fuzzy.py --quick       # smoke test into a temp dir (digits only)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks import harness as h  # noqa: E402

SCRIPT = "benchmarks/study_fuzzy.py"
RERUN = f"python {SCRIPT}"
MARKS = h.generated_marks(SCRIPT)
SOURCE = "seed 003 (\"When Smaller Models Lie About Confidence\"), issue #5 item 3"
CLAIM = ("Fuzzy confidence gates over Dirichlet maps, trained under simulated INT4 noise, calibrate an INT4 model "
         "better than one global correction (temperature scaling, Dirichlet calibration).")
METHODS = {"uncalibrated": None, "TS": "ts", "Dirichlet": "dirichlet", "PACS": "pacs", "Fuzzy+noise": "fuzzy",
           "Fuzzy": ("fuzzy", {"noise": None})}
FITTED = tuple(m for m, v in METHODS.items() if v)
METRICS = ("accuracy", "ece", "ace", "cwece", "nll")
LABELS = {"ece": "ECE %", "ace": "ACE %", "cwece": "class-wise ECE %", "nll": "NLL", "accuracy": "accuracy %"}
COMPARED = ("ece", "ace", "cwece", "nll")
#: (a, b, what a - b measures)
COMPARISONS = (("Fuzzy+noise", "Fuzzy", "the INT4 noise: with vs without noisy copies"),
               ("Fuzzy", "Dirichlet", "the gates, no noise either side"),
               ("Fuzzy+noise", "Dirichlet", "the seed's calibrator vs Dirichlet calibration"),
               ("Fuzzy+noise", "TS", "the seed's calibrator vs temperature scaling"))
#: Differences at most this large are rounding: Fuzzy whose gates lost is Dirichlet's map.
SAME = 1e-9
DIGITS_CONFIGS = ("fp32", "w8a8", "w4a8", "w4a4")
SHARED_FILE = "resnet50_cifar10.npz"
SHARED_TESTS = ("fp32", "logit-bf16", "logit-int8", "logit-int4")


# --------------------------------------------------------------------------- data
def most_confused_triple(z: np.ndarray, y: np.ndarray) -> tuple[tuple[int, int, int], int]:
    """Three classes with the largest sum of confusion counts among them (ties: lowest labels)."""
    conf = np.zeros((z.shape[1],) * 2, dtype=np.int64)
    np.add.at(conf, (y, z.argmax(axis=1)), 1)
    np.fill_diagonal(conf, 0)
    best = max(itertools.combinations(range(z.shape[1]), 3), key=lambda t: (conf[np.ix_(t, t)].sum(), [-i for i in t]))
    return best, int(conf[np.ix_(best, best)].sum())


def three_class(logits: dict[str, np.ndarray], y: np.ndarray, triple: tuple[int, ...],
                rounded: dict[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows of the three classes and their logit columns; ``rounded`` settings re-rounded from the kept fp32 ones."""
    from precal.emulate import round_logits

    rows, cols = np.isin(y, triple), list(triple)
    fp32 = np.ascontiguousarray(logits["fp32"][rows][:, cols], dtype=np.float32)
    out = {name: round_logits(fp32, rounded[name]) if name in rounded else np.ascontiguousarray(z[rows][:, cols])
           for name, z in logits.items()}
    return out, np.searchsorted(np.asarray(triple), y[rows]).astype(np.int64)


def dataset(name: str, model: str, about: str, logits: dict[str, np.ndarray], y: np.ndarray,
            sources: dict[str, str], int4_test: str) -> dict[str, Any]:
    """A pool: ``logits`` per test precision, ``sources`` {fit source: its format}, the INT4 test precision."""
    return {"name": name, "model": model, "about": f"{model}, {about}", "logits": logits, "y": y, "sources": sources,
            "int4_test": int4_test, "k": int(next(iter(logits.values())).shape[1])}


def with_triple(d10: dict[str, Any], rounded: dict[str, str]) -> dict[str, Any]:
    """The three-class case of a ten-class pool."""
    triple, n_conf = most_confused_triple(d10["logits"]["fp32"], d10["y"])
    logits, y = three_class(d10["logits"], d10["y"], triple, rounded)
    name = d10["name"].replace("-10", "-3")
    about = (f"classes {triple} (the most mutually confused: {n_conf} confusions among them), their rows and logit "
             f"columns, {len(y)} rows")
    return dataset(name, d10["model"], about, logits, y, d10["sources"], d10["int4_test"])


def digits_datasets(seed: int) -> list[dict[str, Any]]:
    """``digits-10`` and ``digits-3`` from the precal demo model."""
    import torch

    from precal.demo import config_precision, digits_logits
    from precal.emulate import round_logits, sweep

    data = digits_logits(random_state=seed)
    held_out = torch.cat([data.cal_inputs, data.test_inputs])
    y = np.concatenate([data.cal_labels, data.test_labels]).astype(np.int64)
    logits = sweep(data.model, held_out, DIGITS_CONFIGS, calibration_data=data.train_inputs, progress=False)
    logits["logit-int4"] = round_logits(logits["fp32"], "int4")
    d10 = dataset("digits-10", "digits CNN", f"the precal demo model trained on {data.n_train} images, 10 classes, "
                  f"{len(y)} held-out images; w*a* emulate the whole network, logit-int4 rounds the fp32 logits",
                  logits, y, {"fp32": "fp32", "w4a4": config_precision("w4a4")}, "w4a4")
    return [d10, with_triple(d10, {"logit-int4": "int4"})]


def shared_datasets() -> list[dict[str, Any]]:
    """``resnet50-10`` and ``resnet50-3``; raises :class:`harness.DataError` when the file is absent."""
    from benchmarks.seeds import real_logits as rl
    from precal.emulate import round_logits

    d = rl.load_logits(SHARED_FILE)
    z, y = d["logits"], d["labels"]
    logits = {"fp32": z} | {t: round_logits(z, t.removeprefix("logit-")) for t in SHARED_TESTS[1:]}
    d10 = dataset("resnet50-10", "ResNet-50 on CIFAR-10 test", f"`{SHARED_FILE}` (true logits), 10 classes, "
                  f"{len(y)} images; logit-* round them", logits, y, {"fp32": "fp32", "logit-int4": "int4"},
                  "logit-int4")
    return [d10, with_triple(d10, {t: t.removeprefix("logit-") for t in SHARED_TESTS[1:]})]


# --------------------------------------------------------------------------- one split (a worker's job)
def size(est: Any) -> int:
    """Float parameters the fitted map needs at inference: TS 1, PACS 2 (T0, λε), Dirichlet K(K+1), Fuzzy
    ``n_parameters_``."""
    name = type(est).__name__
    if hasattr(est, "n_parameters_"):
        return int(est.n_parameters_)
    if name == "DirichletCalibrator":
        return int(est.coef_.size + est.intercept_.size)
    return {"TemperatureScaling": 1, "PACSCalibrator": 2}[name]


def one_split(item: tuple[dict[str, Any], np.ndarray, np.ndarray, int]) -> dict[str, Any]:
    """Fit every method on each fit source's calibration half; score at every test precision."""
    ds, cal, test, random_state = item
    y = ds["y"]
    out: dict[str, Any] = {"scores": {}, "fits": {}, "warnings": []}
    for source, fmt in ds["sources"].items():
        methods = h.method_table(METHODS, precision=fmt, random_state=random_state)[0]
        fitted, out["fits"][source] = {}, {}
        for label, factory in methods.items():
            if factory is None:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                est = factory().fit(np.asarray(ds["logits"][source][cal], dtype=np.float64), y[cal])
                seconds = time.perf_counter() - t0
            out["warnings"] += sorted({h.warning_text(label, w) for w in caught})
            fitted[label] = est
            out["fits"][source][label] = {"seconds": seconds, "size": size(est),
                                          "gated": bool(getattr(est, "gated_", False))}
        out["scores"][source] = {}
        for t, z in ds["logits"].items():
            zt = np.asarray(z[test], dtype=np.float64)
            probs = {"uncalibrated": h.softmax64(zt)} | {m: est.predict_proba(zt) for m, est in fitted.items()}
            out["scores"][source][t] = {m: h.scores(y[test], p, METRICS) for m, p in probs.items()}
    return out


def compare(a: list[float], b: list[float]) -> dict[str, Any]:
    """The one-sd verdict of ``a - b`` with its Wilcoxon p (a description)."""
    return h.paired(a, b, atol=SAME) | {"p": h.wilcoxon_p(a, b)}


def summarize(ds: dict[str, Any], splits: list, outs: list[dict[str, Any]]) -> dict[str, Any]:
    """One data set's block: per-split scores, mean ± sd, the paired comparisons, fits."""
    tests, sources = list(ds["logits"]), list(ds["sources"])
    ps = {s: {t: {m: {k: [o["scores"][s][t][m][k] for o in outs] for k in METRICS} for m in METHODS}
              for t in tests} for s in sources}
    fp32_src, int4_src = sources
    return {
        "name": ds["name"], "about": ds["about"], "k": ds["k"], "n_samples": int(len(ds["y"])),
        "n_calibration": int(len(splits[0][0])), "n_test": int(len(splits[0][1])), "tests": tests,
        "sources": ds["sources"], "int4_test": ds["int4_test"], "per_split": ps,
        "summary": {s: {t: {m: {k: h.mean_sd(v) for k, v in d.items()} for m, d in bt.items()} for t, bt in bs.items()}
                    for s, bs in ps.items()},
        "comparisons": {s: {t: {f"{a} - {b}": {k: compare(ps[s][t][a][k], ps[s][t][b][k]) for k in COMPARED}
                                for a, b, _ in COMPARISONS} for t in tests} for s in sources},
        "source_effect": {t: {m: {k: compare(ps[int4_src][t][m][k], ps[fp32_src][t][m][k]) for k in COMPARED}
                              for m in FITTED} for t in tests},
        "fits": {s: {m: {"mean_seconds": float(np.mean([o["fits"][s][m]["seconds"] for o in outs])),
                         "n_gated": int(sum(o["fits"][s][m]["gated"] for o in outs)), "n_fits": len(outs),
                         "nbytes": sorted({4 * o["fits"][s][m]["size"] for o in outs})} for m in FITTED}
                 for s in sources},
    }


# --------------------------------------------------------------------------- verdict
def scorecard(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per comparison and metric, how many settings (data set x fit source x test precision) have each verdict."""
    card: dict[str, Any] = {"n_settings": sum(len(b["sources"]) * len(b["tests"]) for b in blocks)}
    for a, b, _ in COMPARISONS:
        card[f"{a} - {b}"] = {k: {v: sum(blk["comparisons"][s][t][f"{a} - {b}"][k]["verdict"] == v for blk in blocks
                                         for s in blk["sources"] for t in blk["tests"])
                                  for v in ("lower", "higher", "within noise", "identical")} for k in COMPARED}
    return card


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    blocks, card = report["datasets"], report["scorecard"]
    wins, details = [], []
    for b in blocks:
        src, t = list(b["sources"])[1], b["int4_test"]
        c = b["comparisons"][src][t]
        ts, di = c["Fuzzy+noise - TS"]["ece"], c["Fuzzy+noise - Dirichlet"]["ece"]
        s = b["summary"][src][t]
        details.append(f"{b['name']}, fitted on {src}, tested on {t}: ECE uncalibrated "
                       f"{h.fmt_ms(s['uncalibrated']['ece'], 100)}%, TS {h.fmt_ms(s['TS']['ece'], 100)}%, Dirichlet "
                       f"{h.fmt_ms(s['Dirichlet']['ece'], 100)}%, Fuzzy+noise {h.fmt_ms(s['Fuzzy+noise']['ece'], 100)}% "
                       f"(vs TS: {ts['verdict']}, vs Dirichlet: {di['verdict']}); NLL TS {s['TS']['nll']['mean']:.4f}, "
                       f"Dirichlet {s['Dirichlet']['nll']['mean']:.4f}, Fuzzy+noise {s['Fuzzy+noise']['nll']['mean']:.4f}.")
        if ts["verdict"] == "lower" and di["verdict"] == "lower":
            wins.append(b["name"])
    n = card["n_settings"]
    for a, b, what in COMPARISONS:
        parts = [f"{k.upper() if k != 'cwece' else 'class-wise ECE'} {c['lower']} lower / {c['higher']} higher / "
                 f"{c['within noise']} within noise / {c['identical']} identical" for k, c in card[f"{a} - {b}"].items()]
        details.append(f"{a} − {b} ({what}), over {n} settings: " + "; ".join(parts) + ".")
    gated = {m: sum(b["fits"][s][m]["n_gated"] for b in blocks for s in b["sources"]) for m in ("Fuzzy+noise", "Fuzzy")}
    fits = sum(b["fits"][s]["Fuzzy"]["n_fits"] for b in blocks for s in b["sources"])
    details.append(f"The held-out check kept the gated maps in {gated['Fuzzy+noise']} of {fits} Fuzzy+noise fits and "
                   f"{gated['Fuzzy']} of {fits} Fuzzy fits; in the others the calibrator is Dirichlet's map.")
    for b in blocks:
        u = b["per_split"][list(b["sources"])[0]]
        shift = h.paired(u[b["int4_test"]]["uncalibrated"]["ece"], u["fp32"]["uncalibrated"]["ece"])
        details.append(f"{b['name']}: INT4 ({b['int4_test']}) moves the uncalibrated ECE by "
                       f"{100 * shift['mean']:+.2f} ± {100 * shift['sd']:.2f} points against fp32 ({shift['verdict']}).")
    if len(wins) == len(blocks):
        word, reason = "holds", "Fuzzy+noise has clearly lower INT4 ECE than both TS and Dirichlet on every data set."
    elif not wins:
        word = "does not hold"
        reason = ("On no data set does Fuzzy+noise, fitted and tested at INT4, have clearly lower ECE than both TS "
                  "and Dirichlet.")
    else:
        word = "holds partly"
        reason = (f"Fuzzy+noise has clearly lower INT4 ECE than both TS and Dirichlet on {', '.join(wins)} only "
                  f"({len(wins)} of {len(blocks)} data sets).")
    return {"word": word, "reason": reason, "details": details, "wins": wins}


# --------------------------------------------------------------------------- figures and tables
def metric_figure(blocks: list[dict[str, Any]], metric: str) -> Any:
    """Mean ± sd of ``metric`` by test precision, one marker per method; rows data sets, columns fit sources."""
    from matplotlib.figure import Figure

    scale = 1.0 if metric == "nll" else 100.0
    fig = Figure(figsize=(11.0, 2.9 * len(blocks) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(blocks), 2, squeeze=False))
    offsets = np.linspace(-0.25, 0.25, len(METHODS))
    for row, b in zip(axes, blocks):
        for ax, source in zip(row, b["sources"]):
            x = np.arange(len(b["tests"]))
            for off, m in zip(offsets, METHODS):
                st = [b["summary"][source][t][m][metric] for t in b["tests"]]
                ax.errorbar(x + off, [scale * s["mean"] for s in st], yerr=[scale * s["sd"] for s in st], fmt="o",
                            ms=4, capsize=2, label=m)
            ax.set_xticks(x, b["tests"], fontsize="small")
            ax.set_title(f"{b['name']}: fitted on {source}", fontsize="medium")
            ax.set_ylabel(LABELS[metric])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(METHODS), fontsize="small")
    return fig


def _diff(metric: str, c: dict[str, Any]) -> str:
    if c["verdict"] == "identical":
        return "identical"
    p = "–" if c["p"] is None else (f"{c['p']:.2g}" if c["p"] >= 1e-3 else "<0.001")
    value = f"{c['mean']:+.4f}" if metric == "nll" else f"{100 * c['mean']:+.2f}"
    mark = {"lower": " **↓**", "higher": " **↑**"}.get(c["verdict"], "")
    return f"{value} ({c['n_lower']}/{c['n']}, p {p}){mark}"


def _ms(metric: str, stat: dict[str, float]) -> str:
    return h.fmt_ms(stat, 1, 4) if metric == "nll" else h.fmt_ms(stat, 100, 2)


def tables(report: dict[str, Any], *, full: bool) -> list[str]:
    """The generated markdown: summary, scorecard, per-data-set tables, comparisons, fits (``full``: every metric)."""
    blocks, card, v = report["datasets"], report["scorecard"], report["verdict"]
    md = [f"Run {report['date']} by `{report['command']}`: {report['n_splits']} splits, seed {report['seed']}, "
          f"`--threads {report['threads']}`, wall time {report['wall_time_s']:.0f} s"
          + (" (**quick smoke test**)" if report["quick"] else "") + "."]
    md += [f"- **{b['name']}**: {b['about']}; {b['n_calibration']} calibration / {b['n_test']} test rows per split; "
           f"fit sources {', '.join(b['sources'])}." for b in blocks]
    md += [f"- {n}" for n in report["notes"]]
    md += [f"- Methods: {report['methods']}.",
           "- Versions: " + ", ".join(f"{k} {val}" for k, val in report["versions"].items())
           + (f"; commit {report['git_commit']}" if report.get("git_commit") else "") + ".",
           "", f"**Verdict: {v['word']}.** {v['reason']}", "", "### Computed summary", ""]
    md += [f"- {d}" for d in v["details"]]
    md += ["", "Settings (data set × fit source × test precision) by the one-sd verdict of a − b "
           "(lower / higher / within noise / identical):", "",
           "| comparison (a − b) | " + " | ".join(LABELS[k].replace(" %", "") for k in COMPARED) + " |",
           "|---|" + "---|" * len(COMPARED)]
    for a, b, _ in COMPARISONS:
        md.append(f"| {a} − {b} | " + " | ".join(" / ".join(str(c[x]) for x in ("lower", "higher", "within noise",
                                                                               "identical"))
                                                for c in card[f"{a} - {b}"].values()) + " |")
    for b in blocks:
        md += ["", f"### {b['name']}"]
        for k in (METRICS if full else ("ece", "nll", "accuracy")):
            first = list(b["sources"])[0]
            md += ["", f"{LABELS[k]}, mean ± sd over {report['n_splits']} splits:", "",
                   "| fitted on | method | " + " | ".join(b["tests"]) + " |", "|---|---|" + "---:|" * len(b["tests"]),
                   "| — | uncalibrated | " + " | ".join(_ms(k, b["summary"][first][t]["uncalibrated"][k])
                                                    for t in b["tests"]) + " |"]
            md += [f"| {s} | {m} | " + " | ".join(_ms(k, b["summary"][s][t][m][k]) for t in b["tests"]) + " |"
                   for s in b["sources"] for m in FITTED]
    md += ["", "### Paired comparisons", "", "Cells: mean of a − b (ECE-type in points), splits where a is lower / "
           "splits, Wilcoxon p; **↓** / **↑** clearly lower / higher (one-sd rule); identical: equal on every split to "
           f"{SAME:g}."]
    for a, b, what in COMPARISONS:
        for k in (COMPARED if full else ("ece", "nll")):
            md += ["", f"#### {a} − {b}, {LABELS[k].replace(' %', '')}: {what}"]
            for blk in blocks:
                md += ["", f"*{blk['name']}*", "", "| fitted on | " + " | ".join(blk["tests"]) + " |",
                       "|---|" + "---:|" * len(blk["tests"])]
                md += [f"| {s} | " + " | ".join(_diff(k, blk["comparisons"][s][t][f"{a} - {b}"][k])
                                                for t in blk["tests"]) + " |" for s in blk["sources"]]
    md += ["", "### Fitting on INT4 logits instead of fp32", "",
           "Per method: score when fitted on the INT4 source minus score when fitted on fp32, same splits."]
    for k in (COMPARED if full else ("ece", "nll")):
        md += ["", f"{LABELS[k].replace(' %', '')}:", "", "| data set | tested on | " + " | ".join(FITTED) + " |",
               "|---|---|" + "---:|" * len(FITTED)]
        md += [f"| {b['name']} | {t} | " + " | ".join(_diff(k, b["source_effect"][t][m][k]) for m in FITTED) + " |"
               for b in blocks for t in ("fp32", b["int4_test"])]
    md += ["", "### Fits", "", "Mean fit time (seconds, one thread, shared machine), fits whose gated maps were kept "
           "(fuzzy), and size (float parameters × 4 bytes).", "",
           "| data set | fitted on | " + " | ".join(FITTED) + " |", "|---|---|" + "---:|" * len(FITTED)]
    for b in blocks:
        for s, f in b["fits"].items():
            md.append(f"| {b['name']} | {s} | " + " | ".join(
                f"{f[m]['mean_seconds']:.2f} s, {'/'.join(str(x) for x in f[m]['nbytes'])} B"
                + (f", gated {f[m]['n_gated']}/{f[m]['n_fits']}" if m.startswith("Fuzzy") else "") for m in FITTED)
                + " |")
    if report["warnings"]:
        md += ["", "Fit warnings: " + "; ".join(report["warnings"]) + "."]
    md += ["", "### Figures", ""] + h.figure_markdown(report["figures"])
    return md


def render(report: dict[str, Any], paths: dict[str, Path]) -> tuple[str, str]:
    """The results markdown (every table) and the docs page (its hand-written text kept)."""
    full = [f"# FuzzyDirichlet robustness study: results{' (quick smoke test)' if report['quick'] else ''}", "",
            f"Generated by `{report['command']}`; see `docs/study-fuzzy.md` for the method and the reading. "
            "Do not edit by hand.", ""] + tables(report, full=True)
    doc = h.region_page(paths["doc"], "\n".join(tables(report, full=False)), MARKS,
                        title="FuzzyDirichlet robustness study")
    # figure links of the results file are relative to benchmarks/results/, the page's to docs/
    rel = os.path.relpath(paths["figures"], paths["md"].parent).replace(os.sep, "/")
    md = "\n".join(full).replace("](../figures/", f"]({rel}/").replace("](figures/", f"]({rel}/")
    return md + "\n", doc


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_study_arguments(parser, default_splits=20, quick_splits=2)
    parser.add_argument("--page-only", action="store_true",
                        help="recompute the verdict from the results JSON and rewrite it and the markdown")
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    paths = h.output_paths(args, h.committed_outputs("study_fuzzy", "study-fuzzy.md"), prefix="precal-study-fuzzy-")
    if args.page_only:
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        report["verdict"] = h.json_ready(verdict(report))
        print("wrote " + ", ".join(str(x) for x in h.write_study(staged, paths, report, *render(report, paths))))
        return 0
    h.set_threads(args.threads)
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    data, notes = digits_datasets(args.seed), []
    if args.quick:
        notes.append("Quick smoke test: the digits data sets only, few splits; not the study's results.")
    else:
        try:
            data += shared_datasets()
        except h.DataError as exc:
            notes.append(f"Skipped the ResNet-50 data sets: {exc}.")
    print(f"study_fuzzy: {len(data)} data sets, {args.splits} splits, --threads {args.threads}", flush=True)
    blocks, warn = [], {}
    for ds in data:
        t0 = time.perf_counter()
        splits = h.make_splits(ds["y"], args.splits, args.seed)
        outs = h.parallel_map(one_split, [(ds, cal, test, args.seed + s) for s, (cal, test) in enumerate(splits)],
                              args.threads)
        for text in (t for o in outs for t in o["warnings"]):
            warn[text] = warn.get(text, 0) + 1
        blocks.append(summarize(ds, splits, outs))
        s = blocks[-1]["summary"][list(ds["sources"])[1]][ds["int4_test"]]
        print(f"  {ds['name']} ({time.perf_counter() - t0:.0f} s), INT4-fitted, at {ds['int4_test']}, ECE %: "
              + " ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}" for m in METHODS), flush=True)
    figures = []
    for metric in ("ece", "nll"):
        path = h.save_figure(metric_figure(blocks, metric), staged, paths, f"study-fuzzy-{metric}.png")
        figures.append({"path": path, "caption": f"{LABELS[metric]} by test precision (mean ± sd over {args.splits} "
                                                 "splits); left: calibrators fitted on fp32 logits, right: on INT4."})
    report: dict[str, Any] = {
        "study": "FuzzyDirichletCalibrator robustness to INT4 (seed 003)", "source": SOURCE, "claim": CLAIM,
        "script": SCRIPT, "command": RERUN + (" --quick" if args.quick else f" --splits {args.splits} --threads "
                                                                             f"{args.threads}"),
        "date": h.utc_now(), "quick": args.quick, "seed": args.seed, "n_splits": args.splits, "threads": args.threads,
        "versions": h.versions(), "git_commit": h.git_commit(), "notes": notes,
        "methods": ", ".join(f"{k} = `{m.describe()}`" for k, m in
                             h.method_table(METHODS, precision="<fit source format>",
                                            random_state="seed + s")[0].items() if m),
        "datasets": blocks, "scorecard": scorecard(blocks),
        "warnings": [f"{t} (on {c} of {len(blocks) * args.splits} splits)" for t, c in sorted(warn.items())],
        "figures": figures,
    }
    report = h.json_ready(report)
    report["verdict"] = h.json_ready(verdict(report))
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    written = h.write_study(staged, paths, report, *render(report, paths))
    print(f"\nVerdict: {report['verdict']['word']}. {report['verdict']['reason']}")
    print("\n".join(f"- {d}" for d in report["verdict"]["details"]))
    print(f"wall time {report['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("study_fuzzy", main))

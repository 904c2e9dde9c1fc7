"""Study: is AutoCalibrator's default safe on small calibration sets?

``AutoCalibrator()`` (``metric="ece"``) admits a candidate other than temperature scaling
only if its pooled out-of-fold ECE is below TS's by more than the bootstrap standard error
of that difference (``precal.calibration.auto.pooled_ece_standard_error``), besides the NLL
and accuracy guards. With a few hundred rows the pooled ECE is noisy, and without that
margin a top-label map could win it by chance and then calibrate new data worse than TS.

**Claim.** On calibration sets of 300 and 1 000 rows, ``AutoCalibrator()`` is never clearly
worse than ``TemperatureScaling()`` on held-out top-label ECE (the paired one-sd rule of
``harness.paired``) and its mean held-out NLL is at most TS's + 0.005, in every setting.

A. **Data.** Three synthetic 10-class sets of 20 000 rows (:func:`synthetic`): two whose
   only miscalibration is a temperature, at about 31 % and 40 % accuracy, and one at 40 %
   with a top-logit distortion no temperature fixes (the same labels and noise as the
   second), always run; and, when
   ``../shared/data/logits`` is present, the test rows of every file there at fp32 and
   the two true-logit ResNet-50 files rounded to int4 in logit space (as
   ``quality_bar.py`` loads them).
B. **Protocol.** ``--splits`` (10) stratified 50/50 splits (``harness.make_splits``); from
   each calibration half a seeded random subset of ``n`` rows for ``n`` in :data:`SIZES`
   is the calibration set, the whole test half the test set. Methods: TS,
   ``AutoCalibrator()`` and, as the ablation, the same rule without the margin
   (:class:`AutoWithoutMargin`: a pooled ECE below TS's suffices, through the class's
   ``_ece_margin`` switch). Scores (test half):
   accuracy, ECE (15 equal-width bins), NLL.
C. **Verdict.** The claim holds when no (setting, ``n``) has Auto clearly above TS on ECE
   and every one has Auto's mean NLL at most TS's + :data:`NLL_SLACK`. The ablation's
   counts show what the margin changes.

Outputs: ``benchmarks/results/study_auto_small.{json,md}`` and ``docs/study-auto-small.md``.
Run from the repository root::

    python benchmarks/study_auto_small.py --threads 2   # full run
    python benchmarks/study_auto_small.py --quick       # smoke test into a temp dir
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks import harness as h  # noqa: E402
from precal.calibration import AutoCalibrator, TemperatureScaling  # noqa: E402

SCRIPT = "benchmarks/study_auto_small.py"
RERUN = f"python {SCRIPT}"
SIZES = (300, 1000)
NLL_SLACK = 0.005
METRICS = ("accuracy", "ece", "nll")
METHODS = ("TS", "Auto", "Auto, no margin")
#: Synthetic sets: name -> (signal a, temperature t, top-logit boost c, seed) of :func:`synthetic`.
SYNTHETIC = {"synthetic 31 %, temperature only": (0.9, 2.5, 0.0, 1),
             "synthetic 40 %, temperature only": (1.2, 2.5, 0.0, 2),
             "synthetic 40 %, top-logit distortion": (1.2, 2.5, 2.0, 2)}
SYNTHETIC_ROWS, SYNTHETIC_CLASSES = 20_000, 10
QUICK = {"sizes": (300,), "rows": 4000, "shared": False}


class AutoWithoutMargin(AutoCalibrator):
    """The ablation: ``AutoCalibrator()`` whose ECE rule is only ``pooled < pooled(TS)`` (no margin)."""

    _ece_margin = False


FACTORIES = {"TS": TemperatureScaling, "Auto": AutoCalibrator, "Auto, no margin": AutoWithoutMargin}


def synthetic(a: float, t: float, c: float, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``z = t (a e_y + N(0, I))``, then the top logit raised by ``c exp(-margin)``.

    ``a`` sets the accuracy (1.2: about 40 % at 10 classes), ``t`` an over-confidence a
    temperature undoes, and ``c`` a distortion that only a map of the top confidence can
    undo: rows whose top two logits are close are pushed up the most.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = t * (a * np.eye(k)[y] + rng.normal(size=(n, k)))
    top = np.sort(z, axis=1)
    z[np.arange(n), z.argmax(axis=1)] += c * np.exp(-(top[:, -1] - top[:, -2]))
    return z, y


def load_data(quick: bool, notes: list[str]) -> list[dict[str, Any]]:
    """The settings: ``{"name", "z", "y"}``; the shared files only when present (and not --quick)."""
    rows = QUICK["rows"] if quick else SYNTHETIC_ROWS
    data = [{"name": name, "z": z, "y": y} for name, (a, t, c, seed) in SYNTHETIC.items()
            for z, y in [synthetic(a, t, c, rows, SYNTHETIC_CLASSES, seed)]]
    if quick:
        return data
    from benchmarks import quality_bar as qb

    try:
        settings, _ = qb.load_settings(qb.FILES, ("int4",), None, ())
    except h.DataError as exc:
        notes.append(f"Only the synthetic sets were measured: {exc}.")
        return data
    return data + [{"name": s["key"].replace("|", " @ "), "z": s["z"], "y": s["y"]} for s in settings]


def one_split(item: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]) -> dict[str, dict[str, Any]]:
    """Every method fitted on ``n`` random rows of the calibration half, scored on the test half."""
    z, y, cal, test, n, seed = item
    rows = np.sort(np.random.default_rng(seed).permutation(cal)[:n])
    out = {}
    for label, factory in FACTORIES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TS bound warnings on tiny sets are not what is measured here
            est = factory().fit(z[rows], y[rows])
        out[label] = h.scores(y[test], est.predict_proba(z[test]), METRICS) | {
            "chosen": getattr(est, "best_name_", None)}
    return out


def summarize(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method the per-split scores and mean ± sd; Auto's picks; the paired differences to TS."""
    per = {m: {k: [o[m][k] for o in outs] for k in METRICS} for m in METHODS}
    result: dict[str, Any] = {"per_split": per, "summary": {m: {k: h.mean_sd(v) for k, v in d.items()}
                                                           for m, d in per.items()}}
    result["chosen"] = {m: dict(sorted({c: [o[m]["chosen"] for o in outs].count(c)
                                        for c in {o[m]["chosen"] for o in outs}}.items()))
                        for m in METHODS[1:]}
    result["vs_ts"] = {m: {k: h.paired(per[m][k], per["TS"][k]) for k in ("ece", "nll")} for m in METHODS[1:]}
    return result


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Holds when Auto is nowhere clearly above TS on ECE and its NLL stays within TS's + NLL_SLACK."""
    worse, nll_over, ablation_worse, ablation_better, better = [], [], [], [], []
    for key, st in report["settings"].items():
        auto = st["vs_ts"]["Auto"]
        if auto["ece"]["verdict"] == "higher":
            worse.append(key)
        if auto["ece"]["verdict"] == "lower":
            better.append(key)
        if auto["nll"]["mean"] > NLL_SLACK:
            nll_over.append(key)
        plain = st["vs_ts"]["Auto, no margin"]
        if plain["ece"]["verdict"] == "higher":
            ablation_worse.append(key)
        if plain["ece"]["verdict"] == "lower":
            ablation_better.append(key)
    n = len(report["settings"])
    holds = not worse and not nll_over
    ece = {m: np.array([st["summary"][m]["ece"]["mean"] for st in report["settings"].values()]) for m in METHODS}
    excess = {m: ece[m] - ece["TS"] for m in METHODS[1:]}
    details = [
        f"Auto clearly above TS on held-out ECE: {len(worse)} of {n} settings" + (f" ({'; '.join(worse)})" if worse
                                                                                  else "") + ".",
        f"Auto's mean NLL above TS's + {NLL_SLACK}: {len(nll_over)} of {n}" + (
            f" ({'; '.join(nll_over)})" if nll_over else "") + ".",
        f"Auto clearly below TS on ECE: {len(better)} of {n}" + (f" ({'; '.join(better)})" if better else "") + ".",
        f"Ablation (no margin): clearly above TS on ECE in {len(ablation_worse)} of {n}" + (
            f" ({'; '.join(ablation_worse)})" if ablation_worse else "") + f", clearly below in "
        f"{len(ablation_better)}" + (f" ({'; '.join(ablation_better)})" if ablation_better else "") + ".",
        "Mean held-out ECE over the settings: " + ", ".join(f"{m} {100 * ece[m].mean():.2f} %" for m in METHODS)
        + ". Mean ECE above TS's in " + " and ".join(
            f"{int(np.sum(excess[m] > 0))} ({m}, largest excess {100 * excess[m].max():+.2f} points)"
            for m in METHODS[1:]) + f" of {n} settings.",
    ]
    sizes = [st["n"] for st in report["settings"].values()]
    for size in sorted(set(sizes)):
        rows = np.array(sizes) == size
        d = excess["Auto"][rows]
        details.append(f"At n = {size}: Auto's mean ECE above TS's in {int(np.sum(d > 0))}, equal in "
                       f"{int(np.sum(d == 0))}, below in {int(np.sum(d < 0))} of {int(rows.sum())} settings "
                       f"(largest excess {100 * d.max():+.2f} points, mean {100 * d.mean():+.2f}).")
    if holds:
        reason = f"Auto is nowhere clearly worse than TS on held-out ECE and its NLL stays within TS's + {NLL_SLACK}."
    else:
        reason = " and ".join(part for part, bad in (
            (f"Auto is clearly worse than TS on held-out ECE in {len(worse)} setting(s)", worse),
            (f"its mean NLL exceeds TS's + {NLL_SLACK} in {len(nll_over)}", nll_over)) if bad) + " (see the details)."
    return {"word": "holds" if holds else "does not hold", "reason": reason, "details": details}


def render(report: dict[str, Any]) -> tuple[str, str]:
    """The results file and the docs page."""
    rows = ["", "## Held-out scores, mean ± sd over splits", "",
            "| setting | n cal | TS ECE % | Auto ECE % | no-margin ECE % | Auto − TS ECE (verdict) "
            "| no-margin − TS ECE (verdict) | Auto − TS NLL | no-margin − TS NLL | Auto picks |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for key, st in report["settings"].items():
        s, v = st["summary"], st["vs_ts"]
        picks = ", ".join(f"{c} ×{k}" for c, k in st["chosen"]["Auto"].items())
        rows.append(
            f"| {st['data']} | {st['n']} | {100 * s['TS']['ece']['mean']:.2f} ± {100 * s['TS']['ece']['sd']:.2f} "
            f"| {100 * s['Auto']['ece']['mean']:.2f} ± {100 * s['Auto']['ece']['sd']:.2f} "
            f"| {100 * s['Auto, no margin']['ece']['mean']:.2f} ± {100 * s['Auto, no margin']['ece']['sd']:.2f} "
            f"| {100 * v['Auto']['ece']['mean']:+.2f} ({v['Auto']['ece']['verdict']}) "
            f"| {100 * v['Auto, no margin']['ece']['mean']:+.2f} ({v['Auto, no margin']['ece']['verdict']}) "
            f"| {v['Auto']['nll']['mean']:+.4f} | {v['Auto, no margin']['nll']['mean']:+.4f} | {picks} |")
    method = [
        f"- Data: {'; '.join(report['datasets'])}.",
        f"- {report['n_splits']} stratified 50/50 splits (`harness.make_splits`, seed {report['seed']}); from each "
        f"calibration half a seeded random subset of n ∈ {{{', '.join(map(str, report['sizes']))}}} rows is the "
        "calibration set, the whole test half the test set.",
        "- Methods: TS = `TemperatureScaling()`; Auto = `AutoCalibrator()`; no margin = the same rule with a pooled "
        "ECE below TS's enough (`AutoWithoutMargin`, the ablation: the rule before the margin).",
        "- Verdict per setting by `harness.paired` (one-sd rule on the paired per-split differences); the claim "
        f"holds when Auto is nowhere clearly above TS on ECE and its mean NLL is at most TS's + {NLL_SLACK}.",
    ]
    return h.claim_pages(
        report, title="Study: AutoCalibrator on small calibration sets", results_title="study_auto_small",
        rerun=RERUN, json_name="study_auto_small.json", doc_name="study-auto-small.md",
        source="issue 14 (a default that never makes things worse) and the small-set caveat of "
               "[Calibration](calibration.md)", source_label="Source",
        claim=f"on calibration sets of {' and '.join(map(str, report['sizes']))} rows, `AutoCalibrator()` is never "
              "clearly worse than `TemperatureScaling()` on held-out top-label ECE and its mean NLL is at most TS's "
              f"+ {NLL_SLACK}, in every setting.",
        run_note=f" on a 2-core machine, --threads {report['threads']}", notes=report["notes"], method=method,
        tables=rows, full_run="full run (the shared logits when present)",
        needs=["Uses `../shared/data/logits` when present; the synthetic sets always run.", ""])


def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_study_arguments(parser, default_splits=10, quick_splits=2)
    args = h.finish_study_arguments(parser, parser.parse_args(argv))
    paths = h.output_paths(args, h.committed_outputs("study_auto_small", "study-auto-small.md"),
                           prefix="precal-study-auto-small-")
    start, cpu_start = time.perf_counter(), h.cpu_seconds()
    notes: list[str] = []
    data = load_data(args.quick, notes)
    sizes = QUICK["sizes"] if args.quick else SIZES
    print(f"study_auto_small: {len(data)} data sets × n {sizes}; {args.splits} splits; --threads {args.threads}",
          flush=True)
    settings = {}
    for ds in data:
        splits = h.make_splits(ds["y"], args.splits, args.seed)
        for n in sizes:
            t0 = time.perf_counter()
            items = [(ds["z"], ds["y"], cal, test, n, args.seed + s) for s, (cal, test) in enumerate(splits)]
            key = f"{ds['name']}, n = {n}"
            settings[key] = {"data": ds["name"], "n": n, "n_test": int(len(splits[0][1]))} | summarize(
                h.parallel_map(one_split, items, args.threads))
            v = settings[key]["vs_ts"]["Auto"]["ece"]
            print(f"  {key} ({time.perf_counter() - t0:.0f} s): Auto − TS ECE {100 * v['mean']:+.2f} "
                  f"± {100 * v['sd']:.2f} ({v['verdict']})", flush=True)
    report: dict[str, Any] = {
        "study": "AutoCalibrator on small calibration sets", "script": SCRIPT,
        "command": RERUN + (" --quick" if args.quick else f" --splits {args.splits} --threads {args.threads}"),
        "date": h.utc_now(), "quick": args.quick, "seed": args.seed, "n_splits": args.splits,
        "threads": args.threads, "sizes": list(sizes), "datasets": [d["name"] for d in data], "notes": notes,
        "versions": h.versions(), "git_commit": h.git_commit(), "settings": settings, "figures": [],
    }
    report = h.json_ready(report)
    report["verdict"] = h.json_ready(verdict(report))
    report["wall_time_s"] = time.perf_counter() - start
    report["cpu_time_s"] = h.cpu_seconds() - cpu_start
    written = h.write_study(staged, paths, report, *render(report))
    print(f"\nVerdict: the claim {report['verdict']['word']}. {report['verdict']['reason']}")
    print("\n".join(f"- {d}" for d in report["verdict"]["details"]))
    print(f"wall time {report['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("study_auto_small", main))

"""Study: which default for FuzzyDirichletCalibrator's ``reg_region`` (ρ)?

``FuzzyDirichletCalibrator`` gives region ``r`` the map ``(W + ΔW_r, b + Δb_r)`` and penalises
the deviations with ``ρ (‖ΔW_r‖²/#W + ‖Δb_r‖²/K)``: ``ρ -> ∞`` ties every region to the shared
map (Dirichlet calibration, fitted on the clean and noisy logits together), small ``ρ`` frees
the gates. This script measures held-out calibration over a grid of ``ρ`` on real models and
data, against ``DirichletCalibrator`` and ``TemperatureScaling`` on the same splits.

A. **Data sets** (built by ``benchmarks/study_fuzzy.py``, imported, not copied):

   - ``digits-10``: the precal demo CNN's 899 held-out images (``study_fuzzy.digits_datasets``),
     logits of the whole network emulated at ``w4a4`` (the INT4 fit source) and ``fp32``.
   - ``resnet50-10``: the real CIFAR-10 test logits of a ResNet-50
     (``../shared/data/logits/resnet50_cifar10.npz``, 10 000 rows; ``study_fuzzy.shared_datasets``),
     as stored (``fp32``) and rounded to INT4 with one scale per row (``logit-int4``).
   - ``resnet50-3``: its most mutually confused three classes (3 000 rows), built the same way.

   The ResNet-50 sets are skipped with a one-line note (repeated in the outputs) when the
   shared folder or file is absent.

B. **Protocol.** ``--splits`` stratified 50/50 calibration/test splits of every data set
   (``study_pacs.make_splits``: split ``s`` from ``np.random.default_rng(SEED + s)``). For
   each fit source (``--sources``: ``int4`` = w4a4 / logit-int4, ``fp32``) every calibrator is
   fitted on the calibration half of that source and scored on the test half *of the same
   source* (the deployed precision is the one the calibrator was fitted on):
   ``FuzzyDirichletCalibrator(reg_region=ρ, random_state=SEED + s)`` for every ``ρ`` in
   ``--rho``, all other hyperparameters at the estimator's defaults (``noise="int4"``,
   ``n_noise_copies=2``, ``n_regions=3``, ``max_iter=500``, ...), and the baselines
   ``TemperatureScaling()`` and ``DirichletCalibrator()``. Scores (``study_fuzzy.scores``):
   NLL, ECE and ACE (15 bins, top label), class-wise ECE and accuracy on the test half, and
   NLL on the calibration half (the training NLL; test minus training NLL is the
   generalisation gap). Per fit: whether it raised a ``ConvergenceWarning`` (counted as not
   converged), ``n_iter_``, the wall time of ``fit``, and for the fuzzy fits the gate centres
   and widths and the *region spread*, the root mean square over entries of ``W_r - mean_r
   W_r`` and ``b_r - mean_r b_r`` (0 when every region applies the same map).

C. **Comparisons**, paired over splits, of every method against Dirichlet (and TS) on NLL,
   ECE and ACE: mean difference, sd, splits won, two-sided Wilcoxon signed-rank p
   (``study_fuzzy.paired``). Significant at p < 0.05; with ``n`` splits the smallest
   attainable p is ``2 / 2**n`` (5 splits: 0.0625, never significant), and the splits reuse one
   pool of data, so p-values are nominal.

D. **Parallelism.** The fits are independent: they run over ``--workers`` (default 2) spawned
   processes, one torch/BLAS thread each (``harness.set_threads``), longest first.
   Fit times are therefore taken with ``--workers`` fits running at once.

E. **Outputs**: ``benchmarks/results/study_fuzzy_reg.json`` (every number, per-split values,
   versions, the command), ``benchmarks/results/study_fuzzy_reg.md`` (all tables),
   ``docs/figures/study-fuzzy-reg-nll-ece.png`` and the generated region of
   ``docs/study-fuzzy-reg.md`` (between its BEGIN/END GENERATED markers; the text around it
   is written by hand and left alone). ``--out DIR`` writes all of it under DIR (a new page
   there when DIR has none); ``--quick`` (digits-10 and resnet50-3 only, 2 splits, ρ in
   {0, 1e-2, 10}, ``max_iter=40``, INT4 source) writes to a new temporary directory unless
   ``--out`` is given, never to the committed outputs; ``--render-only`` re-derives the
   verdicts (rewritten into the JSON), the figure and both markdown files from the per-split
   values in the JSON already written, without fitting. Every finished fit is appended to a checkpoint
   (JSON lines in the temp directory, named after the seed, ``max_iter``, the data folder and
   the sha256 of ``fuzzy.py``); ``--resume`` reuses it after an interruption, and the JSON
   records how many fits came from it.

Run from the repository root::

    python benchmarks/study_fuzzy_reg.py            # full run (about 15 min with 2 workers)
    python benchmarks/study_fuzzy_reg.py --quick    # smoke test (well under a minute)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import set_threads  # noqa: E402
from study_fuzzy import (  # noqa: E402
    _clean,
    digits_datasets,
    paired,
    scores,
    shared_datasets,
    to_json,
)
from study_pacs import _git_commit, make_splits, mean_sd, versions  # noqa: E402

from precal.calibration import DirichletCalibrator, FuzzyDirichletCalibrator, TemperatureScaling  # noqa: E402
from precal.metrics import negative_log_likelihood  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "logits"
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_DIR = REPO_ROOT / "docs"
SCRIPT = "benchmarks/study_fuzzy_reg.py"

BEGIN_MARK = "<!-- BEGIN GENERATED by benchmarks/study_fuzzy_reg.py: do not edit by hand -->"
END_MARK = "<!-- END GENERATED -->"

#: the brief's grid 0 ... 100, plus 1000: the first full run (6 splits) had its best held-out NLL at 100, the
#: edge of the grid, so the grid goes one step further to show where the curve flattens.
RHO_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
RHO_QUICK = (0.0, 1e-2, 10.0)
DATASETS = ("digits-10", "resnet50-10", "resnet50-3")
DATASETS_QUICK = ("digits-10", "resnet50-3")
#: fit source kind -> the logits of each data set it names
SOURCE_KINDS = ("int4", "fp32")
SOURCE_OF = {"int4": {"digits-10": "w4a4", "resnet50-10": "logit-int4", "resnet50-3": "logit-int4"},
             "fp32": {"digits-10": "fp32", "resnet50-10": "fp32", "resnet50-3": "fp32"}}
DEFAULT_SPLITS = 12
QUICK_SPLITS = 2
QUICK_MAX_ITER = 40
BASELINES = ("TS", "Dirichlet")
METRICS = ("nll", "ece", "ace", "cwece", "accuracy")
COMPARED = ("nll", "ece", "ace")
ALPHA = 0.05
#: Mean test-NLL differences below this count as ties when ρ values are ranked (about 0.05% of the
#: ResNet-50 NLL; values of ρ that fit practically the same map differ by less).
NLL_TOL = 1e-4
FIG_DPI = 100
FIG_FILE = "study-fuzzy-reg-nll-ece.png"


# --------------------------------------------------------------------------- one fit (runs in a worker)
def rho_label(rho: float) -> str:
    """``"ρ=0"``, ``"ρ=0.001"``, ``"ρ=10"``: the method key of a fuzzy fit."""
    return f"ρ={rho:g}"


def make_calibrator(method: str, rho: float | None, random_state: int, max_iter: int | None) -> Any:
    """A fresh calibrator: the baselines at their defaults, the fuzzy one with ``reg_region=rho``.

    The fuzzy fits keep their gated maps (``check_gates=False``): this study measures what ``ρ``
    does to the gated fit itself. With the default held-out check, a fit whose gates do not win
    on every fold is Dirichlet's map whatever ``ρ`` is (see study_fuzzy_dirichlet for that).
    """
    if method == "TS":
        return TemperatureScaling()
    if method == "Dirichlet":
        return DirichletCalibrator()
    if method == "Fuzzy":
        cap = {} if max_iter is None else {"max_iter": max_iter}
        return FuzzyDirichletCalibrator(reg_region=rho, random_state=random_state, check_gates=False, **cap)
    raise ValueError(f"method must be 'TS', 'Dirichlet' or 'Fuzzy', got {method!r}")


def region_spread(cal: FuzzyDirichletCalibrator) -> float:
    """Root mean square over entries of ``W_r - mean_r W_r`` and ``b_r - mean_r b_r`` (0: one map)."""
    dw = cal.coefs_ - cal.coefs_.mean(axis=0)
    db = cal.intercepts_ - cal.intercepts_.mean(axis=0)
    return float(np.sqrt((np.sum(dw**2) + np.sum(db**2)) / (dw.size + db.size)))


def fit_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fit one calibrator on ``z_cal``; score it on ``z_test`` (and the training NLL on ``z_cal``)."""
    from sklearn.exceptions import ConvergenceWarning

    cal = make_calibrator(job["method"], job["rho"], job["random_state"], job["max_iter"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal.fit(job["z_cal"], job["y_cal"])
    seconds = time.perf_counter() - t0
    conv = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    out = {
        "key": job["key"],
        "scores": scores(job["y_test"], cal.predict_proba(job["z_test"])),
        "train_nll": negative_log_likelihood(job["y_cal"], cal.predict_proba(job["z_cal"])),
        "converged": not conv,
        "warning": re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", conv[0])[:200] if conv else None,
        "n_iter": int(getattr(cal, "n_iter_", 0)),
        "seconds": seconds,
    }
    if isinstance(cal, FuzzyDirichletCalibrator):
        out["centers"] = cal.centers_.tolist()
        out["widths"] = cal.widths_.tolist()
        out["spread"] = region_spread(cal)
    return out


def _cost(job: dict[str, Any]) -> float:
    """Rough relative cost, to start the longest fits first."""
    n, k = job["z_cal"].shape
    base = n * k * k
    if job["method"] != "Fuzzy":
        return 0.01 * base
    return base * (3.0 if job["rho"] <= 1.0 else 1.0)


def run_jobs(jobs: list[dict[str, Any]], workers: int, *, checkpoint: Path | None = None,
             done_before: dict[tuple, dict[str, Any]] | None = None, log_every: int = 10) -> list[dict[str, Any]]:
    """``fit_job`` over ``jobs`` (longest first) on ``workers`` spawned one-thread processes, with progress lines.

    Jobs whose key is in ``done_before`` are not refitted (their stored result is used); every new
    result is appended to ``checkpoint`` (JSON lines) as soon as it arrives, so an interrupted run
    can be resumed.
    """
    done_before = done_before or {}
    results: list[Any] = [done_before.get(tuple(j["key"])) for j in jobs]
    todo = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: -_cost(jobs[i]))
    if len(todo) < len(jobs):
        print(f"  {len(jobs) - len(todo)} fits taken from the checkpoint {checkpoint}", flush=True)
    t0 = time.perf_counter()
    sink = checkpoint.open("a", encoding="utf-8") if checkpoint is not None else None

    def store(i: int, result: dict[str, Any], done: int) -> None:
        results[i] = result
        if sink is not None:
            sink.write(json.dumps(_clean(result)) + "\n")
            sink.flush()
        if done % log_every == 0 or done == len(todo):
            print(f"  {done}/{len(todo)} fits, {time.perf_counter() - t0:.0f} s", flush=True)

    try:
        if workers <= 1 or len(todo) <= 1:
            for done, i in enumerate(todo, 1):
                store(i, fit_job(jobs[i]), done)
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=set_threads, initargs=(1,)) as pool:
            futures = {pool.submit(fit_job, jobs[i]): i for i in todo}
            for done, fut in enumerate(as_completed(futures), 1):
                store(futures[fut], fut.result(), done)
        return results
    finally:
        if sink is not None:
            sink.close()


def checkpoint_path(args: argparse.Namespace, fuzzy_sha: str) -> Path:
    """Per-configuration checkpoint file in the temp directory: every input a fit's result depends on."""
    sig = json.dumps({"seed": args.seed, "max_iter": args.max_iter, "fuzzy_sha": fuzzy_sha,
                      "data_dir": str(args.data_dir.resolve())}, sort_keys=True)
    return Path(tempfile.gettempdir()) / f"precal-study-fuzzy-reg-{hashlib.sha256(sig.encode()).hexdigest()[:16]}.jsonl"


def load_checkpoint(path: Path) -> dict[tuple, dict[str, Any]]:
    """Results stored by an earlier run of the same configuration (an incomplete last line is ignored)."""
    out = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[tuple(r["key"])] = r
    return out


# --------------------------------------------------------------------------- the study
def load_datasets(names: tuple[str, ...], seed: int, data_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The requested data sets (study_fuzzy's builders); ``(sets, why the shared ones were skipped)``."""
    out, skipped = [], None
    if "digits-10" in names:
        digits, _ = digits_datasets(seed)
        out += [d for d in digits if d["name"] in names]
    if any(n.startswith("resnet50") for n in names):
        shared, skipped = shared_datasets(data_dir)
        out += [d for d in shared if d["name"] in names]
    order = {n: i for i, n in enumerate(DATASETS)}
    return sorted(out, key=lambda d: order[d["name"]]), skipped


def make_jobs(datasets: list[dict[str, Any]], sources: tuple[str, ...], rhos: tuple[float, ...], n_splits: int,
              seed: int, max_iter: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every fit of the study as a picklable job; also the split sizes per data set."""
    jobs, sizes = [], {}
    for ds in datasets:
        splits = make_splits(ds["y"], n_splits, seed)
        sizes[ds["name"]] = (len(splits[0][0]), len(splits[0][1]))
        y = ds["y"]
        for kind in sources:
            z = np.asarray(ds["logits"][SOURCE_OF[kind][ds["name"]]], dtype=np.float64)
            for s, (cal, test) in enumerate(splits):
                methods = [(m, None) for m in BASELINES] + [("Fuzzy", r) for r in rhos]
                for method, rho in methods:
                    label = method if rho is None else rho_label(rho)
                    jobs.append({"key": [ds["name"], kind, s, label], "method": method, "rho": rho,
                                 "random_state": seed + s, "max_iter": max_iter if method == "Fuzzy" else None,
                                 "z_cal": z[cal], "y_cal": y[cal], "z_test": z[test], "y_test": y[test]})
    return jobs, sizes


def summarise(datasets: list[dict[str, Any]], sizes: dict[str, Any], sources: tuple[str, ...],
              rhos: tuple[float, ...], n_splits: int, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready blocks: per data set and fit source, per method: per-split values, summaries, comparisons."""
    by_key = {tuple(r["key"]): r for r in results}
    labels = list(BASELINES) + [rho_label(r) for r in rhos]
    blocks = []
    for ds in datasets:
        name = ds["name"]
        block = {"name": name, "description": ds["description"], "notes": ds["notes"], "n_classes": ds["n_classes"],
                 "n_samples": int(len(ds["y"])), "n_calibration": sizes[name][0], "n_test": sizes[name][1],
                 "sources": {}}
        for kind in sources:
            methods = {}
            for label in labels:
                fits = [by_key[(name, kind, s, label)] for s in range(n_splits)]
                per_split = {m: [f["scores"][m] for f in fits] for m in METRICS}
                per_split["train_nll"] = [f["train_nll"] for f in fits]
                per_split["gap"] = [f["scores"]["nll"] - f["train_nll"] for f in fits]
                entry = {
                    "rho": None if label in BASELINES else rhos[labels.index(label) - len(BASELINES)],
                    "per_split": per_split,
                    "summary": {m: dict(zip(("mean", "sd"), mean_sd(v))) for m, v in per_split.items()},
                    "fits": {"converged": [f["converged"] for f in fits], "n_iter": [f["n_iter"] for f in fits],
                             "seconds": [f["seconds"] for f in fits],
                             "warnings": sorted({f["warning"] for f in fits if f["warning"]})},
                }
                entry["n_converged"] = int(sum(entry["fits"]["converged"]))
                entry["median_n_iter"] = float(np.median(entry["fits"]["n_iter"]))
                entry["mean_seconds"] = float(np.mean(entry["fits"]["seconds"]))
                if label not in BASELINES:
                    entry["fits"].update({k: [f[k] for f in fits] for k in ("centers", "widths", "spread")})
                    entry["mean_spread"] = float(np.mean(entry["fits"]["spread"]))
                    entry["min_width"] = float(np.min(entry["fits"]["widths"]))
                methods[label] = entry
            for label, entry in methods.items():
                entry["vs"] = {}
                for base in BASELINES:
                    if label != base:
                        entry["vs"][base] = {m: paired(entry["per_split"][m], methods[base]["per_split"][m])
                                             for m in COMPARED}
            block["sources"][kind] = {"logits": SOURCE_OF[kind][name], "methods": methods}
        blocks.append(block)
    return blocks


def verdicts(blocks: list[dict[str, Any]], rhos: tuple[float, ...]) -> dict[str, Any]:
    """Per ρ, over every data set x fit source: significant NLL/ECE wins and losses against Dirichlet,
    converged fits, mean fit time; per setting the ρ with the lowest mean test NLL and every ρ paired
    against it; and the ρ values the two rules in :func:`summary_bullets` pick."""
    out: dict[str, Any] = {"per_rho": {}}
    settings = [(b, k) for b in blocks for k in b["sources"]]
    for rho in rhos:
        label = rho_label(rho)
        entries = [b["sources"][k]["methods"][label] for b, k in settings]
        row = {"rho": rho, "n_settings": len(settings),
               "n_fits": sum(len(e["fits"]["converged"]) for e in entries),
               "n_converged": sum(e["n_converged"] for e in entries),
               "mean_seconds": float(np.mean([s for e in entries for s in e["fits"]["seconds"]]))}
        for metric in ("nll", "ece"):
            v = [e["vs"]["Dirichlet"][metric] for e in entries]
            row[metric] = {"better": sum(c["verdict"] == "better" for c in v),
                           "worse": sum(c["verdict"] == "worse" for c in v),
                           "mean_below": sum(c["mean"] < 0 for c in v),
                           "mean_diff": [c["mean"] for c in v]}
        out["per_rho"][label] = row
    # smallest ρ whose fits all converged and whose NLL is nowhere significantly above Dirichlet's
    safe = [r for r in rhos if out["per_rho"][rho_label(r)]["n_converged"] == out["per_rho"][rho_label(r)]["n_fits"]
            and out["per_rho"][rho_label(r)]["nll"]["worse"] == 0]
    out["smallest_safe_rho"] = min(safe) if safe else None
    # per setting, the ρ with the lowest mean test NLL, and every ρ against it (paired over splits)
    out["best_nll_rho"], out["vs_best_rho"] = {}, {}
    for b, k in settings:
        methods = b["sources"][k]["methods"]
        best = min(rhos, key=lambda r: methods[rho_label(r)]["summary"]["nll"]["mean"])
        name = f"{b['name']} / {k}"
        out["best_nll_rho"][name] = best
        out.setdefault("tied_with_best", {})[name] = [
            r for r in rhos if r != best and abs(methods[rho_label(r)]["summary"]["nll"]["mean"]
                                                 - methods[rho_label(best)]["summary"]["nll"]["mean"]) <= NLL_TOL]
        out["vs_best_rho"][name] = {rho_label(r): paired(methods[rho_label(r)]["per_split"]["nll"],
                                                         methods[rho_label(best)]["per_split"]["nll"])
                                    for r in rhos if r != best}
    # smallest ρ whose fits all converged and whose NLL is nowhere above the best ρ's by a significant and
    # material margin (ties and near-ties of ρ values that fit the same map are not told apart)
    def behind(c: dict[str, Any]) -> bool:
        return c["verdict"] == "worse" and c["mean"] > NLL_TOL

    out["nll_tol"] = NLL_TOL
    out["behind_best_rho"] = {name: [lab for lab, c in by.items() if behind(c)]
                              for name, by in out["vs_best_rho"].items()}
    near_best = [r for r in rhos
                 if out["per_rho"][rho_label(r)]["n_converged"] == out["per_rho"][rho_label(r)]["n_fits"]
                 and all(rho_label(r) not in labs for labs in out["behind_best_rho"].values())]
    out["smallest_near_best_rho"] = min(near_best) if near_best else None
    out["settings"] = [f"{b['name']} / {k}" for b, k in settings]
    return out


# --------------------------------------------------------------------------- figure
def figure(report: dict[str, Any], path: Path) -> None:
    """Test NLL and ECE minus Dirichlet's vs ρ, one line per data set, TS as dashed reference; rows fit sources."""
    from matplotlib.figure import Figure

    blocks, rhos = report["datasets"], report["rho"]
    sources = report["sources"]
    positive = [r for r in rhos if r > 0]
    zero_at = (min(positive) / 10.0) if positive else 1.0
    x = np.array([r if r > 0 else zero_at for r in rhos])
    fig = Figure(figsize=(10.5, 3.2 * len(sources) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(sources), 2, squeeze=False))
    for row, kind in zip(axes, sources):
        for ax, metric, unit in zip(row, ("nll", "ece"), (1.0, 100.0)):
            ax.axhline(0.0, color="black", lw=1.0, label="DirichletCalibrator (0)")
            for i, block in enumerate(blocks):
                methods = block["sources"][kind]["methods"]
                diff = [methods[rho_label(r)]["vs"]["Dirichlet"][metric] for r in rhos]
                ax.errorbar(x * (1.0 + 0.06 * (i - 1)), [unit * d["mean"] for d in diff],
                            yerr=[unit * d["sd"] for d in diff], fmt="o-", ms=4, capsize=2, color=f"C{i}",
                            label=block["name"])
                ts = methods["TS"]["vs"]["Dirichlet"][metric]["mean"]
                ax.axhline(unit * ts, color=f"C{i}", ls="--", lw=1.0, label=f"{block['name']}: TemperatureScaling")
            ax.set_xscale("log")
            ax.set_xticks(x, ["0" if r == 0 else f"{r:g}" for r in rhos])
            ax.minorticks_off()
            ax.set_xlabel("reg_region ρ (0 drawn at the left end)")
            ax.set_ylabel("test NLL − Dirichlet's" if metric == "nll" else "test ECE − Dirichlet's (points)")
            ax.set_title(f"fitted and tested on {kind} logits", fontsize="medium")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    fig.savefig(path, dpi=FIG_DPI)


def figures_meta(report: dict[str, Any]) -> list[dict[str, str]]:
    """File name and caption of the figure (derived from the report, so ``--render-only`` can refresh it)."""
    int4 = ", ".join(f"{b['name']} {b['sources']['int4']['logits']}" for b in report["datasets"]
                     if "int4" in b["sources"])
    caption = (f"Test NLL and ECE minus DirichletCalibrator's against reg_region ρ (mean ± sd of the paired "
               f"difference over {report['n_splits']} splits), one line per data set; dashed: TemperatureScaling "
               f"minus Dirichlet; 0 is drawn at the left end of the log axis."
               + (f" INT4 logits: {int4}." if int4 else ""))
    return [{"file": FIG_FILE, "caption": caption}]


# --------------------------------------------------------------------------- markdown
def _p(c: dict[str, Any]) -> str:
    return "–" if c["p"] is None else (f"{c['p']:.2g}" if c["p"] >= 1e-3 else "<0.001")


def _diff(metric: str, c: dict[str, Any], *, short: bool = False) -> str:
    value = f"{c['mean']:+.4f}" if metric == "nll" else f"{100 * c['mean']:+.2f}"
    mark = {"better": " **↓**", "worse": " **↑**", "n.s.": ""}[c["verdict"]]
    if short:
        return f"{value} ({c['wins']}/{c['n']}){mark}"
    return f"{value} ± {c['sd'] if metric == 'nll' else 100 * c['sd']:.{4 if metric == 'nll' else 2}f} " \
           f"({c['wins']}/{c['n']}, p {_p(c)}){mark}"


def _ms(metric: str, s: dict[str, float]) -> str:
    if metric in ("nll", "train_nll", "gap"):
        return f"{s['mean']:.4f} ± {s['sd']:.4f}"
    return f"{100 * s['mean']:.2f} ± {100 * s['sd']:.2f}"


def detail_table(block: dict[str, Any], kind: str) -> list[str]:
    """One row per method: test NLL, ΔNLL, ECE, ΔECE, ACE, accuracy, training NLL, gap, fits."""
    methods = block["sources"][kind]["methods"]
    lines = ["| method | test NLL | ΔNLL vs Dirichlet | ECE % | ΔECE vs Dirichlet (pp) | ACE % | accuracy % | "
             "train NLL | NLL gap | converged | median iter | mean fit s | region spread | min width |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, e in methods.items():
        s = e["summary"]
        vs = e["vs"].get("Dirichlet")
        gates = f"{e['mean_spread']:.3f} | {e['min_width']:.3f}" if "mean_spread" in e else "— | —"
        d_nll, d_ece = (_diff(m, vs[m]) if vs else "—" for m in ("nll", "ece"))
        lines.append(
            f"| {label} | {_ms('nll', s['nll'])} | {d_nll} | {_ms('ece', s['ece'])} | {d_ece} | "
            f"{_ms('ace', s['ace'])} | {100 * s['accuracy']['mean']:.2f} | "
            f"{s['train_nll']['mean']:.4f} | {s['gap']['mean']:+.4f} | "
            f"{e['n_converged']}/{len(e['fits']['converged'])} | {e['median_n_iter']:.0f} | "
            f"{e['mean_seconds']:.2f} | {gates} |")
    return lines


def headline_table(report: dict[str, Any], kind: str) -> list[str]:
    """Rows ρ (and TS); per data set: ΔNLL and ΔECE vs Dirichlet (splits won), converged fits, fit time."""
    blocks = report["datasets"]
    head = "| method | " + " | ".join(f"{b['name']}: ΔNLL | ΔECE pp | conv. | fit s" for b in blocks) + " |"
    lines = [head, "|---|" + "---:|---:|---:|---:|" * len(blocks)]
    for label in ["TS"] + [rho_label(r) for r in report["rho"]]:
        cells = []
        for b in blocks:
            e = b["sources"][kind]["methods"][label]
            vs = e["vs"]["Dirichlet"]
            cells.append(f"{_diff('nll', vs['nll'], short=True)} | {_diff('ece', vs['ece'], short=True)} | "
                         f"{e['n_converged']}/{len(e['fits']['converged'])} | {e['mean_seconds']:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    dirichlet = []
    for b in blocks:
        e = b["sources"][kind]["methods"]["Dirichlet"]
        dirichlet.append(f"NLL {e['summary']['nll']['mean']:.4f} | ECE {100 * e['summary']['ece']['mean']:.2f}% | "
                         f"{e['n_converged']}/{len(e['fits']['converged'])} | {e['mean_seconds']:.1f}")
    lines.append("| Dirichlet (reference) | " + " | ".join(dirichlet) + " |")
    return lines


def summary_bullets(report: dict[str, Any]) -> list[str]:
    """Facts computed from the results; the hand-written reading builds on them."""
    v = report["verdicts"]
    n_set = len(v["settings"])
    out = []
    for label, row in v["per_rho"].items():
        out.append(f"{label}: NLL vs Dirichlet significantly better in {row['nll']['better']}, worse in "
                   f"{row['nll']['worse']} of {n_set} settings (mean lower in {row['nll']['mean_below']}); ECE "
                   f"better in {row['ece']['better']}, worse in {row['ece']['worse']} (mean lower in "
                   f"{row['ece']['mean_below']}); {row['n_converged']}/{row['n_fits']} fits converged; mean fit "
                   f"{row['mean_seconds']:.1f} s.")
    safe = v["smallest_safe_rho"]
    out.append("Smallest ρ whose fits all converged and whose test NLL is nowhere significantly above Dirichlet's: "
               + ("none" if safe is None else f"{safe:g}") + ".")
    def tied(name: str) -> str:
        t = v["tied_with_best"][name]
        return f" (within {v['nll_tol']:g}: {', '.join(f'{r:g}' for r in t)})" if t else ""

    out.append("ρ with the lowest mean test NLL, per setting: "
               + "; ".join(f"{s}: {r:g}{tied(s)}" for s, r in v["best_nll_rho"].items()) + ".")
    out.append(f"ρ values whose test NLL is above that setting's best ρ's, significantly and by more than "
               f"{v['nll_tol']:g}: "
               + "; ".join(f"{s}: {', '.join(w) if w else 'none'}" for s, w in v["behind_best_rho"].items()) + ".")
    near = v["smallest_near_best_rho"]
    out.append("Smallest ρ whose fits all converged and which is nowhere behind the best ρ in that sense: "
               + ("none" if near is None else f"{near:g}") + ".")
    n = report["n_splits"]
    out.append(f"With {n} splits the smallest two-sided Wilcoxon p attainable is {2 / 2 ** n:.3g}"
               + (" (no difference can be significant at 0.05)." if 2 / 2 ** n >= ALPHA else "."))
    return out


def header(report: dict[str, Any]) -> list[str]:
    lines = [f"- Run: `{report['command']}` on {report['date']}, {report['n_splits']} splits, seed {report['seed']}, "
             f"{report['workers']} worker processes with one thread each, wall time {report['wall_time_s'] / 60:.1f} "
             f"min{' (**quick**)' if report['quick'] else ''}"
             + (f"; {report['fits_from_checkpoint']} fits reused from an interrupted run of the same configuration "
                f"(`--resume`)" if report.get("fits_from_checkpoint") else "") + ".",
             f"- ρ grid: {', '.join(f'{r:g}' for r in report['rho'])}; fit sources: "
             f"{', '.join(report['sources'])}; fuzzy parameters: "
             + ", ".join(f"{k}={v!r}" for k, v in report["fuzzy_params"].items()
                         if k in ("n_regions", "map", "noise", "n_noise_copies", "loss", "reg_lambda", "max_iter",
                                  "tol")) + "; baselines `TemperatureScaling()`, `DirichletCalibrator()`."]
    for b in report["datasets"]:
        lines.append(f"- {b['name']}: {b['description']}; calibration half {b['n_calibration']}, test half "
                     f"{b['n_test']}; " + "; ".join(b["notes"]))
    if report.get("shared_skipped"):
        lines.append(f"- Shared data skipped: {report['shared_skipped']}.")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
                 + (f"; commit {report['git_commit']}" if report.get("git_commit") else "")
                 + f"; precal/calibration/fuzzy.py sha256 {report['fuzzy_source_sha256'][:16]}; "
                 f"{report['platform']}.")
    return lines


def generated_markdown(report: dict[str, Any], fig_prefix: str, *, full: bool) -> list[str]:
    md = [*header(report), "", "### Computed summary", "", *[f"- {b}" for b in summary_bullets(report)], "",
          "Differences are method − Dirichlet on the test half, paired over splits: mean (splits where the "
          "method is lower / splits); **↓** significantly lower (better), **↑** significantly higher (worse), "
          "two-sided Wilcoxon p < 0.05. ECE in percentage points. conv.: fits without a ConvergenceWarning. "
          "fit s: mean wall time of one fit."]
    for kind in report["sources"]:
        md += ["", f"### Fitted and tested on {kind} logits", "", *headline_table(report, kind)]
    v = report["verdicts"]
    md += ["", "### Every ρ against the best ρ of its setting", "",
           f"Test NLL of ρ minus that of the setting's ρ with the lowest mean test NLL (**best**), paired over "
           f"splits: mean (Wilcoxon p); **behind**: significantly higher and by more than {v['nll_tol']:g}.", "",
           "| ρ | " + " | ".join(v["settings"]) + " |", "|---|" + "---:|" * len(v["settings"])]
    for r in report["rho"]:
        cells = []
        for name in v["settings"]:
            if v["best_nll_rho"][name] == r:
                cells.append("**best**")
                continue
            c = v["vs_best_rho"][name][rho_label(r)]
            cells.append(f"{c['mean']:+.4f} (p {_p(c)})" + (" **behind**" if rho_label(r) in v["behind_best_rho"][name]
                                                            else ""))
        md.append(f"| {rho_label(r)} | " + " | ".join(cells) + " |")
    md += ["", "### Per data set", "",
           "Mean ± sd over splits; Δ cells add the sd of the paired difference and the Wilcoxon p. train NLL: "
           "on the calibration half; NLL gap: test − train. Region spread: RMS over entries of W_r − mean_r W_r "
           "and b_r − mean_r b_r (0 = one map everywhere), mean over splits. min width: smallest fitted gate "
           "width σ_r over splits."]
    for b in report["datasets"]:
        for kind in report["sources"]:
            md += ["", f"#### {b['name']}, {b['sources'][kind]['logits']} logits", "", *detail_table(b, kind)]
    if full:
        md += ["", "### Paired differences against TemperatureScaling", "",
               "Method − TS, NLL / ECE pp (splits where the method is lower / splits, p)."]
        for b in report["datasets"]:
            for kind in report["sources"]:
                md += ["", f"#### {b['name']}, {b['sources'][kind]['logits']} logits", "",
                       "| method | ΔNLL | ΔECE pp |", "|---|---:|---:|"]
                for label, e in b["sources"][kind]["methods"].items():
                    if "TS" in e["vs"]:
                        md.append(f"| {label} | {_diff('nll', e['vs']['TS']['nll'])} | "
                                  f"{_diff('ece', e['vs']['TS']['ece'])} |")
        if report["warning_texts"]:
            md += ["", "### ConvergenceWarning texts (numbers replaced by #)", ""]
            md += [f"- “{t}”" for t in report["warning_texts"]]
    if report.get("figures"):
        md += ["", "### Figure", ""]
        for f in report["figures"]:
            md += [f"![{f['caption']}]({fig_prefix}{f['file']})", "", f"*{f['caption']}*", ""]
    return md


def replace_region(text: str, generated: str) -> str:
    """``text`` with everything between the BEGIN/END GENERATED markers replaced by ``generated``."""
    if text.count(BEGIN_MARK) != 1 or text.count(END_MARK) != 1 or text.index(BEGIN_MARK) > text.index(END_MARK):
        raise ValueError(f"the page must contain the line {BEGIN_MARK!r} once, followed by {END_MARK!r} once")
    head, rest = text.split(BEGIN_MARK)
    _, tail = rest.split(END_MARK)
    return f"{head}{BEGIN_MARK}\n{generated.strip()}\n{END_MARK}{tail}"


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix() + "/"


def write_markdown(report: dict[str, Any], paths: dict[str, Path]) -> list[Path]:
    md = ["# FuzzyDirichletCalibrator reg_region study: results", "",
          f"Generated by `{SCRIPT}` from `study_fuzzy_reg.json`; see `docs/study-fuzzy-reg.md` for the method and "
          "the reading. Do not edit by hand.", ""]
    md += generated_markdown(report, _rel(paths["figures"], paths["md"].parent), full=True)
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    doc = paths["doc"]
    generated = "\n".join(generated_markdown(report, _rel(paths["figures"], doc.parent), full=False))
    if doc.exists():
        text = replace_region(doc.read_text(encoding="utf-8"), generated)
    else:
        text = (f"# Study: the default of FuzzyDirichletCalibrator's reg_region\n\nGenerated tables only; the method "
                f"and the reading are in the committed `docs/study-fuzzy-reg.md`.\n\n{BEGIN_MARK}\n"
                f"{generated.strip()}\n{END_MARK}\n")
    doc.write_text(text, encoding="utf-8")
    return [paths["md"], doc]


# --------------------------------------------------------------------------- main
def _floats(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(text)
    return tuple(sorted(set(values)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="digits-10 and resnet50-3, 2 splits, 3 rho, max_iter 40; writes to a temp dir "
                             "unless --out is given")
    parser.add_argument("--splits", type=int, default=None,
                        help=f"calibration/test splits (default {DEFAULT_SPLITS}; quick {QUICK_SPLITS})")
    parser.add_argument("--rho", default=None,
                        help="comma-separated reg_region grid (default " + ",".join(f"{r:g}" for r in RHO_GRID) + ")")
    parser.add_argument("--sources", default=None,
                        help="comma-separated fit sources among int4, fp32 (default int4,fp32; quick int4)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated data sets among " + ", ".join(DATASETS) + " (default all)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help=f"fuzzy max_iter (default: the estimator's; quick {QUICK_MAX_ITER})")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write everything under DIR (study_fuzzy_reg.{json,md}, study-fuzzy-reg.md, figures/)")
    parser.add_argument("--seed", type=int, default=0, help="demo model random_state and split seed (default 0)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"shared logits folder (default {DATA_DIR})")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the fits an interrupted run of the same configuration stored in its checkpoint "
                             "(a JSON-lines file in the temp directory; not in --quick)")
    parser.add_argument("--render-only", action="store_true",
                        help="no fitting: re-derive the verdicts, the figure and the markdown from the per-split "
                             "values in the JSON already written")
    args = parser.parse_args(argv)
    if args.splits is None:
        args.splits = QUICK_SPLITS if args.quick else DEFAULT_SPLITS
    if args.splits < 2:
        parser.error(f"--splits must be at least 2 (a standard deviation needs two splits), got {args.splits}")
    try:
        args.rho = _floats(args.rho) if args.rho else (RHO_QUICK if args.quick else RHO_GRID)
    except ValueError:
        parser.error(f"--rho must be comma-separated finite floats >= 0, got {args.rho!r}")
    args.sources = tuple(args.sources.split(",")) if args.sources else (("int4",) if args.quick else SOURCE_KINDS)
    if not args.sources or not set(args.sources) <= set(SOURCE_KINDS) or len(set(args.sources)) < len(args.sources):
        parser.error(f"--sources must name distinct fit sources among {SOURCE_KINDS}, got {args.sources!r}")
    args.datasets = tuple(args.datasets.split(",")) if args.datasets else (DATASETS_QUICK if args.quick else DATASETS)
    if not args.datasets or not set(args.datasets) <= set(DATASETS):
        parser.error(f"--datasets must name data sets among {DATASETS}, got {args.datasets!r}")
    if args.max_iter is None and args.quick:
        args.max_iter = QUICK_MAX_ITER
    if args.max_iter is not None and args.max_iter < 1:
        parser.error(f"--max-iter must be a positive integer, got {args.max_iter}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    committed = {DEFAULT_RESULTS_DIR.resolve(), DEFAULT_DOCS_DIR.resolve()}
    if args.out is not None:
        out = args.out.resolve()
        if args.quick and out in committed:
            sys.exit("--quick never writes to the committed output folders; choose another --out.")
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="precal-study-fuzzy-reg-"))
    else:
        return {"json": DEFAULT_RESULTS_DIR / "study_fuzzy_reg.json", "md": DEFAULT_RESULTS_DIR / "study_fuzzy_reg.md",
                "doc": DEFAULT_DOCS_DIR / "study-fuzzy-reg.md", "figures": DEFAULT_DOCS_DIR / "figures"}
    out.mkdir(parents=True, exist_ok=True)
    return {"json": out / "study_fuzzy_reg.json", "md": out / "study_fuzzy_reg.md", "doc": out / "study-fuzzy-reg.md",
            "figures": out / "figures"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    paths = output_paths(args)
    if args.render_only:
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        report["verdicts"] = _clean(verdicts(report["datasets"], tuple(report["rho"])))
        report["figures"] = figures_meta(report)
        paths["json"].write_text(to_json(report), encoding="utf-8")
        paths["figures"].mkdir(parents=True, exist_ok=True)
        figure(report, paths["figures"] / FIG_FILE)
        for p in [paths["json"], *write_markdown(report, paths), paths["figures"] / FIG_FILE]:
            print(f"wrote {p}")
        return 0
    set_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    wall_start = time.perf_counter()
    fuzzy_sha = hashlib.sha256(Path(inspect.getsourcefile(FuzzyDirichletCalibrator)).read_bytes()).hexdigest()
    print(f"reg_region study: rho {', '.join(f'{r:g}' for r in args.rho)}; {args.splits} splits; sources "
          f"{', '.join(args.sources)}; {args.workers} workers{' (quick)' if args.quick else ''}", flush=True)

    datasets, skipped = load_datasets(args.datasets, args.seed, args.data_dir)
    if skipped:
        print(f"note: shared data skipped ({skipped}); running on {', '.join(d['name'] for d in datasets)}",
              flush=True)
    if not datasets:
        sys.exit("no data set to run on")
    jobs, sizes = make_jobs(datasets, args.sources, args.rho, args.splits, args.seed, args.max_iter)
    print(f"data ready in {time.perf_counter() - wall_start:.1f} s; {len(jobs)} fits", flush=True)
    checkpoint = None if args.quick else checkpoint_path(args, fuzzy_sha)
    done_before = load_checkpoint(checkpoint) if args.resume else {}
    if checkpoint is not None and not args.resume and checkpoint.exists():
        checkpoint.unlink()  # a fresh run starts a fresh checkpoint
    results = run_jobs(jobs, args.workers, checkpoint=checkpoint, done_before=done_before)
    n_resumed = sum(tuple(j["key"]) in done_before for j in jobs)
    blocks = summarise(datasets, sizes, args.sources, args.rho, args.splits, results)

    fuzzy = make_calibrator("Fuzzy", args.rho[0], args.seed, args.max_iter)
    report = {
        "study": "FuzzyDirichletCalibrator reg_region (rho) default",
        "script": SCRIPT,
        "command": "python " + " ".join([SCRIPT, *(a for a in argv if a != "--resume")]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "seed": args.seed,
        "n_splits": args.splits,
        "rho": list(args.rho),
        "sources": list(args.sources),
        "workers": args.workers,
        "split_rule": "stratified 50/50: per class, rng.permutation of its indices, first floor(n_c/2) to "
                      "calibration; split s uses np.random.default_rng(seed + s)",
        "significance": f"two-sided Wilcoxon signed-rank p < {ALPHA} over paired splits (nominal)",
        "fuzzy_params": {k: v for k, v in fuzzy.get_params().items() if k not in ("reg_region", "random_state")},
        "threads_per_worker": 1,
        "versions": versions(),
        "git_commit": _git_commit(),
        "fuzzy_source_sha256": fuzzy_sha,
        "platform": platform.platform(),
        "shared_skipped": skipped,
        "datasets": blocks,
        "warning_texts": sorted({r["warning"] for r in results if r["warning"]}),
        "fits_from_checkpoint": n_resumed,
    }
    report["wall_time_s"] = time.perf_counter() - wall_start
    report = _clean(report)
    # derived from the stored (rounded) per-split values, as --render-only derives them
    report["verdicts"] = _clean(verdicts(report["datasets"], tuple(report["rho"])))
    report["figures"] = figures_meta(report)
    paths["figures"].mkdir(parents=True, exist_ok=True)
    figure(report, paths["figures"] / FIG_FILE)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(to_json(report), encoding="utf-8")
    written = [paths["json"], *write_markdown(report, paths), paths["figures"] / FIG_FILE]
    print()
    print("\n".join(f"- {b}" for b in summary_bullets(report)))
    print(f"\nwall time {report['wall_time_s']:.1f} s")
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

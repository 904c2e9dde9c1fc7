"""Study: is FuzzyDirichletCalibrator robust to INT4 deployment? (issue #5, item 3; seed 003)

Seed 003 claims that fuzzy confidence gates over Dirichlet maps, trained under simulated INT4
noise, calibrate a compressed model better than one global correction. This script measures
it against the baselines, on real models and data, with many random splits.

A. **Data sets.** Each is a pool of held-out logits with labels, at several *test
   precisions*, and two *fit sources* (the logits a calibrator is fitted on):

   - ``digits-10``: the precal demo CNN (``precal.demo.digits_logits(random_state=SEED)``,
     trained on half of scikit-learn's 1 797 handwritten digits) run by
     ``precal.emulate.sweep`` at ``fp32, w8a8, w4a8, w4a4`` on the 899 held-out images
     (activation observers calibrated on the training images), plus ``logit-int4`` =
     ``precal.emulate.round_logits(fp32 logits, "int4")`` (symmetric INT4, one scale per
     row: a last layer that emits INT4 logits). Fit sources: ``fp32`` and ``w4a4`` (the
     INT4 model).
   - ``digits-3``: the three-class case of the seed's setting. The three classes are the
     most mutually confused ones of the fp32 model on the held-out images (largest sum of
     the confusion counts between the three, ties to the lowest labels); rows of other
     classes are dropped and only the three classes' logit columns kept, as a 3-output
     head would give them. ``logit-int4`` rounds the 3 kept fp32 logits (the row scale is
     then over 3 values). The model configs keep their emulated network.
   - ``resnet50-10`` and ``resnet50-3``: the real CIFAR-10 test logits of a ResNet-50
     (``../shared/data/logits/resnet50_cifar10.npz``, 10 000 rows, true logits) and its
     most-confused three-class subset, built the same way. Only fp32 logits exist, so the
     test precisions are ``fp32`` and logit-space ``logit-bf16``, ``logit-int8``,
     ``logit-int4`` (``round_logits``); fit sources ``fp32`` and ``logit-int4``. Skipped
     with a one-line note (repeated in the outputs) when the folder or the file is absent.

B. **Protocol.** ``--splits`` (default 20) stratified 50/50 calibration/test splits of every
   pool (split ``s`` from ``np.random.default_rng(SEED + s)``, half of every class rounded
   down to calibration; ``study_pacs.make_splits``), the same split for every test
   precision, fit source and method. On the calibration half of each fit source the
   script fits ``TemperatureScaling()``, ``DirichletCalibrator()``,
   ``PACSCalibrator(precision=<format of the fit source>)`` (``fp32`` or ``int4``; its
   default risk; not re-targeted at test time), ``FuzzyDirichletCalibrator(noise="int4")``
   and ``FuzzyDirichletCalibrator(noise=None)`` (both ``random_state=SEED + s``), all
   with their default hyperparameters except the fuzzy ``max_iter`` (see C). Every method
   and the uncalibrated softmax are scored on the test half at every test precision: ECE,
   ACE (15 bins, top label), class-wise ECE, NLL, accuracy (``precal.metrics``). Size of a
   calibrator = number of float parameters its fitted map needs at inference times 4
   bytes (float32): TS 1 (``T``), PACS 2 (``T0`` and the product ``λε``), Dirichlet
   ``K(K+1)`` (full ``W`` and ``b``), fuzzy ``n_parameters_`` (so ``nbytes_``).

C. **Fuzzy iteration cap.** The fuzzy fits get ``max_iter=--fuzzy-max-iter`` (default 100)
   instead of the estimator's default 500: at 500, one fit on the 5 000-row ResNet-50
   calibration half takes 30-60 s on one thread and the full study over an hour. A probe
   refits both fuzzy variants at the estimator's default on split 0 (fit source INT4) and
   reports the same scores side by side, so the effect of the cap is measured, not
   assumed. ``--fuzzy-max-iter default`` runs the whole study at the estimator's default
   (and skips the probe).

D. **Comparisons**, paired over splits, for every data set x fit source x test precision
   and metric: ``Fuzzy+noise - Fuzzy`` (what the INT4 noise adds), ``Fuzzy - Dirichlet``
   (what the gates add), ``Fuzzy+noise - Dirichlet``, ``Fuzzy+noise - TS``, and for every
   method ``fit on INT4 - fit on fp32``: mean difference, sd, splits won, and the
   two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``). A difference counts
   as significant at p < 0.05; the splits reuse one pool of data, so p-values are nominal.

E. **Outputs**: ``benchmarks/results/study_fuzzy.json`` (every number, per-split values,
   versions, seeds, wall time), ``benchmarks/results/study_fuzzy.md`` (all tables),
   ``docs/figures/study-fuzzy-*.png`` and the generated region of ``docs/study-fuzzy.md``
   (between its BEGIN/END GENERATED markers; the text around it is written by hand and
   left alone). ``--out DIR`` writes all of it under DIR (a new page there when DIR has
   none); ``--quick`` (2 splits, digits only, no probe) writes to a new temporary
   directory unless ``--out`` is given, never to the committed outputs;
   ``--render-only`` re-renders both markdown files from the JSON already written.

Threads are capped at one (torch, OpenMP, BLAS). Run from the repository root::

    python benchmarks/study_fuzzy.py            # full run (11-19 min on one shared thread)
    python benchmarks/study_fuzzy.py --quick    # smoke test (about a minute)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import itertools  # noqa: E402
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
import torch  # noqa: E402
from scipy.special import softmax as _softmax  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_pacs import (  # noqa: E402
    DataError,
    _git_commit,
    limit_threads,
    load_logits,
    make_splits,
    mean_sd,
    versions,
)

from precal.calibration import (  # noqa: E402
    DirichletCalibrator,
    FuzzyDirichletCalibrator,
    PACSCalibrator,
    TemperatureScaling,
)
from precal.demo import config_precision, digits_logits  # noqa: E402
from precal.emulate import round_logits, sweep  # noqa: E402
from precal.metrics import (  # noqa: E402
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "logits"
SHARED_FILE = "resnet50_cifar10.npz"
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_DIR = REPO_ROOT / "docs"
RERUN_COMMAND = "python benchmarks/study_fuzzy.py"

BEGIN_MARK = "<!-- BEGIN GENERATED by benchmarks/study_fuzzy.py: do not edit by hand -->"
END_MARK = "<!-- END GENERATED -->"

DIGITS_CONFIGS = ("fp32", "w8a8", "w4a8", "w4a4")
DIGITS_TESTS = DIGITS_CONFIGS + ("logit-int4",)
DIGITS_INT4_SOURCE = "w4a4"
SHARED_TESTS = ("fp32", "logit-bf16", "logit-int8", "logit-int4")
SHARED_INT4_SOURCE = "logit-int4"

METHODS = ("uncalibrated", "TS", "Dirichlet", "PACS", "Fuzzy+noise", "Fuzzy")
FITTED_METHODS = METHODS[1:]
METHOD_LABELS = {
    "uncalibrated": "uncalibrated",
    "TS": "TemperatureScaling",
    "Dirichlet": "DirichletCalibrator",
    "PACS": "PACSCalibrator",
    "Fuzzy+noise": "Fuzzy, noise=\"int4\"",
    "Fuzzy": "Fuzzy, noise=None",
}
METRICS = ("ece", "ace", "cwece", "nll", "accuracy")
METRIC_LABELS = {"ece": "ECE %", "ace": "ACE %", "cwece": "classwise ECE %", "nll": "NLL", "accuracy": "accuracy %"}
COMPARED_METRICS = ("ece", "ace", "cwece", "nll")
#: (a, b, what a - b measures)
COMPARISONS = (
    ("Fuzzy+noise", "Fuzzy", "INT4 noise (same gated model, with vs without noisy copies)"),
    ("Fuzzy", "Dirichlet", "gates (3 gated Dirichlet maps vs one map, both without noise)"),
    ("Fuzzy+noise", "Dirichlet", "the seed's calibrator vs plain Dirichlet calibration"),
    ("Fuzzy+noise", "TS", "the seed's calibrator vs temperature scaling"),
)
ALPHA = 0.05
N_BINS = 15
FUZZY_MAX_ITER = 100
FIG_DPI = 100


# --------------------------------------------------------------------------- small helpers
def scores(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """The study's metrics of probabilities ``prob`` against labels ``y``."""
    return {
        "ece": expected_calibration_error(y, prob, n_bins=N_BINS),
        "ace": adaptive_calibration_error(y, prob, n_bins=N_BINS),
        "cwece": classwise_calibration_error(y, prob, n_bins=N_BINS),
        "nll": negative_log_likelihood(y, prob),
        "accuracy": float(np.mean(prob.argmax(axis=1) == y)),
    }


def calibrator_size(cal: Any) -> int:
    """Float parameters the fitted map needs at inference (see the module docstring, B)."""
    if isinstance(cal, FuzzyDirichletCalibrator):
        return int(cal.n_parameters_)
    if isinstance(cal, DirichletCalibrator):
        return int(cal.coef_.size + cal.intercept_.size)
    if isinstance(cal, PACSCalibrator):
        return 2
    if isinstance(cal, TemperatureScaling):
        return 1
    raise TypeError(f"calibrator_size does not know {type(cal).__name__}")


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired per-split difference ``a - b`` (lower is better for every compared metric)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    m, sd = mean_sd(d)
    p = None
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample and tie notes
            p = float(wilcoxon(d).pvalue)
    if p is not None and p < ALPHA:
        verdict = "better" if m < 0 else "worse"
    else:
        verdict = "n.s."
    return {"mean": m, "sd": sd, "wins": int(np.sum(d < 0)), "losses": int(np.sum(d > 0)), "n": int(d.size),
            "p": p, "verdict": verdict}


def most_confused_triple(z: np.ndarray, y: np.ndarray) -> tuple[tuple[int, int, int], int]:
    """Three classes with the largest sum of confusion counts among them (ties: lowest labels)."""
    k = z.shape[1]
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y, z.argmax(axis=1)), 1)
    best, best_count = None, -1
    for t in itertools.combinations(range(k), 3):
        count = int(sum(conf[i, j] for i in t for j in t if i != j))
        if count > best_count:
            best, best_count = t, count
    return best, best_count


def three_class(logits: dict[str, np.ndarray], y: np.ndarray, triple: tuple[int, ...],
                rounded: dict[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows of the three classes, their logit columns; ``rounded`` settings re-rounded from fp32."""
    rows = np.isin(y, triple)
    cols = list(triple)
    out = {}
    for name, z in logits.items():
        if name in rounded:
            out[name] = round_logits(np.ascontiguousarray(logits["fp32"][rows][:, cols], dtype=np.float32),
                                     rounded[name])
        else:
            out[name] = np.ascontiguousarray(z[rows][:, cols])
    return out, np.searchsorted(np.asarray(triple), y[rows]).astype(np.int64)


def gate_summary(cal: FuzzyDirichletCalibrator, n_classes: int, n_grid: int = 1000) -> dict[str, Any]:
    """Fitted centres and widths, and which region has the largest gate weight along ``c``.

    ``runs`` lists ``[name, from, to]`` stretches of ``c`` in ``[1/K, 1]`` with one dominant
    region; ``monotone`` tells whether labels by largest membership would rise with ``c``
    (``predict_confidence_label`` cuts halfway between adjacent centres instead, after this
    study found non-monotone orders).
    """
    c = np.linspace(1.0 / n_classes, 1.0, n_grid)
    idx = _softmax(-((c[:, None] - cal.centers_) ** 2) / (2.0 * cal.widths_ ** 2), axis=1).argmax(axis=1)
    cuts = np.flatnonzero(np.diff(idx)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, n_grid] - 1
    runs = [[str(cal.region_names_[idx[a]]), float(c[a]), float(c[b])] for a, b in zip(starts, ends)]
    return {"centers": cal.centers_, "widths": cal.widths_, "runs": runs, "monotone": bool(np.all(np.diff(idx) >= 0))}


def to_json(report: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (a third smaller, still diffable)."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def _clean_params(est: Any) -> dict[str, Any]:
    """An estimator's parameters as JSON values (callables and other objects by their repr)."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
            for k, v in est.get_params().items()}


def _clean(obj: Any) -> Any:
    """JSON-ready copy: arrays to lists, numpy scalars to Python, floats to 7 significant digits."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _clean(obj.item())
    if isinstance(obj, float):
        return float(f"{obj:.7g}") if math.isfinite(obj) else None
    return obj


# --------------------------------------------------------------------------- data sets
def dataset(name: str, description: str, logits: dict[str, np.ndarray], y: np.ndarray,
            sources: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """A pool of held-out logits: ``logits`` per test precision, ``sources`` {fit source: its format}."""
    return {"name": name, "description": description, "logits": logits, "y": y, "sources": sources,
            "n_classes": int(next(iter(logits.values())).shape[1]), "notes": notes}


def digits_datasets(seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``digits-10`` and ``digits-3`` from the precal demo model."""
    data = digits_logits(random_state=seed)
    held_out = torch.cat([data.cal_inputs, data.test_inputs])
    y = np.concatenate([data.cal_labels, data.test_labels]).astype(np.int64)
    logits = sweep(data.model, held_out, DIGITS_CONFIGS, calibration_data=data.train_inputs, progress=False)
    logits["logit-int4"] = round_logits(logits["fp32"], "int4")
    sources = {"fp32": "fp32", DIGITS_INT4_SOURCE: config_precision(DIGITS_INT4_SOURCE)}
    triple, n_conf = most_confused_triple(logits["fp32"], y)
    logits3, y3 = three_class(logits, y, triple, {"logit-int4": "int4"})
    info = {"n_train": data.n_train, "n_held_out": int(len(y)), "triple": list(triple),
            "triple_confusions": n_conf}
    d10 = dataset("digits-10", f"Digits CNN (precal demo), 10 classes, {len(y)} held-out images", logits, y, sources,
                  [f"CNN trained on {data.n_train} images; w*a* configs emulate the whole network "
                   f"(observers calibrated on the training images); logit-int4 rounds the fp32 logits."])
    d3 = dataset("digits-3", f"Digits CNN, classes {triple} (most confused), {len(y3)} held-out images", logits3, y3,
                 sources,
                 [f"Classes {triple}: the most mutually confused triple of the fp32 model on the held-out images "
                  f"({n_conf} confusions among them); their rows and logit columns only."])
    return [d10, d3], info


def shared_datasets(data_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """``resnet50-10`` and ``resnet50-3`` from ``data_dir``; ``([], reason)`` when unavailable."""
    try:
        if not data_dir.is_dir():
            raise DataError(f"{data_dir} is not there")
        z, y, info = load_logits(data_dir / SHARED_FILE)
    except DataError as exc:
        return [], str(exc)
    logits = {"fp32": z}
    for name in SHARED_TESTS[1:]:
        logits[name] = round_logits(z, name.removeprefix("logit-"))
    sources = {"fp32": "fp32", SHARED_INT4_SOURCE: "int4"}
    triple, n_conf = most_confused_triple(z, y)
    rounded = {name: name.removeprefix("logit-") for name in SHARED_TESTS[1:]}
    logits3, y3 = three_class(logits, y, triple, rounded)
    note = f"{info['file']} ({info['arrays'][0]}, sha256 {info['sha256'][:12]}...), true logits"
    d10 = dataset("resnet50-10", f"ResNet-50 on CIFAR-10 test, 10 classes, {len(y)} images", logits, y, sources,
                  [note + "; logit-* rounds them (floats element-wise, integers one scale per row)."])
    d3 = dataset("resnet50-3", f"ResNet-50 on CIFAR-10 test, classes {triple} (most confused), {len(y3)} images",
                 logits3, y3, sources,
                 [f"Classes {triple}: the most mutually confused triple of the fp32 logits ({n_conf} confusions "
                  f"among them); their rows and logit columns, rounded after selection."])
    return [d10, d3], None


# --------------------------------------------------------------------------- one split
#: Distinct ConvergenceWarning texts seen, per calibrator class (numbers stripped, first 160 characters).
WARNING_TEXTS: dict[str, set[str]] = {}


def _fit(cal: Any, z: np.ndarray, y: np.ndarray) -> tuple[Any, int, float]:
    """Fit, counting ConvergenceWarnings; returns (calibrator, n_warnings, seconds)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal.fit(z, y)
    conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in conv:
        text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", str(w.message))[:160]
        WARNING_TEXTS.setdefault(type(cal).__name__, set()).add(text)
    return cal, len(conv), time.perf_counter() - t0


def make_calibrators(source_format: str, random_state: int, fuzzy_max_iter: int | None) -> dict[str, Any]:
    """The study's fitted methods, freshly constructed (default hyperparameters but the fuzzy cap)."""
    cap = {} if fuzzy_max_iter is None else {"max_iter": fuzzy_max_iter}
    return {
        "TS": TemperatureScaling(),
        "Dirichlet": DirichletCalibrator(),
        "PACS": PACSCalibrator(precision=source_format),
        "Fuzzy+noise": FuzzyDirichletCalibrator(noise="int4", random_state=random_state, **cap),
        "Fuzzy": FuzzyDirichletCalibrator(noise=None, random_state=random_state, **cap),
    }


def run_split(ds: dict[str, Any], split: tuple[np.ndarray, np.ndarray], random_state: int,
              fuzzy_max_iter: int | None, keep: bool = False) -> dict[str, Any]:
    """Fit every method on each fit source's calibration half; score on every test precision's test half."""
    cal, test = split
    y = ds["y"]
    out: dict[str, Any] = {"scores": {}, "fitted": {}, "kept": {}}
    for source, fmt in ds["sources"].items():
        z_cal = np.asarray(ds["logits"][source][cal], dtype=np.float64)
        fitted = {}
        info = {}
        for method, cal_obj in make_calibrators(fmt, random_state, fuzzy_max_iter).items():
            obj, n_warn, sec = _fit(cal_obj, z_cal, y[cal])
            fitted[method] = obj
            info[method] = {"warnings": n_warn, "seconds": sec, "n_params": calibrator_size(obj),
                            "n_iter": int(getattr(obj, "n_iter_", 0)), "lambda_eps": None}
            if method == "PACS":
                info[method]["lambda_eps"] = float(obj.lambda_ * obj.epsilon_)
        out["fitted"][source] = info
        out["scores"][source] = {}
        for test_name, z_all in ds["logits"].items():
            z_test = np.asarray(z_all[test], dtype=np.float64)
            probs = {"uncalibrated": _softmax(z_test, axis=1)}
            probs.update({m: c.predict_proba(z_test) for m, c in fitted.items()})
            out["scores"][source][test_name] = {m: scores(y[test], p) for m, p in probs.items()}
            if keep:
                out["kept"].setdefault(source, {})[test_name] = probs
        if keep:
            out["kept"].setdefault("calibrators", {})[source] = fitted
    return out


def run_dataset(ds: dict[str, Any], splits: list, seed: int, fuzzy_max_iter: int | None,
                probe: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """All splits of one data set; returns (JSON-ready block, split-0 objects for the figures)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    per_split: dict[str, Any] = {s: {t: {m: {k: [] for k in METRICS} for m in METHODS} for t in ds["logits"]}
                                 for s in ds["sources"]}
    fit_keys = ("warnings", "seconds", "n_params", "n_iter", "lambda_eps")
    fit_info: dict[str, Any] = {s: {m: {k: [] for k in fit_keys} for m in FITTED_METHODS} for s in ds["sources"]}
    kept: dict[str, Any] = {}
    for i, split in enumerate(tqdm(splits, desc=ds["name"], leave=False, disable=None)):
        res = run_split(ds, split, seed + i, fuzzy_max_iter, keep=(i == 0))
        if i == 0:
            kept = res["kept"]
        for source, by_test in res["scores"].items():
            for test_name, by_method in by_test.items():
                for method, sc in by_method.items():
                    for k, v in sc.items():
                        per_split[source][test_name][method][k].append(v)
            for method, info in res["fitted"][source].items():
                for k, v in info.items():
                    fit_info[source][method][k].append(v)

    summary = {s: {t: {m: {k: dict(zip(("mean", "sd"), mean_sd(v))) for k, v in by_m.items()}
                       for m, by_m in by_t.items()} for t, by_t in by_s.items()} for s, by_s in per_split.items()}
    comparisons = {
        s: {t: {f"{a} - {b}": {k: paired(per_split[s][t][a][k], per_split[s][t][b][k]) for k in COMPARED_METRICS}
                for a, b, _ in COMPARISONS} for t in ds["logits"]}
        for s in ds["sources"]
    }
    fp32_src, int4_src = list(ds["sources"])
    source_effect = {t: {m: {k: paired(per_split[int4_src][t][m][k], per_split[fp32_src][t][m][k])
                             for k in COMPARED_METRICS} for m in FITTED_METHODS} for t in ds["logits"]}
    fits = {s: {m: {"n_fits": len(v["seconds"]), "warnings": int(np.sum(np.asarray(v["warnings"]) > 0)),
                    "mean_seconds": float(np.mean(v["seconds"])), "n_params": sorted(set(v["n_params"])),
                    "nbytes": sorted({4 * n for n in v["n_params"]}),
                    "median_n_iter": float(np.median(v["n_iter"])),
                    "n_lambda_zero": (int(sum(x == 0 for x in v["lambda_eps"])) if m == "PACS" else None)}
                for m, v in by_m.items()} for s, by_m in fit_info.items()}
    block = {
        "name": ds["name"],
        "description": ds["description"],
        "notes": ds["notes"],
        "n_samples": int(len(ds["y"])),
        "n_classes": ds["n_classes"],
        "n_calibration": int(len(splits[0][0])),
        "n_test": int(len(splits[0][1])),
        "tests": list(ds["logits"]),
        "sources": ds["sources"],
        "int4_test": DIGITS_INT4_SOURCE if DIGITS_INT4_SOURCE in ds["logits"] else SHARED_INT4_SOURCE,
        "summary": summary,
        "comparisons": comparisons,
        "source_effect": source_effect,
        "fits": fits,
        "per_split": per_split,
    }
    block["gates"] = {src: {m: gate_summary(kept["calibrators"][src][m], ds["n_classes"])
                            for m in ("Fuzzy+noise", "Fuzzy")} for src in ds["sources"]}
    if probe and fuzzy_max_iter is not None:
        block["probe"] = run_probe(ds, splits[0], seed, per_split, fit_info, int4_src)
    block["seconds"] = time.perf_counter() - t0
    return block, kept


def run_probe(ds: dict[str, Any], split: tuple[np.ndarray, np.ndarray], seed: int, per_split: dict[str, Any],
              fit_info: dict[str, Any], source: str) -> dict[str, Any]:
    """Split 0, fit source ``source``: both fuzzy variants at the estimator's default ``max_iter``."""
    cal, test = split
    y = ds["y"]
    z_cal = np.asarray(ds["logits"][source][cal], dtype=np.float64)
    default_iter = FuzzyDirichletCalibrator().get_params()["max_iter"]
    out: dict[str, Any] = {"source": source, "split": 0, "default_max_iter": default_iter, "variants": {}}
    for method, noise in (("Fuzzy+noise", "int4"), ("Fuzzy", None)):
        obj, n_warn, sec = _fit(FuzzyDirichletCalibrator(noise=noise, random_state=seed), z_cal, y[cal])
        capped = {t: {k: per_split[source][t][method][k][0] for k in METRICS} for t in ds["logits"]}
        default = {t: scores(y[test], obj.predict_proba(np.asarray(z[test], dtype=np.float64)))
                   for t, z in ds["logits"].items()}
        out["variants"][method] = {
            "capped": {"scores": capped, "seconds": fit_info[source][method]["seconds"][0],
                       "n_iter": fit_info[source][method]["n_iter"][0],
                       "warnings": fit_info[source][method]["warnings"][0]},
            "default": {"scores": default, "seconds": sec, "n_iter": int(obj.n_iter_), "warnings": n_warn},
        }
    return out


# --------------------------------------------------------------------------- figures
def _figure(nrows: int, ncols: int, figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))


def metric_figure(blocks: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Mean ± sd of ``metric`` by test precision, one line per method; rows data sets, columns fit sources."""
    scale = 100.0 if metric in ("ece", "ace", "cwece", "accuracy") else 1.0
    fig, axes = _figure(len(blocks), 2, (11.0, 2.9 * len(blocks) + 0.4))
    offsets = np.linspace(-0.25, 0.25, len(METHODS))
    for row, block in zip(axes, blocks):
        for ax, source in zip(row, block["sources"]):
            x = np.arange(len(block["tests"]))
            for off, method in zip(offsets, METHODS):
                mean = [block["summary"][source][t][method][metric]["mean"] * scale for t in block["tests"]]
                sd = [block["summary"][source][t][method][metric]["sd"] * scale for t in block["tests"]]
                ax.errorbar(x + off, mean, yerr=sd, fmt="o", ms=4, capsize=2, label=METHOD_LABELS[method])
            ax.set_xticks(x, block["tests"], fontsize="small")
            ax.set_title(f"{block['name']}: fitted on {source}", fontsize="medium")
            ax.set_ylabel(METRIC_LABELS[metric])
            if metric == "nll":
                ax.set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(METHODS), fontsize="small")
    fig.savefig(path, dpi=FIG_DPI)


def reliability_figure(block: dict[str, Any], kept: dict[str, Any], y_test: np.ndarray, path: Path) -> str:
    """Reliability diagrams on the test half of split 0 at the INT4 test precision, fit source INT4."""
    from precal.plotting import reliability_diagram

    source = list(block["sources"])[1]
    test_name = block["int4_test"]
    shown = ("uncalibrated", "TS", "Dirichlet", "Fuzzy+noise", "Fuzzy")
    fig, axes = _figure(1, len(shown), (3.1 * len(shown), 3.4))
    for ax, method in zip(axes[0], shown):
        reliability_diagram(y_test, kept[source][test_name][method], ax=ax, n_bins=N_BINS, label=method)
        ax.set_title(method, fontsize="medium")
        ax.legend(loc="upper left", fontsize="x-small")
    fig.savefig(path, dpi=FIG_DPI)
    return (f"Reliability diagrams, {block['name']}, test half of split 0 ({len(y_test)} samples) at "
            f"{test_name}; every calibrator fitted on the {source} logits of the calibration half.")


def gates_figure(blocks: list[dict[str, Any]], kept: dict[str, dict[str, Any]], splits0: dict[str, Any],
                 logits_by_name: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Fitted gate weights w_r(c) of split 0 (INT4 fit source) over the histogram of c on the calibration half."""
    fig, axes = _figure(1, len(blocks), (4.2 * len(blocks), 3.3))
    for ax, block in zip(axes[0], blocks):
        source = list(block["sources"])[1]
        k = block["n_classes"]
        c_grid = np.linspace(1.0 / k, 1.0, 400)
        cal = splits0[block["name"]][0]
        conf = _softmax(np.asarray(logits_by_name[block["name"]][source][cal], np.float64), axis=1).max(axis=1)
        hist_ax = ax.twinx()
        hist_ax.hist(conf, bins=30, range=(1.0 / k, 1.0), color="0.8", log=True)
        hist_ax.set_ylabel("calibration samples (log)", fontsize="small")
        ax.set_zorder(hist_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        for method, style in (("Fuzzy+noise", "-"), ("Fuzzy", "--")):
            cal_obj = kept[block["name"]]["calibrators"][source][method]
            log_mu = -((c_grid[:, None] - cal_obj.centers_) ** 2) / (2.0 * cal_obj.widths_ ** 2)
            w = _softmax(log_mu, axis=1)
            for r in range(w.shape[1]):
                ax.plot(c_grid, w[:, r], style, color=f"C{r}",
                        label=f"{method}: {cal_obj.region_names_[r]} (m={cal_obj.centers_[r]:.3f})")
        ax.set_xlabel("top confidence c of the input logits")
        ax.set_ylabel("gate weight w_r(c)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{block['name']} (fitted on {source})", fontsize="medium")
        ax.legend(fontsize="xx-small", loc="center left")
    fig.savefig(path, dpi=FIG_DPI)


# --------------------------------------------------------------------------- markdown
def _fmt(metric: str, stat: dict[str, float]) -> str:
    if metric == "nll":
        return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}"


def _fmt_diff(metric: str, c: dict[str, Any]) -> str:
    p = "–" if c["p"] is None else (f"{c['p']:.2g}" if c["p"] >= 1e-3 else "<0.001")
    mark = {"better": " **↓**", "worse": " **↑**", "n.s.": ""}[c["verdict"]]
    value = f"{c['mean']:+.4f}" if metric == "nll" else f"{100 * c['mean']:+.2f}"
    return f"{value} ({c['wins']}/{c['n']}, p {p}){mark}"


def metric_table(block: dict[str, Any], metric: str) -> list[str]:
    """Rows: fit source x method; columns: test precisions; cells mean ± sd."""
    lines = ["| fitted on | method | " + " | ".join(block["tests"]) + " |",
             "|---|---|" + "---:|" * len(block["tests"])]
    first = list(block["sources"])[0]
    s = block["summary"]
    lines.append("| — | uncalibrated | " + " | ".join(_fmt(metric, s[first][t]["uncalibrated"][metric])
                                                  for t in block["tests"]) + " |")
    for source in block["sources"]:
        for method in FITTED_METHODS:
            lines.append(f"| {source} | {method} | " + " | ".join(_fmt(metric, s[source][t][method][metric])
                                                                 for t in block["tests"]) + " |")
    return lines


def comparison_table(blocks: list[dict[str, Any]], comp: str, metric: str) -> list[str]:
    """Rows: data set x fit source; columns: test precisions (data sets differ: one row set per data set)."""
    lines = []
    for block in blocks:
        lines += ["", f"*{block['name']}*", "", "| fitted on | " + " | ".join(block["tests"]) + " |",
                  "|---|" + "---:|" * len(block["tests"])]
        for source in block["sources"]:
            lines.append(f"| {source} | " + " | ".join(_fmt_diff(metric, block["comparisons"][source][t][comp][metric])
                                                      for t in block["tests"]) + " |")
    return lines


def source_table(blocks: list[dict[str, Any]], metric: str) -> list[str]:
    """Fit on INT4 minus fit on fp32, per method, at fp32 and at the INT4 test precision."""
    lines = ["| data set | tested on | " + " | ".join(FITTED_METHODS) + " |",
             "|---|---|" + "---:|" * len(FITTED_METHODS)]
    for block in blocks:
        for t in ("fp32", block["int4_test"]):
            lines.append(f"| {block['name']} | {t} | " + " | ".join(
                _fmt_diff(metric, block["source_effect"][t][m][metric]) for m in FITTED_METHODS) + " |")
    return lines


def scorecard(blocks: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Counts of significant wins / losses / n.s. over every data set x fit source x test precision."""
    card: dict[str, Any] = {}
    lines = ["| comparison (a − b) | " + " | ".join(METRIC_LABELS[m].replace(" %", "") for m in COMPARED_METRICS)
             + " |", "|---|" + "---|" * len(COMPARED_METRICS)]
    n_settings = sum(len(b["sources"]) * len(b["tests"]) for b in blocks)
    for a, b, _ in COMPARISONS:
        comp = f"{a} - {b}"
        card[comp] = {}
        cells = []
        for metric in COMPARED_METRICS:
            v = [blk["comparisons"][s][t][comp][metric]["verdict"] for blk in blocks for s in blk["sources"]
                 for t in blk["tests"]]
            counts = {k: v.count(k) for k in ("better", "worse", "n.s.")}
            card[comp][metric] = counts
            cells.append(f"{counts['better']} / {counts['worse']} / {counts['n.s.']}")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    card["n_settings"] = n_settings
    return lines, card


def probe_table(block: dict[str, Any]) -> list[str]:
    pr = block["probe"]
    lines = [f"*{block['name']}*, fitted on {pr['source']}, split 0: ECE % / NLL at max_iter "
             f"{block['fuzzy_max_iter']} (study) → {pr['default_max_iter']} (estimator default)", "",
             "| method | fit s | iterations | " + " | ".join(block["tests"]) + " |",
             "|---|---:|---:|" + "---:|" * len(block["tests"])]
    for method, v in pr["variants"].items():
        cap, dft = v["capped"], v["default"]
        cells = [f"{100 * cap['scores'][t]['ece']:.2f} / {cap['scores'][t]['nll']:.4f} → "
                 f"{100 * dft['scores'][t]['ece']:.2f} / {dft['scores'][t]['nll']:.4f}" for t in block["tests"]]
        lines.append(f"| {method} | {cap['seconds']:.1f} → {dft['seconds']:.1f} | "
                     f"{cap['n_iter']} → {dft['n_iter']} | " + " | ".join(cells) + " |")
    return lines


def gates_table(blocks: list[dict[str, Any]]) -> list[str]:
    lines = ["| data set | fitted on | method | centres | widths | dominant region along c | labels monotone |",
             "|---|---|---|---|---|---|---|"]
    for block in blocks:
        for source, by_m in block.get("gates", {}).items():
            for method, g in by_m.items():
                runs = ", ".join(f"{name} {lo:.2f}–{hi:.2f}" for name, lo, hi in g["runs"])
                lines.append(f"| {block['name']} | {source} | {method} | "
                             + ", ".join(f"{v:.3f}" for v in g["centers"]) + " | "
                             + ", ".join(f"{v:.3f}" for v in g["widths"]) + f" | {runs} | "
                             + ("yes" if g["monotone"] else "**no**") + " |")
    return lines


def size_table(blocks: list[dict[str, Any]]) -> list[str]:
    lines = ["| data set | K | " + " | ".join(FITTED_METHODS) + " |", "|---|---:|" + "---:|" * len(FITTED_METHODS)]
    for block in blocks:
        fits = block["fits"][list(block["sources"])[0]]
        lines.append(f"| {block['name']} | {block['n_classes']} | " + " | ".join(
            "/".join(str(b) for b in fits[m]["nbytes"]) + " B" for m in FITTED_METHODS) + " |")
    return lines


def fit_table(blocks: list[dict[str, Any]]) -> list[str]:
    lines = ["| data set | fitted on | " + " | ".join(FITTED_METHODS) + " |",
             "|---|---|" + "---:|" * len(FITTED_METHODS)]
    for block in blocks:
        for source, fits in block["fits"].items():
            lines.append(f"| {block['name']} | {source} | " + " | ".join(
                f"{fits[m]['mean_seconds']:.2f} s, {fits[m]['warnings']}/{fits[m]['n_fits']} warn, "
                f"it {fits[m]['median_n_iter']:.0f}"
                + (f", λ = 0 on {fits[m]['n_lambda_zero']}" if m == "PACS" else "") for m in FITTED_METHODS) + " |")
    return lines


def summary_bullets(report: dict[str, Any]) -> list[str]:
    """Facts computed from the results (wording only is fixed) that the hand-written reading builds on."""
    blocks = report["datasets"]
    card = report["scorecard"]
    n = card["n_settings"]
    out = []
    for a, b, what in COMPARISONS:
        comp = f"{a} - {b}"
        parts = [f"{m.upper() if m != 'cwece' else 'classwise ECE'} {c['better']} better / {c['worse']} worse"
                 for m, c in card[comp].items()]
        out.append(f"{a} − {b}, i.e. {what}: over {n} settings, significantly " + ", ".join(parts) + ".")
    for block in blocks:
        int4 = block["int4_test"]
        uncal = block["per_split"]["fp32"]
        shift = paired(uncal[int4]["uncalibrated"]["ece"], uncal["fp32"]["uncalibrated"]["ece"])
        acc = paired(uncal[int4]["uncalibrated"]["accuracy"], uncal["fp32"]["uncalibrated"]["accuracy"])
        out.append(f"{block['name']}: INT4 ({int4}) changes the uncalibrated test ECE by "
                   f"{100 * shift['mean']:+.2f} points (sd {100 * shift['sd']:.2f}, p "
                   f"{'–' if shift['p'] is None else format(shift['p'], '.2g')}) and accuracy by "
                   f"{100 * acc['mean']:+.2f} points, relative to fp32.")
    for block in blocks:
        int4 = block["int4_test"]
        src = list(block["sources"])[1]
        s = block["summary"][src][int4]
        base = s["uncalibrated"]["ece"]["mean"]
        best_ece = min(METHODS, key=lambda m: s[m]["ece"]["mean"])
        best_nll = min(METHODS, key=lambda m: s[m]["nll"]["mean"])
        out.append(f"{block['name']}, fitted on {src}, tested on {int4}: mean ECE uncalibrated {100 * base:.2f}%, "
                   + ", ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}% ({100 * (s[m]['ece']['mean'] / base - 1):+.0f}%)"
                               for m in FITTED_METHODS)
                   + f"; lowest mean ECE: {best_ece}, lowest mean NLL: {best_nll} ({s[best_nll]['nll']['mean']:.4f}).")
    return out


def header(report: dict[str, Any]) -> list[str]:
    cap = report["fuzzy_max_iter"]
    lines = [f"Run {report['date']} by `{report['command']}`: {report['n_splits']} splits, seed {report['seed']}, "
             f"fuzzy max_iter {cap if cap is not None else 'estimator default'}, one thread, wall time "
             f"{report['wall_time_s']:.0f} s" + (" (**quick smoke test**)" if report["quick"] else "") + "."]
    for block in report["datasets"]:
        lines.append(f"- **{block['name']}**: {block['description']}; {block['n_calibration']} calibration / "
                     f"{block['n_test']} test rows per split; fit sources {', '.join(block['sources'])}. "
                     + " ".join(block["notes"]))
    if report["shared_skipped"]:
        lines.append(f"- Shared data skipped: {report['shared_skipped']}.")
    if report.get("fuzzy_params"):
        fz = report["fuzzy_params"]["int4"]
        shown = ", ".join(f"{k}={fz[k]!r}" for k in ("n_regions", "map", "n_noise_copies", "loss", "reg_lambda",
                                                      "reg_mu", "reg_region", "max_iter") if k in fz)
        lines.append(f"- Methods: TS = `TemperatureScaling()`, Dirichlet = `DirichletCalibrator()`, PACS = "
                     f"`PACSCalibrator(precision=<fit source format>)`, Fuzzy+noise = "
                     f"`FuzzyDirichletCalibrator(noise=\"int4\")` and Fuzzy = the same with `noise=None`, both with "
                     f"`random_state=seed + split` and {shown}.")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
                 + (f"; commit {report['git_commit']}" if report.get("git_commit") else "")
                 + (f"; precal/calibration/fuzzy.py sha256 {report['fuzzy_source_sha256'][:16]}"
                    if report.get("fuzzy_source_sha256") else "") + ".")
    return lines


def generated_markdown(report: dict[str, Any], *, full: bool, fig_prefix: str) -> list[str]:
    """The tables (``full``: every metric and comparison; else the docs page's selection).

    ``fig_prefix``: path from the markdown file's folder to the figures folder, ending in "/".
    """
    blocks = report["datasets"]
    md = header(report)
    md += ["", "### Computed summary", "", *[f"- {b}" for b in summary_bullets(report)], "",
           "Significant = two-sided Wilcoxon signed-rank p < 0.05 over the paired splits; the cells count "
           "settings (data set × fit source × test precision) where a is significantly better / worse / neither.",
           "", *report["scorecard_lines"]]
    table_metrics = ("ece", "ace", "cwece", "nll", "accuracy") if full else ("ece", "cwece", "nll")
    for block in blocks:
        md += ["", f"### {block['name']}: {block['description']}"]
        for metric in table_metrics:
            md += ["", f"{METRIC_LABELS[metric]}, mean ± sd over {report['n_splits']} splits:", "",
                   *metric_table(block, metric)]
    comp_metrics = COMPARED_METRICS if full else ("ece", "nll")
    md += ["", "### Paired comparisons",
           "", "Cells: mean of a − b over splits (ECE-type in percentage points), splits where a is lower / "
               "splits, Wilcoxon p; **↓** a significantly lower (better), **↑** significantly higher (worse)."]
    for a, b, what in COMPARISONS:
        for metric in comp_metrics:
            md += ["", f"#### {a} − {b}, {METRIC_LABELS[metric].replace(' %', '')} — {what}",
                   *comparison_table(blocks, f"{a} - {b}", metric)]
    md += ["", "### Fitting on INT4 logits instead of fp32", "",
           "Per method: score when fitted on the INT4 source minus score when fitted on fp32, same splits."]
    for metric in comp_metrics:
        md += ["", f"{METRIC_LABELS[metric].replace(' %', '')}:", "", *source_table(blocks, metric)]
    md += ["", "### Calibrator size", "",
           "Float parameters of the fitted map × 4 bytes (float32); FuzzyDirichletCalibrator's `nbytes_`.", "",
           *size_table(blocks)]
    md += ["", "### Fits", "", "Mean fit time (one thread), fits with a ConvergenceWarning, median iterations "
           "(PACS: fits with λ = 0, i.e. plain temperature scaling).", "",
           *fit_table(blocks)]
    if report.get("convergence_warnings"):
        md += ["", "ConvergenceWarning texts seen (numbers replaced by #):", ""]
        md += [f"- {cls}: " + " | ".join(f"“{t}”" for t in texts)
               for cls, texts in report["convergence_warnings"].items()]
    if any("gates" in b for b in blocks):
        md += ["", "### Fitted gates (split 0)", "",
               "Fuzzy calibrators of split 0: centres, widths, and the region with the largest normalised "
               "membership along the confidence c (the rule `predict_confidence_label` used when this study "
               "was first run; it now cuts halfway between adjacent centres, monotone by construction).", "",
               *gates_table(blocks)]
    probes = [b for b in blocks if "probe" in b]
    if probes:
        md += ["", "### Fuzzy iteration cap: probe at the estimator's default", ""]
        for block in probes:
            md += [*probe_table(block), ""]
    if report["figures"]:
        md += ["", "### Figures", ""]
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
    md = ["# FuzzyDirichlet robustness study: results", "",
          f"Generated by `{report['command']}`; see `docs/study-fuzzy.md` for the method and the reading. "
          "Do not edit by hand.", ""]
    md += generated_markdown(report, full=True, fig_prefix=_rel(paths["figures"], paths["md"].parent))
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    doc = paths["doc"]
    generated = "\n".join(generated_markdown(report, full=False, fig_prefix=_rel(paths["figures"], doc.parent)))
    if doc.exists():
        text = replace_region(doc.read_text(encoding="utf-8"), generated)
    else:
        text = (f"# FuzzyDirichlet robustness study\n\nGenerated tables only; the method and the reading are in the "
                f"committed `docs/study-fuzzy.md`.\n\n{BEGIN_MARK}\n{generated.strip()}\n{END_MARK}\n")
    doc.write_text(text, encoding="utf-8")
    return [paths["md"], doc]


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2 splits, digits only, no probe; writes to a new temp dir unless --out is given")
    parser.add_argument("--splits", type=int, default=None, help="calibration/test splits (default 20; quick 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write everything under DIR (study_fuzzy.{json,md}, study-fuzzy.md, figures/)")
    parser.add_argument("--seed", type=int, default=0, help="demo model random_state and split seed (default 0)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"shared logits folder (default {DATA_DIR})")
    parser.add_argument("--fuzzy-max-iter", default=str(FUZZY_MAX_ITER),
                        help=f"L-BFGS cap of the fuzzy fits (default {FUZZY_MAX_ITER}); 'default' = the estimator's")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render the markdown from the JSON already written (no fitting, figures kept)")
    args = parser.parse_args(argv)
    if args.splits is None:
        args.splits = 2 if args.quick else 20
    if args.splits < 2:
        parser.error("--splits must be at least 2 (a standard deviation needs two splits)")
    if args.fuzzy_max_iter == "default":
        args.fuzzy_max_iter = None
    else:
        try:
            args.fuzzy_max_iter = int(args.fuzzy_max_iter)
        except ValueError:
            parser.error(f"--fuzzy-max-iter must be a positive integer or 'default', got {args.fuzzy_max_iter!r}")
        if args.fuzzy_max_iter < 1:
            parser.error(f"--fuzzy-max-iter must be a positive integer or 'default', got {args.fuzzy_max_iter}")
    return args


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    committed = {DEFAULT_RESULTS_DIR.resolve(), DEFAULT_DOCS_DIR.resolve()}
    if args.out is not None:
        out = args.out.resolve()
        if args.quick and out in committed:
            sys.exit("--quick never writes to the committed output folders; choose another --out.")
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="precal-study-fuzzy-"))
    else:
        return {"json": DEFAULT_RESULTS_DIR / "study_fuzzy.json", "md": DEFAULT_RESULTS_DIR / "study_fuzzy.md",
                "doc": DEFAULT_DOCS_DIR / "study-fuzzy.md", "figures": DEFAULT_DOCS_DIR / "figures"}
    out.mkdir(parents=True, exist_ok=True)
    return {"json": out / "study_fuzzy.json", "md": out / "study_fuzzy.md", "doc": out / "study-fuzzy.md",
            "figures": out / "figures"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = output_paths(args)
    if args.render_only:
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        for p in write_markdown(report, paths):
            print(f"wrote {p}")
        return 0
    limit_threads()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    wall_start = time.perf_counter()
    # the calibrator under study changes often: record exactly which source this run imported
    commit = _git_commit()
    fuzzy_sha = hashlib.sha256(Path(inspect.getsourcefile(FuzzyDirichletCalibrator)).read_bytes()).hexdigest()
    print(f"FuzzyDirichlet study: {args.splits} splits, seed {args.seed}, fuzzy max_iter "
          f"{args.fuzzy_max_iter or 'default'}{' (quick)' if args.quick else ''}", flush=True)

    t0 = time.perf_counter()
    datasets, digits_info = digits_datasets(args.seed)
    print(f"digits CNN trained and emulated in {time.perf_counter() - t0:.1f} s; 3-class case: classes "
          f"{tuple(digits_info['triple'])}", flush=True)
    if args.quick:
        shared_skipped = "not run in --quick mode"
    else:
        shared, shared_skipped = shared_datasets(args.data_dir)
        datasets += shared
    if shared_skipped:
        print(f"shared data skipped: {shared_skipped}", flush=True)

    blocks, kept, splits0 = [], {}, {}
    for ds in datasets:
        splits = make_splits(ds["y"], args.splits, args.seed)
        block, kept[ds["name"]] = run_dataset(ds, splits, args.seed, args.fuzzy_max_iter, probe=not args.quick)
        block["fuzzy_max_iter"] = args.fuzzy_max_iter
        splits0[ds["name"]] = splits[0]
        blocks.append(block)
        s = block["summary"][list(ds["sources"])[1]][block["int4_test"]]
        print(f"  {ds['name']:<12} ({block['seconds']:.0f} s) fitted on INT4, tested on {block['int4_test']}, ECE %: "
              + "  ".join(f"{m} {100 * s[m]['ece']['mean']:.2f}" for m in METHODS), flush=True)

    # figures
    paths["figures"].mkdir(parents=True, exist_ok=True)
    figures = []
    for metric in ("ece", "nll"):
        name = f"study-fuzzy-{metric}.png"
        metric_figure(blocks, metric, paths["figures"] / name)
        figures.append({"file": name, "caption": f"{METRIC_LABELS[metric]} by test precision (mean ± sd over "
                                                 f"{args.splits} splits); left: calibrators fitted on fp32 logits, "
                                                 f"right: fitted on INT4 logits."})
    rel_ds = next((d for d in datasets if d["name"] == "resnet50-3"), None) or datasets[1]
    rel_block = next(b for b in blocks if b["name"] == rel_ds["name"])
    caption = reliability_figure(rel_block, kept[rel_ds["name"]], rel_ds["y"][splits0[rel_ds["name"]][1]],
                                 paths["figures"] / "study-fuzzy-reliability.png")
    figures.append({"file": "study-fuzzy-reliability.png", "caption": caption})
    gates_figure(blocks, kept, splits0, {d["name"]: d["logits"] for d in datasets},
                 paths["figures"] / "study-fuzzy-gates.png")
    figures.append({"file": "study-fuzzy-gates.png",
                    "caption": "Fitted gate weights w_r(c) over the top confidence c (split 0, fitted on the INT4 "
                               "source; solid: noise=\"int4\", dashed: noise=None), over the histogram of c on the "
                               "calibration half (grey, log scale)."})

    card_lines, card = scorecard(blocks)
    report = {
        "study": "FuzzyDirichletCalibrator robustness (issue #5 item 3)",
        "script": "benchmarks/study_fuzzy.py",
        "command": RERUN_COMMAND + (" --quick" if args.quick else ""),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "seed": args.seed,
        "n_splits": args.splits,
        "fuzzy_max_iter": args.fuzzy_max_iter,
        "split_rule": "stratified 50/50: per class, rng.permutation of its indices, first floor(n_c/2) to "
                      "calibration; split s uses np.random.default_rng(seed + s)",
        "significance": f"two-sided Wilcoxon signed-rank p < {ALPHA} over paired splits (nominal)",
        "size_rule": "float parameters of the fitted map x 4 bytes: TS 1, PACS 2 (T0, lambda*eps), Dirichlet "
                     "K(K+1), Fuzzy n_parameters_",
        "ece_bins": N_BINS,
        "threads": 1,
        "versions": versions(),
        "git_commit": commit,
        "fuzzy_source_sha256": fuzzy_sha,
        "platform": platform.platform(),
        "digits": digits_info,
        "shared_skipped": shared_skipped,
        "datasets": blocks,
        "fuzzy_params": {noise: _clean_params(make_calibrators("fp32", args.seed, args.fuzzy_max_iter)[m])
                         for noise, m in (("int4", "Fuzzy+noise"), ("none", "Fuzzy"))},
        "convergence_warnings": {k: sorted(v) for k, v in WARNING_TEXTS.items()},
        "scorecard": card,
        "scorecard_lines": card_lines,
        "figures": figures,
        "wall_time_s": time.perf_counter() - wall_start,
    }
    report = _clean(report)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(to_json(report), encoding="utf-8")
    written = [paths["json"], *write_markdown(report, paths)]
    print()
    print("\n".join(card_lines))
    print("\n".join(f"- {b}" for b in summary_bullets(report)))
    print(f"\nwall time {report['wall_time_s']:.1f} s")
    print("wrote: " + ", ".join(str(p) for p in written) + ", "
          + ", ".join(str(paths["figures"] / f["file"]) for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Study: uncalibrated vs temperature scaling vs PACS across precisions, on real data.

What the study does, in one run (every number in the outputs comes from this run):

A. **Demo model** (always available, from a fresh clone). ``precal.demo.digits_logits
   (random_state=SEED)`` trains the demo CNN on half of scikit-learn's 1 797 handwritten
   digits. ``precal.emulate.sweep`` runs it at the configs ``fp32, bf16, fp16, fp8_e4m3,
   w8a8, w4a8, w4a4`` on the held-out images (the demo's calibration and test inputs
   together, 899 images), with the activation observers calibrated on the training
   images. For each config, over ``--splits`` (default 20) random calibration/test splits
   of the held-out logits -- split ``s`` draws a stratified 50/50 split (half of every class,
   rounded down, to calibration) from ``np.random.default_rng(SEED + s)``, the same split
   for every config and method -- temperature scaling (TS), PACS with the paper's
   ``risk="norm"`` and PACS with ``risk="peaked"`` (both ``precision=
   precal.demo.config_precision(config)``) are fitted on the calibration half and, with the
   uncalibrated softmax, scored on the test half: ECE, ACE (15 bins), NLL, Brier and
   accuracy. Reported: mean and standard deviation over the splits, and for each pair of
   methods the paired per-split difference (mean, standard deviation, wins).

B. **Real logits** from ``../shared/data/logits`` (relative to the repository root). The
   two ResNet-50 / CIFAR-10 files (cross-entropy and focal loss) hold the networks' true
   logits; their 10 000 test rows (``logits_test``/``labels_test``) are rounded in logit
   space with ``precal.emulate.round_logits``: ``fp32`` (as stored), ``bf16``, ``fp16``,
   ``fp8_e4m3`` (element-wise) and ``int8``, ``int4`` (symmetric, one scale per sample), as
   a model computing its last layer in that format would emit them. Same splits protocol
   and methods as in A (PACS precision = the rounding format). The CIFAR-100 files of
   DenseNet-BC-100 and WRN-16-4 store log-probabilities, i.e. logits shifted by an unknown
   per-row constant: softmax and TS are unaffected, but PACS's risk uses the raw logit norm,
   so on them it sees a different risk. They are studied at their stored precision only (no
   rounding: the size of the stored values is not the network's) and reported separately,
   flagged "log-probabilities: shifted logits", never pooled with the true-logit results.
   If the folder or either ResNet-50 file is missing or unreadable, part B (and the
   ResNet-50 part of C) is skipped with a one-line message that the outputs repeat.

C. **Seed analyses** of the precision effect itself, on the demo's held-out logits and on
   the ResNet-50 test logits, each against the fp32 softmax (float64): ``precision_split``
   (top-confidence gap), ``swap_analysis`` (changed predictions) and ``confidence_shift``
   (true-class confidence change) for every lower precision -- emulated logits, and the
   fp32 logits with the softmax evaluated step by step in bf16/fp16/fp8_e4m3
   (``softmax_in_format``) -- and ``saturation_report`` of the softmax evaluated in bf16 for
   every precision's logits. Figures (``precal.plotting``): precision-split diagrams (demo:
   fp32 vs w4a4 logits; ResNet-50: fp32 softmax vs softmax in bf16 and in fp8_e4m3), swap
   histograms overlaying the precisions, and one reliability figure (both ResNet-50s with
   fp8_e4m3 logits, test half of split 0: uncalibrated, TS, PACS norm, PACS peaked; the
   digits CNN at w4a4 when part B is skipped).

D. **Outputs**: tables printed; ``benchmarks/results/study_pacs.json`` (every number,
   per-split values, fitted parameters, versions, seeds, n_splits, wall time),
   ``benchmarks/results/study_pacs.md`` (the tables), ``docs/study-pacs.md`` (method,
   tables, figures, and a reading whose every sentence is computed from the results) and
   ``docs/figures/study-pacs-*.png``. A comparison counts as a clear win (loss) when the
   mean paired difference is below (above) minus (plus) one standard deviation of the
   per-split differences; "identical" when the two methods agree on every split (PACS
   fitted ``λ = 0``).

E. **Flags**: ``--quick`` (3 splits, fewer configs, writes to a new temporary directory and
   never to the committed outputs), ``--splits N`` (default 20), ``--out DIR`` (write
   everything under DIR: ``study_pacs.{json,md}``, ``study-pacs.md``, ``figures/``),
   ``--seed`` (default 0: the demo model's ``random_state`` and the split seeds).

Threads are capped at one (torch, OpenMP, BLAS). Run from the repository root::

    python benchmarks/study_pacs.py            # full run, refreshes the committed outputs
    python benchmarks/study_pacs.py --quick    # smoke test, writes to a temp dir
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.special import softmax as _softmax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.harness
from benchmarks import harness as h  # noqa: E402

from precal.calibration import PACSCalibrator, TemperatureScaling  # noqa: E402
from precal.demo import config_precision, digits_logits  # noqa: E402
from precal.emulate import round_logits, softmax_in_format, sweep  # noqa: E402
from precal.metrics import expected_calibration_error  # noqa: E402
from precal.metrics.diagnostics import (  # noqa: E402
    confidence_shift,
    precision_split,
    saturation_report,
    swap_analysis,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "logits"
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_DIR = REPO_ROOT / "docs"
RERUN_COMMAND = "python benchmarks/study_pacs.py"

DEMO_CONFIGS = ("fp32", "bf16", "fp16", "fp8_e4m3", "w8a8", "w4a8", "w4a4")
DEMO_CONFIGS_QUICK = ("fp32", "bf16", "w4a4")
REAL_PRECISIONS = ("fp32", "bf16", "fp16", "fp8_e4m3", "int8", "int4")
REAL_PRECISIONS_QUICK = ("fp32", "fp8_e4m3", "int4")
SOFTMAX_FORMATS = ("bf16", "fp16", "fp8_e4m3")
SATURATION_FORMAT = "bf16"

#: file -> (short name, description); true logits, required for part B.
TRUE_LOGIT_FILES = {
    "resnet50_cifar10.npz": ("ResNet-50 CE", "ResNet-50, cross-entropy, CIFAR-10 (true logits)"),
    "resnet50-focal_cifar10.npz": ("ResNet-50 focal", "ResNet-50, focal loss, CIFAR-10 (true logits)"),
}
#: optional files holding log-probabilities (shifted logits).
SHIFTED_FILES = {
    "densenet-bc-100_cifar100.npz": ("DenseNet-BC-100 C100",
                                     "DenseNet-BC-100, CIFAR-100 (log-probabilities: shifted logits)"),
    "wrn-16-4_cifar100.npz": ("WRN-16-4 C100", "WRN-16-4, CIFAR-100 (log-probabilities: shifted logits)"),
}
SHIFTED_FLAG = "(log-probabilities: shifted logits)"

METHODS = ("uncalibrated", "TS", "PACS-norm", "PACS-peaked")
METRICS = ("ece", "ace", "nll", "brier", "accuracy")
#: (method a, method b): paired differences a - b reported for every setting.
COMPARISONS = (("PACS-norm", "TS"), ("PACS-peaked", "TS"), ("TS", "uncalibrated"), ("PACS-norm", "PACS-peaked"))
COMPARED_METRICS = ("ece", "ace", "nll")
FIG_DPI = 100


#: The methods of every setting, by label (registry names of benchmarks.harness.METHODS).
METHOD_SPEC = {"uncalibrated": None, "TS": "ts", "PACS-norm": "pacs-norm", "PACS-peaked": "pacs-peaked"}

DataError = h.DataError

# --------------------------------------------------------------------------- helpers
#: Largest |difference| (in metric units) still called "identical" when PACS fitted λ = 0 on
#: every split: T0 may then sit a hair away from TS's T (L-BFGS-B starts there and may take a
#: tiny step), which moves a metric by far less than this.
IDENTICAL_ATOL = 1e-4
#: The harness's verdict words in this study's terms (lower is better for every compared metric).
VERDICT_WORDS = {"lower": "better", "higher": "worse"}


def paired(a: list[float], b: list[float], *, same_map: bool = False) -> dict[str, Any]:
    """:func:`benchmarks.harness.paired` of ``a - b`` with this study's fields: mean, sd,
    effect (mean / sd), wins (splits where ``a < b``), losses, verdict (better / worse /
    within noise / identical).

    ``same_map``: the two methods fitted the same map on every split (PACS with λ = 0 vs
    TS), so differences up to :data:`IDENTICAL_ATOL` are rounding and count as identical.
    """
    p = h.paired(a, b, atol=IDENTICAL_ATOL if same_map else 0.0)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {
        "mean": p["mean"],
        "sd": p["sd"],
        "effect": (p["mean"] / p["sd"]) if p["sd"] > 0 else None,
        "wins": p["n_lower"],
        "losses": int(np.sum(d > 0)),
        "verdict": VERDICT_WORDS.get(p["verdict"], p["verdict"]),
    }


# --------------------------------------------------------------------------- calibration study
def study_setting(z: np.ndarray, y: np.ndarray, precision: str,
                  splits: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Fit TS / PACS(norm) / PACS(peaked) on each calibration half, score every method on the test half."""
    methods = h.method_table(METHOD_SPEC, precision=precision)[0]
    r = h.compare_calibrators(z, y, splits, methods, metrics=METRICS,
                              attributes=("temperature_", "lambda_", "n_iter_"))
    per_split, fit = r["per_split"], r["fitted"]
    fitted: dict[str, list[Any]] = {"ts_T": [f["temperature_"] for f in fit["TS"]]}
    for risk in ("norm", "peaked"):
        rows = fit[f"PACS-{risk}"]
        fitted |= {f"{risk}_T0": [f["temperature_"] for f in rows], f"{risk}_lambda": [f["lambda_"] for f in rows],
                   f"{risk}_n_iter": [f["n_iter_"] for f in rows], f"{risk}_warnings": [f["n_warnings"] for f in rows]}
    lam_zero = {f"PACS-{risk}": bool(np.all(np.asarray(fitted[f"{risk}_lambda"]) == 0.0))
                for risk in ("norm", "peaked")}
    lam_zero["TS"] = True
    comparisons = {
        f"{a} - {b}": {k: paired(per_split[a][k], per_split[b][k], same_map=lam_zero.get(a, False)
                                 and lam_zero.get(b, False)) for k in COMPARED_METRICS}
        for a, b in COMPARISONS
    }
    lam = {
        risk: {
            "share_zero": float(np.mean(np.asarray(fitted[f"{risk}_lambda"]) == 0.0)),
            "median_lambda_times_eps": float(np.median(fitted[f"{risk}_lambda"]) * _eps(precision)),
            "max_rel_T0_minus_T_where_lambda_zero": max(
                [abs(t0 / t - 1.0) for t0, t, la in zip(fitted[f"{risk}_T0"], fitted["ts_T"], fitted[f"{risk}_lambda"])
                 if la == 0.0], default=None),
        }
        for risk in ("norm", "peaked")
    }
    return {
        "precision": precision,
        "n_samples": int(len(y)),
        "n_calibration": r["n_calibration"],
        "n_test": r["n_test"],
        "summary": r["summary"],
        "comparisons": comparisons,
        "lambda": lam,
        "fitted": fitted,
        "per_split": per_split,
        "warnings": sorted(r["warnings"]),
    }


def _eps(precision: str) -> float:
    from precal.calibration.pacs import precision_epsilon

    return precision_epsilon(precision)


def run_calibration_block(name: str, description: str, logits: dict[str, np.ndarray], y: np.ndarray,
                          precision_of: dict[str, str], splits, flag: str | None = None) -> dict[str, Any]:
    settings = {}
    for config, z in logits.items():
        t0 = time.perf_counter()
        settings[config] = study_setting(z, y, precision_of[config], splits)
        settings[config]["seconds"] = time.perf_counter() - t0
        s = settings[config]["summary"]
        print(f"  {name:<20} {config:<9} ECE %: uncal {100 * s['uncalibrated']['ece']['mean']:.2f}  "
              f"TS {100 * s['TS']['ece']['mean']:.2f}  PACS-norm {100 * s['PACS-norm']['ece']['mean']:.2f}  "
              f"PACS-peaked {100 * s['PACS-peaked']['ece']['mean']:.2f}  ({settings[config]['seconds']:.1f} s)",
              flush=True)
    return {"name": name, "description": description, "flag": flag, "settings": settings}


# --------------------------------------------------------------------------- data
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_logits(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(logits, labels, provenance) of a test split; DataError when missing or malformed."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        with np.load(path, allow_pickle=False) as d:
            files = set(d.files)
            zk, yk = ("logits_test", "labels_test") if "logits_test" in files else ("logits", "labels")
            if zk not in files or yk not in files:
                raise DataError(f"{path.name} has no {zk}/{yk} arrays (has {sorted(files)})")
            z, y = np.asarray(d[zk]), np.asarray(d[yk])
    except DataError:
        raise
    except Exception as exc:  # zip, pickle, OS and value errors alike: the file is unreadable
        raise DataError(f"{path.name} cannot be read ({type(exc).__name__}: {exc})") from None
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y) or len(y) < 100 or z.shape[1] < 2:
        raise DataError(f"{path.name}: unexpected shapes logits {z.shape}, labels {y.shape}")
    if not np.issubdtype(z.dtype, np.floating) or not np.all(np.isfinite(z)):
        raise DataError(f"{path.name}: logits are not finite floats")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise DataError(f"{path.name}: labels are not integers in 0..{z.shape[1] - 1}")
    info = {"file": path.name, "arrays": [zk, yk], "n": int(len(y)), "n_classes": int(z.shape[1]),
            "sha256": _sha256(path)}
    return z.astype(np.float32), y.astype(np.int64), info


# --------------------------------------------------------------------------- seed analyses
def diagnostics(y: np.ndarray, z_ref: np.ndarray, low_logits: dict[str, np.ndarray],
                softmax_formats: tuple[str, ...]) -> dict[str, Any]:
    """Seed analyses of every lower precision against the fp32 softmax (float64)."""
    p_ref = _softmax(np.asarray(z_ref, dtype=np.float64), axis=1)
    rows = []
    candidates: list[tuple[str, str, Any]] = [
        (f"logits {name}", name, _softmax(np.asarray(z, dtype=np.float64), axis=1)) for name, z in low_logits.items()
    ]
    candidates += [(f"softmax in {fmt}", fmt, softmax_in_format(torch.from_numpy(np.asarray(z_ref, np.float32)), fmt))
                   for fmt in softmax_formats]
    for label, precision, p_low in candidates:
        split = precision_split(p_ref, p_low)
        swaps = swap_analysis(y, p_ref, p_low)
        shift = confidence_shift(y, p_ref, p_low)
        rows.append({
            "comparison": label,
            "precision": precision,
            "mean_gap": split.mean_gap,
            "mean_abs_gap": split.mean_abs_gap,
            "max_abs_gap": split.max_abs_gap,
            "share_gap_above_0.01": split.share_above_threshold,
            "n_swapped": swaps.n_swapped,
            "share_swapped": swaps.share_swapped,
            "error_ref": swaps.error_ref,
            "error_low": swaps.error_low,
            "error_change": swaps.error_change,
            "n_right_to_wrong": swaps.n_right_to_wrong,
            "n_wrong_to_right": swaps.n_wrong_to_right,
            "swap_counts": swaps.counts.tolist(),
            "swap_bin_edges": swaps.bin_edges.tolist(),
            "mean_true_class_shift": shift.mean_shift,
            "shift_bin_counts": shift.counts.tolist(),
            "shift_bin_mean": [None if not math.isfinite(v) else float(v) for v in shift.bin_mean_shift],
            "ece_low": expected_calibration_error(y, p_low),
        })
    saturation = []
    for name, z in {"fp32": z_ref, **low_logits}.items():
        exact = saturation_report(_softmax(np.asarray(z, dtype=np.float64), axis=1))
        rep = saturation_report(softmax_in_format(torch.from_numpy(np.asarray(z, np.float32)), SATURATION_FORMAT))
        saturation.append({
            "logits": name,
            "softmax": SATURATION_FORMAT,
            "share_saturated": rep.share_saturated,
            "n_distinct": rep.n_distinct,
            "share_tied": rep.share_tied,
            "n_exact_zeros": rep.n_exact_zeros,
            "n_entries": int(z.size),
            "exact_softmax_n_distinct": exact.n_distinct,
            "exact_softmax_share_saturated": exact.share_saturated,
        })
    return {"n_samples": int(len(y)), "ece_ref": expected_calibration_error(y, p_ref), "rows": rows,
            "saturation": saturation}


# --------------------------------------------------------------------------- figures
def reliability_row(name: str, z: np.ndarray, y: np.ndarray, precision: str,
                    split: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """One row of the reliability figure: every method fitted on the calibration half of ``split``."""
    cal, test = split
    z = np.asarray(z, dtype=np.float64)
    ts = TemperatureScaling().fit(z[cal], y[cal])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pn = PACSCalibrator(precision=precision).fit(z[cal], y[cal])
        pp = PACSCalibrator(precision=precision, risk="peaked").fit(z[cal], y[cal])
    return {
        "name": name,
        "y": y[test],
        "probs": {"uncalibrated": _softmax(z[test], axis=1), "TS": ts.predict_proba(z[test]),
                  "PACS (norm)": pn.predict_proba(z[test]), "PACS (peaked)": pp.predict_proba(z[test])},
        "caption": f"{name} ({len(test)} test images): TS T = {ts.temperature_:.3f}; PACS norm λε = "
                   f"{pn.lambda_ * pn.epsilon_:.3g}{' (λ = 0: TS)' if pn.lambda_ == 0 else ''}; "
                   f"PACS peaked λε = {pp.lambda_ * pp.epsilon_:.3g}{' (λ = 0: TS)' if pp.lambda_ == 0 else ''}",
    }


def _figure(ncols: int, figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def make_figures(fig_dir: Path, demo_fig: dict[str, Any], real_fig: dict[str, Any] | None,
                 staged: h.StagedOutputs) -> list[dict[str, str]]:
    from matplotlib.ticker import MaxNLocator

    from precal.plotting import precision_split_diagram, reliability_diagram, swap_histogram

    figures: list[dict[str, str]] = []

    def _savefig(fig: Any, path: Path) -> str:
        fig.savefig(staged.path(path), dpi=FIG_DPI, format="png")
        return path.name

    y, p_ref, low_name, p_low = demo_fig["y"], demo_fig["p_ref"], demo_fig["low_name"], demo_fig["p_low"]
    ax = precision_split_diagram(y, p_ref, p_low, names=("fp32", low_name))
    ax.set_title(f"Digits CNN: fp32 vs {low_name} logits")
    figures.append({"file": _savefig(ax.figure, fig_dir / f"study-pacs-demo-split-{low_name}.png"),
                    "caption": f"Precision split of the digits CNN (all {len(y)} held-out images): reliability "
                               f"at fp32 and with {low_name} emulated, and the two confidence histograms."})

    if real_fig is not None:
        saturated_ref = float(np.mean(real_fig["p_ref"].max(axis=1) == 1.0))
        for fmt, p_fmt in real_fig["softmax"].items():
            saturated = float(np.mean(p_fmt.float().amax(dim=1).numpy() == 1.0))
            ax = precision_split_diagram(real_fig["y"], real_fig["p_ref"], p_fmt,
                                         names=("fp32 softmax", f"softmax in {fmt}"))
            ax.set_title(f"{real_fig['name']}: softmax in fp32 vs in {fmt}")
            figures.append({"file": _savefig(ax.figure, fig_dir / f"study-pacs-resnet50-split-{fmt}.png"),
                            "caption": f"Precision split of {real_fig['name']} (CIFAR-10 test, "
                                       f"{len(real_fig['y'])} images): the same fp32 logits with the softmax in "
                                       f"float64 and evaluated step by step in {fmt}: {100 * saturated:.1f}% of "
                                       f"the top confidences are exactly 1.0 in {fmt} "
                                       f"({100 * saturated_ref:.1f}% in float64)."})

    panels = [("Digits CNN", demo_fig)] + ([(real_fig["name"], real_fig)] if real_fig is not None else [])
    fig, axes = _figure(len(panels), (5.2 * len(panels), 3.8))
    for ax, (title, src) in zip(axes, panels):
        for name, p in src["swap_probs"].items():
            swap_histogram((src["y"], src["p_ref"], p), ax=ax, label=name)
        ax.set_title(f"{title}: swaps vs fp32", fontsize="medium")
        ax.set_ylim(0, 1.9 * max(1.0, ax.get_ylim()[1]))
        ax.legend(loc="upper left", fontsize="x-small")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    figures.append({"file": _savefig(fig, fig_dir / "study-pacs-swaps.png"),
                    "caption": "Predictions that change relative to fp32, histogrammed over the fp32 top "
                               "confidence, one line per precision (legend: share swapped, change of the error "
                               "rate); lines that coincide hide each other."})

    rows = real_fig["reliability"] if real_fig is not None else demo_fig["reliability"]
    n_cols = len(rows[0]["probs"])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * n_cols, 3.2 * len(rows) + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), n_cols))
    for row, ax_row in zip(rows, axes):
        for ax, (method, p) in zip(ax_row, row["probs"].items()):
            reliability_diagram(row["y"], p, ax=ax, label=method)
            ax.set_title(f"{row['name']}: {method}", fontsize="small")
            ax.legend(loc="upper left", fontsize="x-small")
    figures.append({"file": _savefig(fig, fig_dir / "study-pacs-reliability.png"),
                    "caption": "Reliability diagrams on the test half of split 0, every calibrator fitted on its "
                               "calibration half. " + "; ".join(r["caption"] for r in rows) + "."})
    return figures


# --------------------------------------------------------------------------- reading (computed)
def _fmt_pct(x: float, nd: int = 2) -> str:
    return f"{100 * x:.{nd}f}"


def _fmt_diff(metric: str, value: float, sign: bool = True) -> str:
    """ECE/ACE in percentage points (3 decimals), NLL in nats (4 decimals)."""
    if metric in ("ece", "ace"):
        return f"{100 * value:{'+' if sign else ''}.3f} points"
    return f"{value:{'+' if sign else ''}.4f}"


def _setting_label(block: dict[str, Any], config: str) -> str:
    return f"{block['name']} {config}"


def _verdict_counts(blocks: list[dict[str, Any]], comparison: str, metric: str) -> dict[str, list[tuple[str, dict]]]:
    out: dict[str, list[tuple[str, dict]]] = {"better": [], "worse": [], "within noise": [], "identical": []}
    for block in blocks:
        for config, st in block["settings"].items():
            c = st["comparisons"][comparison][metric]
            out[c["verdict"]].append((_setting_label(block, config), c))
    return out


def _list(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def reading(report: dict[str, Any]) -> list[str]:
    """Bullet points computed from the results; nothing here is typed by hand but the wording."""
    main_blocks = [report["demo"]] + report["real"]["true_logit_blocks"]
    shifted_blocks = report["real"]["shifted_blocks"]
    n_splits = report["n_splits"]
    bullets: list[str] = []
    total = sum(len(b["settings"]) for b in main_blocks)
    scope = (f"{total} settings are model × precision pairs (" + ", ".join(f"{b['name']} {len(b['settings'])}"
                                                                          for b in main_blocks) + ")")
    bullets.append(f"Criterion: over {n_splits} splits, a method counts as clearly better (worse) than another in a "
                   f"setting when its mean paired difference is below (above) minus (plus) one standard deviation "
                   f"of the per-split differences; the {scope}.")

    for comp, label in (("PACS-norm - TS", "PACS (risk=\"norm\", the paper's)"),
                        ("PACS-peaked - TS", "PACS (risk=\"peaked\")")):
        for metric in ("ece", "ace", "nll"):
            v = _verdict_counts(main_blocks, comp, metric)
            mname = metric.upper()
            text = (f"{label} vs TS on {mname}: clearly better in {len(v['better'])} of {total} settings, "
                    f"clearly worse in {len(v['worse'])}, within noise in {len(v['within noise'])}, identical "
                    f"(λ = 0 on every split) in {len(v['identical'])}.")
            if v["better"]:
                best = min(v["better"], key=lambda t: t[1]["mean"])
                text += (f" Wins: {_list([s for s, _ in v['better']])}; largest: {best[0]}, "
                         f"{_fmt_diff(metric, best[1]['mean'])} (split-to-split sd of the difference "
                         f"{_fmt_diff(metric, best[1]['sd'], sign=False)}; PACS lower on "
                         f"{best[1]['wins']}/{n_splits} splits).")
            if v["worse"]:
                worst = max(v["worse"], key=lambda t: t[1]["mean"])
                text += (f" Losses: {_list([s for s, _ in v['worse']])}; largest: {worst[0]}, "
                         f"{_fmt_diff(metric, worst[1]['mean'])} (sd {_fmt_diff(metric, worst[1]['sd'], sign=False)}"
                         f"; PACS lower on {worst[1]['wins']}/{n_splits} splits).")
            all_c = [c for lst in v.values() for _, c in lst]
            lower_mean = sum(c["mean"] < 0 for c in all_c)
            text += f" Mean {mname} lower than TS's in {lower_mean} of {total} settings, noise aside."
            bullets.append(text)

    # magnitude of the PACS-norm vs TS ECE differences relative to the spread between splits
    effects = []
    for block in main_blocks:
        for config, st in block["settings"].items():
            c = st["comparisons"]["PACS-norm - TS"]["ece"]
            sd_ts = st["summary"]["TS"]["ece"]["sd"]
            if c["verdict"] != "identical" and sd_ts > 0:
                effects.append(abs(c["mean"]) / sd_ts)
    if effects:
        bullets.append(f"Size: where PACS (norm) and TS differ, |mean ECE difference| is {min(effects):.2f} to "
                       f"{max(effects):.2f} (median {float(np.median(effects)):.2f}) times the split-to-split sd of "
                       f"TS's own ECE, i.e. the method differences are "
                       f"{'smaller than' if float(np.median(effects)) < 1 else 'comparable to or larger than'} "
                       f"the variation due to which half of the data is used for calibration.")

    # TS vs uncalibrated
    v = _verdict_counts(main_blocks, "TS - uncalibrated", "ece")
    higher = [s for lst in v.values() for s, c in lst if c["mean"] > 0]
    v_nll = _verdict_counts(main_blocks, "TS - uncalibrated", "nll")
    bullets.append(f"TS vs uncalibrated on ECE: clearly better in {len(v['better'])} of {total} settings, clearly "
                   f"worse in {len(v['worse'])} ({_list([s for s, _ in v['worse']])}), within noise in "
                   f"{len(v['within noise'])}; TS's mean ECE is higher than the uncalibrated softmax's in "
                   f"{len(higher)} ({_list(higher)}), while on NLL TS is clearly better in {len(v_nll['better'])} and "
                   f"clearly worse in {len(v_nll['worse'])}.")

    # lambda
    for risk in ("norm", "peaked"):
        zero = [(_setting_label(b, c), st["lambda"][risk]["share_zero"]) for b in main_blocks
                for c, st in b["settings"].items()]
        always = [s for s, share in zero if share == 1.0]
        never = [s for s, share in zero if share == 0.0]
        bullets.append(f"PACS ({risk}) fitted λ = 0 (plain TS) on every split in {len(always)} of {total} settings "
                       f"({_list(always)}) and λ > 0 on every split in {len(never)} ({_list(never)}).")

    # fits that stopped at max_iter: the drift towards T(x) proportional to the risk
    for risk in ("norm", "peaked"):
        hit, ratios, where = 0, [], []
        n_fits = 0
        for b in main_blocks:
            for c, st in b["settings"].items():
                f = st["fitted"]
                n_fits += len(f["ts_T"])
                idx = [i for i, w in enumerate(f[f"{risk}_warnings"]) if w > 0]
                if idx:
                    hit += len(idx)
                    where.append(f"{_setting_label(b, c)} ({len(idx)}/{len(f['ts_T'])})")
                    ratios += [f[f"{risk}_T0"][i] / f["ts_T"][i] for i in idx]
        if hit:
            bullets.append(
                f"PACS ({risk}) stopped at its iteration limit with a ConvergenceWarning in {hit} of {n_fits} fits: "
                f"{_list(where)}. In those fits T0 fell to a median {float(np.median(ratios)):.2g} times TS's "
                f"temperature while λ grew: the fit drifts towards T(x) ∝ risk, i.e. softmax(z / (κ ||z||)) for "
                f"the norm risk, a limit the (T0, λ) parametrisation reaches only at T0 → 0, λ → ∞; only "
                f"T0·λ is determined there and the reported T0 and λ are not meaningful one by one.")
        else:
            bullets.append(f"PACS ({risk}) converged (no ConvergenceWarning) in all {n_fits} fits.")

    parts = []
    for metric in ("ece", "ace", "nll"):
        v = _verdict_counts(main_blocks, "PACS-norm - PACS-peaked", metric)
        parts.append(f"on {metric.upper()} norm is clearly better in {len(v['better'])} of {total} settings "
                     f"({_list([s for s, _ in v['better']], 4)}), clearly worse in {len(v['worse'])} "
                     f"({_list([s for s, _ in v['worse']], 4)}), within noise in {len(v['within noise'])}, "
                     f"identical (both λ = 0) in {len(v['identical'])}")
    bullets.append("Risk shapes, PACS (norm) vs PACS (peaked): " + "; ".join(parts) + ".")

    # precision effect on the uncalibrated model
    n_prec, n_clear, largest = 0, [], None
    for block in main_blocks:
        st = block["settings"]
        if "fp32" not in st:
            continue
        for config, s_ in st.items():
            if config == "fp32":
                continue
            c = paired(s_["per_split"]["uncalibrated"]["ece"], st["fp32"]["per_split"]["uncalibrated"]["ece"])
            n_prec += 1
            if c["verdict"] in ("better", "worse"):
                n_clear.append(f"{_setting_label(block, config)} ({100 * c['mean']:+.3f})")
            if largest is None or abs(c["mean"]) > abs(largest[1]):
                largest = (_setting_label(block, config), c["mean"])
    if n_prec:
        bullets.append(f"Is there precision-induced miscalibration to correct? Uncalibrated test ECE at a lower "
                       f"precision differs from fp32's by more than one sd of the paired difference in "
                       f"{len(n_clear)} of {n_prec} settings ({_list(n_clear)}); the largest mean change is "
                       f"{100 * largest[1]:+.2f} points ({largest[0]}). The per-model lines below give every value.")
    for block in main_blocks:
        st = block["settings"]
        if "fp32" not in st:
            continue
        ref = st["fp32"]["per_split"]["uncalibrated"]
        parts = []
        for config, s in st.items():
            if config == "fp32":
                continue
            c = paired(s["per_split"]["uncalibrated"]["ece"], ref["ece"])
            acc = (s["summary"]["uncalibrated"]["accuracy"]["mean"]
                   - st["fp32"]["summary"]["uncalibrated"]["accuracy"]["mean"])
            parts.append(f"{config} {100 * c['mean']:+.2f} (sd {100 * c['sd']:.2f}; accuracy {100 * acc:+.2f})")
        bullets.append(f"Precision-induced miscalibration, {block['name']}: uncalibrated test ECE minus fp32's, in "
                       f"points: " + "; ".join(parts) + ".")

    if shifted_blocks:
        v_n = _verdict_counts(shifted_blocks, "PACS-norm - TS", "ece")
        n_sh = sum(len(b["settings"]) for b in shifted_blocks)
        per = "; ".join(f"{s_} {_fmt_diff('ece', c['mean'])} (sd {_fmt_diff('ece', c['sd'], sign=False)}, "
                        f"{c['verdict']})" for lst in v_n.values() for s_, c in lst)
        bullets.append(f"Shifted logits {SHIFTED_FLAG}, not pooled with the above: PACS (norm) vs TS on ECE is "
                       f"clearly better in {len(v_n['better'])} of {n_sh}, clearly worse in {len(v_n['worse'])}, "
                       f"within noise in {len(v_n['within noise'])}, identical in {len(v_n['identical'])} "
                       f"({per}). Its risk "
                       f"there is the norm of log-probabilities, which grows with the spread of the non-top classes, "
                       f"not the network's logit norm, so this does not test the paper's mechanism.")

    demo = report["demo"]
    fp32 = demo["settings"].get("fp32") or next(iter(demo["settings"].values()))
    acc = fp32["summary"]["uncalibrated"]["accuracy"]["mean"]
    demo_diffs = [abs(st["comparisons"][c]["ece"]["mean"]) for st in demo["settings"].values()
                  for c in ("PACS-norm - TS", "PACS-peaked - TS")]
    bullets.append(f"Caveat: the digits task is easy (fp32 test accuracy {100 * acc:.1f}%, {fp32['n_samples']} "
                   f"held-out images, {fp32['n_test']} per test half, so about "
                   f"{round((1 - acc) * fp32['n_test'])} errors per half): its ECE is dominated by few samples and "
                   f"by the 15-bin estimator, and the mean ECE differences between PACS and TS there are at most "
                   f"{100 * max(demo_diffs):.2f} points (median {100 * float(np.median(demo_diffs)):.2f}). "
                   f"The splits reuse one "
                   f"pool of held-out data, so they are not independent replications; their spread measures the "
                   f"sensitivity to which half is used for calibration.")
    return bullets


# --------------------------------------------------------------------------- markdown
def _ms(stat: dict[str, float], scale: float, nd: int) -> str:
    return f"{stat['mean'] * scale:.{nd}f} ± {stat['sd'] * scale:.{nd}f}"


def block_table(block: dict[str, Any]) -> list[str]:
    lines = ["| precision | method | ECE % | ACE % | NLL | accuracy % | fitted |",
             "|---|---|---:|---:|---:|---:|---|"]
    for config, st in block["settings"].items():
        for method in METHODS:
            s = st["summary"][method]
            if method == "TS":
                fitted = f"T = {np.mean(st['fitted']['ts_T']):.3f}"
            elif method.startswith("PACS"):
                risk = method.split("-")[1]
                n = len(st["fitted"]["ts_T"])
                fitted = (f"median T0 = {np.median(st['fitted'][f'{risk}_T0']):.3g}, λ = 0 on "
                          f"{round(st['lambda'][risk]['share_zero'] * n)}/{n}")
                n_warn = sum(w > 0 for w in st["fitted"][f"{risk}_warnings"])
                if n_warn:
                    fitted += f", ConvergenceWarning on {n_warn}/{n}"
            else:
                fitted = ""
            lines.append(f"| {config if method == 'uncalibrated' else ''} | {method} | {_ms(s['ece'], 100, 2)} | "
                         f"{_ms(s['ace'], 100, 2)} | {_ms(s['nll'], 1, 4)} | {_ms(s['accuracy'], 100, 2)} | {fitted} |")
    return lines


def comparison_table(blocks: list[dict[str, Any]]) -> list[str]:
    lines = ["| setting | PACS-norm − TS, ECE pts | verdict | PACS-norm − TS, NLL | verdict | "
             "PACS-peaked − TS, ECE pts | verdict | PACS-peaked − TS, NLL | verdict |",
             "|---|---:|---|---:|---|---:|---|---:|---|"]
    for block in blocks:
        for config, st in block["settings"].items():
            cells = []
            for comp in ("PACS-norm - TS", "PACS-peaked - TS"):
                for metric, scale, nd in (("ece", 100, 3), ("nll", 1, 4)):
                    c = st["comparisons"][comp][metric]
                    cells += [f"{c['mean'] * scale:+.{nd}f} ± {c['sd'] * scale:.{nd}f}",
                              f"{c['verdict']} ({c['wins']}/{len(st['fitted']['ts_T'])})"]
            lines.append(f"| {_setting_label(block, config)} | " + " | ".join(cells) + " |")
    return lines


def diagnostics_table(diag: dict[str, Any]) -> list[str]:
    lines = ["| vs fp32 softmax | mean gap | mean abs gap | max abs gap | share abs gap > 0.01 | swapped | "
             "Δ error, pts | right→wrong | wrong→right | mean true-class shift | ECE % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines.append(f"| fp32 (reference) | | | | | | | | | | {_fmt_pct(diag['ece_ref'])} |")
    for r in diag["rows"]:
        lines.append(f"| {r['comparison']} | {r['mean_gap']:+.2e} | {r['mean_abs_gap']:.2e} | {r['max_abs_gap']:.3f} | "
                     f"{_fmt_pct(r['share_gap_above_0.01'])}% | {r['n_swapped']} ({_fmt_pct(r['share_swapped'])}%) | "
                     f"{100 * r['error_change']:+.2f} | {r['n_right_to_wrong']} | {r['n_wrong_to_right']} | "
                     f"{r['mean_true_class_shift']:+.2e} | {_fmt_pct(r['ece_low'])} |")
    return lines


def saturation_table(diag: dict[str, Any]) -> list[str]:
    lines = [f"| logits | top conf. exactly 1.0 (softmax in {SATURATION_FORMAT}) | distinct top conf. | share tied | "
             "exact zeros (of entries) | distinct top conf., float64 softmax |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in diag["saturation"]:
        lines.append(f"| {r['logits']} | {_fmt_pct(r['share_saturated'], 1)}% | {r['n_distinct']} | "
                     f"{_fmt_pct(r['share_tied'], 1)}% | {r['n_exact_zeros']} of {r['n_entries']} | "
                     f"{r['exact_softmax_n_distinct']} |")
    return lines


def results_markdown(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    blocks = [report["demo"]] + report["real"]["true_logit_blocks"] + report["real"]["shifted_blocks"]
    for block in blocks:
        st0 = next(iter(block["settings"].values()))
        lines += ["", f"### {block['description']}", "",
                  f"{st0['n_samples']} samples; {report['n_splits']} splits of {st0['n_calibration']} calibration / "
                  f"{st0['n_test']} test; mean ± sd over splits.", ""]
        lines += block_table(block)
    lines += ["", "### Paired differences, PACS − TS (negative: PACS better)", "",
              "Mean ± sd of the per-split difference; verdict by the one-sd rule, in brackets the number of "
              "splits on which PACS is lower.", ""]
    lines += comparison_table(blocks)
    for title, diag in report["diagnostics"].items():
        lines += ["", f"### Seed analyses: {title}", "", f"{diag['n_samples']} samples.", ""]
        lines += diagnostics_table(diag)
        lines += [""] + saturation_table(diag)
    return lines


def header_notes(report: dict[str, Any]) -> list[str]:
    notes = []
    if report["real"]["skipped"]:
        notes.append(f"**Part B skipped**: {report['real']['skipped']}. Only the digits demo was studied; "
                     f"this is not the complete study.")
    for note in report["real"]["notes"]:
        notes.append(f"Note: {note}.")
    if report["quick"]:
        notes.append("**Quick smoke test** (`--quick`): few splits and configs; not the study's results.")
    return [line for note in notes for line in (note, "")]


def render(report: dict[str, Any]) -> tuple[str, str]:
    """The results markdown and the docs page, from the report alone."""
    bullets = reading(report)
    md = ["# PACS study: results" + (" (quick smoke test)" if report["quick"] else ""), "",
          f"Generated by `{RERUN_COMMAND}` on {report['date']} (wall time {report['wall_time_s']:.0f} s, "
          f"{report['n_splits']} splits, seed {report['seed']}); see `docs/study-pacs.md` for the method and "
          f"figures. Do not edit by hand.", ""]
    md += header_notes(report)
    md += results_markdown(report)
    md += ["", "### Reading (computed from the numbers above)", ""] + [f"- {b}" for b in bullets]

    title = "# Study: temperature scaling vs PACS across precisions"
    doc = [title + (" (quick smoke test)" if report["quick"] else ""),
           "",
           f"*Generated by `{RERUN_COMMAND}` from its own results (`benchmarks/results/study_pacs.json`); "
           "every number and every sentence of the reading below is computed, none typed by hand. "
           f"Run {report['date']}, wall time {report['wall_time_s']:.0f} s.*", ""]
    doc += header_notes(report)
    doc += ["", "## Method", "",
            "**Question.** Does PACS (`PACSCalibrator`, seed 000: a per-sample temperature `T(x) = T0 (1 + λ ε "
            "||z(x)|| s(p̂))`) calibrate low-precision models better than one global temperature (TS)? Both risk "
            "shapes are compared: the paper's `risk=\"norm\"` (`s ≡ 1`) and `risk=\"peaked\"` "
            "(`s = 4 p̂ (1 − p̂)`). PACS's `precision` is the format of the setting "
            "(`precal.demo.config_precision` for the demo's configs).",
            "",
            f"**Data.** (A) The digits demo CNN (`precal.demo.digits_logits(random_state={report['seed']})`) "
            f"emulated by `precal.emulate.sweep` at {', '.join(report['demo']['settings'])} on its "
            f"{report['demo_info']['n_held_out']} held-out images (activation observers calibrated on the "
            f"{report['demo_info']['n_train']} training images). (B) Real CIFAR-10 test logits of two ResNet-50s "
            f"(cross-entropy and focal loss; true logits) rounded in logit space by `precal.emulate.round_logits` "
            f"(float formats element-wise; int8/int4 symmetric with one scale per sample), as a model computing "
            f"its last layer in that format would emit them. The CIFAR-100 files of DenseNet-BC-100 and WRN-16-4 "
            f"store log-probabilities, i.e. logits shifted by an unknown per-row constant; TS and the softmax are "
            f"blind to that, but PACS's risk uses the raw logit norm, so those two are studied only at their "
            f"stored precision and reported apart, flagged {SHIFTED_FLAG}.",
            "",
            f"**Protocol.** {report['n_splits']} random stratified 50/50 calibration/test splits per data set "
            f"(split `s` from `np.random.default_rng({report['seed']} + s)`; the same splits for every precision "
            f"and method, so differences are paired). On each split TS, PACS(norm) and PACS(peaked) are fitted "
            f"on the calibration half; all methods and the uncalibrated softmax are scored on the test half: ECE "
            f"and ACE (15 bins, top label), NLL, accuracy (and Brier in the JSON). A comparison is a clear win "
            f"(loss) when the mean per-split difference is below (above) minus (plus) one standard deviation of "
            f"the differences — a deliberately strict rule (with {report['n_splits']} splits it asks for a "
            f"paired t-statistic beyond √{report['n_splits']}); the number of splits won is given alongside.",
            "",
            "Logit-space rounding of the ResNet-50 outputs emulates only the precision of the emitted logits "
            "(a last layer computed in that format), not errors accumulated through the network; the demo's "
            "`w*a*` configs do emulate the whole network.",
            "",
            "**Seed analyses.** For the demo and the ResNet-50 logits, each lower precision against the fp32 "
            "softmax (float64): `precision_split` (top-confidence gap), `swap_analysis` (changed predictions), "
            "`confidence_shift` (true-class confidence), for emulated/rounded logits and for the fp32 logits with "
            f"the softmax evaluated step by step in a format (`softmax_in_format`); `saturation_report` of the "
            f"softmax evaluated in {SATURATION_FORMAT} for every precision's logits.",
            "", "## Reading", ""]
    doc += [f"- {b}" for b in bullets]
    doc += ["", "## Results"]
    doc += results_markdown(report)
    doc += ["", "## Figures", ""]
    for f in report["figures"]:
        doc += [f"![{f['caption']}](figures/{f['file']})", "", f"*{f['caption']}*", ""]
    doc += ["## Reproduce", "", "```bash",
            f"{RERUN_COMMAND}              # full run: benchmarks/results/study_pacs.{{json,md}}, this page, "
            f"docs/figures/study-pacs-*.png",
            f"{RERUN_COMMAND} --quick      # smoke test (3 splits, fewer configs), writes to a temporary directory",
            f"{RERUN_COMMAND} --splits 50 --seed 1 --out /tmp/study",
            "```", "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
            + (f"; commit {report['git_commit']}" if report["git_commit"] else "") + "."]
    return "\n".join(md) + "\n", "\n".join(doc) + "\n"


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    h.add_study_arguments(parser, threads=False)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"real logits folder (default {DATA_DIR})")
    return h.finish_study_arguments(parser, parser.parse_args(argv))


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    committed = {"json": DEFAULT_RESULTS_DIR / "study_pacs.json", "md": DEFAULT_RESULTS_DIR / "study_pacs.md",
                 "doc": DEFAULT_DOCS_DIR / "study-pacs.md", "figures": DEFAULT_DOCS_DIR / "figures"}
    return h.output_paths(args, committed, prefix="precal-study-pacs-")


def run_real(args: argparse.Namespace, precisions: tuple[str, ...], n_splits: int) -> tuple[dict, dict | None, dict]:
    """Part B (and the ResNet-50 data for part C). Returns (real report, figure data, diagnostics)."""
    real: dict[str, Any] = {"data_dir": str(args.data_dir), "skipped": None, "notes": [], "files": [],
                            "true_logit_blocks": [], "shifted_blocks": [], "precisions": list(precisions)}
    loaded = {}
    try:
        if not args.data_dir.is_dir():
            raise DataError(f"{args.data_dir} is not there")
        for fname in TRUE_LOGIT_FILES:
            loaded[fname] = load_logits(args.data_dir / fname)
    except DataError as exc:
        real["skipped"] = str(exc)
        print(f"Part B skipped: {exc}.", flush=True)
        return real, None, {}
    shifted = {}
    if not args.quick:
        for fname in SHIFTED_FILES:
            try:
                shifted[fname] = load_logits(args.data_dir / fname)
            except DataError as exc:
                real["notes"].append(f"optional file skipped: {exc}")
                print(f"  optional file skipped: {exc}.", flush=True)

    diags: dict[str, Any] = {}
    fig_data = None
    rel_rows: list[dict[str, Any]] = []
    for fname, (z, y, info) in loaded.items():
        name, description = TRUE_LOGIT_FILES[fname]
        real["files"].append(info | {"kind": "true logits"})
        splits = h.make_splits(y, n_splits, args.seed)
        logits = {p: (z if p == "fp32" else round_logits(z, p)) for p in precisions}
        block = run_calibration_block(name, description, logits, y, {p: p for p in precisions}, splits)
        real["true_logit_blocks"].append(block)
        low = {p: zz for p, zz in logits.items() if p != "fp32"}
        diags[description] = diagnostics(y, z, low, SOFTMAX_FORMATS)
        rel_prec = "fp8_e4m3" if "fp8_e4m3" in logits else next(p for p in precisions if p != "fp32")
        rel_rows.append(reliability_row(f"{name}, {rel_prec}", logits[rel_prec], y, rel_prec, splits[0]))
        if fig_data is None:
            fig_data = {
                "name": name, "y": y, "p_ref": _softmax(z.astype(np.float64), axis=1),
                "softmax": {fmt: softmax_in_format(torch.from_numpy(z), fmt) for fmt in ("bf16", "fp8_e4m3")},
                "swap_probs": {**{f"logits {p}": _softmax(zz.astype(np.float64), axis=1) for p, zz in low.items()},
                               "softmax in fp8_e4m3": softmax_in_format(torch.from_numpy(z), "fp8_e4m3")},
                "reliability": rel_rows,
            }
    for fname, (z, y, info) in shifted.items():
        name, description = SHIFTED_FILES[fname]
        real["files"].append(info | {"kind": "log-probabilities (shifted logits)"})
        splits = h.make_splits(y, n_splits, args.seed)
        block = run_calibration_block(name, description, {"fp32": z}, y, {"fp32": "fp32"}, splits, flag=SHIFTED_FLAG)
        real["shifted_blocks"].append(block)
    return real, fig_data, diags


def main(argv: list[str] | None, staged: h.StagedOutputs) -> int:
    args = parse_args(argv)
    paths = output_paths(args)
    h.set_threads(1)
    wall_start = time.perf_counter()
    demo_configs = DEMO_CONFIGS_QUICK if args.quick else DEMO_CONFIGS
    real_precisions = REAL_PRECISIONS_QUICK if args.quick else REAL_PRECISIONS
    print(f"PACS study: {args.splits} splits, seed {args.seed}{' (quick)' if args.quick else ''}", flush=True)

    # ---- A: demo
    t0 = time.perf_counter()
    data = digits_logits(random_state=args.seed)
    held_out = torch.cat([data.cal_inputs, data.test_inputs])
    y_demo = np.concatenate([data.cal_labels, data.test_labels]).astype(np.int64)
    demo_logits = sweep(data.model, held_out, demo_configs, calibration_data=data.train_inputs, progress=False)
    print(f"A. digits CNN trained and emulated in {time.perf_counter() - t0:.1f} s", flush=True)
    demo_splits = h.make_splits(y_demo, args.splits, args.seed)
    demo = run_calibration_block("digits CNN", "Digits CNN (precal demo), emulated precisions", demo_logits, y_demo,
                                 {c: config_precision(c) for c in demo_logits}, demo_splits)
    demo_low = {c: z for c, z in demo_logits.items() if c != "fp32"}
    diags = {"Digits CNN (held-out images)": diagnostics(y_demo, demo_logits["fp32"], demo_low, SOFTMAX_FORMATS)}

    p_ref_demo = _softmax(demo_logits["fp32"].astype(np.float64), axis=1)
    low_name = "w4a4" if "w4a4" in demo_logits else list(demo_low)[-1]
    z_low = demo_logits[low_name].astype(np.float64)
    demo_fig = {
        "y": y_demo, "p_ref": p_ref_demo, "low_name": low_name,
        "p_low": _softmax(z_low, axis=1),
        "swap_probs": {c: _softmax(z.astype(np.float64), axis=1) for c, z in demo_low.items()},
        "reliability": [reliability_row(f"Digits CNN, {low_name}", z_low, y_demo, config_precision(low_name),
                                        demo_splits[0])],
    }

    # ---- B: real logits
    print("B. real logits", flush=True)
    real, real_fig, real_diags = run_real(args, real_precisions, args.splits)
    diags.update(real_diags)

    # ---- C: figures
    figures = make_figures(paths["figures"], demo_fig, real_fig, staged)

    report = {
        "study": "PACS vs temperature scaling across precisions",
        "script": "benchmarks/study_pacs.py",
        "date": h.utc_now(),
        "quick": args.quick,
        "seed": args.seed,
        "n_splits": args.splits,
        "split_rule": "stratified 50/50: per class, rng.permutation of its indices, first floor(n_c/2) to "
                      "calibration; split s uses np.random.default_rng(seed + s)",
        "criterion": "clear win/loss when mean paired difference < -sd / > +sd of the per-split differences",
        "ece_bins": h.N_BINS,
        "threads": 1,
        "versions": h.versions(),
        "git_commit": h.git_commit(),
        "platform": platform.platform(),
        "demo_info": {"n_train": data.n_train, "n_held_out": int(len(y_demo)), "configs": list(demo_configs),
                      "pacs_precision": {c: config_precision(c) for c in demo_configs}},
        "demo": demo,
        "real": real,
        "diagnostics": diags,
        "figures": figures,
        "wall_time_s": 0.0,
    }
    report["wall_time_s"] = time.perf_counter() - wall_start
    report = h.json_ready(report)
    report["reading"] = reading(report)
    written = h.write_study(staged, paths, report, *render(report))

    print()
    print("\n".join(results_markdown(report)))
    print("\nReading:")
    for b in report["reading"]:
        print(f"- {b}")
    print(f"\nwall time {report['wall_time_s']:.1f} s")
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(h.run_study("study_pacs", main))

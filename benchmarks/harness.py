"""The study harness: what every study in ``benchmarks/`` does the same way.

A study states a claim, loads its data, fits calibrators on random calibration halves,
scores them on the test halves, compares them pairwise and writes a results file and a
page whose every number comes from the run. This module is the part that is the same in
all of them, so that a study script reads as its claim, its data and its verdict:

=====================================  ==========================================================
``make_splits(y, n_splits, seed)``     stratified 50/50 calibration/test splits, reproducible
``scores(y, prob, metrics)``           accuracy, top-label ECE / ACE (15 bins), NLL, Brier, ...
``mean_sd(values)``                    ``{"mean", "sd"}`` over splits (sample sd)
``paired(a, b)``                       paired per-split difference and its one-sd verdict
``wilcoxon_p(a, b)``                   two-sided Wilcoxon signed-rank p-value of ``a - b``
``METHODS`` / ``method_table(spec)``   calibrators named by string (``"ts"``, ``"pacs"``, ...),
                                       resolved in precal at run time; names whose class this
                                       precal lacks are listed, not fitted
``compare_calibrators(z, y, ...)``     every method fitted on every calibration half, scored on
                                       the test half; ``warning_text`` / ``merge_warnings`` /
                                       ``warning_notes`` count the fits' warnings
``json_ready`` / ``dump_json``         JSON with numbers rounded to 7 significant digits
``StagedOutputs`` / ``write_study`` /  outputs appear only when the run is complete; missing data
``run_study``                          prints one line and exits with :data:`SKIP_EXIT_CODE`
``add_study_arguments`` /              the flags every study takes (``--quick --out --splits
``finish_study_arguments``             --seed --threads``) and where its outputs go
``output_paths``
``versions`` / ``git_commit`` /        provenance: library versions, commit, time, CPU seconds
``utc_now`` / ``cpu_seconds``
``set_threads`` / ``parallel_map``     thread limits and single-threaded worker processes
``fmt_ms`` / ``figure_markdown`` /     the small pieces of markdown every page has
``save_figure`` / ``claim_pages``
``generated_marks`` /                  a page whose hand-written text surrounds a generated region
``replace_region`` / ``region_page``   (between BEGIN/END GENERATED markers)
=====================================  ==========================================================

The verdict rule used throughout (:func:`paired`): a per-split difference ``a - b`` is
*clearly* lower (higher) when its mean is below ``-sd`` (above ``+sd``) of the differences
-- with ``n`` splits, a paired t-statistic beyond ``sqrt(n)``. The splits reuse one pool of
data, so they are not independent replications and no p-value is exact; the Wilcoxon
p-value (:func:`wilcoxon_p`) is reported where a study wants one, as a description.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPO_ROOT",
    "N_BINS",
    "SKIP_EXIT_CODE",
    "DataError",
    "set_threads",
    "parallel_map",
    "make_splits",
    "mean_sd",
    "paired",
    "wilcoxon_p",
    "softmax64",
    "METRICS",
    "scores",
    "METHODS",
    "Method",
    "method",
    "method_table",
    "compare_calibrators",
    "warning_text",
    "merge_warnings",
    "warning_notes",
    "json_ready",
    "dump_json",
    "StagedOutputs",
    "write_study",
    "output_paths",
    "add_study_arguments",
    "finish_study_arguments",
    "run_study",
    "versions",
    "git_commit",
    "utc_now",
    "cpu_seconds",
    "fmt_ms",
    "save_figure",
    "figure_markdown",
    "claim_pages",
    "generated_marks",
    "replace_region",
    "region_page",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ECE/ACE bins used throughout (top label, equal width; precal's metrics default).
N_BINS = 15
#: Exit status of a study that skipped because its data is missing or unreadable: it printed
#: one line naming the file and the README to read, and wrote nothing.
SKIP_EXIT_CODE = 3


class DataError(Exception):
    """A data file a study needs is missing, unreadable or not what its README says.

    ``str(error)`` is one line naming the file and the README to read.
    """


# --------------------------------------------------------------------------- threads
def set_threads(n: int) -> None:
    """Cap torch's intra-op threads, and BLAS/OpenMP through threadpoolctl when present."""
    import torch

    torch.set_num_threads(n)
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - optional
        return
    threadpoolctl.threadpool_limits(limits=n)


def parallel_map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """``[fn(item) for item in items]``, over ``workers`` processes when ``workers > 1``.

    Meant for calibrator fits, which are many small single-threaded optimisations: each
    worker is a fresh ("spawn") process with one thread (:func:`set_threads`), so ``fn``
    must be a module-level function and the items picklable. Results keep the order of
    ``items``.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=set_threads, initargs=(1,)) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- splits and statistics
def make_splits(y: Any, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` stratified 50/50 calibration/test splits of the rows of ``y``.

    Split ``s`` draws ``np.random.default_rng(seed + s)``; per class (in sorted order), a
    ``permutation`` of its rows, of which the first ``floor(n_c / 2)`` go to calibration and
    the rest to test. Both index arrays are sorted. The same ``(y, seed)`` always gives the
    same splits, so every precision and method of a study sees the same halves and their
    differences are paired.
    """
    y = np.asarray(y)
    splits = []
    for s in range(n_splits):
        rng = np.random.default_rng(seed + s)
        cal = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[: int(np.sum(y == c)) // 2]
                                      for c in np.unique(y)]))
        mask = np.zeros(len(y), dtype=bool)
        mask[cal] = True
        splits.append((cal, np.flatnonzero(~mask)))
    return splits


def mean_sd(values: Any) -> dict[str, float]:
    """``{"mean", "sd"}`` of ``values``: the sample standard deviation (ddof=1), 0 for one value."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def paired(a: Any, b: Any, *, atol: float = 0.0, min_effect: float = 0.0) -> dict[str, Any]:
    """Paired per-split difference ``d = a - b`` and its verdict by the one-sd rule.

    Returns ``{"mean", "sd", "n_lower", "n", "verdict"}``: the mean and sample sd of ``d``,
    the number of splits where ``a < b``, the number of splits, and ``"lower"`` /
    ``"higher"`` when ``mean(d) < -sd(d)`` / ``mean(d) > sd(d)`` (a paired t-statistic
    beyond ``sqrt(n)``) and ``|mean(d)| > min_effect``, ``"identical"`` when every
    ``|d| <= atol`` (with the default 0: the two agree on every split), else ``"within
    noise"``. ``min_effect`` keeps a consistent but negligible difference (a hair's
    difference between two nearly equal fits, with an even smaller sd) from counting as clear.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"paired needs two equally long 1-D sequences of per-split values, got shape {d.shape}.")
    ms = mean_sd(d)
    if np.all(np.abs(d) <= atol):
        verdict = "identical"
    elif abs(ms["mean"]) <= min_effect:
        verdict = "within noise"
    elif ms["mean"] < -ms["sd"]:
        verdict = "lower"
    elif ms["mean"] > ms["sd"]:
        verdict = "higher"
    else:
        verdict = "within noise"
    return ms | {"n_lower": int(np.sum(d < 0)), "n": int(d.size), "verdict": verdict}


def wilcoxon_p(a: Any, b: Any) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of ``a - b`` (``scipy.stats.wilcoxon``, its
    defaults: zero differences dropped, exact distribution for small samples without ties);
    None when every difference is zero (the test is undefined)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not np.any(d != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample and tie notes
        return float(wilcoxon(d).pvalue)


# --------------------------------------------------------------------------- scores
def softmax64(z: Any) -> np.ndarray:
    """Softmax of logits in float64: the reference probabilities of every study."""
    from scipy.special import softmax

    return softmax(np.asarray(z, dtype=np.float64), axis=1)


def _accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    return float(np.mean(prob.argmax(axis=1) == y))


def _metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    from precal import metrics as m

    return {
        "ece": lambda y, p: m.expected_calibration_error(y, p, n_bins=N_BINS),
        "ace": lambda y, p: m.adaptive_calibration_error(y, p, n_bins=N_BINS),
        "cwece": lambda y, p: m.classwise_calibration_error(y, p, n_bins=N_BINS),
        "nll": m.negative_log_likelihood,
        "brier": m.brier_score,
    }[name]


#: Score names :func:`scores` knows: the top-label metrics use :data:`N_BINS` equal-width bins.
METRICS = {
    "accuracy": "share of rows whose argmax is the label",
    "ece": f"top-label expected calibration error, {N_BINS} equal-width bins (L1)",
    "ace": f"adaptive (equal-mass) top-label calibration error, {N_BINS} bins",
    "cwece": f"class-wise calibration error, {N_BINS} bins",
    "nll": "mean negative log-likelihood (nats)",
    "brier": "multiclass Brier score (sum over classes, mean over rows)",
}


def scores(y: Any, prob: Any, metrics: tuple[str, ...] = ("accuracy", "ece", "ace", "nll")) -> dict[str, float]:
    """``{metric: value}`` of probabilities ``prob`` against labels ``y``, in the order of ``metrics``.

    Names are those of :data:`METRICS`; the default is the seed studies' set.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; known: {list(METRICS)}.")
    y, prob = np.asarray(y), np.asarray(prob)
    return {m: _accuracy(y, prob) if m == "accuracy" else _metric(m)(y, prob) for m in metrics}


# --------------------------------------------------------------------------- methods by name
#: Calibrators by the name a study gives them: ``name -> (class name in precal, fixed parameters)``.
#: A class that this precal does not have is not an error: :func:`method_table` lists it as
#: unavailable, so adding a calibrator another branch is writing is one line here.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "ts": ("TemperatureScaling", {}),
    "pacs": ("PACSCalibrator", {}),
    "pacs-norm": ("PACSCalibrator", {"risk": "norm"}),
    "pacs-peaked": ("PACSCalibrator", {"risk": "peaked"}),
    "dirichlet": ("DirichletCalibrator", {}),
    "fuzzy": ("FuzzyDirichletCalibrator", {}),
    "ets": ("EnsembleTemperatureScaling", {}),
    "top-label-isotonic": ("TopLabelCalibrator", {"method": "isotonic"}),
    "top-label-histogram": ("TopLabelCalibrator", {"method": "histogram"}),
    "top-label-spline": ("TopLabelCalibrator", {"method": "spline"}),
    "sms": ("StructuredMatrixScaling", {}),
    "auto": ("AutoCalibrator", {}),
}
#: Study-wide settings a method takes when its class has a parameter of that name
#: (``precision`` for PACS, ``random_state`` for the fuzzy calibrator, ...).
CONTEXT = ("precision", "random_state")


def _precal_class(class_name: str) -> type | None:
    import precal

    return getattr(precal, class_name, None) or getattr(precal.calibration, class_name, None)


@dataclass(frozen=True)
class Method:
    """A named calibrator with its parameters: call it for a fresh, unfitted estimator.

    Picklable (it holds names, not the class), so a method table can be sent to worker
    processes.
    """

    name: str
    class_name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def available(self) -> bool:
        """Whether this precal has the class."""
        return _precal_class(self.class_name) is not None

    def __call__(self) -> Any:
        cls = _precal_class(self.class_name)
        if cls is None:
            raise RuntimeError(f"Method {self.name!r} needs precal.{self.class_name}, which this precal does not have.")
        return cls(**dict(self.params))

    def describe(self) -> str:
        """``ClassName(param=value, ...)``."""
        return f"{self.class_name}(" + ", ".join(f"{k}={v!r}" for k, v in self.params) + ")"


def method(name: str, params: Mapping[str, Any] | None = None, **context: Any) -> Method:
    """The :class:`Method` called ``name`` in :data:`METHODS`.

    ``params`` are given to the class as they are (they override the registry's);
    ``context`` (``precision=``, ``random_state=``) only where the class has a parameter of
    that name and ``params`` does not set it. A class this precal lacks gets every context
    value it could not check.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; known: {sorted(METHODS)}.")
    class_name, fixed = METHODS[name]
    unknown = sorted(set(context) - set(CONTEXT))
    if unknown:
        raise ValueError(f"Unknown context {unknown}; a method takes {list(CONTEXT)} from the study.")
    merged = {**fixed, **(params or {})}
    cls = _precal_class(class_name)
    accepted = set(cls._get_param_names()) if cls is not None else set(CONTEXT)
    for key, value in context.items():
        if key in accepted and key not in merged:
            merged[key] = value
    return Method(name, class_name, tuple(merged.items()))


def method_table(spec: Mapping[str, Any], **context: Any) -> tuple[dict[str, Method | None], list[str]]:
    """The methods of a study, by label, and the ones this precal cannot run.

    ``spec`` maps the label a study prints (``"TS"``, ``"PACS-norm"``) to a registry name
    (``"ts"``), to ``(name, params)``, or to None for the uncalibrated softmax. Returns
    ``(methods, unavailable)``: ``methods`` keeps the labels whose class exists (None stays
    None), in the order of ``spec``; ``unavailable`` is one sentence per label left out,
    for the page.
    """
    table: dict[str, Method | None] = {}
    missing = []
    for label, entry in spec.items():
        if entry is None:
            table[label] = None
            continue
        name, params = (entry, None) if isinstance(entry, str) else entry
        m = method(name, params, **context)
        if m.available:
            table[label] = m
        else:
            missing.append(f"{label} (`{name}`: precal.{m.class_name} is not in this precal) was not measured.")
    return table, missing


# --------------------------------------------------------------------------- fitting and scoring
def _plain(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def compare_calibrators(z: Any, y: Any, splits: list[tuple[np.ndarray, np.ndarray]],
                        methods: Mapping[str, Callable[[], Any] | None], *,
                        metrics: tuple[str, ...] = ("accuracy", "ece", "ace", "nll"),
                        attributes: tuple[str, ...] = ("temperature_", "lambda_")) -> dict[str, Any]:
    """Fit each calibrator on every calibration half and score it on the test half.

    ``methods`` maps a label to a zero-argument factory of an unfitted calibrator (a
    :class:`Method` or a class) or to None for the uncalibrated softmax. Returns
    ``per_split[method][metric]`` (lists, in split order), ``summary[method][metric]``
    (:func:`mean_sd`), ``fitted[method]`` (per split, the fitted ``attributes`` the
    estimator has and its number of warnings), ``warnings`` (``{text: number of fits that
    raised it}``) and ``n_fits`` per method; collect those two over settings with
    :func:`merge_warnings`.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    per_split: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    fitted: dict[str, list[dict[str, Any]]] = {m: [] for m in methods if methods[m] is not None}
    caught_all: dict[str, int] = {}
    for cal, test in splits:
        for name, factory in methods.items():
            if factory is None:
                prob = softmax64(z[test])
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    est = factory().fit(z[cal], y[cal])
                for text in {warning_text(name, w) for w in caught}:
                    caught_all[text] = caught_all.get(text, 0) + 1
                fitted[name].append({a: _plain(getattr(est, a)) for a in attributes if hasattr(est, a)}
                                    | {"n_warnings": len(caught)})
                prob = est.predict_proba(z[test])
            for k, v in scores(y[test], prob, metrics).items():
                per_split[name].setdefault(k, []).append(v)
    summary = {m: {k: mean_sd(v) for k, v in d.items()} for m, d in per_split.items()}
    return {"n_calibration": int(len(splits[0][0])), "n_test": int(len(splits[0][1])), "per_split": per_split,
            "summary": summary, "fitted": fitted, "warnings": caught_all,
            "n_fits": {m: len(v) for m, v in fitted.items()}}


def warning_text(method: str, w: Any) -> str:
    """``method: Category: first sentence`` of a warning, without its run-specific numbers in brackets."""
    first = re.sub(r"\s*\(.*", "", str(w.message).splitlines()[0]).rstrip(" .;")
    return f"{method}: {w.category.__name__}: {first}"


def merge_warnings(total: dict[str, Any], result: dict[str, Any]) -> None:
    """Add a :func:`compare_calibrators` result's warning and fit counts to ``total``
    (``{"warnings": {text: fits}, "n_fits": {method: fits}}``); removes them from ``result``."""
    for text, count in result.pop("warnings").items():
        total.setdefault("warnings", {})[text] = total.setdefault("warnings", {}).get(text, 0) + count
    for name, count in result.pop("n_fits").items():
        total.setdefault("n_fits", {})[name] = total.setdefault("n_fits", {}).get(name, 0) + count


def warning_notes(total: dict[str, Any]) -> list[str]:
    """One line per distinct fit warning: its text and on how many fits of that method it came."""
    return [f"Fit warning on {count} of {total['n_fits'][text.split(':')[0]]} fits: {text}."
            for text, count in sorted(total.get("warnings", {}).items())]


# --------------------------------------------------------------------------- results files
def json_ready(obj: Any) -> Any:
    """Arrays to lists, numpy scalars to Python, floats to 7 significant digits, inf/NaN to None."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return json_ready(obj.item())
    if isinstance(obj, float):
        return float(f"{obj:.7g}") if math.isfinite(obj) else None
    return obj


def dump_json(report: dict[str, Any]) -> str:
    """Indented JSON of :func:`json_ready` ``(report)``, lists of plain values kept on one line."""
    text = json.dumps(json_ready(report), indent=1, allow_nan=False, ensure_ascii=False)
    return re.sub(r"\[\s+((?:-?[0-9][0-9.eE+-]*|null|true|false)(?:,\s+(?:-?[0-9][0-9.eE+-]*|null|true|false))*)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


class StagedOutputs:
    """Write outputs under hidden temporary names and rename them all at the end.

    ``path(final)`` gives the temporary path to write; :meth:`commit` renames every staged
    file onto its final path (figures first, then markdown, JSON last); :meth:`discard`
    removes them. A run that fails or skips therefore never leaves a file that looks
    complete.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, final: Path) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.partial")
        self._staged.append((tmp, final))
        return tmp

    def write_text(self, final: Path, text: str) -> None:
        self.path(final).write_text(text, encoding="utf-8")

    def commit(self) -> list[Path]:
        order = sorted(self._staged, key=lambda tf: (tf[1].suffix == ".json", tf[1].suffix == ".md"))
        for tmp, final in order:
            os.replace(tmp, final)
        self._staged = []
        return [final for _, final in order]

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []


def write_study(staged: StagedOutputs, paths: dict[str, Path], report: dict[str, Any], results_md: str,
                doc_md: str) -> list[Path]:
    """Stage the results JSON (:func:`dump_json`), the results markdown and the docs page at
    ``paths["json"]``, ``paths["md"]``, ``paths["doc"]``, then commit every staged output."""
    staged.write_text(paths["json"], dump_json(report))
    staged.write_text(paths["md"], results_md)
    staged.write_text(paths["doc"], doc_md)
    return staged.commit()


def committed_outputs(stem: str, page: str, **extra: Path) -> dict[str, Path]:
    """A study's committed places: ``benchmarks/results/<stem>.{json,md}``, the docs page
    ``docs/<page>``, the figures folder ``docs/figures`` and any ``extra`` files."""
    results = REPO_ROOT / "benchmarks" / "results"
    return {"json": results / f"{stem}.json", "md": results / f"{stem}.md", "doc": REPO_ROOT / "docs" / page,
            **extra, "figures": REPO_ROOT / "docs" / "figures"}


def output_paths(args: Any, committed: dict[str, Path], *, prefix: str) -> dict[str, Path]:
    """Where a study writes: its ``committed`` places, ``--out DIR``, or a temp dir for ``--quick``.

    ``committed`` maps output kinds (``"json"``, ``"md"``, ``"doc"``, ...) to files and
    ``"figures"`` to a folder. With ``--out DIR`` each file keeps its name under DIR and
    figures go to ``DIR/figures``; ``--quick`` without ``--out`` writes to a new temporary
    folder named ``prefix...``, and never to a committed folder.
    """
    if args.out is None and not args.quick:
        return dict(committed)
    if args.out is not None:
        out = Path(args.out).resolve()
        folders = {Path(p).parent.resolve() for p in committed.values()} | {Path(committed["figures"]).resolve()}
        if args.quick and out in folders:
            raise SystemExit("--quick never writes to the committed output folders; choose another --out.")
    else:
        out = Path(tempfile.mkdtemp(prefix=prefix))
    return {k: out / "figures" if k == "figures" else out / Path(p).name for k, p in committed.items()}


def add_study_arguments(parser: Any, *, default_splits: int = 20, quick_splits: int = 3, threads: bool = True) -> None:
    """The flags every study takes: ``--quick --out --splits --seed`` (and ``--threads``)."""
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: few rows, settings and splits; writes to a temp dir (or --out), "
                             "never to the committed outputs")
    parser.add_argument("--out", type=Path, default=None,
                        help="write everything under DIR (results .json/.md, the docs page, figures/)")
    parser.add_argument("--splits", type=int, default=None,
                        help=f"calibration/test splits (default {default_splits}; {quick_splits} with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="split seed: split s uses default_rng(seed + s)")
    if threads:
        parser.add_argument("--threads", type=int, default=None,
                            help="torch threads of the forward passes and worker processes (of one thread) of the "
                                 "fits (default 2, the project machine's cores; 1 with --quick, which the test suite "
                                 "runs beside other tests)")
    parser.set_defaults(_default_splits=default_splits, _quick_splits=quick_splits)


def finish_study_arguments(parser: Any, args: Any) -> Any:
    """Fill the defaults that depend on ``--quick`` and refuse impossible values."""
    if args.splits is None:
        args.splits = args._quick_splits if args.quick else args._default_splits
    if args.splits < 2:
        parser.error("--splits must be at least 2 (a standard deviation needs two splits)")
    if hasattr(args, "threads"):
        if args.threads is None:
            args.threads = 1 if args.quick else 2
        if args.threads < 1:
            parser.error("--threads must be at least 1")
    return args


def run_study(name: str, main: Callable[[list[str] | None, StagedOutputs], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv, staged)``; on :class:`DataError` print one line, discard the staged
    outputs and return :data:`SKIP_EXIT_CODE`. Deprecation and future warnings of the
    libraries are silenced (they are not the study's)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    staged = StagedOutputs()
    try:
        code = main(argv, staged)
    except DataError as exc:
        staged.discard()
        print(f"{name}: skipped: {exc}", file=sys.stderr, flush=True)
        return SKIP_EXIT_CODE
    except BaseException:
        staged.discard()
        raise
    return code


# --------------------------------------------------------------------------- provenance
def versions() -> dict[str, str]:
    """Versions of Python and the libraries a study's numbers depend on."""
    import platform

    import matplotlib
    import scipy
    import sklearn
    import torch

    import precal

    return {"python": platform.python_version(), "precal": precal.__version__, "numpy": np.__version__,
            "torch": torch.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
            "matplotlib": matplotlib.__version__}


def git_commit() -> str | None:
    """The repository's HEAD commit (with a note when tracked files have changes), or None."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished worker processes."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- pages
def fmt_ms(stat: Mapping[str, float] | None, scale: float = 1.0, nd: int = 2) -> str:
    """``"mean ± sd"`` of a :func:`mean_sd` result times ``scale`` (``"–"`` for None)."""
    return "–" if stat is None else f"{stat['mean'] * scale:.{nd}f} ± {stat['sd'] * scale:.{nd}f}"


def save_figure(fig: Any, staged: StagedOutputs, paths: dict[str, Path], name: str, *, dpi: int = 100) -> str:
    """Stage ``fig`` as ``figures/NAME`` and return its path relative to the docs page."""
    final = paths["figures"] / name
    fig.savefig(staged.path(final), dpi=dpi, format="png")
    return os.path.relpath(final, paths["doc"].parent)


def figure_markdown(figures: list[dict[str, str]]) -> list[str]:
    """Markdown of ``[{"path", "caption"}]``: each image with its caption in italics."""
    lines = []
    for f in figures:
        lines += [f"![{f['caption']}]({f['path']})", "", f"*{f['caption']}*", ""]
    return lines


def claim_pages(report: dict[str, Any], *, title: str, results_title: str, rerun: str, json_name: str,
                doc_name: str, source: str, claim: str, run_note: str, notes: list[str], method: list[str],
                tables: list[str], reading: list[str] | None = None, doc_tables: list[str] | None = None,
                needs: list[str] | None = None, source_label: str = "Seed",
                full_run: str = "full run (uses the logits cache)") -> tuple[str, str]:
    """The results file and the docs page of a study that tests a claim.

    Results file: ``results_title``, when and how long, ``notes``, ``tables``, the verdict
    and its details. Page: ``title``, provenance (``run_note`` follows the wall time),
    ``**{source_label}:** source``, claim, verdict, ``notes``, ``## Method`` (``method``
    bullets), ``## Reading`` (the verdict's details, then ``reading``), ``## Results``
    (``doc_tables``, default ``tables``), ``## Figures``, ``## Reproduce`` (the full and the
    ``--quick`` command, then ``needs``: lines before the versions). ``json_name`` and
    ``doc_name`` are relative to ``benchmarks/results/`` and ``docs/``.
    ``report`` holds ``date``, ``wall_time_s``, ``quick``, ``versions``, ``figures`` and
    ``verdict`` (``word``, ``reason``, ``details``); every number on the pages comes from it.
    """
    v = report["verdict"]
    quick = " (quick smoke test)" if report["quick"] else ""
    results = [f"# {results_title}{quick}", "",
               f"Generated by `{rerun}` on {report['date']} (wall time {report['wall_time_s']:.0f} s); see "
               f"`docs/{doc_name}`. Do not edit by hand.", ""] + notes + tables
    results += ["", f"**Verdict: {v['word']}.** {v['reason']}", ""] + [f"- {x}" for x in v["details"]]
    doc = [f"# {title}{quick}", "",
           f"*Generated by `{rerun}` from its results (`benchmarks/results/{json_name}`); no number on this "
           f"page is typed by hand. Run {report['date']}, wall time {report['wall_time_s']:.0f} s{run_note}.*", "",
           f"**{source_label}:** {source}.", "", f"**Claim:** {claim}", "",
           f"**Verdict: {v['word']}.** {v['reason']}", ""] + notes
    doc += ["## Method", ""] + method + ["", "## Reading (computed)", ""]
    doc += [f"- {x}" for x in v["details"]] + [f"- {x}" for x in reading or []]
    doc += ["", "## Results"] + (tables if doc_tables is None else doc_tables)
    doc += ["", "## Figures", ""] + figure_markdown(report["figures"])
    doc += ["## Reproduce", "", "```bash", f"{rerun}            # {full_run}",
            f"{rerun} --quick    # smoke test into a temp dir", "```", ""] + (needs or [])
    doc += ["Versions: " + ", ".join(f"{k} {val}" for k, val in report["versions"].items()) + "."]
    return "\n".join(results) + "\n", "\n".join(doc) + "\n"


# --------------------------------------------------------------------------- pages with hand-written text
def generated_marks(script: str) -> tuple[str, str]:
    """The BEGIN and END lines around the generated region of a page that ``script`` writes."""
    return f"<!-- BEGIN GENERATED by {script}: do not edit by hand -->", "<!-- END GENERATED -->"


def replace_region(text: str, generated: str, marks: tuple[str, str]) -> str:
    """``text`` with everything between the two ``marks`` lines replaced by ``generated``.

    The hand-written text before and after the region is kept byte for byte, so a study can
    rewrite its numbers without touching the reading written around them. Raises
    ``ValueError`` unless the page has each mark exactly once, BEGIN first.
    """
    begin, end = marks
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"the page must contain the line {begin!r} once, followed by {end!r} once")
    head, rest = text.split(begin)
    tail = rest.split(end)[1]
    return f"{head}{begin}\n{generated.strip()}\n{end}{tail}"


def region_page(doc: Path, generated: str, marks: tuple[str, str], *, title: str) -> str:
    """The text of page ``doc`` with its generated region set to ``generated``.

    An existing page keeps its hand-written text (:func:`replace_region`); where there is no
    page yet (``--out`` into a new folder) the result is ``title``, a line saying that the
    reading is in the committed page, and the region.
    """
    if Path(doc).is_file():
        return replace_region(Path(doc).read_text(encoding="utf-8"), generated, marks)
    return (f"# {title}\n\nGenerated tables only; the method and the reading are in the committed page "
            f"`docs/{Path(doc).name}`.\n\n{marks[0]}\n{generated.strip()}\n{marks[1]}\n")

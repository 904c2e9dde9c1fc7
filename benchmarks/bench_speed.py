"""Speed benchmark: precal against scikit-learn, netcal and torchmetrics, on a quiet and a busy machine.

What is measured, in one run, on synthetic float32 logits from a seeded numpy generator,
first on the machine as it is ("quiet") and then again while ``--busy-workers`` background
processes spin on the CPU ("busy"; started and ended by this script, see
``benchmarks/_common.py``):

1. **Temperature-scaling fit** at 50 000 x 1 000, 50 000 x 100 and 10 000 x 10
   (samples x classes).

   * precal: ``precal.TemperatureScaling().fit(logits, y)`` on the float32 logits.
   * scikit-learn: ``CalibratedClassifierCV(FrozenEstimator(passthrough),
     method="temperature").fit(logits, y)``, where ``passthrough`` is a fitted classifier
     whose ``decision_function`` returns its input. scikit-learn computes in the dtype it
     is given, so it is timed twice: on the same float32 logits as precal, and on a
     float64 copy (made outside the timed region).
   * netcal: ``netcal.scaling.TemperatureScaling()`` (default ``method="mle"``) fitted on
     float64 *probabilities* (softmax of the logits, made outside the timed region); the
     time includes netcal's own conversion of probabilities back to log-probabilities. It
     runs in a child process so that a fit slower than ``--netcal-timeout`` seconds is
     recorded as a timeout instead of hanging the benchmark.

   Reported: median wall time (``time.perf_counter``) over R repeats after one warm-up
   call, the fitted temperature, precal's speed-up over each peer and the relative
   difference of each peer's temperature from precal's.

2. **Expected calibration error** (15 equal-width bins, top label, L1) on float32
   probabilities (softmax of the logits), n = 50 000 and 1 000 000, K = 10 and 100.

   * precal: ``precal.metrics.expected_calibration_error(y, prob, n_bins=15)`` given the
     float32 numpy array and int64 labels (its input validation is part of the time).
   * netcal: ``netcal.metrics.ECE(bins=15).measure(prob, y)`` given the same arrays.
   * torchmetrics: ``multiclass_calibration_error(prob_t, y_t, num_classes=K, n_bins=15,
     norm="l1")`` given float32/int64 CPU tensors that share memory with the numpy arrays
     (created outside the timed region).
   * numpy reference: ``max``/``argmax`` over classes, ``searchsorted`` into the bin
     edges and three ``bincount`` sums in float64 (no input validation): the floor that
     a plain numpy implementation sets.

   The libraries are timed round-robin (one call of each per round, 31 rounds at n = 50 000
   x 10), so that each sees the same contention on a busy machine. Reported: median time,
   the values and their largest absolute difference from precal's.

3. **precal's calibrators**: the fit time of ``TemperatureScaling()``,
   ``DirichletCalibrator(map="diagonal")`` (default ``reg_lambda="cv"``, internal
   cross-validation included) and ``DirichletCalibrator(map="diagonal", reg_lambda=0.01)`` at
   50 000 x 1 000, and of every calibrator with its defaults at 10 000 x 10; reported with
   the ratio to ``TemperatureScaling``'s time in the same run, timed round-robin (target: the
   diagonal Dirichlet map within 10x TS at 50 000 x 1 000).

4. **Crossover** (``--crossover``, part of every full run): one pass of precal's
   temperature-scaling derivatives over kept blocks at sizes 2**15 ... 2**22 elements,
   on one and on two threads, quiet and busy; and the time of a pass on one thread for
   block sizes 2**16 ... 2**22. These set ``precal._threads.MIN_PARALLEL_ELEMENTS`` (the
   smallest work that is split among threads) and the block size of the fits.

Threads: by default (``--threads 0``) every library runs with its own default thread
settings, as a user gets it: precal with its thread policy (the CPUs the process may use,
see ``docs/performance.md``), torch-based peers with torch's default pool, scikit-learn
with its defaults. ``--threads N`` caps every library at N threads (torch's intra-op
pool, OpenMP and BLAS pools via threadpoolctl, and the same environment variables for
the netcal child); ``--threads 1`` compares core for core.

The busy machine: ``--busy-workers`` processes (default: twice the CPUs this process may
use, so the run queue holds about three runnable threads per CPU, a load like a shared CI
runner's) each spin in a pure-Python integer loop (``--busy-kind python``) or on
single-threaded 128 x 128 numpy matrix products (``--busy-kind numpy``). The script starts
them before the busy phase, waits until each one runs, and ends them afterwards; each
also stops by itself at a hard deadline and when this script's process is gone.

The data: labels ``y`` uniform over K classes, ``logits = scale * (margin * onehot(y) +
N(0, 1))`` with ``margin = 3`` and ``scale = 5``. For this model the Bayes posterior is
``softmax(margin * x)``, so the logits are over-confident by ``T = scale / margin ~ 1.67``
and every library should find a temperature near that value.

Results go to ``benchmarks/results/speed.{md,json}`` and the docs page
``docs/benchmarks-speed.md`` (written from the results, never by hand). ``--quick`` runs
small sizes once, with two busy workers, and writes to a temporary directory; ``--out
DIR`` writes everything (docs page included) under DIR instead of the committed
locations; ``--render-only`` rewrites the markdown outputs from an existing
``speed.json`` without benchmarking (a results file from before the busy mode renders as
a quiet-only run). A peer library that is not installed is reported as such and skipped.

Run from the repository root::

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_speed.py            # full run (about 15-25 min), refreshes the committed results
    python benchmarks/bench_speed.py --quick    # smoke test, writes to a temp dir
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BUSY_KINDS, busy_machine, cpu_model, limit_threads, load_average, markdown_table, text_table  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_PAGE = REPO_ROOT / "docs" / "benchmarks-speed.md"
RERUN_COMMAND = "python benchmarks/bench_speed.py"
INSTALL_HINT = "pip install -r benchmarks/requirements.txt"

MARGIN = 3.0
SCALE = 5.0
N_BINS = 15
MODES = ("quiet", "busy")
SECTIONS = ("ts", "ece", "calibrators", "crossover")

#: Targets checked by this benchmark (issue 16): TS fit speed-up over scikit-learn per mode.
TS_TARGET_SPEEDUP = {"quiet": 10.0, "busy": 5.0}
TS_TARGET_REL_DIFF = 1e-4
TS_TARGET_SHAPE = (50_000, 1_000)
#: Small problems are instant: the fit at this size takes a few milliseconds, >= 10x scikit-learn.
SMALL_TARGET_SHAPE = (10_000, 10)
SMALL_TARGET_SPEEDUP = 10.0


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Case:
    """One problem size and the number of timed repeats (after one warm-up call)."""

    n: int
    k: int
    repeats: int

    @property
    def label(self) -> str:
        return f"{self.n:,} x {self.k:,}".replace(",", " ")


@dataclass(frozen=True)
class Config:
    ts_cases: tuple[Case, ...]
    ece_cases: tuple[Case, ...]
    calibrator_cases: tuple[tuple[Case, tuple[str, ...]], ...]
    seed: int
    netcal_timeout_s: float
    threads: int
    quick: bool
    modes: tuple[str, ...]
    busy_workers: int
    busy_kind: str
    crossover: bool


FULL_TS = (Case(50_000, 1_000, 3), Case(50_000, 100, 5), Case(10_000, 10, 20))
#: Milliseconds-long calls get many repeats: on a busy machine one call's time is mostly how
#: the scheduler treated it, and only a median over many rounds compares libraries.
FULL_ECE = (Case(50_000, 10, 31), Case(50_000, 100, 15), Case(1_000_000, 10, 5), Case(1_000_000, 100, 3))
QUICK_TS = (Case(10_000, 10, 3), Case(5_000, 100, 1))
QUICK_ECE = (Case(5_000, 10, 1), Case(20_000, 100, 1))

#: precal's calibrators, by constructor expression (evaluated in ``precal.calibration``).
SMALL_CALIBRATORS = (
    "TemperatureScaling()", "EnsembleTemperatureScaling()", "TopLabelCalibrator()", "PACSCalibrator()",
    "DirichletCalibrator(map='diagonal')", "DirichletCalibrator()", "FuzzyDirichletCalibrator()", "AutoCalibrator()",
)
LARGE_CALIBRATORS = (
    "TemperatureScaling()", "DirichletCalibrator(map='diagonal')",
    "DirichletCalibrator(map='diagonal', reg_lambda=0.01)",
)
#: issue 14's size for FuzzyDirichletCalibrator, with the two fits it is measured against
FUZZY_CALIBRATORS = ("TemperatureScaling()", "DirichletCalibrator()", "FuzzyDirichletCalibrator()")
FULL_CALIBRATORS = ((Case(50_000, 1_000, 3), LARGE_CALIBRATORS), (Case(10_000, 10, 1), SMALL_CALIBRATORS),
                    (Case(5_000, 100, 3), FUZZY_CALIBRATORS))
QUICK_CALIBRATORS = ((Case(5_000, 100, 1), LARGE_CALIBRATORS), (Case(2_000, 10, 1), SMALL_CALIBRATORS[:5]))
#: Dirichlet with a diagonal map at 50 000 x 1 000 within this many times TS's fit time (issue 16).
DIRICHLET_TARGET_RATIO = 10.0
#: FuzzyDirichletCalibrator at 5 000 x 100 within this many times TS's fit time (issue 14, item 2).
FUZZY_TARGET_SHAPE, FUZZY_TARGET_RATIO = (5_000, 100), 20.0

#: Hard bound on a busy worker's life (seconds from the start of the busy phase).
BUSY_MAX_SECONDS = {"quick": 600.0, "full": 3 * 3600.0}


def default_busy_workers() -> int:
    """Twice the CPUs this process may use (affinity and cgroup quota), at least 2."""
    try:
        from precal._threads import available_cpus

        return max(2, 2 * available_cpus())
    except ImportError:  # pragma: no cover - an older precal
        return max(2, 2 * (os.cpu_count() or 1))


# --------------------------------------------------------------------------- data
def make_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident float32 logits ``scale * (margin * onehot(y) + noise)`` and int64 labels."""
    rng = np.random.default_rng([seed, n, k])
    y = rng.integers(0, k, size=n, dtype=np.int64)
    logits = rng.standard_normal((n, k), dtype=np.float32)
    logits[np.arange(n), y] += np.float32(MARGIN)
    logits *= np.float32(SCALE)
    return logits, y


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall times of the timed repeats and the value returned by the last call."""

    times_s: list[float]
    value: float
    status: str = "ok"
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else math.nan

    def to_json(self, value_name: str = "value") -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "median_s": _finite_or_none(self.median_s)}
        out["min_s"] = min(self.times_s) if self.times_s else None
        out["times_s"] = self.times_s
        out[value_name] = _finite_or_none(self.value)
        if self.note:
            out["note"] = self.note
        return out


def time_call(fn: Callable[[], float], repeats: int) -> Timing:
    """One untimed warm-up call, then ``repeats`` timed calls; returns all times and the last value."""
    return time_interleaved({"call": fn}, repeats)["call"]


def time_interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, Timing]:
    """One untimed warm-up call of each function, then ``repeats`` rounds that time each once, in turn.

    On a busy machine the contention changes over a run (the background workers ramp up, the
    scheduler's share moves); timing the libraries round-robin gives each the same conditions,
    where timing one library's repeats after another's would hand one of them a quieter minute.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    values = {name: math.nan for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(times_s=times[name], value=float(values[name])) for name in fns}


def missing(module: str) -> Timing:
    return Timing(times_s=[], value=math.nan, status="missing", note=f"{module} is not installed ({INSTALL_HINT})")


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- peers (imported lazily)
def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _passthrough_estimator(logits: np.ndarray, y: np.ndarray) -> Any:
    """A fitted scikit-learn classifier whose decision_function returns its input (the logits)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Passthrough(ClassifierMixin, BaseEstimator):
        def fit(self, X: np.ndarray, y: np.ndarray) -> "Passthrough":
            self.classes_ = np.arange(X.shape[1])
            return self

        def decision_function(self, X: np.ndarray) -> np.ndarray:
            return X

        def predict(self, X: np.ndarray) -> np.ndarray:
            return np.argmax(X, axis=1)

    return Passthrough().fit(logits, y)


def precal_ts(logits: np.ndarray, y: np.ndarray) -> float:
    import precal

    return float(precal.TemperatureScaling().fit(logits, y).temperature_)


def sklearn_ts(logits: np.ndarray, y: np.ndarray, passthrough: Any) -> float:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    cal = CalibratedClassifierCV(FrozenEstimator(passthrough), method="temperature").fit(logits, y)
    return 1.0 / float(cal.calibrated_classifiers_[0].calibrators[0].beta_)


def netcal_ts(prob: np.ndarray, y: np.ndarray) -> float:
    from netcal.scaling import TemperatureScaling

    model = TemperatureScaling().fit(prob, y)
    # netcal's `.temperature` is the weight that multiplies the log-probabilities, i.e.
    # 1/T (it matches precal's 1/temperature_ to ~1e-8), so T is its reciprocal.
    return 1.0 / float(np.asarray(model.temperature).reshape(-1)[0])


def precal_ece(y: np.ndarray, prob: np.ndarray) -> float:
    from precal.metrics import expected_calibration_error

    return float(expected_calibration_error(y, prob, n_bins=N_BINS))


def netcal_ece(y: np.ndarray, prob: np.ndarray) -> float:
    from netcal.metrics import ECE

    return float(ECE(bins=N_BINS).measure(prob, y))


def torchmetrics_ece(y_t: Any, prob_t: Any, k: int) -> float:
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(prob_t, y_t, num_classes=k, n_bins=N_BINS, norm="l1"))


def numpy_ece(y: np.ndarray, prob: np.ndarray) -> float:
    """Plain numpy top-label ECE: bins ``[e_b, e_{b+1})``, the last closed (precal's and netcal's edges)."""
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    idx = np.searchsorted(edges[1:-1], confidence, side="right")
    conf_sum = np.bincount(idx, weights=confidence, minlength=N_BINS)
    acc_sum = np.bincount(idx, weights=correct, minlength=N_BINS)
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


# --------------------------------------------------------------------------- netcal in a child process
def _netcal_ts_worker(n: int, k: int, seed: int, repeats: int, threads: int, out: Any) -> None:
    """Child process: rebuild the same data, then report each netcal fit (warm-up first) on ``out``."""
    warnings.filterwarnings("ignore")
    try:
        limit_threads(threads)
        logits, y = make_logits(n, k, seed)
        prob = softmax64(logits)
        del logits
        import netcal.scaling  # noqa: F401  (import netcal/pyro before the clock starts)

        out.put(("ready", 0.0, math.nan))
        for i in range(repeats + 1):
            start = time.perf_counter()
            temperature = netcal_ts(prob, y)
            out.put(("warmup" if i == 0 else "fit", time.perf_counter() - start, temperature))
    except BaseException as exc:  # report, never hang the parent
        out.put(("error", 0.0, repr(exc)))


def time_netcal_ts(case: Case, seed: int, timeout_s: float, threads: int) -> Timing:
    """Time netcal's fit in a spawned child; a fit longer than ``timeout_s`` is recorded as a timeout."""
    if not _installed("netcal"):
        return missing("netcal")
    ctx = mp.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
    messages = ctx.Queue()
    args = (case.n, case.k, seed, case.repeats, threads, messages)
    proc = ctx.Process(target=_netcal_ts_worker, args=args, daemon=True)
    proc.start()
    times: list[float] = []
    value = math.nan
    try:
        kind, _, payload = messages.get(timeout=max(600.0, timeout_s))  # imports + data generation
        if kind == "error":
            return Timing(times_s=[], value=math.nan, status="error", note=str(payload))
        for _ in range(case.repeats + 1):
            kind, seconds, payload = messages.get(timeout=timeout_s)
            if kind == "error":
                return Timing(times_s=times, value=value, status="error", note=str(payload))
            value = float(payload)
            if kind == "fit":
                times.append(seconds)
    except queue.Empty:
        done = f"after {len(times)} timed fit(s)" if times else "(no fit finished)"
        return Timing(times_s=times, value=value, status="timeout", note=f"a fit exceeded {timeout_s:g} s {done}")
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=30)
    return Timing(times_s=times, value=value)


# --------------------------------------------------------------------------- the benchmarks
def bench_temperature_scaling(case: Case, seed: int, netcal_timeout_s: float, threads: int) -> dict[str, Any]:
    """Time the temperature-scaling fit of each library on one problem size."""
    logits, y = make_logits(case.n, case.k, seed)
    logits64 = logits.astype(np.float64)
    passthrough = _passthrough_estimator(logits, y)
    runs = {
        "precal": (time_call(lambda: precal_ts(logits, y), case.repeats), "float32 logits"),
        "scikit-learn": (time_call(lambda: sklearn_ts(logits, y, passthrough), case.repeats), "float32 logits"),
        "scikit-learn (float64)": (
            time_call(lambda: sklearn_ts(logits64, y, passthrough), case.repeats),
            "float64 logits",
        ),
    }
    del logits64
    runs["netcal"] = (time_netcal_ts(case, seed, netcal_timeout_s, threads), "float64 probabilities")
    return _compare(case, runs, value_name="temperature", relative=True)


def bench_ece(case: Case, seed: int) -> dict[str, Any]:
    """Time the 15-bin top-label ECE of each library on one problem size."""
    import torch

    logits, y = make_logits(case.n, case.k, seed)
    prob = softmax64(logits).astype(np.float32)
    del logits
    prob_t, y_t = torch.from_numpy(prob), torch.from_numpy(y)
    inputs = {"precal": "float32 numpy", "netcal": "float32 numpy", "torchmetrics": "float32 torch (CPU)",
              "numpy reference": "float32 numpy"}
    fns: dict[str, Callable[[], float]] = {"precal": lambda: precal_ece(y, prob)}
    if _installed("netcal"):
        fns["netcal"] = lambda: netcal_ece(y, prob)
    if _installed("torchmetrics"):
        fns["torchmetrics"] = lambda: torchmetrics_ece(y_t, prob_t, case.k)
    fns["numpy reference"] = lambda: numpy_ece(y, prob)
    timings = time_interleaved(fns, case.repeats)  # round-robin: the same conditions for every library
    runs = {name: (timings[name] if name in timings else missing(name), given) for name, given in inputs.items()}
    result = _compare(case, runs, value_name="ece", relative=False)
    result["fraction_confidence_eq_1"] = float(np.mean(prob.max(axis=1) == 1.0))
    return result


def bench_calibrators(case: Case, expressions: tuple[str, ...], seed: int) -> dict[str, Any]:
    """Fit time of each of precal's calibrators on one problem size, and its ratio to TS's in the same run."""
    import precal.calibration as calibration

    logits, y = make_logits(case.n, case.k, seed)

    def fitter(expr: str) -> Callable[[], float]:
        make = eval(expr, vars(calibration))  # noqa: S307 - constructor expressions of this file

        def fit() -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal = make.__class__(**make.get_params()).fit(logits, y)
            return float(getattr(cal, "n_iter_", math.nan))

        return fit

    timings = time_interleaved({expr: fitter(expr) for expr in expressions}, case.repeats)  # round-robin
    fits: dict[str, Any] = {expr: timing.to_json("n_iter") for expr, timing in timings.items()}
    ts = fits["TemperatureScaling()"]["median_s"]
    for entry in fits.values():
        entry["ratio_to_ts"] = _finite_or_none(entry["median_s"] / ts) if entry["median_s"] and ts else None
    return {"n": case.n, "k": case.k, "repeats": case.repeats, "calibrators": fits}


def _compare(
    case: Case, runs: dict[str, tuple[Timing, str]], *, value_name: str, relative: bool
) -> dict[str, Any]:
    """Per-library results plus precal's speed-up and the difference of each value from precal's."""
    ref = runs["precal"][0]
    libraries: dict[str, Any] = {}
    for name, (timing, given) in runs.items():
        entry = {"input": given} | timing.to_json(value_name)
        if name != "precal":
            speedup = timing.median_s / ref.median_s if timing.status == "ok" else math.nan
            diff = abs(timing.value - ref.value)
            entry["precal_speedup"] = _finite_or_none(speedup)
            entry["rel_diff_vs_precal" if relative else "abs_diff_vs_precal"] = _finite_or_none(
                diff / abs(ref.value) if relative else diff
            )
        libraries[name] = entry
    return {"n": case.n, "k": case.k, "repeats": case.repeats, "libraries": libraries}


def bench_crossover(quick: bool, seed: int) -> dict[str, Any]:
    """Per-pass time of precal's TS derivatives on 1 and 2 threads by size, and on 1 thread by block size."""
    import threadpoolctl
    import torch

    from precal import _threads
    from precal.calibration import _blocks
    from precal.calibration.temperature import _derivatives

    def per_pass(z: np.ndarray, y: np.ndarray, n_threads: int, repeats: int) -> float:
        zt, yt = torch.from_numpy(z), torch.from_numpy(y)
        with _threads.config_context(n_threads=n_threads), _threads.thread_limits(None, torch_threads=1) as n:
            data = _blocks.ShiftedLogits(zt, yt, None, n)
            _derivatives(data, 0.6)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                _derivatives(data, 0.6)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    saved = torch.get_num_threads()
    out: dict[str, Any] = {"threads": [], "block_size": []}
    exponents = range(15, 20) if quick else range(15, 23)
    with threadpoolctl.threadpool_limits(limits=2):  # whatever --threads capped: let precal use 2
        torch.set_num_threads(2)
        try:
            for k in (10, 100):
                for e in exponents:
                    n = max(1, (1 << e) // k)
                    z, y = make_logits(n, k, seed)
                    repeats = 5 if quick else max(5, min(200, (1 << 24) >> e))
                    one, two = per_pass(z, y, 1, repeats), per_pass(z, y, 2, repeats)
                    out["threads"].append({"k": k, "elements": n * k, "one_s": one, "two_s": two, "ratio": one / two})
            saved_chunk = _blocks.CHUNK_ELEMENTS
            try:
                z, y = make_logits((1 << (19 if quick else 22)) // 100, 100, seed)
                for e in range(16, 20 if quick else 23):
                    _blocks.CHUNK_ELEMENTS = 1 << e
                    out["block_size"].append({"block_elements": 1 << e, "elements": z.size,
                                              "one_s": per_pass(z, y, 1, 3 if quick else 10)})
            finally:
                _blocks.CHUNK_ELEMENTS = saved_chunk
        finally:
            torch.set_num_threads(saved)
    return out


def run_suite(config: Config) -> dict[str, Any]:
    """Every case of both benchmarks (and the crossover) under the current machine load."""
    load_start = load_average()
    ts_results = []
    for case in config.ts_cases:
        print(f"  temperature scaling {case.label} (R={case.repeats}) ...", flush=True)
        ts_results.append(bench_temperature_scaling(case, config.seed, config.netcal_timeout_s, config.threads))
    ece_results = []
    for case in config.ece_cases:
        print(f"  ECE {case.label} (R={case.repeats}) ...", flush=True)
        ece_results.append(bench_ece(case, config.seed))
    calibrator_results = []
    for case, expressions in config.calibrator_cases:
        print(f"  calibrators {case.label} (R={case.repeats}) ...", flush=True)
        calibrator_results.append(bench_calibrators(case, expressions, config.seed))
    out = {"temperature_scaling": ts_results, "ece": ece_results, "calibrators": calibrator_results}
    if config.crossover:
        print("  crossover ...", flush=True)
        out["crossover"] = bench_crossover(config.quick, config.seed)
    out["load_average_1min"] = {"start": load_start, "end": load_average()}
    return out


# --------------------------------------------------------------------------- targets
def _speedup_vs_sklearn(results: list[dict[str, Any]], shape: tuple[int, int]) -> tuple[float, float] | None:
    """(smaller speed-up over the two scikit-learn runs, larger relative T difference), or None."""
    rows = [r for r in results if (r["n"], r["k"]) == shape]
    if not rows:
        return None
    libs = rows[0]["libraries"]
    sk = [libs["scikit-learn"], libs["scikit-learn (float64)"]]
    if any(e["precal_speedup"] is None for e in sk):
        return None
    return min(e["precal_speedup"] for e in sk), max(e["rel_diff_vs_precal"] or 0.0 for e in sk)


def check_targets(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """TS >= 10x scikit-learn quiet, >= 5x busy at 50 000 x 1 000 with the same T; TS at
    10 000 x 10 >= 10x scikit-learn; ECE no slower than the fastest peer in every case and mode."""
    targets: dict[str, Any] = {}
    for mode, results in modes.items():
        if results is None:
            continue
        want = TS_TARGET_SPEEDUP[mode]
        found = _speedup_vs_sklearn(results["temperature_scaling"], TS_TARGET_SHAPE)
        entry: dict[str, Any] = {
            "statement": f"TS fit >= {want:g}x faster than scikit-learn at 50 000 x 1 000 on the {mode} machine, "
            f"same temperature (relative difference <= {TS_TARGET_REL_DIFF:g})"
        }
        if found is None:
            entry |= {"met": None, "detail": "size 50 000 x 1 000 not run (--quick)"}
        else:
            speedup, rel = found
            entry |= {"met": speedup >= want and rel <= TS_TARGET_REL_DIFF, "min_speedup_vs_sklearn": speedup,
                      "detail": f"speed-up {speedup:.1f}x over the faster scikit-learn run; max relative T "
                      f"difference {rel:.1e}"}
        targets[f"ts_fit_{mode}"] = entry
        small = _speedup_vs_sklearn(results["temperature_scaling"], SMALL_TARGET_SHAPE)
        entry = {"statement": f"TS fit at 10 000 x 10 >= {SMALL_TARGET_SPEEDUP:g}x faster than scikit-learn "
                 f"on the {mode} machine"}
        if small is None:
            entry |= {"met": None, "detail": "size 10 000 x 10 not run"}
        else:
            precal_s = next(r for r in results["temperature_scaling"] if (r["n"], r["k"]) == SMALL_TARGET_SHAPE)
            ms = precal_s["libraries"]["precal"]["median_s"] * 1e3
            entry |= {"met": small[0] >= SMALL_TARGET_SPEEDUP, "min_speedup_vs_sklearn": small[0],
                      "detail": f"precal {ms:.2f} ms, speed-up {small[0]:.1f}x over the faster scikit-learn run"}
        targets[f"ts_small_{mode}"] = entry
        slower = []
        for r in results["ece"]:
            libs = r["libraries"]
            peers = [(v["median_s"], k) for k, v in libs.items() if k != "precal" and v["status"] == "ok"]
            if not peers:
                continue
            fastest = min(peers)
            if libs["precal"]["median_s"] > fastest[0]:
                ratio = libs["precal"]["median_s"] / fastest[0]
                slower.append(f"{Case(r['n'], r['k'], 0).label}: {ratio:.2f}x the time of {fastest[1]}")
        large = [r for r in results.get("calibrators", []) if (r["n"], r["k"]) == TS_TARGET_SHAPE]
        entry = {"statement": f"DirichletCalibrator(map='diagonal') at 50 000 x 1 000 within "
                 f"{DIRICHLET_TARGET_RATIO:g}x TemperatureScaling's fit time on the {mode} machine"}
        if not large:
            entry |= {"met": None, "detail": "size 50 000 x 1 000 not run"}
        else:
            fits = large[0]["calibrators"]
            ratios = {e: v["ratio_to_ts"] for e, v in fits.items() if e.startswith("DirichletCalibrator")}
            entry |= {"met": all(r is not None and r <= DIRICHLET_TARGET_RATIO for r in ratios.values()),
                      "detail": "; ".join(f"{e}: {_fmt(r, '.1f')}x TS" for e, r in ratios.items())}
        targets[f"dirichlet_{mode}"] = entry
        medium = [r for r in results.get("calibrators", []) if (r["n"], r["k"]) == FUZZY_TARGET_SHAPE]
        fuzzy = medium[0]["calibrators"].get("FuzzyDirichletCalibrator()") if medium else None
        entry = {"statement": f"FuzzyDirichletCalibrator() at 5 000 x 100 within {FUZZY_TARGET_RATIO:g}x "
                 f"TemperatureScaling's fit time on the {mode} machine"}
        if fuzzy is None:
            entry |= {"met": None,
                      "detail": "FuzzyDirichletCalibrator() not timed at 5 000 x 100 (--quick or --sections)"}
        else:
            ratio = fuzzy["ratio_to_ts"]
            entry |= {"met": ratio is not None and ratio <= FUZZY_TARGET_RATIO,
                      "detail": f"{_fmt(fuzzy['median_s'], '.2f')} s, {_fmt(ratio, '.0f')}x TS"}
        targets[f"fuzzy_{mode}"] = entry
        targets[f"ece_{mode}"] = {
            "statement": f"ECE no slower than the fastest peer (every size) on the {mode} machine",
            "met": not slower,
            "detail": "precal fastest in every case" if not slower else "precal slower at " + "; ".join(slower),
        }
    return targets


# --------------------------------------------------------------------------- environment
def environment(threads: int) -> dict[str, Any]:
    import scipy
    import sklearn
    import torch

    import precal

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    try:
        from precal._threads import available_cpus

        cpus = available_cpus()
    except ImportError:  # pragma: no cover
        cpus = None
    return {
        "python": platform.python_version(),
        "precal": precal.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "netcal": version("netcal"),
        "torchmetrics": version("torchmetrics"),
        "cpu_count": os.cpu_count(),
        "available_cpus": cpus,
        "torch_num_threads": torch.get_num_threads(),
        "threads": threads or "library defaults",
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- rendering
TS_HEADERS = ["n x K", "library", "input", "median s", "T", "rel. diff T", "precal speed-up"]
ECE_HEADERS = ["n x K", "library", "input", "median s", "ECE", "abs. diff vs precal", "precal speed-up"]
RATIO_HEADERS = ["benchmark", "n x K", "peer", "precal speed-up, quiet", "precal speed-up, busy"]
CALIBRATOR_HEADERS = ["n x K", "calibrator", "median s", "Newton/iterations", "time / TS time"]


def _fmt_time(entry: dict[str, Any], timeout_s: float) -> str:
    status = entry["status"]
    if status == "timeout":
        return f"> {timeout_s:g} (timeout)"
    if status in ("error", "missing"):
        return "not installed" if status == "missing" else "error"
    return f"{entry['median_s']:.4g}"


def _fmt_speedup(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_rows(results: list[dict[str, Any]], kind: str, timeout_s: float) -> list[list[str]]:
    rows = []
    for r in results:
        shape = Case(r["n"], r["k"], r["repeats"]).label
        for name, e in r["libraries"].items():
            diff_key = "rel_diff_vs_precal" if kind == "ts" else "abs_diff_vs_precal"
            rows.append(
                [
                    shape,
                    name,
                    e["input"],
                    _fmt_time(e, timeout_s),
                    _fmt(e.get("temperature"), ".6f") if kind == "ts" else _fmt(e.get("ece"), ".8f"),
                    "(reference)" if name == "precal" else _fmt(e.get(diff_key), ".1e"),
                    "" if name == "precal" else _fmt_speedup(e.get("precal_speedup")),
                ]
            )
    return rows


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    """precal's speed-up over each peer, quiet and busy side by side."""
    modes = report["modes"]
    base = modes.get("quiet") or modes.get("busy")
    rows = []
    for bench, key in (("TS fit", "temperature_scaling"), ("ECE", "ece")):
        for i, r in enumerate(base[key]):
            for peer in r["libraries"]:
                if peer == "precal":
                    continue
                cells = []
                for mode in MODES:
                    rows_of_mode = (modes.get(mode) or {}).get(key) or []
                    entry = rows_of_mode[i]["libraries"].get(peer) if i < len(rows_of_mode) else None
                    cells.append("not run" if entry is None else _fmt_speedup(entry.get("precal_speedup")))
                rows.append([bench, Case(r["n"], r["k"], 0).label, peer, *cells])
    return rows


def calibrator_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        shape = Case(r["n"], r["k"], r["repeats"]).label
        for expr, e in r["calibrators"].items():
            rows.append([shape, f"`{expr}`", _fmt(e["median_s"], ".4g"), _fmt(e.get("n_iter"), ".0f"),
                         _fmt(e.get("ratio_to_ts"), ".1f") + ("x" if e.get("ratio_to_ts") is not None else "")])
    return rows


def crossover_rows(crossover: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    threads = [[str(r["k"]), f"{r['elements']:,}".replace(",", " "), f"{r['one_s'] * 1e3:.3f}",
                f"{r['two_s'] * 1e3:.3f}", f"{r['ratio']:.2f}x"] for r in crossover["threads"]]
    blocks = [[f"2^{int(math.log2(r['block_elements']))}", f"{r['elements']:,}".replace(",", " "),
               f"{r['one_s'] * 1e3:.3f}"] for r in crossover["block_size"]]
    return threads, blocks


def _env_line(env: dict[str, Any], report: dict[str, Any]) -> str:
    cpu = env["cpu_model"] or env["machine"]
    loads = ", ".join(
        f"{mode} {results['load_average_1min']['start']} -> {results['load_average_1min']['end']}"
        for mode, results in report["modes"].items() if results is not None
    )
    return (
        f"{cpu} ({env['machine']}), {env['cpu_count']} CPUs ({env.get('available_cpus') or '?'} available to the "
        f"process), threads: {env.get('threads', report.get('threads'))}; Python {env['python']}, precal "
        f"{env['precal']}, numpy {env['numpy']}, torch {env['torch']}, scikit-learn {env['scikit-learn']}, netcal "
        f"{env['netcal']}, torchmetrics {env['torchmetrics']}; 1-min load average {loads}"
    )


def _met(flag: bool | None) -> str:
    return "not checked" if flag is None else ("**met**" if flag else "**not met**")


def results_markdown(report: dict[str, Any]) -> str:
    """Targets, the side-by-side ratios, the tables of each mode, the crossover and the environment."""
    timeout_s = report["netcal_timeout_s"]
    lines = ["## Targets", ""]
    for target in report["targets"].values():
        lines.append(f"- {target['statement']}: {_met(target['met'])} ({target['detail']}).")
    busy = report["modes"].get("busy")
    lines += [
        "",
        "## Quiet and busy, side by side",
        "",
        "precal's speed-up over each peer (the peer's median time over precal's), on the machine as it was "
        "(quiet) and with "
        + (f"{report['busy_workers']} busy background workers ({report['busy_kind']} loops)"
           if busy is not None else "background workers (not run in this run)")
        + ".",
        "",
        markdown_table(RATIO_HEADERS, ratio_rows(report)),
    ]
    for mode in MODES:
        results = report["modes"].get(mode)
        if results is None:
            continue
        lines += [
            "",
            f"## Temperature-scaling fit, {mode}",
            "",
            "Median wall time over the repeats (after one warm-up call); `T` is the fitted temperature, "
            "`rel. diff T` is `|T - T_precal| / T_precal`, `precal speed-up` is the peer's time over precal's.",
            "",
            markdown_table(TS_HEADERS, table_rows(results["temperature_scaling"], "ts", timeout_s)),
            "",
            f"## Expected calibration error (15 bins), {mode}",
            "",
            markdown_table(ECE_HEADERS, table_rows(results["ece"], "ece", timeout_s)),
        ]
        if results.get("calibrators"):
            lines += [
                "",
                f"## precal's calibrators, {mode}",
                "",
                "Fit time of each calibrator with its defaults (median over the repeats after one warm-up "
                "fit) and its ratio to `TemperatureScaling`'s in the same run; `DirichletCalibrator`'s "
                "default `reg_lambda=\"cv\"` includes its internal cross-validation.",
                "",
                markdown_table(CALIBRATOR_HEADERS, calibrator_rows(results["calibrators"])),
            ]
        if "crossover" in results:
            threads, blocks = crossover_rows(results["crossover"])
            lines += [
                "",
                f"## Crossover, {mode}",
                "",
                "One pass of precal's temperature-scaling derivatives over kept blocks (milliseconds, median): "
                "where two threads start to pay sets `precal._threads.MIN_PARALLEL_ELEMENTS`.",
                "",
                markdown_table(["K", "elements", "1 thread ms", "2 threads ms", "1 / 2"], threads),
                "",
                "The same pass on one thread by block size (`precal.calibration._blocks.CHUNK_ELEMENTS`):",
                "",
                markdown_table(["block elements", "elements", "1 thread ms"], blocks),
            ]
    base = report["modes"].get("quiet") or busy
    lines += [
        "",
        "Fraction of samples whose float32 top probability is exactly 1.0: "
        + ", ".join(f"{Case(r['n'], r['k'], 0).label}: {r['fraction_confidence_eq_1']:.3f}" for r in base["ece"])
        + ". torchmetrics casts confidences to float32 and sums each bin in float32, "
        "so on large n its value drifts from the float64-accumulated ECE of precal and netcal.",
        "",
        "## Environment",
        "",
        f"{_env_line(report['environment'], report)}. Run {report['created']}; "
        f"repeats: TS {', '.join(str(r['repeats']) for r in base['temperature_scaling'])}, "
        f"ECE {', '.join(str(r['repeats']) for r in base['ece'])}; seed {report['seed']}.",
    ]
    return "\n".join(lines) + "\n"


def method_paragraphs(report: dict[str, Any]) -> list[str]:
    threads = report["threads"]
    thread_text = (
        f"Every library is capped at {threads} thread{'s' if threads != 1 else ''} (torch, OpenMP and BLAS "
        "pools), so the comparison is core for core."
        if isinstance(threads, int)
        else "Every library runs with its default thread settings, as a user gets it: precal with its thread "
        "policy ([Performance and threads](performance.md)), the torch-based peers with torch's default pool, "
        "scikit-learn with its defaults (`--threads 1` compares core for core)."
    )
    return [
        "The script `benchmarks/bench_speed.py` generates over-confident float32 logits with a seeded "
        "numpy generator (`logits = 5 * (3 * onehot(y) + N(0, 1))`, so the ideal temperature is about "
        "5/3) and times, in one run, (1) the temperature-scaling fit of precal "
        "(`TemperatureScaling`), scikit-learn (`CalibratedClassifierCV(FrozenEstimator(...), "
        'method="temperature")` on the same float32 logits and on a float64 copy) and netcal '
        "(`netcal.scaling.TemperatureScaling`, fitted on float64 softmax probabilities, in a child "
        "process with a timeout; its `.temperature` attribute is the inverse temperature, so the "
        "table shows its reciprocal), and (2) the 15-bin expected calibration error of precal, netcal "
        "(`ECE(bins=15)`), torchmetrics (`multiclass_calibration_error`) and a plain numpy reference "
        "(`searchsorted` + `bincount`, no input validation) on the same float32 probabilities (numpy "
        "arrays, or CPU tensors sharing their memory for torchmetrics). Every input conversion a user "
        "would do up front is done outside the timed region; each library's own validation is inside "
        "it. (3) The fit time of precal's own calibrators: `DirichletCalibrator(map=\"diagonal\")` at "
        "50 000 x 1 000 (with its default cross-validated `reg_lambda` and with a fixed one) and every "
        "calibrator with its defaults at 10 000 x 10, each as a ratio to `TemperatureScaling`'s time in the "
        "same run. Times are medians of `time.perf_counter` over the repeats after one warm-up call; "
        "the ECE libraries and the calibrators are timed round-robin (one call of each per round), so "
        "that on the busy machine each meets the same contention. "
        + thread_text,
        "**Two modes.** Everything is measured twice in the same run: first *quiet*, on the machine "
        "as it is, then *busy*, while background processes started by the script keep every CPU "
        "oversubscribed (by default twice as many workers as the process has CPUs, each spinning in a "
        "pure-Python loop; each stops by itself at a hard deadline and when the benchmark's process is "
        "gone). The busy mode is what a shared CI runner, a notebook server or a Kubernetes pod with a "
        "CPU quota looks like: a thread pool whose every kernel ends at a barrier waits for its slowest, "
        "descheduled thread, so libraries that split each small operation across threads lose far more "
        "than their share of the CPU. The side-by-side table shows precal's speed-up over each peer in "
        "both modes. A quiet table is only as quiet as the machine was: the load average at the start "
        "and end of each mode is in the Environment line.",
        "The numbers below are written by the script from its last run; they depend on the machine.",
    ]


def docs_page(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Speed benchmark: precal vs scikit-learn, netcal and torchmetrics",
            "",
            "<!-- Generated by benchmarks/bench_speed.py from its results; do not edit by hand. -->",
            "",
            *[p + "\n" for p in method_paragraphs(report)],
            "To rerun (from the repository root):",
            "",
            "```bash",
            f"{INSTALL_HINT}   # torchmetrics, netcal, scikit-learn",
            RERUN_COMMAND + "                # quiet and busy, refreshes benchmarks/results/ and this page",
            RERUN_COMMAND + " --quick        # small smoke test, writes to a temporary directory",
            RERUN_COMMAND + " --modes quiet  # the quiet machine only",
            RERUN_COMMAND + " --threads 1    # every library on one thread (core for core)",
            RERUN_COMMAND + " --render-only  # rewrite this page from benchmarks/results/speed.json",
            "```",
            "",
            f"This page was produced by `{report['command']}`."
            + (f" **Note:** {report['note']}." if report.get("note") else ""),
            "",
            results_markdown(report),
        ]
    )


def speed_md(report: dict[str, Any]) -> str:
    title = "# precal speed benchmark" + (" (quick smoke test)" if report["quick"] else "")
    note = f" **Note:** {report['note']}." if report.get("note") else ""
    return f"{title}\n\nGenerated by `{report['command']}`.{note}\n\n" + results_markdown(report)


def upgrade_report(report: dict[str, Any]) -> dict[str, Any]:
    """A results file written before the busy mode existed, as a quiet-only run of this format."""
    if "modes" in report:
        return report
    env = report["environment"]
    quiet = {"temperature_scaling": report["temperature_scaling"], "ece": report["ece"],
             "load_average_1min": env.pop("load_average_1min", {"start": None, "end": None})}
    env.setdefault("threads", report.get("threads"))
    env.setdefault("available_cpus", None)
    upgraded = {k: v for k, v in report.items() if k not in ("temperature_scaling", "ece", "targets")}
    upgraded |= {"modes": {"quiet": quiet, "busy": None}, "busy_workers": None, "busy_kind": None,
                 "note": "these results were written before the busy mode existed, by an earlier precal "
                 "(its temperature-scaling fit has changed since): quiet numbers only, until the benchmark is rerun"}
    upgraded["targets"] = check_targets({"quiet": quiet})
    return upgraded


def write_outputs(report: dict[str, Any], out_dir: Path, docs_path: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")  # first: the data
    (out_dir / "speed.md").write_text(speed_md(report), encoding="utf-8")
    docs_path.write_text(docs_page(report), encoding="utf-8")
    return [out_dir / "speed.json", out_dir / "speed.md", docs_path]


def print_report(report: dict[str, Any]) -> None:
    timeout_s = report["netcal_timeout_s"]
    for mode, results in report["modes"].items():
        if results is None:
            continue
        print(f"\n[{mode}] Temperature-scaling fit (median seconds)")
        print(text_table(TS_HEADERS, table_rows(results["temperature_scaling"], "ts", timeout_s)))
        print(f"\n[{mode}] Expected calibration error, 15 bins (median seconds)")
        print(text_table(ECE_HEADERS, table_rows(results["ece"], "ece", timeout_s)))
        if results.get("calibrators"):
            print(f"\n[{mode}] precal's calibrators (median seconds, ratio to TS)")
            print(text_table(CALIBRATOR_HEADERS, calibrator_rows(results["calibrators"])))
        if "crossover" in results:
            threads, blocks = crossover_rows(results["crossover"])
            print(f"\n[{mode}] Crossover: one TS pass, 1 vs 2 threads (ms)")
            print(text_table(["K", "elements", "1 thread ms", "2 threads ms", "1 / 2"], threads))
            print(text_table(["block elements", "elements", "1 thread ms"], blocks))
    print("\nprecal speed-up, quiet and busy")
    print(text_table(RATIO_HEADERS, ratio_rows(report)))
    print()
    for target in report["targets"].values():
        print(f"target: {target['statement']}: {_met(target['met']).strip('*')} ({target['detail']})")
    print("\n" + _env_line(report["environment"], report))


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat, 2 busy workers; writes to a temp dir")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write speed.json, speed.md and benchmarks-speed.md here instead of\n"
        "benchmarks/results/ and docs/ (default with --quick: a new temp dir)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for every library (torch, OpenMP, BLAS); 0 = library defaults (default 0)",
    )
    parser.add_argument(
        "--modes", default="quiet,busy", help="comma-separated modes to run: quiet, busy (default: both)"
    )
    parser.add_argument(
        "--busy-workers", type=int, default=None,
        help="background processes of the busy mode (default: twice the CPUs available; 2 with --quick)",
    )
    parser.add_argument("--busy-kind", choices=BUSY_KINDS, default="python", help="what busy workers compute")
    parser.add_argument("--no-crossover", action="store_true", help="skip the crossover and block-size passes")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS),
        help="comma-separated sections to run (default: all): " + ", ".join(SECTIONS) + ";\n"
        "the rows of the sections not run (ts, ece, calibrators) are kept from the existing speed.json,\n"
        "each marked with the run that measured it",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="do not benchmark: rewrite speed.md and the docs page from an existing speed.json\n"
        "(in --out DIR, default benchmarks/results/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data generator (default 0)")
    parser.add_argument(
        "--netcal-timeout", type=float, default=120.0, help="seconds after which one netcal fit counts as a timeout"
    )
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated subset of {MODES}, got {args.modes!r}")
    args.modes = tuple(m for m in MODES if m in modes)
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if not sections or not sections <= set(SECTIONS):
        parser.error(f"--sections takes a comma-separated subset of {SECTIONS}, got {args.sections!r}")
    args.sections = tuple(x for x in SECTIONS if x in sections)
    if args.busy_workers is not None and args.busy_workers < 1:
        parser.error("--busy-workers must be >= 1")
    return args


#: The results of each section (its key in a mode's results) and how a note names its rows.
SECTION_RESULTS = {"ts": ("temperature_scaling", "temperature-scaling"), "ece": ("ece", "ECE"),
                   "calibrators": ("calibrators", "calibrator")}


def _kept_from(note: str) -> dict[str, str] | None:
    """The run named by a partial run's note ("... kept from the run of <created> (<command>); ..."),
    for results written before the reports stored where their kept rows came from."""
    match = re.search(r"kept from the run of (.+?) \((python [^)]*)\); the other sections", note)
    return {"created": match.group(1), "command": match.group(2)} if match else None


def _keep_previous(modes: dict[str, Any], previous_path: Path, sections: tuple[str, ...]
                   ) -> tuple[str, dict[str, dict[str, str]]]:
    """Put the rows of the sections not run (``sections``) from the previous results into ``modes``;
    say, per section, which run measured them (also when the previous results had kept them in turn).
    Returns the note and ``{results key: {"created", "command"}}``."""
    if not sections:
        return "", {}
    names = [SECTION_RESULTS[x][1] for x in sections]
    if not previous_path.is_file():
        return f"the {', '.join(names)} sections were not run (--sections)", {}
    previous = upgrade_report(json.loads(previous_path.read_text(encoding="utf-8")))
    own = {"created": previous["created"], "command": previous["command"]}
    sources = dict(previous.get("sources") or {})
    if "ts_source" in previous or "sources" not in previous:  # results written before "sources"
        legacy = previous.get("ts_source") or _kept_from(previous.get("note") or "")
        if legacy:
            sources["temperature_scaling"] = legacy
    parts, kept_sources = [], {}
    for section in sections:
        key, name = SECTION_RESULTS[section]
        kept = []
        for mode, results in modes.items():
            old = (previous["modes"].get(mode) or {}).get(key) or []
            if results is not None:
                results[key] = old
                if old:
                    kept.append(mode)
        source = sources.get(key) or own
        kept_sources[key] = source
        parts.append(f"the {name} rows ({', '.join(kept) or 'none'}) are kept from the run of "
                     f"{source['created']} ({source['command']})")
    return "; ".join(parts) + "; the other sections are from this run (--sections)", kept_sources


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results dir, docs page): the committed locations only for a full run without --out."""
    if args.out is not None:
        return args.out, args.out / "benchmarks-speed.md"
    if args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="precal-bench-speed-"))
        return out_dir, out_dir / "benchmarks-speed.md"
    return DEFAULT_RESULTS_DIR, DEFAULT_DOCS_PAGE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir, docs_path = output_paths(args)
    if args.render_only:
        source = out_dir / "speed.json"
        if not source.is_file():
            sys.exit(f"--render-only needs {source}; run the benchmark first.")
        report = upgrade_report(json.loads(source.read_text(encoding="utf-8")))
        print_report(report)
        written = write_outputs(report, out_dir, docs_path)
        print("\nrewrote: " + ", ".join(str(p) for p in written))
        return 0
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for module in ("netcal", "torchmetrics"):
        if not _installed(module):
            print(f"note: {module} is not installed; its rows are skipped ({INSTALL_HINT})", flush=True)
    busy_workers = args.busy_workers or (2 if args.quick else default_busy_workers())
    config = Config(
        ts_cases=(QUICK_TS if args.quick else FULL_TS) if "ts" in args.sections else (),
        ece_cases=(QUICK_ECE if args.quick else FULL_ECE) if "ece" in args.sections else (),
        calibrator_cases=(QUICK_CALIBRATORS if args.quick else FULL_CALIBRATORS)
        if "calibrators" in args.sections else (),
        seed=args.seed,
        netcal_timeout_s=args.netcal_timeout,
        threads=args.threads,
        quick=args.quick,
        modes=args.modes,
        busy_workers=busy_workers,
        busy_kind=args.busy_kind,
        crossover=not args.no_crossover and "crossover" in args.sections,
    )
    limit_threads(config.threads)

    modes: dict[str, Any] = {mode: None for mode in MODES}
    for mode in config.modes:
        workers = config.busy_workers if mode == "busy" else 0
        print(f"{mode} machine" + (f" ({workers} busy workers)" if workers else "") + ":", flush=True)
        bound = BUSY_MAX_SECONDS["quick" if config.quick else "full"]
        with busy_machine(workers, max_seconds=bound, kind=config.busy_kind):
            modes[mode] = run_suite(config)

    not_run = tuple(x for x in SECTION_RESULTS if x not in args.sections)
    note, sources = _keep_previous(modes, out_dir / "speed.json", not_run)
    report = {
        "benchmark": "precal speed: temperature-scaling fit and ECE vs scikit-learn, netcal, torchmetrics, "
        "quiet and busy",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": config.quick,
        "seed": config.seed,
        "data": {"logits": "scale * (margin * onehot(y) + N(0,1)), float32", "margin": MARGIN, "scale": SCALE},
        "n_bins": N_BINS,
        "netcal_timeout_s": config.netcal_timeout_s,
        "threads": config.threads or "library defaults",
        "busy_workers": config.busy_workers if "busy" in config.modes else None,
        "busy_kind": config.busy_kind if "busy" in config.modes else None,
        "environment": environment(config.threads),
        "modes": modes,
        "targets": check_targets(modes),
    }
    if note:
        report["note"] = note
    if sources:
        report["sources"] = sources  # the runs that measured the kept rows, for the next partial run
    written = write_outputs(report, out_dir, docs_path)
    print_report(report)
    print("\nwrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

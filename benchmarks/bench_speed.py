"""Speed benchmark: precal against scikit-learn, netcal and torchmetrics, side by side.

What is measured, in one run, on synthetic float32 logits from a seeded numpy generator:

1. **Temperature-scaling fit** at 50 000 x 1 000 and 50 000 x 100 (samples x classes).

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

   Reported: median time, the values and their largest absolute difference from precal's.

Threads: by default every library runs single-threaded (``--threads 1``: torch's intra-op
pool, OpenMP and BLAS pools via threadpoolctl, and the same environment variables for the
netcal child). scikit-learn's temperature fit is single-threaded anyway, and on a shared or
busy machine a 2-thread torch pool can wait on the OS scheduler at every parallel region,
which makes times meaningless. ``--threads 0`` leaves each library's default.

The data: labels ``y`` uniform over K classes, ``logits = scale * (margin * onehot(y) +
N(0, 1))`` with ``margin = 3`` and ``scale = 5``. For this model the Bayes posterior is
``softmax(margin * x)``, so the logits are over-confident by ``T = scale / margin ~ 1.67``
and every library should find a temperature near that value.

Results go to ``benchmarks/results/speed.{md,json}`` and the docs page
``docs/benchmarks-speed.md`` (written from the results, never by hand). ``--quick`` runs
small sizes once and writes to a temporary directory; ``--out DIR`` writes everything
(docs page included) under DIR instead of the committed locations; ``--render-only``
rewrites the markdown outputs from an existing ``speed.json`` without benchmarking.

Run from the repository root::

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_speed.py            # full run, refreshes the committed results
    python benchmarks/bench_speed.py --quick    # smoke test, writes to a temp dir
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
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

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOCS_PAGE = REPO_ROOT / "docs" / "benchmarks-speed.md"
RERUN_COMMAND = "python benchmarks/bench_speed.py"
INSTALL_HINT = "pip install -r benchmarks/requirements.txt"

MARGIN = 3.0
SCALE = 5.0
N_BINS = 15

#: Targets checked by this benchmark.
TS_TARGET_SPEEDUP = 10.0
TS_TARGET_REL_DIFF = 1e-4
TS_TARGET_SHAPE = (50_000, 1_000)


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
    seed: int
    netcal_timeout_s: float
    threads: int
    quick: bool


FULL_TS = (Case(50_000, 1_000, 3), Case(50_000, 100, 5))
FULL_ECE = (Case(50_000, 10, 5), Case(50_000, 100, 5), Case(1_000_000, 10, 3), Case(1_000_000, 100, 3))
QUICK_TS = (Case(5_000, 100, 1), Case(5_000, 10, 1))
QUICK_ECE = (Case(5_000, 10, 1), Case(20_000, 100, 1))


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
    fn()
    times: list[float] = []
    value = math.nan
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return Timing(times_s=times, value=float(value))


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- threads
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Cap torch, OpenMP and BLAS at ``threads`` threads for the rest of this process (0: no cap).

    The environment variables are inherited by the spawned netcal child, which calls this too.
    """
    if threads <= 0:
        return
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(limits=threads)


# --------------------------------------------------------------------------- peers (imported lazily)
def _require(module: str) -> Any:
    """Import an optional peer library or exit with an installation hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        sys.exit(f"bench_speed.py needs {module.split('.')[0]!r} ({exc}). Install the peers with `{INSTALL_HINT}`.")


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
    scaling = _require("netcal.scaling")
    model = scaling.TemperatureScaling().fit(prob, y)
    # netcal's `.temperature` is the weight that multiplies the log-probabilities, i.e.
    # 1/T (it matches precal's 1/temperature_ to ~1e-8), so T is its reciprocal.
    return 1.0 / float(np.asarray(model.temperature).reshape(-1)[0])


def precal_ece(y: np.ndarray, prob: np.ndarray) -> float:
    from precal.metrics import expected_calibration_error

    return float(expected_calibration_error(y, prob, n_bins=N_BINS))


def netcal_ece(y: np.ndarray, prob: np.ndarray) -> float:
    metrics = _require("netcal.metrics")
    return float(metrics.ECE(bins=N_BINS).measure(prob, y))


def torchmetrics_ece(y_t: Any, prob_t: Any, k: int) -> float:
    tm = _require("torchmetrics.functional.classification")
    return float(tm.multiclass_calibration_error(prob_t, y_t, num_classes=k, n_bins=N_BINS, norm="l1"))


# --------------------------------------------------------------------------- netcal in a child process
def _netcal_ts_worker(n: int, k: int, seed: int, repeats: int, threads: int, out: Any) -> None:
    """Child process: rebuild the same data, then report each netcal fit (warm-up first) on ``out``."""
    warnings.filterwarnings("ignore")
    try:
        limit_threads(threads)
        logits, y = make_logits(n, k, seed)
        prob = softmax64(logits)
        del logits
        _require("netcal.scaling")  # import netcal/pyro before the clock starts
        out.put(("ready", 0.0, math.nan))
        for i in range(repeats + 1):
            start = time.perf_counter()
            temperature = netcal_ts(prob, y)
            out.put(("warmup" if i == 0 else "fit", time.perf_counter() - start, temperature))
    except BaseException as exc:  # report, never hang the parent
        out.put(("error", 0.0, repr(exc)))


def time_netcal_ts(case: Case, seed: int, timeout_s: float, threads: int) -> Timing:
    """Time netcal's fit in a spawned child; a fit longer than ``timeout_s`` is recorded as a timeout."""
    _require("netcal.scaling")
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


# --------------------------------------------------------------------------- the two benchmarks
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
    runs = {
        "precal": (time_call(lambda: precal_ece(y, prob), case.repeats), "float32 numpy"),
        "netcal": (time_call(lambda: netcal_ece(y, prob), case.repeats), "float32 numpy"),
        "torchmetrics": (
            time_call(lambda: torchmetrics_ece(y_t, prob_t, case.k), case.repeats),
            "float32 torch (CPU)",
        ),
    }
    result = _compare(case, runs, value_name="ece", relative=False)
    result["fraction_confidence_eq_1"] = float(np.mean(prob.max(axis=1) == 1.0))
    return result


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


# --------------------------------------------------------------------------- targets
def check_targets(ts: list[dict[str, Any]], ece: list[dict[str, Any]]) -> dict[str, Any]:
    """TS: >= 10x faster than scikit-learn (both dtypes) at 50 000 x 1 000, same T to 1e-4.
    ECE: precal's median no slower than the fastest peer in every case."""
    ts_target: dict[str, Any] = {
        "statement": (
            f"TS fit >= {TS_TARGET_SPEEDUP:g}x faster than scikit-learn at 50 000 x 1 000 "
            f"with the same temperature (relative difference <= {TS_TARGET_REL_DIFF:g})"
        )
    }
    big = [r for r in ts if (r["n"], r["k"]) == TS_TARGET_SHAPE]
    if not big:
        ts_target |= {"met": None, "detail": "size 50 000 x 1 000 not run (--quick)"}
    else:
        libs = big[0]["libraries"]
        sk = [libs["scikit-learn"], libs["scikit-learn (float64)"]]
        speedup = min(e["precal_speedup"] for e in sk)
        rel = max(e["rel_diff_vs_precal"] for e in sk)
        met = speedup >= TS_TARGET_SPEEDUP and rel <= TS_TARGET_REL_DIFF
        ts_target |= {
            "met": met,
            "min_speedup_vs_sklearn": speedup,
            "max_rel_diff_vs_sklearn": rel,
            "detail": f"speed-up {speedup:.1f}x over the faster scikit-learn run; max relative T difference {rel:.1e}",
        }
    slower = []
    for r in ece:
        libs = r["libraries"]
        fastest_peer = min((v["median_s"], k) for k, v in libs.items() if k != "precal")
        if libs["precal"]["median_s"] > fastest_peer[0]:
            ratio = libs["precal"]["median_s"] / fastest_peer[0]
            slower.append(f"{Case(r['n'], r['k'], 0).label}: {ratio:.2f}x the time of {fastest_peer[1]}")
    ece_target = {
        "statement": "ECE no slower than the fastest peer (every size)",
        "met": not slower,
        "detail": "precal fastest in every case" if not slower else "precal slower at " + "; ".join(slower),
    }
    return {"ts_fit": ts_target, "ece": ece_target}


# --------------------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    import scipy
    import sklearn
    import torch

    import precal

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

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
        "torch_num_threads": torch.get_num_threads(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
    }


def _load_average() -> float | None:
    """1-minute load average (the machine may be shared; a high value means noisy times)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# --------------------------------------------------------------------------- rendering
TS_HEADERS = ["n x K", "library", "input", "median s", "T", "rel. diff T", "precal speed-up"]
ECE_HEADERS = ["n x K", "library", "input", "median s", "ECE", "abs. diff vs precal", "precal speed-up"]


def _fmt_time(entry: dict[str, Any], timeout_s: float) -> str:
    if entry["status"] == "timeout":
        return f"> {timeout_s:g} (timeout)"
    if entry["status"] == "error":
        return "error"
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
                    _fmt(e["temperature"], ".6f") if kind == "ts" else _fmt(e["ece"], ".8f"),
                    "(reference)" if name == "precal" else _fmt(e[diff_key], ".1e"),
                    "" if name == "precal" else _fmt_speedup(e["precal_speedup"]),
                ]
            )
    return rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _env_line(env: dict[str, Any]) -> str:
    cpu = env["cpu_model"] or env["processor"] or env["machine"]
    return (
        f"{cpu} ({env['machine']}), {env['cpu_count']} CPUs, torch threads {env['torch_num_threads']}; "
        f"Python {env['python']}, precal {env['precal']}, numpy {env['numpy']}, torch {env['torch']}, "
        f"scikit-learn {env['scikit-learn']}, netcal {env['netcal']}, torchmetrics {env['torchmetrics']}; "
        f"1-min load average {env['load_average_1min']['start']} at start, {env['load_average_1min']['end']} at end"
    )


def _met(flag: bool | None) -> str:
    return "not checked" if flag is None else ("**met**" if flag else "**not met**")


def results_markdown(report: dict[str, Any]) -> str:
    """The two tables, the targets and the environment (shared by speed.md and the docs page)."""
    timeout_s = report["netcal_timeout_s"]
    ts_rows = table_rows(report["temperature_scaling"], "ts", timeout_s)
    ece_rows = table_rows(report["ece"], "ece", timeout_s)
    targets = report["targets"]
    lines = [
        "## Targets",
        "",
        f"- {targets['ts_fit']['statement']}: {_met(targets['ts_fit']['met'])} ({targets['ts_fit']['detail']}).",
        f"- {targets['ece']['statement']}: {_met(targets['ece']['met'])} ({targets['ece']['detail']}).",
        "",
        "## Temperature-scaling fit",
        "",
        "Median wall time over the repeats (after one warm-up call); `T` is the fitted temperature, "
        "`rel. diff T` is `|T - T_precal| / T_precal`, `precal speed-up` is the peer's time over precal's.",
        "",
        markdown_table(TS_HEADERS, ts_rows),
        "",
        "## Expected calibration error (15 bins)",
        "",
        markdown_table(ECE_HEADERS, ece_rows),
        "",
        "Fraction of samples whose float32 top probability is exactly 1.0: "
        + ", ".join(f"{Case(r['n'], r['k'], 0).label}: {r['fraction_confidence_eq_1']:.3f}" for r in report["ece"])
        + ". torchmetrics casts confidences to float32 and sums each bin in float32, "
        "so on large n its value drifts from the float64-accumulated ECE of precal and netcal.",
        "",
        "## Environment",
        "",
        f"{_env_line(report['environment'])}. Run {report['created']}; "
        f"repeats: TS {', '.join(str(r['repeats']) for r in report['temperature_scaling'])}, "
        f"ECE {', '.join(str(r['repeats']) for r in report['ece'])}; seed {report['seed']}.",
    ]
    return "\n".join(lines) + "\n"


def method_paragraph(report: dict[str, Any]) -> str:
    threads = report["threads"]
    thread_text = (
        f"Every library is capped at {threads} thread{'s' if threads != 1 else ''} (torch, OpenMP and "
        "BLAS pools; `--threads 0` lifts the cap), "
        if isinstance(threads, int)
        else "Every library runs with its default thread settings, "
    )
    return (
        "The script `benchmarks/bench_speed.py` generates over-confident float32 logits with a seeded "
        "numpy generator (`logits = 5 * (3 * onehot(y) + N(0, 1))`, so the ideal temperature is about "
        "5/3) and times, in one run, (1) the temperature-scaling fit of precal "
        "(`TemperatureScaling`), scikit-learn (`CalibratedClassifierCV(FrozenEstimator(...), "
        'method="temperature")` on the same float32 logits and on a float64 copy) and netcal '
        "(`netcal.scaling.TemperatureScaling`, fitted on float64 softmax probabilities, in a child "
        "process with a timeout; its `.temperature` attribute is the inverse temperature, so the "
        "table shows its reciprocal), and (2) the 15-bin expected calibration error of precal, netcal "
        "(`ECE(bins=15)`) and torchmetrics (`multiclass_calibration_error`) on the same float32 "
        "probabilities (numpy arrays for precal and netcal, CPU tensors sharing their memory for "
        "torchmetrics). Every input conversion a user would do up front is done outside the timed "
        "region; each library's own validation is inside it. Times are medians of `time.perf_counter` "
        "over the repeats after one warm-up call. "
        + thread_text
        + "so the comparison is core for core and far less sensitive to other load on the machine "
        "(a multi-threaded torch pool on a busy machine can stall at every parallel region). "
        "The numbers below are written by the script from its last run; they depend on the machine "
        "(see Environment)."
    )


def docs_page(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Speed benchmark: precal vs scikit-learn, netcal and torchmetrics",
            "",
            "<!-- Generated by benchmarks/bench_speed.py from its results; do not edit by hand. -->",
            "",
            method_paragraph(report),
            "",
            "To rerun (from the repository root):",
            "",
            "```bash",
            f"{INSTALL_HINT}   # torchmetrics, netcal, scikit-learn",
            RERUN_COMMAND + "              # refreshes benchmarks/results/ and this page",
            RERUN_COMMAND + " --quick      # small smoke test, writes to a temporary directory",
            RERUN_COMMAND + " --threads 0  # each library's default thread count",
            RERUN_COMMAND + " --render-only  # rewrite this page from benchmarks/results/speed.json",
            "```",
            "",
            f"This page was produced by `{report['command']}`.",
            "",
            results_markdown(report),
        ]
    )


def speed_md(report: dict[str, Any]) -> str:
    title = "# precal speed benchmark" + (" (quick smoke test)" if report["quick"] else "")
    return f"{title}\n\nGenerated by `{report['command']}`.\n\n" + results_markdown(report)


def write_outputs(report: dict[str, Any], out_dir: Path, docs_path: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    files = {
        out_dir / "speed.json": json.dumps(report, indent=2) + "\n",
        out_dir / "speed.md": speed_md(report),
        docs_path: docs_page(report),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)


def print_report(report: dict[str, Any]) -> None:
    timeout_s = report["netcal_timeout_s"]
    print("\nTemperature-scaling fit (median seconds)")
    print(text_table(TS_HEADERS, table_rows(report["temperature_scaling"], "ts", timeout_s)))
    print("\nExpected calibration error, 15 bins (median seconds)")
    print(text_table(ECE_HEADERS, table_rows(report["ece"], "ece", timeout_s)))
    diffs = [
        (name, e["abs_diff_vs_precal"])
        for r in report["ece"]
        for name, e in r["libraries"].items()
        if name != "precal"
    ]
    for peer in ("netcal", "torchmetrics"):
        print(f"max |ECE_{peer} - ECE_precal| = {max(d for n, d in diffs if n == peer):.2e}")
    print()
    for target in report["targets"].values():
        print(f"target: {target['statement']}: {_met(target['met']).strip('*')} ({target['detail']})")
    print("\n" + _env_line(report["environment"]))


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat; writes to a temp dir")
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
        default=1,
        help="threads for every library (torch, OpenMP, BLAS); 0 = library defaults (default 1)",
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
    return parser.parse_args(argv)


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
        report = json.loads(source.read_text(encoding="utf-8"))
        print_report(report)
        written = write_outputs(report, out_dir, docs_path)
        print("\nrewrote: " + ", ".join(str(p) for p in written))
        return 0
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for module in ("netcal", "torchmetrics"):
        _require(module)
    config = Config(
        ts_cases=QUICK_TS if args.quick else FULL_TS,
        ece_cases=QUICK_ECE if args.quick else FULL_ECE,
        seed=args.seed,
        netcal_timeout_s=args.netcal_timeout,
        threads=args.threads,
        quick=args.quick,
    )
    limit_threads(config.threads)

    load_start = _load_average()
    ts_results = []
    for case in config.ts_cases:
        print(f"temperature scaling {case.label} (R={case.repeats}) ...", flush=True)
        ts_results.append(bench_temperature_scaling(case, config.seed, config.netcal_timeout_s, config.threads))
    ece_results = []
    for case in config.ece_cases:
        print(f"ECE {case.label} (R={case.repeats}) ...", flush=True)
        ece_results.append(bench_ece(case, config.seed))

    report = {
        "benchmark": "precal speed: temperature-scaling fit and ECE vs scikit-learn, netcal, torchmetrics",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": config.quick,
        "seed": config.seed,
        "data": {"logits": "scale * (margin * onehot(y) + N(0,1)), float32", "margin": MARGIN, "scale": SCALE},
        "n_bins": N_BINS,
        "netcal_timeout_s": config.netcal_timeout_s,
        "threads": config.threads or "library defaults",
        "environment": environment() | {"load_average_1min": {"start": load_start, "end": _load_average()}},
        "temperature_scaling": ts_results,
        "ece": ece_results,
        "targets": check_targets(ts_results, ece_results),
    }
    print_report(report)
    written = write_outputs(report, out_dir, docs_path)
    print("\nwrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

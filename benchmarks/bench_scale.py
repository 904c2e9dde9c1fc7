"""Scale benchmark: fit time and peak memory of precal on large logits, in memory and memory-mapped.

What is measured (issue #7, item 3), each point in a fresh child process:

1. **N sweep** at K = 1 000 classes, N = 10 000 ... 2 000 000 samples (float32: 40 MB to
   8 GB of logits):

   * ``TemperatureScaling().fit(X, y)`` and ``PACSCalibrator().fit(X, y)`` with ``X`` a
     ``numpy.memmap`` of a ``.npy`` file (``np.load(path, mmap_mode="r")``): precal reads
     it block by block with ordinary file reads (``precal._chunks.FileRows``), so the
     process never holds the file;
   * ``expected_calibration_error(y, P)`` and ``adaptive_calibration_error(y, P)`` on a
     memory-mapped file of float32 probabilities ``P`` (the softmax of the same logits);
   * for comparison, ``TemperatureScaling`` and the ECE on the same data loaded into
     memory (``np.array``; loading is not timed), up to N = 1 000 000 (4 GB).

2. **K sweep** at N = 100 000, K = 10 ... 10 000 (4 MB to 4 GB), memory-mapped:
   ``TemperatureScaling``, ``PACSCalibrator`` and the ECE.

3. **Dask rows** (issue 18, item 4) at K = 1 000: ``TemperatureScaling().fit`` and
   ``PACSCalibrator().fit`` on a ``dask.array`` whose every chunk (``2**24`` elements, 64 MB
   of float32) is read by its own task from rows of the same ``.npy`` file (``np.load(path,
   mmap_mode="r")[a:b]``, copied: what a sharded store gives each task; zarr is not a
   dependency), fitted through a ``distributed.LocalCluster`` of 2 worker processes with one
   thread each, started in the child before the warm-up. Besides the child's (the Dask
   client's) peak extra memory, the child samples every worker process's resident memory
   (``psutil``, every 50 ms) during the call and records each worker's peak minus its
   resident memory just before the call. The memory-mapped rows of the same N are the
   reference: the ratio of the times is the cost of going through Dask on one machine.

For every point the child opens the data, makes one small warm-up call (imports, allocator
pools), then times the call (``time.perf_counter``; the median of 3 repeats where
``N * K <= 1e8``, else 1 run) and measures its **peak extra resident memory**: the
kernel's high-water mark of the child's resident set (``VmHWM``), reset to the current
resident size (``VmRSS``) right before the call through ``/proc/self/clear_refs``, minus
that size. The data loaded into memory for the "array" rows is part of the baseline,
so the column shows what the computation adds. Pages of a memory-mapped file that a
process reads through the mapping count in its resident set, so this measure would show a
read through the mapping in full; ``getrusage``'s ``ru_maxrss`` is not used because it
cannot be reset and, after ``fork``/``exec``, starts from the parent's peak.

The data: labels uniform over K classes; ``logits = s_i * (3 * onehot(y) + N(0, 1))``
with a per-sample scale ``s_i ~ U(2, 8)`` (so confidence varies with the logit norm and
PACS's ``lambda`` is not 0); probabilities are their float32 softmax. Rows are generated
in blocks whose seed depends only on (seed, K, block), so the first N rows of a larger
file are exactly the file of N rows: one file per K serves every N. Files live in
``--data-dir`` (default: a ``precal-bench-scale`` folder in the system temp directory;
the full run needs about 45 GB free: the past-RAM row alone writes 28 GB of logits) and are deleted at the end unless ``--keep-data``.

Time per element and the slope of ``log(time)`` against ``log(N * K)`` (least squares
over the points with ``N * K >= 1e8``, where fixed costs are negligible) show how the cost
grows: a slope of 1 is linear in ``N * K``. The log-log plot
``docs/figures/bench-scale-time.png`` shows both sweeps with a slope-1 guide;
``docs/figures/bench-scale-memory.png`` shows the peak extra memory against the data size.

Threads: ``--threads 1`` (default) caps torch, OpenMP and BLAS at one thread in every
child, so times are per core; ``--threads 0`` keeps the library defaults.

Results go to ``benchmarks/results/bench_scale.{json,md}``, the figures to
``docs/figures/`` and the docs page ``docs/benchmarks-scale.md`` (written from the
results, never by hand). A full run takes 1-2 hours on one core; ``--series``,
``--n`` and ``--k`` pick points and ``--merge`` adds them to the existing results, so it
can be run in parts. ``--quick`` runs small sizes once and writes everything to a
temporary directory (or ``--out DIR``); ``--render-only`` rewrites the markdown and figures
from an existing ``bench_scale.json``.

Run from the repository root::

    python benchmarks/bench_scale.py                     # full run (long), refreshes the committed results
    python benchmarks/bench_scale.py --quick             # smoke test (< 1 min), temp output
    python benchmarks/bench_scale.py --n 2000000 --series ts-memmap --merge --keep-data   # one point, merged
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_FIG_DIR = REPO_ROOT / "docs" / "figures"
DEFAULT_DOCS_PAGE = REPO_ROOT / "docs" / "benchmarks-scale.md"
RERUN_COMMAND = "python benchmarks/bench_scale.py"
RESULTS_NAME = "bench_scale"
FIG_DPI = 100

MARGIN = 3.0
SCALE_RANGE = (2.0, 8.0)
#: Rows per generated block: ``2**20 // K``, so a block's seed depends only on (seed, K, block).
GEN_BLOCK_ELEMENTS = 1 << 20
#: Points with more elements than this are timed once; smaller ones 3 times (median).
SINGLE_RUN_ELEMENTS = 10**8
#: Points with at least this many elements enter the slope fit (below it fixed costs show).
FIT_MIN_ELEMENTS = 10**8
#: Seconds after which one point counts as a timeout.
POINT_TIMEOUT_S = 1800

_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Series:
    """One line of the plot: a method on a data source, swept over N or K."""

    name: str
    method: str  # "ts" | "pacs" | "ece" | "ace"
    source: str  # "memmap" | "array" | "dask"
    sweep: str  # "n" | "k"
    label: str


SERIES = (
    Series("ts-memmap", "ts", "memmap", "n", "TemperatureScaling, memmap"),
    Series("ts-array", "ts", "array", "n", "TemperatureScaling, in memory"),
    Series("pacs-memmap", "pacs", "memmap", "n", "PACSCalibrator, memmap"),
    Series("ece-memmap", "ece", "memmap", "n", "ECE, memmap"),
    Series("ece-array", "ece", "array", "n", "ECE, in memory"),
    Series("ace-memmap", "ace", "memmap", "n", "ACE, memmap"),
    Series("ts-memmap-k", "ts", "memmap", "k", "TemperatureScaling, memmap (K sweep)"),
    Series("pacs-memmap-k", "pacs", "memmap", "k", "PACSCalibrator, memmap (K sweep)"),
    Series("ece-memmap-k", "ece", "memmap", "k", "ECE, memmap (K sweep)"),
    Series("ts-dask", "ts", "dask", "n", "TemperatureScaling, Dask (2 workers)"),
    Series("pacs-dask", "pacs", "dask", "n", "PACSCalibrator, Dask (2 workers)"),
)
SERIES_BY_NAME = {s.name: s for s in SERIES}


@dataclass(frozen=True)
class Plan:
    n_values: tuple[int, ...]
    k_for_n: int
    array_max_n: int
    k_values: tuple[int, ...]
    n_for_k: int
    dask_n: tuple[int, ...] = ()
    #: N of the TemperatureScaling rows (memmap and Dask) whose logits exceed the benchmark machine's RAM.
    past_ram_n: tuple[int, ...] = ()


FULL = Plan(
    n_values=(10_000, 30_000, 100_000, 300_000, 1_000_000, 2_000_000),
    k_for_n=1_000,
    array_max_n=1_000_000,
    k_values=(10, 30, 100, 300, 1_000, 3_000, 10_000),
    n_for_k=100_000,
    dask_n=(100_000, 1_000_000),
    past_ram_n=(7_000_000,),  # 26 GiB of float32 logits: past the 24 GiB of the project machine
)
QUICK = Plan(n_values=(2_000, 8_000), k_for_n=50, array_max_n=8_000, k_values=(10, 100), n_for_k=2_000,
             dask_n=(8_000,), past_ram_n=(12_000,))

#: Elements per chunk of the Dask rows (64 MB of float32).
DASK_CHUNK_ELEMENTS = 1 << 24
#: Worker processes of the Dask rows' LocalCluster (one thread each).
DASK_WORKERS = 2


def plan_points(plan: Plan, series: list[str], n_filter: set[int] | None, k_filter: set[int] | None):
    """``(series, n, k)`` for every selected point, largest data first within each K (files are made once)."""
    points = []
    for s in (SERIES_BY_NAME[name] for name in series):
        past_ram = plan.past_ram_n if s.method == "ts" else ()
        if s.source == "dask":
            cand = [(s, n, plan.k_for_n) for n in (*plan.dask_n, *past_ram)]
        elif s.sweep == "n":
            ns = [n for n in plan.n_values if s.source == "memmap" or n <= plan.array_max_n]
            cand = [(s, n, plan.k_for_n) for n in (*ns, *(past_ram if s.source == "memmap" else ()))]
        else:
            cand = [(s, plan.n_for_k, k) for k in plan.k_values]
        points += [p for p in cand if (n_filter is None or p[1] in n_filter) and (k_filter is None or p[2] in k_filter)]
    return points


# --------------------------------------------------------------------------- data files
FLOAT_KINDS = ("logits", "proba")


def _paths(data_dir: Path, k: int, n: int) -> dict[str, Path]:
    return {kind: data_dir / f"{kind}_k{k}_n{n}.npy" for kind in (*FLOAT_KINDS, "labels")}


def find_data(data_dir: Path, n: int, k: int, kinds: tuple[str, ...] = FLOAT_KINDS) -> dict[str, Path] | None:
    """Existing files of ``kinds`` for K with at least ``n`` rows (their first ``n`` rows are the data)."""
    best = None
    for path in data_dir.glob(f"labels_k{k}_n*.npy"):
        rows = int(path.stem.rsplit("_n", 1)[1])
        if rows >= n and (best is None or rows < best):
            paths = _paths(data_dir, k, rows)
            if all(paths[kind].exists() for kind in (*kinds, "labels")):
                best = rows
    return None if best is None else {kind: p for kind, p in _paths(data_dir, k, best).items()
                                      if kind in (*kinds, "labels")}


def make_data(data_dir: Path, n: int, k: int, seed: int, kinds: tuple[str, ...] = FLOAT_KINDS) -> dict[str, Path]:
    """Write ``kinds`` (logits and/or probabilities) and labels for ``n`` rows and ``k`` classes, block by block.

    Logits-only files (no ECE/ACE point needs them at that size) halve the disk a store larger than RAM needs.
    """
    from precal._numerics import softmax

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = _paths(data_dir, k, n)
    rows = max(1, GEN_BLOCK_ELEMENTS // k)
    labels = np.empty(n, dtype=np.int64)
    handles, offsets = {}, {}
    for kind in kinds:
        part = paths[kind].with_suffix(".part")
        mm = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(n, k))
        offsets[kind] = mm.offset
        del mm  # the header is written; rows go in with plain file writes (no mapped pages)
        handles[kind] = open(part, "r+b")
    try:
        for b, start in enumerate(range(0, n, rows)):
            m = min(rows, n - start)
            rng = np.random.default_rng([seed, k, b])
            # every block is drawn whole and cut to m rows: a file's last, partial block is then the
            # prefix of the same block of a longer file (the scales are drawn after the normals)
            y = rng.integers(0, k, size=rows)[:m]
            z = rng.standard_normal((rows, k), dtype=np.float32)[:m]
            z[np.arange(m), y] += np.float32(MARGIN)
            z *= rng.uniform(*SCALE_RANGE, size=(rows, 1)).astype(np.float32)[:m]
            labels[start : start + m] = y
            for kind in kinds:
                block = z if kind == "logits" else softmax(z).astype(np.float32)
                f = handles[kind]
                f.seek(offsets[kind] + start * k * 4)
                f.write(memoryview(np.ascontiguousarray(block)).cast("B"))
    finally:
        for f in handles.values():
            f.close()
    for kind in kinds:
        paths[kind].with_suffix(".part").rename(paths[kind])
    np.save(paths["labels"], labels)
    return {kind: p for kind, p in paths.items() if kind in (*kinds, "labels")}


def ensure_data(data_dir: Path, n: int, k: int, seed: int,
                kinds: tuple[str, ...] = FLOAT_KINDS) -> tuple[dict[str, Path], bool]:
    found = find_data(data_dir, n, k, kinds)
    if found is not None:
        return found, False
    print(f"  writing {' and '.join(kinds)} {n:,} x {k:,} to {data_dir} ...", flush=True)
    return make_data(data_dir, n, k, seed, kinds), True


def data_for_points(points: list[tuple[Series, int, int]], data_dir: Path,
                    seed: int) -> tuple[dict[int, dict[str, Path]], list[Path]]:
    """The files every point reads, per K (made where missing), and the files made.

    Per K, probabilities are written up to the largest N of an ECE/ACE point, logits up to the largest N of
    any point; the labels of the longest file serve every N (a shorter file's rows are its prefix).
    """
    need: dict[tuple[int, str], int] = {}
    for s, n, k in points:
        key = (k, "proba" if s.method in ("ece", "ace") else "logits")
        need[key] = max(need.get(key, 0), n)
    made: list[Path] = []
    paths_for_k: dict[int, dict[str, Path]] = {}
    for k in sorted({k for k, _ in need}):
        n_proba, n_logits = need.get((k, "proba"), 0), need.get((k, "logits"), 0)
        paths: dict[str, Path] = {}
        if n_proba:
            paths, new = ensure_data(data_dir, n_proba, k, seed, FLOAT_KINDS)
            made += list(paths.values()) if new else []
        if n_logits > n_proba:
            more, new = ensure_data(data_dir, n_logits, k, seed, ("logits",))
            made += list(more.values()) if new else []
            paths.update(more)
        paths_for_k[k] = paths
    return paths_for_k, made


# --------------------------------------------------------------------------- the child
def limit_threads(threads: int) -> None:
    if threads <= 0:
        return
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(limits=threads)


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Set the resident high-water mark (VmHWM) to the current resident size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _call(method: str, data: Any, y: np.ndarray) -> dict[str, Any]:
    from precal import PACSCalibrator, TemperatureScaling
    from precal.metrics import adaptive_calibration_error, expected_calibration_error

    if method == "ts":
        est = TemperatureScaling().fit(data, y)
        return {"value": est.temperature_, "n_iter": est.n_iter_}
    if method == "pacs":
        est = PACSCalibrator().fit(data, y)
        return {"value": est.temperature_, "lambda": est.lambda_, "n_iter": est.n_iter_}
    if method == "ece":
        return {"value": expected_calibration_error(y, data)}
    if method == "ace":
        return {"value": adaptive_calibration_error(y, data)}
    raise ValueError(f"unknown method {method!r}")


def _npy_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a ``.npy`` file, read by the task that needs them (one Dask chunk)."""
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def dask_logits(path: str, n: int, k: int) -> Any:
    """The first ``n`` rows of a ``.npy`` logits file as a dask array of row chunks read from the file."""
    import dask
    import dask.array as da

    rows = max(1, DASK_CHUNK_ELEMENTS // k)
    blocks = [da.from_delayed(dask.delayed(_npy_rows)(path, a, min(a + rows, n)), shape=(min(a + rows, n) - a, k),
                              dtype=np.float32) for a in range(0, n, rows)]
    return da.concatenate(blocks, axis=0)


class _WorkerMemory:
    """Peak resident memory of the Dask worker processes during a call (psutil, sampled every 50 ms)."""

    def __init__(self, client: Any) -> None:
        import psutil

        self.procs = {addr: psutil.Process(pid) for addr, pid in client.run(os.getpid).items()}
        self.before = {addr: p.memory_info().rss for addr, p in self.procs.items()}
        self.peak = dict(self.before)
        self._stop = False

    def _sample(self) -> None:
        while not self._stop:
            for addr, p in self.procs.items():
                try:
                    self.peak[addr] = max(self.peak[addr], p.memory_info().rss)
                except Exception:  # a worker restarting: nothing to sample
                    pass
            time.sleep(0.05)

    def __enter__(self) -> _WorkerMemory:
        import threading

        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()

    def result(self) -> dict[str, list[float]]:
        addrs = sorted(self.procs)
        return {"worker_peak_extra_mb": [(self.peak[a] - self.before[a]) / 2**20 for a in addrs],
                "worker_peak_rss_mb": [self.peak[a] / 2**20 for a in addrs]}


_CLUSTER: list[Any] = []


def _client() -> Any:
    """This child's LocalCluster client (started once: a --quick run's Dask points share it)."""
    if not _CLUSTER:
        import atexit

        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit="4GiB")
        client = Client(cluster)
        _CLUSTER.extend([cluster, client])
        atexit.register(lambda: (client.close(), cluster.close()))
    return _CLUSTER[1]


def _dask_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One Dask point: a LocalCluster in this child, the logits file read chunk by chunk by the workers."""
    import dask

    n, k = spec["n"], spec["k"]
    y = np.load(spec["paths"]["labels"])[:n]
    client = _client()
    with dask.config.set(scheduler=None):
        data = dask_logits(spec["paths"]["logits"], n, k)
        _call(spec["method"], data[:200], y[:200])
        times, out, peaks, workers = [], {}, [], []
        can_reset = _reset_peak()
        for _ in range(spec["repeats"]):
            _reset_peak()
            before = _status_mb("VmRSS")
            with _WorkerMemory(client) as mem:
                start = time.perf_counter()
                out = _call(spec["method"], data, y)
                times.append(time.perf_counter() - start)
            hwm = _status_mb("VmHWM")
            workers.append(mem.result())
            if can_reset and before is not None and hwm is not None:
                peaks.append((hwm - before, hwm))
    result = {"times_s": times, **out, "chunks": len(data.chunks[0]), "chunk_mb": data.chunks[0][0] * k * 4 / 2**20,
              "workers": DASK_WORKERS}
    result["worker_peak_extra_mb"] = [max(w["worker_peak_extra_mb"][i] for w in workers) for i in range(DASK_WORKERS)]
    result["worker_peak_rss_mb"] = [max(w["worker_peak_rss_mb"][i] for w in workers) for i in range(DASK_WORKERS)]
    if peaks:
        result["peak_extra_mb"] = max(p[0] for p in peaks)
        result["peak_rss_mb"] = max(p[1] for p in peaks)
    return result


def _has_dask() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed", "psutil"))


def worker(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run points in this (child) process, one after the other."""
    import warnings

    warnings.filterwarnings("ignore")
    limit_threads(specs[0]["threads"])
    return [_worker_point(spec) for spec in specs]


def _worker_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One point: open the data, warm up, time, measure the peak."""
    if spec["source"] == "dask":
        return _dask_point(spec)
    n, method = spec["n"], spec["method"]
    kind = "proba" if method in ("ece", "ace") else "logits"
    data = np.load(spec["paths"][kind], mmap_mode="r")[:n]
    y = np.load(spec["paths"]["labels"])[:n]
    if spec["source"] == "array":
        data = np.array(data)  # into memory, before the baseline
    _call(method, data[:200], y[:200])
    times, out, peaks = [], {}, []
    can_reset = _reset_peak()
    for _ in range(spec["repeats"]):
        _reset_peak()
        before = _status_mb("VmRSS")
        start = time.perf_counter()
        out = _call(method, data, y)
        times.append(time.perf_counter() - start)
        hwm = _status_mb("VmHWM")
        if can_reset and before is not None and hwm is not None:
            peaks.append((hwm - before, hwm))
    result = {"times_s": times, **out}
    if peaks:
        result["peak_extra_mb"] = max(p[0] for p in peaks)
        result["peak_rss_mb"] = max(p[1] for p in peaks)
    return result


def run_points(batch: list[tuple[Series, int, int, int]], paths_for_k: dict[int, dict[str, Path]],
               threads: int) -> list[dict[str, Any]]:
    """Run ``(series, n, k, repeats)`` points in one child process; one result per point."""
    specs = [{"method": s.method, "source": s.source, "n": n, "k": k, "threads": threads, "repeats": r,
              "paths": {key: str(p) for key, p in paths_for_k[k].items()}} for s, n, k, r in batch]
    env = dict(os.environ)
    if threads > 0:
        env.update({var: str(threads) for var in _THREAD_ENV_VARS})
    points = [{"series": s.name, "method": s.method, "source": s.source, "sweep": s.sweep, "n": n, "k": k,
               "elements": n * k, "data_mb": n * k * 4 / 2**20, "repeats": r} for s, n, k, r in batch]
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(specs)],
                              capture_output=True, text=True, timeout=POINT_TIMEOUT_S, cwd=REPO_ROOT, env=env)
    except subprocess.TimeoutExpired:
        return [p | {"status": "timeout", "note": f"over {POINT_TIMEOUT_S} s"} for p in points]
    if proc.returncode != 0:
        note = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        return [p | {"status": "error", "note": note} for p in points]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    out = []
    for point, result in zip(points, results):
        median = statistics.median(result["times_s"])
        out.append(point | {"status": "ok", "median_s": median, "ns_per_element": median / point["elements"] * 1e9}
                   | result)
    return out


# --------------------------------------------------------------------------- analysis
def slope_fits(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Least-squares slope of log(median time) on log(N K) per series (points with N K >= 1e8)."""
    fits = {}
    for s in SERIES:
        pts = [p for p in points if p["series"] == s.name and p["status"] == "ok" and p["elements"] >= FIT_MIN_ELEMENTS]
        if len(pts) >= 3:
            x = np.log10([p["elements"] for p in pts])
            t = np.log10([p["median_s"] for p in pts])
            slope, intercept = np.polyfit(x, t, 1)
            fits[s.name] = {"slope": float(slope), "points": len(pts), "min_elements": min(p["elements"] for p in pts),
                            "max_elements": max(p["elements"] for p in pts)}
    return fits


def equality_checks(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memmap vs in-memory results of the same method and size (relative difference)."""
    by_key = {(p["method"], p["source"], p["n"], p["k"]): p for p in points if p["status"] == "ok"}
    checks = []
    for (method, source, n, k), p in sorted(by_key.items()):
        other = by_key.get((method, "array", n, k))
        if source == "memmap" and other is not None:
            rel = abs(p["value"] - other["value"]) / abs(other["value"])
            checks.append({"method": method, "n": n, "k": k, "memmap": p["value"], "array": other["value"],
                           "rel_diff": rel})
    return checks


def dask_checks(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Dask point against the memory-mapped point of the same method and size: time ratio,
    relative difference of the fitted values, memory per process."""
    by_key = {(p["method"], p["source"], p["n"], p["k"]): p for p in points if p["status"] == "ok"}
    out = []
    for (method, source, n, k), p in sorted(by_key.items()):
        ref = by_key.get((method, "memmap", n, k))
        if source != "dask" or ref is None:
            continue
        row = {"method": method, "n": n, "k": k, "data_mb": p["data_mb"], "dask_s": p["median_s"],
               "memmap_s": ref["median_s"], "time_ratio": p["median_s"] / ref["median_s"],
               "rel_diff": abs(p["value"] - ref["value"]) / abs(ref["value"]),
               "worker_peak_extra_mb": p.get("worker_peak_extra_mb"), "client_peak_extra_mb": p.get("peak_extra_mb"),
               "memmap_peak_extra_mb": ref.get("peak_extra_mb")}
        if method == "pacs":
            row["lambda_rel_diff"] = abs(p["lambda"] - ref["lambda"]) / abs(ref["lambda"])
        out.append(row)
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    points = [p for p in report["points"] if p["status"] == "ok"]
    memmap = [p for p in points if p["source"] == "memmap" and "peak_extra_mb" in p]
    largest = max(memmap, key=lambda p: (p["elements"], p["method"] == "pacs"), default=None)
    biggest_peak = max(memmap, key=lambda p: p["peak_extra_mb"], default=None)
    out: dict[str, Any] = {"fits": slope_fits(points), "equality": equality_checks(points),
                           "dask": dask_checks(points)}
    if largest is not None:
        same = [p for p in memmap if p["elements"] == largest["elements"] and p["n"] == largest["n"]]
        out["largest_memmap"] = {
            "n": largest["n"], "k": largest["k"], "data_mb": largest["data_mb"],
            "peak_extra_mb": {p["method"]: p["peak_extra_mb"] for p in same},
            "peak_rss_mb": {p["method"]: p["peak_rss_mb"] for p in same},
        }
    if biggest_peak is not None:
        out["max_peak_extra_mb_memmap"] = {"value": biggest_peak["peak_extra_mb"], "series": biggest_peak["series"],
                                           "n": biggest_peak["n"], "k": biggest_peak["k"]}
    return out


# --------------------------------------------------------------------------- environment
def environment(threads: int) -> dict[str, Any]:
    import scipy
    import sklearn
    import torch

    import precal

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "python": platform.python_version(), "precal": precal.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
        "cpu_count": os.cpu_count(), "cpu_model": cpu or platform.processor(), "machine": platform.machine(),
        "memory_gb": mem_gb, "platform": platform.platform(), "threads": threads or "library defaults",
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --------------------------------------------------------------------------- rendering
HEADERS = ["method", "data", "N", "K", "data MB", "median s", "ns / element", "peak extra MB", "iter.", "value"]


def _fmt_int(x: int) -> str:
    return f"{x:,}".replace(",", " ")


def table_rows(points: list[dict[str, Any]], sweep: str) -> list[list[str]]:
    rows = []
    order = {s.name: i for i, s in enumerate(SERIES)}
    for p in sorted((p for p in points if p["sweep"] == sweep), key=lambda p: (order[p["series"]], p["n"], p["k"])):
        s = SERIES_BY_NAME[p["series"]]
        method = {"ts": "TemperatureScaling", "pacs": "PACSCalibrator", "ece": "ECE", "ace": "ACE"}[s.method]
        data = {"memmap": "memmap", "array": "in memory", "dask": f"Dask, {DASK_WORKERS} workers"}[s.source]
        if p["status"] != "ok":
            rows.append([method, data, _fmt_int(p["n"]), _fmt_int(p["k"]), f"{p['data_mb']:.0f}", p["status"],
                         "-", "-", "-", p.get("note", "")])
            continue
        value = f"T={p['value']:.5f}" if s.method in ("ts", "pacs") else f"{p['value']:.6f}"
        if s.method == "pacs":
            value += f", λ={p['lambda']:.4f}"
        rows.append([
            method, data, _fmt_int(p["n"]), _fmt_int(p["k"]), f"{p['data_mb']:.0f}", f"{p['median_s']:.3g}",
            f"{p['ns_per_element']:.2f}", f"{p['peak_extra_mb']:.0f}" if "peak_extra_mb" in p else "-",
            str(p.get("n_iter", "")), value,
        ])
    return rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    return "\n".join([line, "-" * len(line), *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _env_line(env: dict[str, Any]) -> str:
    return (f"{env['cpu_model']} ({env['machine']}), {env['cpu_count']} CPUs, {env['memory_gb']} GB RAM, "
            f"threads per child: {env['threads']}; Python {env['python']}, precal {env['precal']}, "
            f"numpy {env['numpy']}, "
            f"torch {env['torch']}, scipy {env['scipy']}, scikit-learn {env['scikit-learn']}")


def _ratio(points: list[dict[str, Any]], a: tuple[str, int, int], b: tuple[str, int, int]) -> float | None:
    """Median time of point ``a`` over point ``b`` (``(series, n, k)``), if both ran."""
    by_key = {(p["series"], p["n"], p["k"]): p for p in points if p["status"] == "ok"}
    if a in by_key and b in by_key:
        return by_key[a]["median_s"] / by_key[b]["median_s"]
    return None


def findings(report: dict[str, Any]) -> list[str]:
    """Bullet points computed from the results."""
    summ = report["summary"]
    points = report["points"]
    plan = report["plan"]
    lines = []
    fits = summ["fits"]
    if fits:
        parts = [f"{SERIES_BY_NAME[name].label}: {f['slope']:.2f}" for name, f in fits.items()]
        lines.append("Slope of log(time) on log(N·K) over the points with N·K ≥ 1e8 (1 = linear in N·K): "
                     + "; ".join(parts) + ".")
    largest = summ.get("largest_memmap")
    if largest:
        names = {"ts": "TemperatureScaling", "pacs": "PACSCalibrator", "ece": "ECE", "ace": "ACE"}
        peaks = ", ".join(f"{names[m]} {v:.0f} MB" for m, v in largest["peak_extra_mb"].items())
        totals = ", ".join(f"{v:.0f} MB" for v in largest["peak_rss_mb"].values())
        lines.append(
            f"Largest memory-mapped input: {_fmt_int(largest['n'])} x {_fmt_int(largest['k'])} float32 "
            f"({largest['data_mb'] / 1024:.1f} GiB on disk). Peak extra resident memory of the call: {peaks} "
            f"(whole child process at its peak, interpreter and libraries included: {totals})."
        )
    worst = summ.get("max_peak_extra_mb_memmap")
    if worst:
        lines.append(f"Largest peak extra memory of any memory-mapped point: {worst['value']:.0f} MB "
                     f"({SERIES_BY_NAME[worst['series']].label}, N = {_fmt_int(worst['n'])}, "
                     f"K = {_fmt_int(worst['k'])}).")
    ts_k = [p for p in points if p["series"] == "ts-memmap-k" and p["status"] == "ok" and "peak_extra_mb" in p]
    if ts_k:
        widest = max(ts_k, key=lambda p: p["k"])
        lines.append(
            f"TemperatureScaling's memory grows with K, not N: its Newton iteration starts from a strided subsample "
            f"of 4 096 rows held in memory ({widest['peak_extra_mb']:.0f} MB extra at K = {_fmt_int(widest['k'])}). "
            "PACSCalibrator and the ACE add a few float64 vectors of length N (8 bytes per sample each)."
        )
    n_ref = max((n for n in plan["n_values"] if n <= plan["array_max_n"]), default=None)
    if n_ref is not None:
        k = plan["k_for_n"]
        parts = []
        for name, label in (("ts", "TemperatureScaling"), ("ece", "ECE")):
            r = _ratio(points, (f"{name}-memmap", n_ref, k), (f"{name}-array", n_ref, k))
            if r is not None:
                parts.append(f"{label} {r:.1f}x")
        if parts:
            lines.append(
                f"Time of the memory-mapped call over the same call on the array in memory, at N = {_fmt_int(n_ref)}: "
                f"{', '.join(parts)}. Streaming adds the copies out of the page cache (every pass reads the file "
                "again); these are single runs on a machine shared with other jobs, so treat the ratios "
                "as rough."
            )
    n_max = max(plan["n_values"])
    r = _ratio(points, ("pacs-memmap", n_max, plan["k_for_n"]), ("ts-memmap", n_max, plan["k_for_n"]))
    if r is not None:
        lines.append(
            f"PACSCalibrator takes {r:.0f}x TemperatureScaling's time at N = {_fmt_int(n_max)}: it first fits "
            "temperature scaling, then every L-BFGS-B evaluation is one more pass, computed in float64 "
            "(TemperatureScaling's 2-3 Newton passes run in float32)."
        )
    names = {"ts": "TemperatureScaling", "pacs": "PACSCalibrator"}
    ram_mb = (report["environment"].get("memory_gb") or 0) * 1024
    for c in summ.get("dask", []):
        workers = ", ".join(f"{v:.0f}" for v in c["worker_peak_extra_mb"] or [])
        share = f", {c['data_mb'] / ram_mb:.0%} of the machine's {ram_mb / 1024:.0f} GiB RAM" if ram_mb else ""
        lam = f", λ {c['lambda_rel_diff']:.1e}" if "lambda_rel_diff" in c else ""
        lines.append(
            f"Dask, {names[c['method']]} at N = {_fmt_int(c['n'])}, K = {_fmt_int(c['k'])} "
            f"({c['data_mb'] / 1024:.2f} GiB of float32 logits{share}): {c['dask_s']:.3g} s against "
            f"{c['memmap_s']:.3g} s memory-mapped ({c['time_ratio']:.2f}x); peak extra memory per worker "
            f"{workers} MB, of the client {c['client_peak_extra_mb']:.0f} MB (memory-mapped call: "
            f"{c['memmap_peak_extra_mb']:.0f} MB); relative difference of the fit from the memory-mapped one: "
            f"T {c['rel_diff']:.1e}{lam}."
        )
    if summ.get("dask"):
        lines.append(
            "The Dask rows run on the same 2-core machine as the rest (the workers' two processes share its "
            "cores; a file smaller than RAM is read from the page cache), so they measure Dask's overhead, not a speed-up: on a "
            "cluster each worker reads and reduces its own chunks, and only a few floats per chunk and pass "
            "travel. "
            "A worker's memory is the chunks it holds at once (read ahead of their reductions by dask's "
            "scheduling: up to about ten 64 MB chunks here) and the kernel's copy of one chunk; it does not "
            "grow with N beyond that, and the worker's memory limit (4 GiB here) caps it."
        )
    past = [c for c in summ.get("dask", []) if ram_mb and c["data_mb"] > ram_mb and c["method"] == "ts"]
    if past:
        c = max(past, key=lambda c: c["n"])
        lines.append(
            f"Past the machine's memory: the {c['data_mb'] / 1024:.1f} GiB logits store (N = {_fmt_int(c['n'])}) is "
            f"{c['data_mb'] / ram_mb:.2f}x the {ram_mb / 1024:.0f} GiB of RAM, so no page cache holds it and every "
            f"pass reads the disk again. TemperatureScaling fitted it memory-mapped in {c['memmap_s']:.3g} s "
            f"({c['memmap_peak_extra_mb']:.0f} MB extra) and through Dask in {c['dask_s']:.3g} s "
            f"({c['time_ratio']:.2f}x); the two temperatures differ by {c['rel_diff']:.1e} (relative)."
        )
    elif summ.get("dask"):
        lines.append("No Dask row here is larger than the machine's memory (see the rerun commands for the one that is).")
    eq = summ["equality"]
    if eq:
        worst_eq = max(eq, key=lambda c: c["rel_diff"])
        if worst_eq["rel_diff"] == 0:
            lines.append(f"Memory-mapped and in-memory results are identical (bit for bit) in all {len(eq)} pairs "
                         "(fitted temperatures and ECE values).")
        else:
            lines.append(f"Memory-mapped and in-memory results agree: largest relative difference "
                         f"{worst_eq['rel_diff']:.1e} over {len(eq)} pairs ({worst_eq['method'].upper()} at "
                         f"N = {_fmt_int(worst_eq['n'])}).")
    return lines


def results_markdown(report: dict[str, Any], fig_prefix: str) -> str:
    points = report["points"]
    lines = ["## Findings", ""] + [f"- {line}" for line in findings(report)] + [""]
    lines += ["## N sweep (K = {})".format(_fmt_int(report["plan"]["k_for_n"])), "",
              markdown_table(HEADERS, table_rows(points, "n")), ""]
    lines += ["## K sweep (N = {})".format(_fmt_int(report["plan"]["n_for_k"])), "",
              markdown_table(HEADERS, table_rows(points, "k")), ""]
    lines += [
        "`median s`: wall time of the call (median of the repeats); `ns / element`: that time over N·K; "
        "`peak extra MB`: highest resident memory during the call minus the resident memory just before it "
        "(for `in memory` rows the data are already loaded; for Dask rows the client's, the workers' are in the "
        "findings); `iter.`: Newton passes (TemperatureScaling) or "
        "L-BFGS-B iterations (PACSCalibrator); `value`: the fitted temperature (and PACS's λ) or the metric.",
        "",
        "## Figures",
        "",
        f"![Time against N·K, log-log, with a slope-1 guide]({fig_prefix}bench-scale-time.png)",
        "",
        f"![Peak extra resident memory against the size of the data]({fig_prefix}bench-scale-memory.png)",
        "",
        *([f"![Memory-mapped file or Dask: time and peak memory per process at the largest Dask point]"
           f"({fig_prefix}scale-out-dask.png)", ""] if report["summary"].get("dask") else []),
        "## Environment",
        "",
        _env_line(report["environment"]) + ".",
        "",
        "Runs that produced these points: " + "; ".join(
            f"`{r['command']}` at {r['created']} (1-min load average {r['load_start']} at start, "
            f"{r['load_end']} at end)"
            for r in _runs_in_use(report)) + ".",
    ]
    return "\n".join(lines) + "\n"


def _runs_in_use(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs whose points are still in the results (a --merge run replaces earlier points)."""
    used = {p.get("run") for p in report["points"]}
    return [r for r in report["runs"] if r["created"] in used or None in used]


def method_paragraph(report: dict[str, Any]) -> str:
    plan = report["plan"]
    return (
        "The script `benchmarks/bench_scale.py` times, each point in a fresh child process, "
        "`TemperatureScaling().fit`, `PACSCalibrator().fit`, `expected_calibration_error` and "
        "`adaptive_calibration_error` on float32 data that grows in the number of samples N "
        f"({_fmt_int(min(plan['n_values']))} to {_fmt_int(max(plan['n_values']))} at K = {_fmt_int(plan['k_for_n'])}) "
        f"and in the number of classes K ({_fmt_int(min(plan['k_values']))} to {_fmt_int(max(plan['k_values']))} at "
        f"N = {_fmt_int(plan['n_for_k'])}). The data are `.npy` files opened with `np.load(path, mmap_mode=\"r\")`: "
        "precal reads a 2-D `numpy.memmap` block by block with ordinary file reads, so the process never maps the "
        "file into its memory; TemperatureScaling and the ECE are also run on the same data loaded into memory, up "
        f"to N = {_fmt_int(plan['array_max_n'])}. Logits are `s_i * (3 * onehot(y) + N(0, 1))` with a per-sample "
        f"scale `s_i ~ U{SCALE_RANGE}`; probabilities are their float32 softmax. Each point is one call after a small "
        "warm-up (median of 3 where N·K ≤ 1e8). Peak memory is the kernel's resident high-water mark of the child "
        "(`VmHWM`), reset just before the call (`/proc/self/clear_refs`), minus the resident size at that moment. "
        "The machine was shared with other jobs while this ran, so the times carry noise of tens of percent "
        "(see the load averages under Environment); the slopes and the memory bounds are the robust part."
        + (f" The Dask rows (N = {', '.join(_fmt_int(n) for n in (*plan.get('dask_n', ()), *plan.get('past_ram_n', ())))})"
           " fit the same logits "
           "file as a `dask.array` whose every chunk (64 MB) is read by its own task from the file's rows, through a "
           f"`distributed.LocalCluster` of {DASK_WORKERS} worker processes with one thread each; each worker's "
           "resident memory is sampled every 50 ms during the fit (psutil). When to use which: "
           "[Scaling out](scaling-out.md)." if any(p["source"] == "dask" for p in report["points"]) else "")
    )


def docs_page(report: dict[str, Any]) -> str:
    return "\n".join([
        "# Scale benchmark: fit time and memory from 10 thousand to 7 million samples",
        "",
        "<!-- Generated by benchmarks/bench_scale.py from its results; do not edit by hand. -->",
        "",
        method_paragraph(report),
        "",
        "How to use it: pass the memory-mapped array itself, `TemperatureScaling().fit(np.load(\"logits.npy\", "
        "mmap_mode=\"r\"), y)`, `PACSCalibrator().fit(...)` likewise, and "
        "`expected_calibration_error(y, np.load(\"proba.npy\", mmap_mode=\"r\"))` for any metric of "
        "`precal.metrics` except `calibration_error_ci`. Probabilities of a logits file come from `predict_proba` "
        "applied block by block into an `np.lib.format.open_memmap` file. Streamed are C-ordered float16/32/64 "
        "arrays of a file opened read-only or shared (`mode` `r`, `r+`, `w+`) and their row slices; Fortran-ordered, "
        "strided or copy-on-write (`mode=\"c\"`) memmaps are read through the mapping (same results, memory not "
        "bounded). Torch tensors are fitted on their own device instead (see the calibrators' docs).",
        "",
        "To rerun (from the repository root):",
        "",
        "```bash",
        RERUN_COMMAND + "             # full run (1-2 h on one core, ~45 GB of temporary files)",
        RERUN_COMMAND + " --quick     # small smoke test, writes to a temporary directory",
        RERUN_COMMAND + " --n 2000000 --series ts-memmap --merge --keep-data  # one point, merged into the results",
        RERUN_COMMAND + " --n 1000000 --series ts-memmap,ts-dask,pacs-memmap,pacs-dask --merge  # Dask rows + reference",
        RERUN_COMMAND + " --n 7000000 --series ts-memmap,ts-dask --merge  # past RAM: 26 GiB of logits (~28 GB disk)",
        RERUN_COMMAND + " --render-only  # rewrite this page and the figures from benchmarks/results/bench_scale.json",
        "```",
        "",
        f"Results: `benchmarks/results/{RESULTS_NAME}.json` (every number) and `benchmarks/results/{RESULTS_NAME}.md`.",
        "",
        results_markdown(report, "figures/"),
    ])


def results_md(report: dict[str, Any]) -> str:
    title = "# precal scale benchmark" + (" (quick smoke test)" if report["quick"] else "")
    return f"{title}\n\nGenerated by `{RERUN_COMMAND}`; see `docs/benchmarks-scale.md`.\n\n" + results_markdown(
        report, "../../docs/figures/" if not report["quick"] else "")


def make_figures(report: dict[str, Any], fig_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig_dir.mkdir(parents=True, exist_ok=True)
    points = [p for p in report["points"] if p["status"] == "ok"]
    colors = {"ts": "C0", "pacs": "C3", "ece": "C2", "ace": "C1"}
    markers = {"n": "o", "k": "s"}

    def draw(ax: Any, key: str) -> None:
        for s in SERIES:
            pts = sorted((p for p in points if p["series"] == s.name and key in p), key=lambda p: p["elements"])
            if not pts or s.source == "dask":  # the Dask rows have their own figure
                continue
            style = "-" if s.source == "memmap" else ":"
            if s.sweep == "k":
                style = "--"
            ax.plot([p["elements"] for p in pts], [p[key] for p in pts], style, marker=markers[s.sweep],
                    color=colors[s.method], label=s.label, markersize=4)

    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    draw(ax, "median_s")
    ref = [p for p in points if p["series"] == "ts-memmap" and p["elements"] >= FIT_MIN_ELEMENTS]
    if ref:
        x = np.array([min(p["elements"] for p in points), max(p["elements"] for p in points)], dtype=float)
        anchor = max(ref, key=lambda p: p["elements"])
        ax.plot(x, anchor["median_s"] * x / anchor["elements"], color="0.6", lw=0.8, label="slope 1 (∝ N·K)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N · K (elements)")
    ax.set_ylabel("wall time of the call (s)")
    ax.set_title("Fit and metric time grows linearly in N · K")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    time_path = fig_dir / "bench-scale-time.png"
    fig.savefig(time_path, dpi=FIG_DPI)

    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    draw(ax, "peak_extra_mb")
    x = np.array([min(p["elements"] for p in points), max(p["elements"] for p in points)], dtype=float)
    ax.plot(x, x * 4 / 2**20, color="0.6", lw=0.8, label="size of the float32 data")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N · K (elements)")
    ax.set_ylabel("peak extra resident memory of the call (MB)")
    ax.set_ylim(bottom=1.0)
    ax.set_title("Peak extra memory stays far below the size of memory-mapped data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    mem_path = fig_dir / "bench-scale-memory.png"
    fig.savefig(mem_path, dpi=FIG_DPI)
    paths = [time_path, mem_path]
    checks = report["summary"].get("dask") or []
    if checks:
        paths.append(_dask_figure(checks, fig_dir, Figure))
        paths.append(_choice_figure(report, checks, fig_dir, Figure))
    return paths


def _choice_figure(report: dict[str, Any], checks: list[dict[str, Any]], fig_dir: Path, figure: Any) -> Path:
    """Which path to take: memmap, Dask or a mergeable metric state, each with its measured cost."""
    from matplotlib.patches import FancyBboxPatch

    n = max(c["n"] for c in checks)
    ts = next((c for c in checks if c["n"] == n and c["method"] == "ts"), checks[-1])
    largest = report["summary"].get("largest_memmap") or {}
    mm_peak = (largest.get("peak_extra_mb") or {}).get("ts")
    mm_text = (f"measured: TemperatureScaling on {_fmt_int(largest['n'])} x {_fmt_int(largest['k'])} float32\n"
               f"({largest['data_mb'] / 1024:.1f} GiB) with {mm_peak:.0f} MB extra memory" if mm_peak else "")
    workers = ", ".join(f"{v:.0f}" for v in ts["worker_peak_extra_mb"] or [])
    dask_text = (f"measured ({DASK_WORKERS} workers, one machine):\n{_fmt_int(ts['n'])} x {_fmt_int(ts['k'])} float32 "
                 f"({ts['data_mb'] / 1024:.1f} GiB),\n{workers} MB extra per worker;\n"
                 f"{ts['time_ratio']:.1f}x the memmap time here")
    columns = [
        ("memory-mapped .npy", "one machine's disk holds the data",
         "np.load(path, mmap_mode='r')\nfit / metric read it block by block;\nno extra dependency", mm_text, "C0"),
        ("dask.array", "chunked store (zarr, HDF5, shards)\nor more data than one disk/RAM",
         "fit / metric: one dask computation\nper pass, a few floats per chunk;\nworkers read their own chunks",
         dask_text, "C1"),
        ("CalibrationState", "data already sharded across the\nranks of a torch.distributed job",
         "update per batch on each rank;\none all_reduce of 3 + 3B + 2KB floats;\nmetrics only (no calibrator fit)",
         "exact merge: sums of sufficient\nstatistics (tested with gloo)", "C2"),
    ]
    fig = figure(figsize=(10.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 1)
    for i, (title, when, how, cost, color) in enumerate(columns):
        ax.add_patch(FancyBboxPatch((i + 0.04, 0.04), 0.92, 0.9, boxstyle="round,pad=0.01", fc="white", ec=color,
                                    lw=2))
        ax.text(i + 0.5, 0.88, title, ha="center", va="top", fontsize=12, weight="bold", color=color)
        ax.text(i + 0.5, 0.77, "use when: " + when, ha="center", va="top", fontsize=8.5)
        ax.text(i + 0.5, 0.55, how, ha="center", va="top", fontsize=8.5, family="monospace")
        ax.text(i + 0.5, 0.27, cost, ha="center", va="top", fontsize=8, style="italic", color="0.25")
    ax.set_title("Calibrating past one process's memory: which path", fontsize=11)
    path = fig_dir / "scale-out-choice.png"
    fig.savefig(path, dpi=FIG_DPI)
    return path


def _dask_figure(checks: list[dict[str, Any]], fig_dir: Path, figure: Any) -> Path:
    """Memory-mapped file vs Dask at the largest Dask N: wall time, and peak extra memory per process."""
    n = max(c["n"] for c in checks)
    rows = [c for c in checks if c["n"] == n]
    names = {"ts": "TemperatureScaling", "pacs": "PACSCalibrator"}
    fig = figure(figsize=(9.0, 4.2), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    x = np.arange(len(rows))
    ax_t.bar(x - 0.2, [c["memmap_s"] for c in rows], 0.4, color="C0", label="memmap, one process")
    ax_t.bar(x + 0.2, [c["dask_s"] for c in rows], 0.4, color="C1", label=f"Dask, {DASK_WORKERS} worker processes")
    for i, c in enumerate(rows):
        ax_t.annotate(f"{c['time_ratio']:.2f}x", (i + 0.2, c["dask_s"]), ha="center", va="bottom", fontsize=8)
    ax_t.set_xticks(x, [names[c["method"]] for c in rows])
    ax_t.set_ylabel("wall time of the fit (s)")
    ax_t.set_title(f"Fit time, N = {_fmt_int(n)}, K = {_fmt_int(rows[0]['k'])}", fontsize=10)
    ax_t.legend(fontsize=7)
    labels = ["memmap process", "Dask client"] + [f"Dask worker {i + 1}" for i in range(DASK_WORKERS)]
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = []
        for c in rows:
            if j == 0:
                values.append(c["memmap_peak_extra_mb"])
            elif j == 1:
                values.append(c["client_peak_extra_mb"])
            else:
                values.append((c["worker_peak_extra_mb"] or [0.0] * DASK_WORKERS)[j - 2])
        ax_m.bar(x - 0.4 + (j + 0.5) * width, [max(v or 0.0, 0.5) for v in values], width, color=f"C{j}",
                 label=label)
    ax_m.axhline(rows[0]["data_mb"], color="0.4", lw=0.8, ls="--", label="size of the logits")
    ax_m.set_yscale("log")
    ax_m.set_xticks(x, [names[c["method"]] for c in rows])
    ax_m.set_ylabel("peak extra resident memory (MB)")
    ax_m.set_title("Memory per process stays far below the data", fontsize=10)
    ax_m.legend(fontsize=7)
    path = fig_dir / "scale-out-dask.png"
    fig.savefig(path, dpi=FIG_DPI)
    return path


def write_outputs(report: dict[str, Any], out_dir: Path, docs_path: Path, fig_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    report["summary"] = summary(report)
    files = {
        out_dir / f"{RESULTS_NAME}.json": json.dumps(report, indent=2) + "\n",
        out_dir / f"{RESULTS_NAME}.md": results_md(report),
        docs_path: docs_page(report),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files) + make_figures(report, fig_dir)


def print_report(report: dict[str, Any]) -> None:
    for sweep, title in (("n", "N sweep"), ("k", "K sweep")):
        rows = table_rows(report["points"], sweep)
        if rows:
            print(f"\n{title}")
            print(text_table(HEADERS, rows))
    print()
    for line in findings(report | {"summary": summary(report)}):
        print("- " + line)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat; writes to a temp dir (< 1 min)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write bench_scale.{json,md}, the docs page and the figures here\n"
                             "(default: benchmarks/results/, docs/, docs/figures/; with --quick a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="threads per child (torch, OpenMP, BLAS); 0 = defaults")
    parser.add_argument("--series", default=",".join(s.name for s in SERIES),
                        help="comma-separated series to run (default all): " + ", ".join(SERIES_BY_NAME))
    parser.add_argument("--n", default=None, help="comma-separated N values to run (default: the plan's)")
    parser.add_argument("--k", default=None, help="comma-separated K values to run (default: the plan's)")
    parser.add_argument("--merge", action="store_true",
                        help="add the points to the existing bench_scale.json (same points are replaced)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the data files are written (default: <tmp>/precal-bench-scale)")
    parser.add_argument("--keep-data", action="store_true", help="keep the data files (for later --merge runs)")
    parser.add_argument("--render-only", action="store_true", help="rewrite markdown and figures from bench_scale.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data generator (default 0)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(results dir, docs page, figures dir)."""
    if args.out is not None:
        return args.out, args.out / "benchmarks-scale.md", args.out
    if args.quick:
        out = Path(tempfile.mkdtemp(prefix="precal-bench-scale-out-"))
        return out, out / "benchmarks-scale.md", out
    return DEFAULT_RESULTS_DIR, DEFAULT_DOCS_PAGE, DEFAULT_FIG_DIR


def _int_set(text: str | None) -> set[int] | None:
    return None if text is None else {int(float(v)) for v in text.split(",") if v.strip()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    out_dir, docs_path, fig_dir = output_paths(args)
    results_json = out_dir / f"{RESULTS_NAME}.json"
    if args.render_only:
        if not results_json.is_file():
            sys.exit(f"--render-only needs {results_json}; run the benchmark first.")
        report = json.loads(results_json.read_text(encoding="utf-8"))
        print_report(report)
        print("\nrewrote: " + ", ".join(str(p) for p in write_outputs(report, out_dir, docs_path, fig_dir)))
        return 0
    unknown = [s for s in args.series.split(",") if s not in SERIES_BY_NAME]
    if unknown:
        sys.exit(f"unknown series {unknown}; known: {list(SERIES_BY_NAME)}")
    plan = QUICK if args.quick else FULL
    points_todo = plan_points(plan, args.series.split(","), _int_set(args.n), _int_set(args.k))
    if not _has_dask() and any(s.source == "dask" for s, _, _ in points_todo):
        print("dask, distributed or psutil is not installed: skipping the Dask rows (pip install 'precal[dask]')")
        points_todo = [p for p in points_todo if p[0].source != "dask"]
    if not points_todo:
        sys.exit("no point selected (check --series, --n and --k against the plan)")
    if args.data_dir is not None:
        data_dir = args.data_dir
    elif args.quick:
        data_dir = Path(tempfile.mkdtemp(prefix="precal-bench-scale-data-"))
    else:
        data_dir = Path(tempfile.gettempdir()) / "precal-bench-scale"
    command = " ".join(["python", "benchmarks/bench_scale.py", *(argv if argv is not None else sys.argv[1:])])
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load_average()

    # the largest N of each K, so one file per K and kind serves every point
    paths_for_k, made = data_for_points(points_todo, data_dir, args.seed)

    todo = [(s, n, k, 1 if args.quick or n * k > SINGLE_RUN_ELEMENTS else 3) for s, n, k in points_todo]
    # one child per point, so each measures its own memory; --quick runs all in one child (a smoke test)
    batches = [todo] if args.quick else [[point] for point in todo]
    new_points = []
    try:
        for batch in batches:
            for s, n, k, r in batch:
                print(f"{s.name}: N = {n:,}, K = {k:,} (R={r})", flush=True)
            for point in run_points(batch, paths_for_k, args.threads):
                if point["status"] == "ok":
                    print(f"  {point['series']} N = {point['n']:,} K = {point['k']:,}: {point['median_s']:.3g} s, "
                          f"peak extra {point.get('peak_extra_mb', float('nan')):.0f} MB, value {point['value']:.6g}",
                          flush=True)
                else:
                    print(f"  {point['status']}: {point.get('note', '')}", flush=True)
                new_points.append(point | {"run": created})
    finally:
        if not args.keep_data:
            for path in made:
                path.unlink(missing_ok=True)
            if args.quick or (data_dir.exists() and not any(data_dir.iterdir())):
                shutil.rmtree(data_dir, ignore_errors=True)

    run = {"command": command, "created": created, "load_start": load_start, "load_end": _load_average()}
    report = {
        "benchmark": "precal scale: fit time and peak memory vs N and K, in memory and memory-mapped",
        "quick": args.quick, "seed": args.seed, "plan": asdict(plan), "threads": args.threads,
        "data": {"logits": "s_i * (margin * onehot(y) + N(0,1)), float32", "margin": MARGIN,
                 "scale_range": list(SCALE_RANGE), "proba": "float32 softmax of the logits"},
        "environment": environment(args.threads), "runs": [run], "points": new_points,
    }
    if args.merge and results_json.is_file():
        old = json.loads(results_json.read_text(encoding="utf-8"))
        keys = {(p["series"], p["n"], p["k"]) for p in new_points}
        report["points"] = [p for p in old["points"] if (p["series"], p["n"], p["k"]) not in keys] + new_points
        report["runs"] = old["runs"] + [run]
    print_report(report)
    written = write_outputs(report, out_dir, docs_path, fig_dir)
    print("\nwrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

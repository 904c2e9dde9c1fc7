"""Helpers shared by the benchmark scripts: a busy machine on demand, thread caps, tables.

``busy_machine(n)`` starts ``n`` background processes that spin on the CPU for as long as
a benchmark phase lasts. Each worker stops at the first of: the phase ending (the parent
sets an event), its hard deadline (wall clock, given at start) or its parent process
disappearing (checked every few milliseconds), so a worker can never outlive the
benchmark that started it, even if that one is killed. The parent waits until every
worker runs before it returns, and ends them (terminate, then kill) on the way out.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: Environment variables that size OpenMP and BLAS thread pools.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: What a busy worker does: ``"python"`` (integer arithmetic in the interpreter, no
#: shared libraries) or ``"numpy"`` (single-threaded 128 x 128 float64 matrix products).
BUSY_KINDS = ("python", "numpy")


def limit_threads(threads: int) -> None:
    """Cap torch, OpenMP and BLAS at ``threads`` threads for the rest of this process (0: no cap).

    The environment variables are inherited by child processes, which call this too.
    """
    if threads <= 0:
        return
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(limits=threads)


def _spin(kind: str, deadline: float, parent: int, stop: Any, ready: Any) -> None:
    """A busy worker: spin until ``stop`` is set, ``deadline`` (``time.time()``) passes or the parent is gone."""
    for var in THREAD_ENV_VARS:  # one thread each, whatever it computes
        os.environ[var] = "1"
    x, a = 1, None
    if kind == "numpy":
        import numpy as np

        a = np.random.default_rng(os.getpid()).standard_normal((128, 128))
    ready.put(os.getpid())
    while time.time() < deadline and os.getppid() == parent and not stop.is_set():
        if a is None:
            for _ in range(20_000):  # about 2 ms of interpreter work between checks
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        else:
            for _ in range(20):
                a = a @ a
                a /= abs(a).max()


@contextmanager
def busy_machine(n_workers: int, max_seconds: float, kind: str = "python") -> Iterator[list[int]]:
    """Keep ``n_workers`` CPU-bound processes spinning inside the ``with`` block.

    Parameters
    ----------
    n_workers : int
        Background processes (0: none, the block runs on a quiet machine).
    max_seconds : float
        Hard bound on each worker's life, counted from now: a worker stops by then even if
        this process never ends it.
    kind : {"python", "numpy"}
        What the workers compute (see :data:`BUSY_KINDS`).

    Yields
    ------
    list of int
        The workers' process ids.
    """
    if n_workers <= 0:
        yield []
        return
    if kind not in BUSY_KINDS:
        raise ValueError(f"kind must be one of {BUSY_KINDS}, got {kind!r}")
    ctx = mp.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
    stop, ready = ctx.Event(), ctx.Queue()
    deadline = time.time() + max_seconds
    procs = [ctx.Process(target=_spin, args=(kind, deadline, os.getpid(), stop, ready), daemon=True)
             for _ in range(n_workers)]
    try:
        for proc in procs:
            proc.start()
        pids = [ready.get(timeout=120) for _ in procs]  # every worker is spinning
        time.sleep(0.5)  # let the scheduler see the load
        yield pids
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=10)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def load_average() -> float | None:
    """1-minute load average (a shared machine shows other work here)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_marked_section(page: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between the ``begin`` and ``end`` marker lines of a docs page."""
    text = page.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{page} lacks the markers {begin!r} / {end!r}.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n\n{section}\n{end}{tail}", encoding="utf-8")


def write_results(out: Path, stem: str, title: str, report: dict[str, Any], section: str) -> list[Path]:
    """Write ``<stem>.json`` (the report) and ``<stem>.md`` (``title`` over ``section``) into ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(f"# {title}\n\n{section}", encoding="utf-8")
    return paths

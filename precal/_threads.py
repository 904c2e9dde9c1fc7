"""How many threads precal's work uses, and the user's say in it.

precal sizes its work to the CPUs the process may really use, not to the host's cores:

* **available CPUs** (:func:`available_cpus`): the CPU affinity of the process
  (``os.sched_getaffinity``), capped by the cgroup CPU quota when one is set (cgroup v2
  ``cpu.max``, cgroup v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, rounded down, at least 1).
  A Kubernetes pod or a ``docker run --cpus=2`` container on a 64-core host gets 2, where
  torch's default thread pool would start 32 or 64 threads.
* **the user's setting**: ``precal.set_config(n_threads=...)`` or, for a block of code,
  ``with precal.config_context(n_threads=...):`` (the scikit-learn pattern). ``None``, the
  default, means "the available CPUs".
* **the caller's own limits**: precal never uses more threads than the caller's torch
  (``torch.get_num_threads()``) and OpenMP/BLAS limits allow, so
  ``with threadpoolctl.threadpool_limits(1):`` (or ``torch.set_num_threads(1)``) makes
  precal single-threaded too.

:func:`thread_limits` applies the budget around a piece of work and restores the caller's
torch and BLAS settings afterwards; :func:`threaded` does the same for a whole function.
Work smaller than :data:`MIN_PARALLEL_ELEMENTS` runs on one thread: below it, starting
threads costs more than it saves. :func:`map_blocks` runs a function over independent
blocks on a small pool of Python threads, each block on one thread with single-threaded
torch kernels: a pass over the data then has one synchronisation point instead of one per
torch operation, so a thread that the OS deschedules on a busy machine delays the pass by
its own blocks only, instead of stalling every kernel's barrier. The blocks are fixed by
the data's shape, not by the thread count, and their results are combined in block order:
results are bit-identical for any number of threads.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

__all__ = [
    "get_config",
    "set_config",
    "config_context",
    "available_cpus",
    "cgroup_cpu_quota",
    "thread_budget",
    "thread_limits",
    "threaded",
    "map_blocks",
    "map_blocks_in_waves",
    "MIN_PARALLEL_ELEMENTS",
]

T = TypeVar("T")
R = TypeVar("R")

#: Below this many elements of work precal runs on one thread: a pass over fewer elements
#: takes well under a millisecond, less than a thread hand-off and a wake-up can save.
#: ``benchmarks/bench_speed.py`` measures the crossover (one pass of the temperature-scaling
#: derivatives on one and on two threads by size); on the shared 2-core project machine,
#: loaded by other work, two threads never paid below 2**19 elements. Provisional: rerun
#: the benchmark's quiet mode to place it on a quiet machine.
MIN_PARALLEL_ELEMENTS = 1 << 19

_UNCHANGED = object()
_DEFAULTS: dict[str, Any] = {"n_threads": None}
_global_config: dict[str, Any] = dict(_DEFAULTS)
_local = threading.local()


# --------------------------------------------------------------------------- configuration
def _config() -> dict[str, Any]:
    """This thread's live configuration (a copy of the global one on first use)."""
    if not hasattr(_local, "config"):
        _local.config = dict(_global_config)
    return _local.config


def get_config() -> dict[str, Any]:
    """precal's current configuration, as a new dict.

    Returns
    -------
    dict
        ``{"n_threads": int or None}``: the most threads precal's computations may use
        (``None``: as many as the process has CPUs, see :func:`set_config`).

    See Also
    --------
    set_config, config_context
    """
    return dict(_config())


def _check_n_threads(n_threads: Any) -> int | None:
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"n_threads must be None or an int >= 1, got {type(n_threads).__name__} {n_threads!r}.")
    if n_threads < 1:
        raise ValueError(f"n_threads must be None or an int >= 1, got {n_threads!r}.")
    return int(n_threads)


def set_config(n_threads: int | None | Any = _UNCHANGED) -> None:
    """Set precal's configuration for the rest of the session (this thread).

    Parameters
    ----------
    n_threads : int >= 1 or None, optional
        The most threads precal's computations (calibrator fits and predictions, metrics)
        may use. ``None`` (the default setting) means the CPUs this process may use: its
        CPU affinity capped by the cgroup CPU quota (a container's ``--cpus``), never the
        host's core count. Either way precal also stays within the caller's torch and
        OpenMP/BLAS limits (``torch.set_num_threads``, ``threadpoolctl.threadpool_limits``)
        and restores them after each call. Left unchanged when not given.

    Raises
    ------
    TypeError, ValueError
        ``n_threads`` is not ``None`` or an integer >= 1.

    See Also
    --------
    config_context : the same for a ``with`` block.
    get_config

    Examples
    --------
    >>> from precal._threads import get_config, set_config   # also precal.set_config
    >>> set_config(n_threads=1)
    >>> get_config()["n_threads"]
    1
    >>> set_config(n_threads=None)
    """
    config = _config()
    if n_threads is not _UNCHANGED:
        config["n_threads"] = _check_n_threads(n_threads)


@contextmanager
def config_context(*, n_threads: int | None | Any = _UNCHANGED) -> Iterator[None]:
    """Set precal's configuration inside a ``with`` block; the previous one returns on exit.

    Takes the same parameters as :func:`set_config`; contexts nest, the innermost wins.

    Examples
    --------
    >>> from precal._threads import config_context, get_config   # also precal.config_context
    >>> with config_context(n_threads=1):
    ...     get_config()["n_threads"]
    1
    """
    old = get_config()
    set_config(n_threads=n_threads)
    try:
        yield
    finally:
        _config().clear()
        _config().update(old)


# --------------------------------------------------------------------------- available CPUs
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """``{controller: path}`` from ``/proc/self/cgroup`` (``""`` is the cgroup v2 entry)."""
    text = _read(proc_cgroup) or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                out[controller] = parts[2]
    return out


def _with_ancestors(base: Path, relative: str) -> list[Path]:
    """``base / relative`` and each of its parents up to ``base`` (limits apply from every level)."""
    parts = [p for p in relative.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """The cgroup CPU bandwidth limit of this process in CPUs (``quota / period``), or ``None``.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1``: no limit), in the process's
    own cgroup (from ``proc_cgroup``) and in each of its ancestors up to ``root``, where a
    container sees its own limit; the smallest limit found applies.

    Parameters
    ----------
    root : path, default="/sys/fs/cgroup"
        Where the cgroup file systems are mounted (v2 at the root, or v1 controllers in
        ``cpu``, ``cpu,cpuacct`` or ``cpuacct,cpu`` below it).
    proc_cgroup : path, default="/proc/self/cgroup"
        The process's cgroup membership file.

    Returns
    -------
    float or None
        The limit in CPUs (e.g. ``1.5``), ``None`` without a limit or on a system without
        cgroups.
    """
    root = Path(root)
    own = _own_cgroups(Path(proc_cgroup))
    limits: list[float] = []
    for directory in _with_ancestors(root, own.get("", "/")):
        fields = (_read(directory / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            limits.append(_ratio(fields[0], fields[1]))
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        for directory in _with_ancestors(base, own.get("cpu", "/")):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None and quota.lstrip("-").isdigit() and int(quota) > 0:
                limits.append(_ratio(quota, period))
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def _ratio(quota: str, period: str) -> float:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return math.nan
    return q / p if q > 0 and p > 0 else math.nan


@functools.lru_cache(maxsize=8)
def available_cpus(root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int:
    """CPUs this process may use: its CPU affinity capped by the cgroup quota (rounded down), >= 1.

    A quota of 1.5 CPUs gives 1: a second busy thread would exhaust the quota early in every
    scheduling period and stall until the next one. The result is cached for the process;
    ``available_cpus.cache_clear()`` re-reads.

    Parameters
    ----------
    root, proc_cgroup : path
        See :func:`cgroup_cpu_quota`.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None and math.isfinite(quota):
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


# --------------------------------------------------------------------------- caller's limits
_controller_lock = threading.Lock()
_controller: Any = None


def _blas_controller() -> Any:
    """One ``threadpoolctl.ThreadpoolController`` per process (its library scan takes ~2 ms)."""
    global _controller
    with _controller_lock:
        if _controller is None or _controller[0] != os.getpid():
            from threadpoolctl import ThreadpoolController

            _controller = (os.getpid(), ThreadpoolController())
        return _controller[1]


def _caller_limit() -> int:
    """The fewest threads any of torch's pool and the loaded OpenMP/BLAS libraries may use now."""
    import torch

    limits = [torch.get_num_threads()]
    limits += [lib.num_threads for lib in _blas_controller().lib_controllers]
    return max(1, min(x for x in limits if x is not None and x >= 1))


def thread_budget(size: int | None = None) -> int:
    """How many threads precal work of ``size`` elements may use now.

    1 when ``size < MIN_PARALLEL_ELEMENTS``; else the configured ``n_threads`` (default:
    :func:`available_cpus`), capped by the caller's torch and OpenMP/BLAS limits.
    """
    if size is not None and size < MIN_PARALLEL_ELEMENTS:
        return 1
    configured = _config()["n_threads"]
    n = available_cpus() if configured is None else configured
    return max(1, min(n, _caller_limit()))


@contextmanager
def thread_limits(size: int | None = None, *, torch_threads: int | None = None,
                  blas_threads: int | None = None) -> Iterator[int]:
    """Run a block of precal work within its thread budget; restore the caller's settings after.

    Inside the block torch's intra-op pool has ``torch_threads`` threads (default: the
    budget) and every OpenMP/BLAS library at most the budget (via threadpoolctl, only where
    a library allows more); on exit the caller's values return, also after an exception.

    Parameters
    ----------
    size : int, optional
        Elements of work, for :func:`thread_budget`.
    torch_threads : int, optional
        Threads for torch's own pool; ``1`` when the block runs its own threads
        (:func:`map_blocks`).
    blas_threads : int, optional
        A lower cap for the BLAS libraries (numpy's and scipy's), e.g. ``1`` when the block's
        own threads call them or when their results must not depend on the thread count
        (OpenBLAS's Cholesky and products of a few hundred columns differ in the last bits
        between one and two threads).

    Yields
    ------
    int
        The budget.
    """
    import torch

    n = thread_budget(size)
    saved = torch.get_num_threads()
    want = n if torch_threads is None else max(1, min(torch_threads, n))
    # threadpoolctl also reaches torch's own OpenMP runtime, so the pools are set first and
    # torch's count last (torch.set_num_threads also sets the count new threads start with).
    blas = n if blas_threads is None else max(1, min(blas_threads, n))

    def cap(lib: Any) -> int:
        return blas if lib.user_api == "blas" else n

    pools = [lib for lib in _blas_controller().lib_controllers if (lib.num_threads or 1) > cap(lib)]
    saved_pools = [lib.num_threads for lib in pools]
    changed = bool(pools) or want != saved
    try:
        for lib in pools:
            lib.set_num_threads(cap(lib))
        if changed:
            torch.set_num_threads(want)
        yield n
    finally:
        for lib, value in zip(pools, saved_pools):
            lib.set_num_threads(value)
        if changed:
            torch.set_num_threads(saved)


def _work_size(args: Sequence[Any]) -> int | None:
    """Elements of the largest array-like (anything with a ``shape``) among ``args``."""
    sizes = [math.prod(shape) for shape in (getattr(a, "shape", None) for a in args) if isinstance(shape, tuple)]
    return max(sizes) if sizes else None


def threaded(func: Callable[..., R]) -> Callable[..., R]:
    """Decorate a function (or method) so that each call runs inside :func:`thread_limits`.

    The work size is the element count of the largest positional argument that has a
    ``shape`` (numpy array, torch tensor, memory-mapped rows).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        with thread_limits(_work_size(args)):
            return func(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- block pool
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (made anew after a fork)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="precal"))
        return _pool[2]


def map_blocks_in_waves(fn: Callable[[T], R], blocks: Sequence[T], n_threads: int, result_bytes: int,
                        wave_bytes: int = 1 << 25) -> Iterator[R]:
    """``fn(b)`` for each block, yielded in block order, with at most ``wave_bytes`` of results held.

    On one thread a plain loop (each result yielded as it is made); on several,
    :func:`map_blocks` over consecutive waves of blocks whose results (``result_bytes`` each)
    fit in ``wave_bytes`` (at least ``n_threads`` blocks per wave). The caller sums what it
    is given in order, so the sums do not depend on the number of threads, and the memory of
    partial results stays bounded however many blocks there are.
    """
    if n_threads <= 1 or len(blocks) <= 1:
        for block in blocks:
            yield fn(block)
        return
    wave = max(int(n_threads), wave_bytes // max(int(result_bytes), 1))
    for start in range(0, len(blocks), wave):
        yield from map_blocks(fn, blocks[start : start + wave], n_threads)


def map_blocks(fn: Callable[[T], R], blocks: Sequence[T], n_threads: int) -> list[R]:
    """``[fn(b) for b in blocks]``, on up to ``n_threads`` threads; results in block order.

    The calling thread works too; the others take the next unclaimed block as they become
    free, so a descheduled thread holds up only the block it is on. Call it inside
    :func:`thread_limits` with ``torch_threads=1`` so that each block's torch kernels run on
    the thread that took it. With one thread or one block it is a plain loop.
    """
    n = min(int(n_threads), len(blocks))
    if n <= 1:
        return [fn(b) for b in blocks]
    results: list[Any] = [None] * len(blocks)
    claim = itertools.count()

    def work() -> None:
        while (i := next(claim)) < len(blocks):  # next() on a count is atomic under the GIL
            results[i] = fn(blocks[i])

    futures = [_executor(n - 1).submit(work) for _ in range(n - 1)]
    try:
        work()
    finally:
        for future in futures:
            future.result()
    return results

"""Data-parallel sweeps under ``torch.distributed``: shard by whole batches, agree, gather.

:func:`~precal.emulate.sweep` uses these helpers when a process group is initialised
(``torchrun``, ``accelerate launch``, ``torch.distributed.init_process_group``):

* **sharding**: the ``B = ceil(n / batch_size)`` batches of the inputs are split into
  ``world_size`` contiguous runs, as :func:`numpy.array_split` splits ``range(B)`` (the
  first ``B mod world_size`` ranks get one batch more). Rank ``r`` emulates rows
  ``[b_r batch_size, min(b_{r+1} batch_size, n))``. Shards start on a batch boundary, so
  every row goes through the model in exactly the batch it meets in a single-process
  sweep with the same ``batch_size``: results are bit-identical even where a row's output
  depends on its batch (per-batch "current scaling" of 8-bit compute formats, kernels
  that pick their blocking by batch size);
* **agreement**, before any forward pass: every rank states its configs, settings, input
  length, first-batch structure, a digest of its first and last input rows and one of
  the model's weights; a rank that
  disagrees, or that failed its own checks, stops every rank with the same message (no
  rank is left waiting in a collective);
* **calibration**: every rank runs the *whole* calibration data through its own copy of
  the observers, and a digest of each calibrated model is compared across ranks before
  it sees the evaluation data;
* **gathering**: each config's shards are padded to the longest, ``all_gather``-ed as
  tensors (on the current CUDA device for NCCL, on the CPU otherwise) and concatenated
  in rank order, which is input order. Every rank gets the whole result.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["shard_bounds", "init_from_env", "RankFailedError"]


class RankFailedError(RuntimeError):
    """Another rank of a distributed sweep failed; its error is in the message."""


@dataclass(frozen=True)
class _Dist:
    """The process group a sweep runs in, and this process's place in it."""

    group: Any
    rank: int
    world_size: int


def resolve(distributed: bool | None, process_group: Any = None) -> _Dist | None:
    """The process group to shard over, or None for a single-process sweep.

    ``distributed=None`` (default) shards whenever ``torch.distributed`` is initialised
    with more than one process; ``True`` requires it; ``False`` never shards (each rank
    runs the whole sweep).
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}.")
    if distributed is False:
        if process_group is not None:
            raise ValueError("process_group was given with distributed=False; drop one of them.")
        return None
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if not initialised:
        if distributed or process_group is not None:
            raise ValueError(
                "distributed=True (or a process_group) needs an initialised torch.distributed process group, and "
                "there is none: launch with torchrun (or accelerate launch) and call "
                "torch.distributed.init_process_group(backend='gloo' on CPU or 'nccl' on GPUs) before sweep(), "
                "or leave distributed=None to run in one process.")
        return None
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise ValueError("This process is not a member of process_group.")
    world_size = dist.get_world_size(process_group)
    if world_size == 1:
        return None
    return _Dist(process_group, rank, world_size)


def shard_bounds(n_batches: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(first, stop)`` batch indices of ``rank``'s contiguous shard of ``n_batches`` batches.

    The split of :func:`numpy.array_split`: the first ``n_batches % world_size`` ranks get
    ``n_batches // world_size + 1`` batches, the others one fewer (possibly none).

    Examples
    --------
    >>> from precal.emulate.distributed import shard_bounds
    >>> [shard_bounds(5, 2, r) for r in range(2)]
    [(0, 3), (3, 5)]
    >>> [shard_bounds(1, 3, r) for r in range(3)]
    [(0, 1), (1, 1), (1, 1)]
    """
    if world_size < 1 or not 0 <= rank < world_size or n_batches < 0:
        raise ValueError(f"Need n_batches >= 0 and 0 <= rank < world_size, got n_batches={n_batches}, "
                         f"rank={rank}, world_size={world_size}.")
    base, extra = divmod(n_batches, world_size)
    first = rank * base + min(rank, extra)
    return first, first + base + (rank < extra)


def _n_rows(data: Mapping) -> int:
    lengths = {v.shape[0] for v in data.values() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim}
    if len(lengths) != 1:
        raise ValueError(f"A dict of inputs needs tensors with one common first dimension, got lengths "
                         f"{sorted(lengths)} for keys {sorted(data)}.")
    return lengths.pop()


def data_length(data: Any) -> tuple[str, int]:
    """``("rows", n)`` for a tensor, array or dict of tensors; ``("batches", n)`` for a sized
    iterable of batches (a list, a DataLoader). Refuses what cannot be sharded."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return "rows", int(data.shape[0]) if data.ndim else 0
    if isinstance(data, Mapping):
        return "rows", _n_rows(data)
    sampler = getattr(getattr(data, "batch_sampler", None), "sampler", None) or getattr(data, "sampler", None)
    if sampler is not None:
        from torch.utils.data import DistributedSampler, RandomSampler

        if isinstance(sampler, (DistributedSampler, RandomSampler)):
            kind = "a DistributedSampler" if isinstance(sampler, DistributedSampler) else "shuffle=True"
            raise ValueError(
                f"data is a DataLoader with {kind}: a distributed sweep shards the batches itself and needs the "
                "same batches in the same order on every rank. Pass the whole dataset in a DataLoader without a "
                "sampler and with shuffle=False.")
    try:
        return "batches", len(data)
    except TypeError:
        raise TypeError(f"A distributed sweep needs the length of data to shard it, and a "
                        f"{type(data).__name__} has none: pass a tensor, an array, a dict of tensors, a list of "
                        "batches or a DataLoader.") from None


class _BatchRange:
    """Batches ``first`` to ``stop - 1`` of a sized iterable of batches, re-iterable."""

    def __init__(self, data: Iterable, first: int, stop: int) -> None:
        self.data, self.first, self.stop = data, first, stop

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.data), self.first, self.stop)

    def __len__(self) -> int:
        return self.stop - self.first


def shard(data: Any, batch_size: int, ctx: _Dist) -> tuple[Any, int, int]:
    """This rank's contiguous shard of ``data`` in whole batches: ``(shard, n_batches, total_batches)``.

    Tensors, arrays and dicts of tensors are sliced (views, no copy); a list or tuple of
    batches is sliced; another sized iterable (a DataLoader) is iterated by every rank,
    which runs the model on its own batches only.
    """
    kind, n = data_length(data)
    total = -(-n // batch_size) if kind == "rows" else n
    first, stop = shard_bounds(total, ctx.world_size, ctx.rank)
    if kind == "rows":
        lo, hi = first * batch_size, min(stop * batch_size, n)
        if isinstance(data, Mapping):
            part = {k: (v[lo:hi] if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim else v)
                    for k, v in data.items()}
        else:
            part = data[lo:hi]
    elif isinstance(data, Sequence):
        part = data[first:stop]
    else:
        part = _BatchRange(data, first, stop)
    return part, stop - first, total


def _hash_tensors(items: Iterable[tuple[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in items:
        if isinstance(tensor, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(tensor))
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            continue
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        try:
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            if flat.dtype.is_complex:
                flat = torch.view_as_real(flat).reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError, NotImplementedError):  # tensor subclasses without plain storage
            h.update(b"unreadable")
    return h.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes)."""
    return _hash_tensors(module.state_dict(keep_vars=False).items())


def inputs_digest(data: Any, first: Any) -> str:
    """A digest of the first batch's first rows and, for a tensor, array or dict of tensors,
    of the last two rows: cheap evidence that every rank holds the same inputs (ranks that
    pass their own shard of a dataset differ here)."""
    batches = [first]
    if isinstance(data, (torch.Tensor, np.ndarray)):
        batches.append(data[-2:])
    elif isinstance(data, Mapping):
        batches.append({k: v[-2:] for k, v in data.items() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim})
    items = []
    for i, batch in enumerate(batches):
        if isinstance(batch, Mapping):
            items.extend((f"{i}.{k}", v[:2]) for k, v in sorted(batch.items())
                         if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim)
        else:
            items.append((str(i), batch[:2]))
    return _hash_tensors(items)


def _all_gather_object(ctx: _Dist, obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.group)
    return out


def _raise_for_errors(ctx: _Dist, errors: list[str | None], local: BaseException | None, what: str) -> None:
    """Raise on every rank when any rank failed: the original error where it happened."""
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    if local is not None:
        raise local
    rank, message = failed[0]
    raise RankFailedError(f"Rank {rank} of {ctx.world_size} failed {what}: {message}")


def agree(ctx: _Dist, check: Callable[[], tuple[Any, dict[str, Any]]]) -> Any:
    """Run the local checks on every rank, then make sure every rank passed and agrees.

    ``check()`` returns ``(result, plan)``; ``plan`` is a dict of strings and numbers that
    must be equal on every rank (configs, settings, input length, model digest). A rank
    whose check raised re-raises its own error; the others raise :class:`RankFailedError` naming
    it; ranks whose plans differ all raise ``ValueError`` naming the first field and each
    rank's value. One collective (``all_gather_object``), before any forward pass.
    """
    result, plan, error = None, None, None
    try:
        result, plan = check()
    except (ValueError, TypeError) as exc:
        error = exc
    gathered = _all_gather_object(ctx, ("error", f"{type(error).__name__}: {error}") if error else ("plan", plan))
    _raise_for_errors(ctx, [m if kind == "error" else None for kind, m in gathered], error, "its input checks")
    plans = [p for _, p in gathered]
    for key in plans[0]:
        values = [p.get(key) for p in plans]
        if any(v != values[0] for v in values[1:]):
            shown = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ValueError(f"The ranks disagree on the sweep's {key} ({shown}). Every rank must call sweep() with "
                             "the same model, data, configs and options; nothing was run.")
    return result


def check_calibration(ctx: _Dist, module: torch.nn.Module | None, config: str,
                      error: BaseException | None = None) -> None:
    """All ranks calibrated ``config`` to the same model (observer ranges, learned weights).

    ``error`` is what building this rank's model raised (``module`` is then None): every
    rank raises.
    """
    mine = ("error", f"{type(error).__name__}: {error}") if error is not None else ("digest", state_digest(module))
    gathered = _all_gather_object(ctx, mine)
    _raise_for_errors(ctx, [m if kind == "error" else None for kind, m in gathered], error,
                      f"to emulate config {config!r}")
    digests = [d for _, d in gathered]
    if any(d != digests[0] for d in digests[1:]):
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ValueError(
            f"Config {config!r} was calibrated to different values on rank 0 and rank(s) {differ}: every rank must "
            "see the same calibration_data in the same order (a DataLoader with shuffle=True or a "
            "DistributedSampler gives each rank its own batches). Nothing of this config was evaluated.")


def _collective_device(ctx: _Dist) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(ctx.group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(ctx: _Dist, local: np.ndarray | None, error: BaseException | None, config: str) -> np.ndarray:
    """The rows of every rank's shard, concatenated in rank order, on every rank.

    ``local`` is None for a rank with an empty shard; ``error`` is what this rank's forward
    pass raised (every rank then raises). Shards are padded to the longest and gathered
    with one ``all_gather`` of float32 tensors.
    """
    import torch.distributed as dist

    meta = ("error", f"{type(error).__name__}: {error}") if error is not None else \
        ("shape", None if local is None else tuple(local.shape))
    metas = _all_gather_object(ctx, meta)
    _raise_for_errors(ctx, [m if kind == "error" else None for kind, m in metas], error,
                      f"on config {config!r}")
    shapes = [m for _, m in metas]
    trailing = {s[1:] for s in shapes if s is not None}
    if len(trailing) != 1:
        raise ValueError(f"Config {config!r}: the ranks' logits have different shapes {shapes}; pass output= to "
                         "pick one row of logits per sample.")
    tail = trailing.pop()
    rows = [0 if s is None else s[0] for s in shapes]
    device = _collective_device(ctx)
    buffer = torch.zeros((max(rows), *tail), dtype=torch.float32, device=device)
    if local is not None and len(local):
        buffer[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(device)
    parts = [torch.empty_like(buffer) for _ in range(ctx.world_size)]
    dist.all_gather(parts, buffer, group=ctx.group)
    return torch.cat([p[:n] for p, n in zip(parts, rows)]).cpu().numpy()


@contextlib.contextmanager
def init_from_env(device: str) -> Iterator[tuple[str, int]]:
    """Join the process group that ``torchrun`` describes in the environment, for the CLI.

    With ``WORLD_SIZE`` > 1 in the environment and no group yet, initialise one (``gloo``
    for a CPU device, ``nccl`` for CUDA, where ``"cuda"`` becomes ``cuda:LOCAL_RANK``) and
    destroy it on exit. Yields ``(device, rank)``; outside torchrun ``(device, 0)``.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available():
        yield device, 0
        return
    if dist.is_initialized():
        yield device, dist.get_rank()
        return
    dev = torch.device(device)
    backend = "gloo"
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        backend = "nccl"
    dist.init_process_group(backend)
    try:
        yield str(dev), dist.get_rank()
    finally:
        dist.destroy_process_group()

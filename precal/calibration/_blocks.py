"""Row-shifted logits in blocks: the data layout of the temperature-scaling and PACS fits.

Both fits evaluate sums over samples of functions of ``softmax(beta_i z_i)`` many times
(one pass per Newton or L-BFGS-B step). :class:`ShiftedLogits` holds the logits for
those passes:

* every row is shifted by its largest logit, ``u = z - max_k z`` (so ``e^{beta u} <= 1``),
  and its true-class entry ``u_y`` and weight are kept beside it;
* rows are grouped in blocks of about ``2**18`` elements (1 MB of float32, a core's L2
  cache), the unit of work of a pass;
* in-memory inputs of up to ``2**27`` elements keep their shifted blocks for all passes;
  larger ones, and memory-mapped files (:class:`~precal._chunks.FileRows`), are read and
  shifted block by block in every pass, so memory stays bounded;
* with up to 32 classes a kept block is stored class-major, ``(K, rows)``, so that the sums
  over classes run along the long axis, several times faster than short per-row sums;
* the exponentials are taken as ``exp2`` of pre-scaled arguments (:data:`LOG2E`), and
  block-sized temporaries live in per-thread buffers (:func:`scratch`);
* on the CPU the blocks of a pass are shared among precal's threads
  (:func:`precal._threads.map_blocks`); each block's result becomes Python floats at once
  and the totals are exact sums (``math.fsum``), so results do not depend on the number of
  threads. On other devices the blocks run in order on the device.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch

from .._chunks import FileRows, row_blocks, rows_per_block
from .._numerics import as_tensor
from .._threads import map_blocks

__all__ = ["Block", "ShiftedLogits", "WorkBuffers", "scratch", "tensor_blocks", "CHUNK_ELEMENTS", "CACHE_ELEMENTS",
           "LOG2E"]

#: Elements per block (1 MB of float32): the unit of work of a pass and of its threads. A
#: block and its work buffers stay in a core's L2 cache; in ``bench_speed.py``'s block-size
#: pass, 2**18 and 2**19 were equal within noise and 2**16 / 2**17 were 25-50 % slower, and
#: smaller blocks balance threads better when the OS deschedules one of them.
CHUNK_ELEMENTS = 1 << 18

#: Up to this many elements (512 MB of float32) the shifted logits are kept for all passes.
CACHE_ELEMENTS = 1 << 27

#: Up to this many classes a kept block is stored class-major, ``(K, rows)``.
CLASS_MAJOR_MAX_K = 32

_F64 = torch.float64


class Block(NamedTuple):
    """One block of shifted logits: ``u`` with classes along ``class_dim``, the true-class
    entries ``u_true`` (float64) and the weights ``w`` (float64 or ``None``) of its rows."""

    u: torch.Tensor
    class_dim: int
    u_true: torch.Tensor
    w: torch.Tensor | None


Span = tuple[int, int]


#: ``log2(e)``: ``e^x = 2^(x log2 e)``, and torch's ``exp2`` is 2-2.5x faster than its
#: ``exp`` on the CPU (float32: 85 vs 224 us per 2**18 elements on the project machine;
#: float64: 245 vs 443 us), at the same accuracy (both within an ulp); the scale folds
#: into the multiplication by ``beta`` that comes first anyway.
LOG2E = math.log2(math.e)


class WorkBuffers:
    """Work buffers reused by each thread, one per ``(slot, dtype)``, for as long as this object lives.

    ``self(slot, like, dtype=None)`` is a buffer shaped like ``like`` (contiguous, ``dtype``
    or ``like``'s). Passes allocate their block-sized temporaries here: a fresh 1-2 MB tensor
    per block and pass costs page faults that made a float64 PACS block 5x slower than the
    same arithmetic in reused buffers. ``slot`` tells apart the buffers that one block needs
    at the same time. Off the CPU this is a plain ``torch.empty`` (the device's caching
    allocator already reuses memory).

    The owner chooses how long the memory stays: the module's :data:`scratch` keeps at least
    :data:`CHUNK_ELEMENTS` per slot for the life of each thread (the temperature-scaling and
    PACS passes, many small fits); a Dirichlet pass makes its own and frees it with the pass
    (its chunks hold megabytes per thread).

    Parameters
    ----------
    min_elements : int, default 0
        Smallest buffer allocated, so that blocks of different sizes share one buffer.
    """

    def __init__(self, min_elements: int = 0) -> None:
        self._min_elements = int(min_elements)
        self._local = threading.local()

    def __call__(self, slot: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = like.dtype if dtype is None else dtype
        if like.device.type != "cpu":
            return torch.empty(like.shape, dtype=dtype, device=like.device)
        buffers = self._local.__dict__
        n = like.numel()
        buffer = buffers.get((slot, dtype))
        if buffer is None or buffer.numel() < n:
            buffer = buffers[(slot, dtype)] = torch.empty(max(n, self._min_elements), dtype=dtype, device=like.device)
        return buffer[:n].view(like.shape)

    def clear(self) -> None:
        """Free the calling thread's buffers."""
        self._local.__dict__.clear()


#: The buffers of the temperature-scaling and PACS passes, kept for the life of each thread.
scratch = WorkBuffers(CHUNK_ELEMENTS)


def tensor_blocks(logits: torch.Tensor | FileRows, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block)`` over the rows of a tensor (views on its device) or a :class:`FileRows`
    (CPU tensors over a buffer that the next block overwrites)."""
    for start, block in row_blocks(logits, rows):
        yield start, as_tensor(block) if isinstance(block, np.ndarray) else block


class ShiftedLogits:
    """Logits ``z`` (a float32/float64 tensor or a :class:`FileRows`) with labels and weights,
    as blocks of shifted rows; see the module docstring.

    Parameters
    ----------
    z : torch.Tensor or FileRows of shape (n, K)
    y_idx : torch.Tensor of int64, shape (n,), on ``z``'s device
    w : torch.Tensor of float64, shape (n,), or None
    n_threads : int
        Threads a pass may use (passes over a file or on a non-CPU device use one).
    keep : bool, default=True
        Keep the shifted blocks of in-memory inputs of up to ``CACHE_ELEMENTS`` elements.
    """

    def __init__(
        self, z: torch.Tensor | FileRows, y_idx: torch.Tensor, w: torch.Tensor | None, n_threads: int, *, keep: bool = True
    ) -> None:
        n, k = z.shape
        rows = rows_per_block(k, CHUNK_ELEMENTS)
        self.source = z
        self.y_idx = y_idx
        self.w = w
        #: the weights' total (``n`` without weights): sums over samples divided by it are means
        self.denom = float(n) if w is None else float(w.sum())
        self.ranges: list[Span] = [(start, min(start + rows, n)) for start in range(0, n, rows)]
        in_memory = isinstance(z, torch.Tensor)
        self.on_cpu = not in_memory or z.device.type == "cpu"
        self.n_threads = n_threads if in_memory and self.on_cpu else 1
        self.kept: list[Block] | None = None
        if keep and in_memory and n * k <= CACHE_ELEMENTS:
            shift = self._block_class_major if k <= CLASS_MAJOR_MAX_K else self._block
            self.kept = map_blocks(lambda r: shift(z[r[0] : r[1]], r[0]), self.ranges, self.n_threads)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape)

    def subsample(self, stride: int) -> ShiftedLogits:
        """Rows ``0, stride, 2 stride, ...`` (read from the file for a :class:`FileRows`), kept, one thread."""
        z, yi, w = self.source, self.y_idx, self.w
        if isinstance(z, FileRows):
            sub_z = as_tensor(z.take(np.arange(0, z.shape[0], stride)))
        else:
            sub_z = z[::stride]
        return ShiftedLogits(sub_z, yi[::stride], None if w is None else w[::stride], 1)

    def _block(self, z: torch.Tensor, start: int) -> Block:
        """Rows ``start:start + len(z)`` shifted, with their true-class entries and weights."""
        stop = start + z.shape[0]
        u = z - z.amax(dim=1, keepdim=True)
        u_true = u.gather(1, self.y_idx[start:stop, None])[:, 0].to(_F64)
        return Block(u, 1, u_true, None if self.w is None else self.w[start:stop])

    def _block_in_scratch(self, z: torch.Tensor, start: int) -> Block:
        """:meth:`_block` with ``u`` in this thread's scratch buffer (valid until its next block)."""
        stop = start + z.shape[0]
        u = torch.sub(z, z.amax(dim=1, keepdim=True), out=scratch(2, z))
        u_true = u.gather(1, self.y_idx[start:stop, None])[:, 0].to(_F64)
        return Block(u, 1, u_true, None if self.w is None else self.w[start:stop])

    def _block_class_major(self, z: torch.Tensor, start: int) -> Block:
        """:meth:`_block` stored class-major, ``u`` of shape ``(K, rows)``."""
        stop = start + z.shape[0]
        # stacking the columns copies faster than a transposing copy for up to ~16 columns
        u = torch.stack(z.unbind(1)) if z.shape[1] <= 16 else z.t().contiguous()
        u.sub_(u.amax(dim=0))
        u_true = u.gather(0, self.y_idx[None, start:stop])[0].to(_F64)
        return Block(u, 0, u_true, None if self.w is None else self.w[start:stop])

    def each(self, fn: Callable[[Block, Span], Any]) -> list[Any]:
        """``fn(block, (start, stop))`` for every block, in block order (on up to ``n_threads`` threads)."""
        if self.kept is not None:
            kept, ranges = self.kept, self.ranges
            return map_blocks(lambda i: fn(kept[i], ranges[i]), range(len(kept)), self.n_threads)
        return self.each_raw(lambda z, span: fn(self._block_in_scratch(z, span[0]), span))

    def each_raw(self, fn: Callable[[torch.Tensor, Span], Any]) -> list[Any]:
        """``fn(z_block, (start, stop))`` on the unshifted rows of every block, in block order."""
        if isinstance(self.source, FileRows):
            rows = self.ranges[0][1] - self.ranges[0][0]
            return [fn(z, (start, start + z.shape[0])) for start, z in tensor_blocks(self.source, rows)]
        z = self.source
        return map_blocks(lambda r: fn(z[r[0] : r[1]], r), self.ranges, self.n_threads)

    def totals(self, fn: Callable[[Block, Span], torch.Tensor]) -> list[float]:
        """The totals over the blocks of ``fn(block, span)``, a short float64 vector.

        On the CPU each block's result becomes Python floats at once (a block's buffers are
        then freed whole, so the heap does not fragment over a long pass) and the totals are
        exact sums (``math.fsum``); on other devices the results are summed on the device in
        block order.
        """
        if not self.on_cpu:
            return torch.stack(self.each(fn)).sum(0).tolist()
        parts = self.each(lambda block, span: fn(block, span).tolist())
        return [math.fsum(column) for column in zip(*parts)]

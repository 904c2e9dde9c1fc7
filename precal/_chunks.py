"""Row blocks: read a 2-D array block by block; memory-mapped files through their mapping, page by page.

The pages of a ``numpy.memmap`` that have been read stay mapped into the process and count
in its resident memory until the kernel evicts them, so a plain pass over a memory-mapped
file grows the resident set to the file's size. :class:`FileRows` reads the same rows from
the mapping itself, one block at a time: it copies a block out of the mapped memory into
one reusable buffer and then tells the kernel that the process no longer needs those pages
(``madvise(MADV_DONTNEED)`` on the page-aligned range, through the memmap's own
``mmap.mmap`` object). For a shared file mapping this only unmaps the pages from the
process: the data stay in the kernel's page cache (shared, reclaimable) and in the file,
and a later read of the same rows maps them in again. The process therefore holds about
one block at a time, whatever the file size.

Reading from the mapping, never from the file's path, means the rows are those of the
array the caller holds: a file replaced (``os.replace``) or deleted after
``np.load(..., mmap_mode="r")`` does not change what is read, since the mapping keeps the
original file's data alive. (A file truncated in place under a live mapping makes any
reader of that mapping, numpy included, fail with ``SIGBUS``: that is the operating
system's rule for mappings, not something a reader can guard against.) On platforms
without ``MADV_DONTNEED`` the blocks are still copied from the mapping; only the release
is skipped.

:func:`file_rows` decides which arrays are read this way ("streamed"): C-ordered 2-D views
of a file mapped by ``numpy.memmap`` (``np.memmap(...)``, ``np.load(..., mmap_mode="r")``
and basic slices of them) in a shared mode (``"r"``, ``"r+"``, ``"w+"``), of dtype
float16, float32 or float64 in native byte order. Other arrays are read through the
mapping as ordinary arrays: copy-on-write (``mode="c"``) mappings, whose private pages
releasing would discard, and Fortran-ordered or strided views, whose rows are not
contiguous in memory.

:func:`row_blocks` gives the same ``(start, block)`` iteration over numpy arrays, torch
tensors (views, on the tensor's device) and :class:`FileRows`, so a computation is written
once for all three.
"""

from __future__ import annotations

import mmap
from typing import Any, Iterator

import numpy as np

__all__ = ["FileRows", "file_rows", "row_blocks", "rows_per_block", "take_rows", "BLOCK_ELEMENTS"]

#: Largest block a :class:`FileRows` reads, in elements (4 MB of float32): the buffer and the
#: few temporaries a computation makes per block stay small next to any file worth streaming.
BLOCK_ELEMENTS = 1 << 20

#: Rows gathered by :meth:`FileRows.take` between two releases of the pages they touched.
_TAKE_GROUP = 64

#: A read fault on a file mapping also maps the neighbouring cached pages of an aligned
#: window (Linux ``fault_around_bytes``, 64 KiB by default), some of them before the block:
#: each release reaches this far back too, so those pages do not pile up block after block.
_FAULT_AROUND_BYTES = 1 << 16

_STREAMED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_SHARED_MODES = ("r", "r+", "w+")


class FileRows:
    """The rows of a C-ordered ``(n, k)`` memory-mapped array, read block by block from its mapping.

    Parameters
    ----------
    array : numpy.ndarray
        A 2-D, C-contiguous view into ``mapping`` (what :func:`file_rows` checks).
    mapping : mmap.mmap
        The shared mapping that holds ``array``'s memory (the root memmap's ``base``).
    work_dtype : numpy dtype, optional
        dtype of the blocks: by default float32 for float16 storage and the storage dtype
        otherwise; float64 to read float32 rows in float64 (see
        :func:`precal._validation.check_logits`).
    max_block_elements : int, default=BLOCK_ELEMENTS
        Blocks hold at most this many elements (at least one row), whatever the caller
        asks for.

    Notes
    -----
    A block returned by :meth:`blocks` is a view of a buffer that the next block
    overwrites; callers use it (or copy from it) before asking for the next one. After
    each block is copied, the pages it was read from are released from the process
    (``MADV_DONTNEED``; the data stay in the page cache and the file).
    """

    ndim = 2

    def __init__(
        self,
        array: np.ndarray,
        mapping: mmap.mmap,
        *,
        work_dtype: Any = None,
        max_block_elements: int = BLOCK_ELEMENTS,
    ) -> None:
        if array.ndim != 2 or not array.flags.c_contiguous:
            raise ValueError(f"FileRows needs a 2-D C-contiguous array, got shape {array.shape}.")
        self.array = array
        self.mapping = mapping
        self.max_block_elements = int(max_block_elements)
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.dtype = array.dtype
        if work_dtype is None:
            work_dtype = np.float32 if self.dtype == np.float16 else self.dtype
        self.work_dtype = np.dtype(work_dtype)
        # byte offset of element [0, 0] from the start of the mapping (page-aligned by mmap)
        probe = np.frombuffer(mapping, dtype=np.uint8, count=1)
        self._offset = array.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
        del probe
        if not 0 <= self._offset <= len(mapping) - array.nbytes:
            raise ValueError("FileRows: the array does not lie inside the given mapping.")

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FileRows(shape={self.shape}, dtype={self.dtype}, work_dtype={self.work_dtype})"

    @property
    def nbytes(self) -> int:
        """Size of the rows in the mapping, in bytes."""
        return self.array.nbytes

    def with_work_dtype(self, work_dtype: Any) -> FileRows:
        """The same rows, read as blocks of ``work_dtype``."""
        return FileRows(self.array, self.mapping, work_dtype=work_dtype, max_block_elements=self.max_block_elements)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` for consecutive blocks of at most ``rows`` rows
        (and at most ``max_block_elements`` elements)."""
        n, k = self.shape
        rows = max(1, min(int(rows), n, rows_per_block(k, self.max_block_elements)))
        work = np.empty((rows, k), dtype=self.work_dtype)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            np.copyto(work[:m], self.array[start : start + m], casting="safe")
            self._release(start, start + m)
            yield start, work[:m]

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (1-D, increasing) as a new ``(len(index), k)`` array of :attr:`work_dtype`."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.shape[1]), dtype=self.work_dtype)
        for at in range(0, len(index), _TAKE_GROUP):
            group = index[at : at + _TAKE_GROUP]
            np.copyto(out[at : at + len(group)], self.array[group], casting="safe")
            self._release(int(group.min()), int(group.max()) + 1)
        return out

    def _release(self, start: int, stop: int) -> None:
        """Unmap from the process the pages that hold rows ``start:stop`` (rounded out to whole
        pages, and reaching back ``_FAULT_AROUND_BYTES``).

        Only the process's page tables change: on a shared mapping the data stay in the
        page cache and the file, and the next read of any of these rows maps them again.
        """
        if not hasattr(mmap, "MADV_DONTNEED") or stop <= start:
            return
        row_bytes = self.shape[1] * self.dtype.itemsize
        first = max(0, self._offset + start * row_bytes - _FAULT_AROUND_BYTES) // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(len(self.mapping), -(-(self._offset + stop * row_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE)
        try:
            self.mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError):  # pragma: no cover - a release is an optimisation, never needed
            pass


def _mapped_root(arr: np.ndarray) -> np.memmap | None:
    """The ``numpy.memmap`` that owns ``arr``'s memory through an ``mmap``, if any (public attributes only)."""
    obj: Any = arr
    while obj is not None:
        if isinstance(obj, np.memmap) and isinstance(obj.base, mmap.mmap):
            return obj
        obj = getattr(obj, "base", None)
    return None


def file_rows(arr: Any) -> FileRows | None:
    """A :class:`FileRows` reading ``arr`` from its mapping, or ``None`` if ``arr`` is not streamed.

    Streamed: a 2-D, C-contiguous, non-empty numpy array whose memory is a ``numpy.memmap``
    of a file in mode ``"r"``, ``"r+"`` or ``"w+"`` (a shared mapping, whose pages can be
    released without losing anything), of native-byte-order float16/float32/float64.
    """
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.size == 0:
        return None
    if arr.dtype not in _STREAMED_DTYPES or not arr.dtype.isnative or not arr.flags.c_contiguous:
        return None
    root = _mapped_root(arr)
    if root is None or root.mode not in _SHARED_MODES or root.base.closed:
        return None
    return FileRows(np.asarray(arr), root.base)


def rows_per_block(k: int, elements: int = BLOCK_ELEMENTS) -> int:
    """Rows in a block of about ``elements`` elements for rows of ``k`` columns (at least 1)."""
    return max(1, elements // max(int(k), 1))


def row_blocks(data: Any, rows: int) -> Iterator[tuple[int, Any]]:
    """``(start, data[start:start + rows])`` over the rows of an array, a tensor or a :class:`FileRows`.

    numpy arrays and torch tensors give views (tensors stay on their device); a
    :class:`FileRows` gives blocks read from its file into one reusable buffer.
    """
    if isinstance(data, FileRows):
        yield from data.blocks(rows)
        return
    n = data.shape[0]
    for start in range(0, n, max(1, int(rows))):
        yield start, data[start : start + rows]


def take_rows(data: Any, index: np.ndarray) -> Any:
    """Rows ``index`` (1-D, increasing) of an array, a tensor (same device) or a :class:`FileRows`."""
    if isinstance(data, FileRows):
        return data.take(index)
    if isinstance(data, np.ndarray):
        return data[index]
    import torch

    return data[torch.as_tensor(index, device=data.device)]

"""Row blocks: read a 2-D array block by block, memory-mapped files with ordinary file reads.

The pages of a ``numpy.memmap`` that have been read stay mapped into the process and count
in its resident memory until the kernel evicts them, so a pass over a memory-mapped file
through the mapping grows the resident set to the file's size. :class:`FileRows` reads the
same rows with ``readinto`` into one reusable buffer instead: the data passes through the
kernel's page cache (shared, reclaimable, not the process's memory) and the process holds
one block at a time, whatever the file size.

:func:`file_rows` decides which arrays are read this way ("streamed"): C-ordered 2-D views
of a file mapped by ``numpy.memmap`` (``np.memmap(...)``, ``np.load(..., mmap_mode="r")``
and basic slices of them) in a read-only or shared mode (``"r"``, ``"r+"``, ``"w+"``), of
dtype float16, float32 or float64 in native byte order. Other arrays are read through the
mapping as before: copy-on-write (``mode="c"``) mappings, whose pages may differ from the
file, and Fortran-ordered or strided views, whose rows are not contiguous in the file.

:func:`row_blocks` gives the same ``(start, block)`` iteration over numpy arrays, torch
tensors (views, on the tensor's device) and :class:`FileRows`, so a computation is written
once for all three.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Iterator

import numpy as np

__all__ = ["FileRows", "file_rows", "row_blocks", "rows_per_block", "take_rows", "BLOCK_ELEMENTS"]

#: Largest block a :class:`FileRows` reads, in elements (4 MB of float32): the buffer and the
#: few temporaries a computation makes per block stay small next to any file worth streaming.
BLOCK_ELEMENTS = 1 << 20

_STREAMED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_SHARED_MODES = ("r", "r+", "w+")


class FileRows:
    """The rows of a C-ordered ``(n, k)`` array stored in a file, read block by block.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    offset : int
        Byte offset of element ``[0, 0]`` in the file.
    shape : tuple of int
        ``(n, k)``.
    dtype : numpy dtype
        Storage dtype (float16, float32 or float64). Blocks are returned in
        :attr:`work_dtype`: float32 for float16 storage, the storage dtype otherwise.
    max_block_elements : int, default=BLOCK_ELEMENTS
        Blocks hold at most this many elements (at least one row), whatever the caller
        asks for.

    Notes
    -----
    A block returned by :meth:`blocks` is a view of a buffer that the next block
    overwrites; callers use it (or copy from it) before asking for the next one.
    """

    ndim = 2

    def __init__(
        self,
        path: str | os.PathLike,
        offset: int,
        shape: tuple[int, int],
        dtype: Any,
        *,
        max_block_elements: int = BLOCK_ELEMENTS,
    ) -> None:
        self.path = os.fspath(path)
        self.max_block_elements = int(max_block_elements)
        self.offset = int(offset)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.work_dtype = np.dtype(np.float32) if self.dtype == np.float16 else self.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FileRows({self.path!r}, offset={self.offset}, shape={self.shape}, dtype={self.dtype})"

    @property
    def nbytes(self) -> int:
        """Size of the rows in the file, in bytes."""
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` for consecutive blocks of at most ``rows`` rows
        (and at most ``max_block_elements`` elements)."""
        n, k = self.shape
        rows = max(1, min(int(rows), n, rows_per_block(k, self.max_block_elements)))
        raw = np.empty((rows, k), dtype=self.dtype)
        work = raw if self.work_dtype == self.dtype else np.empty((rows, k), dtype=self.work_dtype)
        row_bytes = k * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            for start in range(0, n, rows):
                m = min(rows, n - start)
                f.seek(self.offset + start * row_bytes)
                _read_exactly(f, raw[:m], self.path)
                if work is not raw:
                    np.copyto(work[:m], raw[:m], casting="safe")
                yield start, work[:m]

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (1-D, increasing) as a new ``(len(index), k)`` array of :attr:`work_dtype`."""
        index = np.asarray(index, dtype=np.int64)
        k = self.shape[1]
        out = np.empty((len(index), k), dtype=self.dtype)
        row_bytes = k * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            for j, i in enumerate(index):
                f.seek(self.offset + int(i) * row_bytes)
                _read_exactly(f, out[j : j + 1], self.path)
        return out.astype(self.work_dtype, copy=False)


def _read_exactly(f: Any, out: np.ndarray, path: str) -> None:
    """Fill the C-contiguous array ``out`` from the file's current position."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{path} ended after {done} of {len(view)} bytes of a block: the file is shorter "
                             "than the array mapped onto it.")
        done += got


def _mapped_root(arr: np.ndarray) -> np.memmap | None:
    """The ``numpy.memmap`` that owns ``arr``'s memory through an ``mmap``, if any (public attributes only)."""
    obj: Any = arr
    while obj is not None:
        if isinstance(obj, np.memmap) and isinstance(obj.base, mmap.mmap):
            return obj
        obj = getattr(obj, "base", None)
    return None


def file_rows(arr: Any) -> FileRows | None:
    """A :class:`FileRows` reading ``arr`` from its file, or ``None`` if ``arr`` is not streamed.

    Streamed: a 2-D, C-contiguous, non-empty numpy array whose memory is a ``numpy.memmap``
    of a file in mode ``"r"``, ``"r+"`` or ``"w+"`` (the mapping is shared, so the file holds
    exactly what the array shows), of native-byte-order float16/float32/float64.
    """
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.size == 0:
        return None
    if arr.dtype not in _STREAMED_DTYPES or not arr.dtype.isnative or not arr.flags.c_contiguous:
        return None
    root = _mapped_root(arr)
    if root is None or root.filename is None or root.mode not in _SHARED_MODES:
        return None
    # element [0, 0] of arr lies (data pointer difference) bytes after the root's first byte
    offset = int(root.offset) + (arr.__array_interface__["data"][0] - root.__array_interface__["data"][0])
    return FileRows(root.filename, offset, arr.shape, arr.dtype)


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

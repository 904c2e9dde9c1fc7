"""Dask arrays in: metrics and temperature scaling chunk by chunk, never gathering the array.

Nothing here imports dask until an input *is* a dask array (:func:`is_dask_array` looks at
the type's module name only). Each chunk of rows is handled by the same per-block code as
in-memory and memory-mapped input, and only small per-chunk results travel:

* metrics: each chunk's probabilities are validated (errors name the chunk) and reduced to
  the flat sufficient-statistics vector of :class:`~precal.metrics.CalibrationState`; the
  vectors are summed in a tree of dask tasks;
* calibrators (:class:`DaskLogits`): each optimiser pass maps every chunk to the totals of
  the calibrator's own in-memory block kernel (a few floats: temperature scaling's and PACS's
  kernels of :mod:`precal.calibration._blocks`, ensemble temperature scaling's row statistics,
  the Dirichlet data term of :mod:`precal.calibration.dirichlet` through :class:`DaskDataTerm`)
  and sums them with ``math.fsum`` (or, for vectors and matrices, in float64);
* prediction: ``predict_proba`` and friends return lazy dask arrays (``map_blocks``).

Labels (and weights) given in memory are cut to the logits' row chunks; given as dask
arrays chunked differently, they are rechunked to them. Column chunks are merged, so every
task sees whole rows. The graph is computed with dask's current scheduler (a
``distributed.Client`` when one is active) once per metric or per optimiser pass: persist
(``X.persist()``) input whose graph is expensive to recompute.

A pass either returns every chunk's result or raises: with ``distributed``, a task whose
worker dies is recomputed on another one (dask's ``allowed-failures`` retries), and when
the retries run out the pass raises a ``RuntimeError`` that says so; no sum is ever taken
over part of the chunks.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

__all__ = ["is_dask_array", "dask_state", "dask_top_label", "DaskLogits", "DaskDataTerm", "lazy_rows",
           "refusal"]

#: Vectors summed per task in the reduction tree of :func:`dask_state`.
_FAN_IN = 8


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a ``dask.array.Array``, judged by its type's module (dask is not imported)."""
    t = type(x)
    return t.__name__ == "Array" and t.__module__.split(".", 2)[:2] == ["dask", "array"]


# ----------------------------------------------------------------------------- rows
def _known_rows(x: Any, name: str) -> tuple[int, ...]:
    rows = x.chunks[0]
    if any(math.isnan(c) for c in rows):
        raise ValueError(
            f"{name} is a dask array with unknown chunk sizes; call {name}.compute_chunk_sizes() first."
        )
    return tuple(int(c) for c in rows)


def _as_rows(x: Any, rows: tuple[int, ...], name: str) -> Any:
    """``x`` (dask or in-memory, 1-D or 2-D) as a dask array with row chunks ``rows`` and whole rows."""
    import dask.array as da

    if not is_dask_array(x):
        from ._validation import as_numpy

        x = np.asarray(as_numpy(x))
        if x.ndim == 0 or x.shape[0] != sum(rows):
            raise ValueError(f"Inconsistent numbers of samples: {name} has {x.shape[:1] or 'no'} rows, expected "
                             f"{sum(rows)}.")
        return da.from_array(x, chunks=(rows,) + tuple(-1 for _ in x.shape[1:]))
    if x.ndim == 0 or x.shape[0] != sum(rows):
        raise ValueError(f"Inconsistent numbers of samples: {name} has {x.shape[:1] or 'no'} rows, expected "
                         f"{sum(rows)}.")
    _known_rows(x, name)
    return x.rechunk((rows,) + tuple(-1 for _ in x.shape[1:]))


def _starts(rows: tuple[int, ...]) -> list[int]:
    return [int(s) for s in np.cumsum((0,) + rows[:-1])]


def _chunk_error(name: str, i: int, start: int, m: int, exc: Exception) -> Exception:
    return type(exc)(f"{name} chunk {i} (rows {start}:{start + m}; row numbers below count within the chunk): {exc}")


def _global_classes(y: Any, n_columns: int, labels: Any, min_classes: int) -> np.ndarray | None:
    """The classes of dask labels ``y`` (one small reduction), for a per-chunk encoding that
    agrees across chunks; ``None`` when ``labels`` is given."""
    if labels is not None:
        return None
    import dask.array as da

    from ._validation import encode_labels

    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,) class labels, got a dask array with shape {y.shape}.")
    present = da.unique(y).compute()
    classes, _ = encode_labels(present, n_columns, name="y", min_classes=min_classes)
    return classes


def _encode_chunk(y_block: Any, n_columns: int, classes: Any, name: str) -> np.ndarray:
    from ._validation import encode_labels

    return encode_labels(y_block, n_columns, labels=classes, name=name, min_classes=1)[1]


# ----------------------------------------------------------------------------- metrics
def _prepare_metric_input(y_true: Any, y_prob: Any, labels: Any) -> tuple[Any, Any, int, bool, Any]:
    """Dask ``(y, prob)`` with matching row chunks, the number of columns, 1-D-ness and
    the classes each chunk encodes labels with."""
    import dask.array as da

    from ._validation import as_numpy, encode_labels

    if not is_dask_array(y_prob):
        y_prob = np.asarray(as_numpy(y_prob))
        rows = _known_rows(y_true, "y_true")
        y_prob = da.from_array(y_prob, chunks=(rows,) + tuple(-1 for _ in y_prob.shape[1:]))
    if y_prob.ndim not in (1, 2):
        raise ValueError(f"y_prob must be 2-D (n_samples, n_classes) or 1-D (n_samples,) probabilities, got a "
                         f"dask array with shape {y_prob.shape}.")
    rows = _known_rows(y_prob, "y_prob")
    if sum(rows) == 0:
        raise ValueError("y_prob is empty: found 0 sample(s) while a minimum of 1 is required.")
    one_d = y_prob.ndim == 1
    n_columns = 2 if one_d else int(y_prob.shape[1])
    if n_columns == 1:
        raise ValueError("y_prob has a single column; pass binary probabilities as 1-D (positive class) or as "
                         "(n_samples, 2).")
    prob = y_prob[:, None] if one_d else y_prob.rechunk({1: -1})
    if is_dask_array(y_true):
        classes = _global_classes(y_true, n_columns, labels, 1)
        y = _as_rows(y_true, rows, "y_true")
        chunk_labels = labels if labels is not None else classes
    else:  # labels in memory: encoded once, then cut to the chunks
        y_arr = np.asarray(as_numpy(y_true))
        if y_arr.ndim != 1 or y_arr.shape[0] != sum(rows):
            raise ValueError(f"Inconsistent numbers of samples: y_true has shape {y_arr.shape}, y_prob "
                             f"{sum(rows)} rows.")
        _, y_idx = encode_labels(y_arr, n_columns, labels=labels, name="y_true", min_classes=1)
        y = da.from_array(y_idx, chunks=(rows,))
        chunk_labels = None
    return y, prob, n_columns, one_d, chunk_labels


def _chunk_statistics(i: int, start: int, y_block: Any, p_block: Any, n_columns: int, one_d: bool,
                      labels: Any, n_bins: int) -> np.ndarray:
    from ._validation import check_probabilities, check_same_length
    from .metrics.state import batch_statistics

    m = p_block.shape[0]
    try:
        prob = check_probabilities(p_block[:, 0] if one_d else p_block, name="y_prob")
        check_same_length(y_true=y_block, y_prob=prob)
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_prob", i, start, m, exc) from None
    try:
        y_idx = _encode_chunk(y_block, n_columns, labels, "y_true")
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_true", i, start, m, exc) from None
    return batch_statistics(y_idx, prob, n_bins)


def _sum_vectors(*vectors: np.ndarray) -> np.ndarray:
    return np.sum(vectors, axis=0)


def dask_state(y_true: Any, y_prob: Any, n_bins: int, labels: Any = None) -> Any:
    """The :class:`~precal.metrics.CalibrationState` of dask input, from per-chunk statistics."""
    import dask

    from .metrics.state import CalibrationState

    y, prob, n_columns, one_d, chunk_labels = _prepare_metric_input(y_true, y_prob, labels)
    rows = prob.chunks[0]
    parts = [
        dask.delayed(_chunk_statistics)(i, start, yb, pb, n_columns, one_d, chunk_labels, n_bins)
        for i, (start, yb, pb) in enumerate(zip(_starts(rows), y.to_delayed().ravel(), prob.to_delayed().ravel()))
    ]
    while len(parts) > 1:
        parts = [dask.delayed(_sum_vectors)(*parts[j : j + _FAN_IN]) for j in range(0, len(parts), _FAN_IN)]
    (total,) = compute(parts[0])
    return CalibrationState.from_tensor(total, n_columns, n_bins)


def _chunk_top_label(i: int, start: int, y_block: Any, p_block: Any, n_columns: int, one_d: bool,
                     labels: Any) -> np.ndarray:
    from ._validation import check_probabilities
    from .metrics.calibration import _top_label

    m = p_block.shape[0]
    try:
        prob = check_probabilities(p_block[:, 0] if one_d else p_block, name="y_prob")
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_prob", i, start, m, exc) from None
    try:
        y_idx = _encode_chunk(y_block, n_columns, labels, "y_true")
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_true", i, start, m, exc) from None
    return np.stack(_top_label(y_idx, prob))


def dask_top_label(y_true: Any, y_prob: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of dask input (two float64 per sample, gathered in memory)."""
    import dask

    y, prob, n_columns, one_d, chunk_labels = _prepare_metric_input(y_true, y_prob, labels)
    parts = [
        dask.delayed(_chunk_top_label)(i, start, yb, pb, n_columns, one_d, chunk_labels)
        for i, (start, yb, pb) in enumerate(zip(_starts(prob.chunks[0]), y.to_delayed().ravel(),
                                                prob.to_delayed().ravel()))
    ]
    both = np.concatenate(compute(*parts), axis=1)
    return both[0], both[1]


# ----------------------------------------------------------------------------- calibrators
def _chunk_logit_range(i: int, start: int, z_block: Any, w_block: Any) -> np.ndarray:
    """``[min, max, weight sum]`` of a chunk, after the checks of :func:`precal._validation.check_logits`."""
    from ._validation import _aminmax, _as_float, _check_finite_range

    m = z_block.shape[0]
    try:
        z = _as_float(np.asarray(z_block), "X")
        lo, hi = _aminmax(z)
        _check_finite_range(lo, hi, "X", z.dtype)
    except (ValueError, TypeError) as exc:
        raise _chunk_error("X", i, start, m, exc) from None
    w_sum = float(m)
    if w_block is not None:
        w = np.asarray(w_block, dtype=np.float64)
        if not np.isfinite(w).all():
            raise _chunk_error("sample_weight", i, start, m, ValueError("sample_weight contains NaN or inf."))
        if (w < 0).any():
            raise _chunk_error("sample_weight", i, start, m,
                               ValueError("sample_weight must be non-negative; got negative values."))
        w_sum = math.fsum(w)
    return np.array([lo, hi, w_sum])


def _chunk_row_ranges(i: int, start: int, z_block: Any) -> None:
    from ._validation import _check_row_ranges

    z = np.asarray(z_block, dtype=np.float64)
    _check_row_ranges(z.max(axis=1) - z.min(axis=1), start, z, "X")


def compute(*objs: Any) -> tuple[Any, ...]:
    """``dask.compute(*objs)``; a task that lost every worker it ran on becomes a ``RuntimeError``
    that says nothing was summed (dask returns every result or raises: never part of them)."""
    import dask

    try:
        return dask.compute(*objs)
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":
            raise
        raise RuntimeError(
            f"A Dask pass of the fit lost the workers its tasks ran on more often than distributed's "
            f"'allowed-failures' setting permits ({exc}); the pass was abandoned as a whole (no partial sum was "
            "used). Check the workers' memory limits and logs, then fit again."
        ) from exc


def _chunk_tensors(z_block: Any, y_block: Any, w_block: Any, work_dtype: Any) -> tuple[Any, Any, Any]:
    """One chunk as the CPU tensors of the in-memory path: logits in the work dtype, int64
    labels, float64 weights (or ``None``)."""
    import torch

    z = torch.from_numpy(np.ascontiguousarray(z_block, dtype=work_dtype))
    y = torch.from_numpy(np.asarray(y_block, dtype=np.int64))
    w = None if w_block is None else torch.from_numpy(np.asarray(w_block, dtype=np.float64))
    return z, y, w


def _chunk_reduce(z_block: Any, y_block: Any, w_block: Any, work_dtype: Any, fn: Callable[..., Any],
                  args: tuple[Any, ...]) -> list[float]:
    """``fn(z, y, w, *args)`` on one chunk's tensors, as a list of Python floats."""
    z, y, w = _chunk_tensors(z_block, y_block, w_block, work_dtype)
    return [float(v) for v in fn(z, y, w, *args)]


def _shifted_totals(z: Any, y: Any, w: Any, fn: Callable[..., Any]) -> list[float]:
    """The totals of ``fn`` over the blocks of one chunk (the in-memory kernel, one thread)."""
    from .calibration._blocks import ShiftedLogits

    return ShiftedLogits(z, y, w, 1).totals(fn)  # kept (class-major) blocks: the in-memory layout and sums


def _chunk_floats(fn: Callable[..., Any], *blocks_and_args: Any) -> list[float]:
    return [float(v) for v in fn(*blocks_and_args)]


def reduce_arrays(fn: Callable[..., Any], arrays: list[Any], *args: Any) -> list[float]:
    """``Σ_chunks fn(*blocks, *args)`` (``math.fsum`` of each entry) over dask arrays with the
    same row chunks (e.g. per-row values from :meth:`DaskLogits.map_rows` and the weights),
    one dask computation; ``fn`` gets numpy blocks and returns a short vector of sums."""
    import dask

    blocks = [list(a.to_delayed().ravel()) for a in arrays]
    parts = compute(*[dask.delayed(_chunk_floats)(fn, *chunk, *args) for chunk in zip(*blocks)])
    return [math.fsum(column) for column in zip(*parts)]


def _chunk_rows(z_block: Any, y_block: Any, w_block: Any, work_dtype: Any, fn: Callable[..., Any],
                args: tuple[Any, ...]) -> np.ndarray:
    """``fn(z, y, w, *args)`` on one chunk: a float64 ``(rows, width)`` array of per-row values."""
    z, y, w = _chunk_tensors(z_block, y_block, w_block, work_dtype)
    return np.asarray(fn(z, y, w, *args), dtype=np.float64)


class DaskLogits:
    """Validated dask logits with labels and weights, in the interface the Newton passes of
    :mod:`precal.calibration.temperature` use (``shape``, ``denom``, ``totals``, ``subsample``).

    Build with :meth:`validated`: one pass checks every chunk (errors name the chunk) and
    gives the range check of :func:`precal._validation.check_logits` and the weight total.
    """

    def __init__(self, z: Any, y_idx: Any, w: Any, work_dtype: Any, denom: float, classes: np.ndarray,
                 n_features_in: int) -> None:
        self.z, self.y_idx, self.w = z, y_idx, w
        self.work_dtype = np.dtype(work_dtype)
        self.denom = denom
        self.classes = classes
        self.n_features_in = n_features_in

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.z.shape[0]), int(self.z.shape[1]))

    @classmethod
    def validated(cls, X: Any, y: Any, sample_weight: Any, *, min_classes: int = 2,
                  owner: str = "TemperatureScaling") -> DaskLogits:
        """Check ``X`` (every chunk finite, in range), encode ``y`` and check the weights.

        Labels and weights chunked differently from ``X``'s rows are rechunked to them; ``X``'s
        column chunks are merged. Errors about a chunk name its index and rows.
        """
        import dask
        import dask.array as da

        from ._validation import _row_shift_overflows, as_numpy, check_sample_weight, encode_labels

        if not is_dask_array(X):
            raise TypeError("X must be a dask array here.")  # pragma: no cover - callers dispatch on it
        if X.ndim not in (1, 2) or (X.ndim == 2 and X.shape[1] == 0):
            raise ValueError(f"X must be 2-D (n_samples, n_classes) or 1-D (n_samples,) logits, got a dask array "
                             f"with shape {X.shape}.")
        rows = _known_rows(X, "X")
        if sum(rows) == 0:
            raise ValueError("X is empty: found 0 sample(s) while a minimum of 1 is required.")
        single = X.ndim == 1 or X.shape[1] == 1
        if single:
            x1 = X.reshape(-1) if X.ndim == 2 else X
            X = da.stack([da.zeros_like(x1), x1], axis=1)
        n_columns = int(X.shape[1])
        z = X.rechunk({1: -1})
        if y is None:
            raise ValueError(f"{owner} requires y to be passed, but the target y is None.")
        if is_dask_array(y):
            classes = _global_classes(y, n_columns, None, min_classes)
            y_idx = _as_rows(y, rows, "y").map_blocks(_encode_chunk, n_columns, classes, "y", dtype=np.int64)
        else:
            y_arr = np.asarray(as_numpy(y))
            if y_arr.ndim == 0 or y_arr.shape[0] != sum(rows):
                raise ValueError(f"Inconsistent numbers of samples: X has {sum(rows)}, y has "
                                 f"{y_arr.shape[0] if y_arr.ndim else 'a scalar'}.")
            classes, idx = encode_labels(y_arr, n_columns, min_classes=min_classes)
            y_idx = da.from_array(idx, chunks=(rows,))
        if single and len(classes) != 2:  # pragma: no cover - encode_labels with 2 columns guarantees it
            raise ValueError("X holds one logit per sample, which is for binary problems.")
        w = None
        if sample_weight is not None:
            if is_dask_array(sample_weight):
                if sample_weight.ndim != 1:
                    raise ValueError(f"sample_weight must have shape ({sum(rows)},), got {sample_weight.shape}.")
                w = _as_rows(sample_weight, rows, "sample_weight")
            else:
                w = da.from_array(check_sample_weight(sample_weight, sum(rows)), chunks=(rows,))
        w_blocks = [None] * len(rows) if w is None else list(w.to_delayed().ravel())
        parts = [dask.delayed(_chunk_logit_range)(i, s, zb, wb)
                 for i, (s, zb, wb) in enumerate(zip(_starts(rows), z.to_delayed().ravel(), w_blocks))]
        ranges = np.array(compute(*parts))
        lo, hi = float(ranges[:, 0].min()), float(ranges[:, 1].max())
        denom = math.fsum(ranges[:, 2])
        if w is not None and not denom > 0:
            raise ValueError("sample_weight must have at least one positive value; got all zeros.")
        dtype = np.dtype(z.dtype)
        work = np.float32 if dtype in (np.float16, np.float32) else np.float64
        if _row_shift_overflows(lo, hi, np.dtype(work).name):
            if work == np.float32:
                work = np.float64
            else:
                compute(*[dask.delayed(_chunk_row_ranges)(i, s, zb)
                               for i, (s, zb) in enumerate(zip(_starts(rows), z.to_delayed().ravel()))])
        return cls(z, y_idx, w, work, denom, classes, 1 if single else n_columns)

    @property
    def n_chunks(self) -> int:
        return len(self.z.chunks[0])

    def _chunks(self) -> list[tuple[Any, Any, Any]]:
        zs = self.z.to_delayed().ravel()
        ys = self.y_idx.to_delayed().ravel()
        ws = [None] * len(zs) if self.w is None else list(self.w.to_delayed().ravel())
        return list(zip(zs, ys, ws))

    def reduce(self, fn: Callable[..., Any], *args: Any) -> list[float]:
        """``Σ_chunks fn(z, y, w, *args)`` (``math.fsum`` of each entry), one dask computation.

        ``fn`` gets one chunk's rows as the CPU tensors of the in-memory path (logits in the
        work dtype, int64 labels, float64 weights or ``None``) and returns a short vector of
        sums over those rows; it runs on a worker, with one torch thread.
        """
        import dask

        parts = compute(*[dask.delayed(_chunk_reduce)(zb, yb, wb, self.work_dtype, fn, args)
                          for zb, yb, wb in self._chunks()])
        return [math.fsum(column) for column in zip(*parts)]

    def totals(self, fn: Callable[..., Any]) -> list[float]:
        """Totals over all rows of ``fn(block, span)`` (the block kernel of
        :class:`~precal.calibration._blocks.ShiftedLogits`), one dask computation."""
        return self.reduce(_shifted_totals, fn)

    def map_rows(self, fn: Callable[..., Any], width: int, *args: Any) -> Any:
        """A lazy float64 dask array ``(n, width)`` of ``fn(z, y, w, *args)`` per chunk (per-row
        values), with the logits' row chunks; ``persist()`` it to keep it on the workers."""
        import dask
        import dask.array as da

        blocks = [da.from_delayed(dask.delayed(_chunk_rows)(zb, yb, wb, self.work_dtype, fn, args),
                                  shape=(m, width), dtype=np.float64)
                  for m, (zb, yb, wb) in zip(self.z.chunks[0], self._chunks())]
        return da.concatenate(blocks, axis=0)

    def subsample(self, stride: int) -> Any:
        """Rows ``0, stride, 2 stride, ...`` in memory, as :class:`~precal.calibration._blocks.ShiftedLogits`."""
        from .calibration._blocks import ShiftedLogits

        z, y, w = self.sample(stride)
        return ShiftedLogits(z, y, w, 1)

    def sample(self, stride: int) -> tuple[Any, Any, Any]:
        """Rows ``0, stride, 2 stride, ...`` in memory: CPU tensors ``(z, y_idx, w)`` as :meth:`reduce` gets them."""
        z, y, w = compute(self.z[::stride], self.y_idx[::stride], None if self.w is None else self.w[::stride])
        return _chunk_tensors(z, y, w, self.work_dtype)


# ----------------------------------------------------------------------------- prediction
def _apply_chunk(block: Any, est: Any, method: str, block_id: Any = None) -> np.ndarray:
    try:
        return getattr(est, method)(block)
    except (ValueError, TypeError) as exc:
        i = 0 if block_id is None else block_id[0]
        raise type(exc)(f"X chunk {i}: {exc}") from None


def lazy_rows(est: Any, method: str, X: Any, return_tensor: bool = False) -> Any:
    """``est.<method>(X)`` as a lazy dask array computed chunk by chunk (``map_blocks``)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    if return_tensor:
        raise ValueError("return_tensor=True is not available for dask input; the result is a dask array.")
    if X.ndim not in (1, 2):
        raise ValueError(f"X must be 2-D (n_samples, n_classes) or 1-D logits, got a dask array with shape {X.shape}.")
    n_features = 1 if X.ndim == 1 else int(X.shape[1])
    if n_features != est.n_features_in_:
        raise ValueError(f"X has {n_features} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input.")
    rows = _known_rows(X, "X")
    X = X.rechunk({1: -1}) if X.ndim == 2 else X
    if method == "predict":
        kw = {"drop_axis": 1} if X.ndim == 2 else {}
        return X.map_blocks(_apply_chunk, est, method, dtype=est.classes_.dtype, chunks=(rows,), **kw)
    if est.n_features_in_ == 1 and method == "decision_function":
        kw = {"drop_axis": 1} if X.ndim == 2 else {}
        return X.map_blocks(_apply_chunk, est, method, dtype=np.float64, chunks=(rows,), **kw)
    k = 2 if est.n_features_in_ == 1 else est.n_features_in_
    kw = {"new_axis": 1} if X.ndim == 1 else {}
    return X.map_blocks(_apply_chunk, est, method, dtype=np.float64, chunks=(rows, (k,)), **kw)

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
  the Dirichlet data term of :mod:`precal.calibration.dirichlet` through :class:`DaskDataTerm`,
  structured matrix scaling's objective sums of :mod:`precal.calibration.matrix_scaling`)
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

__all__ = ["is_dask_array", "dask_state", "dask_top_label", "dask_per_sample", "DaskLogits", "DaskDataTerm", "lazy_rows",
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


def _global_classes(y: Any, n_columns: int, labels: Any, min_classes: int, fix: str | None = None
                    ) -> np.ndarray | None:
    """The classes of dask labels ``y`` (one small reduction), for a per-chunk encoding that
    agrees across chunks; ``None`` when ``labels`` is given."""
    if labels is not None:
        return None
    import dask.array as da

    from ._validation import encode_labels

    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,) class labels, got a dask array with shape {y.shape}.")
    present = da.unique(y).compute()
    kw = {} if fix is None else {"fix": fix}
    classes, _ = encode_labels(present, n_columns, name="y", min_classes=min_classes, **kw)
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


def _checked_chunk(i: int, start: int, y_block: Any, p_block: Any, n_columns: int, one_d: bool, labels: Any, *,
                   same_length: bool) -> tuple[Any, Any]:
    """Chunk ``i``'s validated probabilities and encoded labels ``(y_idx, prob)``; errors name the chunk."""
    from ._validation import check_probabilities, check_same_length

    m = p_block.shape[0]
    try:
        prob = check_probabilities(p_block[:, 0] if one_d else p_block, name="y_prob")
        if same_length:
            check_same_length(y_true=y_block, y_prob=prob)
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_prob", i, start, m, exc) from None
    try:
        y_idx = _encode_chunk(y_block, n_columns, labels, "y_true")
    except (ValueError, TypeError) as exc:
        raise _chunk_error("y_true", i, start, m, exc) from None
    return y_idx, prob


def _chunk_statistics(i: int, start: int, y_block: Any, p_block: Any, n_columns: int, one_d: bool,
                      labels: Any, n_bins: int) -> np.ndarray:
    from .metrics.state import batch_statistics

    y_idx, prob = _checked_chunk(i, start, y_block, p_block, n_columns, one_d, labels, same_length=True)
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


def _chunk_per_sample(i: int, start: int, y_block: Any, p_block: Any, n_columns: int, one_d: bool,
                      labels: Any, kind: str) -> np.ndarray:
    from .metrics.calibration import per_sample

    y_idx, prob = _checked_chunk(i, start, y_block, p_block, n_columns, one_d, labels, same_length=False)
    return np.stack(per_sample(kind, y_idx, prob))


def dask_per_sample(y_true: Any, y_prob: Any, labels: Any, kind: str) -> tuple[tuple[np.ndarray, ...], int]:
    """The per-sample numbers ``kind`` of dask input, gathered in memory (one or two float64 per sample), and the
    number of classes.

    ``kind`` as :func:`precal.metrics.calibration.per_sample` takes it: ``"top_label"`` (confidence and
    correctness), ``"nll"`` or ``"brier"`` (the sample's loss). Each chunk is validated and reduced to these on
    its worker; only ``O(n)`` numbers travel, never the ``(n, K)`` rows.
    """
    import dask

    y, prob, n_columns, one_d, chunk_labels = _prepare_metric_input(y_true, y_prob, labels)
    parts = [
        dask.delayed(_chunk_per_sample)(i, start, yb, pb, n_columns, one_d, chunk_labels, kind)
        for i, (start, yb, pb) in enumerate(zip(_starts(prob.chunks[0]), y.to_delayed().ravel(),
                                                prob.to_delayed().ravel()))
    ]
    both = np.concatenate(compute(*parts), axis=1)
    return tuple(both), n_columns


def dask_top_label(y_true: Any, y_prob: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of dask input (two float64 per sample, gathered in memory)."""
    (conf, correct), _ = dask_per_sample(y_true, y_prob, labels, "top_label")
    return conf, correct


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
        #: the smallest and largest logit (set by :meth:`validated`)
        self.value_range: tuple[float, float] | None = None

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

        from ._validation import FIT_LABELS_FIX, _row_shift_overflows, as_numpy, check_sample_weight, encode_labels

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
            classes = _global_classes(y, n_columns, None, min_classes, FIT_LABELS_FIX)
            y_idx = _as_rows(y, rows, "y").map_blocks(_encode_chunk, n_columns, classes, "y", dtype=np.int64)
        else:
            y_arr = np.asarray(as_numpy(y))
            if y_arr.ndim == 0 or y_arr.shape[0] != sum(rows):
                raise ValueError(f"Inconsistent numbers of samples: X has {sum(rows)}, y has "
                                 f"{y_arr.shape[0] if y_arr.ndim else 'a scalar'}.")
            classes, idx = encode_labels(y_arr, n_columns, min_classes=min_classes, fix=FIT_LABELS_FIX)
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
        out = cls(z, y_idx, w, work, denom, classes, 1 if single else n_columns)
        out.value_range = (lo, hi)
        return out

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


# ----------------------------------------------------------------------------- Dirichlet calibration
def _dirichlet_chunk(z_block: Any, y_block: Any, w_block: Any, work_dtype: Any, spec: tuple[Any, ...],
                     call: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """One chunk's share of a :class:`DaskDataTerm` pass: the in-memory ``_DataTerm`` on the
    chunk's rows (standardised log-probabilities from its raw logits), its result rescaled
    from the chunk's mean to its share of the whole array's."""
    import torch

    from .calibration.dirichlet import _DataTerm, _row_chunks, _StandardisedLogProbs

    shift, scale, dtype, diagonal, n, denom = spec
    z, y, w = _chunk_tensors(z_block, y_block, w_block, work_dtype)
    m = z.shape[0]
    weights = None if w is None else w / denom  # normalised over the whole array, as in memory
    factor = m / n if w is None else 1.0  # a chunk's unweighted results are means over its m rows
    features = _StandardisedLogProbs(z, torch.from_numpy(shift), torch.from_numpy(scale), dtype)
    term = _DataTerm(features, y, weights, diagonal=diagonal, dtype=dtype, device=torch.device("cpu"),
                     keep_probs=False)
    if call == "evaluate":
        theta, kw = args
        ev = term.evaluate(theta, **kw)
        return (ev.f * factor, None if ev.g is None else ev.g * factor, None if ev.hess is None else ev.hess * factor,
                None if ev.hess_diag is None else ev.hess_diag * factor, ev.n_errors)
    if call == "count_errors":
        return (term.count_errors(args[0]),)
    if call == "hessp":
        kept, v = args
        term._kept_at = kept  # the point whose probabilities the product uses (recomputed: no kept probabilities)
        return (term.hessp(v) * factor,)
    # the Gram matrix of x = [F, 1] (the preconditioner of full maps), as _DataTerm.gram_eigen sums it
    f64 = torch.float64
    k = z.shape[1]
    g = torch.zeros((k + 1, k + 1), dtype=f64)
    for rows in _row_chunks(m, k):
        feats = features(rows)
        x = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=1)
        xw = x if weights is None else x * weights[rows].to(x.dtype)[:, None]
        g += (xw.T @ x).to(f64)
    return (g.numpy() / n if weights is None else g.numpy(),)


class DaskDataTerm:
    """The Dirichlet data term of :mod:`precal.calibration.dirichlet` (the ``_DataTerm``
    interface its Newton solver uses: ``evaluate``, ``hessp``, ``gram_eigen``, ``count_errors``) over dask
    logits: each call is one dask computation in which every chunk runs the in-memory
    ``_DataTerm`` on its rows, and the chunks' values, gradients, Hessians and
    Hessian-vector products are summed in float64.

    No probabilities are kept between passes (they would be ``n K`` numbers): a
    Hessian-vector product recomputes them from the point of the last ``evaluate(keep=True)``,
    as the in-memory term does for inputs beyond its cache.
    """

    def __init__(self, data: DaskLogits, shift: np.ndarray, scale: np.ndarray, *, diagonal: bool, dtype: Any) -> None:
        self.data = data
        self.n, self.k = data.shape
        self.diagonal = diagonal
        self.dtype = dtype
        self.device = "cpu"
        self.n_params = 2 * self.k if diagonal else self.k * (self.k + 1)
        self.probs = None
        self.n_passes = 0
        self._spec = (np.asarray(shift, np.float64), np.asarray(scale, np.float64), dtype, diagonal, self.n,
                      data.denom)
        self._kept_at: np.ndarray | None = None
        self._gram: tuple[np.ndarray, np.ndarray] | None = None

    def _pass(self, call: str, *args: Any) -> list[tuple[Any, ...]]:
        import dask

        self.n_passes += 1
        return list(compute(*[dask.delayed(_dirichlet_chunk)(zb, yb, wb, self.data.work_dtype, self._spec, call, args)
                              for zb, yb, wb in self.data._chunks()]))

    def evaluate(self, theta: np.ndarray, *, grad: bool = True, hess: bool = False, hess_diag: bool = False,
                 keep: bool = False, count_errors: bool = False) -> Any:
        """As ``_DataTerm.evaluate``: one dask computation."""
        from .calibration.dirichlet import _Evaluation

        theta = np.array(theta, dtype=np.float64, copy=True)
        kw = {"grad": grad, "hess": hess, "hess_diag": hess_diag, "count_errors": count_errors}
        parts = self._pass("evaluate", theta, kw)

        def total(i: int) -> Any:
            values = [p[i] for p in parts]
            return None if values[0] is None else np.sum(values, axis=0)

        out = _Evaluation(f=math.fsum(p[0] for p in parts), g=total(1), hess=total(2), hess_diag=total(3),
                          n_errors=sum(p[4] for p in parts) if count_errors else -1)
        if keep:
            self._kept_at = theta
        return out

    def count_errors(self, theta: np.ndarray) -> int:
        """As ``_DataTerm.count_errors``: one dask computation."""
        return sum(int(p[0]) for p in self._pass("count_errors", np.array(theta, dtype=np.float64, copy=True)))

    def hessp(self, v: np.ndarray) -> np.ndarray:
        """As ``_DataTerm.hessp``, at the point of the last ``evaluate(keep=True)``: one dask computation."""
        if self._kept_at is None:  # pragma: no cover - internal misuse
            raise RuntimeError("hessp needs a point evaluated with keep=True first")
        parts = self._pass("hessp", self._kept_at, np.asarray(v, dtype=np.float64))
        return np.sum([p[0] for p in parts], axis=0)

    def gram_eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """As ``_DataTerm.gram_eigen`` (computed once): one dask computation."""
        if self._gram is None:
            g = np.sum([p[0] for p in self._pass("gram")], axis=0)
            lam, basis = np.linalg.eigh(0.5 * (g + g.T))
            self._gram = (np.maximum(lam, 0.0), basis)
        return self._gram


def dirichlet_problem(data: DaskLogits, *, diagonal: bool) -> Any:
    """The ``_Problem`` of :func:`precal.calibration.dirichlet.fit_dirichlet` for dask logits.

    Everything but the data term comes from the same strided sample of rows the in-memory
    problem uses (``z[::max(1, n // 8192)]``, computed into memory): the working dtype (by
    the in-memory rule on the whole array's ``n K`` and largest ``|z|``), the standardisation
    of the features and the temperature-scaling start. The data term is a
    :class:`DaskDataTerm` over all rows.
    """
    import torch

    from .calibration import dirichlet as dr
    from .calibration.temperature import fit_shifted

    n, k = data.shape
    lo, hi = data.value_range
    magnitude = max(abs(lo), abs(hi), 1.0)
    work = torch.float64 if data.work_dtype == np.float64 else torch.float32
    dtype = dr.working_dtype(n, k, work, magnitude)  # the dtype rule of dirichlet._Problem, on the whole array
    z_s, y_s, w_s = data.sample(max(1, n // dr._STATS_ROWS))
    w_s = None if w_s is None else w_s / data.denom  # normalised over all rows, as the in-memory weights

    class _DaskProblem(dr._Problem):
        def start(self) -> np.ndarray:
            if self.weights is None or float(self.weights.sum()) > 0:
                return super().start()
            # every sampled row has weight 0: the in-memory problem starts from all rows
            unit = 2.0 ** max(0, math.frexp(self.magnitude)[1] - 20)
            scaled = DaskLogits(data.z if unit == 1.0 else data.z / unit, data.y_idx, data.w, data.work_dtype,
                                data.denom, data.classes, data.n_features_in)
            beta = 1.0 / fit_shifted(scaled).temperature / unit
            return self.from_original(np.full(k, beta) if self.diagonal else beta * np.eye(k), np.zeros(k))

    # The sample's own problem (its rows, so start() takes them all) gives the coordinates.
    problem = _DaskProblem(z_s, y_s, w_s, diagonal=diagonal, dtype=dtype)
    problem.magnitude = magnitude  # the whole array's, as the in-memory start scales by it
    problem.data = DaskDataTerm(data, problem.shift, problem.scale, diagonal=diagonal, dtype=dtype)
    return problem


# ----------------------------------------------------------------------------- refusals
#: The calibrators that fit on dask arrays (``_fits_dask``).
DASK_FITTERS = ("TemperatureScaling", "PACSCalibrator", "EnsembleTemperatureScaling",
                "DirichletCalibrator(reg_lambda=<float>)", "StructuredMatrixScaling")

#: Why a calibrator's fit is not a few passes of sums over rows, by class name.
_WHY_NOT = {
    "TopLabelCalibrator": "its isotonic, histogram or spline map is fitted on all the confidences sorted "
                          "together (equal-mass bins, pooled adjacent violators), which is not a sum over row chunks",
    "FuzzyDirichletCalibrator": "its INT4 noise copies are drawn from one random stream over all the rows (so a "
                                "chunked fit would differ from the in-memory one) and its optional soft-ECE term is "
                                "not a sum over rows",
    "AutoCalibrator": "it refits every candidate on cross-validation folds (subsets of the rows), and some "
                      "candidates (top-label maps, Dirichlet with reg_lambda='cv') are not sums over row chunks",
}


def refusal(name: str) -> str:
    """The ``TypeError`` message of a calibrator (class ``name``) that does not fit dask arrays."""
    why = _WHY_NOT.get(name, "its fit is not written as passes of sums over row chunks")
    return (f"{name}.fit does not take Dask arrays: {why}. Fit it on an in-memory sample (e.g. "
            f"{name}().fit(X[:200_000].compute(), y[:200_000].compute()); calibration maps need far fewer rows "
            f"than a cluster holds), or use a calibrator that fits Dask arrays chunk by chunk: "
            f"{', '.join(DASK_FITTERS)}.")


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

"""Boundary checks shared by every public function and estimator.

Calibrators take *logits*, metrics take *probabilities*; nothing here guesses one from the
other by looking at the value range. Each check raises a ``ValueError`` (or ``TypeError``)
that names the argument, what was expected and what was received. Inputs are never
modified in place: conversions always produce new arrays or read-only views.

Two opt-in modes keep large inputs where they are:

* ``keep_tensor=True`` (:func:`check_logits`): a torch tensor is validated with torch on its
  own device and returned as a tensor, so CUDA logits never travel to the host.
* ``stream=True`` (:func:`check_logits`, :func:`check_probabilities`): a 2-D ``numpy.memmap``
  that :func:`precal._chunks.file_rows` can stream is validated block by block from its
  mapping and returned as a :class:`~precal._chunks.FileRows`, so the process never holds
  more than one block of it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_array, check_scalar, column_or_1d
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from ._chunks import FileRows, file_rows, row_blocks, rows_per_block

__all__ = [
    "as_numpy",
    "check_number",
    "check_option",
    "row_sum_tolerance",
    "check_logits",
    "check_probabilities",
    "encode_labels",
    "check_sample_weight",
    "check_same_length",
]


def as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array without copying when it can be avoided.

    torch tensors are detached and moved to the host; torch and ml_dtypes ``bfloat16`` /
    ``float8`` values (which numpy cannot compute with) become ``float32``, which holds them
    exactly. numpy ``float16`` is kept: the callers decide how to upcast.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a run-time dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()
        return x.cpu().numpy()
    arr = np.asarray(x)
    if _is_narrow_extension_float(arr.dtype):
        # ml_dtypes extension types (bfloat16, float8_*, float6_*, float4_*): exact in float32.
        arr = arr.astype(np.float32)
    return arr


def _is_narrow_extension_float(dtype: np.dtype) -> bool:
    """An ml_dtypes float of at most 16 bits other than numpy's float16 (bfloat16, float8_*, ...)."""
    return (
        dtype.kind in "fV" and dtype.itemsize <= 2 and dtype != np.float16 and dtype.name.startswith(("float", "bfloat"))
    )


def _low_precision_facts(x: Any) -> tuple[str, float, float] | None:
    """``(dtype name, eps, smallest subnormal)`` of ``x``'s float dtype if it is narrower than
    float32 (float16, bfloat16, float8, ... as numpy, ml_dtypes or torch dtypes), else None.

    Read before :func:`as_numpy` upcasts bfloat16/float8 to float32, for the row-sum
    tolerance of :func:`check_probabilities`.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return None
    if _is_tensor(x):
        import torch

        if not x.is_floating_point() or torch.finfo(dtype).bits > 16:
            return None
        info = torch.finfo(dtype)
        # subnormal spacing = smallest normal * eps for every IEEE-style format torch has
        return str(dtype).replace("torch.", ""), float(info.eps), float(info.smallest_normal * info.eps)
    if not isinstance(dtype, np.dtype):
        return None
    if dtype == np.float16:
        info = np.finfo(np.float16)
        return "float16", float(info.eps), float(info.smallest_subnormal)
    if _is_narrow_extension_float(dtype):
        import ml_dtypes

        info = ml_dtypes.finfo(dtype)
        return dtype.name, float(info.eps), float(info.smallest_subnormal)
    return None


def row_sum_tolerance(x: Any, n_columns: int) -> float:
    """How far from 1 a row of ``n_columns`` probabilities in ``x``'s dtype may sum.

    Formats narrower than float32 (float16, bfloat16, float8, given as numpy, ml_dtypes or
    torch dtypes): ``eps + n_columns * sigma / 2``, with ``eps = 2u`` the format's machine
    epsilon (``u`` its unit roundoff) and ``sigma`` its smallest subnormal. A softmax
    evaluated in the format rounds the sum of the exponentials and each quotient to nearest
    (relative error ``u`` each, so ``|sum_k p_k - 1| <= 2u`` up to ``O(u^2)``), and each
    entry in the subnormal range carries an absolute error of up to ``sigma / 2``: bfloat16
    ``0.0078`` (real bfloat16 softmax rows: within ``0.0056`` stepwise, ``0.003`` rounded
    once), float16 ``0.00098``, float8_e4m3 ``0.125 + K 2^-10``. Other dtypes (float32,
    float64, integers, lists): ``max(1e-6, sqrt(eps))`` of the dtype (float64 for
    non-float input), scikit-learn's ``log_loss`` rule, which leaves room for
    probabilities computed at a lower precision and carried in float32.
    """
    facts = _low_precision_facts(x)
    if facts is not None:
        _, eps, sigma = facts
        return eps + n_columns * sigma / 2.0
    dtype = getattr(x, "dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else ""
    eps = float(np.finfo(np.dtype(name)).eps) if name in ("float32", "float64") else float(np.finfo(np.float64).eps)
    return max(1e-6, float(np.sqrt(eps)))


def _as_float(arr: np.ndarray, name: str) -> np.ndarray:
    """float64/float32 kept, float16 upcast to float32, integers and bools to float64."""
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be numeric, got an object array that is not: {exc}") from exc
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must be real-valued, got dtype {arr.dtype}.")
    if arr.dtype.kind in "USaMmV":  # strings, dates and time spans, raw bytes
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    return arr


def check_logits(
    X: Any, *, name: str = "X", allow_1d: bool = True, keep_tensor: bool = False, stream: bool = False
) -> Any:
    """Validate logits and return them as finite float32/float64 data.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
        Logits. 1-D input is a single binary logit per sample (if ``allow_1d``).
    name : str
        Name used in error messages.
    allow_1d : bool
        Whether 1-D input (single-logit binary) is accepted.
    keep_tensor : bool, default=False
        Return a torch tensor input as a validated tensor on its own device (checked with
        torch: nothing is copied to the host) instead of a numpy array.
    stream : bool, default=False
        Return a 2-D ``numpy.memmap`` with at least 2 columns that can be streamed from its mapping
        (:func:`precal._chunks.file_rows`) as a :class:`~precal._chunks.FileRows`, after
        checking it block by block; the process holds one block at a time.

    Returns
    -------
    numpy.ndarray, torch.Tensor or FileRows
        1-D or 2-D, dtype float32 or float64 (float16/bfloat16 upcast to float32,
        integers to float64; a streamed float16 file is upcast block by block). May share
        memory with the input; never written to.

    Notes
    -----
    **Overflow-safe row shifts.** Every softmax-type computation subtracts each row's
    largest logit first (``z - max_k z``). In float32 that difference overflows to ``-inf``
    when a row's range ``max z - min z`` exceeds the float32 maximum (3.4e38), e.g. a row
    ``[3e38, -3e38, 0]``, and the fits then walk to a bound on NaN derivatives. So when the
    whole array's range (its largest minus its smallest value, computed in float64) exceeds
    the float32 maximum, float32 logits (and narrower ones, upcast to float32) are returned
    as float64: a float64 copy of an array, a tensor upcast on its device, a streamed file
    read in float64 blocks; the results then equal those of float64 input. float64 logits
    with a row whose range overflows float64 (beyond 1.8e308) cannot be shifted at all and
    are refused with a ``ValueError`` naming the row. One pass over the data (its minimum
    and maximum) serves both this and the finiteness check.
    """
    if sp.issparse(X):
        raise TypeError(f"{name} is a sparse matrix: sparse input is not supported, logits must be dense.")
    if _is_tensor(X):
        import torch  # already imported: X is a tensor

        if X.layout != torch.strided:
            raise TypeError(f"{name} is a sparse torch tensor ({X.layout}): sparse input is not supported, logits "
                            "must be dense (X.to_dense()).")
        if X.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: it has a shape but no values to calibrate.")
    if keep_tensor and _is_tensor(X):
        return _check_logits_tensor(X, name, allow_1d)
    if stream:
        rows = file_rows(X)
        if rows is not None and rows.shape[1] >= 2:
            return _check_streamed_logits(rows, name)
    arr = _as_float(as_numpy(X), name)
    _check_logits_ndim(arr.shape, name, allow_1d)
    arr = check_array(
        arr,
        ensure_2d=False,
        dtype=[np.float64, np.float32],
        ensure_all_finite=False,  # checked below, with the range, in one pass
        input_name=name,
        ensure_min_samples=1,
        ensure_min_features=1,
        copy=False,
    )
    lo, hi = _aminmax(arr)
    _check_finite_range(lo, hi, name, arr.dtype)
    if arr.ndim == 2 and _row_shift_overflows(lo, hi, arr.dtype):
        if arr.dtype == np.float32:
            return arr.astype(np.float64)
        _check_row_ranges(arr.max(axis=1) - arr.min(axis=1), 0, arr, name)
    return arr


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _row_shift_overflows(lo: float, hi: float, dtype: Any) -> bool:
    """Whether some row of data with values in ``[lo, hi]`` may have a range that overflows ``dtype``."""
    span = float(hi) - float(lo)  # float64: inf only beyond the float64 maximum
    return span > _FLOAT32_MAX if str(dtype).replace("torch.", "") == "float32" else not np.isfinite(span)


def _check_finite_range(lo: float, hi: float, name: str, dtype: Any) -> None:
    """scikit-learn's finiteness messages from the data's minimum and maximum (NaN propagates into both)."""
    if np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"Input {name} contains NaN.")
    if np.isinf(lo) or np.isinf(hi):
        dtype_name = str(dtype).replace("torch.", "")
        raise ValueError(f"Input {name} contains infinity or a value too large for dtype({dtype_name!r}).")


def _check_row_ranges(spans: Any, start: int, rows: Any, name: str) -> None:
    """Refuse float64 rows whose range ``max - min`` overflows (``spans``: one per row, from row ``start``)."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(spans)))
    if bad.size:
        i = int(bad[0])
        row = np.asarray(rows[i], dtype=np.float64)
        raise ValueError(
            f"{name} row {start + i} spans [{row.min():.6g}, {row.max():.6g}]: the difference of its largest and "
            "smallest logit overflows float64, so no softmax of it can be computed. Logits within a row must "
            f"differ by at most {np.finfo(np.float64).max:.4g}."
        )


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _check_logits_ndim(shape: tuple[int, ...], name: str, allow_1d: bool) -> None:
    ndim = len(shape)
    if ndim == 0 or ndim > 2 or (ndim == 1 and not allow_1d):
        expected = "2-D (n_samples, n_classes)" + (" or 1-D (n_samples,)" if allow_1d else "")
        raise ValueError(f"{name} must be {expected} logits, got an array with shape {tuple(shape)} ({ndim}-D).")


def _check_logits_tensor(X: Any, name: str, allow_1d: bool) -> Any:
    """:func:`check_logits` for a torch tensor, in torch on the tensor's device.

    The same checks and messages as the numpy path (scikit-learn's wording); the only
    values that reach the host are two booleans (all finite? any NaN?).
    """
    import torch

    t = X.detach()
    if t.is_complex():
        raise ValueError(f"Complex data not supported: {name} must be real-valued, got dtype {t.dtype}.")
    if not t.is_floating_point():
        t = t.to(torch.float64)  # integers and bools, as the numpy path does
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # float16, bfloat16, float8: exact in float32
    _check_logits_ndim(tuple(t.shape), name, allow_1d)
    if t.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={tuple(t.shape)}) while a minimum of 1 is required ({name})."
        )
    if t.dim() == 2 and t.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required ({name})."
        )
    lo, hi = (v.item() for v in torch.aminmax(t.reshape(-1)))  # NaN propagates into both
    _check_finite_range(lo, hi, name, t.dtype)
    if t.dim() == 2 and _row_shift_overflows(lo, hi, t.dtype):
        if t.dtype == torch.float32:
            return t.to(torch.float64)
        spans = (t.amax(dim=1) - t.amin(dim=1)).cpu().numpy()
        _check_row_ranges(spans, 0, t.cpu().numpy(), name)
    return t


def _check_streamed_logits(rows: FileRows, name: str) -> FileRows:
    """:func:`check_logits` for a streamed memmap, block by block (scikit-learn's messages)."""
    lo, hi = np.inf, -np.inf
    for _, block in rows.blocks(rows_per_block(rows.shape[1])):
        b_lo, b_hi = _aminmax(block)
        _check_finite_range(b_lo, b_hi, name, rows.dtype)
        lo, hi = min(lo, b_lo), max(hi, b_hi)
    if not _row_shift_overflows(lo, hi, rows.work_dtype):
        return rows
    if rows.work_dtype == np.float32:
        return rows.with_work_dtype(np.float64)
    for start, block in rows.blocks(rows_per_block(rows.shape[1])):
        _check_row_ranges(block.max(axis=1) - block.min(axis=1), start, block, name)
    return rows


def check_probabilities(y_prob: Any, *, name: str = "y_prob", stream: bool = False) -> Any:
    """Validate class probabilities and return them as a ``(n_samples, n_classes)`` float array.

    1-D input is the positive-class probability of a binary problem and becomes
    ``[1 - p, p]``. Values must be finite and in ``[0, 1]``; rows must sum to 1 within the
    tolerance of the input's dtype (:func:`row_sum_tolerance`): the rounding error of a
    softmax evaluated in that format for float16, bfloat16 and float8 (bfloat16: 0.0078),
    scikit-learn's ``max(1e-6, sqrt(eps))`` for float32/float64. Pass low-precision
    probabilities in their own dtype so that their tolerance applies; logits are rejected.
    float32 and float64 are kept as they are (float16/bfloat16 become float32, integers
    float64): the checks and the metrics read the array without an upcast copy.

    With ``stream=True`` a 2-D ``numpy.memmap`` (at least 2 columns) that can be read from
    its mapping (:func:`precal._chunks.file_rows`) is checked block by block and returned as a
    :class:`~precal._chunks.FileRows`, so the process holds one block at a time.
    """
    if sp.issparse(y_prob):
        raise TypeError(f"{name} is a sparse matrix: sparse input is not supported, probabilities must be dense.")
    facts = _low_precision_facts(y_prob)
    source_name = facts[0] if facts is not None else str(getattr(y_prob, "dtype", "float64")).replace("torch.", "")
    rows = file_rows(y_prob) if stream else None
    if rows is not None and rows.shape[1] >= 2:
        data: Any = rows
    else:
        arr = _as_float(as_numpy(y_prob), name)
        if arr.ndim == 0 or arr.ndim > 2:
            raise ValueError(
                f"{name} must be 2-D (n_samples, n_classes) or 1-D (n_samples,) probabilities, "
                f"got an array with shape {arr.shape}."
            )
        data = check_array(
            arr, ensure_2d=False, dtype=[np.float64, np.float32], ensure_all_finite=False, input_name=name, copy=False
        )
    tol = row_sum_tolerance(y_prob, data.shape[1] if data.ndim == 2 else 2)
    # One pass gives min, max and the rows that do not sum to 1; NaN propagates into min
    # and max and inf shows in them, so this is also the finiteness check.
    check_rows = data.ndim == 2 and data.shape[1] > 1
    lo, hi, n_bad, first_bad, first_sum = _scan_probabilities(data, tol if check_rows else None)
    if np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"Input {name} contains NaN.")
    if np.isinf(lo) or np.isinf(hi):
        raise ValueError(f"Input {name} contains infinity (inf); probabilities must be finite.")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got values in [{lo:.6g}, {hi:.6g}]. "
            "If these are logits, apply a softmax first (or use a calibrator's predict_proba)."
        )
    if data.ndim == 1:
        arr = data.astype(np.float64)  # 1 - p exactly, whatever the input dtype
        return np.stack([1.0 - arr, arr], axis=1)
    if data.shape[1] == 1:
        raise ValueError(
            f"{name} has a single column; pass binary probabilities as 1-D (positive class) or as (n_samples, 2)."
        )
    if n_bad:
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {tol:.2g} for dtype {source_name}); "
            f"{n_bad} row(s) do not, e.g. row {first_bad} sums to {first_sum:.8g}."
        )
    return data


def _scan_probabilities(data: Any, tol: float | None) -> tuple[float, float, int, int, float]:
    """Min, max, and (with ``tol``) the count, first index and sum of rows not summing to 1.

    Reads ``data`` (array or :class:`FileRows`) block by block; empty input gives
    ``(0, 0, 0, -1, nan)``.
    """
    lo, hi = np.inf, -np.inf
    n_bad, first_bad, first_sum = 0, -1, float("nan")
    k = data.shape[1] if data.ndim == 2 else 1
    if data.shape[0] == 0:
        return 0.0, 0.0, 0, -1, first_sum
    for start, block in row_blocks(data, rows_per_block(k)):
        b_lo, b_hi = (float(v) for v in _aminmax(block))
        lo, hi = (b_lo, b_hi) if np.isnan(b_lo) or np.isnan(b_hi) else (min(lo, b_lo), max(hi, b_hi))
        if np.isnan(lo):
            return lo, hi, n_bad, first_bad, first_sum
        if tol is not None:
            sums = _row_sums(block)
            bad = np.abs(sums - 1.0) > tol
            count = int(np.count_nonzero(bad))
            if count and first_bad < 0:
                i = int(np.flatnonzero(bad)[0])
                first_bad, first_sum = start + i, float(sums[i])
            n_bad += count
    return lo, hi, n_bad, first_bad, first_sum


def _aminmax(arr: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value (NaN propagates); numpy's SIMD reductions, no copy of a strided view."""
    if arr.size == 0:
        return 0.0, 0.0
    return float(arr.min()), float(arr.max())


def _row_sums(arr: np.ndarray) -> np.ndarray:
    """Row sums by :func:`precal._numerics.row_sums` (a product with ones), accumulated in the
    array's float type: far below the float32 tolerance of :func:`row_sum_tolerance`."""
    from ._numerics import as_tensor, row_sums

    if arr.dtype not in (np.float32, np.float64):
        return arr.sum(axis=1)
    return row_sums(as_tensor(arr)).numpy()


#: What a label error tells a metric's caller to do (metrics take ``labels=``).
LABELS_FIX = "Pass labels=... to say which class each column is."

#: What it tells a calibrator's ``fit`` caller (no ``labels=`` there: the columns are the classes).
FIT_LABELS_FIX = ("Give y as column indices 0..K-1 (label i is the class of logit column i), or fit on data "
                  "holding every class.")


def encode_labels(
    y: Any, n_columns: int, *, labels: Any = None, name: str = "y", min_classes: int = 2, fix: str = LABELS_FIX
) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to column indices of a ``(n_samples, n_columns)`` score array.

    The classes (one per column, in column order) are, in this order of preference:

    1. ``labels`` when given (must have ``n_columns`` distinct entries);
    2. ``0, 1, ..., n_columns - 1`` when every label is an integer in that range, so a
       cross-validation fold that misses a class still maps onto the right columns (in
       ``y``'s dtype, widened when it cannot hold ``n_columns - 1``);
    3. the sorted distinct labels of ``y``, whose number must equal ``n_columns``.

    Boolean labels name two classes, so they are refused for scores with other than 2
    columns. The classes returned are always distinct. ``fix`` ends the messages of labels
    that do not match the columns (:data:`LABELS_FIX`, or :data:`FIT_LABELS_FIX` for a fit).

    Returns
    -------
    classes : ndarray of shape (n_columns,)
    y_idx : ndarray of int64, shape (n_samples,)
        Column index of each sample's label.
    """
    y_arr = as_numpy(y)
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        y_arr = column_or_1d(y_arr, warn=True)  # DataConversionWarning, as scikit-learn does
    if y_arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,) class labels, got an array with shape {y_arr.shape}.")
    if y_arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: found 0 sample(s) (shape=(0,)) while a minimum of 1 is required.")
    if y_arr.dtype.kind == "f" and not np.isfinite(y_arr).all():
        raise ValueError(f"{name} contains NaN or inf labels.")
    y_arr = column_or_1d(y_arr, warn=False)
    if y_arr.dtype.kind == "O":
        kinds = {type(v) for v in y_arr}
        if len(kinds) > 1 and not all(issubclass(k, numbers.Number) for k in kinds):
            raise TypeError(f"{name} mixes label types {sorted(k.__name__ for k in kinds)}; use one type for all labels.")
    if labels is None and y_arr.dtype.kind in "iu" and y_arr.min() >= 0 and y_arr.max() < n_columns:
        # Fast path (no sort): integer labels that index the columns directly. Same result
        # as rule 2 / rule 3 below, whose classes are then 0..n_columns-1.
        if min_classes > 1:
            n_present = int(np.count_nonzero(np.bincount(y_arr, minlength=n_columns)))
            if n_present < min_classes:
                present = np.unique(y_arr)
                raise ValueError(
                    f"{name} holds {n_present} class(es) ({present.tolist()!r}); at least {min_classes} classes "
                    "are needed to fit a calibrator."
                )
        return _column_classes(n_columns, y_arr.dtype), y_arr.astype(np.int64)
    check_classification_targets(y_arr)
    if type_of_target(y_arr) not in ("binary", "multiclass"):
        raise ValueError(f"{name} must be binary or multiclass labels, got target type {type_of_target(y_arr)!r}.")
    present = np.unique(y_arr)
    if len(present) < min_classes:
        raise ValueError(
            f"{name} holds {len(present)} class(es) ({present.tolist()!r}); at least {min_classes} classes "
            "are needed to fit a calibrator."
        )

    if y_arr.dtype.kind == "b" and n_columns != 2:
        raise ValueError(
            f"{name} holds boolean labels (at most 2 classes: False, True) but the scores have {n_columns} columns "
            f"(one per class). {fix}"
        )
    if labels is not None:
        classes = np.asarray(labels)
        if classes.ndim != 1 or len(np.unique(classes)) != len(classes):
            raise ValueError(f"labels must be a 1-D list of distinct class labels, got {classes!r}.")
        if len(classes) != n_columns:
            raise ValueError(f"labels has {len(classes)} entries but the scores have {n_columns} columns.")
        order = np.argsort(classes, kind="stable")
        classes_sorted = classes[order]
        pos = np.searchsorted(classes_sorted, y_arr)
        pos = np.clip(pos, 0, len(classes) - 1)
        unknown = classes_sorted[pos] != y_arr
        if unknown.any():
            raise ValueError(
                f"{name} contains labels not in labels/classes_: {np.unique(y_arr[unknown]).tolist()!r}."
            )
        return classes, order[pos].astype(np.int64)

    numeric = y_arr.dtype.kind in "biuf"
    if numeric and len(present) < n_columns:
        integral = np.all(np.mod(present, 1) == 0)
        if integral and present.min() >= 0 and present.max() < n_columns:
            return _column_classes(n_columns, y_arr.dtype), y_arr.astype(np.int64)
    if len(present) != n_columns:
        raise ValueError(
            f"{name} has {len(present)} classes {present.tolist()!r} but the scores have {n_columns} columns "
            f"(one per class). {fix}"
        )
    return present, np.searchsorted(present, y_arr).astype(np.int64)


def _column_classes(n_columns: int, dtype: np.dtype) -> np.ndarray:
    """``0, 1, ..., n_columns - 1`` in ``dtype``, widened if ``dtype`` cannot hold them all
    (uint8 labels with 300 columns), so the classes are always distinct."""
    if dtype.kind == "b":
        return np.arange(n_columns).astype(bool)  # only reached with n_columns == 2
    if dtype.kind in "iu":
        dtype = np.promote_types(dtype, np.min_scalar_type(n_columns - 1))
    return np.arange(n_columns).astype(dtype)


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
    """Validate sample weights: finite, non-negative, not all zero, one per sample."""
    if sample_weight is None:
        return None
    w = _as_float(as_numpy(sample_weight), "sample_weight")
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}.")
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or inf.")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative; got negative values.")
    if not (w > 0).any():
        raise ValueError("sample_weight must have at least one positive value; got all zeros.")
    return w


def check_same_length(**arrays: Any) -> None:
    """Raise ``ValueError`` if the named arrays differ in their first dimension."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"Inconsistent numbers of samples: {desc}.")


def check_number(
    x: Any,
    name: str,
    target_type: Any,
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    include_boundaries: str = "both",
    finite: bool = False,
) -> Any:
    """scikit-learn's :func:`~sklearn.utils.check_scalar`, strict about bool and NaN.

    ``check_scalar`` takes ``True`` for an ``int`` (``bool`` subclasses ``int``) and lets
    ``nan`` through every bound (each comparison with NaN is false). Here a ``bool`` (or
    ``numpy.bool_``) is refused where a number is expected, ``nan`` always, and ``inf`` with
    ``finite=True``, each with a message in ``check_scalar``'s style that names the
    parameter. Returns ``x``.
    """
    if isinstance(x, (bool, np.bool_)) and target_type is not bool:
        targets = target_type if isinstance(target_type, tuple) else (target_type,)
        names = ", ".join("int" if t is numbers.Integral else "float" if t is numbers.Real else t.__name__
                          for t in targets)
        raise TypeError(f"{name} must be an instance of {names if len(targets) == 1 else '{' + names + '}'}, not bool.")
    check_scalar(x, name, target_type)  # the type, with scikit-learn's message
    if isinstance(x, numbers.Integral):
        if finite:
            try:
                float(x)
            except OverflowError:
                raise ValueError(f"{name} == {x}, must be finite (it does not fit in a float).") from None
    elif isinstance(x, numbers.Real):
        if math.isnan(x):
            raise ValueError(f"{name} == nan, must be a number (not NaN).")
        if finite and math.isinf(x):
            raise ValueError(f"{name} == {x}, must be finite.")
    check_scalar(x, name, target_type, min_val=min_val, max_val=max_val, include_boundaries=include_boundaries)
    return x


def check_option(x: Any, name: str, options: tuple[Any, ...]) -> Any:
    """``x`` if it is one of ``options`` (strings, ``None``, ``True``/``False``), else a ``ValueError``.

    Compared by type as well as value, so ``1`` is not taken for ``True`` nor ``0`` for
    ``False``, and an unhashable ``x`` gets the same message as a wrong one.
    """
    for option in options:
        if type(x) is type(option) and x == option:
            return x
        if isinstance(option, bool) and isinstance(x, np.bool_) and bool(x) == option:
            return bool(x)
    listed = [repr(o) for o in options]
    choices = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
    raise ValueError(f"{name} must be {choices}, got {x!r}.")

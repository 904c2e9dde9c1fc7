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

import numbers
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_array, column_or_1d
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from ._chunks import FileRows, file_rows, row_blocks, rows_per_block

__all__ = [
    "as_numpy",
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
    if arr.dtype.kind == "V" or (arr.dtype.kind not in "biufcOUSb" and arr.dtype.name.startswith("float")):
        # ml_dtypes extension types (bfloat16, float8_*): exact in float32.
        arr = arr.astype(np.float32)
    return arr


_BFLOAT16_EPS = 2.0**-7
_LOW_PRECISION_EPS = {"bfloat16": 2.0**-7, "float8_e4m3": 2.0**-3, "float8_e5m2": 2.0**-2}


def _source_float_dtype(x: Any) -> Any:
    """The float dtype ``x`` arrived in (a name for bfloat16/float8, which numpy lacks), else float64.

    Used for dtype-aware tolerances, before :func:`as_numpy` upcasts bfloat16.
    """
    dtype = getattr(x, "dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else ""
    if name == "bfloat16":
        return "bfloat16"
    if name in ("float16", "float32", "float64"):
        return np.dtype(name)
    if name.startswith("float8_e4m3"):
        return "float8_e4m3"
    if name.startswith("float8_e5m2"):
        return "float8_e5m2"
    return np.dtype(np.float64)


def _as_float(arr: np.ndarray, name: str) -> np.ndarray:
    """float64/float32 kept, float16 upcast to float32, integers and bools to float64."""
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be numeric, got an object array that is not: {exc}") from exc
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must be real-valued, got dtype {arr.dtype}.")
    if arr.dtype.kind in "USa":
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
    """
    if sp.issparse(X):
        raise TypeError(f"{name} is a sparse matrix: sparse input is not supported, logits must be dense.")
    if keep_tensor and _is_tensor(X):
        return _check_logits_tensor(X, name, allow_1d)
    if stream:
        rows = file_rows(X)
        if rows is not None and rows.shape[1] >= 2:
            _check_finite_blocks(rows, name)
            return rows
    arr = _as_float(as_numpy(X), name)
    _check_logits_ndim(arr.shape, name, allow_1d)
    arr = check_array(
        arr,
        ensure_2d=False,
        dtype=[np.float64, np.float32],
        ensure_all_finite=True,
        input_name=name,
        ensure_min_samples=1,
        ensure_min_features=1,
        copy=False,
    )
    return arr


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
    if not bool(torch.isfinite(t).all()):
        if bool(torch.isnan(t).any()):
            raise ValueError(f"Input {name} contains NaN.")
        raise ValueError(f"Input {name} contains infinity or a value too large for {t.dtype}.")
    return t


def _check_finite_blocks(rows: FileRows, name: str) -> None:
    """Finiteness of streamed logits, block by block (scikit-learn's messages)."""
    for _, block in rows.blocks(rows_per_block(rows.shape[1])):
        lo, hi = _aminmax(block)  # NaN propagates into both, inf shows in them
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"Input {name} contains NaN.")
        if np.isinf(lo) or np.isinf(hi):
            raise ValueError(f"Input {name} contains infinity or a value too large for dtype({str(rows.dtype)!r}).")


def check_probabilities(y_prob: Any, *, name: str = "y_prob", stream: bool = False) -> Any:
    """Validate class probabilities and return them as a ``(n_samples, n_classes)`` float array.

    1-D input is the positive-class probability of a binary problem and becomes
    ``[1 - p, p]``. Values must be finite and in ``[0, 1]``; rows must sum to 1 within
    ``max(1e-6, sqrt(eps))`` of the input dtype (as scikit-learn's ``log_loss`` does), so
    probabilities rounded to float16 or bfloat16 are accepted while logits are rejected.
    float32 and float64 are kept as they are (float16/bfloat16 become float32, integers
    float64): the checks and the metrics read the array without an upcast copy.

    With ``stream=True`` a 2-D ``numpy.memmap`` (at least 2 columns) that can be read from
    its mapping (:func:`precal._chunks.file_rows`) is checked block by block and returned as a
    :class:`~precal._chunks.FileRows`, so the process holds one block at a time.
    """
    if sp.issparse(y_prob):
        raise TypeError(f"{name} is a sparse matrix: sparse input is not supported, probabilities must be dense.")
    source_dtype = _source_float_dtype(y_prob)
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
    eps = _LOW_PRECISION_EPS[source_dtype] if isinstance(source_dtype, str) else float(np.finfo(source_dtype).eps)
    tol = max(1e-6, float(np.sqrt(eps)))
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
            f"{name} rows must sum to 1 (tolerance {tol:.1e} for dtype {source_dtype}); "
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
            # torch's row reduction (cascade summation, far below tol in float32 too) is
            # several times faster than numpy's over short rows
            sums = _row_sums(block)
            bad = np.abs(sums - 1.0) > tol
            count = int(np.count_nonzero(bad))
            if count and first_bad < 0:
                i = int(np.flatnonzero(bad)[0])
                first_bad, first_sum = start + i, float(sums[i])
            n_bad += count
    return lo, hi, n_bad, first_bad, first_sum


def _aminmax(arr: np.ndarray) -> tuple[Any, Any]:
    """Smallest and largest value in one pass (torch's ``aminmax``; NaN propagates)."""
    if arr.size == 0:
        return 0.0, 0.0
    if arr.dtype in (np.float32, np.float64):
        import torch

        from ._numerics import as_tensor

        lo, hi = torch.aminmax(as_tensor(arr).reshape(-1))
        return lo.item(), hi.item()
    return arr.min(), arr.max()


def _row_sums(arr: np.ndarray) -> np.ndarray:
    from ._numerics import as_tensor

    return as_tensor(arr).sum(dim=1).numpy() if arr.dtype in (np.float32, np.float64) else arr.sum(axis=1)


def encode_labels(
    y: Any, n_columns: int, *, labels: Any = None, name: str = "y", min_classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to column indices of a ``(n_samples, n_columns)`` score array.

    The classes (one per column, in column order) are, in this order of preference:

    1. ``labels`` when given (must have ``n_columns`` distinct entries);
    2. ``0, 1, ..., n_columns - 1`` when every label is an integer in that range, so a
       cross-validation fold that misses a class still maps onto the right columns;
    3. the sorted distinct labels of ``y``, whose number must equal ``n_columns``.

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
        return np.arange(n_columns).astype(y_arr.dtype), y_arr.astype(np.int64)
    check_classification_targets(y_arr)
    if type_of_target(y_arr) not in ("binary", "multiclass"):
        raise ValueError(f"{name} must be binary or multiclass labels, got target type {type_of_target(y_arr)!r}.")
    present = np.unique(y_arr)
    if len(present) < min_classes:
        raise ValueError(
            f"{name} holds {len(present)} class(es) ({present.tolist()!r}); at least {min_classes} classes "
            "are needed to fit a calibrator."
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
            classes = np.arange(n_columns).astype(y_arr.dtype)
            return classes, y_arr.astype(np.int64)
    if len(present) != n_columns:
        raise ValueError(
            f"{name} has {len(present)} classes {present.tolist()!r} but the scores have {n_columns} columns "
            "(one per class). Pass labels=... to say which class each column is."
        )
    return present, np.searchsorted(present, y_arr).astype(np.int64)


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

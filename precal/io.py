"""Reading the files the ``precal`` command takes: logits and labels, model inputs, models.

Array files
-----------
========  ============================================================================
suffix    content
========  ============================================================================
``.npy``  one array (``numpy.save``); read without pickle.
``.npz``  named arrays (``numpy.savez``); read without pickle. Logits are under
          ``logits`` and labels under ``labels`` unless a key is named; a file with a
          single array needs no key.
``.pt``   (also ``.pth``) a tensor, or a dict of tensors (``torch.save``); read with
          ``torch.load(weights_only=True)``, which executes no code from the file.
          Keys as for ``.npz``.
``.csv``  logits only: a header row, one column per class (the header is the class
          name) plus a label column (default ``label``); labels are class names from
          the header or column indices ``0..K-1``.
``.txt``  labels only: one integer class index per line, no header.
========  ============================================================================

Labels are always *column indices* of the logits (``0..K-1``), so each logits column is
one class; a ``.csv`` may spell them as the column names.

Models
------
:func:`load_model` takes an import path ``module.sub:factory`` whose attribute is an
``nn.Module`` or a callable returning one, with optional weights as data (``.safetensors``,
or a ``state_dict`` read with ``torch.load(weights_only=True)``). A ``torch.export`` program
(``.pt2``) or a TorchScript file loads only with ``trust=True``: both loaders can run code
stored in the file (see :class:`UntrustedFileError`).

Size limit
----------
Every input file is checked against :data:`DEFAULT_MAX_INPUT_BYTES` (or the caller's
``max_bytes``) from its headers before anything is read or decompressed.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import logging
import os
import secrets
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

__all__ = [
    "FileFormatError",
    "LogitsData",
    "LoadedModel",
    "ARRAY_SUFFIXES",
    "read_arrays",
    "open_arrays",
    "select_array",
    "read_csv_table",
    "load_logits",
    "load_inputs",
    "load_model",
    "load_weights",
    "check_model_spec",
    "model_file_kind",
    "UntrustedFileError",
    "InputTooLargeError",
    "DEFAULT_MAX_INPUT_BYTES",
    "WEIGHTS_SUFFIXES",
    "check_input_size",
    "input_size",
    "format_bytes",
    "write_file_atomic",
]

#: Suffixes :func:`read_arrays` understands.
ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_LOGITS_SUFFIXES = (*ARRAY_SUFFIXES, ".csv")
_LABELS_SUFFIXES = (*ARRAY_SUFFIXES, ".csv", ".txt")


class FileFormatError(ValueError):
    """A file that cannot be read as what it should hold (wrong format, key, shape or values)."""


#: Largest number of bytes one input file may expand to, by default (4 GiB): the sum of the
#: uncompressed sizes of a zip archive's members (``.npz``, ``torch.save`` files), else the
#: file's size. Checked from the headers before anything is decompressed, so a small
#: archive that would expand to gigabytes (a zip bomb) fails at once; the ``precal``
#: command's ``--max-input-size`` raises it.
DEFAULT_MAX_INPUT_BYTES = 4 * 2**30


class InputTooLargeError(FileFormatError):
    """A file that expands to more bytes than the input size limit (see :func:`check_input_size`)."""


def format_bytes(n: float) -> str:
    """A byte count for people: ``format_bytes(3 * 2**30)`` is ``'3 GiB'``.

    Examples
    --------
    >>> from precal.io import format_bytes
    >>> format_bytes(1536), format_bytes(4 * 2**30), format_bytes(12)
    ('1.5 KiB', '4 GiB', '12 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def input_size(path: str | os.PathLike[str]) -> int:
    """Bytes a file's arrays expand to, read from its headers without decompressing anything:
    the sum of the declared uncompressed sizes of a zip archive's members, else the file size.

    Python's zipfile (``numpy.load``) stops inflating a member at its declared size, so the
    headers bound what reading can produce."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                return sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError):
            pass  # a damaged archive: its reader says what is wrong
    return path.stat().st_size


def check_input_size(path: str | os.PathLike[str], max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> int:
    """Refuse a file that expands to more than ``max_bytes`` (``None``: no limit); return its size.

    Raises
    ------
    InputTooLargeError
        With the size found, the limit and how to raise it.
    """
    size = input_size(path)
    if max_bytes is not None and size > max_bytes:
        raise InputTooLargeError(
            f"{str(path)!r} expands to {format_bytes(size)}, more than the input size limit of "
            f"{format_bytes(max_bytes)} (checked from its headers; nothing was decompressed). If the file is "
            "yours and that large, raise the limit with --max-input-size (max_bytes= in precal.io)."
        )
    return size


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise FileFormatError(
            f"{what} file {str(path)!r} has suffix {suffix or '(none)'!r}; expected one of {', '.join(allowed)}."
        )
    return suffix


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


#: What the readers' refusals of pickled content mean for a precal user (numpy names a switch
#: and torch drops its reason after the first sentence; neither applies to a data file here).
_PICKLE_REFUSED = ("it holds pickled Python objects, which precal never loads from a data file (loading them can "
                   "run code); save plain numeric arrays or tensors (numpy.save/savez, or torch.save of tensors "
                   "or a dict of tensors)")


def _first_sentence(exc: BaseException) -> str:
    """First sentence of the first line: torch's reader errors append long generic advice. A
    refusal of pickled content says so in precal's words."""
    line = _first_line(exc)
    if "allow_pickle=False" in line or line.startswith("Weights only load failed"):
        return _PICKLE_REFUSED + "."
    head, sep, _ = line.partition(". ")
    return head + ("." if sep else "")


def _tensor_to_numpy(value: Any, path: Path, key: str) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise FileFormatError(
            f"{str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor; a .pt array file holds a "
            "tensor or a dict of tensors."
        )
    t = value.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()  # bfloat16 and float8 have no numpy dtype; float32 holds them exactly
    return t.numpy()


class _NpzArrays(Mapping[str, np.ndarray]):
    """The arrays of an open ``.npz`` archive by key, each decompressed only when asked for
    (so a missing key fails before anything is inflated); read errors are FileFormatErrors."""

    def __init__(self, archive: Any, path: Path) -> None:
        self._archive, self._path = archive, path

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._archive.files:
            raise KeyError(key)
        try:
            return self._archive[key]
        except Exception as exc:  # noqa: BLE001 - every reader failure means "not this format"
            raise FileFormatError(f"cannot read {key!r} in {str(self._path)!r}: {_first_sentence(exc)}") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._archive.files)

    def __len__(self) -> int:
        return len(self._archive.files)


@contextlib.contextmanager
def open_arrays(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES
) -> Iterator[Mapping[str, np.ndarray]]:
    """The arrays in a ``.npy``, ``.npz`` or ``.pt`` file by key, as a context manager.

    Like :func:`read_arrays`, but a ``.npz`` archive's arrays are decompressed one by one
    when they are looked up, so picking keys costs nothing.
    """
    path = Path(path)
    suffix = _suffix(path, ARRAY_SUFFIXES, "array")
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if suffix == ".npy" and magic != b"\x93NUMPY":
        raise FileFormatError(
            f"{str(path)!r} is not a .npy file (it lacks the NumPy header; write it with numpy.save)."
        )
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise FileFormatError(f"{str(path)!r} is not a .npz file (not a zip archive; write it with numpy.savez).")
    check_input_size(path, max_bytes)
    if suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - every reader failure means "not this format"
            raise FileFormatError(f"cannot read {str(path)!r} as a .npz array file: {_first_sentence(exc)}") from exc
        with archive:
            yield _NpzArrays(archive, path)
        return
    try:
        if suffix == ".npy":
            content: Any = np.load(path, allow_pickle=False)
        else:
            import torch

            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure means "not this format"
        raise FileFormatError(f"cannot read {str(path)!r} as a {suffix} array file: {_first_sentence(exc)}") from exc
    if suffix == ".npy":
        yield {"": content}
    elif isinstance(content, Mapping):
        if not content:
            raise FileFormatError(f"{str(path)!r} holds an empty dict.")
        yield {str(key): _tensor_to_numpy(value, path, str(key)) for key, value in content.items()}
    else:
        yield {"": _tensor_to_numpy(content, path, "")}


def read_arrays(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES
) -> dict[str, np.ndarray]:
    """All arrays in a ``.npy``, ``.npz`` or ``.pt`` file, by key.

    A ``.npy`` file and a ``.pt`` file holding one tensor give ``{"": array}``. Nothing is
    unpickled: object arrays and ``.pt`` files holding anything but tensors are refused.
    bfloat16/float8 tensors come back as float32 (exact). A file that expands to more than
    ``max_bytes`` (None: no limit) is refused from its headers, before anything is read.

    Raises
    ------
    FileFormatError
        Unknown suffix, or a file that is not what its suffix says.
    InputTooLargeError
        The file expands to more than ``max_bytes``.
    OSError
        The file cannot be opened.
    """
    with open_arrays(path, max_bytes=max_bytes) as arrays:
        return {key: arrays[key] for key in arrays}


def select_array(
    arrays: Mapping[str, np.ndarray], key: str | None, default: str, *, path: Any, option: str
) -> tuple[np.ndarray, str | None]:
    """The array under ``key``; else under ``default``; else the file's only array.

    Returns the array and the key it was found under (``None`` for a bare array).
    ``option`` names the command-line option that picks a key, for the error message.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.io import select_array
    >>> arrays = {"logits_test": np.zeros((4, 3)), "labels_test": np.zeros(4)}
    >>> select_array(arrays, "logits_test", "logits", path="r.npz", option="--logits-key")[1]
    'logits_test'
    >>> select_array(arrays, None, "logits", path="r.npz", option="--logits-key")
    Traceback (most recent call last):
    ...
    precal.io.FileFormatError: 'r.npz' has no key 'logits' (keys: logits_test, labels_test); choose one with --logits-key.
    """
    keys = [k for k in arrays if k]
    if key is not None:
        if key not in arrays or not key:
            where = f"keys: {', '.join(keys)}" if keys else "it holds a single unnamed array"
            raise FileFormatError(f"{str(path)!r} has no key {key!r} ({where}); choose one with {option}.")
        return arrays[key], key
    if default in arrays:
        return arrays[default], default
    if len(arrays) == 1:
        (only_key, value), = arrays.items()
        return value, only_key or None
    raise FileFormatError(
        f"{str(path)!r} has no key {default!r} (keys: {', '.join(keys)}); choose one with {option}."
    )


def read_csv_table(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a comma-separated file (blank lines skipped; every row as wide as the header)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{str(path)!r} is not a UTF-8 text file ({exc.reason}).") from exc
    except csv.Error as exc:
        raise FileFormatError(f"cannot parse {str(path)!r} as CSV: {exc}") from exc
    if not rows:
        raise FileFormatError(f"{str(path)!r} is empty.")
    header = [cell.strip() for cell in rows[0]]
    body = rows[1:]
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise FileFormatError(
                f"{str(path)!r} line {line_no} has {len(row)} field(s) but the header has {len(header)}."
            )
    return header, [[cell.strip() for cell in row] for row in body]


def _csv_logits(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    header, body = read_csv_table(path)
    if len(set(header)) != len(header):
        raise FileFormatError(f"{str(path)!r}: the header has repeated column names: {header}.")
    label_at = header.index(label_column) if label_column in header else None
    class_cols = [i for i in range(len(header)) if i != label_at]
    names = [header[i] for i in class_cols]
    if not body:
        raise FileFormatError(f"{str(path)!r} has a header but no rows.")
    logits = np.empty((len(body), len(class_cols)), dtype=np.float64)
    for r, row in enumerate(body):
        for c, i in enumerate(class_cols):
            try:
                logits[r, c] = float(row[i])
            except ValueError:
                raise FileFormatError(
                    f"{str(path)!r} line {r + 2}, column {header[i]!r}: {row[i]!r} is not a number"
                    f"{'' if label_at is not None else f' (no label column {label_column!r}; use --label-column)'}."
                ) from None
    labels = None if label_at is None else np.array([row[label_at] for row in body])
    return logits, labels, names


def _read_label_file(path: Path, key: str | None, label_column: str, max_bytes: int | None
                     ) -> tuple[np.ndarray, str | None]:
    suffix = _suffix(path, _LABELS_SUFFIXES, "labels")
    if suffix in (".txt", ".csv"):
        if not path.is_file():
            raise FileNotFoundError(f"No such file: {str(path)!r}.")
        check_input_size(path, max_bytes)
    if suffix == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FileFormatError(f"{str(path)!r} is not a UTF-8 text file ({exc.reason}).") from exc
        return np.array([line.strip() for line in text.splitlines() if line.strip()]), None
    if suffix == ".csv":
        header, body = read_csv_table(path)
        if label_column in header:
            at = header.index(label_column)
        elif len(header) == 1:
            at = 0
        else:
            raise FileFormatError(
                f"{str(path)!r} has columns {header} but no label column {label_column!r}; use --label-column."
            )
        return np.array([row[at] for row in body]), header[at]
    with open_arrays(path, max_bytes=max_bytes) as arrays:
        return select_array(arrays, key, "labels", path=path, option="--labels-key")


def _label_indices(values: np.ndarray, n_classes: int, class_names: list[str] | None, where: str) -> np.ndarray:
    """Labels as int64 column indices in ``0..n_classes-1``."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FileFormatError(f"labels in {where} must be 1-D (one class index per sample), got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise FileFormatError(f"labels in {where} are empty.")
    if arr.dtype.kind in "US":
        text = arr.astype(str)
        names = {name: i for i, name in enumerate(class_names or [])}
        out = np.empty(text.shape[0], dtype=np.int64)
        for i, label in enumerate(text):
            if label in names:
                out[i] = names[label]
                continue
            try:
                out[i] = int(label)
            except ValueError:
                known = f" or one of the column names {list(names)}" if names else ""
                raise FileFormatError(
                    f"label {str(label)!r} (sample {i}) in {where} is not a class index 0..{n_classes - 1}{known}."
                ) from None
        arr = out
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or np.any(np.mod(arr, 1) != 0):
            raise FileFormatError(f"labels in {where} must be integer class indices; found non-integer values.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise FileFormatError(f"labels in {where} must be integer class indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        raise FileFormatError(
            f"labels in {where} must be class indices 0..{n_classes - 1} (one per logits column); "
            f"found {sorted(set(arr[bad].tolist()))[:5]}."
        )
    return arr


def _check_logits(values: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise FileFormatError(f"logits in {where} must be numbers, got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise FileFormatError(
            f"logits in {where} must be 2-D (n_samples, n_classes), got shape {arr.shape}"
            f"{'; for one logit per sample (binary), store the two columns [0, z]' if arr.ndim == 1 else ''}."
        )
    if arr.shape[0] == 0 or arr.shape[1] < 2:
        raise FileFormatError(f"logits in {where} need at least 1 row and 2 columns, got shape {arr.shape}.")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        raise FileFormatError(f"logits in {where} contain {int((~finite).sum())} NaN or inf value(s).")
    return arr


@dataclass(frozen=True)
class LogitsData:
    """Logits, labels and where they came from.

    Attributes
    ----------
    logits : ndarray of shape (n_samples, n_classes)
        Float logits as stored (float16/32/64; bfloat16 read as float32).
    labels : ndarray of int64, shape (n_samples,)
        Column index of each sample's true class.
    class_names : list of str or None
        Column names of a ``.csv`` file.
    source : dict
        ``logits`` / ``labels`` file paths and the keys or column used.
    """

    logits: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)


def load_logits(
    logits_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    *,
    logits_key: str | None = None,
    labels_key: str | None = None,
    label_column: str = "label",
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
) -> LogitsData:
    """Read logits and their labels (see the module docstring for the file formats).

    Parameters
    ----------
    logits_path : path
        ``.npy``, ``.npz``, ``.pt``/``.pth`` or ``.csv``.
    labels_path : path, optional
        A separate labels file (``.npy``, ``.npz``, ``.pt``, ``.csv``, ``.txt``); required
        when the logits file holds no labels. It takes precedence over labels in the logits
        file.
    logits_key, labels_key : str, optional
        Keys in ``.npz``/``.pt`` files; defaults ``"logits"`` and ``"labels"``.
    label_column : str, default="label"
        Label column of ``.csv`` files.
    max_bytes : int or None, default=DEFAULT_MAX_INPUT_BYTES
        Largest size each file may expand to, checked from its headers before it is read
        (:func:`check_input_size`); None: no limit.

    Raises
    ------
    FileFormatError
        Unreadable file, missing key, wrong shape, NaN/inf logits, labels that are not class
        indices, or labels and logits of different lengths.
    InputTooLargeError
        A file expands to more than ``max_bytes``.
    """
    path = Path(logits_path)
    suffix = _suffix(path, _LOGITS_SUFFIXES, "logits")
    if suffix == ".csv":
        if not path.is_file():
            raise FileNotFoundError(f"No such file: {str(path)!r}.")
        check_input_size(path, max_bytes)
        raw, labels, class_names = _csv_logits(path, label_column)
        return _logits_data(path, raw, labels, class_names, {"logits": str(path)}, labels_path, labels_key,
                            label_column, max_bytes, arrays=None)
    with open_arrays(path, max_bytes=max_bytes) as arrays:
        raw, key = select_array(arrays, logits_key, "logits", path=path, option="--logits-key")
        return _logits_data(path, raw, None, None, {"logits": str(path), "logits_key": key}, labels_path,
                            labels_key, label_column, max_bytes, arrays=arrays)


def _logits_data(path: Path, raw: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None,
                 source: dict[str, Any], labels_path: Any, labels_key: str | None, label_column: str,
                 max_bytes: int | None, arrays: Mapping[str, np.ndarray] | None) -> LogitsData:
    """Check the logits, find their labels (a labels file, the same archive, or the csv's column)."""
    logits = _check_logits(raw, repr(str(path)))
    if labels is not None:
        source["labels"], source["labels_key"] = str(path), label_column
    if labels_path is not None:
        lpath = Path(labels_path)
        labels, key = _read_label_file(lpath, labels_key, label_column, max_bytes)
        source["labels"], source["labels_key"] = str(lpath), key
    elif arrays is not None:
        lkey = labels_key or "labels"
        if lkey not in arrays or not lkey:
            if labels_key is not None:
                select_array(arrays, labels_key, "labels", path=path, option="--labels-key")  # raises
            if list(arrays) == [""]:
                raise FileFormatError(f"{str(path)!r} holds the logits only; pass the labels with --labels FILE.")
            keys = ", ".join(k for k in arrays if k)
            raise FileFormatError(
                f"{str(path)!r} holds no labels (no key 'labels'; keys: {keys}); "
                "pass --labels FILE, or --labels-key KEY."
            )
        labels, source["labels"], source["labels_key"] = arrays[lkey], str(path), lkey
    elif labels is None:
        raise FileFormatError(
            f"{str(path)!r} has no label column {label_column!r}; use --label-column NAME or --labels FILE."
        )
    y = _label_indices(labels, logits.shape[1], class_names, repr(source["labels"]))
    if y.shape[0] != logits.shape[0]:
        raise FileFormatError(
            f"labels ({source['labels']!r}) have {y.shape[0]} entries but the logits have {logits.shape[0]} rows."
        )
    return LogitsData(logits, y, class_names, source)


def load_inputs(path: str | os.PathLike[str], key: str | None = None, *, option: str = "--inputs-key",
                max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Model inputs from an array file, plus its ``labels`` array when it has one.

    Inputs are under ``key``, else ``inputs``, else the file's only array (or, in a file of
    two arrays, the one that is not ``labels``). float64 inputs become float32 (models are
    float32). Returns ``(inputs, labels or None, key used)``. ``max_bytes`` as in
    :func:`load_logits`. Float inputs must be finite: a model's outputs on NaN are NaN.
    """
    path = Path(path)
    with open_arrays(path, max_bytes=max_bytes) as arrays:
        has_labels = key != "labels" and "labels" in arrays
        candidates: Mapping[str, np.ndarray] = arrays
        if key is None and "inputs" not in arrays and has_labels and len(arrays) == 2:
            candidates = {k: arrays[k] for k in arrays if k != "labels"}
        inputs, used = select_array(candidates, key, "inputs", path=path, option=option)
        labels = arrays["labels"] if has_labels else None
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise FileFormatError(
            f"inputs in {str(path)!r} need a batch dimension with at least 1 row, got shape {inputs.shape}."
        )
    if inputs.dtype.kind not in "biuf":
        raise FileFormatError(f"inputs in {str(path)!r} must be numeric, got dtype {inputs.dtype}.")
    if inputs.dtype.kind == "f":
        finite = np.isfinite(inputs)
        if not finite.all():
            raise FileFormatError(f"inputs in {str(path)!r} contain {int((~finite).sum())} NaN or inf value(s); "
                                  "a model's outputs on them would be NaN or inf.")
    if inputs.dtype == np.float64:
        with np.errstate(over="ignore"):
            inputs = inputs.astype(np.float32)
        if not np.isfinite(inputs).all():
            raise FileFormatError(f"float64 inputs in {str(path)!r} exceed the float32 range (|x| > 3.4e38).")
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != inputs.shape[0] or labels.dtype.kind not in "iu"):
        labels = None  # not labels of these inputs: ignore rather than guess
    return inputs, labels, used


# ---------------------------------------------------------------------------- writing
def write_file_atomic(
    path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], Any], *, overwrite: bool = True
) -> Path:
    """Write a file in one step: into a new temporary file beside it, then renamed onto it.

    Readers never see a half-written file, and a crash leaves the old file (or none). A
    symbolic link at ``path`` is replaced by the new file, never followed, so a link planted
    in an output folder cannot redirect the write elsewhere. The temporary file is created
    with ``O_EXCL`` (which does not follow links either), with the usual permissions (umask).

    Parameters
    ----------
    path : path
        Target file; its folder must exist.
    data : bytes or callable
        The content, or a function that writes it to the binary file object it gets.
    overwrite : bool, default=True
        With False an existing ``path`` (a dangling link included) is never replaced: the
        file is linked into place, which fails atomically when ``path`` appeared meanwhile.

    Raises
    ------
    FileExistsError
        ``overwrite=False`` and ``path`` exists.
    """
    path = Path(path)
    directory = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"cannot create a temporary file in {str(directory)!r}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)  # atomic "create if absent"; a link at path counts as present
        except FileExistsError:
            raise FileExistsError(f"{str(path)!r} exists; not overwritten.") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise FileExistsError(f"{str(path)!r} exists; not overwritten.") from None
            os.replace(tmp, path)
        return path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- models
ModelKind = Literal["export", "torchscript", "factory"]

#: Suffixes :func:`load_weights` reads: safetensors (no pickle at all) and ``torch.save``
#: files (read with ``torch.load(weights_only=True)``).
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")


class UntrustedFileError(ValueError):
    """A model file whose loader can run code from the file, refused without ``trust=True``.

    torch.export programs (``.pt2``) are partly unpickled with ``weights_only=False``, and
    TorchScript archives hold code that ``torch.jit.load`` compiles and runs (a module's
    ``__setstate__`` runs while the file loads and can read and write any file).
    """


@dataclass(frozen=True)
class LoadedModel:
    """A model read by :func:`load_model`: the module, its kind and a description."""

    module: Any
    kind: ModelKind
    description: str


_TRUST_HINT = (
    "Load it only if you trust where it came from: pass --trust-model-file (precal sweep) or trust=True "
    "(precal.io.load_model). A model from elsewhere loads safely as 'module:factory' (code you have, "
    "building the architecture) plus its weights as data: --weights FILE.safetensors (or a state_dict .pt)."
)


def _zip_names(path: Path) -> list[str] | None:
    """Member names of a zip archive, read from its central directory (nothing is
    decompressed or unpickled), or None for a file that is not a zip archive."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def model_file_kind(path: str | os.PathLike[str]) -> Literal["export", "torchscript", "weights", "unknown"]:
    """What a model file is, from its suffix and its zip member names only (no code runs).

    ``"export"``: a ``.pt2`` file (``torch.export.save``); ``"torchscript"``: a zip archive
    with a ``code/`` folder (``torch.jit.save``); ``"weights"``: a ``.safetensors`` file, or
    a ``torch.save`` archive without code (a ``state_dict``); ``"unknown"``: anything else.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return "export"
    if suffix == ".safetensors":
        return "weights"
    names = _zip_names(path)
    if names is None:
        return "unknown"
    parts = [name.split("/") for name in names]
    if any(len(p) > 2 and p[1] == "code" for p in parts):
        return "torchscript"
    if any(len(p) == 2 and p[1] == "data.pkl" for p in parts):
        return "weights"
    return "unknown"


def check_model_spec(
    spec: str, *, weights: str | os.PathLike[str] | None = None, trust: bool = False
) -> ModelKind:
    """Check a MODEL argument without importing torch or running anything from a file.

    Returns the kind :func:`load_model` will load. A ``.pt2`` or TorchScript file needs
    ``trust=True``; a weights file is refused as a model (it has no architecture); ``weights``
    goes with a ``module:factory`` only.

    Raises
    ------
    UntrustedFileError
        A ``.pt2`` or TorchScript file without ``trust=True``.
    FileNotFoundError
        ``spec`` is neither an existing file nor ``module:factory``; or ``weights`` is missing.
    FileFormatError
        A directory, a weights file given as the model, or a file of no known model format.
    ValueError
        ``weights`` with a model file.
    """
    path = Path(spec)
    if weights is not None:
        _suffix(Path(weights), WEIGHTS_SUFFIXES, "weights")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"No such weights file: {str(weights)!r}.")
    if path.is_dir():
        raise FileFormatError(f"MODEL {spec!r} is a directory; pass 'module:factory' (or a trusted .pt2 or "
                              "TorchScript file).")
    if path.is_file():
        kind = model_file_kind(path)
        if kind == "weights":
            raise FileFormatError(
                f"MODEL {spec!r} holds weights (a state_dict or safetensors file), not a model: weights need their "
                f"architecture, so pass 'module:factory' (which builds the model) and this file with --weights."
            )
        if kind == "unknown":
            if trust:
                kind = "torchscript"  # torch.jit.load decides, and says what is wrong
            else:
                raise FileFormatError(
                    f"MODEL {spec!r} is neither a torch.export program (.pt2) nor a TorchScript archive (a zip with a "
                    "code/ folder); MODEL must be one of those, or 'module:factory'."
                )
        if weights is not None:
            raise ValueError(f"--weights goes with a 'module:factory' MODEL, not with the model file {spec!r}.")
        if not trust:
            what = ("a torch.export program: torch.export.load unpickles parts of it with weights_only=False"
                    if kind == "export" else
                    "a TorchScript archive: torch.jit.load compiles and runs the code stored in it (its "
                    "__setstate__ methods run while it loads, and can read and write any file)")
            raise UntrustedFileError(f"MODEL {spec!r} is {what}, so the file can run code on this machine. "
                                     f"{_TRUST_HINT}")
        return kind  # type: ignore[return-value]
    if ":" not in spec and path.suffix.lower() == ".pt2":
        raise FileNotFoundError(f"No such file: {spec!r}.")
    if ":" not in spec:
        raise FileNotFoundError(
            f"MODEL {spec!r} is neither an existing file (.pt2 torch.export program, TorchScript) nor an "
            "import path 'module:factory'."
        )
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"MODEL {spec!r}: an import path must look like 'package.module:factory'.")
    return "factory"


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """torch.export.load logs a traceback at WARNING level before raising; we report the error instead."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch.export.pt2_archive._package")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on ``sys.path`` for the block, as ``python -m`` has it (the
    ``precal`` console script does not), so a module next to the user is found."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_factory(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"MODEL {spec!r}: cannot import {module_name!r}: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - user code failed while importing
        raise ValueError(f"MODEL {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"MODEL {spec!r}: {module_name!r} has no attribute {attr_path!r}.")
        obj = getattr(obj, part)
    return obj


def load_weights(path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> dict[str, Any]:
    """A ``state_dict`` from a weights file, reading data only (no code runs).

    ``.safetensors`` files are read with ``safetensors.torch.load_file`` (the format has no
    pickle: a JSON header and raw tensor bytes; needs ``pip install safetensors``);
    ``.pt``/``.pth`` files with ``torch.load(weights_only=True)``, PyTorch's restricted
    unpickler that builds tensors and plain containers only. ``max_bytes`` limits the
    size the file expands to (see :func:`check_input_size`).

    Raises
    ------
    FileFormatError
        Unknown suffix, unreadable file, or content that is not a flat ``{name: tensor}`` dict.
    ImportError
        A ``.safetensors`` file without the safetensors package.
    """
    import torch

    path = Path(path)
    suffix = _suffix(path, WEIGHTS_SUFFIXES, "weights")
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    check_input_size(path, max_bytes)
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError(f"reading {str(path)!r} needs safetensors: pip install safetensors") from exc
        try:
            state: Any = load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means "not a safetensors file"
            raise FileFormatError(f"cannot read {str(path)!r} as a safetensors file: {_first_sentence(exc)}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not a weights file"
            raise FileFormatError(f"cannot read {str(path)!r} as weights (torch.load with weights_only=True): "
                                  f"{_first_sentence(exc)}") from exc
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        what = type(state).__name__ if not isinstance(state, Mapping) else (
            "an empty dict" if not state else f"a dict with keys {', '.join(map(str, list(state)[:5]))}")
        raise FileFormatError(f"{str(path)!r} holds {what}, not a state_dict (a flat dict of tensors by "
                              "parameter name).")
    return dict(state)


def _apply_weights(module: Any, weights: str | os.PathLike[str], spec: str, max_bytes: int | None) -> None:
    state = load_weights(weights, max_bytes=max_bytes)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(f"the weights in {str(weights)!r} do not fit MODEL {spec!r}: {text[:600]}") from exc


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust: bool = False,
    map_location: str = "cpu",
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
) -> LoadedModel:
    """Load a model for :func:`precal.emulate.sweep`.

    Parameters
    ----------
    spec : str
        * ``package.module:attr`` (``attr`` may be dotted): the module is imported (the
          current directory is put on ``sys.path``) and ``attr`` is used as the model if it
          is an ``nn.Module``, else called without arguments and must return one. This is
          code the caller names, not data from a file, and it is the only kind loaded
          without ``trust``.
        * with ``trust=True`` only: a ``.pt2`` file written by ``torch.export.save``
          (``torch.export.load(spec).module()``), or a TorchScript archive
          (``torch.jit.save``), loaded with ``torch.jit.load``. Both loaders can run code
          from the file; see :class:`UntrustedFileError`.
    weights : path, optional
        A ``state_dict`` for a ``module:factory`` model, as data: a ``.safetensors`` file or
        a ``.pt``/``.pth`` file (see :func:`load_weights`); loaded with
        ``load_state_dict(strict=True)`` after the factory builds the model.
    trust : bool, default=False
        Allow ``.pt2`` and TorchScript files. Only for files from a source you trust.
    map_location : str, default="cpu"
        Device TorchScript tensors are loaded onto.
    max_bytes : int or None, default=DEFAULT_MAX_INPUT_BYTES
        Largest size the weights file may expand to (:func:`check_input_size`); None: no limit.

    Returns
    -------
    LoadedModel
        In eval mode.

    Raises
    ------
    UntrustedFileError
        A ``.pt2`` or TorchScript file without ``trust=True``; nothing is read from it.
    ValueError
        A file that is not a model of its kind (a ``state_dict`` is named as such), an import
        path that does not import, a factory that fails or returns no ``nn.Module``, or
        weights that do not fit the model.
    """
    kind = check_model_spec(spec, weights=weights, trust=trust)
    import torch

    path = Path(spec)
    if kind == "export":
        if not zipfile.is_zipfile(path):
            raise FileFormatError(f"{spec!r} is not a torch.export archive (not a zip file).")
        try:
            with _quiet_torch_export():
                module = torch.export.load(path).module()
        except Exception as exc:  # noqa: BLE001 - any failure means "not a loadable program"
            raise FileFormatError(f"cannot load {spec!r} with torch.export.load: {_first_sentence(exc)}") from exc
        return LoadedModel(module, "export", f"torch.export program {spec}")
    if kind == "torchscript":
        try:
            module = torch.jit.load(path, map_location=map_location)
        except Exception as exc:  # noqa: BLE001 - any failure means "not TorchScript"
            raise FileFormatError(
                f"cannot load {spec!r} as TorchScript (torch.jit.load: {_first_sentence(exc)}); MODEL must be a "
                ".pt2 torch.export program, a TorchScript file or 'module:factory'."
            ) from exc
        return LoadedModel(module.eval(), "torchscript", f"TorchScript module {spec}")
    with _cwd_importable():
        obj = _import_factory(spec)
        if not isinstance(obj, torch.nn.Module):
            if not callable(obj):
                raise ValueError(f"MODEL {spec!r} is a {type(obj).__name__}: neither an nn.Module nor a callable.")
            try:
                obj = obj()
            except Exception as exc:  # noqa: BLE001 - user code failed
                raise ValueError(
                    f"MODEL {spec!r}: calling it failed: {type(exc).__name__}: {_first_line(exc)}"
                ) from exc
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"MODEL {spec!r} returned a {type(obj).__name__}, not a torch.nn.Module.")
    description = f"{type(obj).__name__} from {spec}"
    if weights is not None:
        _apply_weights(obj, weights, spec, max_bytes)
        description += f" with weights {weights}"
    return LoadedModel(obj.eval(), "factory", description)

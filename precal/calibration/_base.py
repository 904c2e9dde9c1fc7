"""The shared base of every precal calibrator: validation, prediction, scoring, export.

A calibrator learns a map from a classifier's logits ``z`` (one column per class) to
calibrated logits ``g(z)``; probabilities are ``softmax(g(z))``. Subclasses implement four
small hooks and inherit the whole scikit-learn contract:

``_validate_hyperparameters()``
    check constructor arguments (called at the start of ``fit``).
``_fit(logits, y_idx, sample_weight)``
    learn from validated ``(n, K)`` float logits and integer class indices; set ``*_``.
``_calibrated_logits(logits)``
    apply the fitted map to validated ``(n, K)`` logits; return float64 ``(n, K)``.
``_torch_map()`` / ``_get_state()`` / ``_set_state(state)``
    the same map as an ``nn.Module``, and the fitted state as JSON-able data.

Two class flags say what ``_fit`` and ``_calibrated_logits`` are given:

``_device_native = True``
    they receive torch tensors: the logits on the input tensor's device (numpy input
    becomes a CPU tensor sharing its memory), ``y_idx`` (int64) and ``sample_weight``
    (float64, or ``None``) on the same device; ``_calibrated_logits`` returns a float64
    tensor there. Logits given as a CUDA tensor are validated, fitted and calibrated on the
    GPU; only scalars (and the labels, host to device) cross. Otherwise the hooks receive
    numpy arrays and tensors are copied to the host first.
``_streams_memmaps = True``
    ``_fit`` may also receive a :class:`~precal._chunks.FileRows`: a 2-D ``numpy.memmap``
    that it reads block by block from its mapping (``y_idx`` and ``sample_weight`` then are
    CPU tensors), so logits larger than memory can be fitted.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._chunks import FileRows
from .._dask import is_dask_array, lazy_rows
from .._numerics import as_tensor, binary_logit_to_two_columns, is_tensor, log_softmax, softmax, to_numpy
from .._threads import _work_size, thread_limits, threaded
from .._validation import (
    FIT_LABELS_FIX,
    as_numpy,
    check_logits,
    check_same_length,
    check_sample_weight,
    encode_labels,
)

__all__ = ["BaseLogitCalibrator", "CalibratorModule", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "precal-calibrator"
FORMAT_VERSION = 1

#: The keys of :meth:`BaseLogitCalibrator.to_dict` data, all required, no others.
_DATA_KEYS = ("format", "format_version", "precal_version", "estimator", "params", "classes", "n_features_in", "state")

#: precal's own calibrators, by public class name. Only classes defined in precal's
#: ``precal.calibration`` package register (see ``__init_subclass__``): a user's subclass,
#: whatever its name, is never loaded by :meth:`BaseLogitCalibrator.from_dict`.
_REGISTRY: dict[str, type[BaseLogitCalibrator]] = {}
_OWN_PACKAGE = __name__.rsplit(".", 1)[0]  # "precal.calibration"

#: Largest ``classes`` array :meth:`BaseLogitCalibrator.from_dict` builds (bytes): the
#: stored dtype sets the item size, so a tiny file could otherwise ask for gigabytes.
_MAX_CLASSES_BYTES = 1 << 26


class CalibratorModule(torch.nn.Module):
    """Wrap a calibrator's torch map so it takes the same logits the calibrator was fitted on.

    Parameters
    ----------
    core : torch.nn.Module
        Maps ``(..., K)`` logits to ``(..., K)`` calibrated logits.
    single_logit : bool
        The calibrator was fitted on one binary logit per sample: inputs are ``(n,)`` or
        ``(n, 1)``, outputs ``(n,)``.
    output : {"logits", "proba"}
        Return calibrated logits (default) or probabilities (softmax, or the sigmoid of the
        single binary logit).
    """

    def __init__(self, core: torch.nn.Module, *, single_logit: bool, output: str) -> None:
        super().__init__()
        self.core = core
        self.single_logit = single_logit
        self.output = output

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.single_logit:
            z = logits.reshape(logits.shape[0], -1)[:, 0] if logits.dim() > 1 else logits
            two = torch.stack([torch.zeros_like(z), z], dim=-1)
            out = self.core(two)
            margin = out[..., 1] - out[..., 0]
            return torch.sigmoid(margin) if self.output == "proba" else margin
        out = self.core(logits)
        return torch.softmax(out, dim=-1) if self.output == "proba" else out


def _check_column_names(estimator: BaseEstimator, X: Any, *, reset: bool) -> None:
    """scikit-learn's column-name rule: a fit on a DataFrame with string column names sets
    ``feature_names_in_``, and predicting on a DataFrame whose names differ (or are in
    another order) raises. For logits the columns are the classes, so a reordered frame
    would otherwise permute the classes silently. Only the names are checked here."""
    validate_data(estimator, X, reset=reset, skip_check_array=True, ensure_2d=False)


def _plain(value: Any) -> Any:
    """A parameter as JSON holds it: numpy scalars (``np.int64(10)`` from a grid search over
    ``np.arange``) as Python numbers, tuples and lists element by element."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


class BaseLogitCalibrator(ClassifierMixin, BaseEstimator):
    """Base class of precal's calibrators: scikit-learn estimators on logits.

    Input ``X`` is a classifier's logits, shape ``(n_samples, n_classes)`` (numpy array or
    torch tensor of any float dtype; float16/bfloat16 are upcast). Binary problems may also
    pass one logit per sample, shape ``(n_samples,)`` or ``(n_samples, 1)``, taken as the
    log-odds of ``classes_[1]``. Labels ``y`` may be of any type (strings work). Column ``j``
    of ``X`` belongs to ``classes_[j]``; when ``y`` holds integers in ``0..n_classes-1``,
    ``classes_`` is ``0..n_classes-1`` even if a class is absent from ``y`` (so
    cross-validation folds with a missing class still line up).
    """

    _estimator_type = "classifier"
    _state_keys: ClassVar[tuple[str, ...]] = ()
    #: ``_fit`` and ``_calibrated_logits`` take torch tensors on any device (see the module docstring).
    _device_native: ClassVar[bool] = False
    #: ``_fit`` streams 2-D ``numpy.memmap`` logits from their mapping (see the module docstring).
    _streams_memmaps: ClassVar[bool] = False
    #: ``_fit_dask(X, y, sample_weight)`` fits dask arrays chunk by chunk (see :mod:`precal._dask`).
    _fits_dask: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_") or not cls.__module__.startswith(_OWN_PACKAGE + "."):
            return  # private helpers and every class outside precal.calibration: never loadable
        known = _REGISTRY.get(cls.__name__)
        if known is not None and _qualified_name(known) != _qualified_name(cls):
            raise TypeError(f"Two precal calibrators are named {cls.__name__}: {_qualified_name(known)} and "
                            f"{_qualified_name(cls)}.")
        _REGISTRY[cls.__name__] = cls

    # ------------------------------------------------------------------ hooks
    def _validate_hyperparameters(self) -> None:  # pragma: no cover - overridden
        """Check constructor arguments; raise ValueError/TypeError naming the parameter."""

    def _fit(self, logits: np.ndarray, y_idx: np.ndarray, sample_weight: np.ndarray | None) -> None:
        raise NotImplementedError

    def _calibrated_logits(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _torch_map(self) -> torch.nn.Module:
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        return {k: _to_json_value(getattr(self, k)) for k in self._state_keys}

    def _set_state(self, state: dict[str, Any]) -> None:
        """Load the fitted state: exactly ``_state_keys``, each a finite number or a (nested)
        list of finite numbers. Subclasses override this to check shapes and ranges too."""
        check_state_keys(state, self._state_keys, type(self).__name__)
        values = {k: state_array(state, k) if isinstance(state[k], list) else state_float(state, k)
                  for k in self._state_keys}
        for k, value in values.items():
            setattr(self, k, value)

    # ------------------------------------------------------------ validation
    def _validate_fit_data(self, X: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        self._validate_hyperparameters()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        logits = check_logits(X, keep_tensor=self._device_native, stream=self._streams_memmaps)
        y_arr = as_numpy(y)
        if y_arr.ndim == 0:
            raise ValueError(f"y must be 1-D (n_samples,) class labels, got a scalar {y_arr!r}.")
        check_same_length(X=logits, y=y_arr)
        single = logits.ndim == 1 or logits.shape[1] == 1
        if single:
            n_distinct = len(np.unique(y_arr))
            if n_distinct > 2:
                raise ValueError(
                    f"X holds one logit per sample, which is for binary problems, but y has {n_distinct} classes; "
                    "pass (n_samples, n_classes) logits."
                )
            classes, y_idx = encode_labels(y_arr, 2, fix=FIT_LABELS_FIX)
            logits = binary_logit_to_two_columns(logits)
            n_features = 1
        else:
            classes, y_idx = encode_labels(y_arr, logits.shape[1], fix=FIT_LABELS_FIX)
            n_features = logits.shape[1]
        weights = check_sample_weight(sample_weight, logits.shape[0])
        # set only once every input passed its checks, so a failed fit leaves nothing that looks fitted
        _check_column_names(self, X, reset=True)
        self.classes_, self.n_features_in_ = classes, n_features
        if self._device_native or isinstance(logits, FileRows):
            if isinstance(logits, np.ndarray):
                logits = as_tensor(logits)
            device = torch.device("cpu") if isinstance(logits, FileRows) else logits.device
            y_idx = as_tensor(y_idx).to(device)  # labels and weights: host to device
            if weights is not None:
                weights = as_tensor(weights).to(device)
        return logits, y_idx, weights

    def _validated_logits(self, X: Any) -> Any:
        """Validated ``(n, K)`` logits of ``X``: a tensor on ``X``'s device for device-native
        calibrators (numpy input as a CPU tensor), else a numpy array."""
        check_is_fitted(self)
        _check_column_names(self, X, reset=False)
        logits = check_logits(X, keep_tensor=self._device_native)
        n_features = 1 if logits.ndim == 1 else logits.shape[1]
        if logits.ndim == 1 and self.n_features_in_ > 1:
            raise ValueError(
                f"X is 1-D, but {type(self).__name__} was fitted on (n_samples, {self.n_features_in_}) logits. "
                "Reshape your data: pass one row of logits per sample."
            )
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (one logit per class"
                f"{'; 1 for single-logit binary' if self.n_features_in_ == 1 else ''})."
            )
        if self.n_features_in_ == 1:
            logits = binary_logit_to_two_columns(logits)
        if self._device_native and isinstance(logits, np.ndarray):
            logits = as_tensor(logits)
        return logits

    def _calibrated(self, X: Any) -> Any:
        """Calibrated float64 logits of ``X``: a tensor on ``X``'s device (device-native
        calibrators) or a numpy array.

        Raises ``ValueError`` if some are not finite (finite logits so large that the fitted
        map overflows float64), so no NaN probability ever comes out silently.
        """
        out = self._calibrated_logits(self._validated_logits(X))
        finite = torch.isfinite(out) if is_tensor(out) else np.isfinite(out)
        if not bool(finite.all()):
            bad = to_numpy(~finite.all(dim=1) if is_tensor(out) else ~finite.all(axis=1))
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"{type(self).__name__}: the calibrated logits of {rows.size} sample(s) (e.g. row {int(rows[0])}) "
                "are not finite: those logits are so large that the fitted map overflows float64."
            )
        return out

    # ------------------------------------------------------------ public API
    def _fit_work(self, X: Any) -> int | None:
        """Elements of work of one pass of the fit over ``X``, for precal's thread budget
        (:func:`precal._threads.thread_budget`): ``X``'s size; calibrators whose passes cost more
        per element (dense Hessians) say so."""
        return _work_size((X,))

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> BaseLogitCalibrator:
        """Fit the calibration map on held-out logits.

        Parameters
        ----------
        X : array-like, numpy.memmap or torch.Tensor of shape (n_samples, n_classes) or (n_samples,)
            Logits of the classifier (not probabilities). A torch tensor is fitted on its
            device by every precal calibrator: CUDA logits stay on the GPU, and only the
            fitted parameters (and, for the L-BFGS-B fits, the parameter vector of each
            iteration) cross to the host. A
            2-D ``numpy.memmap`` is read block by block from its mapping (never re-opened by path) by
            ``TemperatureScaling`` and ``PACSCalibrator``, so it may be larger than memory.
            A ``dask.array.Array`` is fitted chunk by chunk by ``TemperatureScaling``,
            ``PACSCalibrator``, ``EnsembleTemperatureScaling``, ``StructuredMatrixScaling`` and
            ``DirichletCalibrator`` with a fixed ``reg_lambda`` (one dask computation per optimiser pass, each chunk
            reduced by the in-memory kernel, see :mod:`precal._dask`); the calibrators whose
            fit is not a sum over rows refuse it with a ``TypeError`` that says why. ``predict_proba`` and the other
            prediction methods of every calibrator return a lazy dask array for dask input.
        y : array-like of shape (n_samples,)
            True labels (a dask array too, with dask ``X``).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in the loss.

        Returns
        -------
        self
        """
        with thread_limits(self._fit_work(X)):
            return self._fit_any(X, y, sample_weight)

    def _fit_any(self, X: Any, y: Any, sample_weight: Any) -> BaseLogitCalibrator:
        if is_dask_array(X):
            if not self._fits_dask:
                from .._dask import refusal

                raise TypeError(refusal(type(self).__name__))
            self._fit_dask(X, y, sample_weight)
            _check_column_names(self, X, reset=True)  # a dask array has none: drops those of an earlier fit
            return self
        if is_dask_array(y) or is_dask_array(sample_weight):  # logits in memory: so are labels and weights
            y = y.compute() if is_dask_array(y) else y
            sample_weight = sample_weight.compute() if is_dask_array(sample_weight) else sample_weight
        logits, y_idx, weights = self._validate_fit_data(X, y, sample_weight)
        self._fit(logits, y_idx, weights)
        return self

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @threaded
    def decision_function(self, X: Any, *, return_tensor: bool = False) -> Any:
        """Calibrated logits: ``(n_samples, n_classes)``, or ``(n_samples,)`` for single-logit input.

        ``return_tensor=True`` returns a float64 torch tensor on ``X``'s device (CPU for numpy
        input) instead of a numpy array; the same holds for :meth:`predict_proba` and
        :meth:`predict_log_proba`. Device-native calibrators compute it on that device.
        """
        if is_dask_array(X):
            return lazy_rows(self, "decision_function", X, return_tensor)
        out = self._calibrated(X)
        if self.n_features_in_ == 1:
            out = out[:, 1] - out[:, 0]
        return _as_output(out, X, return_tensor)

    @threaded
    def predict_proba(self, X: Any, *, return_tensor: bool = False) -> Any:
        """Calibrated probabilities, shape ``(n_samples, n_classes)``; rows sum to 1."""
        if is_dask_array(X):
            return lazy_rows(self, "predict_proba", X, return_tensor)
        return _as_output(softmax(self._calibrated(X)), X, return_tensor)

    @threaded
    def predict_log_proba(self, X: Any, *, return_tensor: bool = False) -> Any:
        """Log of the calibrated probabilities, computed stably in log space."""
        if is_dask_array(X):
            return lazy_rows(self, "predict_log_proba", X, return_tensor)
        return _as_output(log_softmax(self._calibrated(X)), X, return_tensor)

    @threaded
    def predict(self, X: Any) -> np.ndarray:
        """The class with the highest calibrated probability."""
        if is_dask_array(X):
            return lazy_rows(self, "predict", X)
        calibrated = self._calibrated(X)
        if is_tensor(calibrated):
            return self.classes_[to_numpy(calibrated.argmax(dim=1))]
        return self.classes_[np.argmax(calibrated, axis=1)]

    @threaded
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean log-likelihood of ``y`` under the calibrated probabilities (higher is better).

        Equals ``-log_loss(y, predict_proba(X))`` without probability clipping.
        """
        logp = log_softmax(self._calibrated(X))
        check_same_length(X=logp, y=y)
        _, y_idx = encode_labels(y, logp.shape[1], labels=self.classes_, min_classes=1)
        weights = check_sample_weight(sample_weight, logp.shape[0])
        if is_tensor(logp):
            picked = logp.gather(1, as_tensor(y_idx).to(logp.device)[:, None])[:, 0]
            if weights is None:
                return float(picked.mean())
            w = as_tensor(weights).to(logp.device)
            return float((picked * w).sum() / w.sum())
        return float(np.average(logp[np.arange(len(y_idx)), y_idx], weights=weights))

    def to_torch(self, output: Literal["logits", "proba"] = "logits") -> torch.nn.Module:
        """The fitted map as a ``torch.nn.Module`` to append to a deployed model.

        The module takes a logits tensor of the shape the calibrator was fitted on, on any
        device (move it with ``.to(device)``), and returns calibrated logits (default) or
        probabilities (``output="proba"``). ``softmax(module(z))`` equals
        ``predict_proba(z)`` up to float32 rounding.
        """
        check_is_fitted(self)
        if output not in ("logits", "proba"):
            raise ValueError(f"output must be 'logits' or 'proba', got {output!r}.")
        module = CalibratorModule(self._torch_map(), single_logit=self.n_features_in_ == 1, output=output)
        return module.eval()

    def to_dict(self) -> dict[str, Any]:
        """The fitted calibrator as plain JSON-able data; see :meth:`from_dict`."""
        from .. import __version__

        check_is_fitted(self)
        if _REGISTRY.get(type(self).__name__) is not type(self):
            raise TypeError(
                f"{_qualified_name(type(self))} is not one of precal's calibrators ({sorted(_REGISTRY)}), so "
                "from_dict could not load it back; pickle it instead."
            )
        params = {key: _plain(value) for key, value in self.get_params(deep=False).items()}
        try:
            json.dumps(params)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__} parameters are not JSON-serialisable: {exc}") from exc
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "precal_version": __version__,
            "estimator": type(self).__name__,
            "params": params,
            "classes": {"dtype": self.classes_.dtype.str, "values": self.classes_.tolist()},
            "n_features_in": int(self.n_features_in_),
            "state": self._get_state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseLogitCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output (e.g. after ``json.load``).

        Only precal's own calibrator classes can be named (registered by their qualified
        name in ``precal.calibration``: a user's subclass of the same name is not one of
        them), and only numbers, strings and lists are read: loading never executes code
        from the data. Everything is checked before a calibrator is returned:

        - the keys: exactly those :meth:`to_dict` writes, ``format_version`` an ``int``
          (``true`` is not 1) equal to ``FORMAT_VERSION``;
        - ``params``: exactly the estimator's constructor parameters, checked as ``fit``
          checks them;
        - ``classes``: a supported dtype (bool, integer, float, string), values of that
          type that the dtype holds exactly, at least 2 and all distinct, and
          ``n_features_in`` consistent with them;
        - ``state``: exactly the fitted attributes the estimator stores, each of the shape,
          type and range a fit produces (e.g. a temperature within the fit's bounds).

        So a loaded calibrator is the one the data describe (its :meth:`to_dict` gives the
        data back, ``precal_version`` aside), or loading fails. JSON has no tuples and no
        numpy scalars: :meth:`to_dict` writes a tuple parameter as a list and a numpy
        scalar (``np.int64(10)`` from a grid over ``np.arange``) as a Python number, and
        they load back as such. The column names of a DataFrame fit (``feature_names_in_``)
        are not stored: a loaded calibrator reads columns by position.

        Raises
        ------
        ValueError
            If the data is not a precal calibrator, has an unknown format version, names an
            unknown or a different calibrator class, or holds malformed, missing or
            unknown fields or out-of-range values.
        TypeError
            If a parameter has the wrong type (the message of ``fit``'s check).
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ValueError(f"Not a precal calibrator: expected a dict with format={FORMAT_NAME!r}.")
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ValueError(
                f"Unsupported calibrator format_version {version!r}; this precal reads {FORMAT_VERSION} (an integer)."
            )
        missing = [k for k in _DATA_KEYS if k not in data]
        unknown = sorted(str(k) for k in data if k not in _DATA_KEYS)
        if missing or unknown:
            raise ValueError(f"Malformed calibrator data: missing key(s) {missing}, unknown key(s) {unknown}.")
        name = data["estimator"]
        if not isinstance(name, str) or name not in _REGISTRY:
            raise ValueError(f"Unknown calibrator {name!r}; known: {sorted(_REGISTRY)}.")
        target = _REGISTRY[name]
        if cls is not BaseLogitCalibrator and target is not cls:
            raise ValueError(f"The data holds a {name}, not a {cls.__name__}.")
        if not isinstance(data["precal_version"], str):
            raise ValueError("Malformed calibrator data: 'precal_version' must be a string.")
        for key, kind in (("params", dict), ("classes", dict), ("state", dict)):
            if not isinstance(data[key], kind):
                raise ValueError(f"Malformed calibrator data: {key!r} must be a {kind.__name__}.")
        params = data["params"]
        expected = set(target._get_param_names())
        if set(params) != expected:
            raise ValueError(
                f"Malformed calibrator params for {name}: missing {sorted(expected - set(params))}, "
                f"unknown {sorted(str(k) for k in set(params) - expected)}."
            )
        est = target(**params)
        try:
            est._validate_hyperparameters()  # the checks fit makes
        except (TypeError, ValueError) as exc:
            kind = ValueError if isinstance(exc, ValueError) else TypeError
            raise kind(f"Malformed calibrator params for {name}: {exc}") from exc
        est.classes_ = _load_classes(data["classes"])
        n_features = data["n_features_in"]
        if type(n_features) is not int:
            raise ValueError(f"Malformed calibrator data: 'n_features_in' must be an integer, got {n_features!r}.")
        allowed = (1, 2) if len(est.classes_) == 2 else (len(est.classes_),)
        if n_features not in allowed:
            raise ValueError(
                f"Malformed calibrator data: n_features_in={n_features} does not match the {len(est.classes_)} "
                f"classes (expected {' or '.join(map(str, allowed))})."
            )
        est.n_features_in_ = n_features
        est._set_state(data["state"])
        return est

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        return tags


def _as_output(values: Any, X: Any, return_tensor: bool) -> Any:
    """numpy by default; with ``return_tensor`` a torch tensor on ``X``'s device.

    ``values`` (numpy, or a tensor already on ``X``'s device) are the calibrated outputs:
    only a numpy result asked for by the caller is copied to the host.
    """
    if not return_tensor:
        return to_numpy(values)
    device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    if is_tensor(values):
        return values.to(device)
    return torch.from_numpy(np.ascontiguousarray(values)).to(device)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_classes(classes: Any) -> np.ndarray:
    """The ``classes`` entry of :meth:`BaseLogitCalibrator.to_dict` data as the array it describes.

    ``{"dtype": numpy dtype string, "values": list}``: bool, integer, float (finite) or
    string labels (``"|O"``: one of those Python types throughout), each value of its
    dtype's type and held by the dtype exactly, at least 2, in increasing order (so distinct).
    """
    if not isinstance(classes, dict) or set(classes) != {"dtype", "values"}:
        raise ValueError("Malformed calibrator classes: expected a dict with exactly 'dtype' and 'values'.")
    dtype_str, values = classes["dtype"], classes["values"]
    if not isinstance(dtype_str, str) or not isinstance(values, list):
        raise ValueError("Malformed calibrator classes: 'dtype' must be a string and 'values' a list.")
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"Malformed calibrator classes: unknown dtype {dtype_str!r}.") from exc
    kinds = {
        "b": (lambda v: isinstance(v, bool)),
        "i": (lambda v: isinstance(v, int) and not isinstance(v, bool)),
        "u": (lambda v: isinstance(v, int) and not isinstance(v, bool)),
        "f": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and _exact_float(v) is not None),
        "U": (lambda v: isinstance(v, str)),
    }
    if dtype.kind == "O":
        types = {type(v) for v in values}
        ok = len(types) == 1 and types <= {str, int, float} and all(
            not isinstance(v, float) or _exact_float(v) is not None for v in values)
    elif dtype.kind in kinds and (dtype.kind == "U" or dtype.itemsize <= 8):
        ok = all(kinds[dtype.kind](v) for v in values)
    else:
        raise ValueError(f"Malformed calibrator classes: unsupported dtype {dtype_str!r} (bool, integer, float "
                         "or string labels).")
    if not ok:
        raise ValueError(f"Malformed calibrator classes: the values are not all {dtype} labels.")
    if dtype.itemsize * len(values) > _MAX_CLASSES_BYTES:
        raise ValueError(f"Malformed calibrator classes: {len(values)} labels of dtype {dtype_str!r} exceed "
                         f"{_MAX_CLASSES_BYTES} bytes.")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a value the dtype cannot hold: refused below
            arr = np.asarray(values, dtype=dtype)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"Malformed calibrator classes: {exc}") from exc
    if arr.ndim != 1 or arr.tolist() != values:
        raise ValueError(f"Malformed calibrator classes: dtype {dtype_str!r} does not hold the values exactly.")
    if len(arr) < 2 or len(np.unique(arr)) != len(arr):
        raise ValueError(f"Malformed calibrator classes: need at least 2 distinct labels, got {values!r}.")
    if not all(a < b for a, b in zip(values[:-1], values[1:])):  # a fit gives them sorted (column j: j-th smallest)
        raise ValueError(f"Malformed calibrator classes: the labels must be in increasing order, as a fit gives "
                         f"them, got {values!r}.")
    return arr


def check_state_keys(state: dict[str, Any], keys: tuple[str, ...], owner: str) -> None:
    """``state`` has exactly ``keys`` (else ValueError naming the missing and unknown ones)."""
    missing = sorted(set(keys) - set(state))
    if missing:
        raise ValueError(f"Calibrator state is missing key(s) {missing}.")
    unknown = sorted(str(k) for k in set(state) - set(keys))
    if unknown:
        raise ValueError(f"Calibrator state has unknown key(s) {unknown}; {owner} stores exactly {list(keys)}.")


def state_float(state: dict[str, Any], key: str, *, min_val: float | None = None, max_val: float | None = None,
                what: str = "") -> float:
    """``state[key]``, a finite number in ``[min_val, max_val]``, as a float (else ValueError)."""
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Calibrator state {key!r} must be a number, got {value!r}.")
    exact = _exact_float(value)
    if exact is None:
        raise ValueError(f"Calibrator state {key!r} is not finite (or not exactly a float64): {value!r}.")
    value = exact
    if (min_val is not None and value < min_val) or (max_val is not None and value > max_val):
        lo = "-inf" if min_val is None else f"{min_val:.6g}"
        hi = "inf" if max_val is None else f"{max_val:.6g}"
        raise ValueError(f"Calibrator state {key!r} == {value!r}, must be in [{lo}, {hi}]{what}.")
    return value


def state_array(state: dict[str, Any], key: str, shapes: tuple[tuple[int, ...], ...] | None = None) -> np.ndarray:
    """``state[key]``, a (nested) list of finite numbers, as a float64 array (else ValueError).

    With ``shapes``, the array must have one of them.
    """
    value = state[key]
    if not isinstance(value, list):
        raise ValueError(f"Calibrator state {key!r} must be a list of finite numbers, got {value!r}.")
    leaves = list(_flatten(value))
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in leaves):
        # numpy would read "1.5" as 1.5 and True as 1.0: only JSON numbers are numbers here
        raise ValueError(f"Calibrator state {key!r} must be a (nested) list of numbers (not strings or booleans).")
    if any(_exact_float(v) is None for v in leaves):
        raise ValueError(f"Calibrator state {key!r} holds non-finite values (or integers float64 cannot hold exactly).")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Calibrator state {key!r} must be a (nested) list of numbers: {exc}") from exc
    if not np.isfinite(arr).all():
        raise ValueError(f"Calibrator state {key!r} holds non-finite values.")
    if shapes is not None and arr.shape not in shapes:
        raise ValueError(
            f"Calibrator state {key!r} must have shape {' or '.join(map(str, shapes))}, got {arr.shape}."
        )
    return arr


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def state_count(state: dict[str, Any], key: str) -> int:
    """``state[key]`` as a non-negative integer count such as ``n_iter_`` (else ValueError)."""
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Calibrator state {key!r} must be a number, got {value!r}.")
    if isinstance(value, numbers.Integral):
        ok = value >= 0
    else:
        ok = math.isfinite(value) and value >= 0 and value == int(value)
    if not ok:
        raise ValueError(f"Calibrator state {key!r} must be a finite integer >= 0, got {value!r}.")
    return int(value)


def _exact_float(value: Any) -> float | None:
    """``float(value)`` for a finite number that float64 holds exactly, else None (NaN, inf,
    or an integer such as ``2**53 + 1`` or ``10**400`` that a float64 would round or overflow)."""
    try:
        f = float(value)
    except OverflowError:
        return None
    if not math.isfinite(f) or (isinstance(value, numbers.Integral) and f != value):
        return None
    return f


def _to_json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

"""One matrix of bad and odd inputs against every public calibrator, metric and loader (issue 17).

Every case either must raise a ``ValueError``/``TypeError`` whose message names the problem,
or, for inputs that are odd but valid (float32 logits whose rows overflow a float32 row
shift, in numpy, torch and memory-mapped form), must give exactly what the float64 input
gives. No case may give a silent wrong answer, a NaN, or modify its inputs.

Who is in the matrix:

- calibrators: every :class:`~precal.calibration.BaseLogitCalibrator` subclass in
  ``precal.calibration.__all__`` (new calibrators join automatically; ``FAST_PARAMS`` only
  makes slow ones quick), through ``fit``, the five prediction methods and ``from_dict``;
- metrics: every public function and scorer in ``precal.metrics.__all__``, each through an
  adapter in ``METRIC_ADAPTERS`` (a new public metric without an adapter fails
  :func:`test_every_public_metric_and_calibrator_is_in_the_matrix`);
- loaders: ``load_calibrator`` and ``BaseLogitCalibrator.from_dict`` on damaged
  ``to_dict`` data of every calibrator.

The number of cases per target is printed by :func:`test_matrix_size` (visible in the
pytest output) and by ``python tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from numpy.testing import assert_allclose

import precal.calibration as calibration
import precal.metrics as metrics
from precal import load_calibrator
from precal.calibration import BaseLogitCalibrator

# ----------------------------------------------------------------------------- who is tested
CALIBRATORS = [
    obj for name in calibration.__all__
    if isinstance(obj := getattr(calibration, name), type) and issubclass(obj, BaseLogitCalibrator)
    and obj is not BaseLogitCalibrator
]
#: Only speed: parameters that keep a calibrator's fit on the tiny data quick.
FAST_PARAMS = {
    "FuzzyDirichletCalibrator": {"noise": None, "max_iter": 20, "random_state": 0},
    "DirichletCalibrator": {"max_iter": 50},
}


def make(cls: type) -> BaseLogitCalibrator:
    params = {k: v for k, v in FAST_PARAMS.get(cls.__name__, {}).items() if k in cls._get_param_names()}
    return cls(**params)


# ----------------------------------------------------------------------------- data
rng = np.random.default_rng(17)
N, K = 12, 3
Y = np.tile(np.arange(K), N // K)
Z = (rng.uniform(0.5, 4.0, size=(N, 1)) * (2.0 * np.eye(K)[Y] + rng.normal(size=(N, K)))).astype(np.float64)
P = np.exp(Z - Z.max(axis=1, keepdims=True))
P /= P.sum(axis=1, keepdims=True)
# the rows: float32 logits whose row range exceeds the float32 maximum
Z_OVERFLOW = Z.copy()
Z_OVERFLOW[0] = [3e38, -3e38, 0.0]
Z_OVERFLOW[4] = [-3.3e38, 0.0, 3.3e38]
Z_OVERFLOW32 = Z_OVERFLOW.astype(np.float32)
Z_OVERFLOW64 = Z_OVERFLOW32.astype(np.float64)  # the same values, exactly
Z_F64_ROW_OVERFLOW = Z.copy()
Z_F64_ROW_OVERFLOW[2] = [1.7e308, -1.7e308, 0.0]
_FROZEN = {name: value.copy() for name, value in
           {"Z": Z, "P": P, "Y": Y, "Z_OVERFLOW32": Z_OVERFLOW32, "Z_F64_ROW_OVERFLOW": Z_F64_ROW_OVERFLOW}.items()}


def with_value(a: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    out = np.array(a, copy=True)
    out[row, col] = value
    return out


_TMP = tempfile.TemporaryDirectory(prefix="precal-bad-inputs-")  # removed when the session ends


def memmap_of(arr: np.ndarray) -> np.ndarray:
    path = Path(tempfile.mkdtemp(dir=_TMP.name)) / "a.npy"
    np.save(path, arr)
    return np.load(path, mmap_mode="r")


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    target: str  # what is tested: a calibrator, a metric or a loader
    name: str
    run: Callable[[], Any]
    raises: tuple[type, ...] | None = (ValueError, TypeError)  # None: must succeed
    match: str | None = None  # regex the message must contain
    check: Callable[[Any], None] | None = None  # for cases that must succeed

    @property
    def id(self) -> str:
        return f"{self.target}-{self.name}"


CASES: list[Case] = []


def add(target: str, name: str, run: Callable[[], Any], match: str | None = None, *,
        raises: tuple[type, ...] | None = (ValueError, TypeError), check: Callable[[Any], None] | None = None) -> None:
    CASES.append(Case(target, name, run, raises, match, check))


BAD_LOGITS = {  # name: (X, message regex)
    "nan": (with_value(Z, 3, 1, np.nan), "NaN"),
    "inf": (with_value(Z, 3, 1, np.inf), "infinity"),
    "-inf": (with_value(Z, 5, 0, -np.inf), "infinity"),
    "float32-inf": (with_value(Z, 3, 1, np.inf).astype(np.float32), "infinity"),
    "float64-row-range-overflow": (Z_F64_ROW_OVERFLOW, "row 2 .*overflows float64"),
    "3-d": (Z[:, :, None], "2-D"),
    "0-d": (np.float64(1.0), "2-D|scalar|0-D"),
    "empty": (np.zeros((0, K)), "0 sample"),
    "no-columns": (np.zeros((N, 0)), "0 feature"),
    "sparse": (sp.csr_matrix(Z), "sparse"),
    "complex": (Z + 1j, "Complex"),
    "strings": (Z.astype(str), "numeric"),
    "datetimes": (np.round(Z * 1e3).astype("datetime64[ms]"), "numeric"),
    "time-spans": (np.round(Z * 1e3).astype("timedelta64[ms]"), "numeric"),
    "object-none": (np.array([[None, 1.0, 2.0]] * N, dtype=object), "NaN"),  # None is missing, as in sklearn
    "tensor-nan": (torch.from_numpy(with_value(Z, 3, 1, np.nan)), "NaN"),
    "tensor-sparse": (torch.from_numpy(Z).to_sparse(), "sparse"),
    "tensor-meta": (torch.empty(Z.shape, device="meta"), "meta device"),
    "tensor-f64-row-overflow": (torch.from_numpy(Z_F64_ROW_OVERFLOW), "overflows float64"),
    "memmap-nan": (None, "NaN"),  # built lazily (a file)
}


def bad_logits(name: str) -> Any:
    x, _ = BAD_LOGITS[name]
    return memmap_of(with_value(Z, 7, 2, np.nan)) if name == "memmap-nan" else x


BAD_LABELS = {  # name: (y, message regex), for K = 3 columns
    "single-class": (np.zeros(N, int), "at least 2 classes"),
    "too-short": (Y[:-1], "Inconsistent"),
    "nan": (np.where(Y == 1, np.nan, Y.astype(float)), "NaN"),
    "bool-with-3-columns": (Y == 1, "boolean labels"),
    "more-classes-than-columns": (np.arange(N) % 5, "classes"),
    "strings-2-of-3": (np.where(Y == 0, "a", "b"), "classes"),
    "2-d": (np.stack([Y, Y], axis=1), "1-D|shape"),
    "none": (None, "y"),
    "scalar": (np.int64(1), "scalar|1-D"),
    "mixed-types": (np.array([0, "a"] * (N // 2), dtype=object), "mix|type|label"),
}

BAD_WEIGHTS = {
    "negative": (np.r_[-1.0, np.ones(N - 1)], "non-negative"),
    "nan": (np.r_[np.nan, np.ones(N - 1)], "NaN"),
    "all-zero": (np.zeros(N), "positive"),
    "wrong-length": (np.ones(N + 1), "shape"),
    "2-d": (np.ones((N, 2)), "shape"),
}

BAD_HYPERPARAMETERS = [  # applied to every calibrator that has the parameter
    ("max_iter", True, "max_iter"), ("max_iter", "abc", "max_iter"), ("max_iter", 0, "max_iter"),
    ("max_iter", 2.5, "max_iter"), ("tol", math.nan, "tol"), ("tol", -1.0, "tol"), ("tol", math.inf, "tol"),
    ("tol", "x", "tol"), ("tol", True, "tol"),
    ("precision", "fp99", "precision"), ("precision", math.nan, "precision"), ("risk", "bogus", "risk"),
    ("norm", 0, "norm"), ("norm", -1, "norm"), ("map", "bogus", "map"), ("reg_lambda", -1.0, "reg_lambda"),
    ("reg_lambda", math.nan, "reg_lambda"), ("n_regions", 0, "n_regions"), ("n_regions", True, "n_regions"),
    ("random_state", "abc", "random_state"), ("loss", "bogus", "loss"), ("noise", "int5", "noise"),
    ("n_noise_copies", -1, "n_noise_copies"), ("region_names", "abc", "region_names"),
]


def _assert_state_close(actual: Any, expected: Any, where: str) -> None:
    """Numbers to rtol 1e-9; strings exactly; dicts (a wrapped calibrator's ``to_dict``) key by key."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key, value in expected.items():
            _assert_state_close(actual[key], value, f"{where}.{key}")
    elif np.asarray(expected).dtype.kind in "USO":
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    else:
        assert_allclose(actual, expected, rtol=1e-9, err_msg=where)


def _state_matches_float64(fitted: BaseLogitCalibrator) -> None:
    reference = make(type(fitted)).fit(Z_OVERFLOW64, Y)
    _assert_state_close(fitted._get_state(), reference._get_state(), "state")
    assert_allclose(fitted.predict_proba(Z), reference.predict_proba(Z), rtol=1e-9, atol=1e-12)


@functools.lru_cache(maxsize=None)
def _fitted(cls: type) -> BaseLogitCalibrator:
    """One fit per calibrator on the good data (predictions never change a fitted calibrator)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny data, few iterations: ConvergenceWarning
        return make(cls).fit(Z, Y)


for _cls in CALIBRATORS:
    cal = _cls.__name__
    for bad, (x, msg) in BAD_LOGITS.items():
        add(cal, f"fit-X-{bad}", lambda c=_cls, b=bad: make(c).fit(bad_logits(b), Y), msg)
    for bad, (yy, msg) in BAD_LABELS.items():
        add(cal, f"fit-y-{bad}", lambda c=_cls, yy=yy: make(c).fit(Z, yy), msg)
    for bad, (w, msg) in BAD_WEIGHTS.items():
        add(cal, f"fit-sample_weight-{bad}", lambda c=_cls, w=w: make(c).fit(Z, Y, sample_weight=w), msg)
    for key, value, msg in BAD_HYPERPARAMETERS:
        if key in _cls._get_param_names():
            add(cal, f"param-{key}={value!r}", lambda c=_cls, k=key, v=value: make(c).set_params(**{k: v}).fit(Z, Y),
                msg)
    # odd but valid: the overflow rows, as numpy, torch (float32 and bfloat16) and a memmap
    add(cal, "fit-float32-overflow-rows", lambda c=_cls: make(c).fit(Z_OVERFLOW32, Y), raises=None,
        check=_state_matches_float64)
    add(cal, "fit-tensor-float32-overflow-rows", lambda c=_cls: make(c).fit(torch.from_numpy(Z_OVERFLOW32), Y),
        raises=None, check=_state_matches_float64)
    add(cal, "fit-memmap-float32-overflow-rows", lambda c=_cls: make(c).fit(memmap_of(Z_OVERFLOW32), Y),
        raises=None, check=_state_matches_float64)
    add(cal, "fit-tensor-bfloat16-overflow-rows",
        lambda c=_cls: make(c).fit(torch.from_numpy(Z_OVERFLOW32).to(torch.bfloat16), Y), raises=None,
        check=lambda f, c=_cls: assert_allclose(
            f.predict_proba(Z), make(c).fit(torch.from_numpy(Z_OVERFLOW32).to(torch.bfloat16).double(), Y)
            .predict_proba(Z), rtol=1e-9, atol=1e-12))
    # prediction
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function", "score"):
        args = (Y,) if method == "score" else ()
        for bad in ("nan", "inf", "float64-row-range-overflow", "3-d", "empty", "sparse", "tensor-nan"):
            add(cal, f"{method}-X-{bad}",
                lambda c=_cls, m=method, b=bad, a=args: getattr(_fitted(c), m)(bad_logits(b), *a), BAD_LOGITS[bad][1])
        add(cal, f"{method}-X-wrong-columns", lambda c=_cls, m=method, a=args: getattr(_fitted(c), m)(
            np.c_[Z, Z[:, :1]], *a), "features")
        add(cal, f"{method}-X-1-d", lambda c=_cls, m=method, a=args: getattr(_fitted(c), m)(Z[:, 0], *a), "1-D")
    add(cal, "score-y-unknown-label", lambda c=_cls: _fitted(c).score(Z, np.where(Y == 0, 7, Y)), "not in")
    add(cal, "predict_proba-float32-overflow-rows", lambda c=_cls: _fitted(c).predict_proba(Z_OVERFLOW32),
        raises=None, check=lambda p, c=_cls: assert_allclose(p, _fitted(c).predict_proba(Z_OVERFLOW64), rtol=1e-12))
    add(cal, "predict-unfitted", lambda c=_cls: make(c).predict(Z), "not fitted")


# ----------------------------------------------------------------------------- loaders
def _damaged(cls: type, edit: Callable[[dict], None]) -> dict:
    data = json.loads(json.dumps(_fitted(cls).to_dict()))
    edit(data)
    return data


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return edit


def _delete(path: tuple) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]
    return edit


for _cls in CALIBRATORS:
    cal = _cls.__name__
    template = json.loads(json.dumps(_fitted(_cls).to_dict()))
    edits: dict[str, tuple[Callable[[dict], None], str]] = {}
    for key in template:
        edits[f"drop-{key}"] = (_delete((key,)), key if key != "format" else "format")
    edits["unknown-top-key"] = (_set(("surprise",), 1), "surprise")
    for value in (True, 1.0, "1", 2, None):
        edits[f"format_version={value!r}"] = (_set(("format_version",), value), "format_version")
    edits["format=pickle"] = (_set(("format",), "pickle"), "Not a precal calibrator")
    for value in ("os.system", "", None, "BaseLogitCalibrator", "UserCalibrator", ["TemperatureScaling"]):
        edits[f"estimator={value!r}"] = (_set(("estimator",), value), "Unknown calibrator")
    edits["precal_version=1"] = (_set(("precal_version",), 1), "precal_version")
    for param in template["params"]:
        edits[f"drop-param-{param}"] = (_delete(("params", param)), param)
        edits[f"param-{param}=bogus"] = (_set(("params", param), "bogus-value"), param)
        edits[f"param-{param}=nan"] = (_set(("params", param), math.nan), "")
    edits["unknown-param"] = (_set(("params", "surprise"), 1), "surprise")
    edits["params-not-a-dict"] = (_set(("params",), [1]), "params")
    edits["classes-duplicated"] = (_set(("classes", "values"), [template["classes"]["values"][0]] * K), "distinct")
    edits["classes-one"] = (_set(("classes", "values"), template["classes"]["values"][:1]), "")
    edits["classes-dtype-void"] = (_set(("classes", "dtype"), "V8"), "dtype")
    edits["classes-values-not-a-list"] = (_set(("classes", "values"), "abc"), "list")
    edits["classes-bool-as-int"] = (_set(("classes",), {"dtype": "<i8", "values": [0, True, 2]}), "labels")
    for value in (True, 0, "3", 99, 3.0 if K != 3 else 2):
        edits[f"n_features_in={value!r}"] = (_set(("n_features_in",), value), "n_features_in")
    for key in template["state"]:
        edits[f"drop-state-{key}"] = (_delete(("state", key)), "missing")
        for value in (math.nan, math.inf, "x", None, True, [], -1.0):
            edits[f"state-{key}={value!r}"] = (_set(("state", key), value), key)
    edits["unknown-state-key"] = (_set(("state", "surprise"), 1.0), "surprise")
    if "temperature_" in template["state"]:
        edits["state-temperature_=1e-310"] = (_set(("state", "temperature_"), 1e-310), "temperature_")
    for name, (edit, msg) in edits.items():
        for loader_name, loader in (("load_calibrator", load_calibrator), ("from_dict", _cls.from_dict)):
            add(f"{loader_name}[{cal}]", name, lambda c=_cls, e=edit, ld=loader: ld(_damaged(c, e)), msg)
    for loader_name, loader in (("load_calibrator", load_calibrator), ("from_dict", BaseLogitCalibrator.from_dict)):
        for bad in ([], None, "precal-calibrator", 3):
            add(f"{loader_name}[{cal}]", f"data={bad!r}", lambda ld=loader, b=bad: ld(b), "Not a precal calibrator")
    other = next((c for c in CALIBRATORS if c is not _cls), None)
    if other is not None:
        add(f"from_dict[{cal}]", f"holds-a-{other.__name__}", lambda c=_cls, o=other: c.from_dict(
            json.loads(json.dumps(_fitted(o).to_dict()))), f"not a {cal}")


# ----------------------------------------------------------------------------- metrics
Q = np.roll(P, 1, axis=0)  # other valid probabilities of the same shape
BF16_OFF = torch.tensor([[0.5, 0.25, 0.3125]] * N, dtype=torch.bfloat16)  # exact in bf16, rows sum to 1.0625
BAD_PROBS = {  # name: (p, message regex)
    "nan": (with_value(P, 2, 0, np.nan), "NaN"),
    "inf": (with_value(P, 2, 0, np.inf), "infinity"),
    "negative": (with_value(P, 2, 0, -0.1), r"\[0, 1\]"),
    "above-1": (with_value(P, 2, 0, 1.5), r"\[0, 1\]"),
    "logits": (Z, r"\[0, 1\]"),
    "rows-not-summing": (P * 0.9, "sum"),
    "bf16-rows-off-by-0.0625": (BF16_OFF, "sum"),
    "3-d": (P[:, :, None], "2-D"),
    "0-d": (np.float64(0.5), "2-D"),
    "empty": (np.zeros((0, K)), ""),
    "single-column": (P[:, :1], "single column"),
    "sparse": (sp.csr_matrix(P), "sparse"),
    "complex": (P + 0j, "Complex"),
    "strings": (P.astype(str), "numeric"),
    "datetimes": (np.round(P * 1e3).astype("datetime64[ms]"), "numeric"),
    "memmap-nan": (None, "NaN"),
}


def bad_probs(name: str) -> Any:
    p, _ = BAD_PROBS[name]
    return memmap_of(with_value(P, 9, 1, np.nan)) if name == "memmap-nan" else p


BAD_METRIC_LABELS = {name: BAD_LABELS[name] for name in
                     ("too-short", "nan", "bool-with-3-columns", "more-classes-than-columns", "strings-2-of-3", "2-d",
                      "mixed-types")}
BAD_LABELS_ARG = {"duplicated": ([0, 0, 1], "distinct"), "too-few": ([0, 1], "entries"),
                  "unknown-y": ([5, 6, 7], "not in")}
N_BINS_BAD = [True, 0, -3, 2.5, "10", None]


@dataclass(frozen=True)
class Adapter:
    """How a metric is called: ``arrays`` says which array arguments it takes, ``params``
    the bad keyword values to try (name -> list of bad values)."""

    arrays: str  # "y_p", "p", "p_q", "y_p_q", "logits_y", "none", "scorer", "names"
    call: Callable[..., Any]
    params: dict[str, list[Any]] | None = None


def _estimator() -> BaseLogitCalibrator:
    return _fitted(CALIBRATORS[0])


METRIC_ADAPTERS: dict[str, Adapter] = {
    "expected_calibration_error": Adapter("y_p", metrics.expected_calibration_error, {"n_bins": N_BINS_BAD}),
    "adaptive_calibration_error": Adapter("y_p", metrics.adaptive_calibration_error, {"n_bins": N_BINS_BAD}),
    "maximum_calibration_error": Adapter("y_p", metrics.maximum_calibration_error, {"n_bins": N_BINS_BAD}),
    "classwise_calibration_error": Adapter("y_p", metrics.classwise_calibration_error, {"n_bins": N_BINS_BAD}),
    "brier_score": Adapter("y_p", metrics.brier_score, {"scale_by_half": ["x", 1, 0, None, "AUTO"]}),
    "negative_log_likelihood": Adapter("y_p", metrics.negative_log_likelihood, {}),
    "debiased_calibration_error": Adapter("y_p", metrics.debiased_calibration_error,
                                          {"n_bins": N_BINS_BAD, "strategy": ["equal", None, 1],
                                           "squared": ["yes", None, 1]}),
    "smooth_calibration_error": Adapter("y_p", metrics.smooth_calibration_error,
                                        {"bandwidth": [math.nan, 0, -0.1, True, "wide", None],
                                         "return_bandwidth": ["yes", None, 1]}),
    "reliability_curve": Adapter("y_p", metrics.reliability_curve, {"n_bins": N_BINS_BAD,
                                                                    "strategy": ["equal", None, 1]}),
    "calibration_error_ci": Adapter(
        "y_p", lambda y, p, **kw: metrics.calibration_error_ci(y, p, n_bootstrap=kw.pop("n_bootstrap", 3), **kw),
        {"n_bootstrap": [0, True, 2.5], "confidence_level": [math.nan, 0, 1, 1.5, True, "0.9"],
         "metric": ["foo", None, ["ece"]], "n_bins": N_BINS_BAD, "random_state": ["seed", 1.5],
         "strategy": ["quantile"], "scale_by_half": ["x"]}),
    "true_class_confidence": Adapter("y_p", metrics.true_class_confidence, {}),
    "precision_split": Adapter("p_q", metrics.precision_split, {"threshold": [math.nan, True, -0.1, 1.5, "0.1"]}),
    "jensen_shannon": Adapter("p_q", metrics.jensen_shannon, {}),
    "swap_analysis": Adapter("y_p_q", metrics.swap_analysis, {"n_bins": N_BINS_BAD}),
    "confidence_shift": Adapter("y_p_q", metrics.confidence_shift, {"n_bins": N_BINS_BAD}),
    "entropy": Adapter("p", metrics.entropy, {}),
    "saturation_report": Adapter("p", metrics.saturation_report, {}),
    "gradient_underflow": Adapter("logits_y", lambda z, y, **kw: metrics.gradient_underflow(
        z, y, kw.pop("precision", "bf16"), **kw), {"precision": ["fp99", "int8", True, None, math.nan]}),
    "underflow_margin": Adapter("none", lambda **kw: metrics.underflow_margin(
        kw.pop("precision", "bf16"), **kw), {"precision": ["fp99", "int8", True, None], "n_classes": [True, 1, 2.5, "3"],
                                             "softmax": ["x", None]}),
    "get_scorer": Adapter("names", lambda **kw: metrics.get_scorer(kw.pop("scoring")),
                          {"scoring": ["no_such_scorer", 3, None, ["ece"]]}),
    "get_scorer_names": Adapter("names", lambda **kw: metrics.get_scorer_names(**kw), {"unexpected": [1]}),
    **{name: Adapter("scorer", getattr(metrics, name), {}) for name in metrics.__all__
       if name.endswith("_scorer") and name != "get_scorer"},
}


def _metric_cases(name: str, adapter: Adapter) -> None:
    f = adapter.call
    target = f"metric:{name}"
    if adapter.arrays in ("y_p", "p", "p_q", "y_p_q"):
        def call(p=P, q=Q, y=Y, **kw):
            args = {"y_p": (y, p), "p": (p,), "p_q": (p, q), "y_p_q": (y, p, q)}[adapter.arrays]
            return f(*args, **kw)
        for bad, (_, msg) in BAD_PROBS.items():
            add(target, f"p-{bad}", lambda b=bad: call(p=bad_probs(b)), msg)
            if adapter.arrays in ("p_q", "y_p_q"):
                add(target, f"q-{bad}", lambda b=bad: call(q=bad_probs(b)), msg)
        if adapter.arrays in ("p_q", "y_p_q"):
            add(target, "p-q-shapes-differ", lambda: call(q=Q[:-1]), "same shape")
        if adapter.arrays.startswith("y"):
            for bad, (yy, msg) in BAD_METRIC_LABELS.items():
                add(target, f"y-{bad}", lambda yy=yy: call(y=yy), msg)
            if "labels" in f.__code__.co_varnames or name == "calibration_error_ci":
                for bad, (labels, msg) in BAD_LABELS_ARG.items():
                    add(target, f"labels-{bad}", lambda labels=labels: call(labels=labels), msg)
        for param, values in (adapter.params or {}).items():
            for value in values:
                add(target, f"{param}={value!r}", lambda k=param, v=value: call(**{k: v}), param)
    elif adapter.arrays == "logits_y":
        for bad in ("nan", "inf", "float64-row-range-overflow", "3-d", "empty", "sparse", "tensor-nan"):
            add(target, f"logits-{bad}", lambda b=bad: f(bad_logits(b), Y), BAD_LOGITS[bad][1])
        add(target, "logits-1-d", lambda: f(Z[:, 0], Y), "2-D")
        add(target, "logits-single-column", lambda: f(Z[:, :1], Y), "2 columns")
        for bad, (yy, msg) in BAD_METRIC_LABELS.items():
            add(target, f"y-{bad}", lambda yy=yy: f(Z, yy), msg)
        for param, values in (adapter.params or {}).items():
            for value in values:
                add(target, f"{param}={value!r}", lambda k=param, v=value: f(Z, Y, **{k: v}), param)
        add(target, "float32-overflow-rows", lambda: f(Z_OVERFLOW32, Y), raises=None,
            check=lambda g: assert_allclose(g.margin, f(Z_OVERFLOW64, Y).margin, rtol=0))
    elif adapter.arrays in ("none", "names"):
        for param, values in (adapter.params or {}).items():
            for value in values:
                add(target, f"{param}={value!r}", lambda k=param, v=value: f(**{k: v}),
                    None if param in ("unexpected", "scoring") else param)
    elif adapter.arrays == "scorer":
        for bad in ("nan", "3-d", "float64-row-range-overflow"):
            add(target, f"X-{bad}", lambda b=bad: f(_estimator(), bad_logits(b), Y), BAD_LOGITS[bad][1])
        for bad in ("too-short", "nan", "bool-with-3-columns", "more-classes-than-columns"):
            add(target, f"y-{bad}", lambda b=bad: f(_estimator(), Z, BAD_LABELS[b][0]), BAD_LABELS[bad][1])


for _name, _adapter in METRIC_ADAPTERS.items():
    _metric_cases(_name, _adapter)


# ----------------------------------------------------------------------------- the tests
def _inputs_untouched() -> None:
    for name, value in _FROZEN.items():
        np.testing.assert_array_equal(globals()[name], value, err_msg=f"{name} was modified")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny data; the emulator's overflow warning
        if case.raises is None:
            result = case.run()
            case.check(result)
        else:
            with pytest.raises(case.raises) as info:
                case.run()
            message = str(info.value)
            assert message.strip(), f"{case.id}: an error without a message"
            if case.match:
                assert re.search(case.match, message), f"{case.id}: {message!r} does not match {case.match!r}"
    _inputs_untouched()


def test_every_public_metric_and_calibrator_is_in_the_matrix() -> None:
    public = {n for n in metrics.__all__ if callable(getattr(metrics, n)) and not isinstance(getattr(metrics, n), type)}
    assert public <= set(METRIC_ADAPTERS), f"add adapters for {sorted(public - set(METRIC_ADAPTERS))}"
    assert {c.__name__ for c in CALIBRATORS} >= {"TemperatureScaling", "PACSCalibrator", "DirichletCalibrator",
                                                   "FuzzyDirichletCalibrator"}
    targets = {c.target for c in CASES}
    for cls in CALIBRATORS:
        assert cls.__name__ in targets and f"load_calibrator[{cls.__name__}]" in targets
    for name in METRIC_ADAPTERS:
        assert f"metric:{name}" in targets, name


def matrix_table() -> str:
    counts = collections.Counter(c.target.split("[")[0] if c.target.startswith(("load", "from")) else
                                 c.target for c in CASES)
    valid = sum(c.raises is None for c in CASES)
    lines = [f"issue 17 bad-input matrix: {len(CASES)} cases ({len(CASES) - valid} must raise a clear "
             f"ValueError/TypeError, {valid} odd-but-valid must equal the float64 result)"]
    lines += [f"  {target:<32} {n:>5}" for target, n in sorted(counts.items())]
    return "\n".join(lines)


def test_matrix_size(capsys) -> None:
    """Print the number of cases per target (shown even under -q) and keep the matrix large."""
    with capsys.disabled():
        print("\n" + matrix_table())
    assert len(CASES) > 1000


if __name__ == "__main__":  # python tests/test_bad_inputs.py: the table only
    print(matrix_table())

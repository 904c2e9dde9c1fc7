"""Strict persistence (issue 17, item 5): ``from_dict`` / ``load_calibrator`` check every
field with the checks ``fit`` makes, load only precal's own classes, and either give back
exactly the calibrator the data describe or raise a clear ``ValueError``/``TypeError``.

The hypothesis tests mutate valid JSON (drop keys, add keys, change values and types, at
every depth) and require one of two outcomes: an error, or a calibrator whose ``to_dict``
is the mutated data (nothing ignored, nothing invented) and whose predictions are finite
probabilities or a clear error; when the mutation changed nothing (``3`` for ``3.0``), the
predictions are bit-identical to the original's.
"""

import copy
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import precal
from precal import (
    DirichletCalibrator,
    FuzzyDirichletCalibrator,
    PACSCalibrator,
    TemperatureScaling,
    load_calibrator,
)
from precal.calibration import BaseLogitCalibrator
from precal.calibration._base import _REGISTRY
from precal.emulate import format_info

rng = np.random.default_rng(0)
K = 3
Y = rng.integers(0, K, size=120)
# over-confidence that grows with the logit norm, so PACS's λ > 0 and its precision matters
Z = rng.uniform(0.5, 4.0, size=(120, 1)) * 2.0 * (2.0 * np.eye(K)[Y] + rng.normal(size=(120, K)))
NAMES = np.array(["ant", "bee", "cat"])

FACTORIES = {
    "TemperatureScaling": lambda: TemperatureScaling(),
    "PACSCalibrator": lambda: PACSCalibrator(precision="bf16"),
    "DirichletCalibrator": lambda: DirichletCalibrator(max_iter=50),
    "FuzzyDirichletCalibrator": lambda: FuzzyDirichletCalibrator(noise=None, max_iter=15, random_state=0),
}


def _fit(name, labels=NAMES):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small max_iter: ConvergenceWarning is expected
        return FACTORIES[name]().fit(Z, labels[Y])


FITTED = {name: _fit(name) for name in FACTORIES}
DATA = {name: json.loads(json.dumps(est.to_dict())) for name, est in FITTED.items()}


def _data(name):
    return copy.deepcopy(DATA[name])


def _raises(data, error=(ValueError,), match=None):
    for loader in (load_calibrator, BaseLogitCalibrator.from_dict):
        with pytest.raises(error, match=match):
            loader(data)


# ---------------------------------------------------------------- the findings of issue 17
def test_format_version_true_is_not_1():
    data = _data("TemperatureScaling")
    for bad in (True, 1.0, "1", None):
        data["format_version"] = bad
        _raises(data, match="format_version")


def test_duplicated_classes_are_refused():
    data = _data("TemperatureScaling")
    data["classes"]["values"] = ["ant", "ant", "cat"]
    _raises(data, match="distinct")


@pytest.mark.parametrize("value", [1e-310, 0.0, -1.0, 1e-5, 1e5, 1e300])
def test_temperature_outside_what_a_fit_gives_is_refused(value):
    """1e-310 loaded before and gave all-NaN probabilities; fit keeps T in [e^-10, e^10]."""
    data = _data("TemperatureScaling")
    data["state"]["temperature_"] = value
    _raises(data, match="temperature_")


def test_temperatures_on_the_fit_bounds_load():
    for value in (math.exp(-10.0), math.exp(10.0)):
        data = _data("TemperatureScaling")
        data["state"]["temperature_"] = value
        assert np.isfinite(load_calibrator(data).predict_proba(Z)).all()


@pytest.mark.parametrize("name, key, value, error", [
    ("TemperatureScaling", "max_iter", "abc", TypeError),
    ("TemperatureScaling", "max_iter", True, TypeError),
    ("TemperatureScaling", "max_iter", 0, ValueError),
    ("TemperatureScaling", "tol", -1, ValueError),
    ("TemperatureScaling", "tol", float("nan"), ValueError),
    ("PACSCalibrator", "risk", "bogus", ValueError),
    ("PACSCalibrator", "risk", ["norm"], ValueError),
    ("PACSCalibrator", "norm", 0, ValueError),
    ("PACSCalibrator", "norm", -1, ValueError),
    ("PACSCalibrator", "norm", True, ValueError),
    ("PACSCalibrator", "precision", "fp99", ValueError),
    ("PACSCalibrator", "precision", -0.5, ValueError),
    ("DirichletCalibrator", "map", "bogus", ValueError),
    ("DirichletCalibrator", "reg_lambda", -1.0, ValueError),
    ("DirichletCalibrator", "max_iter", 2.5, TypeError),
    ("FuzzyDirichletCalibrator", "random_state", "abc", ValueError),
    ("FuzzyDirichletCalibrator", "region_names", {"a": 1, "b": 2, "c": 3}, ValueError),
    ("FuzzyDirichletCalibrator", "loss", "mse", ValueError),
    ("FuzzyDirichletCalibrator", "n_noise_copies", -1, ValueError),
])
def test_bad_hyperparameters_are_refused_as_fit_refuses_them(name, key, value, error):
    """Before issue 17, max_iter="abc", tol=-1, risk="bogus" (then taken as "norm") and
    norm=0 all loaded. Now from_dict makes the checks fit makes, with fit's message."""
    data = _data(name)
    data["params"][key] = value
    _raises(data, error, match=key)
    with pytest.raises(error, match=key):  # the same parameter is refused by fit
        FACTORIES[name]().set_params(**{key: value}).fit(Z, Y)


def test_missing_or_unknown_parameters_are_refused():
    """A dropped parameter would otherwise be its default: a different calibrator, silently."""
    data = _data("PACSCalibrator")
    del data["params"]["precision"]
    _raises(data, match="missing.*precision")
    data = _data("PACSCalibrator")
    data["params"]["extra"] = 1
    _raises(data, match="unknown.*extra")


@pytest.mark.parametrize("where", ["top", "state", "classes"])
def test_unknown_keys_are_refused(where):
    data = _data("TemperatureScaling")
    {"top": data, "state": data["state"], "classes": data["classes"]}[where]["surprise"] = 1
    _raises(data, match="surprise|exactly")


def test_pacs_stored_epsilon_is_gone_and_predictions_follow_precision():
    """Chosen: epsilon_ is not stored (it is the ε of params["precision"], which predictions
    use, so a stored copy could only disagree); a file that carries one is refused."""
    pacs = FITTED["PACSCalibrator"]
    assert pacs.lambda_ > 0  # else the precision would not matter
    data = _data("PACSCalibrator")
    assert "epsilon_" not in data["state"]
    loaded = load_calibrator(data)
    assert loaded.epsilon_ == format_info("bf16").unit_roundoff
    assert_array_equal(loaded.predict_proba(Z), pacs.predict_proba(Z))
    # re-targeted after fitting: the file holds the new precision, and so does the loaded model
    retargeted = copy.deepcopy(pacs).set_params(precision="fp8_e4m3")
    again = load_calibrator(json.loads(json.dumps(retargeted.to_dict())))
    assert_array_equal(again.predict_proba(Z), retargeted.predict_proba(Z))
    assert not np.array_equal(again.predict_proba(Z), pacs.predict_proba(Z))
    # an old file with epsilon_ (ignored at predict time before) is refused, loudly
    data["state"]["epsilon_"] = 0.5
    _raises(data, match="epsilon_")


def test_user_subclass_with_the_same_name_does_not_hijack_loading():
    """Before issue 17 defining ``class TemperatureScaling(...)`` anywhere replaced precal's
    class in the registry: load_calibrator then built the user's class from a file."""
    calls = []

    class TemperatureScaling(precal.TemperatureScaling):  # noqa: F811 - the point of the test
        def _set_state(self, state):
            calls.append(state)
            super()._set_state(state)

    assert _REGISTRY["TemperatureScaling"] is precal.TemperatureScaling
    loaded = load_calibrator(_data("TemperatureScaling"))
    assert type(loaded) is precal.TemperatureScaling and not calls
    # and the subclass cannot write data that would load as precal's class
    user = TemperatureScaling().fit(Z, Y)
    with pytest.raises(TypeError, match="not one of precal's calibrators"):
        user.to_dict()


@pytest.mark.parametrize("classes, match", [
    ({"dtype": "<i8", "values": [0, 1, True]}, "labels"),
    ({"dtype": "|b1", "values": [0, 1]}, "labels"),
    ({"dtype": "<f8", "values": [0.0, float("nan"), 2.0]}, "labels"),
    ({"dtype": "|u1", "values": [0, 1, 300]}, "out of bounds|hold"),
    ({"dtype": "<U1", "values": ["ant", "bee", "cat"]}, "hold"),
    ({"dtype": "<U99999999", "values": ["a", "b", "c"]}, "bytes"),
    ({"dtype": "<M8[s]", "values": [0, 1, 2]}, "unsupported"),
    ({"dtype": "i8,i8", "values": [0, 1, 2]}, "unsupported"),
    ({"dtype": "not a dtype", "values": [0, 1, 2]}, "dtype"),
    ({"dtype": "|O", "values": ["a", 1, 2.0]}, "labels"),
    ({"dtype": "<i8", "values": [[0], [1], [2]]}, "labels"),
    ({"dtype": "<i8"}, "exactly"),
    ({"dtype": "<U1", "values": ["b", "a", "c"]}, "increasing order"),  # no fit gives unsorted classes
    ({"dtype": "<i8", "values": [2, 0, 1]}, "increasing order"),
])
def test_malformed_classes_are_refused(classes, match):
    data = _data("TemperatureScaling")
    data["classes"] = classes
    _raises(data, match=match)


@pytest.mark.parametrize("labels", [np.array([0, 1, 2]), np.array([0.0, 1.0, 2.0], np.float32), np.array([-3, 7, 9]),
                                    np.array(["x", "yy", "zzz"], dtype=object), np.array([0, 1, 2], np.uint8)])
def test_classes_of_every_supported_dtype_round_trip(labels):
    est = _fit("TemperatureScaling", labels=labels)
    data = json.loads(json.dumps(est.to_dict()))
    loaded = load_calibrator(data)
    assert loaded.classes_.dtype == est.classes_.dtype
    assert_array_equal(loaded.classes_, est.classes_)
    assert loaded.to_dict() == est.to_dict()


def test_boolean_classes_round_trip():
    est = TemperatureScaling().fit(Z[:, :2], Y % 2 == 0)
    loaded = load_calibrator(json.loads(json.dumps(est.to_dict())))
    assert loaded.classes_.tolist() == [False, True]
    assert_array_equal(loaded.predict(Z[:, :2]), est.predict(Z[:, :2]))


def test_n_features_in_must_be_an_integer_matching_the_classes():
    for bad in (True, 3.0, 2, "3"):
        data = _data("TemperatureScaling")
        data["n_features_in"] = bad
        _raises(data, match="n_features_in")


def test_fuzzy_regions_must_be_sorted_and_widths_within_the_fits_range():
    for key, value, match in (("centers_", None, "centers_"), ("widths_", [1e-300] * 3, "widths_"),
                              ("centers_", [0.1, 0.5, 0.9], "centers_"), ("widths_", [5.0] * 3, "widths_")):
        data = _data("FuzzyDirichletCalibrator")
        data["state"][key] = value if value is not None else data["state"][key][::-1]
        _raises(data, match=match)


@pytest.mark.parametrize("value", [2**53 + 1, 10**400])
def test_integers_a_float64_cannot_hold_are_refused_not_rounded(value):
    """JSON integers are exact: 2**53 + 1 would load as 2**53 (not the model the file
    describes) and 10**400 raised OverflowError instead of a clear error."""
    for name, edit, key in (
        ("DirichletCalibrator", lambda d: d["state"]["coef_"][0].__setitem__(0, value), "coef_"),
        ("TemperatureScaling", lambda d: d["state"].__setitem__("temperature_", value), "temperature_"),
        ("DirichletCalibrator", lambda d: d["params"].__setitem__("reg_lambda", 10**400), "reg_lambda"),
        ("PACSCalibrator", lambda d: d["params"].__setitem__("precision", 10**400), "precision"),
        ("PACSCalibrator", lambda d: d["params"].__setitem__("norm", 10**400), "norm"),
    ):
        data = _data(name)
        edit(data)
        _raises(data, match=key)


def test_a_huge_region_count_is_refused_without_building_it():
    """n_regions = 2**40 hung from_dict: the default region names were built before any check."""
    data = _data("FuzzyDirichletCalibrator")
    data["params"]["n_regions"] = 2**40
    _raises(data, match="centers_")  # the state holds 3 regions


def test_dirichlet_and_fuzzy_state_shapes_are_checked():
    data = _data("DirichletCalibrator")
    data["state"]["coef_"] = [[1.0, 0.0], [0.0, 1.0]]
    _raises(data, match="coef_")
    data = _data("FuzzyDirichletCalibrator")
    data["state"]["intercepts_"] = data["state"]["intercepts_"][:2]
    _raises(data, match="intercepts_")
    for leaf in (True, "1.5", None, {"a": 1}):  # numpy would read "1.5" as 1.5 and True as 1.0
        data = _data("DirichletCalibrator")
        data["state"]["coef_"][0][0] = leaf
        _raises(data, match="coef_")


def test_predictions_that_overflow_raise_instead_of_nan():
    """A finite but huge logit times a valid fitted map can overflow float64: an error, never NaN."""
    ts = FITTED["TemperatureScaling"]
    huge = np.array([[1e308, -1e308 / 2, 0.0]])
    loaded = load_calibrator(_data("TemperatureScaling"))
    loaded.temperature_ = math.exp(-10.0)
    with pytest.raises(ValueError, match="not finite"):
        loaded.predict_proba(huge)
    assert np.isfinite(ts.predict_proba(Z)).all()


# ---------------------------------------------------------------- hypothesis: mutated JSON
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-3, max_value=1e3),
    st.text(max_size=6),
    st.sampled_from(["bf16", "fp16", "norm", "peaked", "bogus", "full", "diagonal", "auto", "int4", "nll", "ant",
                     "cat", "dog", "TemperatureScaling", "PACSCalibrator", "<i8", "<i4", "<U3", "<U9", "|O",
                     "|b1", "<f8", "<f4", "os.system", "precal-calibrator", "1.5", "2", "1e-310", "NaN"]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    """Every location in a JSON tree: dict keys and list positions, at every depth."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _same(a, b):
    """JSON equality that does not take True for 1 (Python's == does), nor NaN for anything."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@st.composite
def mutations(draw, name):
    data = _data(name)
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    op = draw(st.sampled_from(["delete", "replace", "replace", "perturb", "add"]))
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "perturb" and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        factor = draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0, 1e-300, 1e300, 1.0 + 1e-9]))
        parent[last] = parent[last] * factor
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=5))] = draw(_VALUES)
    else:
        parent[last] = draw(_VALUES)
    return data


def _check_mutation(name, data):
    original = DATA[name]
    try:
        loaded = load_calibrator(data)
    except (ValueError, TypeError) as exc:
        assert str(exc)  # a clear error: it says something
        return
    # loaded: it must be exactly the calibrator the data describe
    back = json.loads(json.dumps(loaded.to_dict()))
    for d in (back, data):
        d.pop("precal_version", None)
    assert _same(back, data), (back, data)
    reference = dict(original)
    reference.pop("precal_version")
    try:
        proba = loaded.predict_proba(Z[:, : loaded.n_features_in_] if loaded.n_features_in_ != K else Z)
    except ValueError as exc:  # e.g. a huge coefficient makes the calibrated logits overflow
        assert "not finite" in str(exc) or "features" in str(exc), exc
        return
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)
    if _same(data, reference):  # an equivalent file (3 for 3.0): bit-identical predictions
        assert_array_equal(proba, FITTED[name].predict_proba(Z))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_json_gives_an_error_or_exactly_the_described_calibrator(name, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _check_mutation(name, data.draw(mutations(name)))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_unmutated_json_loads_identically(name):
    loaded = load_calibrator(_data(name))
    assert_array_equal(loaded.predict_proba(Z), FITTED[name].predict_proba(Z))
    assert _same(json.loads(json.dumps(loaded.to_dict())), DATA[name])


def test_numpy_scalar_parameters_are_written_as_python_numbers():
    """A grid search over np.arange hands numpy scalars to set_params: to_dict writes them as
    plain numbers (it refused them before), and the loaded calibrator predicts the same."""
    from precal.calibration import PACSCalibrator, TopLabelCalibrator

    from .conftest import make_logits

    z, y = make_logits(n=300, k=3, seed=1)
    for cal in (TopLabelCalibrator(n_bins=np.int64(10)), PACSCalibrator(norm=np.int64(2), precision=np.float32(0.01))):
        cal.fit(z, y)
        data = json.loads(json.dumps(cal.to_dict()))
        assert all(not isinstance(v, np.generic) for v in cal.to_dict()["params"].values())
        again = load_calibrator(data)
        np.testing.assert_array_equal(again.predict_proba(z), cal.predict_proba(z))

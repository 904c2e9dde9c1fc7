"""TopLabelCalibrator: the maps against scikit-learn/scipy, the top-label reduction, edge cases."""

import json

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.interpolate import PchipInterpolator
from sklearn.base import clone
from sklearn.isotonic import IsotonicRegression

from precal.calibration import TemperatureScaling, TopLabelCalibrator, fit_confidence_map, load_calibrator

from ..conftest import make_logits

METHODS = ["isotonic", "histogram", "spline"]


def _softmax(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _reference(z, base_temperature, g, cap):
    """The documented formula, written out directly: q_c = clip(g(p_c)), the rest in proportion."""
    p = _softmax(z / base_temperature)
    n = len(p)
    c = p.argmax(axis=1)
    p_c = p[np.arange(n), c]
    rest = p.copy()
    rest[np.arange(n), c] = 0.0
    share = rest / rest.sum(axis=1, keepdims=True)
    r = share.max(axis=1)
    q_c = np.maximum(np.minimum(g(p_c), cap), r / (1 + r) * (1 + 1e-9))
    q = share * (1.0 - q_c)[:, None]
    q[np.arange(n), c] = q_c
    return q


def _eval_map(breakpoints, coef, x):
    """Evaluate one stored piecewise polynomial (PPoly convention, constant beyond the ends)."""
    x = np.maximum(x, breakpoints[0])
    j = np.searchsorted(breakpoints, x, side="right") - 1
    t = x - breakpoints[j]
    out = np.zeros_like(x)
    for d in range(coef.shape[0]):
        out = out * t + coef[d, j]
    return out


# ---------------------------------------------------------------- the maps
def test_isotonic_pooled_equals_scikit_learn_isotonic_regression():
    z, y = make_logits(n=2000, k=5, seed=1)
    zt, _ = make_logits(n=500, k=5, seed=2)
    cal = TopLabelCalibrator(method="isotonic", per_class=False).fit(z, y)
    p = _softmax(z / cal.temperature_)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, correct)
    expected = _reference(zt, cal.temperature_, iso.predict, 1 - 1 / (len(y) + 2))
    assert_allclose(cal.predict_proba(zt), expected, rtol=1e-10, atol=1e-14)


def test_base_temperature_is_temperature_scaling_and_base_none_is_one():
    z, y = make_logits(n=800, k=4, seed=3)
    ts = TemperatureScaling().fit(z, y)
    assert TopLabelCalibrator().fit(z, y).temperature_ == ts.temperature_
    assert TopLabelCalibrator(base=None).fit(z, y).temperature_ == 1.0


def test_histogram_bins_hold_equal_mass_and_give_their_accuracy():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.3, 1.0, size=600)
    correct = (rng.uniform(size=600) < conf).astype(float)
    x, c = fit_confidence_map(conf, correct, np.ones(600), "histogram", n_bins=6)
    assert c.shape == (1, 6) and x[0] == 0.0
    order = np.argsort(conf)
    for b in range(6):  # 100 sorted samples per bin, the bin starting at its smallest confidence
        members = order[100 * b: 100 * (b + 1)]
        assert_allclose(c[0, b], correct[members].mean())
        if b > 0:
            assert x[b] == conf[members].min()
        assert_allclose(_eval_map(x, c, conf[members]), correct[members].mean())


def test_histogram_weights_count_as_repetitions():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.3, 1.0, size=300)
    correct = (rng.uniform(size=300) < conf).astype(float)
    w = rng.integers(1, 4, size=300).astype(float)
    weighted = fit_confidence_map(conf, correct, w, "histogram", n_bins=7)
    repeated = fit_confidence_map(np.repeat(conf, w.astype(int)), np.repeat(correct, w.astype(int)),
                                  np.ones(int(w.sum())), "histogram", n_bins=7)
    assert_allclose(weighted[0], repeated[0])
    assert_allclose(weighted[1], repeated[1])


def test_spline_is_pchip_through_the_isotonic_blocks_and_monotone():
    rng = np.random.default_rng(6)
    conf = rng.uniform(0.3, 1.0, size=1000)
    correct = (rng.uniform(size=1000) < conf**2).astype(float)
    x, c = fit_confidence_map(conf, correct, np.ones(1000), "spline")
    iso = IsotonicRegression(y_min=0, y_max=1).fit(conf, correct)
    fitted = iso.predict(np.sort(conf))
    starts = np.flatnonzero(np.append(True, np.diff(fitted) != 0))
    centroids = np.add.reduceat(np.sort(conf), starts) / np.diff(np.append(starts, len(conf)))
    assert_allclose(x, centroids)
    grid = np.linspace(0, 1, 5001)
    values = _eval_map(x, c, grid)
    assert_allclose(values[(grid >= x[0]) & (grid <= x[-1])],
                    PchipInterpolator(x, fitted[starts])(grid[(grid >= x[0]) & (grid <= x[-1])]), atol=1e-12)
    assert np.all(np.diff(values) >= -1e-12)
    assert values[0] == fitted[0] and values[-1] == fitted[-1]  # constant beyond the ends


def test_spline_merges_isotonic_blocks_whose_centroids_do_not_increase():
    """Confidences one ulp apart: scikit-learn's isotonic fit pools them into one threshold but
    predicts them on its interpolating line, so they land in two blocks whose rounded centroids
    tie (PCHIP refused them before); such blocks become one knot at their weighted mean."""
    a = 0.7972515301259182
    b = np.nextafter(a, 1.0)
    conf = np.array([0.3, 0.3] + [a] * 6 + [b] * 5 + [0.95, 0.95])
    correct = np.array([0, 0] + [0, 1, 0, 1, 0, 1] + [1, 0, 1, 0, 1] + [1, 1], dtype=float)
    assert np.add.reduce(conf[2:8]) / 6 >= np.add.reduce(conf[8:13]) / 5  # the rounded centroids tie
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, correct)
    assert iso.predict([b])[0] > iso.predict([a])[0]  # two blocks one ulp apart
    x, c = fit_confidence_map(conf, correct, np.ones(15), "spline")
    assert np.all(np.diff(x) > 0) and len(x) == 3
    values = _eval_map(x, c, np.linspace(0, 1, 1001))
    assert np.all(np.isfinite(values)) and np.all(np.diff(values) >= -1e-12)
    assert _eval_map(x, c, np.array([a]))[0] == pytest.approx(6 / 11)  # the merged knot: the pooled accuracy


def test_spline_fits_coarsely_quantized_logits():
    """Logits on a grid of step 4: rows that are permutations of each other give confidences a
    few ulps apart (a crash in scipy before); AutoCalibrator tries the spline by default."""
    from precal.calibration import AutoCalibrator

    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 100)
    z = np.round(3 * (np.eye(3)[y] + rng.normal(size=(100, 3))) / 4) * 4
    p = TopLabelCalibrator(method="spline").fit(z, y).predict_proba(z)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert np.isfinite(AutoCalibrator().fit(z, y).predict_proba(z)).all()


@pytest.mark.parametrize("method", ["isotonic", "spline"])  # histogram binning need not be monotone
def test_maps_are_monotone_and_in_the_unit_interval(method):
    z, y = make_logits(n=1500, k=3, seed=7)
    cal = TopLabelCalibrator(method=method, per_class=True).fit(z, y)
    grid = np.linspace(0, 1, 2001)
    for m in range(cal.breakpoints_.shape[0]):
        values = _eval_map(cal.breakpoints_[m], cal.coef_[:, m], grid)
        assert np.all(np.diff(values) >= -1e-12) and values.min() >= -1e-12 and values.max() <= 1 + 1e-12


# ---------------------------------------------------------------- per class
def test_per_class_maps_fit_each_predicted_class_on_its_own_samples():
    z, y = make_logits(n=3000, k=3, seed=8)
    z[:, 1] *= 0.5  # class 1 less confident than the others: its map must differ
    cal = TopLabelCalibrator(method="isotonic", per_class=True, base=None).fit(z, y)
    assert_array_equal(cal.class_map_, [1, 2, 3])
    p = _softmax(z)
    pred = p.argmax(axis=1)
    for c in range(3):
        mine = pred == c
        x, coef = fit_confidence_map(p[mine].max(axis=1), (y[mine] == c).astype(float), np.ones(mine.sum()),
                                     "isotonic")
        m = cal.class_map_[c]
        assert_allclose(cal.breakpoints_[m, : len(x)], x)
        assert_allclose(cal.coef_[:, m, : len(x)], coef)


def test_per_class_auto_pools_the_classes_with_too_few_samples():
    z, y = make_logits(n=1200, k=4, seed=9)
    counts = np.bincount(z.argmax(axis=1), minlength=4)
    threshold = int(np.sort(counts)[1]) + 1  # the two least predicted classes fall below it
    cal = TopLabelCalibrator(min_samples_per_class=threshold).fit(z, y)
    own = counts >= threshold
    assert_array_equal(cal.class_map_ > 0, own)
    assert np.all(cal.class_map_[~own] == 0)
    assert not TopLabelCalibrator(per_class=False).fit(z, y).class_map_.any()


# ---------------------------------------------------------------- the reduction: argmax, floor, cap
def test_prediction_is_always_the_models_and_the_floor_keeps_it_strictly():
    # low-confidence predictions are all wrong on the calibration set, so the isotonic map is 0
    # there and the floor (the tie point with the runner-up) decides those samples
    rng = np.random.default_rng(10)
    n, k = 2000, 4
    z = rng.normal(size=(n, k)) * 2.0
    p = _softmax(z)
    y = p.argmax(axis=1).copy()
    low = p.max(axis=1) < 0.5
    y[low] = (y[low] + 1) % k
    cal = TopLabelCalibrator(method="isotonic", base=None, per_class=False).fit(z, y)
    q = cal.predict_proba(z)
    assert_array_equal(q.argmax(axis=1), z.argmax(axis=1))
    assert_array_equal(cal.predict(z), z.argmax(axis=1))
    rest = p.copy()
    rest[np.arange(n), p.argmax(axis=1)] = 0
    r = (rest / rest.sum(axis=1, keepdims=True)).max(axis=1)
    tie = r / (1 + r)
    floored = low & (p.max(axis=1) < 0.4)
    assert floored.sum() > 50
    assert_allclose(q.max(axis=1)[floored], tie[floored] * (1 + 1e-9), rtol=1e-12)
    assert np.all(q.max(axis=1)[floored] <= p.max(axis=1)[floored] + 1e-12)  # never above the base
    runner_up = np.sort(q, axis=1)[:, -2]
    assert np.all(q.max(axis=1) > runner_up)


def test_all_correct_calibration_set_is_capped_and_finite():
    z, y = make_logits(n=300, k=3, seed=11)
    y = z.argmax(axis=1)  # every prediction right
    cal = TopLabelCalibrator(base=None, per_class=False).fit(z, y)
    q = cal.predict_proba(z)
    assert_allclose(q.max(axis=1), 1 - 1 / (300 + 2))
    assert np.all(q > 0) and np.isfinite(cal.decision_function(z)).all()
    assert np.isfinite(cal.score(z, (y + 1) % 3))
    # weights summing beyond 1e16: 1 - 1/(n + 2) rounds to 1, the cap stays below it
    heavy = TopLabelCalibrator(base=None, per_class=True).fit(z, y, sample_weight=np.full(300, 1e15))
    assert np.all(heavy.cap_ < 1.0)
    q = heavy.predict_proba(z)
    assert np.all(q > 0) and np.isfinite(heavy.score(z, (y + 1) % 3))


def test_other_classes_keep_the_base_proportions():
    z, y = make_logits(n=1000, k=6, seed=12)
    cal = TopLabelCalibrator(method="spline").fit(z, y)
    p = _softmax(z / cal.temperature_)
    q = cal.predict_proba(z)
    c = p.argmax(axis=1)
    mask = np.ones_like(p, dtype=bool)
    mask[np.arange(len(c)), c] = False
    ratio = q[mask].reshape(len(c), -1) / p[mask].reshape(len(c), -1)
    assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_tiny_calibration_sets_give_finite_probabilities(method, n):
    z, _ = make_logits(n=n, k=4, seed=13)
    y = np.arange(n) % 2  # two classes present, fewer samples than bins and than classes
    zt, _ = make_logits(n=50, k=4, seed=14)
    cal = TopLabelCalibrator(method=method, per_class=True).fit(z, y)
    q = cal.predict_proba(zt)
    assert np.isfinite(q).all() and np.all(q > 0)
    assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    assert_array_equal(q.argmax(axis=1), zt.argmax(axis=1))
    assert np.all(q.max(axis=1) <= 1 - 1 / (n + 2) + 1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_zero_weights_equal_dropping_the_samples(method):
    z, y = make_logits(n=900, k=3, seed=15)
    w = np.ones(900)
    w[::3] = 0.0
    keep = w > 0
    a = TopLabelCalibrator(method=method, per_class=True).fit(z, y, sample_weight=w)
    b = TopLabelCalibrator(method=method, per_class=True).fit(z[keep], y[keep])
    assert_allclose(a.predict_proba(z), b.predict_proba(z), atol=1e-8)


@pytest.mark.parametrize("method", ["histogram", "spline"])
def test_integer_weights_equal_repeated_rows(method):
    z, y = make_logits(n=600, k=3, seed=16)
    w = np.random.default_rng(0).integers(0, 3, size=600)
    a = TopLabelCalibrator(method=method).fit(z, y, sample_weight=w)
    b = TopLabelCalibrator(method=method).fit(np.repeat(z, w, axis=0), np.repeat(y, w))
    assert_allclose(a.predict_proba(z), b.predict_proba(z), atol=1e-6)


# ---------------------------------------------------------------- export and persistence
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_class", [False, True])
def test_to_torch_reproduces_predict_proba(method, per_class, device):
    z, y = make_logits(n=1500, k=5, seed=17)
    zt, _ = make_logits(n=400, k=5, seed=18, scale=6.0)
    cal = TopLabelCalibrator(method=method, per_class=per_class).fit(z, y)
    module = cal.to_torch(output="proba").to(device)
    with torch.no_grad():
        got = module(torch.from_numpy(zt).to(device)).cpu().numpy()
    assert_allclose(got, cal.predict_proba(zt), rtol=1e-12, atol=1e-15)
    tensor_out = cal.predict_proba(torch.from_numpy(zt).to(device), return_tensor=True)
    assert tensor_out.device.type == device
    assert_allclose(tensor_out.cpu().numpy(), cal.predict_proba(zt), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip_of_every_method(method):
    z, y = make_logits(n=1200, k=3, seed=19)
    cal = TopLabelCalibrator(method=method, per_class=True).fit(z, y)
    again = load_calibrator(json.loads(json.dumps(cal.to_dict())))
    assert_array_equal(again.predict_proba(z), cal.predict_proba(z))


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.update(breakpoints_=[row[::-1] for row in s["breakpoints_"]]), "non-decreasing"),
    (lambda s: s.update(class_map_=[99] * len(s["class_map_"])), "class_map_"),
    (lambda s: s.update(class_map_=[0.5] * len(s["class_map_"])), "class_map_"),
    (lambda s: s.update(cap_=[1.5] * len(s["cap_"])), "cap_"),
    (lambda s: s.update(cap_=[1.0] * len(s["cap_"])), "cap_"),  # would give the other classes zero
    (lambda s: s.update(coef_=s["coef_"][:1]), "coef_"),
    (lambda s: s.update(temperature_=-1.0), "temperature_"),
])
def test_malformed_state_is_refused(mutate, match):
    z, y = make_logits(n=600, k=3, seed=20)
    data = json.loads(json.dumps(TopLabelCalibrator(per_class=True, min_samples_per_class=10).fit(z, y).to_dict()))
    mutate(data["state"])
    with pytest.raises(ValueError, match=match):
        load_calibrator(data)


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("params, error, match", [
    ({"method": "beta"}, ValueError, "method"),
    ({"base": "dirichlet"}, ValueError, "base"),
    ({"per_class": "yes"}, ValueError, "per_class"),
    ({"min_samples_per_class": 0}, ValueError, "min_samples_per_class"),
    ({"min_samples_per_class": 2.5}, TypeError, "min_samples_per_class"),
    ({"n_bins": 0}, ValueError, "n_bins"),
])
def test_bad_parameters_are_refused_at_fit(params, error, match):
    z, y = make_logits(n=100, k=3)
    cal = TopLabelCalibrator(**params)
    assert clone(cal).get_params()["method"] == cal.method  # the constructor only stores
    with pytest.raises(error, match=match):
        cal.fit(z, y)


def test_two_stage_map_beats_its_parts_on_held_out_over_confident_logits():
    """Issue 14: TS then top-label isotonic vs each alone (the claim is measured in
    benchmarks/quality_bar.py; here only that the composite is not worse than TS on ECE
    on logits whose miscalibration is not one global temperature)."""
    from precal.metrics import expected_calibration_error

    rng = np.random.default_rng(21)
    n, k = 8000, 10
    y = rng.integers(0, k, size=n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 2.0
    z *= np.where(rng.uniform(size=n) < 0.5, 1.5, 4.0)[:, None]  # two over-confidence regimes
    cal, test = slice(0, n // 2), slice(n // 2, n)
    ts = TemperatureScaling().fit(z[cal], y[cal])
    two_stage = TopLabelCalibrator().fit(z[cal], y[cal])
    ece_ts = expected_calibration_error(y[test], ts.predict_proba(z[test]))
    ece_two = expected_calibration_error(y[test], two_stage.predict_proba(z[test]))
    assert ece_two < ece_ts


# ---------------------------------------------------------------- the matrix-scaling base
def test_matrix_scaling_base_recalibrates_the_maps_probabilities_and_keeps_its_argmax():
    """base="matrix_scaling": the documented formula on softmax(g(z)), g the StructuredMatrixScaling fitted on the
    same data; predictions are g's argmax (here it moves some of the model's)."""
    from precal.calibration import StructuredMatrixScaling

    rng = np.random.default_rng(21)
    y = rng.integers(0, 4, size=2000)
    z = 2.0 * (rng.normal(size=(2000, 4)) + 1.5 * np.eye(4)[y]) + np.array([2.0, 0.0, 0.0, 0.0])
    cal = TopLabelCalibrator(base="matrix_scaling", per_class=False).fit(z, y)
    sms = StructuredMatrixScaling().fit(z, y)
    g = sms.decision_function(z)
    assert_array_equal(cal.predict(z), sms.predict(z))
    assert (cal.predict(z) != z.argmax(axis=1)).any()
    assert cal.temperature_ == sms.temperature_
    assert_allclose(cal.base_coef_, sms.coef_)
    conf = _softmax(g).max(axis=1)
    correct = (g.argmax(axis=1) == y).astype(float)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, correct)
    assert_allclose(cal.predict_proba(z), _reference(g, 1.0, iso.predict, cal.cap_[0]), rtol=1e-9, atol=1e-12)


def test_matrix_scaling_base_persists_and_exports_to_torch():
    z, y = make_logits(n=1500, k=5, seed=22)
    cal = TopLabelCalibrator(method="spline", base="matrix_scaling").fit(z, y)
    data = json.loads(json.dumps(cal.to_dict()))
    assert {"base_smoothing_", "base_coef_", "base_intercept_"} <= set(data["state"])
    assert "base_coef_" not in TopLabelCalibrator().fit(z, y).to_dict()["state"]
    again = load_calibrator(data)
    assert_array_equal(again.predict_proba(z), cal.predict_proba(z))
    with torch.no_grad():
        got = cal.to_torch(output="proba")(torch.from_numpy(z)).numpy()
    assert_allclose(got, cal.predict_proba(z), rtol=1e-12, atol=1e-15)
    for key, value in (("base_smoothing_", 1.5), ("base_coef_", [[1.0]]), ("base_intercept_", [0.0])):
        bad = json.loads(json.dumps(data))
        bad["state"][key] = value
        with pytest.raises(ValueError, match=key.replace("base_", "")):
            load_calibrator(bad)
    missing = json.loads(json.dumps(data))
    del missing["state"]["base_coef_"]
    with pytest.raises(ValueError, match="missing key"):
        load_calibrator(missing)

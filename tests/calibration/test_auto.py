"""AutoCalibrator: the selection rule, the refit, delegation and persistence."""

import json

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from precal.calibration import (
    AutoCalibrator,
    DirichletCalibrator,
    EnsembleTemperatureScaling,
    TemperatureScaling,
    TopLabelCalibrator,
    load_calibrator,
)
from precal.calibration.auto import (
    DEFAULT_CANDIDATES,
    MATRIX_FAMILY,
    _fold_scores,
    _summarise,
    pooled_ece_standard_error,
)
from precal.metrics import expected_calibration_error, negative_log_likelihood

from ..conftest import make_logits


def _two_regime_logits(n, k, seed):
    """Half the samples far more over-confident than the rest: one temperature cannot fix both."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 2.0
    z *= np.where(rng.uniform(size=n) < 0.5, 1.0, 6.0)[:, None]
    return z, y


# ---------------------------------------------------------------- the rule
def test_rule_requires_beating_ts_by_one_standard_error_and_no_accuracy_loss():
    pairs = [(name, None) for name in ("temperature", "noisy_gain", "clear_gain", "loses_accuracy", "worse")]
    scores = np.array([
        [1.00, 1.00, 1.00, 1.00],
        [0.90, 1.08, 0.95, 1.05],   # mean gain 0.005 < its standard error
        [0.97, 0.96, 0.98, 0.97],   # gain 0.03, se 0.004
        [0.90, 0.90, 0.90, 0.90],   # best score, but lower accuracy
        [1.10, 1.10, 1.10, 1.10],
    ])
    accuracy = np.full_like(scores, 0.8)
    accuracy[3] = 0.79
    results = _summarise(pairs, scores, accuracy, "nll")
    assert_array_equal(results["eligible"], [True, False, True, False, False])
    d = scores[2] - scores[0]
    assert_allclose(results["mean_difference"][2], d.mean())
    assert_allclose(results["standard_error"][2], d.std(ddof=1) / 2)
    assert_allclose(results["split3_score"], scores[:, 3])


def test_nll_guard_excludes_a_lower_ece_bought_with_a_worse_nll():
    pairs = [(name, None) for name in ("temperature", "sharp_but_worse_nll", "better_both", "noisy_nll")]
    ece = np.array([[0.03, 0.03, 0.03, 0.03], [0.01, 0.01, 0.01, 0.01], [0.02, 0.02, 0.02, 0.02],
                    [0.02, 0.02, 0.02, 0.02]])
    nll = np.array([
        [0.50, 0.50, 0.50, 0.50],
        [0.52, 0.53, 0.52, 0.53],   # NLL clearly above TS's: mean 0.025 > se
        [0.49, 0.50, 0.49, 0.50],
        [0.46, 0.56, 0.44, 0.56],   # NLL above TS's on average (0.005) but within one se (0.03)
    ])
    accuracy = np.full_like(ece, 0.8)
    results = _summarise(pairs, ece, accuracy, "ece", nll, pooled=ece.mean(axis=1))
    assert_array_equal(results["eligible"], [True, False, True, True])
    assert_allclose(results["mean_nll_difference"], nll.mean(axis=1) - nll[0].mean())
    assert_allclose(results["mean_score"], ece.mean(axis=1))


def test_ece_gain_must_exceed_the_bootstrap_standard_error_of_the_pooled_difference():
    """metric="ece": a pooled ECE below TS's by less than the standard error of that difference is
    noise (small calibration sets), so the candidate is not eligible; by more, it is."""
    pairs = [(name, None) for name in ("temperature", "within_noise", "clear_gain")]
    ece = np.full((3, 4), 0.02)
    nll = np.full((3, 4), 0.5)
    accuracy = np.full_like(ece, 0.8)
    pooled = np.array([0.030, 0.025, 0.020])
    se = np.array([0.0, 0.006, 0.006])
    results = _summarise(pairs, ece, accuracy, "ece", nll, pooled=pooled, pooled_se=se)
    assert_array_equal(results["eligible"], [True, False, True])
    assert_array_equal(results["pooled_standard_error"], se)
    # without the standard errors (or with zeros) any gain counts
    assert_array_equal(_summarise(pairs, ece, accuracy, "ece", nll, pooled=pooled)["eligible"], [True, True, True])
    assert "pooled_standard_error" not in _summarise(pairs, ece, accuracy, "nll")


@pytest.mark.parametrize("block", [None, 97])
def test_pooled_ece_standard_error_is_a_paired_poisson_bootstrap_of_the_public_metric(monkeypatch, block):
    """Against the public ECE on the rows each resample repeats (Poisson counts drawn in the same
    blocks from the same generator): one draw per resample, shared by every candidate."""
    import precal.calibration.auto as auto_module

    if block is not None:  # several blocks: the counts are drawn block by block, in row order
        monkeypatch.setattr(auto_module, "_BOOTSTRAP_BLOCK", block)
    z, y = _two_regime_logits(400, 4, 11)
    probas = [TemperatureScaling().fit(z, y).predict_proba(z), TopLabelCalibrator().fit(z, y).predict_proba(z),
              np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)]
    conf = np.array([p.max(axis=1) for p in probas])
    correct = np.array([(p.argmax(axis=1) == y).astype(float) for p in probas])
    n_boot, size = 30, auto_module._BOOTSTRAP_BLOCK
    got = pooled_ece_standard_error(conf, correct, np.ones(len(y)), np.random.default_rng(5), n_boot=n_boot)
    rng = np.random.default_rng(5)
    counts = np.concatenate([rng.poisson(1.0, size=(n_boot, min(size, len(y) - lo)))
                             for lo in range(0, len(y), size)], axis=1)
    eces = np.array([[expected_calibration_error(np.repeat(y, c), np.repeat(p, c, axis=0)) for c in counts]
                     for p in probas])
    assert_allclose(got, (eces - eces[0]).std(axis=1, ddof=1), rtol=1e-9, atol=1e-15)
    assert got[0] == 0.0 and np.all(got[1:] > 0)
    # weights multiply the counts: integer weights (some zero) are rows repeated that many more times
    w = np.random.default_rng(6).integers(0, 4, size=len(y)).astype(float)
    weighted = pooled_ece_standard_error(conf, correct, w, np.random.default_rng(5), n_boot=n_boot)
    eces = np.array([[expected_calibration_error(np.repeat(y, c * w.astype(int)),
                                                 np.repeat(p, c * w.astype(int), axis=0)) for c in counts]
                     for p in probas])
    assert_allclose(weighted, (eces - eces[0]).std(axis=1, ddof=1), rtol=1e-9, atol=1e-15)
    # their scale does not matter (the ECE ignores it), up to the largest finite weights
    assert_allclose(pooled_ece_standard_error(conf, correct, 1e300 * w, np.random.default_rng(5), n_boot=n_boot),
                    weighted, rtol=1e-9)
    with pytest.raises(ValueError, match="n_boot must be at least 2"):
        pooled_ece_standard_error(conf, correct, w, np.random.default_rng(5), n_boot=1)


def test_matrix_family_must_beat_ts_on_nll_accuracy_and_ece():
    """The map that moves predictions: NLL better than TS by more than one se, a significant out-of-fold
    accuracy gain (McNemar), pooled ECE not worse; its top-label recalibration judged against the map, and
    only with the map admitted."""
    names = ("temperature", "matrix_scaling", "top_label_isotonic_matrix", "top_label_spline_matrix")
    pairs = [(name, None) for name in names]
    ece = np.full((4, 4), 0.02)
    nll = np.array([
        [0.50, 0.50, 0.50, 0.50],
        [0.45, 0.46, 0.45, 0.46],   # clearly better than TS
        [0.45, 0.46, 0.46, 0.46],   # within one se of the map
        [0.48, 0.49, 0.48, 0.49],   # clearly worse than the map
    ])
    accuracy = np.full_like(ece, 0.8)
    accuracy[1:] = 0.82
    pooled = np.array([0.030, 0.025, 0.020, 0.015])
    gain_p = np.array([1.0, 0.001, 0.001, 0.001])

    def eligible(**change):
        args = {"accuracy": accuracy, "nll": nll, "pooled": pooled, "gain_p": gain_p} | change
        return _summarise(pairs, ece, args["accuracy"], "ece", args["nll"], pooled=args["pooled"],
                          gain_p=args["gain_p"])["eligible"]

    assert_array_equal(eligible(), [True, True, True, False])
    # a pooled ECE above TS's bars the map, and with it its family
    assert_array_equal(eligible(pooled=np.array([0.030, 0.031, 0.020, 0.015])), [True, False, False, False])
    # so does an NLL gain within the noise (though any other candidate would pass the NLL guard with it)
    noisy = nll.copy()
    noisy[1] = [0.40, 0.58, 0.41, 0.57]
    assert not eligible(nll=noisy)[1] and not eligible(nll=noisy)[2]
    # and an accuracy gain that is not significant, or no test at all: moving predictions must pay off
    assert not eligible(gain_p=np.array([1.0, 0.2, 0.2, 0.2]))[1]
    assert not eligible(gain_p=None)[1]
    # a recalibration must keep the map's accuracy
    acc = accuracy.copy()
    acc[2] = 0.81
    assert_array_equal(eligible(accuracy=acc), [True, True, False, False])


def test_accuracy_gain_p_is_mcnemars_exact_test():
    from scipy.stats import binom

    from precal.calibration.auto import accuracy_gain_p

    ref = np.array([1, 0, 0, 0, 0, 0, 1, 1], dtype=float)
    new = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)  # 5 rows gained, 1 lost
    ones = np.ones(8)
    assert accuracy_gain_p(new, ref, ones) == pytest.approx(binom.sf(4, 6, 0.5))
    assert accuracy_gain_p(new, ref, 2 * ones) == pytest.approx(binom.sf(9, 12, 0.5))  # weights count as rows
    assert accuracy_gain_p(ref, ref, ones) == 1.0
    assert accuracy_gain_p(ref, new, ones) > 0.9
    # weights beyond scipy's integers: the same proportions, at 2**53 discordant rows
    assert accuracy_gain_p(new, ref, 1e300 * ones) == accuracy_gain_p(new, ref, 1e20 * ones)  # no overflow
    huge = accuracy_gain_p(new, ref, 1e20 * ones)
    assert huge == pytest.approx(binom.sf(5 * 2**53 // 6 - 1, 2**53, 0.5), abs=1e-300) and huge < 1e-100


def test_matrix_scaling_is_chosen_where_it_recovers_accuracy():
    """Logits with a class bias (as rounding can leave): an intercept fixes predictions that no temperature or
    top-label map can, so the default picks the matrix family and gains accuracy over TS."""
    rng = np.random.default_rng(3)
    n, k = 3000, 4
    y = rng.integers(0, k, size=n)
    z = 2.0 * (rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]) + np.array([2.5, 0.0, 0.0, 0.0])
    auto = AutoCalibrator().fit(z[:2000], y[:2000])
    assert auto.best_name_ in ("matrix_scaling", "top_label_isotonic_matrix", "top_label_spline_matrix")
    ts = TemperatureScaling().fit(z[:2000], y[:2000])
    held_out = slice(2000, None)
    assert (auto.predict(z[held_out]) == y[held_out]).mean() > (ts.predict(z[held_out]) == y[held_out]).mean() + 0.02
    assert negative_log_likelihood(y[held_out], auto.predict_proba(z[held_out])) < negative_log_likelihood(
        y[held_out], ts.predict_proba(z[held_out]))
    restored = load_calibrator(json.loads(json.dumps(auto.to_dict())))
    assert_allclose(restored.predict_proba(z[held_out]), auto.predict_proba(z[held_out]), rtol=1e-12)


def test_ece_score_is_the_pooled_out_of_fold_ece():
    """metric="ece": each row scored once by the fold fit that did not see it, one ECE over all rows."""
    z, y = _two_regime_logits(1200, 4, 8)
    auto = AutoCalibrator(candidates=["temperature", "top_label_isotonic"], cv=3, random_state=2).fit(z, y)
    for row, make in enumerate((TemperatureScaling, lambda: TopLabelCalibrator(method="isotonic"))):
        oof = np.empty((len(y), 4))
        for f, (train, test) in enumerate(StratifiedKFold(3, shuffle=True, random_state=2).split(z, y)):
            oof[test] = make().fit(z[train], y[train]).predict_proba(z[test])
            assert_allclose(auto.cv_results_[f"split{f}_score"][row],
                            expected_calibration_error(y[test], oof[test]), rtol=1e-9)
        assert_allclose(auto.cv_results_["mean_score"][row], expected_calibration_error(y, oof), rtol=1e-9)
    chosen = auto.cv_results_["candidate"].index(auto.best_name_)
    assert auto.cv_results_["mean_score"][chosen] == auto.cv_results_["mean_score"][
        auto.cv_results_["eligible"]].min()


def test_a_candidate_identical_to_ts_is_never_chosen():
    z, y = _two_regime_logits(600, 4, 0)
    auto = AutoCalibrator(candidates=["temperature", ("ts_copy", TemperatureScaling())]).fit(z, y)
    assert auto.best_name_ == "temperature"
    assert_array_equal(auto.cv_results_["mean_difference"], [0.0, 0.0])
    assert_array_equal(auto.cv_results_["eligible"], [True, False])


@pytest.mark.parametrize("metric", ["nll", "ece"])
def test_chosen_cv_score_is_never_worse_than_ts(metric):
    z, y = _two_regime_logits(1500, 5, 1)
    auto = AutoCalibrator(metric=metric).fit(z, y)
    res = auto.cv_results_
    best = res["candidate"].index(auto.best_name_)
    assert res["mean_score"][best] <= res["mean_score"][0]
    assert res["mean_accuracy"][best] >= res["mean_accuracy"][0]
    if auto.best_name_ != "temperature":
        assert res["mean_nll_difference"][best] <= res["nll_standard_error"][best]
        if metric == "nll":
            assert res["mean_difference"][best] + res["standard_error"][best] < 0
        elif auto.best_name_ not in MATRIX_FAMILY:  # the matrix family is judged without the ECE margin
            assert res["mean_score"][best] + res["pooled_standard_error"][best] < res["mean_score"][0]
        else:
            assert res["mean_score"][best] < res["mean_score"][0]


def test_chooses_a_richer_map_when_ts_cannot_fit_the_data():
    z, y = _two_regime_logits(4000, 5, 2)
    auto = AutoCalibrator(candidates=["temperature", "top_label_isotonic"], metric="ece").fit(z, y)
    assert auto.best_name_ == "top_label_isotonic"
    assert isinstance(auto.best_calibrator_, TopLabelCalibrator)


def test_cv_scores_are_the_metrics_on_the_folds():
    z, y = _two_regime_logits(1000, 4, 3)
    auto = AutoCalibrator(candidates=["temperature", "ets"], metric="nll", cv=3, random_state=7).fit(z, y)
    folds = StratifiedKFold(3, shuffle=True, random_state=7).split(z, y)
    for f, (train, test) in enumerate(folds):
        ts = TemperatureScaling().fit(z[train], y[train])
        ets = EnsembleTemperatureScaling().fit(z[train], y[train])
        for row, cal in enumerate((ts, ets)):
            expected = negative_log_likelihood(y[test], cal.predict_proba(z[test]))
            assert_allclose(auto.cv_results_[f"split{f}_score"][row], expected, rtol=1e-10)


def test_fold_ece_equals_the_public_metric():
    z, y = _two_regime_logits(700, 3, 4)
    ts = TemperatureScaling().fit(z, y)
    ece, acc = _fold_scores(ts.predict_log_proba(z), y, np.ones(len(y)), "ece")
    assert_allclose(ece, expected_calibration_error(y, ts.predict_proba(z)), rtol=1e-12)
    assert_allclose(acc, np.mean(z.argmax(axis=1) == y))


# ---------------------------------------------------------------- refit and delegation
def test_winner_is_refitted_on_all_data_and_everything_delegates():
    z, y = _two_regime_logits(2000, 4, 5)
    auto = AutoCalibrator(candidates=["temperature", "top_label_isotonic", "ets"]).fit(z, y)
    direct = clone(auto.best_calibrator_).fit(z, y)
    assert_allclose(auto.predict_proba(z), direct.predict_proba(z), rtol=1e-12)
    assert_allclose(auto.decision_function(z), direct.decision_function(z), rtol=1e-12)
    with torch.no_grad():
        assert_allclose(auto.to_torch()(torch.from_numpy(z)).numpy(), direct.to_torch()(torch.from_numpy(z)).numpy())


def test_ts_is_added_when_missing_and_is_the_first_row():
    z, y = make_logits(n=300, k=3)
    auto = AutoCalibrator(candidates=["ets", "top_label_spline"]).fit(z, y)
    assert auto.cv_results_["candidate"] == ["temperature", "ets", "top_label_spline"]
    assert AutoCalibrator().fit(z, y).cv_results_["candidate"] == list(DEFAULT_CANDIDATES)
    named = AutoCalibrator(candidates=["top_label_isotonic_matrix"]).fit(z, y)
    assert named.cv_results_["candidate"] == ["temperature", "top_label_isotonic_matrix", "matrix_scaling"]


def test_fit_is_reproducible_and_random_state_moves_the_folds():
    z, y = _two_regime_logits(600, 3, 6)
    a = AutoCalibrator(candidates=["temperature", "ets"], random_state=1).fit(z, y)
    b = AutoCalibrator(candidates=["temperature", "ets"], random_state=1).fit(z, y)
    c = AutoCalibrator(candidates=["temperature", "ets"], random_state=2).fit(z, y)
    assert_array_equal(a.cv_results_["split0_score"], b.cv_results_["split0_score"])
    assert not np.array_equal(a.cv_results_["split0_score"], c.cv_results_["split0_score"])
    assert_array_equal(a.cv_results_["pooled_standard_error"], b.cv_results_["pooled_standard_error"])


def test_random_state_seeds_the_bootstrap_too():
    """With the folds given, only the bootstrap of the ECE margin depends on random_state."""
    z, y = _two_regime_logits(600, 3, 6)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(z, y))
    fits = [AutoCalibrator(candidates=["temperature", "ets", "top_label_isotonic"], cv=folds, random_state=seed)
            .fit(z, y).cv_results_ for seed in (1, 1, 2)]
    assert_array_equal(fits[0]["mean_score"], fits[2]["mean_score"])  # same folds, same fits
    assert_array_equal(fits[0]["pooled_standard_error"], fits[1]["pooled_standard_error"])
    assert not np.array_equal(fits[0]["pooled_standard_error"], fits[2]["pooled_standard_error"])


def test_rare_classes_fall_back_to_unstratified_folds():
    z, y = make_logits(n=200, k=4, seed=8)
    y[:2] = 3
    y[2:][y[2:] == 3] = 0  # class 3 has 2 members, fewer than cv=5
    auto = AutoCalibrator(candidates=["temperature", "top_label_isotonic"]).fit(z, y)
    assert np.isfinite(auto.cv_results_["mean_score"]).all()


def test_custom_candidates_work_but_are_not_json_serialisable():
    z, y = make_logits(n=400, k=3)
    auto = AutoCalibrator(candidates=[("dir", DirichletCalibrator(reg_lambda=1.0))]).fit(z, y)
    assert auto.cv_results_["candidate"] == ["temperature", "dir"]
    with pytest.raises(TypeError, match="JSON"):
        auto.to_dict()


def test_json_round_trip_restores_the_winner_and_the_cv_results():
    z, y = _two_regime_logits(1500, 4, 9)
    auto = AutoCalibrator(candidates=["temperature", "top_label_isotonic"], metric="ece").fit(z, y)
    data = json.loads(json.dumps(auto.to_dict()))
    assert data["state"]["best_calibrator_"]["estimator"] == type(auto.best_calibrator_).__name__
    again = load_calibrator(data)
    assert again.best_name_ == auto.best_name_
    assert_array_equal(again.predict_proba(z), auto.predict_proba(z))
    assert_array_equal(again.cv_results_["eligible"], auto.cv_results_["eligible"])
    assert_allclose(again.cv_results_["mean_score"], auto.cv_results_["mean_score"])
    assert_array_equal(again.cv_results_["pooled_standard_error"], auto.cv_results_["pooled_standard_error"])
    # a file saved before the bootstrap margin (no such key) still loads; metric="nll" never has the key
    del data["state"]["cv_results_"]["pooled_standard_error"]
    assert "pooled_standard_error" not in load_calibrator(data).cv_results_
    by_nll = AutoCalibrator(candidates=["temperature", "ets"], metric="nll").fit(z, y)
    assert "pooled_standard_error" not in by_nll.cv_results_
    assert "pooled_standard_error" not in load_calibrator(json.loads(json.dumps(by_nll.to_dict()))).cv_results_


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.update(best_name_="nope"), "best_name_"),
    (lambda s: s["best_calibrator_"].update(estimator="os.system"), "Unknown calibrator"),
    (lambda s: s["cv_results_"].update(metric="auc"), "metric"),
    (lambda s: s["cv_results_"].update(mean_score=["x", "y"]), "mean_score"),
    (lambda s: s["cv_results_"].update(eligible=[1, 0]), "eligible"),
    (lambda s: s["cv_results_"].update(evil="__import__('os')"), "unknown key"),
])
def test_malformed_state_is_refused(mutate, match):
    z, y = make_logits(n=300, k=3)
    data = json.loads(json.dumps(AutoCalibrator(candidates=["temperature", "ets"]).fit(z, y).to_dict()))
    mutate(data["state"])
    with pytest.raises(ValueError, match=match):
        load_calibrator(data)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("params, error, match", [
    ({"metric": "auc"}, ValueError, "metric"),
    ({"cv": 1}, ValueError, "cv"),
    ({"cv": 2.5}, TypeError, "cv"),
    ({"cv": "five"}, TypeError, "cv"),
    ({"cv": [(np.arange(5), np.arange(5, 10), "extra")]}, ValueError, "pairs"),
    ({"random_state": "seed"}, ValueError, "random_state"),
    ({"random_state": -1}, ValueError, "non-negative"),
    ({"candidates": ["nope"]}, ValueError, "Unknown candidate"),
    ({"candidates": "temperature"}, ValueError, "candidates"),
    ({"candidates": ["ets", "ets"]}, ValueError, "unique"),
    ({"candidates": [("temperature", EnsembleTemperatureScaling())]}, ValueError, "TemperatureScaling"),
    ({"candidates": [("x", object())]}, ValueError, "candidates"),
])
def test_bad_parameters_are_refused_at_fit(params, error, match):
    z, y = make_logits(n=100, k=3)
    with pytest.raises(error, match=match):
        AutoCalibrator(**params).fit(z, y)


def test_folds_without_weight_are_left_out_and_too_few_left_is_a_clear_error():
    z, y = make_logits(n=200, k=3, seed=21)
    w = np.zeros(200)
    w[:4] = 1.0  # some folds hold no held-out weight
    auto = AutoCalibrator(candidates=["temperature", "ets"]).fit(z, y, sample_weight=w)
    assert 2 <= sum(key.startswith("split") for key in auto.cv_results_) < 5
    assert np.all(np.isfinite(auto.cv_results_["mean_score"]))
    w[1:] = 0.0  # one row of positive weight: no fold has it on both sides
    with pytest.raises(ValueError, match="at least 2 of its cv=5 folds with positive sample_weight"):
        AutoCalibrator().fit(z, y, sample_weight=w)


def test_huge_weights_give_finite_scores():
    """Weights count as repetitions: 1e17 each is a huge data set (the top-label cap rounded to
    1 there, an infinite NLL made the scores NaN, and McNemar's counts overflowed scipy's)."""
    z, y = make_logits(n=300, k=3, seed=22)
    with np.errstate(all="raise"):
        heavy = AutoCalibrator().fit(z, y, sample_weight=np.full(300, 1e17))
    for key in ("mean_score", "mean_nll_difference", "nll_standard_error"):
        assert np.all(np.isfinite(heavy.cv_results_[key])), key
    assert np.isfinite(heavy.predict_proba(z)).all()


def test_cv_takes_splitters_and_index_pairs_like_dirichlets():
    from sklearn.model_selection import KFold

    z, y = make_logits(n=300, k=3, seed=24)
    candidates = ["temperature", "ets", "top_label_isotonic"]
    by_splitter = AutoCalibrator(candidates=candidates, cv=KFold(4)).fit(z, y)
    by_pairs = AutoCalibrator(candidates=candidates, cv=list(KFold(4).split(z))).fit(z, y)
    assert by_splitter.best_name_ == by_pairs.best_name_
    assert_allclose(by_splitter.cv_results_["mean_score"], by_pairs.cv_results_["mean_score"], rtol=1e-12)
    assert sum(key.startswith("split") for key in by_splitter.cv_results_) == 4
    with pytest.raises(TypeError, match="not JSON-serialisable"):  # only an int cv is plain data
        by_splitter.to_dict()


def test_fewer_samples_than_folds_is_a_clear_error():
    z, y = make_logits(n=4, k=2)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="cv=5 needs at least 5"):
        AutoCalibrator().fit(z, y)


@pytest.mark.slow
def test_on_real_logits_the_choice_is_not_worse_than_ts_on_held_out_nll():
    """Quick sanity on shared data (skips without ../shared): chosen by NLL on one half, scored on the other."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "logits" / "wrn-16-4_cifar100.npz"
    if not path.exists():
        pytest.skip("../shared/data/logits not available")
    data = np.load(path)
    z, y = data["logits"].astype(np.float64), data["labels"]
    perm = np.random.default_rng(0).permutation(len(y))
    cal, test = perm[:5000], perm[5000:]
    auto = AutoCalibrator().fit(z[cal], y[cal])
    ts = TemperatureScaling().fit(z[cal], y[cal])
    nll_auto = negative_log_likelihood(y[test], auto.predict_proba(z[test]))
    nll_ts = negative_log_likelihood(y[test], ts.predict_proba(z[test]))
    assert nll_auto <= nll_ts + 0.005

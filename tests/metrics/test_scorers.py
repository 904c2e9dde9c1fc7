"""precal.metrics.scorers: ready scikit-learn scorers and the name lookup."""

import numpy as np
import pytest
import sklearn.metrics
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_score, cross_validate

from precal.metrics import (
    ace_scorer,
    adaptive_calibration_error,
    brier_score,
    brier_scorer,
    classwise_calibration_error,
    classwise_ece_scorer,
    debiased_calibration_error,
    debiased_ece_scorer,
    ece_scorer,
    expected_calibration_error,
    get_scorer,
    get_scorer_names,
    maximum_calibration_error,
    mce_scorer,
    negative_log_likelihood,
    nll_scorer,
    smooth_calibration_error,
    smooth_ece_scorer,
)
from precal.metrics.scorers import METRICS

SCORERS = {
    "neg_expected_calibration_error": (ece_scorer, "ece", expected_calibration_error),
    "neg_adaptive_calibration_error": (ace_scorer, "ace", adaptive_calibration_error),
    "neg_maximum_calibration_error": (mce_scorer, "mce", maximum_calibration_error),
    "neg_classwise_calibration_error": (classwise_ece_scorer, "classwise_ece", classwise_calibration_error),
    "neg_brier_score": (brier_scorer, "brier", brier_score),
    "neg_negative_log_likelihood": (nll_scorer, "nll", negative_log_likelihood),
    "neg_debiased_calibration_error": (debiased_ece_scorer, "debiased_ece", debiased_calibration_error),
    "neg_smooth_calibration_error": (smooth_ece_scorer, "smooth_ece", smooth_calibration_error),
}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    # a stratified-ish subset keeps the fits fast; every class appears in every fold
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(y))[:600]
    return X[keep] / 16.0, y[keep]


def make_model():
    return LogisticRegression(C=0.5, max_iter=300)


CV = StratifiedKFold(n_splits=3)


@pytest.fixture(scope="module")
def fold_probabilities(digits):
    """predict_proba of each fold of CV, computed by hand."""
    X, y = digits
    out = []
    for train, test in CV.split(X, y):
        model = clone(make_model()).fit(X[train], y[train])
        out.append((y[test], model.predict_proba(X[test]), model))
    return out


def test_cross_val_score_gives_negative_ece_of_fold_predictions(digits, fold_probabilities):
    X, y = digits
    scores = cross_val_score(make_model(), X, y, cv=CV, scoring=ece_scorer)
    assert scores.shape == (3,)
    assert np.all(scores < 0)
    for score, (y_test, prob, _) in zip(scores, fold_probabilities):
        assert score == pytest.approx(-expected_calibration_error(y_test, prob), abs=1e-10)
    # the default integer cv of a classifier is the same unshuffled StratifiedKFold
    default_cv = cross_val_score(make_model(), X, y, cv=3, scoring=get_scorer("neg_expected_calibration_error"))
    np.testing.assert_allclose(default_cv, scores, rtol=0, atol=1e-10)


def test_cross_val_score_with_name_strings_is_rejected_by_sklearn_but_get_scorer_works(digits):
    """sklearn's own string lookup does not know precal's names; precal's get_scorer does."""
    X, y = digits
    with pytest.raises(ValueError):
        sklearn.metrics.get_scorer("neg_expected_calibration_error")
    scores = cross_val_score(make_model(), X[:300], y[:300], cv=3, scoring=get_scorer("ece"))
    assert np.all(scores <= 0)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_each_scorer_is_negated_metric_on_a_fitted_model(name, digits, fold_probabilities):
    scorer, short, fn = SCORERS[name]
    X, y = digits
    _, test = next(iter(CV.split(X, y)))
    y_test, prob, model = fold_probabilities[0]
    value = scorer(model, X[test], y[test])
    assert value == pytest.approx(-fn(y_test, prob), abs=1e-12)
    assert value <= 0
    assert get_scorer(name) is scorer
    assert get_scorer(short) is scorer


def test_nll_scorer_equals_sklearn_neg_log_loss(digits, fold_probabilities):
    X, y = digits
    _, test = next(iter(CV.split(X, y)))
    model = fold_probabilities[0][2]
    ours = nll_scorer(model, X[test], y[test])
    theirs = sklearn.metrics.get_scorer("neg_log_loss")(model, X[test], y[test])
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_cross_validate_with_several_precal_scorers(digits, fold_probabilities):
    X, y = digits
    scoring = {
        "ece": ece_scorer,
        "ace": get_scorer("ace"),
        "mce": get_scorer("neg_maximum_calibration_error"),
        "classwise_ece": get_scorer("classwise_ece"),
        "brier": get_scorer("neg_brier_score"),
        "nll": nll_scorer,
        "accuracy": get_scorer("accuracy"),
    }
    res = cross_validate(make_model(), X, y, cv=CV, scoring=scoring)
    for key in scoring:
        assert res[f"test_{key}"].shape == (3,)
    for i, (y_test, prob, _) in enumerate(fold_probabilities):
        assert res["test_ece"][i] == pytest.approx(-expected_calibration_error(y_test, prob), abs=1e-10)
        assert res["test_ace"][i] == pytest.approx(-adaptive_calibration_error(y_test, prob), abs=1e-10)
        assert res["test_mce"][i] == pytest.approx(-maximum_calibration_error(y_test, prob), abs=1e-10)
        assert res["test_classwise_ece"][i] == pytest.approx(-classwise_calibration_error(y_test, prob), abs=1e-10)
        assert res["test_brier"][i] == pytest.approx(-brier_score(y_test, prob), abs=1e-10)
        assert res["test_nll"][i] == pytest.approx(-log_loss(y_test, prob, labels=np.arange(10)), abs=1e-10)
        assert res["test_accuracy"][i] == pytest.approx(accuracy_score(y_test, prob.argmax(axis=1)), abs=1e-12)
        # calibration losses are negated, accuracy is not
        for key in ("ece", "ace", "mce", "classwise_ece", "brier", "nll"):
            assert res[f"test_{key}"][i] < 0
        assert res["test_accuracy"][i] > 0.8


def test_binary_problem_scorers_use_positive_class_probability(digits):
    X, y = digits
    yb = (y >= 5).astype(int)
    model = make_model().fit(X[:400], yb[:400])
    prob = model.predict_proba(X[400:])
    for name, (scorer, _, fn) in SCORERS.items():
        assert scorer(model, X[400:], yb[400:]) == pytest.approx(-fn(yb[400:], prob), abs=1e-12), name
    # binary Brier is the familiar mean((p1 - y)^2)
    assert brier_scorer(model, X[400:], yb[400:]) == pytest.approx(
        -np.mean((prob[:, 1] - yb[400:]) ** 2), abs=1e-12
    )
    # string classes: the positive class is classes_[1]
    ys = np.where(yb == 1, "high", "low")
    model_s = make_model().fit(X[:400], ys[:400])
    assert list(model_s.classes_) == ["high", "low"]
    prob_s = model_s.predict_proba(X[400:])
    assert ece_scorer(model_s, X[400:], ys[400:]) == pytest.approx(
        -expected_calibration_error(ys[400:], prob_s, labels=model_s.classes_), abs=1e-12
    )


def test_test_fold_missing_a_class_maps_integer_labels_to_columns(digits):
    X, y = digits
    model = make_model().fit(X, y)
    mask = y != 3  # evaluate on data without class 3
    prob = model.predict_proba(X[mask])
    assert prob.shape[1] == 10
    value = ece_scorer(model, X[mask], y[mask])
    assert value == pytest.approx(-expected_calibration_error(y[mask], prob, labels=np.arange(10)), abs=1e-12)
    assert nll_scorer(model, X[mask], y[mask]) == pytest.approx(
        -log_loss(y[mask], prob, labels=np.arange(10)), abs=1e-12
    )


# ---------------------------------------------------------------- lookup
def test_aliases_are_the_same_object():
    for info in METRICS:
        assert get_scorer(info.short_name) is get_scorer(info.scorer_name)
    assert get_scorer("ece") is get_scorer("neg_expected_calibration_error") is ece_scorer
    assert get_scorer("ace") is ace_scorer
    assert get_scorer("mce") is mce_scorer
    assert get_scorer("classwise_ece") is classwise_ece_scorer
    assert get_scorer("brier") is brier_scorer
    assert get_scorer("nll") is nll_scorer
    assert get_scorer("debiased_ece") is get_scorer("neg_debiased_calibration_error") is debiased_ece_scorer
    assert get_scorer("smooth_ece") is get_scorer("neg_smooth_calibration_error") is smooth_ece_scorer
    # repeated lookups give the same object
    assert get_scorer("ece") is get_scorer("ece")


def test_metric_table_is_consistent():
    assert len({m.short_name for m in METRICS}) == len(METRICS)
    assert len({m.scorer_name for m in METRICS}) == len(METRICS)
    for info in METRICS:
        assert info.greater_is_better is False
        assert info.scorer_name.startswith("neg_")
        assert info.scorer_name in SCORERS
        assert SCORERS[info.scorer_name][2] is info.function
    # scorers are negated, predict_proba-based
    for scorer, _, _ in SCORERS.values():
        assert scorer._sign == -1
        assert scorer._response_method == "predict_proba"


def test_sklearn_names_fall_back_to_sklearn():
    acc = get_scorer("accuracy")
    ref = sklearn.metrics.get_scorer("accuracy")
    assert type(acc) is type(ref)
    assert acc._score_func is accuracy_score
    assert get_scorer("neg_log_loss")._score_func is log_loss
    # sklearn's neg_brier_score is not shadowed in meaning: precal's equals it on binary data
    X = np.random.default_rng(0).normal(size=(80, 3))
    yb = (X[:, 0] + 0.5 * np.random.default_rng(1).normal(size=80) > 0).astype(int)
    model = LogisticRegression().fit(X, yb)
    assert get_scorer("neg_brier_score")(model, X, yb) == pytest.approx(
        sklearn.metrics.get_scorer("neg_brier_score")(model, X, yb), abs=1e-12
    )


def test_unknown_name_raises_value_error():
    with pytest.raises(ValueError, match="'not_a_metric' is not a valid scoring value"):
        get_scorer("not_a_metric")
    with pytest.raises(ValueError, match="neg_expected_calibration_error"):
        get_scorer("ECE")  # names are case-sensitive; the message lists precal's names


def test_non_string_non_callable_raises_type_error():
    with pytest.raises(TypeError, match="scoring must be a string or a callable"):
        get_scorer(3)
    with pytest.raises(TypeError, match="scoring must be a string or a callable"):
        get_scorer(None)


def test_callable_passthrough():
    def my_scorer(estimator, X, y):
        return 0.0

    assert get_scorer(my_scorer) is my_scorer
    assert get_scorer(ece_scorer) is ece_scorer


def test_get_scorer_names():
    names = get_scorer_names()
    assert isinstance(names, list)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for info in METRICS:
        assert info.short_name in names
        assert info.scorer_name in names
    for sk in ("accuracy", "neg_log_loss", "roc_auc", "f1_macro"):
        assert sk in names
    assert set(sklearn.metrics.get_scorer_names()) <= set(names)
    # every listed name resolves
    for name in names:
        assert callable(get_scorer(name))


# ---------------------------------------------------------------- debiased and smooth ECE on calibrators
@pytest.fixture(scope="module")
def overconfident_logits():
    rng = np.random.default_rng(3)
    n, k = 900, 4
    true_logits = rng.normal(size=(n, k)) * 1.5
    p = np.exp(true_logits - true_logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return (true_logits * 2.5).astype(np.float32), y  # temperature 1/2.5: overconfident


@pytest.mark.parametrize("name", ["debiased_ece", "smooth_ece"])
def test_new_scorers_score_a_fitted_calibrator(name, overconfident_logits):
    from precal.calibration import TemperatureScaling

    z, y = overconfident_logits
    fn = SCORERS[get_scorer_name(name)][2]
    cal = TemperatureScaling().fit(z[:600], y[:600])
    value = get_scorer(name)(cal, z[600:], y[600:])
    assert value == pytest.approx(-fn(y[600:], cal.predict_proba(z[600:])), abs=1e-12)
    assert value <= 0


@pytest.mark.parametrize("scoring", ["debiased_ece", "neg_smooth_calibration_error"])
def test_grid_search_over_a_calibrator_with_new_scorers(scoring, overconfident_logits):
    """GridSearchCV runs with the new scorers and prefers the calibrator that fixes the overconfidence."""
    from sklearn.model_selection import GridSearchCV

    from precal.calibration import EnsembleTemperatureScaling

    z, y = overconfident_logits
    search = GridSearchCV(EnsembleTemperatureScaling(), {"loss": ["nll", "mse"]}, cv=3,
                          scoring=get_scorer(scoring)).fit(z, y)
    assert search.best_params_["loss"] in ("nll", "mse")
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores <= 0)
    # the uncalibrated model (no fit) scores worse than the tuned one on held-out folds
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    fn = SCORERS[get_scorer_name(scoring)][2]
    assert -fn(y, prob) < search.best_score_


def get_scorer_name(name):
    return {info.short_name: info.scorer_name for info in METRICS}.get(name, name)


@pytest.mark.parametrize("shift, names", [(1, None), (0, np.array(["ant", "bee", "cat"]))])
def test_scorers_read_the_columns_as_the_estimators_classes_on_a_fold_without_a_class(shift, names):
    """Classes [1, 2, 3] (or strings) and a test fold holding only two of them: the scorer must
    score the columns as classes_, as the estimator's own score() does."""
    from precal import TemperatureScaling

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    z = 2.0 * np.eye(3)[y] + rng.normal(size=(300, 3))
    labels = y + shift if names is None else names[y]
    cal = TemperatureScaling().fit(z, labels)
    fold = y != 2  # the last class missing from the fold
    prob = cal.predict_proba(z[fold])
    assert nll_scorer(cal, z[fold], labels[fold]) == pytest.approx(cal.score(z[fold], labels[fold]), abs=1e-12)
    for name, (scorer, _, fn) in SCORERS.items():
        expected = -fn(labels[fold], prob, labels=cal.classes_)
        assert scorer(cal, z[fold], labels[fold]) == pytest.approx(expected, abs=1e-12), name
    # binary: classes [1, 2], a fold with class 1 only
    yb = (y > 0).astype(int)
    zb = z[:, :2]
    calb = TemperatureScaling().fit(zb, yb + 1)
    only = yb == 0
    assert nll_scorer(calb, zb[only], yb[only] + 1) == pytest.approx(calb.score(zb[only], yb[only] + 1), abs=1e-12)

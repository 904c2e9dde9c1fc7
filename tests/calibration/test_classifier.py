"""LogitTransformer and CalibratedClassifier on real data (scikit-learn's bundled digits)."""

import pickle
import warnings

import numpy as np
import pytest
from joblib import parallel_config
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import GridSearchCV, KFold, ShuffleSplit, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from precal import PACSCalibrator, TemperatureScaling
from precal._numerics import softmax
from precal.calibration.classifier import LOG_PROBA_FLOOR, CalibratedClassifier, LogitTransformer


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    # lbfgs on a loaded 2-core machine is 50x slower with two BLAS threads fighting.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits():
    """600 training and 400 held-out digits (10 classes), stratified, features in [0, 1]."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    X, y = X[idx] / 16.0, y[idx]
    return X[:600], y[:600], X[600:1000], y[600:1000]


@pytest.fixture(scope="module")
def binary_digits(digits):
    X, y, X_te, y_te = digits
    return X, (y >= 5).astype(int), X_te, (y_te >= 5).astype(int)


def _lr():
    return LogisticRegression(C=1.0, max_iter=300)


def _mlp():
    return MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, random_state=0)


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP ConvergenceWarning, StratifiedKFold's small-class warning
        yield


# ------------------------------------------------------------------------ LogitTransformer
def test_logit_transformer_decision_function_is_the_estimators(digits):
    X, y, X_te, _ = digits
    lt = LogitTransformer(_lr(), method="decision_function").fit(X, y)
    assert lt.method_ == "decision_function"
    assert lt.estimator_ is not lt.estimator  # a fitted clone
    assert_allclose(lt.transform(X_te), lt.estimator_.decision_function(X_te))
    assert_array_equal(lt.classes_, np.arange(10))
    assert lt.n_features_in_ == 64


def test_logit_transformer_log_proba_is_clipped_below(digits):
    X, y, X_te, _ = digits
    lt = LogitTransformer(KNeighborsClassifier(n_neighbors=3), method="log_proba").fit(X, y)
    assert lt.method_ == "predict_proba"  # KNN has no predict_log_proba
    z = lt.transform(X_te)
    p = lt.estimator_.predict_proba(X_te)
    assert (p == 0).any()
    assert np.isfinite(z).all()
    assert_array_equal(z[p == 0], LOG_PROBA_FLOOR)
    assert_allclose(z[p > 0], np.log(p[p > 0]))
    lt = LogitTransformer(_lr(), method="log_proba").fit(X, y)
    assert lt.method_ == "predict_log_proba"
    assert_allclose(lt.transform(X_te), np.maximum(lt.estimator_.predict_log_proba(X_te), LOG_PROBA_FLOOR))


@pytest.mark.parametrize(
    "make, expected",
    [(_lr, "decision_function"), (_mlp, "predict_log_proba"), (KNeighborsClassifier, "predict_proba")],
    ids=["decision_function", "predict_log_proba", "predict_proba"],
)
def test_logit_transformer_auto_preference_order(make, expected, digits, quiet):
    X, y, X_te, _ = digits
    lt = LogitTransformer(make()).fit(X, y)
    assert lt.method_ == expected
    assert lt.transform(X_te).shape == (len(X_te), 10)


@pytest.mark.parametrize("method, n_columns", [("decision_function", 1), ("log_proba", 2)])
def test_logit_transformer_binary_shapes(method, n_columns, binary_digits):
    X, y, X_te, y_te = binary_digits
    lt = LogitTransformer(_lr(), method=method).fit(X, y)
    z = lt.transform(X_te)
    assert z.shape == (len(X_te), n_columns)
    assert len(lt.get_feature_names_out()) == n_columns
    if n_columns == 1:
        assert_allclose(z[:, 0], lt.estimator_.decision_function(X_te))
        assert_array_equal(lt.get_feature_names_out(), ["logit_1"])
    # precal calibrators take either shape; both give the same probabilities for a logistic model
    p = TemperatureScaling().fit(z, y_te).predict_proba(z)
    assert p.shape == (len(X_te), 2)


def test_logit_transformer_in_a_pipeline(digits):
    X, y, X_te, _ = digits
    pipe = make_pipeline(StandardScaler(), LogitTransformer(_lr())).fit(X, y)
    z = pipe.transform(X_te)
    assert z.shape == (len(X_te), 10)
    assert_array_equal(pipe.get_feature_names_out(), [f"logit_{k}" for k in range(10)])
    assert_allclose(z, pipe[-1].estimator_.decision_function(pipe[0].transform(X_te)))


def test_logit_transformer_wraps_a_prefit_estimator_with_frozen_estimator(digits):
    X, y, X_te, _ = digits
    clf = _lr().fit(X, y)
    lt = LogitTransformer(FrozenEstimator(clf)).fit(X[:50], y[:50])  # fit is a no-op
    assert_allclose(lt.transform(X_te), clf.decision_function(X_te))


def test_logit_transformer_bad_input(digits):
    X, y, _, _ = digits
    with pytest.raises(NotFittedError):
        LogitTransformer(_lr()).transform(X)
    with pytest.raises(ValueError, match="method"):
        LogitTransformer(_lr(), method="proba").fit(X, y)
    with pytest.raises(TypeError, match="decision_function"):
        LogitTransformer(_mlp(), method="decision_function").fit(X, y)
    with pytest.raises(TypeError, match="fit method"):
        LogitTransformer(object()).fit(X, y)
    with pytest.raises(TypeError, match="predict_proba"):
        LogitTransformer(LinearRegression()).fit(X, y)


# --------------------------------------------------------------------- CalibratedClassifier
@pytest.mark.parametrize("ensemble", [True, False])
@pytest.mark.parametrize("make", [_lr, _mlp], ids=["logistic", "mlp"])
def test_calibrated_probabilities_sum_to_one_and_nll_not_worse(make, ensemble, digits, quiet):
    X, y, X_te, y_te = digits
    raw = make().fit(X, y)
    cal = CalibratedClassifier(make(), cv=3, ensemble=ensemble).fit(X, y)
    p = cal.predict_proba(X_te)
    assert p.shape == (len(X_te), 10)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert len(cal.calibrated_pairs_) == (3 if ensemble else 1)
    assert all(isinstance(c, TemperatureScaling) for _, c in cal.calibrated_pairs_)
    assert cal.n_features_in_ == 64
    assert_array_equal(cal.classes_, np.arange(10))
    nll_raw, nll_cal = log_loss(y_te, raw.predict_proba(X_te)), log_loss(y_te, p)
    assert nll_cal <= nll_raw + 0.02, (nll_raw, nll_cal)
    # decision_function: the calibrated log-probabilities; softmax gives predict_proba back
    assert_allclose(softmax(cal.decision_function(X_te)), p, atol=1e-12)
    assert_array_equal(cal.predict(X_te), p.argmax(axis=1))
    assert cal.score(X_te, y_te) == pytest.approx(accuracy_score(y_te, cal.predict(X_te)))


def test_ensemble_calibrators_only_see_held_out_logits(digits):
    X, y, X_te, _ = digits
    splits = list(KFold(3, shuffle=True, random_state=1).split(X))
    cal = CalibratedClassifier(_lr(), cv=splits).fit(X, y)
    probas = []
    for (train, test), (est, ts) in zip(splits, cal.calibrated_pairs_):
        ref = _lr().fit(X[train], y[train])
        assert_allclose(est.coef_, ref.coef_)
        ref_ts = TemperatureScaling().fit(ref.decision_function(X[test]), y[test])
        assert ts.temperature_ == pytest.approx(ref_ts.temperature_, rel=1e-10)
        probas.append(ref_ts.predict_proba(ref.decision_function(X_te)))
    assert_allclose(cal.predict_proba(X_te), np.mean(probas, axis=0), atol=1e-12)


def test_no_ensemble_fits_one_calibrator_on_out_of_fold_logits(digits):
    X, y, X_te, _ = digits
    cv = KFold(3, shuffle=True, random_state=2)
    cal = CalibratedClassifier(_lr(), cv=cv, ensemble=False).fit(X, y)
    ((est, ts),) = cal.calibrated_pairs_
    assert_allclose(est.coef_, _lr().fit(X, y).coef_)
    oof = cross_val_predict(_lr(), X, y, cv=cv, method="decision_function")
    assert ts.temperature_ == pytest.approx(TemperatureScaling().fit(oof, y).temperature_, rel=1e-10)
    assert_allclose(cal.predict_proba(X_te), ts.predict_proba(est.decision_function(X_te)), atol=1e-12)


def test_cv_int_splitter_and_iterable(digits):
    X, y, X_te, _ = digits
    by_int = CalibratedClassifier(_lr(), cv=3).fit(X, y)
    by_splitter = CalibratedClassifier(_lr(), cv=StratifiedKFold(3)).fit(X, y)
    by_list = CalibratedClassifier(_lr(), cv=list(StratifiedKFold(3).split(X, y))).fit(X, y)
    assert by_int.ensemble_ and len(by_int.calibrated_pairs_) == 3
    assert_allclose(by_int.predict_proba(X_te), by_splitter.predict_proba(X_te))
    assert_allclose(by_int.predict_proba(X_te), by_list.predict_proba(X_te))
    # ensemble=True accepts splits that do not partition the data; ensemble=False refuses them
    shuffle = ShuffleSplit(2, test_size=0.3, random_state=0)
    assert len(CalibratedClassifier(_lr(), cv=shuffle).fit(X, y).calibrated_pairs_) == 2
    with pytest.raises(ValueError, match="partition"):
        CalibratedClassifier(_lr(), cv=shuffle, ensemble=False).fit(X, y)


def test_prefit_and_frozen_estimator_calibrate_on_all_data(digits):
    X, y, X_te, y_te = digits
    clf = _lr().fit(X, y)
    prefit = CalibratedClassifier(clf, cv="prefit").fit(X_te, y_te)
    frozen = CalibratedClassifier(FrozenEstimator(clf)).fit(X_te, y_te)
    assert prefit.calibrated_pairs_[0][0] is clf
    assert not frozen.ensemble_ and len(frozen.calibrated_pairs_) == 1
    ts = TemperatureScaling().fit(clf.decision_function(X_te), y_te)
    assert prefit.calibrated_pairs_[0][1].temperature_ == pytest.approx(ts.temperature_, rel=1e-10)
    assert_allclose(prefit.predict_proba(X), ts.predict_proba(clf.decision_function(X)), atol=1e-12)
    assert_allclose(frozen.predict_proba(X), prefit.predict_proba(X), atol=1e-12)
    with pytest.raises(NotFittedError):
        CalibratedClassifier(_lr(), cv="prefit").fit(X, y)


def test_string_labels(digits):
    X, y, X_te, _ = digits
    names = np.array([f"digit-{k}" for k in range(10)])
    ints = CalibratedClassifier(_lr(), cv=3).fit(X, y)
    strs = CalibratedClassifier(_lr(), cv=3).fit(X, names[y])
    assert_array_equal(strs.classes_, names)
    assert_array_equal(strs.predict(X_te), names[ints.predict(X_te)])
    assert_allclose(strs.predict_proba(X_te), ints.predict_proba(X_te), atol=1e-10)


def test_binary_outputs(binary_digits):
    X, y, X_te, _ = binary_digits
    cal = CalibratedClassifier(_lr(), cv=3).fit(X, y)
    p = cal.predict_proba(X_te)
    d = cal.decision_function(X_te)
    assert p.shape == (len(X_te), 2) and d.shape == (len(X_te),)
    assert_allclose(d, np.log(p[:, 1] / p[:, 0]), rtol=1e-9, atol=1e-9)
    assert cal.calibrated_pairs_[0][1].n_features_in_ == 1  # single-logit binary calibrators


def test_pacs_as_calibrator(digits):
    X, y, X_te, _ = digits
    cal = CalibratedClassifier(_lr(), PACSCalibrator(precision="fp16"), cv=3).fit(X, y)
    assert all(isinstance(c, PACSCalibrator) and c.epsilon_ == 2.0**-11 for _, c in cal.calibrated_pairs_)
    assert_allclose(cal.predict_proba(X_te).sum(axis=1), 1.0, atol=1e-12)


def _rare_class(digits, n_rare=2, rare=9):
    """The digits with class ``rare`` cut down to ``n_rare`` samples."""
    X, y, X_te, _ = digits
    keep = np.flatnonzero(y != rare)
    keep = np.sort(np.concatenate([keep, np.flatnonzero(y == rare)[:n_rare]]))
    return X[keep], y[keep], X_te


def test_rare_class_with_stratified_folds(digits, quiet):
    # 2 samples of class 9 and 3 folds: one held-out part lacks it (its calibrator keeps all 10 columns)
    X, y, X_te = _rare_class(digits)
    cal = CalibratedClassifier(_lr(), cv=3).fit(X, y)
    assert_array_equal(cal.classes_, np.arange(10))
    p = cal.predict_proba(X_te)
    assert p.shape == (len(X_te), 10)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert (p[:, 9] > 0).all()
    assert all(len(est.classes_) == 10 and ts.n_features_in_ == 10 for est, ts in cal.calibrated_pairs_)


def _splits_with_class_missing_from_one_training_part(y, rare=9):
    """3 folds; both samples of ``rare`` are in the first held-out part."""
    rare_idx = np.flatnonzero(y == rare)
    others = np.flatnonzero(y != rare)
    parts = np.array_split(others, 3)
    parts[0] = np.sort(np.concatenate([parts[0], rare_idx]))
    return [(np.sort(np.concatenate([parts[j] for j in range(3) if j != i])), parts[i]) for i in range(3)]


def test_class_missing_from_a_training_part_ensemble(digits):
    X, y, X_te = _rare_class(digits)
    splits = _splits_with_class_missing_from_one_training_part(y)
    with pytest.warns(UserWarning, match=r"fold 0's estimator lacks class\(es\) \[9\]: 2 held-out"):
        cal = CalibratedClassifier(_lr(), cv=splits).fit(X, y)
    assert_array_equal(cal.classes_, np.arange(10))
    (est0, ts0), *rest = cal.calibrated_pairs_
    assert_array_equal(est0.classes_, np.arange(9))
    assert ts0.n_features_in_ == 9  # fitted in its estimator's class space
    pair0 = cal._pair_log_proba(est0, ts0, X_te)
    assert np.isneginf(pair0[:, 9]).all() and np.isfinite(pair0[:, :9]).all()
    # the average over pairs: fold 0 contributes probability 0 to class 9, its proper columns elsewhere
    pairs = [np.exp(cal._pair_log_proba(e, c, X_te)) for e, c in cal.calibrated_pairs_]
    assert_allclose(pairs[0][:, :9], ts0.predict_proba(est0.decision_function(X_te)), atol=1e-12)
    p = cal.predict_proba(X_te)
    assert_allclose(p, np.mean(pairs, axis=0), atol=1e-12)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert (p[:, 9] > 0).all() and np.isfinite(cal.decision_function(X_te)).all()


def test_class_missing_from_a_training_part_no_ensemble(digits):
    X, y, X_te = _rare_class(digits)
    splits = _splits_with_class_missing_from_one_training_part(y)
    with pytest.warns(UserWarning, match=r"fold 0 lacks \[9\]"):
        cal = CalibratedClassifier(_lr(), cv=splits, ensemble=False).fit(X, y)
    ((est, ts),) = cal.calibrated_pairs_
    assert_array_equal(est.classes_, np.arange(10))  # refitted on all data
    # the calibrator saw only the out-of-fold logits of folds 1 and 2
    kept = np.concatenate([splits[1][1], splits[2][1]])
    oof = np.concatenate([_lr().fit(X[tr], y[tr]).decision_function(X[te]) for tr, te in splits[1:]])
    assert ts.temperature_ == pytest.approx(TemperatureScaling().fit(oof, y[kept]).temperature_, rel=1e-10)
    assert cal.predict_proba(X_te).shape == (len(X_te), 10)


def test_sample_weight_reaches_estimator_and_calibrator(digits):
    X, y, X_te, _ = digits
    sw = np.random.default_rng(0).uniform(0.2, 2.0, size=len(y))
    splits = list(KFold(2, shuffle=True, random_state=0).split(X))
    cal = CalibratedClassifier(_lr(), cv=splits).fit(X, y, sample_weight=sw)
    (train, test), (est, ts) = splits[0], cal.calibrated_pairs_[0]
    ref = _lr().fit(X[train], y[train], sample_weight=sw[train])
    assert_allclose(est.coef_, ref.coef_)
    ref_ts = TemperatureScaling().fit(ref.decision_function(X[test]), y[test], sample_weight=sw[test])
    assert ts.temperature_ == pytest.approx(ref_ts.temperature_, rel=1e-10)
    with pytest.warns(UserWarning, match="does not declare sample_weight"):
        CalibratedClassifier(make_pipeline(StandardScaler(), _lr()), cv=2).fit(X, y, sample_weight=sw)


def test_n_jobs_gives_the_same_result(digits):
    X, y, X_te, _ = digits
    one = CalibratedClassifier(_lr(), cv=3, n_jobs=1).fit(X, y)
    with parallel_config(backend="threading"):  # any joblib backend; threads keep the test fast
        two = CalibratedClassifier(_lr(), cv=3, n_jobs=2).fit(X, y)
        two_oof = CalibratedClassifier(_lr(), cv=3, n_jobs=2, ensemble=False).fit(X, y)
    assert_array_equal(two.predict_proba(X_te), one.predict_proba(X_te))
    one_oof = CalibratedClassifier(_lr(), cv=3, n_jobs=1, ensemble=False).fit(X, y)
    assert_array_equal(two_oof.predict_proba(X_te), one_oof.predict_proba(X_te))


def test_pipeline_and_grid_search_over_calibrator_and_estimator(digits, quiet):
    X, y, X_te, _ = digits
    pipe = make_pipeline(StandardScaler(), CalibratedClassifier(_lr(), TemperatureScaling(), cv=2))
    grid = [
        {"calibratedclassifier__calibrator__max_iter": [20, 50], "calibratedclassifier__estimator__C": [0.1, 1.0]},
        {"calibratedclassifier__calibrator": [PACSCalibrator()]},
    ]
    search = GridSearchCV(pipe, grid, cv=2, scoring="neg_log_loss").fit(X, y)
    assert len(search.cv_results_["params"]) == 5
    assert search.predict_proba(X_te).shape == (len(X_te), 10)
    assert np.isfinite(search.best_score_)


def test_clone_and_get_params():
    cal = CalibratedClassifier(LogisticRegression(C=2.0), PACSCalibrator(precision="fp16"), cv=4, n_jobs=2)
    params = cal.get_params()
    assert params["estimator__C"] == 2.0 and params["calibrator__precision"] == "fp16" and params["cv"] == 4
    cloned = clone(cal)
    assert cloned.get_params()["calibrator__precision"] == "fp16"
    assert cloned.calibrator is not cal.calibrator
    assert CalibratedClassifier(LogisticRegression()).get_params()["calibrator"] is None
    lt = LogitTransformer(LogisticRegression(C=3.0), method="log_proba")
    assert clone(lt).get_params()["estimator__C"] == 3.0


def test_fit_leaves_parameters_untouched(digits):
    X, y, _, _ = digits
    est, ts = _lr(), TemperatureScaling()
    cal = CalibratedClassifier(est, ts, cv=2)
    assert cal.fit(X, y) is cal
    assert cal.estimator is est and cal.calibrator is ts
    assert not hasattr(est, "coef_") and not hasattr(ts, "temperature_")


def test_pickle_round_trip(binary_digits):
    X, y, X_te, _ = binary_digits
    cal = CalibratedClassifier(_lr(), cv=2).fit(X, y)
    assert_array_equal(pickle.loads(pickle.dumps(cal)).predict_proba(X_te), cal.predict_proba(X_te))


def test_not_fitted_error(digits):
    X, _, _, _ = digits
    cal = CalibratedClassifier(_lr())
    for method in ("predict_proba", "predict_log_proba", "predict", "decision_function"):
        with pytest.raises(NotFittedError):
            getattr(cal, method)(X)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"estimator": object()}, TypeError, "fit method"),
        ({"estimator": LinearRegression()}, TypeError, "cannot compute logits"),
        ({"calibrator": LogisticRegression()}, TypeError, "must be a precal calibrator"),
        ({"cv": 1}, ValueError, "must be >= 2, got 1"),
        ({"cv": "loo"}, ValueError, "'prefit'"),
        ({"ensemble": "yes"}, ValueError, "ensemble"),
        ({"method": "proba"}, ValueError, "method"),
    ],
)
def test_bad_parameters(kwargs, error, match, digits):
    X, y, _, _ = digits
    params = {"estimator": _lr(), **kwargs}
    with pytest.raises(error, match=match):
        CalibratedClassifier(**params).fit(X, y)


def test_bad_data(digits):
    X, y, _, _ = digits
    with pytest.raises(ValueError, match="class"):
        CalibratedClassifier(_lr(), cv=2).fit(X, np.zeros(len(y), dtype=int))
    with pytest.raises(ValueError, match="Found input variables with inconsistent numbers of samples"):
        CalibratedClassifier(_lr(), cv=2).fit(X, y[:-1])
    with pytest.raises(ValueError, match="sample_weight"):
        CalibratedClassifier(_lr(), cv=2).fit(X, y, sample_weight=-np.ones(len(y)))

"""scikit-learn's own estimator checks, run on every precal calibrator.

A calibrator's input is *logits*: one column per class. Several generic checks fit on data
whose columns are arbitrary features (2 columns with 3 classes, 4 columns with 2 classes),
which a logit calibrator must refuse or interpret as classes. Those checks are listed here,
in one place, with the reason, and are expected to fail; every other check must pass.
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from precal import DirichletCalibrator, FuzzyDirichletCalibrator, PACSCalibrator, TemperatureScaling
from precal.calibration import AutoCalibrator, EnsembleTemperatureScaling, StructuredMatrixScaling, TopLabelCalibrator

CALIBRATORS = [TemperatureScaling(), PACSCalibrator(), DirichletCalibrator(), FuzzyDirichletCalibrator(),
               EnsembleTemperatureScaling(), TopLabelCalibrator(), TopLabelCalibrator(method="histogram"),
               TopLabelCalibrator(method="spline", base=None), TopLabelCalibrator(base="matrix_scaling"),
               StructuredMatrixScaling(),
               StructuredMatrixScaling(map="diagonal"), AutoCalibrator()]

_NOT_LOGITS = (
    "fits on feature matrices whose column count differs from the number of classes "
    "(e.g. 2 columns, 3 classes); a logit calibrator needs one column per class and refuses that input"
)
_COLUMNS_ARE_CLASSES = (
    "fits 2-class labels on 4-column X; to a logit calibrator every column is a class, so integer labels "
    "0/1 with 4 columns mean classes 0..3 (two absent), and decision_function/predict_proba have 4 columns"
)

EXPECTED_FAILED_CHECKS = {
    "check_estimators_overwrite_params": _NOT_LOGITS,
    "check_estimators_fit_returns_self": _NOT_LOGITS,
    "check_readonly_memmap_input": _NOT_LOGITS,
    "check_classifiers_train": _NOT_LOGITS,
    "check_classifiers_classes": _NOT_LOGITS,
    "check_decision_proba_consistency": _COLUMNS_ARE_CLASSES,
}


def _expected_failures(estimator):
    # AutoCalibrator's check_sample_weight_equivalence_on_dense_data passes: scikit-learn hands it
    # cv as explicit (train, test) pairs that keep a row's repetitions in one fold, which its cv takes
    return dict(EXPECTED_FAILED_CHECKS)


@parametrize_with_checks(CALIBRATORS, expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _meta_estimators():
    from sklearn.linear_model import LogisticRegression

    from precal import CalibratedClassifier, LogitTransformer

    return [CalibratedClassifier(LogisticRegression(max_iter=200), cv=3), LogitTransformer(LogisticRegression())]


@pytest.mark.slow
@parametrize_with_checks(_meta_estimators())
def test_scikit_learn_estimator_checks_meta_estimators(estimator, check):
    """CalibratedClassifier and LogitTransformer take features, not logits: every check applies."""
    check(estimator)


@pytest.mark.parametrize("estimator", CALIBRATORS, ids=repr)
def test_dataframe_column_names_are_checked(estimator):
    """scikit-learn's column-name check, which parametrize_with_checks does not run by default:
    feature_names_in_ after a fit on a DataFrame, and an error for other or reordered names at
    predict time. For logits the columns are the classes, so a reordered frame would otherwise
    permute the classes silently."""
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    check_dataframe_column_names_consistency(type(estimator).__name__, clone(estimator))


def test_a_reordered_dataframe_is_refused_not_read_as_other_classes():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    frame = pd.DataFrame(2.0 * np.eye(3)[y] + rng.normal(size=(200, 3)), columns=["cat", "dog", "eel"])
    cal = TemperatureScaling().fit(frame, y)
    assert list(cal.feature_names_in_) == ["cat", "dog", "eel"]
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        cal.predict(frame[["eel", "dog", "cat"]])
    with pytest.warns(UserWarning, match="does not have valid feature names"):  # scikit-learn's rule
        assert (cal.predict(frame) == cal.predict(frame.to_numpy())).all()


def test_a_failed_fit_on_a_dataframe_leaves_the_calibrator_unfitted():
    import numpy as np
    import pandas as pd
    from sklearn.exceptions import NotFittedError

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(50, 3)), columns=["a", "b", "c"])
    cal = TemperatureScaling()
    with pytest.raises(ValueError, match="non-negative"):
        cal.fit(frame, rng.integers(0, 3, 50), sample_weight=-np.ones(50))
    assert not hasattr(cal, "feature_names_in_") and not hasattr(cal, "classes_")
    with pytest.raises(NotFittedError):
        cal.predict_proba(frame)

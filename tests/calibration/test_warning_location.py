"""ConvergenceWarnings point at the user's call (this file), through the thread-limiting wrapper."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from precal import (
    DirichletCalibrator,
    FuzzyDirichletCalibrator,
    PACSCalibrator,
    StructuredMatrixScaling,
    TemperatureScaling,
)


def _data(n=300, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = 2.0 * rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.0
    return z, y


@pytest.mark.parametrize(
    "calibrator",
    [
        TemperatureScaling(max_iter=1),
        PACSCalibrator(precision="int4", max_iter=1, tol=1e-15),
        DirichletCalibrator(reg_lambda=1e-3, max_iter=1),
        FuzzyDirichletCalibrator(reg_region=0.0, max_iter=2, check_gates=False),
        StructuredMatrixScaling(max_iter=1),
    ],
    ids=lambda c: type(c).__name__,
)
def test_convergence_warning_names_the_callers_line(calibrator):
    z, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator.fit(z, y)
    ours = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert ours, f"{type(calibrator).__name__} raised no ConvergenceWarning at max_iter={calibrator.max_iter}"
    assert all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]

"""Dask arrays in (issue 18, items 1 and "Bad input"): metrics and the calibrators whose fit is a
sum over rows (TemperatureScaling, PACSCalibrator, EnsembleTemperatureScaling, DirichletCalibrator,
StructuredMatrixScaling) chunk by chunk, equal to in-memory.

In-process tests run on dask's synchronous scheduler; the slow tests run on a two-process
``distributed.LocalCluster`` (one per module, the ``cluster`` fixture), one of them killing a
worker process in the middle of a fit.
"""

import os
import signal
import subprocess
import threading
import time
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from precal import DirichletCalibrator, PACSCalibrator, TemperatureScaling  # noqa: E402
from precal.calibration import (  # noqa: E402
    AutoCalibrator,
    EnsembleTemperatureScaling,
    FuzzyDirichletCalibrator,
    StructuredMatrixScaling,
    TopLabelCalibrator,
)
from precal._dask import is_dask_array  # noqa: E402
from precal._numerics import softmax  # noqa: E402
from precal.metrics import (  # noqa: E402
    adaptive_calibration_error,
    brier_score,
    calibration_error_ci,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

ROOT = Path(__file__).resolve().parents[1]

METRICS = [
    (expected_calibration_error, {"n_bins": 15}),
    (expected_calibration_error, {"n_bins": 7}),
    (maximum_calibration_error, {"n_bins": 10}),
    (classwise_calibration_error, {"n_bins": 15}),
    (adaptive_calibration_error, {"n_bins": 15}),
    (brier_score, {}),
    (brier_score, {"scale_by_half": True}),
    (negative_log_likelihood, {}),
]


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _data(seed=0, n=3000, k=5, dtype=np.float64, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * (rng.normal(size=(n, k)) + np.eye(k)[y])
    return y, z.astype(dtype), softmax(z).astype(dtype)


def test_is_dask_array_by_type_name_only():
    assert is_dask_array(da.ones(3))
    assert not is_dask_array(np.ones(3))
    assert not is_dask_array(da.ones(3).to_delayed()[0])


def test_no_dask_import_for_in_memory_input():
    code = (
        "import sys, numpy as np\n"
        "from precal import TemperatureScaling\n"
        "from precal.metrics import expected_calibration_error, CalibrationState\n"
        "z = np.random.default_rng(0).normal(size=(50, 3)); y = np.arange(50) % 3\n"
        "ts = TemperatureScaling().fit(z, y); p = ts.predict_proba(z)\n"
        "expected_calibration_error(y, p); CalibrationState(3).update(y, p).ece()\n"
        "assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules), 'dask imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("metric,kw", METRICS)
@pytest.mark.parametrize("prob_chunks,label_chunks", [((700, 5), 700), ((1000, 2), 333), ((3000, 5), None)])
def test_metrics_equal_in_memory(metric, kw, prob_chunks, label_chunks):
    y, _, p = _data()
    y_in = y if label_chunks is None else da.from_array(y, chunks=label_chunks)  # labels rechunked to the rows
    got = metric(y_in, da.from_array(p, chunks=prob_chunks), **kw)
    assert_allclose(got, metric(y, p, **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric,kw", METRICS)
def test_metrics_binary_1d_float32_and_string_labels(metric, kw):
    y, _, p = _data(1, 2000, 2, np.float32)
    assert_allclose(metric(da.from_array(y, chunks=300), da.from_array(p[:, 1], chunks=450), **kw),
                    metric(y, p[:, 1], **kw), rtol=0, atol=1e-12)
    y3, _, p3 = _data(2, 1500, 3)
    names = np.array(["cat", "dog", "eel"])[y3]
    expected = metric(names, p3, **kw)
    assert_allclose(metric(da.from_array(names, chunks=200), da.from_array(p3, chunks=(400, 3)), **kw),
                    expected, rtol=0, atol=1e-12)
    # labels 1..3 (not the column indices) are the sorted distinct labels of the whole array, in every chunk
    assert_allclose(metric(da.from_array(y3 + 1, chunks=100), da.from_array(p3, chunks=(500, 3)), **kw),
                    metric(y3 + 1, p3, **kw), rtol=0, atol=1e-12)
    assert_allclose(metric(y3 + 1, da.from_array(p3, chunks=(500, 3)), labels=[1, 2, 3], **kw),
                    metric(y3 + 1, p3, labels=[1, 2, 3], **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve(strategy):
    y, _, p = _data(12, 2000, 4)
    got = reliability_curve(da.from_array(y, chunks=300), da.from_array(p, chunks=(500, 4)), n_bins=12,
                            strategy=strategy)
    ref = reliability_curve(y, p, n_bins=12, strategy=strategy)
    assert_array_equal(got.counts, ref.counts)
    assert_allclose(got.bin_edges, ref.bin_edges, rtol=0, atol=0)
    assert_allclose(got.mean_confidence, ref.mean_confidence, rtol=0, atol=1e-12)
    assert_allclose(got.accuracy, ref.accuracy, rtol=0, atol=1e-12)


def test_metric_dask_labels_with_in_memory_probabilities():
    y, _, p = _data(3, 1000, 4)
    assert_allclose(expected_calibration_error(da.from_array(y, chunks=128), p),
                    expected_calibration_error(y, p), rtol=0, atol=1e-12)


def test_metric_bad_chunks_are_named():
    y, _, p = _data(4, 1000, 3)
    bad = p.copy()
    bad[650, 1] = np.nan
    with pytest.raises(ValueError, match=r"y_prob chunk 2 \(rows 600:900.*contains NaN"):
        expected_calibration_error(y, da.from_array(bad, chunks=(300, 3)))
    bad = p.copy()
    bad[10] *= 2
    with pytest.raises(ValueError, match=r"y_prob chunk 0 .*in \[0, 1\]|y_prob chunk 0 .*sum to 1"):
        brier_score(y, da.from_array(bad, chunks=(300, 3)))
    with pytest.raises(ValueError, match="Inconsistent numbers of samples"):
        expected_calibration_error(da.from_array(y[:-1], chunks=100), da.from_array(p, chunks=(300, 3)))
    with pytest.raises(ValueError, match="Inconsistent numbers of samples"):
        negative_log_likelihood(y[:-1], da.from_array(p, chunks=(300, 3)))
    four = np.array(["a", "b", "c", "d"])[np.arange(1000) % 4]
    with pytest.raises(ValueError, match="has 4 classes"):  # four labels, three columns
        expected_calibration_error(da.from_array(four, chunks=100), da.from_array(p, chunks=(300, 3)))
    unknown = da.from_array(p, chunks=(300, 3))
    unknown = unknown[unknown[:, 0] >= 0]  # unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        expected_calibration_error(y, unknown)
    with pytest.raises(TypeError, match="classwise_ece' resamples whole rows.*compute them first"):
        calibration_error_ci(y, da.from_array(p, chunks=(300, 3)), metric="classwise_ece")
    with pytest.raises(TypeError, match="callable metric resamples whole rows"):
        calibration_error_ci(y, da.from_array(p, chunks=(300, 3)), metric=expected_calibration_error)
    with pytest.raises(ValueError, match=r"y_prob chunk 2 \(rows 600:900.*contains NaN"):
        nan = p.copy()
        nan[650, 1] = np.nan
        calibration_error_ci(y, da.from_array(nan, chunks=(300, 3)), n_bootstrap=5)
    with pytest.raises(ValueError, match="single column"):
        expected_calibration_error(y, da.from_array(p[:, :1], chunks=(300, 1)))


@pytest.mark.parametrize("metric,kw", [("ece", {}), ("ace", {"n_bins": 10}), ("mce", {}), ("nll", {}),
                                       ("brier", {}), ("brier", {"scale_by_half": True})])
@pytest.mark.parametrize("method", ["auto", "percentile"])
def test_calibration_error_ci_equals_in_memory(metric, kw, method):
    """The per-sample numbers come from the chunks, the resampling is the in-memory one: the same interval."""
    y, _, p = _data(3, 2500, 4)
    ref = calibration_error_ci(y, p, metric=metric, n_bootstrap=40, random_state=7, method=method, **kw)
    got = calibration_error_ci(da.from_array(y, chunks=600), da.from_array(p, chunks=(700, 4)), metric=metric,
                               n_bootstrap=40, random_state=7, method=method, **kw)
    for name in ("estimate", "low", "high", "plugin"):
        assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-12, atol=1e-15, err_msg=name)
    assert got.method == ref.method


def test_debiased_and_smooth_ece_equal_in_memory():
    from precal.metrics import debiased_calibration_error, smooth_calibration_error

    y, _, p = _data(6, 3000, 5)
    yd, pd_ = da.from_array(y, chunks=800), da.from_array(p, chunks=(700, 5))
    assert_allclose(debiased_calibration_error(yd, pd_), debiased_calibration_error(y, p), rtol=1e-12)
    assert_allclose(smooth_calibration_error(yd, pd_), smooth_calibration_error(y, p), rtol=1e-12)
    bad = p.copy()
    bad[900, 2] = np.inf
    with pytest.raises(ValueError, match=r"y_prob chunk 1 \(rows 700:1400"):
        smooth_calibration_error(y, da.from_array(bad, chunks=(700, 5)))


def test_calibration_error_ci_binary_single_column_and_string_labels():
    rng = np.random.default_rng(4)
    y = np.array(["no", "yes"])[rng.integers(0, 2, size=900)]
    p1 = rng.uniform(size=900)
    ref = calibration_error_ci(y, p1, metric="brier", n_bootstrap=20, random_state=0)
    got = calibration_error_ci(da.from_array(y, chunks=250), da.from_array(p1, chunks=300), metric="brier",
                               n_bootstrap=20, random_state=0)
    assert_allclose([got.estimate, got.low, got.high], [ref.estimate, ref.low, ref.high], rtol=1e-12)


@pytest.mark.parametrize("n,k,chunks", [(2000, 4, 300), (40000, 6, 7000)])  # the second warm-starts on a subsample
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_temperature_scaling_fit_equals_in_memory(n, k, chunks, dtype):
    y, z, _ = _data(5, n, k, dtype)
    ref = TemperatureScaling().fit(z, y)
    got = TemperatureScaling().fit(da.from_array(z, chunks=(chunks, k)), da.from_array(y, chunks=chunks // 3 + 1))
    assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)
    assert got.n_iter_ == ref.n_iter_
    assert_array_equal(got.classes_, ref.classes_)
    assert got.n_features_in_ == ref.n_features_in_
    lazy = got.predict_proba(da.from_array(z, chunks=(chunks, k)))
    assert is_dask_array(lazy)
    assert_allclose(lazy.compute(), ref.predict_proba(z), rtol=0, atol=1e-10)
    zd = da.from_array(z, chunks=(chunks, 2))
    assert_allclose(got.predict_log_proba(zd).compute(), ref.predict_log_proba(z), rtol=1e-10, atol=1e-10)
    assert_allclose(got.decision_function(zd).compute(), ref.decision_function(z), rtol=1e-10)
    assert_array_equal(got.predict(zd).compute(), ref.predict(z))


def test_temperature_scaling_weights_strings_and_single_logit():
    y, z, _ = _data(6, 20000, 3)
    w = np.random.default_rng(0).uniform(0, 2, size=len(y))
    names = np.array(["a", "b", "c"])[y]
    ref = TemperatureScaling().fit(z, names, sample_weight=w)
    for weights in (w, da.from_array(w, chunks=777)):
        got = TemperatureScaling().fit(da.from_array(z, chunks=(4000, 3)), da.from_array(names, chunks=5000),
                                       sample_weight=weights)
        assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)
        assert_array_equal(got.classes_, ref.classes_)
        assert_array_equal(got.predict(da.from_array(z, chunks=(4000, 3))).compute(), ref.predict(z))
    yb, zb, _ = _data(7, 3000, 2)
    margin = zb[:, 1] - zb[:, 0]
    ref = TemperatureScaling().fit(margin, yb)
    got = TemperatureScaling().fit(da.from_array(margin, chunks=500), yb)
    assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)
    assert got.n_features_in_ == 1
    md = da.from_array(margin, chunks=500)
    assert got.predict_proba(md).shape == (3000, 2)
    assert_allclose(got.predict_proba(md).compute(), ref.predict_proba(margin), atol=1e-12)
    assert_allclose(got.decision_function(md).compute(), ref.decision_function(margin), rtol=1e-12)


def test_temperature_scaling_float32_range_overflow_is_read_in_float64():
    y, z, _ = _data(8, 500, 3, np.float32)
    z[3] = [3e38, -3e38, 0.0]
    ref = TemperatureScaling().fit(z, y)
    got = TemperatureScaling().fit(da.from_array(z, chunks=(100, 3)), y)
    assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)


def test_temperature_scaling_bad_dask_input():
    y, z, _ = _data(9, 1000, 3)
    bad = z.copy()
    bad[450, 2] = np.nan
    with pytest.raises(ValueError, match=r"X chunk 2 \(rows 400:600.*contains NaN"):
        TemperatureScaling().fit(da.from_array(bad, chunks=(200, 3)), y)
    bad[450, 2] = np.inf
    with pytest.raises(ValueError, match=r"X chunk 2 .*infinity"):
        TemperatureScaling().fit(da.from_array(bad, chunks=(200, 3)), y)
    fitted = TemperatureScaling().fit(z, y)
    nan_chunk = fitted.predict_proba(da.from_array(np.where(np.arange(1000)[:, None] == 700, np.nan, z),
                                                   chunks=(300, 3)))
    with pytest.raises(ValueError, match="X chunk 2: .*NaN"):
        nan_chunk.compute()
    w = np.ones(1000)
    w[999] = -1
    with pytest.raises(ValueError, match="sample_weight chunk 4 .*non-negative"):
        TemperatureScaling().fit(da.from_array(z, chunks=(200, 3)), y, sample_weight=da.from_array(w, chunks=200))
    with pytest.raises(ValueError, match="non-negative"):
        TemperatureScaling().fit(da.from_array(z, chunks=(200, 3)), y, sample_weight=w)
    with pytest.raises(ValueError, match="Inconsistent numbers of samples"):
        TemperatureScaling().fit(da.from_array(z, chunks=(200, 3)), y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        TemperatureScaling().fit(da.from_array(z, chunks=(200, 3)), da.zeros(1000, dtype=int, chunks=250))
    with pytest.raises(ValueError, match="max_iter"):
        TemperatureScaling(max_iter=0).fit(da.from_array(z, chunks=(200, 3)), y)
    with pytest.raises(ValueError, match=r"reg_lambda='cv'\) does not fit Dask arrays.*Pass a fixed reg_lambda"):
        DirichletCalibrator().fit(da.from_array(z, chunks=(200, 3)), y)
    with pytest.raises(ValueError, match="expecting 3 features"):
        fitted.predict_proba(da.from_array(z[:, :2], chunks=(200, 2)))
    with pytest.raises(ValueError, match="return_tensor"):
        fitted.predict_proba(da.from_array(z, chunks=(200, 3)), return_tensor=True)
    # logits in memory with dask labels: the labels are computed and the in-memory fit runs
    assert_allclose(TemperatureScaling().fit(z, da.from_array(y, chunks=100)).temperature_,
                    fitted.temperature_, rtol=0, atol=0)


def test_in_memory_calibrators_predict_lazily_on_dask():
    y, z, _ = _data(10, 600, 3)
    cal = DirichletCalibrator().fit(z, y)
    out = cal.predict_proba(da.from_array(z, chunks=(100, 3)))
    assert is_dask_array(out)
    assert_allclose(out.compute(), cal.predict_proba(z), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def cluster():
    """A ``distributed.LocalCluster`` with 2 worker processes (one thread each) and its client."""
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                      memory_limit="2GiB") as local, distributed.Client(local) as client:
            yield local, client


@pytest.fixture
def on_cluster(cluster):
    """Dask computations in the test go to the module's LocalCluster."""
    local, client = cluster
    with dask.config.set(scheduler=None):
        yield local, client


@pytest.mark.slow
def test_local_cluster_two_processes(on_cluster):
    y, z, p = _data(11, 30000, 5)
    zd = da.from_array(z, chunks=(4000, 5)).persist()
    yd = da.from_array(y, chunks=3000).persist()
    ts = TemperatureScaling().fit(zd, yd)
    proba = ts.predict_proba(zd)
    ece = expected_calibration_error(yd, proba)
    nll = negative_log_likelihood(yd, proba)
    cw = classwise_calibration_error(yd, da.from_array(p, chunks=(5000, 5)))
    ref = TemperatureScaling().fit(z, y)
    assert_allclose(ts.temperature_, ref.temperature_, rtol=1e-10)
    ref_proba = ref.predict_proba(z)
    assert_allclose(ece, expected_calibration_error(y, ref_proba), rtol=0, atol=1e-10)
    assert_allclose(nll, negative_log_likelihood(y, ref_proba), rtol=0, atol=1e-10)
    assert_allclose(cw, classwise_calibration_error(y, p), rtol=0, atol=1e-12)
    ci = calibration_error_ci(yd, proba, n_bootstrap=30, random_state=0)
    ref_ci = calibration_error_ci(y, ref_proba, n_bootstrap=30, random_state=0)
    assert_allclose([ci.estimate, ci.low, ci.high], [ref_ci.estimate, ref_ci.low, ref_ci.high], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- PACS, ETS, Dirichlet
def _spread(seed, n, k, dtype=np.float64):
    """Logits whose scale varies by sample (so PACS's lambda is not 0) and sample weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = rng.uniform(1, 6, size=(n, 1)) * (rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y])
    return y, z.astype(dtype), rng.uniform(0, 2, size=n)


def _assert_pacs_equal(got, ref, rtol=1e-10):
    for name in ("temperature_", "lambda_", "temperature_scaling_"):
        assert_allclose(getattr(got, name), getattr(ref, name), rtol=rtol, err_msg=name)
    assert got.n_iter_ == ref.n_iter_
    assert_array_equal(got.classes_, ref.classes_)
    assert got.n_features_in_ == ref.n_features_in_


#: float32 logits: the element-wise work runs in float32, where torch's vectorised kernels round a
#: few elements (those at the tail of a block, whose boundaries move with the chunks) an ulp
#: differently; the float64 sums then differ at ~1e-10 relative, not at float64 rounding.
F32_RTOL = 1e-8


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("risk", ["peaked", "norm"])
def test_pacs_fit_equals_in_memory(dtype, risk):
    rtol = 1e-10 if dtype == np.float64 else F32_RTOL
    y, z, w = _spread(20, 20000, 6, dtype)
    ref = PACSCalibrator(risk=risk).fit(z, y)
    assert ref.lambda_ > 0  # the risk term is used, so its per-chunk computation is tested
    got = PACSCalibrator(risk=risk).fit(da.from_array(z, chunks=(3000, 6)), da.from_array(y, chunks=1300))
    _assert_pacs_equal(got, ref, rtol)
    zd = da.from_array(z, chunks=(3000, 6))
    assert_allclose(got.predict_proba(zd).compute(), ref.predict_proba(z), rtol=0, atol=1e-12)
    names = np.array(list("abcdef"))[y]  # string labels, dask weights chunked unlike the logits
    ref = PACSCalibrator(risk=risk, precision="fp8_e4m3").fit(z, names, sample_weight=w)
    got = PACSCalibrator(risk=risk, precision="fp8_e4m3").fit(zd, da.from_array(names, chunks=4000),
                                                              sample_weight=da.from_array(w, chunks=1700))
    _assert_pacs_equal(got, ref, rtol)


def test_pacs_single_logit_and_float16():
    y, z, _ = _spread(21, 6000, 2)
    margin = z[:, 1] - z[:, 0]
    _assert_pacs_equal(PACSCalibrator().fit(da.from_array(margin, chunks=1000), y), PACSCalibrator().fit(margin, y))
    y, z, _ = _spread(22, 5000, 4, np.float16)
    _assert_pacs_equal(PACSCalibrator().fit(da.from_array(z, chunks=(999, 4)), y), PACSCalibrator().fit(z, y),
                       F32_RTOL)  # float16 is fitted in float32


@pytest.mark.parametrize("loss", ["nll", "mse"])
def test_ensemble_temperature_fit_equals_in_memory(loss):
    # loss="mse": the Brier temperature is an L-BFGS-B minimum with ftol=1e-12, which places it only to
    # ~1e-6 relative (the loss is flat to 1e-12 around it); rounding-level differences of the sums
    # move where the optimiser stops by ~1e-8, in memory as much as on Dask
    rtol = 1e-10 if loss == "nll" else 1e-7
    y, z, w = _spread(23, 10000, 6)
    for weights in (None, w):
        ref = EnsembleTemperatureScaling(loss=loss).fit(z, y, sample_weight=weights)
        got = EnsembleTemperatureScaling(loss=loss).fit(
            da.from_array(z, chunks=(3000, 6)), da.from_array(y, chunks=1300),
            sample_weight=None if weights is None else da.from_array(weights, chunks=4100))
        assert_allclose(got.temperature_, ref.temperature_, rtol=rtol)
        assert_allclose(got.weights_, ref.weights_, rtol=0, atol=rtol)
        assert got.n_iter_ == ref.n_iter_
        assert ref.weights_[1] > 1e-3 and ref.weights_[2] > 1e-3  # a real mixture: every weight is fitted
        zd = da.from_array(z, chunks=(3000, 6))
        assert_allclose(got.predict_proba(zd).compute(), ref.predict_proba(z), rtol=0, atol=rtol)


@pytest.mark.parametrize("n,k,kw,weighted", [
    (5000, 4, {"map": "full", "reg_lambda": 0.01}, False),  # dense Newton (20 parameters)
    (8000, 5, {"map": "full", "reg_lambda": 0.1, "reg_diag": 0.0}, True),
    (3000, 30, {"map": "diagonal", "reg_lambda": 0.01}, False),  # dense, 60 parameters
    pytest.param(2000, 25, {"map": "full", "reg_lambda": 1.0}, True,  # 650 parameters: CG on Hessian-vector
                 marks=pytest.mark.slow),  # products, one dask computation each
])
def test_dirichlet_fit_equals_in_memory(n, k, kw, weighted):
    y, z, w = _spread(24, n, k)
    z = z / 2.0
    w = w if weighted else None
    ref = DirichletCalibrator(**kw).fit(z, y, sample_weight=w)
    got = DirichletCalibrator(**kw).fit(da.from_array(z, chunks=(n // 7 + 1, k)), da.from_array(y, chunks=n // 3),
                                        sample_weight=None if w is None else da.from_array(w, chunks=n // 2))
    assert_allclose(got.coef_, ref.coef_, rtol=0, atol=1e-10)
    assert_allclose(got.intercept_, ref.intercept_, rtol=0, atol=1e-10)
    assert got.n_iter_ == ref.n_iter_ and got.map_ == ref.map_ and got.reg_lambda_ == ref.reg_lambda_
    assert got.cv_scores_ == {}
    assert np.abs(ref.coef_ - np.diag(np.diag(ref.coef_)) if ref.coef_.ndim == 2 else ref.coef_).max() > 1e-3
    zd = da.from_array(z, chunks=(n // 4, k))
    assert_allclose(got.predict_proba(zd).compute(), ref.predict_proba(z), rtol=0, atol=1e-10)


def test_dirichlet_float32_fit_agrees_to_float32_floor():
    """Above 2**20 elements both fits run element-wise work in float32 (float64 sums): they agree to
    float32's floor, not to 1e-10 (the chunks' float32 partial sums differ in order)."""
    y, z, _ = _spread(25, 240000, 5)
    z = z / 2.0
    ref = DirichletCalibrator(reg_lambda=0.1).fit(z, y)
    got = DirichletCalibrator(reg_lambda=0.1).fit(da.from_array(z, chunks=(50000, 5)), y)
    assert_allclose(got.coef_, ref.coef_, rtol=0, atol=1e-5)
    assert_allclose(got.intercept_, ref.intercept_, rtol=0, atol=1e-5)


#: StructuredMatrixScaling's L-BFGS-B stops on a relative decrease of the objective of 1e-12, about
#: 1e-5 from the exact minimiser in the parameters (measured: 4.5e-7 to 4.5e-5 on 12 random problems),
#: and where it stops moves with rounding-level changes of the sums: the in-memory fit of the same rows
#: in another order differs from the in-memory fit by 4e-16 to 2.4e-8 on those problems, the Dask fit by
#: 3e-16 to 2.4e-8 (largest on the same problem). So the fitted maps are compared to 1e-7, and the one
#: pass that both fits are made of (objective, gradient, preconditioner) to rounding, in
#: test_structured_matrix_scaling_dask_pass_equals_in_memory. The temperature (Newton) is tested to 1e-10.
SMS_ATOL = 1e-7


def _assert_sms_equal(got, ref, atol=SMS_ATOL):
    assert_allclose(got.temperature_, ref.temperature_, rtol=min(atol, 1e-10), err_msg="temperature_")
    assert_allclose(got.smoothing_, ref.smoothing_, rtol=1e-14, err_msg="smoothing_")
    assert_allclose(got.coef_, ref.coef_, rtol=0, atol=atol, err_msg="coef_")
    assert_allclose(got.intercept_, ref.intercept_, rtol=0, atol=atol, err_msg="intercept_")
    assert got.map_ == ref.map_ and got.coef_.shape == ref.coef_.shape
    assert_array_equal(got.classes_, ref.classes_)
    assert got.n_features_in_ == ref.n_features_in_


@pytest.mark.parametrize("map_", ["full", "diagonal"])
@pytest.mark.parametrize("weighted", [False, True])
def test_structured_matrix_scaling_fit_equals_in_memory(map_, weighted):
    y, z, w = _spread(30, 6000, 5)
    w = w if weighted else None
    ref = StructuredMatrixScaling(map=map_).fit(z, y, sample_weight=w)
    zd = da.from_array(z, chunks=(900, 5))
    got = StructuredMatrixScaling(map=map_).fit(zd, da.from_array(y, chunks=1300),
                                                sample_weight=None if w is None else da.from_array(w, chunks=2500))
    _assert_sms_equal(got, ref)
    assert got.n_iter_ == ref.n_iter_
    moved = ref.coef_ - (1.0 if map_ == "diagonal" else np.eye(5))
    assert np.abs(moved).max() > 1e-2 and np.abs(ref.intercept_).max() > 1e-3  # the map is fitted, not TS
    assert_allclose(got.predict_proba(zd).compute(), ref.predict_proba(z), rtol=0, atol=SMS_ATOL)


@pytest.mark.parametrize("diagonal", [False, True])
def test_structured_matrix_scaling_dask_pass_equals_in_memory(diagonal):
    """One dask pass (every chunk: its rows' features from its logits, then the in-memory kernel) gives
    the in-memory objective, gradient and preconditioner to rounding."""
    import torch

    from precal._dask import DaskLogits
    from precal.calibration import matrix_scaling as ms

    y, z, w = _spread(35, 3000, 5)
    k, temperature, smoothing, strengths = 5, 1.7, ms.mixture_weight(w.sum()), (0.01, 0.02, 0.003)
    theta = np.random.default_rng(0).normal(scale=0.2, size=2 * k if diagonal else k * (k + 1))
    wt = torch.from_numpy(w)
    features = ms.scaled_log_probabilities(torch.from_numpy(z), temperature, smoothing)
    value, grad = ms.matrix_scaling_objective(torch.from_numpy(theta), features, torch.from_numpy(y), wt, strengths,
                                              diagonal=diagonal)
    hess = ms._penalised_hessian(ms._hessian_sums(features, wt, diagonal=diagonal), wt.sum(), strengths,
                                 diagonal=diagonal)
    data = DaskLogits.validated(da.from_array(z, chunks=(700, 5)), da.from_array(y, chunks=1100),
                                da.from_array(w, chunks=1000))
    f64 = torch.float64
    sums = ms._split(torch.tensor(data.reduce(ms._chunk_objective_sums, theta, temperature, smoothing, diagonal),
                                  dtype=f64), k, diagonal, value=True)
    got_value, got_grad = ms._penalised(torch.from_numpy(theta), sums, data.denom, strengths, k=k, diagonal=diagonal)
    got_hess = ms._penalised_hessian(
        ms._split(torch.tensor(data.reduce(ms._chunk_hessian_sums, temperature, smoothing, diagonal), dtype=f64), k,
                  diagonal, value=False), data.denom, strengths, diagonal=diagonal)
    assert_allclose(float(got_value), float(value), rtol=1e-14)
    assert_allclose(got_grad.numpy(), grad.numpy(), rtol=1e-12, atol=1e-15)
    assert_allclose(got_hess.numpy(), hess.numpy(), rtol=1e-12, atol=0)
    assert np.abs(grad.numpy()).min() > 1e-6  # every entry is a real sum, not a rounding-level zero


def test_structured_matrix_scaling_chunks_split_into_row_blocks(monkeypatch):
    """Dask chunks larger than the objective's row blocks: each chunk runs the in-memory
    kernel over its own blocks of rows, and the fit still equals the in-memory one."""
    from precal.calibration import matrix_scaling

    monkeypatch.setattr(matrix_scaling, "_CHUNK_ELEMENTS", 7 * 4)  # 7 rows per block
    y, z, w = _spread(31, 2000, 4)
    ref = StructuredMatrixScaling().fit(z, y, sample_weight=w)
    _assert_sms_equal(StructuredMatrixScaling().fit(da.from_array(z, chunks=(333, 4)), y, sample_weight=w), ref)


def test_structured_matrix_scaling_one_dask_pass_per_evaluation(monkeypatch):
    """Every L-BFGS-B evaluation is one dask computation of the objective's sums; the
    preconditioner is one more."""
    from precal import _dask
    from precal.calibration import matrix_scaling

    passes, evaluations = [], []
    reduce, penalised = _dask.DaskLogits.reduce, matrix_scaling._penalised
    monkeypatch.setattr(_dask.DaskLogits, "reduce",
                        lambda self, fn, *args: (passes.append(fn.__name__), reduce(self, fn, *args))[1])
    monkeypatch.setattr(matrix_scaling, "_penalised",
                        lambda *args, **kw: (evaluations.append(1), penalised(*args, **kw))[1])
    y, z, _ = _spread(34, 3000, 4)
    StructuredMatrixScaling().fit(da.from_array(z, chunks=(700, 4)), y)
    assert passes.count("_chunk_hessian_sums") == 1
    assert passes.count("_chunk_objective_sums") == len(evaluations) > 2


def test_structured_matrix_scaling_single_logit_float32_and_strings():
    y, z, _ = _spread(32, 4000, 2)
    margin = z[:, 1] - z[:, 0]
    ref = StructuredMatrixScaling().fit(margin, y)
    got = StructuredMatrixScaling().fit(da.from_array(margin, chunks=700), da.from_array(y, chunks=1000))
    _assert_sms_equal(got, ref)
    assert got.n_features_in_ == 1 and got.coef_.shape == (2, 2)
    md = da.from_array(margin, chunks=700)
    assert_allclose(got.predict_proba(md).compute(), ref.predict_proba(margin), rtol=0, atol=SMS_ATOL)
    y, z, _ = _spread(33, 5000, 6, np.float32)
    names = np.array(list("uvwxyz"))[y]
    ref = StructuredMatrixScaling().fit(z, names)
    got = StructuredMatrixScaling().fit(da.from_array(z, chunks=(800, 6)), da.from_array(names, chunks=1200))
    _assert_sms_equal(got, ref, atol=F32_RTOL)  # float32 logits: the temperature's float32 kernels (see F32_RTOL)


def test_dask_fitters_names_every_calibrator_that_fits_dask():
    from precal._dask import DASK_FITTERS
    from precal.calibration._base import _REGISTRY

    fitters = {name for name, cls in _REGISTRY.items() if cls._fits_dask}
    assert fitters == {name.split("(")[0] for name in DASK_FITTERS}
    assert "StructuredMatrixScaling" in fitters


def test_calibrators_that_are_not_sums_over_rows_refuse_dask():
    y, z, _ = _data(26, 600, 3)
    zd, yd = da.from_array(z, chunks=(200, 3)), da.from_array(y, chunks=200)
    reasons = {
        TopLabelCalibrator(): "sorted together",
        FuzzyDirichletCalibrator(): "one random stream over all the rows",
        AutoCalibrator(): "cross-validation folds",
    }
    for cal, why in reasons.items():
        name = type(cal).__name__
        with pytest.raises(TypeError, match=rf"{name}\.fit does not take Dask arrays: .*{why}.*in-memory sample.*"
                                            r"TemperatureScaling, PACSCalibrator, EnsembleTemperatureScaling, "
                                            r"DirichletCalibrator\(reg_lambda=<float>\), StructuredMatrixScaling"):
            cal.fit(zd, yd)
    with pytest.raises(ValueError, match=r"reg_lambda='cv'\) does not fit Dask arrays.*internal cross-validation.*"
                                         r"Pass a fixed reg_lambda"):
        DirichletCalibrator(reg_lambda="cv").fit(zd, yd)
    DirichletCalibrator(reg_lambda=1.0).fit(zd, yd)  # the fix the message names works


@pytest.mark.parametrize("cal", [PACSCalibrator(), EnsembleTemperatureScaling(),
                                 EnsembleTemperatureScaling(loss="mse"), DirichletCalibrator(reg_lambda=0.1),
                                 StructuredMatrixScaling()],
                         ids=["pacs", "ets", "ets-mse", "dirichlet", "sms"])
def test_new_dask_fits_bad_input(cal):
    y, z, _ = _data(27, 1000, 3)
    name = type(cal).__name__
    for value, what in ((np.nan, "contains NaN"), (-np.inf, "infinity")):
        bad = z.copy()
        bad[650, 1] = value
        with pytest.raises(ValueError, match=rf"X chunk 3 \(rows 600:800.*{what}"):
            cal.fit(da.from_array(bad, chunks=(200, 3)), y)
    w = np.ones(1000)
    w[5] = np.nan
    with pytest.raises(ValueError, match=r"sample_weight chunk 0 .*NaN"):
        cal.fit(da.from_array(z, chunks=(200, 3)), y, sample_weight=da.from_array(w, chunks=300))
    with pytest.raises(ValueError, match="Inconsistent numbers of samples"):
        cal.fit(da.from_array(z, chunks=(200, 3)), da.from_array(y[:-1], chunks=100))
    with pytest.raises(ValueError, match=f"{name} requires y"):
        cal.fit(da.from_array(z, chunks=(200, 3)), None)
    unknown = da.from_array(z, chunks=(200, 3))
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        cal.fit(unknown[unknown[:, 0] > -1e9], y)
    # labels and logits chunked differently (and logits split in columns): rechunked, same fit as in memory
    ref = type(cal)(**cal.get_params()).fit(z, y)
    got = type(cal)(**cal.get_params()).fit(da.from_array(z, chunks=(170, 2)), da.from_array(y, chunks=(90,)))
    assert_allclose(got.predict_proba(z), ref.predict_proba(z), rtol=0, atol=1e-10)


def test_a_pass_that_loses_its_workers_raises_a_clear_error(monkeypatch):
    from precal import _dask

    class KilledWorker(Exception):  # distributed's exception, recognised by its name
        pass

    def lost(*_):
        raise KilledWorker("Attempted to run task ('chunk', 3) on 4 different workers, but all those workers died")

    monkeypatch.setattr(dask, "compute", lost)
    with pytest.raises(RuntimeError, match=r"lost the workers .*allowed-failures.*no partial sum"):
        _dask.compute(1)
    monkeypatch.setattr(dask, "compute", lambda *_: (_ for _ in ()).throw(KeyError("other")))
    with pytest.raises(KeyError):  # other errors pass through unchanged
        _dask.compute(1)


@pytest.mark.slow
def test_local_cluster_new_fits_equal_in_memory(on_cluster):
    y, z, w = _spread(28, 8000, 5)
    zd = da.from_array(z, chunks=(2000, 5))
    yd = da.from_array(y, chunks=3000)
    wd = da.from_array(w, chunks=2500)
    _assert_pacs_equal(PACSCalibrator().fit(zd, yd, sample_weight=wd), PACSCalibrator().fit(z, y, sample_weight=w))
    ref = EnsembleTemperatureScaling().fit(z, y)
    got = EnsembleTemperatureScaling().fit(zd, yd)
    assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)
    assert_allclose(got.weights_, ref.weights_, rtol=0, atol=1e-10)
    ref = DirichletCalibrator(reg_lambda=0.1).fit(z / 2, y, sample_weight=w)
    got = DirichletCalibrator(reg_lambda=0.1).fit(zd / 2, yd, sample_weight=wd)
    assert_allclose(got.coef_, ref.coef_, rtol=0, atol=1e-10)
    assert_allclose(got.intercept_, ref.intercept_, rtol=0, atol=1e-10)
    _assert_sms_equal(StructuredMatrixScaling().fit(zd, yd, sample_weight=wd),
                      StructuredMatrixScaling().fit(z, y, sample_weight=w))


@pytest.mark.slow
def test_local_cluster_worker_killed_mid_fit(on_cluster):
    """A worker process killed by SIGKILL in the middle of a PACS fit: the nanny restarts it, dask
    recomputes the lost chunks, and the fit ends equal to the in-memory one (never a partial sum)."""
    local, client = on_cluster
    y, z, _ = _spread(29, 12000, 5)
    ref = PACSCalibrator().fit(z, y)
    pids = client.run(os.getpid)  # worker address -> its process id
    # every chunk read takes a while, so a worker is busy when it is killed (a lambda travels by value)
    zd = da.from_array(z, chunks=(1000, 5)).map_blocks(lambda b: (time.sleep(0.05), b)[1], dtype=z.dtype)
    killed = []

    def kill_one():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed and len(fitting) == 1:
            busy = [addr for addr, tasks in client.processing().items() if tasks and addr in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.1)

    fitting = [True]
    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        got = PACSCalibrator().fit(zd, y)
    finally:
        fitting.append(False)
        killer.join()
    assert killed, "no worker was killed during the fit"
    _assert_pacs_equal(got, ref)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it

"""Issue 17 (strict validation): every metric and diagnostic parameter is checked up front
with scikit-learn ``check_scalar``-style messages, labels must match the probability
columns, and the row-sum tolerance of low-precision probabilities is the format's real
rounding error."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import precal.metrics as metrics
from precal._validation import check_number, check_option, row_sum_tolerance
from precal.emulate import format_info, softmax_in_format

rng = np.random.default_rng(0)
Y = np.array([0, 1, 2, 1, 0, 2])
P = np.full((6, 3), 1.0 / 3.0)
Z = rng.normal(size=(6, 3))

# (call with the bad value, exception type, the parameter the message must name)
BINNED = [metrics.expected_calibration_error, metrics.adaptive_calibration_error, metrics.maximum_calibration_error,
          metrics.classwise_calibration_error, metrics.reliability_curve]
BAD_PARAMS = [
    *[(lambda f=f, v=v: f(Y, P, n_bins=v), err, "n_bins") for f in BINNED
      for v, err in ((True, TypeError), (np.True_, TypeError), (2.0, TypeError), (0, ValueError), ("5", TypeError))],
    (lambda: metrics.reliability_curve(Y, P, strategy="equal"), ValueError, "strategy"),
    (lambda: metrics.reliability_curve(Y, P, strategy=None), ValueError, "strategy"),
    (lambda: metrics.brier_score(Y, P, scale_by_half="x"), ValueError, "scale_by_half"),
    (lambda: metrics.brier_score(Y, P, scale_by_half=1), ValueError, "scale_by_half"),
    (lambda: metrics.brier_score(Y, P, scale_by_half=None), ValueError, "scale_by_half"),
    (lambda: metrics.calibration_error_ci(Y, P, metric="brier", scale_by_half="x"), ValueError, "scale_by_half"),
    (lambda: metrics.calibration_error_ci(Y, P, metric="brier", scale_by_half=0), ValueError, "scale_by_half"),
    (lambda: metrics.calibration_error_ci(Y, P, confidence_level=math.nan), ValueError, "confidence_level"),
    (lambda: metrics.calibration_error_ci(Y, P, confidence_level=True), TypeError, "confidence_level"),
    (lambda: metrics.calibration_error_ci(Y, P, n_bootstrap=True), TypeError, "n_bootstrap"),
    (lambda: metrics.calibration_error_ci(Y, P, n_bins=True), TypeError, "n_bins"),
    (lambda: metrics.calibration_error_ci(Y, P, metric=metrics.expected_calibration_error, n_bins=True), TypeError,
     "n_bins"),
    (lambda: metrics.calibration_error_ci(Y, P, metric="ece", strategy="quantile"), TypeError, "strategy"),
    (lambda: metrics.calibration_error_ci(Y, P, metric="nll", n_bins=5), TypeError, "n_bins"),
    (lambda: metrics.calibration_error_ci(Y, P, metric=["ece"]), ValueError, "metric"),
    (lambda: metrics.calibration_error_ci(Y, P, random_state="seed"), ValueError, "seed"),
    (lambda: metrics.precision_split(P, P, threshold=math.nan), ValueError, "threshold"),
    (lambda: metrics.precision_split(P, P, threshold=True), TypeError, "threshold"),
    (lambda: metrics.precision_split(P, P, threshold=1.5), ValueError, "threshold"),
    (lambda: metrics.swap_analysis(Y, P, P, n_bins=True), TypeError, "n_bins"),
    (lambda: metrics.swap_analysis(Y, P, P, n_bins=0), ValueError, "n_bins"),
    (lambda: metrics.confidence_shift(Y, P, P, n_bins=True), TypeError, "n_bins"),
    (lambda: metrics.confidence_shift(Y, P, P, n_bins=-1), ValueError, "n_bins"),
    (lambda: metrics.underflow_margin("bf16", True), TypeError, "n_classes"),
    (lambda: metrics.underflow_margin("bf16", 1), ValueError, "n_classes"),
    (lambda: metrics.underflow_margin("bf16", 3, softmax="x"), ValueError, "softmax"),
    (lambda: metrics.underflow_margin("int8"), ValueError, "precision"),
    (lambda: metrics.gradient_underflow(Z, Y, "nope"), ValueError, "precision"),
    (lambda: metrics.gradient_underflow(Z, Y, True), TypeError, "precision"),
    (lambda: metrics.get_scorer(3), TypeError, "scoring"),
    (lambda: metrics.get_scorer("no_such_scorer"), ValueError, "no_such_scorer"),
]


@pytest.mark.parametrize("call, error, name", BAD_PARAMS, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD_PARAMS)])
def test_bad_parameter_is_refused_naming_it(call, error, name):
    """Before issue 17: n_bins=True gave a TypeError deep inside, confidence_level=nan a
    numpy message, scale_by_half="x" was taken as True in the bootstrap, threshold=nan was
    accepted, and metric="ece" took an undocumented strategy= (computing an ACE)."""
    with pytest.raises(error, match=name):
        call()


def test_parameters_are_checked_before_the_data():
    """A bad parameter is reported even when the data are bad too: the check comes first."""
    bad = np.full((6, 3), np.nan)
    with pytest.raises(ValueError, match="strategy"):
        metrics.reliability_curve(Y, bad, strategy="equal")
    with pytest.raises(TypeError, match="n_bins"):
        metrics.calibration_error_ci(Y, bad, n_bins=True)
    with pytest.raises(ValueError, match="seed"):
        metrics.calibration_error_ci(Y, bad, random_state="seed")


def test_check_number_and_check_option_messages():
    with pytest.raises(TypeError, match=r"^n_bins must be an instance of int, not bool\.$"):
        check_number(True, "n_bins", int, min_val=1)
    with pytest.raises(ValueError, match=r"^level == nan, must be a number \(not NaN\)\.$"):
        check_number(math.nan, "level", float, min_val=0.0)
    with pytest.raises(ValueError, match="tol == inf, must be finite"):
        check_number(math.inf, "tol", float, finite=True)
    with pytest.raises(ValueError, match=r"n == 0, must be >= 1"):  # scikit-learn's own wording
        check_number(0, "n", int, min_val=1)
    assert check_number(np.int64(3), "n", __import__("numbers").Integral, min_val=1) == 3
    assert check_option(np.True_, "flag", ("auto", True, False)) is True
    with pytest.raises(ValueError, match=r"^mode must be 'a' or 'b', got \['a'\]\.$"):
        check_option(["a"], "mode", ("a", "b"))  # unhashable: the same message


# ---------------------------------------------------------------- labels must match the columns
def test_boolean_labels_with_three_columns_are_refused():
    """Before issue 17: classes [False, True, True] (duplicated) were made up for 3 columns."""
    yb = np.array([True, False, True, False, True, True])
    for call in (lambda: metrics.expected_calibration_error(yb, P), lambda: metrics.true_class_confidence(yb, P),
                 lambda: metrics.swap_analysis(yb, P, P)):
        with pytest.raises(ValueError, match="boolean labels"):
            call()
    p2 = np.full((6, 2), 0.5)
    assert metrics.expected_calibration_error(yb, p2) == pytest.approx(0.5 - 2 / 6)  # two columns: fine


def test_narrow_integer_labels_with_many_columns_keep_distinct_classes():
    """uint8 labels with 300 columns: the classes 0..299 do not wrap around in uint8."""
    from precal._validation import encode_labels

    classes, y_idx = encode_labels(np.array([0, 255, 3], dtype=np.uint8), 300)
    assert len(np.unique(classes)) == 300 and classes[299] == 299
    assert y_idx.tolist() == [0, 255, 3]


# ---------------------------------------------------------------- row-sum tolerance of low precision
@pytest.mark.parametrize("fmt, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                        ("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_tolerance_is_the_formats_rounding_bound(fmt, dtype):
    """eps + K sigma / 2 from the format's facts, for torch, numpy and ml_dtypes arrays alike."""
    info = format_info(fmt)
    for k in (2, 10, 1000):
        expected = info.eps + k * info.smallest_subnormal / 2
        assert row_sum_tolerance(torch.zeros(1, k, dtype=dtype), k) == pytest.approx(expected, rel=1e-12)
        if fmt == "fp16":
            assert row_sum_tolerance(np.zeros((1, k), np.float16), k) == pytest.approx(expected, rel=1e-12)
        else:
            ml = {"bf16": ml_dtypes.bfloat16, "fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}
            assert row_sum_tolerance(np.zeros((1, k), ml[fmt]), k) == pytest.approx(expected, rel=1e-12)
    # float32 / float64 / lists keep scikit-learn's sqrt(eps) rule
    assert row_sum_tolerance(np.zeros((1, 3), np.float32), 3) == pytest.approx(np.sqrt(np.finfo(np.float32).eps))
    assert row_sum_tolerance([[0.5, 0.5]], 2) == 1e-6


@pytest.mark.parametrize("fmt, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                        ("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
@pytest.mark.parametrize("k", [2, 10, 300])
def test_real_low_precision_softmax_rows_are_accepted(fmt, dtype, k):
    """Softmaxes evaluated in the format (stepwise, as precal's emulator and low-precision
    kernels do; torch's own where it has one; a float32 softmax cast once) all pass."""
    torch.manual_seed(k)
    y = torch.randint(0, k, (500,))
    for scale in (0.3, 3.0, 30.0):
        z = scale * torch.randn(500, k)
        candidates = [softmax_in_format(z, fmt), torch.softmax(z, 1).to(dtype)]
        if dtype in (torch.bfloat16, torch.float16):
            candidates.append(torch.softmax(z.to(dtype), 1))
        for p in candidates:
            assert p.dtype == dtype
            assert math.isfinite(metrics.expected_calibration_error(y, p))


def test_bfloat16_rows_off_by_more_than_the_rounding_bound_are_refused():
    """Before issue 17 the bfloat16 tolerance was sqrt(2**-7) = 0.088: a row summing to 1.0625
    passed. Real bfloat16 softmax rows are within 0.0056 (stepwise) of 1; the bound is 0.0078."""
    y = np.array([0, 1])
    off = torch.tensor([[0.5, 0.5], [0.5, 0.5625]], dtype=torch.bfloat16)  # exact in bf16: sums 1, 1.0625
    with pytest.raises(ValueError, match=r"row 1 sums to 1\.0625"):
        metrics.expected_calibration_error(y, off)
    with pytest.raises(ValueError, match="bfloat16"):
        metrics.expected_calibration_error(y, off.float().numpy().astype(ml_dtypes.bfloat16))
    fine = torch.tensor([[0.5, 0.5], [0.5, 0.50390625]], dtype=torch.bfloat16)  # sum 1.0039 < 0.0078
    assert math.isfinite(metrics.expected_calibration_error(y, fine))
    half = np.array([[0.5, 0.5], [0.5, 0.52]], np.float16)  # fp16 bound 0.00098 (was sqrt(2**-10) = 0.031)
    with pytest.raises(ValueError, match="float16"):
        metrics.brier_score(y, half)


@pytest.mark.parametrize("n_bins", [np.uint8(255), np.int8(127), np.int8(15), np.int16(300)])
def test_small_numpy_integer_n_bins_work_like_python_ints(n_bins):
    """``n_bins + 1`` and the bin arithmetic in int8/uint8 overflowed (an IndexError or a
    negative size); the checked value is used as a Python int."""
    gen = np.random.default_rng(1)
    p = gen.dirichlet(np.ones(3), 400)
    y = gen.integers(0, 3, 400)
    for f in (*BINNED[:4], metrics.debiased_calibration_error):
        assert f(y, p, n_bins=n_bins) == f(y, p, n_bins=int(n_bins)), f.__name__
    curve, ref = metrics.reliability_curve(y, p, n_bins=n_bins), metrics.reliability_curve(y, p, n_bins=int(n_bins))
    for name in ("bin_edges", "counts", "mean_confidence", "accuracy"):
        np.testing.assert_array_equal(getattr(curve, name), getattr(ref, name))
    ci = metrics.calibration_error_ci(y, p, n_bins=n_bins, n_bootstrap=10, random_state=0)
    assert ci == metrics.calibration_error_ci(y, p, n_bins=int(n_bins), n_bootstrap=10, random_state=0)
    assert metrics.CalibrationState(3, n_bins).update(y, p).ece() == metrics.CalibrationState(3, int(n_bins)).update(
        y, p).ece()

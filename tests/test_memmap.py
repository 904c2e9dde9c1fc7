"""Memory-bounded fitting and metrics on memory-mapped files (issue #7, item 2).

TemperatureScaling, PACSCalibrator and the calibration metrics read a 2-D ``numpy.memmap``
block by block from its file (precal._chunks.FileRows): the results equal the in-memory
ones, and a child process fitting a file of several hundred MB keeps its peak resident
memory far below the file's size.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from precal import PACSCalibrator, TemperatureScaling
from precal._chunks import FileRows, file_rows, row_blocks, take_rows
from precal._numerics import softmax
from precal._validation import check_logits, check_probabilities
from precal.calibration.temperature import fit_temperature
from precal.metrics import (
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

ROOT = Path(__file__).resolve().parents[1]

METRICS = [
    expected_calibration_error,
    adaptive_calibration_error,
    maximum_calibration_error,
    classwise_calibration_error,
    brier_score,
    negative_log_likelihood,
]


def heteroscedastic(n=20_000, k=30, seed=0):
    """float32 logits whose over-confidence grows with their norm (PACS's lambda > 0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    scale = rng.uniform(0.5, 4.0, size=(n, 1))
    z = scale * 2.0 * (2.0 * np.eye(k)[y] + rng.normal(size=(n, k)))
    return z.astype(np.float32), y


def save_memmap(path, arr, *, order="C"):
    """``arr`` written to ``path`` (.npy) and opened again read-only as a memmap."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape, fortran_order=order == "F")
    out[:] = arr
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module")
def logits_file(tmp_path_factory):
    z, y = heteroscedastic()
    mm = save_memmap(tmp_path_factory.mktemp("mm") / "z.npy", z)
    return z, y, mm


@pytest.fixture(scope="module")
def proba_file(tmp_path_factory):
    z, y = heteroscedastic(n=30_000, k=40, seed=1)
    p = softmax(z).astype(np.float32)
    mm = save_memmap(tmp_path_factory.mktemp("mm") / "p.npy", p)
    return p, y, mm


# ----------------------------------------------------------------------------- which arrays stream
def test_file_rows_reads_exactly_the_mapped_rows(tmp_path):
    data = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    raw = np.memmap(tmp_path / "raw.bin", dtype=np.float32, mode="w+", shape=(7, 5), offset=12)
    raw[:] = data
    raw.flush()
    for view in (raw, raw[2:], raw[2:6][1:], np.asarray(raw)[3:]):
        rows = file_rows(view)
        assert isinstance(rows, FileRows) and rows.shape == view.shape
        got = np.concatenate([b.copy() for _, b in rows.blocks(2)])
        assert_array_equal(got, view)
        assert_array_equal(rows.take(np.array([0, 2])), view[[0, 2]])
    # blocks never exceed max_block_elements, whatever the caller asks for
    small = FileRows(np.asarray(raw), raw.base, max_block_elements=10)
    assert [b.shape[0] for _, b in small.blocks(100)] == [2, 2, 2, 1]
    # a float64 work dtype reads float32 rows as float64 (the overflow-safe path)
    wide = file_rows(raw).with_work_dtype(np.float64)
    assert all(b.dtype == np.float64 for _, b in wide.blocks(3)) and wide.take(np.array([1])).dtype == np.float64


def test_file_rows_refuses_an_array_outside_its_mapping(tmp_path):
    mm = save_memmap(tmp_path / "a.npy", np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="inside the given mapping"):
        FileRows(np.ones((4, 3), np.float32), mm.base)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtypes_stream_and_float16_is_upcast(tmp_path, dtype):
    data = np.linspace(-3, 3, 24, dtype=dtype).reshape(6, 4)
    rows = file_rows(save_memmap(tmp_path / "d.npy", data))
    assert rows is not None
    blocks = [b.copy() for _, b in rows.blocks(4)]  # a block lives until the next one is read
    assert blocks[0].dtype == (np.float32 if dtype == np.float16 else dtype)
    assert_array_equal(np.concatenate(blocks), data.astype(blocks[0].dtype))


def test_arrays_that_do_not_stream(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    mm = save_memmap(tmp_path / "c.npy", data)
    assert file_rows(data) is None  # in memory
    assert file_rows(np.array(mm)) is None  # a copy
    assert file_rows(mm[:, :2]) is None  # rows not contiguous in the file
    assert file_rows(mm[:, 0]) is None  # 1-D
    assert file_rows(save_memmap(tmp_path / "f.npy", data, order="F")) is None  # Fortran order
    assert file_rows(np.load(tmp_path / "c.npy", mmap_mode="c")) is None  # copy-on-write: may differ from the file
    assert file_rows(save_memmap(tmp_path / "i.npy", data.astype(np.int32))) is None
    assert file_rows(save_memmap(tmp_path / "e.npy", np.zeros((0, 3), np.float32))) is None


def test_check_logits_streams_only_when_asked(logits_file):
    _, _, mm = logits_file
    assert isinstance(check_logits(mm, stream=True), FileRows)
    assert isinstance(check_logits(mm), np.ndarray)
    assert isinstance(check_logits(mm[:, :1], stream=True), np.ndarray)  # one column: n floats, read as usual


def test_row_blocks_and_take_rows_agree_across_sources(logits_file):
    import torch

    z, _, mm = logits_file
    rows = file_rows(mm)
    index = np.array([0, 5, 19_999])
    for source in (z, torch.from_numpy(z), rows):
        starts = [s for s, _ in row_blocks(source, 7000)]
        assert starts == [0, 7000, 14_000]
        assert_array_equal(np.asarray(take_rows(source, index)), z[index])


# ----------------------------------------------------------------------------- equal to in-memory
@pytest.mark.parametrize("factory, attrs", [
    (TemperatureScaling, ("temperature_", "n_iter_")),
    (PACSCalibrator, ("temperature_", "lambda_", "temperature_scaling_")),
    (lambda: PACSCalibrator(risk="norm", norm=1), ("temperature_", "lambda_", "temperature_scaling_")),
])
def test_fit_on_memmap_equals_in_memory(logits_file, factory, attrs):
    z, y, mm = logits_file
    ours, ref = factory().fit(mm, y), factory().fit(z, y)
    for name in attrs:
        assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, err_msg=name)
    if hasattr(ref, "lambda_"):
        assert ref.lambda_ > 0  # the data exercise the adaptive part
    assert_allclose(ours.predict_proba(mm[:500]), ref.predict_proba(z[:500]), atol=1e-6)


def test_fit_on_memmap_with_sample_weight_and_a_row_slice(logits_file):
    z, y, mm = logits_file
    w = np.random.default_rng(3).uniform(0.2, 2.0, size=len(y))
    for factory in (TemperatureScaling, PACSCalibrator):
        ours = factory().fit(mm[1000:], y[1000:], sample_weight=w[1000:])
        ref = factory().fit(z[1000:], y[1000:], sample_weight=w[1000:])
        assert_allclose(ours.temperature_, ref.temperature_, rtol=1e-6)


def test_fit_temperature_streams_a_memmap_past_the_warm_start(tmp_path):
    """More than 16 384 rows: the subsample warm start reads its rows from the file."""
    z, y = heteroscedastic(n=40_000, k=8, seed=5)
    mm = save_memmap(tmp_path / "z.npy", z)
    assert_allclose(fit_temperature(mm, y).temperature, fit_temperature(z, y).temperature, rtol=1e-6)


def test_fortran_ordered_and_float16_memmaps_fit_like_their_arrays(tmp_path):
    z, y = heteroscedastic(n=3000, k=6)
    fortran = save_memmap(tmp_path / "f.npy", z, order="F")  # read through the mapping
    assert_allclose(TemperatureScaling().fit(fortran, y).temperature_, TemperatureScaling().fit(z, y).temperature_,
                    rtol=1e-6)
    half = save_memmap(tmp_path / "h.npy", z.astype(np.float16))  # streamed, upcast block by block
    for factory in (TemperatureScaling, PACSCalibrator):
        assert_allclose(factory().fit(half, y).temperature_, factory().fit(z.astype(np.float16), y).temperature_,
                        rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
def test_metrics_on_memmap_equal_in_memory(proba_file, metric):
    p, y, mm = proba_file
    assert_allclose(metric(y, mm), metric(y, p), rtol=1e-6, atol=1e-12)
    assert_allclose(metric(y[5000:], mm[5000:]), metric(y[5000:], p[5000:]), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_on_memmap_equals_in_memory(proba_file, strategy):
    p, y, mm = proba_file
    ours, ref = reliability_curve(y, mm, strategy=strategy), reliability_curve(y, p, strategy=strategy)
    assert_array_equal(ours.counts, ref.counts)
    assert_allclose(ours.bin_edges, ref.bin_edges)
    assert_allclose(ours.accuracy, ref.accuracy, rtol=1e-12)
    assert_allclose(ours.mean_confidence, ref.mean_confidence, rtol=1e-12)


def test_metrics_on_float16_memmap_equal_float16_array(tmp_path):
    z, y = heteroscedastic(n=4000, k=5)
    p16 = softmax(z).astype(np.float16)
    mm = save_memmap(tmp_path / "p16.npy", p16)
    for metric in METRICS:
        assert_allclose(metric(y, mm), metric(y, p16), rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- the mapping, not the path
def _fits_and_metrics(z_mm, p_mm, y):
    """Everything that streams a memmap: two fits and the metrics (with their validation)."""
    pacs = PACSCalibrator().fit(z_mm, y)
    return {
        "ts": TemperatureScaling().fit(z_mm, y).temperature_,
        "pacs": (pacs.temperature_, pacs.lambda_),
        **{f.__name__: f(y, p_mm) for f in METRICS},
    }


@pytest.mark.parametrize("change", ["replace", "delete"])
def test_streaming_reads_the_mapping_not_the_path(tmp_path, change):
    """Issue 17: a file replaced or deleted after np.load(..., mmap_mode="r") must not change
    (or break) what the fits and the metrics read: the mapping holds the original data."""
    z, y = heteroscedastic(n=3000, k=6, seed=2)
    p = softmax(z).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "p.npy", p)
    z_mm = np.load(tmp_path / "z.npy", mmap_mode="r")
    p_mm = np.load(tmp_path / "p.npy", mmap_mode="r")
    expected = _fits_and_metrics(z, p, y)
    for name in ("z.npy", "p.npy"):
        if change == "replace":  # a new file under the old name: other data, same shape
            other = np.load(tmp_path / name)[::-1] * 0.5 if name == "p.npy" else 40.0 * np.load(tmp_path / name)
            other = other / other.sum(axis=1, keepdims=True) if name == "p.npy" else other
            np.save(tmp_path / ("new_" + name), np.ascontiguousarray(other, dtype=np.float32))
            os.replace(tmp_path / ("new_" + name), tmp_path / name)
        else:
            os.remove(tmp_path / name)
    got = _fits_and_metrics(z_mm, p_mm, y)
    for key, value in expected.items():
        assert_allclose(got[key], value, rtol=1e-6, atol=1e-12, err_msg=key)
    # the whole memmap still reads as the original, through the pages released by the passes
    assert_array_equal(np.asarray(z_mm), z)
    assert_array_equal(np.asarray(p_mm), p)


def test_streaming_sees_writes_made_through_a_shared_mapping(tmp_path):
    """Rows written through an ``r+`` mapping (not yet flushed) are what a fit reads, and
    releasing the pages after a block does not lose them."""
    z, y = heteroscedastic(n=2000, k=5, seed=4)
    np.save(tmp_path / "z.npy", np.zeros_like(z))
    mm = np.load(tmp_path / "z.npy", mmap_mode="r+")
    mm[:] = z  # dirty shared pages, not flushed
    assert_allclose(TemperatureScaling().fit(mm, y).temperature_, TemperatureScaling().fit(z, y).temperature_,
                    rtol=1e-6)
    assert_array_equal(np.asarray(mm), z)
    del mm
    assert_array_equal(np.load(tmp_path / "z.npy"), z)  # written back to the file


# ----------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("bad, match", [(np.nan, "contains NaN"), (np.inf, "infinity")])
def test_non_finite_logits_in_a_memmap_are_refused(tmp_path, bad, match):
    z, y = heteroscedastic(n=50_000, k=30)
    z[47_123, 4] = bad  # far past the first block
    mm = save_memmap(tmp_path / "bad.npy", z)
    for factory in (TemperatureScaling, PACSCalibrator):
        with pytest.raises(ValueError, match=match):
            factory().fit(mm, y)


def test_bad_probability_memmaps_get_the_in_memory_messages(tmp_path):
    z, y = heteroscedastic(n=50_000, k=30)
    p = softmax(z).astype(np.float32)
    for edit, match in (
        (lambda a: a.__setitem__((48_000, 0), np.nan), "contains NaN"),
        (lambda a: a.__setitem__((48_000, 0), 1.5), r"\[0, 1\]"),
        (lambda a: a.__setitem__((48_000, slice(None)), a[48_000] * 0.5), "row 48000 sums to"),
    ):
        bad = p.copy()
        edit(bad)
        mm = save_memmap(tmp_path / "bad.npy", bad)
        with pytest.raises(ValueError, match=match) as streamed:
            expected_calibration_error(y, mm)
        with pytest.raises(ValueError) as in_memory:
            expected_calibration_error(y, bad)
        assert str(streamed.value) == str(in_memory.value)
        del mm


def test_check_probabilities_single_column_memmap_is_refused(tmp_path):
    mm = save_memmap(tmp_path / "one.npy", np.ones((5, 1), np.float32))
    with pytest.raises(ValueError, match="single column"):
        check_probabilities(mm, stream=True)


# ----------------------------------------------------------------------------- peak memory
_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from precal import PACSCalibrator, TemperatureScaling
    from precal.metrics import adaptive_calibration_error, classwise_calibration_error, expected_calibration_error

    def status_mb(key):  # VmRSS: resident now; VmHWM: highest resident since the last reset
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    def reset_peak():  # VmHWM := VmRSS (Linux clear_refs); ru_maxrss cannot be reset and, after
        with open("/proc/self/clear_refs", "w") as f:  # fork/exec, starts at the parent's peak
            f.write("5")
        return status_mb("VmRSS")

    logits_path, proba_path, labels_path = sys.argv[1:4]
    z = np.load(logits_path, mmap_mode="r")
    p = np.load(proba_path, mmap_mode="r")
    y = np.load(labels_path)
    out = {"file_mb": z.nbytes / 2**20}
    TemperatureScaling().fit(z[:100], y[:100])  # warm up lazy imports and allocator pools
    before = reset_peak()
    out["temperature"] = TemperatureScaling().fit(z, y).temperature_
    pacs = PACSCalibrator().fit(z, y)
    out["pacs"] = [pacs.temperature_, pacs.lambda_]
    out["metrics"] = [f(y, p) for f in (expected_calibration_error, adaptive_calibration_error,
                                        classwise_calibration_error)]
    out["growth_mb"] = status_mb("VmHWM") - before
    # control: the same file read through the mapping counts in full, so the measure is honest
    before = reset_peak()
    out["checksum"] = float(np.asarray(z).sum(dtype=np.float64))
    out["mapped_growth_mb"] = status_mb("VmHWM") - before
    print(json.dumps(out))
    """
)


def _can_reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _can_reset_peak_rss(),
                    reason="measures peak resident memory with /proc/self/clear_refs (Linux)")
def test_peak_memory_stays_far_below_the_file_size(tmp_path):
    n, k = 160_000, 1000  # 610 MiB of float32 logits, as many of probabilities
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, size=n)
    np.save(tmp_path / "y.npy", y)
    z = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32, shape=(n, k))
    p = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(n, k))
    for start in range(0, n, 5000):
        stop = min(start + 5000, n)
        block = rng.standard_normal((stop - start, k), dtype=np.float32)
        block[np.arange(stop - start), y[start:stop]] += 3.0
        block *= rng.uniform(2.0, 8.0, size=(stop - start, 1)).astype(np.float32)
        z[start:stop] = block
        p[start:stop] = softmax(block)
    z.flush()
    p.flush()
    del z, p
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "z.npy"), str(tmp_path / "p.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["temperature"] > 1.0 and out["pacs"][1] > 0.0
    assert out["mapped_growth_mb"] > 0.8 * out["file_mb"], out  # the measure sees mapped pages
    assert out["growth_mb"] < 0.3 * out["file_mb"], out  # the streamed fits and metrics do not hold the file

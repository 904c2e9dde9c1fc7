"""CalibrationState: mergeable sufficient statistics equal to the metric functions (issue 18, item 2)."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from precal._numerics import softmax
from precal.metrics import (
    CalibrationState,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

ROOT = Path(__file__).resolve().parents[2]


def _data(seed, n, k, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = 2.0 * rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    return y, softmax(logits).astype(dtype)


def _check_equal(state, y, p, n_bins=15, labels=None):
    kw = {"n_bins": n_bins, "labels": labels}
    assert state.n_samples == len(y)
    assert_allclose(state.ece(), expected_calibration_error(y, p, **kw), rtol=0, atol=1e-12)
    assert_allclose(state.mce(), maximum_calibration_error(y, p, **kw), rtol=0, atol=1e-12)
    assert_allclose(state.classwise_ece(), classwise_calibration_error(y, p, **kw), rtol=0, atol=1e-12)
    assert_allclose(state.nll(), negative_log_likelihood(y, p, labels=labels), rtol=0, atol=1e-12)
    assert_allclose(state.brier(), brier_score(y, p, labels=labels), rtol=0, atol=1e-12)
    assert_allclose(state.brier(scale_by_half=True), brier_score(y, p, labels=labels, scale_by_half=True),
                    rtol=0, atol=1e-12)
    pred = np.argmax(np.asarray(p), axis=1) if np.asarray(p).ndim == 2 else (np.asarray(p) > 0.5).astype(int)
    if labels is None:
        assert_allclose(state.accuracy(), np.mean(pred == y), rtol=0, atol=1e-12)
    curve, ref = state.reliability_curve(), reliability_curve(y, p, n_bins=n_bins, labels=labels)
    np.testing.assert_array_equal(curve.counts, ref.counts)
    assert_allclose(curve.mean_confidence, ref.mean_confidence, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 400),
    k=st.integers(2, 7),
    n_bins=st.integers(1, 30),
    cuts=st.lists(st.floats(0, 1), max_size=6),
    float32=st.booleans(),
)
def test_merged_chunks_equal_the_metrics_on_the_concatenation(seed, n, k, n_bins, cuts, float32):
    y, p = _data(seed, n, k, np.float32 if float32 else np.float64)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    states = [CalibrationState(k, n_bins).update(y[a:b], p[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    total = states[0]
    for s in states[1:]:
        total = total + s
    _check_equal(total, y, p, n_bins)
    # merge in place and through the flat vector give the same state
    merged = CalibrationState(k, n_bins)
    for s in states:
        merged.merge(s)
    vec = sum(s.to_tensor() for s in states)
    assert_allclose(CalibrationState.from_tensor(vec, k, n_bins).to_numpy(), merged.to_numpy(), rtol=0, atol=1e-12)
    assert_allclose(merged.to_numpy(), total.to_numpy(), rtol=0, atol=0)


def test_one_update_is_the_metric_exactly_up_to_rounding_and_binary_1d():
    y, p = _data(1, 2000, 2)
    _check_equal(CalibrationState(2).update(y, p[:, 1]), y, p[:, 1])


def test_torch_input_and_exact_one_confidences():
    y, p = _data(2, 500, 4, np.float32)
    p[:10] = np.eye(4, dtype=np.float32)[y[:10]]  # confidence exactly 1.0 lands in the last bin
    state = CalibrationState(4).update(torch.from_numpy(y), torch.from_numpy(p))
    _check_equal(state, y, p)
    assert state.counts[-1] >= 10


def test_string_labels_need_labels():
    y, p = _data(3, 100, 3)
    names = np.array(["cat", "dog", "eel"])
    state = CalibrationState(3, labels=names).update(names[y[:50]], p[:50]).update(names[y[50:]], p[50:])
    _check_equal(state, names[y], p, labels=names)
    with pytest.raises(ValueError, match="labels=..."):
        CalibrationState(3).update(names[y], p)
    with pytest.raises(ValueError, match="labels=..."):
        CalibrationState(3).update(y + 1, p)  # 1..3 are not the column indices 0..2


def test_bad_input_and_parameters():
    y, p = _data(4, 50, 3)
    with pytest.raises(ValueError, match="3 columns"):
        CalibrationState(4).update(y, p)
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationState(3, n_bins=0)
    with pytest.raises(TypeError, match="n_classes"):
        CalibrationState(True)
    with pytest.raises(ValueError, match="n_classes"):
        CalibrationState(1)
    bad = p.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CalibrationState(3).update(y, bad)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        CalibrationState(3).update(y, 5 * p)
    with pytest.raises(ValueError, match="no samples"):
        CalibrationState(3).ece()
    with pytest.raises(ValueError, match="n_bins=10"):
        CalibrationState(3).merge(CalibrationState(3, n_bins=10))
    with pytest.raises(ValueError, match="labels"):
        CalibrationState(3).merge(CalibrationState(3, labels=["a", "b", "c"]))
    with pytest.raises(TypeError):
        CalibrationState(3).merge(object())
    with pytest.raises(ValueError, match="length"):
        CalibrationState.from_tensor(torch.zeros(7), 3)
    vec = CalibrationState(3).update(y, p).to_tensor()
    vec[0] += 5
    with pytest.raises(ValueError, match="do not add up"):
        CalibrationState.from_tensor(vec, 3)
    assert "n_samples=50" in repr(CalibrationState(3).update(y, p))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_docs_all_reduce_example_runs_on_two_gloo_processes(tmp_path):
    page = (ROOT / "docs" / "metrics.md").read_text()
    section = page.split("## Metrics over data spread across processes", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "all_reduce_example.py"
    script.write_text(code)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    ece, single = map(float, re.search(r"ECE (\S+) single-process (\S+)", out.stdout).groups())
    nll, brier, n = re.search(r"NLL (\S+) Brier (\S+) n (\d+)", out.stdout).groups()
    assert int(n) == 5000
    assert abs(ece - single) <= 1e-12
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=5000)
    prob = torch.softmax(torch.from_numpy(3.0 * rng.normal(size=(5000, 10))), dim=1).numpy()
    assert abs(ece - expected_calibration_error(y, prob)) <= 1e-12
    assert abs(float(nll) - negative_log_likelihood(y, prob)) <= 1e-12
    assert abs(float(brier) - brier_score(y, prob)) <= 1e-12

"""precal.plotting: headless figures whose drawn numbers are the metrics' numbers."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from precal._numerics import softmax  # noqa: E402
from precal.emulate import round_logits  # noqa: E402
from precal.metrics import expected_calibration_error, reliability_curve, swap_analysis  # noqa: E402
from precal.plotting import precision_split_diagram, reliability_diagram, swap_histogram  # noqa: E402

from .conftest import make_logits  # noqa: E402


@pytest.fixture
def data():
    z, y = make_logits(n=800, k=5)
    return y, softmax(z), softmax(round_logits(z.astype(np.float32), "fp8_e4m3").astype(np.float64))


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_reliability_diagram_draws_the_metric_and_saves_png(data, tmp_path):
    y, p, _ = data
    ax = reliability_diagram(y, p, n_bins=10, label="fp32", path=tmp_path / "rel.png")
    assert _is_png(tmp_path / "rel.png")
    curve = reliability_curve(y, p, n_bins=10)
    heights = sorted(bar.get_height() for bar in ax.patches)
    assert np.allclose(heights, sorted(curve.accuracy[curve.counts > 0]))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"fp32: ECE {expected_calibration_error(y, p, n_bins=10):.3f}" in legend
    assert len(ax.figure.axes) == 2  # diagram + histogram


def test_reliability_diagram_into_given_axes(data):
    from matplotlib.figure import Figure

    y, p, _ = data
    fig = Figure()
    ax = fig.subplots()
    assert reliability_diagram(y, p, ax=ax) is ax
    assert len(fig.axes) == 1


def test_precision_split_diagram_overlays_two_precisions(data, tmp_path):
    y, p, q = data
    ax = precision_split_diagram(y, p, q, names=("fp32", "fp8_e4m3"), path=tmp_path / "split.png")
    assert _is_png(tmp_path / "split.png")
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "fp32: ECE" in legend and "fp8_e4m3: ECE" in legend


def test_swap_histogram_from_inputs_or_result(data, tmp_path):
    y, p, q = data
    result = swap_analysis(y, p, q, n_bins=10)
    a = swap_histogram(result, path=tmp_path / "swap.png")
    b = swap_histogram((y, p, q), n_bins=10)
    assert _is_png(tmp_path / "swap.png")
    assert a.get_legend().get_texts()[0].get_text() == b.get_legend().get_texts()[0].get_text()
    swap_histogram(result, ax=a, label="again")  # overlay on the same axes
    assert len(a.get_legend().get_texts()) == 2


def test_bad_input_is_refused_before_drawing(data):
    y, p, _ = data
    with pytest.raises(ValueError, match="probabilities"):
        reliability_diagram(y, np.log(p))

"""precal.report: the evaluation behind ``precal evaluate`` and its renderings."""

import json
import re
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from precal import PACSCalibrator, TemperatureScaling, load_calibrator
from precal._numerics import softmax
from precal.calibration import precision_epsilon
from precal.emulate import round_logits
from precal.metrics import (
    adaptive_calibration_error,
    brier_score,
    calibration_error_ci,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    precision_split,
    smooth_calibration_error,
    swap_analysis,
)
from precal.report import (
    AVAILABLE_METRICS,
    INTERVALS,
    METRICS,
    evaluate,
    format_text,
    make_calibrator,
    metric_table,
    require_matplotlib,
    to_html,
    to_markdown,
    write_report,
)
from tests.conftest import make_logits


@pytest.fixture(scope="module")
def data():
    z, y = make_logits(n=240, k=3, scale=3.0, seed=1)
    return z.astype(np.float32), y


@pytest.fixture(scope="module")
def ev(data):
    z, y = data
    return evaluate(z, y, calibrators=["ts", "pacs"], precision="fp8_e4m3", cv=3, n_bootstrap=30, random_state=2,
                    fit_full=True, inputs={"logits": "synthetic"})


def _probs(ev, method, logits):
    return ev.probabilities[f"{method} ({logits})"]


def test_rows_cover_uncalibrated_at_both_precisions_and_each_calibrator(ev):
    assert [(r["method"], r["logits"]) for r in ev.rows] == [
        ("uncalibrated", "as given"), ("uncalibrated", "fp8_e4m3"),
        ("temperature scaling", "fp8_e4m3"), ("PACS", "fp8_e4m3")]
    for row in ev.rows:
        assert list(row["metrics"]) == list(METRICS)
        for m in row["metrics"].values():
            # bias-corrected (ECE, ACE, MCE) or percentile around an unbiased mean: the estimate is inside
            assert m["low"] <= m["estimate"] <= m["high"]


def test_uncalibrated_rows_are_the_softmax_of_given_and_rounded_logits(ev, data):
    z, y = data
    assert_allclose(_probs(ev, "uncalibrated", "as given"), softmax(z.astype(np.float64)))
    rounded = round_logits(z, "fp8_e4m3").astype(np.float64)
    assert_allclose(_probs(ev, "uncalibrated", "fp8_e4m3"), softmax(rounded))


def test_metric_estimates_equal_the_library_metrics(ev, data):
    _, y = data
    fns = {"ece": expected_calibration_error, "ace": adaptive_calibration_error, "mce": maximum_calibration_error,
           "nll": negative_log_likelihood, "brier": brier_score}
    for row in ev.rows:
        p = _probs(ev, row["method"], row["logits"])
        assert row["metrics"]["accuracy"]["estimate"] == pytest.approx(np.mean(p.argmax(axis=1) == y))
        for name, fn in fns.items():
            assert row["metrics"][name]["plugin"] == pytest.approx(fn(y, p))
            if name in ("nll", "brier"):  # unbiased means: the plug-in is the estimate
                assert row["metrics"][name]["estimate"] == row["metrics"][name]["plugin"]


def test_intervals_are_the_library_bootstrap_with_the_seed(ev, data):
    _, y = data
    p = _probs(ev, "PACS", "fp8_e4m3")
    ci = calibration_error_ci(y, p, metric="ace", n_bootstrap=30, random_state=2, n_bins=15)
    got = ev.rows[3]["metrics"]["ace"]
    assert (got["estimate"], got["low"], got["high"]) == pytest.approx((ci.estimate, ci.low, ci.high))


def test_calibrated_rows_are_out_of_fold_as_cross_val_predict(ev, data):
    z, y = data
    rounded = round_logits(z, "fp8_e4m3").astype(np.float64)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=2)
    expected = cross_val_predict(TemperatureScaling(), rounded, y, cv=cv, method="predict_proba")
    assert_allclose(_probs(ev, "temperature scaling", "fp8_e4m3"), expected, rtol=1e-10, atol=1e-12)
    expected = cross_val_predict(PACSCalibrator(precision="fp8_e4m3"), rounded, y, cv=cv, method="predict_proba")
    assert_allclose(_probs(ev, "PACS", "fp8_e4m3"), expected, rtol=1e-8, atol=1e-10)


def test_pacs_gets_the_precision_and_fitted_parameters_are_per_fold(ev):
    assert ev.settings["pacs_precision"] == "fp8_e4m3"
    assert ev.fitted["pacs"]["per_fold"]["epsilon_"] == [precision_epsilon("fp8_e4m3")] * 3
    assert len(ev.fitted["ts"]["per_fold"]["temperature_"]) == 3
    assert ev.fitted["pacs"]["params"]["precision"] == "fp8_e4m3"


def test_calibrators_fitted_on_all_rows_round_trip_through_json(ev, data):
    z, y = data
    rounded = round_logits(z, "fp8_e4m3").astype(np.float64)
    ts = load_calibrator(json.loads(json.dumps(ev.calibrators["ts"])))
    assert ts.temperature_ == pytest.approx(TemperatureScaling().fit(rounded, y).temperature_)


def test_precision_diagnostics_are_the_library_diagnostics(ev, data):
    z, y = data
    p_ref = softmax(z.astype(np.float64))
    p_low = softmax(round_logits(z, "fp8_e4m3").astype(np.float64))
    diag = {d["name"]: d["value"] for d in ev.diagnostics}
    swaps = swap_analysis(y, p_ref, p_low)
    assert diag["share swapped"] == swaps.share_swapped
    assert diag["right -> wrong"] == swaps.n_right_to_wrong
    assert diag["mean |confidence gap|"] == pytest.approx(precision_split(p_ref, p_low).mean_abs_gap)
    assert "softmax in fp8_e4m3: share at 1.0" in diag  # a float format: the in-format softmax too
    assert sum(b["count"] for b in ev.confidence_shift) == len(y)


def test_integer_precision_has_no_in_format_softmax(data):
    z, y = data
    ev = evaluate(z, y, calibrators=[], precision="int8", cv=2, n_bootstrap=0)
    names = [d["name"] for d in ev.diagnostics]
    assert "share swapped" in names and not any("softmax in" in n for n in names)


def test_precision_names_are_canonical(data):
    z, y = data
    ev = evaluate(z, y, calibrators=["pacs"], precision="BF16", cv=2, n_bootstrap=0)
    assert ev.settings["precision"] == ev.settings["pacs_precision"] == "bf16"
    assert ev.fitted["pacs"]["params"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="bf17"):
        evaluate(z, y, precision="bf17", cv=2)


def test_without_precision_logits_are_used_as_given(data):
    z, y = data
    ev = evaluate(z, y, calibrators=["ts"], cv=2, n_bootstrap=0)
    assert [r["logits"] for r in ev.rows] == ["as given", "as given"]
    assert ev.diagnostics is None and ev.settings["pacs_precision"] == "fp32"
    assert all(m["low"] is None for m in ev.rows[1]["metrics"].values())
    assert "logits" not in metric_table(ev)[0]  # one value for every row: no column
    assert "[" not in format_text(ev).split("\n\n")[1]  # no intervals


def test_evaluation_is_deterministic_for_a_seed(data):
    z, y = data
    a = evaluate(z, y, calibrators=["ts"], cv=2, n_bootstrap=10, random_state=5).to_dict()
    b = evaluate(z, y, calibrators=["ts"], cv=2, n_bootstrap=10, random_state=5).to_dict()
    for d in (a, b):
        d["fitted"]["ts"].pop("fit_seconds")
    assert a == b


def test_bad_arguments_are_value_errors(data):
    z, y = data
    with pytest.raises(ValueError, match="cv must be an integer >= 2"):
        evaluate(z, y, cv=1)
    with pytest.raises(ValueError, match="n_bootstrap"):
        evaluate(z, y, n_bootstrap=-1)
    with pytest.raises(ValueError, match="Unknown calibrator 'platt'"):
        evaluate(z, y, calibrators=["platt"])
    with pytest.raises(ValueError, match="at least 5 samples"):
        evaluate(z[:3], y[:3], cv=5)
    with pytest.raises(ValueError, match="overflows"):
        evaluate(np.array([[1e5, 0.0], [0.0, 1e5]] * 4), np.array([0, 1] * 4), precision="fp16", cv=2)
    with pytest.raises(ValueError, match="Unknown calibrator"):
        make_calibrator("nope")


def test_json_form_is_strict_json(ev):
    text = json.dumps(ev.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["settings"]["precision"] == "fp8_e4m3" and len(back["rows"]) == 4
    assert back["inputs"]["n_samples"] == 240 and back["inputs"]["logits"] == "synthetic"


def test_text_table_has_one_line_per_row_with_intervals(ev):
    text = format_text(ev)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    body = lines[header + 2: header + 2 + len(ev.rows)]
    assert [line.split()[0] for line in body] == ["uncalibrated", "uncalibrated", "temperature", "PACS"]
    assert all(re.search(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", line) for line in body)
    assert "Precision diagnostics" in text and "share swapped" in text


def test_markdown_and_html_hold_the_same_tables(ev):
    md, page = to_markdown(ev, {"reliability": "reliability.png"}), to_html(ev, {"reliability": b"\x89PNG"})
    for row in metric_table(ev):
        assert "| " + " | ".join(row.values()) + " |" in md
        assert all(f"<td>{v}</td>" in page for v in row.values())
    assert "![reliability](reliability.png)" in md
    assert "data:image/png;base64,iVBORw==" in page


def test_write_report_writes_a_self_contained_page(ev, tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(ev, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["calibrators.json", "precision_split.png", "reliability.png", "report.html", "report.md",
                     "results.json", "swaps.png"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing outside the file
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == json.loads(json.dumps(ev.to_dict()))
    for png in ("reliability", "precision_split", "swaps"):
        assert (tmp_path / "out" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'precal\[plot\]'"):
        require_matplotlib()


# ------------------------------------------------------------------------- bias-corrected intervals
def test_binned_metrics_are_bias_corrected_and_said_so(ev, data):
    _, y = data
    assert ev.settings["intervals"] == {"accuracy": "percentile", "ece": "bias_corrected", "ace": "bias_corrected",
                                        "mce": "bias_corrected", "nll": "percentile", "brier": "percentile"}
    p = _probs(ev, "temperature scaling", "fp8_e4m3")
    for metric in ("ece", "mce"):
        ci = calibration_error_ci(y, p, metric=metric, n_bootstrap=30, random_state=2, n_bins=15)
        got = ev.rows[2]["metrics"][metric]
        assert ci.method == "bias_corrected"
        assert (got["estimate"], got["low"], got["high"], got["plugin"]) == pytest.approx(
            (ci.estimate, ci.low, ci.high, ci.plugin))
    text = format_text(ev)
    assert "bias-corrected" in text
    assert "bias-corrected for ECE, ACE and MCE" in to_html(ev)


def test_issue_case_estimates_lie_inside_their_intervals():
    """The issue: "ECE 0.63 [0.63, 1.22], MCE 3.98 [5.00, 26.47]" on a well calibrated model."""
    rng = np.random.default_rng(0)
    z = 2.5 * rng.normal(size=(5000, 10))
    p = softmax(z)
    y = np.minimum((p.cumsum(axis=1) < rng.uniform(size=(5000, 1))).sum(axis=1), 9)  # labels drawn from p
    ev = evaluate(z, y, calibrators=[], cv=2, n_bootstrap=100, random_state=0)
    for metric, values in ev.rows[0]["metrics"].items():
        assert values["low"] <= values["estimate"] <= values["high"], (metric, values)
    for cell in metric_table(ev)[0].values():
        if "[" in cell:
            est, rest = cell.split(" [")
            low, high = (float(v) for v in rest.rstrip("]").split(", "))
            assert low <= float(est) <= high, cell


def test_without_bootstrap_every_estimate_is_the_plugin(data):
    z, y = data
    ev = evaluate(z, y, calibrators=[], cv=2, n_bootstrap=0)
    assert ev.settings["intervals"] is None
    for values in ev.rows[0]["metrics"].values():
        assert values["estimate"] == values["plugin"] and values["low"] is None
    assert "plug-in estimates" in format_text(ev)


# ------------------------------------------------------------------------- ets, toplabel, auto
@pytest.fixture(scope="module")
def ev_new(data):
    z, y = data
    return evaluate(z, y, calibrators=["ets", "toplabel", "auto"], cv=3, n_bootstrap=0, random_state=4,
                    fit_full=True)


def test_new_calibrators_by_short_name():
    from precal.calibration import (
        AutoCalibrator,
        EnsembleTemperatureScaling,
        StructuredMatrixScaling,
        TopLabelCalibrator,
    )

    assert isinstance(make_calibrator("ets"), EnsembleTemperatureScaling)
    assert isinstance(make_calibrator("toplabel"), TopLabelCalibrator)
    assert isinstance(make_calibrator("sms"), StructuredMatrixScaling)
    auto = make_calibrator("auto", random_state=9)
    assert isinstance(auto, AutoCalibrator) and auto.random_state == 9


def test_new_calibrators_are_scored_out_of_fold(ev_new, data):
    from precal.calibration import AutoCalibrator, EnsembleTemperatureScaling, TopLabelCalibrator

    z, y = data
    assert [r["method"] for r in ev_new.rows] == ["uncalibrated", "ensemble temperature scaling", "top-label",
                                                  "auto"]
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=4)
    for est, label in ((EnsembleTemperatureScaling(), "ensemble temperature scaling"),
                       (TopLabelCalibrator(), "top-label"), (AutoCalibrator(random_state=4), "auto")):
        expected = cross_val_predict(est, z.astype(np.float64), y, cv=cv, method="predict_proba")
        assert_allclose(_probs(ev_new, label, "as given"), expected, rtol=1e-8, atol=1e-10)


def test_per_fold_state_of_new_calibrators(ev_new, data):
    from precal.calibration import AutoCalibrator

    z, y = data
    ets = ev_new.fitted["ets"]["per_fold"]
    assert len(ets["temperature_"]) == 3
    for f in range(3):  # the mixture weights are reported and sum to one
        assert sum(ets[f"weights_[{i}]"][f] for i in range(3)) == pytest.approx(1.0)
    assert len(ev_new.fitted["toplabel"]["per_fold"]["temperature_"]) == 3
    auto = ev_new.fitted["auto"]
    assert auto["per_fold"] == {}
    assert len(auto["chosen_per_fold"]) == 3
    assert set(auto["chosen_per_fold"]) <= set(AutoCalibrator(random_state=4).fit(z, y).cv_results_["candidate"])
    full = AutoCalibrator(random_state=4).fit(z.astype(np.float64), y)
    assert auto["chosen_full"] == full.best_name_
    restored = load_calibrator(json.loads(json.dumps(ev_new.calibrators["auto"])))
    assert restored.best_name_ == full.best_name_
    md = to_markdown(ev_new)
    assert "chose " in md and f"on all rows: {full.best_name_}" in md
    assert "weights_[0]" in md
    out = ev_new.to_dict()
    assert out["fitted"]["auto"]["chosen_per_fold"] == auto["chosen_per_fold"]


def test_auto_choice_text():
    from precal.report import auto_choice_text

    assert auto_choice_text(["ets", "temperature", "ets"]) == "ets 2/3 folds, temperature 1/3"
    assert auto_choice_text(["temperature"] * 5, "temperature") == "temperature 5/5 folds; on all rows: temperature"


# ------------------------------------------------------------------------- selectable metrics (issue 14, item 5)
@pytest.fixture(scope="module")
def ev_metrics(data):
    z, y = data
    return evaluate(z, y, calibrators=["ts"], metrics=["nll", "debiased_ece", "smooth_ece", "ece"], cv=3,
                    n_bootstrap=30, random_state=2)


def test_default_metrics_are_unchanged(ev):
    assert ev.settings["metrics"] == list(METRICS) == ["accuracy", "ece", "ace", "mce", "nll", "brier"]
    assert list(metric_table(ev)[0]) == ["method", "logits", "accuracy %", "ECE %", "ACE %", "MCE %", "NLL", "Brier"]


def test_selected_metrics_are_the_columns_in_their_order(ev_metrics):
    assert ev_metrics.settings["metrics"] == ["nll", "debiased_ece", "smooth_ece", "ece"]
    assert ev_metrics.settings["intervals"] == {"nll": "percentile", "debiased_ece": "centred",
                                                "smooth_ece": "bias_corrected", "ece": "bias_corrected"}
    for row in ev_metrics.rows:
        assert list(row["metrics"]) == ["nll", "debiased_ece", "smooth_ece", "ece"]
    assert list(metric_table(ev_metrics)[0]) == ["method", "NLL", "debiased ECE %", "smooth ECE %", "ECE %"]
    text = format_text(ev_metrics)
    assert "debiased ECE its own (already debiased) value" in text and "smooth ECE" in text
    md, page = to_markdown(ev_metrics), to_html(ev_metrics)
    for row in metric_table(ev_metrics):
        assert "| " + " | ".join(row.values()) + " |" in md
        assert all(f"<td>{v}</td>" in page for v in row.values())
    assert "bias-corrected for smooth ECE and ECE, centred on the estimate for debiased ECE" in page
    assert json.loads(json.dumps(ev_metrics.to_dict()))["settings"]["metrics"][1] == "debiased_ece"


def test_new_metrics_are_the_library_estimators(ev_metrics, data):
    _, y = data
    for row in ev_metrics.rows:
        p = _probs(ev_metrics, row["method"], row["logits"])
        got = row["metrics"]
        assert got["debiased_ece"]["plugin"] == pytest.approx(debiased_calibration_error(y, p, n_bins=15))
        assert got["debiased_ece"]["estimate"] == got["debiased_ece"]["plugin"]  # already debiased: kept
        value, bandwidth = smooth_calibration_error(y, p, return_bandwidth=True)
        assert got["smooth_ece"]["plugin"] == pytest.approx(value)
        assert got["smooth_ece"]["bandwidth"] == pytest.approx(bandwidth)


def test_new_metrics_intervals_are_the_library_bootstrap_moved_as_documented(ev_metrics, data):
    _, y = data
    p = _probs(ev_metrics, "temperature scaling", "as given")
    got = ev_metrics.rows[1]["metrics"]
    # debiased ECE: the bias-corrected interval moved back by the bootstrap bias b (estimate kept)
    ci = calibration_error_ci(y, p, metric=debiased_calibration_error, n_bootstrap=30, random_state=2,
                              method="bias_corrected", n_bins=15)
    b = ci.plugin - ci.estimate
    assert (got["debiased_ece"]["low"], got["debiased_ece"]["high"]) == pytest.approx(
        (max(ci.low + b, 0.0), min(ci.high + b, 1.0)))
    # smooth ECE: bias-corrected at the bandwidth chosen on all rows, clipped to [0, 1]
    bandwidth = got["smooth_ece"]["bandwidth"]
    ci = calibration_error_ci(y, p, metric=smooth_calibration_error, n_bootstrap=30, random_state=2,
                              method="bias_corrected", bandwidth=bandwidth)
    assert (got["smooth_ece"]["estimate"], got["smooth_ece"]["low"], got["smooth_ece"]["high"]) == pytest.approx(
        tuple(min(max(v, 0.0), 1.0) for v in (ci.estimate, ci.low, ci.high)))


def test_every_metric_estimate_lies_inside_its_interval():
    """The issue's well calibrated case, with every metric: no interval excludes its estimate."""
    rng = np.random.default_rng(0)
    z = 2.5 * rng.normal(size=(2000, 10))
    p = softmax(z)
    y = np.minimum((p.cumsum(axis=1) < rng.uniform(size=(2000, 1))).sum(axis=1), 9)  # labels drawn from p
    ev = evaluate(z, y, calibrators=[], metrics=AVAILABLE_METRICS, cv=2, n_bootstrap=40, random_state=0)
    assert set(INTERVALS) == set(AVAILABLE_METRICS)
    for metric, values in ev.rows[0]["metrics"].items():
        assert values["low"] <= values["estimate"] <= values["high"], (metric, values)
        if metric != "nll":
            assert 0.0 <= values["low"] and values["high"] <= 1.0, (metric, values)


def test_new_metrics_without_bootstrap_are_the_plugin(data):
    z, y = data
    ev = evaluate(z, y, calibrators=[], metrics=["debiased_ece", "smooth_ece"], cv=2, n_bootstrap=0)
    values = ev.rows[0]["metrics"]
    p = softmax(z.astype(np.float64))
    assert values["debiased_ece"]["estimate"] == pytest.approx(debiased_calibration_error(y, p))
    assert values["smooth_ece"]["estimate"] == pytest.approx(smooth_calibration_error(y, p))
    assert values["smooth_ece"]["low"] is None


@pytest.mark.parametrize("metrics, error, match", [
    (["ece", "bogus"], ValueError, "Unknown metric.*'bogus'.*debiased_ece"),
    ([], ValueError, "at least one"),
    ("ece", TypeError, "sequence of names"),
    ([3], ValueError, "Unknown metric"),
])
def test_bad_metric_names_are_refused(data, metrics, error, match):
    z, y = data
    with pytest.raises(error, match=match):
        evaluate(z, y, calibrators=[], metrics=metrics, cv=2, n_bootstrap=0)

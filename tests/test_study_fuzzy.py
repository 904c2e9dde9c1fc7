"""benchmarks/study_fuzzy.py: its helpers, and its --quick run end to end (outputs well formed)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precal.calibration import DirichletCalibrator, FuzzyDirichletCalibrator, PACSCalibrator, TemperatureScaling
from precal.emulate import round_logits

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_fuzzy.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_fuzzy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- helpers
def test_replace_region_rewrites_only_between_the_markers(study):
    page = f"# Title\n\nhand-written intro\n\n{study.BEGIN_MARK}\nold table\n{study.END_MARK}\n\n## Reading\nmine\n"
    out = study.replace_region(page, "new table\n")
    assert out == f"# Title\n\nhand-written intro\n\n{study.BEGIN_MARK}\nnew table\n{study.END_MARK}\n\n## Reading\nmine\n"
    assert study.replace_region(out, "new table") == out  # idempotent


@pytest.mark.parametrize("page", [
    "no markers at all",
    "{b}\nonly the beginning",
    "{e}\n{b}\nreversed",
    "{b}\n{e}\n{b}\n{e}\ntwice",
])
def test_replace_region_refuses_a_page_without_one_marker_pair(study, page):
    page = page.format(b=study.BEGIN_MARK, e=study.END_MARK)
    with pytest.raises(ValueError, match="must contain the line"):
        study.replace_region(page, "table")


def test_paired_counts_wins_and_tests_significance(study):
    a = np.linspace(0.10, 0.20, 20)
    better = study.paired(list(a - 0.01 - 0.001 * np.arange(20)), list(a))
    assert better["verdict"] == "better" and better["wins"] == 20 and better["losses"] == 0 and better["p"] < 0.05
    worse = study.paired(list(a + 0.01), list(a))
    assert worse["verdict"] == "worse" and worse["losses"] == 20
    same = study.paired(list(a), list(a))
    assert same["p"] is None and same["verdict"] == "n.s." and same["mean"] == 0.0
    mixed = study.paired([0.1, 0.3, 0.1, 0.3], [0.2, 0.2, 0.2, 0.2])
    assert mixed["verdict"] == "n.s." and mixed["wins"] == 2 and mixed["losses"] == 2


def test_json_keeps_every_value_and_puts_number_lists_on_one_line(study):
    report = {"a": [1.5, -2e-07, 3], "b": {"c": [], "d": ["x", "y"], "e": None, "f": [[1, 2], [3.25]]}}
    text = study.to_json(report)
    assert json.loads(text) == report
    assert '"a": [1.5, -2e-07, 3]' in text and "[3.25]" in text


def test_most_confused_triple_sums_confusions_among_three_classes(study):
    # classes 1, 3, 4 confuse each other (6 errors); class 0 is confused with 2 only (4 errors)
    y = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10)
    pred = y.copy()
    pred[[0, 1, 2, 3]] = 2
    pred[[10, 11]] = 3
    pred[[30, 31]] = 4
    pred[[40, 41]] = 1
    z = np.eye(5)[pred]
    assert study.most_confused_triple(z, y) == ((1, 3, 4), 6)


def _write_fake_logits(path, n=600, k=10, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = (4.0 * np.eye(k)[y] + 2.0 * rng.normal(size=(n, k))).astype(np.float32)
    np.savez(path, logits_test=z, labels_test=y.astype(np.int64), logits_val=z[:10], labels_val=y[:10])
    return z, y


def test_shared_datasets_skip_cleanly_when_absent(study, tmp_path):
    datasets, reason = study.shared_datasets(tmp_path / "absent")
    assert datasets == [] and "is not there" in reason
    datasets, reason = study.shared_datasets(tmp_path)  # folder there, file missing
    assert datasets == [] and "missing" in reason


def test_shared_datasets_build_the_rounded_and_three_class_cases(study, tmp_path):
    z, y = _write_fake_logits(tmp_path / study.SHARED_FILE)
    (d10, d3), reason = study.shared_datasets(tmp_path)
    assert reason is None
    assert list(d10["logits"]) == list(study.SHARED_TESTS) and d10["sources"] == {"fp32": "fp32",
                                                                                   "logit-int4": "int4"}
    np.testing.assert_array_equal(d10["logits"]["fp32"], z)
    np.testing.assert_array_equal(d10["logits"]["logit-int4"], round_logits(z, "int4"))
    triple, _ = study.most_confused_triple(z, y)
    rows = np.isin(y, triple)
    assert d3["n_classes"] == 3 and len(d3["y"]) == rows.sum() and set(d3["y"]) <= {0, 1, 2}
    np.testing.assert_array_equal(np.asarray(triple)[d3["y"]], y[rows])
    np.testing.assert_array_equal(d3["logits"]["fp32"], z[rows][:, list(triple)])
    # rounded from the three kept columns: the INT4 row scale is over 3 logits, as a 3-output head's
    np.testing.assert_array_equal(d3["logits"]["logit-int4"], round_logits(z[rows][:, list(triple)], "int4"))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=20 keeps it fast
def test_calibrator_size_counts_the_float_parameters_of_the_map(study):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    z = 3.0 * (np.eye(3)[y] + rng.normal(size=(300, 3)))
    fuzzy = FuzzyDirichletCalibrator(random_state=0, max_iter=20).fit(z, y)
    assert 4 * study.calibrator_size(fuzzy) == fuzzy.nbytes_ == 4 * 3 * (2 + 9 + 3)
    assert study.calibrator_size(DirichletCalibrator().fit(z, y)) == 12
    assert study.calibrator_size(TemperatureScaling().fit(z, y)) == 1
    assert study.calibrator_size(PACSCalibrator(precision="int4").fit(z, y)) == 2
    with pytest.raises(TypeError, match="does not know"):
        study.calibrator_size(object())


def test_arguments(study):
    assert study.parse_args([]).fuzzy_max_iter == study.FUZZY_MAX_ITER
    assert study.parse_args(["--fuzzy-max-iter", "default"]).fuzzy_max_iter is None
    assert study.parse_args(["--quick"]).splits == 2
    assert study.parse_args([]).splits == 20
    for bad in (["--fuzzy-max-iter", "0"], ["--fuzzy-max-iter", "many"], ["--splits", "1"]):
        with pytest.raises(SystemExit):
            study.parse_args(bad)
    with pytest.raises(SystemExit, match="never writes"):
        study.output_paths(study.parse_args(["--quick", "--out", str(study.DEFAULT_DOCS_DIR)]))


# --------------------------------------------------------------------------- end to end
def _run(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_quick_run_writes_well_formed_outputs(tmp_path):
    _run("--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "study_fuzzy.json").read_text(encoding="utf-8"))
    assert report["quick"] is True and report["n_splits"] == 2 and report["fuzzy_max_iter"] == 100
    assert report["shared_skipped"] == "not run in --quick mode"
    assert [b["name"] for b in report["datasets"]] == ["digits-10", "digits-3"]
    n_settings = 0
    for block in report["datasets"]:
        k = block["n_classes"]
        assert k == (10 if block["name"] == "digits-10" else 3)
        assert block["tests"] == ["fp32", "w8a8", "w4a8", "w4a4", "logit-int4"]
        assert block["sources"] == {"fp32": "fp32", "w4a4": "int4"}
        assert block["n_calibration"] + block["n_test"] == block["n_samples"]
        for source in block["sources"]:
            for test in block["tests"]:
                n_settings += 1
                per_split = block["per_split"][source][test]
                for method in ("uncalibrated", "TS", "Dirichlet", "PACS", "Fuzzy+noise", "Fuzzy"):
                    for metric in ("ece", "ace", "cwece", "nll", "accuracy"):
                        values = per_split[method][metric]
                        assert len(values) == 2 and all(v is not None and math.isfinite(v) for v in values)
                        assert all(0.0 <= v <= 1.0 for v in values) or metric == "nll"
                        stat = block["summary"][source][test][method][metric]
                        assert stat["mean"] == pytest.approx(np.mean(values), rel=1e-5, abs=1e-9)
                # temperature-type maps keep every argmax
                for method in ("TS", "PACS"):
                    assert per_split[method]["accuracy"] == per_split["uncalibrated"]["accuracy"]
                for comp in ("Fuzzy+noise - Fuzzy", "Fuzzy - Dirichlet", "Fuzzy+noise - Dirichlet",
                             "Fuzzy+noise - TS"):
                    c = block["comparisons"][source][test][comp]["ece"]
                    assert c["n"] == 2 and c["wins"] + c["losses"] <= 2
        sizes = block["fits"]["fp32"]
        assert sizes["TS"]["nbytes"] == [4] and sizes["PACS"]["nbytes"] == [8]
        assert sizes["Dirichlet"]["nbytes"] == [4 * k * (k + 1)]
        assert sizes["Fuzzy+noise"]["nbytes"] == sizes["Fuzzy"]["nbytes"] == [4 * 3 * (2 + k * k + k)]
        assert "probe" not in block  # no probe in --quick
        for source in block["sources"]:
            for method in ("Fuzzy+noise", "Fuzzy"):
                gates = block["gates"][source][method]
                assert len(gates["centers"]) == len(gates["widths"]) == 3
                assert all(1.0 / k <= m <= 1.0 for m in gates["centers"]) and min(gates["widths"]) > 0
                runs = gates["runs"]  # contiguous stretches covering [1/K, 1]
                assert runs[0][1] == pytest.approx(1.0 / k) and runs[-1][2] == pytest.approx(1.0)
                assert all(a[0] != b[0] and a[2] < b[1] for a, b in zip(runs, runs[1:]))
                assert {r[0] for r in runs} <= {"low", "moderate", "high"}
                order = ["low", "moderate", "high"]
                ranks = [order.index(r[0]) for r in runs]
                assert gates["monotone"] == (ranks == sorted(ranks))
    assert report["fuzzy_params"]["int4"]["noise"] == "int4" and report["fuzzy_params"]["none"]["noise"] is None
    assert report["fuzzy_params"]["int4"]["max_iter"] == 100
    for comp, by_metric in report["scorecard"].items():
        if comp != "n_settings":
            assert all(sum(c.values()) == n_settings for c in by_metric.values())
    assert report["scorecard"]["n_settings"] == n_settings

    md = (tmp_path / "study_fuzzy.md").read_text(encoding="utf-8")
    doc = (tmp_path / "study-fuzzy.md").read_text(encoding="utf-8")
    for text in (md, doc):
        assert "### digits-10" in text and "### digits-3" in text and "| — | uncalibrated |" in text
        assert "#### Fuzzy+noise − Fuzzy" in text and "### Calibrator size" in text
        assert "### Fitted gates (split 0)" in text
    assert doc.count("<!-- BEGIN GENERATED") == 1 and doc.count("<!-- END GENERATED -->") == 1
    for fig in report["figures"]:
        png = tmp_path / "figures" / fig["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{fig['file']})" in doc
    assert {f["file"] for f in report["figures"]} == {"study-fuzzy-ece.png", "study-fuzzy-nll.png",
                                                     "study-fuzzy-reliability.png", "study-fuzzy-gates.png"}

    # the markdown is a function of the JSON: re-rendering gives the same files, and keeps hand-written text
    (tmp_path / "study-fuzzy.md").write_text("hand-written\n" + doc + "more hand-written\n", encoding="utf-8")
    _run("--quick", "--out", str(tmp_path), "--render-only")
    assert (tmp_path / "study_fuzzy.md").read_text(encoding="utf-8") == md
    assert (tmp_path / "study-fuzzy.md").read_text(encoding="utf-8") == "hand-written\n" + doc + "more hand-written\n"

"""The study harness (benchmarks/harness.py): splits, statistics, scores, the method registry,
results files and the study plumbing."""

import argparse
import json
import math
import pickle
import statistics
import warnings

import numpy as np
import pytest
from scipy import stats

from benchmarks import harness as h


# --------------------------------------------------------------------------- splits
def test_splits_are_stratified_halves_that_partition_the_rows():
    y = np.repeat(np.arange(3), [10, 7, 4])
    for cal, test in h.make_splits(y, 5, seed=3):
        assert len(np.intersect1d(cal, test)) == 0
        assert np.array_equal(np.sort(np.concatenate([cal, test])), np.arange(len(y)))
        assert np.bincount(y[cal]).tolist() == [5, 3, 2]  # floor(n_c / 2) of every class
        assert np.all(np.diff(cal) > 0) and np.all(np.diff(test) > 0)


def test_splits_are_deterministic_and_follow_the_documented_rule():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=50)
    splits = h.make_splits(y, 4, seed=7)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(splits, h.make_splits(y, 4, seed=7)))
    assert not np.array_equal(splits[0][0], splits[1][0])
    # split s draws default_rng(seed + s): split 1 of seed 7 is split 0 of seed 8
    assert np.array_equal(splits[1][0], h.make_splits(y, 1, seed=8)[0][0])
    # the rule, written out: per class in sorted order, a permutation of its rows, first half to calibration
    gen = np.random.default_rng(7)
    expected = np.sort(np.concatenate([gen.permutation(np.flatnonzero(y == c))[: np.sum(y == c) // 2]
                                       for c in range(4)]))
    assert np.array_equal(splits[0][0], expected)


# --------------------------------------------------------------------------- statistics
def test_mean_sd_is_the_sample_standard_deviation():
    values = [0.3, 0.1, 0.7, 0.2]
    ms = h.mean_sd(values)
    assert ms["mean"] == pytest.approx(statistics.mean(values)) and ms["sd"] == pytest.approx(statistics.stdev(values))
    assert h.mean_sd([2.5]) == {"mean": 2.5, "sd": 0.0}


@pytest.mark.parametrize("seed", range(6))
def test_paired_verdict_is_a_paired_t_statistic_beyond_sqrt_n(seed):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=12)
    a = b + rng.normal(loc=rng.choice([-0.5, 0.0, 0.5]), scale=0.6, size=12)
    p = h.paired(a, b)
    t = stats.ttest_rel(a, b).statistic
    assert p["mean"] == pytest.approx(np.mean(a - b)) and p["sd"] == pytest.approx(np.std(a - b, ddof=1))
    assert p["n"] == 12 and p["n_lower"] == int(np.sum(a < b))
    expected = "lower" if t < -math.sqrt(12) else "higher" if t > math.sqrt(12) else "within noise"
    assert p["verdict"] == expected


def test_paired_verdict_words():
    assert h.paired([1, 2, 3], [1, 2, 3])["verdict"] == "identical"
    assert h.paired([0.0, 0.1, 0.0], [1.0, 1.0, 1.1])["verdict"] == "lower"
    assert h.paired([1.0, 1.0, 1.1], [0.0, 0.1, 0.0])["verdict"] == "higher"
    assert h.paired([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])["verdict"] == "within noise"
    assert h.paired([1.0, 2.0], [1.0 + 1e-9, 2.0 - 1e-9], atol=1e-6)["verdict"] == "identical"
    assert h.paired([1.0, 2.0], [1.0 + 1e-9, 2.0 - 1e-9])["verdict"] != "identical"
    tiny = h.paired([1e-6, 1.1e-6, 0.9e-6], [0.0, 0.0, 0.0])
    assert tiny["verdict"] == "higher"  # consistent, however small
    assert h.paired([1e-6, 1.1e-6, 0.9e-6], [0.0, 0.0, 0.0], min_effect=1e-4)["verdict"] == "within noise"
    assert h.paired([0.3, 0.31, 0.29], [0.0, 0.0, 0.0], min_effect=1e-4)["verdict"] == "higher"
    with pytest.raises(ValueError, match="per-split"):
        h.paired([], [])


def test_wilcoxon_p_matches_scipy_and_the_exact_distribution():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=15), rng.normal(size=15)
    assert h.wilcoxon_p(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue)
    # all 8 differences positive: exact two-sided p = 2 / 2**8
    assert h.wilcoxon_p(np.arange(1.0, 9.0), np.zeros(8)) == pytest.approx(2 / 2**8)
    assert h.wilcoxon_p([1.0, 2.0], [1.0, 2.0]) is None


# --------------------------------------------------------------------------- scores
def test_scores_are_precal_metrics_in_the_order_asked():
    from precal.metrics import brier_score, expected_calibration_error, negative_log_likelihood

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=200)
    prob = h.softmax64(rng.normal(size=(200, 4)) * 2)
    s = h.scores(y, prob, ("nll", "accuracy", "ece", "brier"))
    assert list(s) == ["nll", "accuracy", "ece", "brier"]
    assert s["accuracy"] == np.mean(prob.argmax(axis=1) == y)
    assert s["ece"] == expected_calibration_error(y, prob, n_bins=15)
    assert s["nll"] == negative_log_likelihood(y, prob) and s["brier"] == brier_score(y, prob)
    assert list(h.scores(y, prob)) == ["accuracy", "ece", "ace", "nll"]
    with pytest.raises(ValueError, match="Unknown metric"):
        h.scores(y, prob, ("ece", "sharpness"))


def test_softmax64_rows_sum_to_one_in_float64():
    p = h.softmax64(np.array([[1000.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    assert p.dtype == np.float64 and np.allclose(p.sum(axis=1), 1.0) and p[1, 0] == 0.5


# --------------------------------------------------------------------------- methods by name
def test_methods_are_resolved_by_name_with_the_context_they_take():
    from precal import FuzzyDirichletCalibrator, PACSCalibrator, TemperatureScaling

    ts = h.method("ts", precision="int4", random_state=3)()
    assert type(ts) is TemperatureScaling  # no precision or random_state parameter: none given
    pacs = h.method("pacs-norm", precision="int4")()
    assert isinstance(pacs, PACSCalibrator) and pacs.precision == "int4" and pacs.risk == "norm"
    fuzzy = h.method("fuzzy", {"max_iter": 7, "random_state": 1}, random_state=5)()
    assert isinstance(fuzzy, FuzzyDirichletCalibrator) and fuzzy.max_iter == 7 and fuzzy.random_state == 1
    described = h.method("pacs", {"risk": "norm"}, precision="bf16").describe()
    assert described == "PACSCalibrator(risk='norm', precision='bf16')"


def test_bad_method_names_and_context_are_refused():
    with pytest.raises(ValueError, match="Unknown method 'platt'"):
        h.method("platt")
    with pytest.raises(ValueError, match="Unknown context"):
        h.method("ts", temperature=2.0)


def test_a_class_this_precal_lacks_is_listed_not_fitted(monkeypatch):
    monkeypatch.setitem(h.METHODS, "future", ("NoSuchCalibratorYet", {}))
    table, missing = h.method_table({"raw": None, "TS": "ts", "Future": "future"}, precision="bf16")
    assert list(table) == ["raw", "TS"] and table["raw"] is None
    assert missing == ["Future (`future`: precal.NoSuchCalibratorYet is not in this precal) was not measured."]
    m = h.method("future", precision="bf16")
    assert not m.available
    with pytest.raises(RuntimeError, match="NoSuchCalibratorYet"):
        m()


def test_every_registry_entry_is_available_or_listed():
    table, missing = h.method_table({name: name for name in h.METHODS})
    assert len(table) + len(missing) == len(h.METHODS)
    for name in ("ts", "pacs", "pacs-norm", "dirichlet", "fuzzy"):
        assert name in table


def test_methods_pickle_for_worker_processes():
    m = h.method("pacs", precision="fp8_e4m3")
    again = pickle.loads(pickle.dumps(m))
    assert again == m and again().precision == "fp8_e4m3"


# --------------------------------------------------------------------------- comparing calibrators
def _logits(n=400, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = 3.0 * (np.eye(k)[y] + rng.normal(size=(n, k)))
    return z, y


def test_compare_calibrators_fits_on_calibration_and_scores_on_test():
    from precal import TemperatureScaling

    z, y = _logits()
    splits = h.make_splits(y, 3, seed=0)
    methods = h.method_table({"raw": None, "TS": "ts"})[0]
    r = h.compare_calibrators(z, y, splits, methods, metrics=("accuracy", "nll"))
    assert r["n_calibration"] == len(splits[0][0]) and r["n_test"] == len(splits[0][1])
    assert r["per_split"]["TS"]["accuracy"] == r["per_split"]["raw"]["accuracy"]  # TS keeps the argmax
    for s, (cal, test) in enumerate(splits):
        ts = TemperatureScaling().fit(z[cal], y[cal])
        assert r["fitted"]["TS"][s] == {"temperature_": ts.temperature_, "n_warnings": 0}
        assert r["per_split"]["TS"]["nll"][s] == h.scores(y[test], ts.predict_proba(z[test]), ("nll",))["nll"]
    assert r["summary"]["TS"]["nll"] == h.mean_sd(r["per_split"]["TS"]["nll"])
    assert r["n_fits"] == {"TS": 3} and r["warnings"] == {}


class _Warns:
    """A calibrator stand-in that warns when fitted (a fixed temperature of 2)."""

    def fit(self, z, y):
        warnings.warn("did not converge (after 3 steps)", RuntimeWarning)
        return self

    def predict_proba(self, z):
        return h.softmax64(np.asarray(z) / 2.0)


def test_fit_warnings_are_counted_per_fit_without_their_numbers():
    z, y = _logits(n=100)
    r = h.compare_calibrators(z, y, h.make_splits(y, 2, 0), {"W": _Warns})
    assert r["warnings"] == {"W: RuntimeWarning: did not converge": 2}
    total: dict = {}
    h.merge_warnings(total, r)
    assert "warnings" not in r and total["n_fits"] == {"W": 2}
    assert h.warning_notes(total) == ["Fit warning on 2 of 2 fits: W: RuntimeWarning: did not converge."]


# --------------------------------------------------------------------------- results files
def test_json_round_trip_keeps_seven_significant_digits():
    report = {"a": np.float32(0.1), "b": [np.int64(3), 1 / 3, math.nan, math.inf], "c": np.array([[1.5, 2.0]]),
              "d": {1: np.bool_(True)}, "e": "text", "f": [True, False]}
    text = h.dump_json(report)
    back = json.loads(text)
    assert back == h.json_ready(report)
    assert back == {"a": 0.1, "b": [3, 0.3333333, None, None], "c": [[1.5, 2.0]], "d": {"1": True}, "e": "text",
                    "f": [True, False]}
    assert h.dump_json(back) == text  # a results file rewrites to itself
    assert '"b": [3, 0.3333333, null, null]' in text  # lists of plain values on one line
    assert "NaN" not in text and "Infinity" not in text  # strict JSON


def test_staged_outputs_appear_only_on_commit(tmp_path):
    staged = h.StagedOutputs()
    staged.write_text(tmp_path / "a" / "r.json", "{}")
    staged.write_text(tmp_path / "r.md", "x")
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "a" / "r.json").exists()
    staged.discard()
    assert list(tmp_path.rglob("*.*")) == []
    staged.write_text(tmp_path / "r.json", "{}")
    staged.write_text(tmp_path / "r.md", "x")
    assert staged.commit() == [tmp_path / "r.md", tmp_path / "r.json"]  # the JSON last
    assert (tmp_path / "r.md").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.json", "r.md"]


# --------------------------------------------------------------------------- study plumbing
def _args(argv, threads=True):
    parser = argparse.ArgumentParser()
    h.add_study_arguments(parser, threads=threads)
    return h.finish_study_arguments(parser, parser.parse_args(argv))


def test_study_arguments_defaults_depend_on_quick():
    full, quick = _args([]), _args(["--quick"])
    assert (full.splits, full.threads, full.seed) == (20, 2, 0)
    assert (quick.splits, quick.threads) == (3, 1)
    assert not hasattr(_args([], threads=False), "threads")
    with pytest.raises(SystemExit):
        _args(["--splits", "1"])
    with pytest.raises(SystemExit):
        _args(["--threads", "0"])


def test_output_paths(tmp_path):
    committed = {"json": tmp_path / "results" / "s.json", "doc": tmp_path / "docs" / "s.md",
                 "figures": tmp_path / "docs" / "figures"}
    assert h.output_paths(_args([]), committed, prefix="x-") == committed
    out = h.output_paths(_args(["--out", str(tmp_path / "o")]), committed, prefix="x-")
    o = tmp_path / "o"
    assert out == {"json": o / "s.json", "doc": o / "s.md", "figures": o / "figures"}
    quick = h.output_paths(_args(["--quick"]), committed, prefix="x-")
    assert quick["json"].parent.name.startswith("x-") and quick["json"].parent.is_dir()
    for folder in (tmp_path / "results", tmp_path / "docs", tmp_path / "docs" / "figures"):
        with pytest.raises(SystemExit, match="never writes to the committed"):
            h.output_paths(_args(["--quick", "--out", str(folder)]), committed, prefix="x-")


def test_run_study_skips_on_missing_data_and_writes_nothing(tmp_path, capsys):
    def main(argv, staged):
        staged.write_text(tmp_path / "r.json", "{}")
        raise h.DataError(f"{tmp_path}/x.npz: missing; see README.md")

    assert h.run_study("demo", main) == h.SKIP_EXIT_CODE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"demo: skipped: {tmp_path}/x.npz: missing; see README.md"]
    assert list(tmp_path.iterdir()) == []
    assert h.run_study("demo", lambda argv, staged: 0) == 0


def test_claim_pages_carry_claim_verdict_and_figures():
    report = {"date": "today", "wall_time_s": 12.4, "quick": True, "versions": {"numpy": "2"},
              "figures": [{"path": "../figures/x.png", "caption": "cap"}],
              "verdict": {"word": "partly reproduced", "reason": "because.", "details": ["detail one"]}}
    results, doc = h.claim_pages(report, title="Study X", results_title="Study X: results", rerun="python x.py",
                                 json_name="x.json", doc_name="x.md", source="a paper", claim="It works.",
                                 run_note="", notes=["a note", ""], method=["- how"], tables=["| a |", "|---|"],
                                 reading=["more"])
    assert results.startswith("# Study X: results (quick smoke test)\n")
    assert "**Verdict: partly reproduced.**" in results
    assert "wall time 12 s" in doc and "**Seed:** a paper." in doc and "**Claim:** It works." in doc
    assert "- detail one\n- more\n" in doc and "![cap](../figures/x.png)" in doc and "numpy 2." in doc
    assert doc.index("## Method") < doc.index("## Reading") < doc.index("## Results") < doc.index("## Figures")


# --------------------------------------------------------------------------- pages with a generated region
def test_replace_region_rewrites_only_between_the_markers():
    marks = h.generated_marks("benchmarks/x.py")
    assert marks[0] == "<!-- BEGIN GENERATED by benchmarks/x.py: do not edit by hand -->"
    page = f"# Title\n\nhand-written intro\n\n{marks[0]}\nold table\n{marks[1]}\n\n## Reading\nmine\n"
    out = h.replace_region(page, "new table\n", marks)
    assert out == f"# Title\n\nhand-written intro\n\n{marks[0]}\nnew table\n{marks[1]}\n\n## Reading\nmine\n"
    assert h.replace_region(out, "new table", marks) == out  # idempotent


@pytest.mark.parametrize("page", ["no markers at all", "{b}\nonly the beginning", "{e}\n{b}\nreversed",
                                  "{b}\n{e}\n{b}\n{e}\ntwice"])
def test_replace_region_refuses_a_page_without_one_marker_pair(page):
    marks = h.generated_marks("benchmarks/x.py")
    with pytest.raises(ValueError, match="must contain the line"):
        h.replace_region(page.format(b=marks[0], e=marks[1]), "table", marks)


def test_region_page_keeps_hand_written_text_or_starts_a_new_page(tmp_path):
    marks = h.generated_marks("benchmarks/x.py")
    doc = tmp_path / "x.md"
    new = h.region_page(doc, "| a |\n", marks, title="Study X")
    assert new.startswith("# Study X\n") and "`docs/x.md`" in new and new.endswith(f"{marks[0]}\n| a |\n{marks[1]}\n")
    doc.write_text("mine\n" + new + "also mine\n", encoding="utf-8")
    again = h.region_page(doc, "| b |", marks, title="ignored")
    assert again == "mine\n" + new.replace("| a |", "| b |") + "also mine\n"

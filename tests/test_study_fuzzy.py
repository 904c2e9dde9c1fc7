"""benchmarks/study_fuzzy.py: its data sets, one split, the verdict, and its --quick run end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness as h
from benchmarks import study_fuzzy as sf
from precal.emulate import round_logits

from .conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_fuzzy.py"


def _toy(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    return 2.0 * (np.eye(k)[y] + rng.normal(size=(n, k))), y


# --------------------------------------------------------------------------- data
def test_most_confused_triple_sums_confusions_among_three_classes():
    # classes 1, 3, 4 confuse each other (6 errors); class 0 is confused with 2 only (4 errors)
    y = np.repeat(np.arange(5), 10)
    pred = y.copy()
    pred[[0, 1, 2, 3]] = 2
    pred[[10, 11]] = 3
    pred[[30, 31]] = 4
    pred[[40, 41]] = 1
    assert sf.most_confused_triple(np.eye(5)[pred], y) == ((1, 3, 4), 6)
    # ties go to the lowest labels
    assert sf.most_confused_triple(np.eye(5)[y], y) == ((0, 1, 2), 0)


def test_shared_datasets_skip_cleanly_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(tmp_path))
    with pytest.raises(h.DataError, match="missing"):
        sf.shared_datasets()


def test_shared_datasets_build_the_rounded_and_three_class_cases(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=600)
    z = (4.0 * np.eye(10)[y] + 2.0 * rng.normal(size=(600, 10))).astype(np.float32)
    (tmp_path / "data" / "logits").mkdir(parents=True)
    np.savez(tmp_path / "data" / "logits" / sf.SHARED_FILE, logits_test=z, labels_test=y.astype(np.int64))
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(tmp_path))
    d10, d3 = sf.shared_datasets()
    assert list(d10["logits"]) == list(sf.SHARED_TESTS) and d10["sources"] == {"fp32": "fp32", "logit-int4": "int4"}
    np.testing.assert_array_equal(d10["logits"]["logit-int4"], round_logits(z, "int4"))
    triple, _ = sf.most_confused_triple(z, y)
    rows = np.isin(y, triple)
    assert d3["k"] == 3 and len(d3["y"]) == rows.sum() and d3["name"] == "resnet50-3"
    np.testing.assert_array_equal(np.asarray(triple)[d3["y"]], y[rows])
    np.testing.assert_array_equal(d3["logits"]["fp32"], z[rows][:, list(triple)])
    # rounded from the three kept columns: the INT4 row scale is over 3 logits, as a 3-output head's
    np.testing.assert_array_equal(d3["logits"]["logit-int4"], round_logits(z[rows][:, list(triple)], "int4"))


# --------------------------------------------------------------------------- one split
@pytest.fixture(scope="module")
def split_result():
    z, y = _toy()
    ds = sf.dataset("toy-3", "toy", "3 classes", {"fp32": z, "logit-int4": round_logits(z, "int4")}, y,
                    {"fp32": "fp32", "logit-int4": "int4"}, "logit-int4")
    cal, test = h.make_splits(y, 1, 0)[0]
    return ds, cal, test, sf.one_split((ds, cal, test, 0))


def test_one_split_scores_every_method_at_every_test_precision(split_result):
    ds, cal, test, out = split_result
    for source in ds["sources"]:
        assert set(out["fits"][source]) == set(sf.FITTED)
        for t in ds["logits"]:
            sc = out["scores"][source][t]
            assert set(sc) == set(sf.METHODS)
            assert all(math.isfinite(v) for m in sc.values() for v in m.values())
            # temperature-type maps keep every argmax
            assert sc["TS"]["accuracy"] == sc["PACS"]["accuracy"] == sc["uncalibrated"]["accuracy"]
            assert sc["uncalibrated"] == h.scores(ds["y"][test], h.softmax64(ds["logits"][t][test]), sf.METRICS)
        sizes = {m: f["size"] for m, f in out["fits"][source].items()}
        assert sizes == {"TS": 1, "PACS": 2, "Dirichlet": 12, "Fuzzy+noise": 2 * 3 + 3 * 12, "Fuzzy": 2 * 3 + 3 * 12}


def test_fuzzy_whose_gates_lost_scores_as_dirichlet(split_result):
    ds, _, _, out = split_result
    for source in ds["sources"]:
        for m in ("Fuzzy+noise", "Fuzzy"):
            if not out["fits"][source][m]["gated"]:
                for t in ds["logits"]:
                    a, b = out["scores"][source][t][m], out["scores"][source][t]["Dirichlet"]
                    assert a == pytest.approx(b, abs=sf.SAME)


# --------------------------------------------------------------------------- verdict
def _report(ts_vs, dir_vs):
    """A two-data-set report whose INT4 comparisons have the given verdicts."""
    def block(name, v_ts, v_dir):
        stat = {"mean": 0.01, "sd": 0.001}
        methods = {m: {k: stat for k in sf.METRICS} for m in sf.METHODS}
        def comp(v_ts, v_dir):
            out = {f"{a} - {b}": {k: {"verdict": "within noise", "mean": 0.0, "sd": 0.0} for k in sf.COMPARED}
                   for a, b, _ in sf.COMPARISONS}
            out["Fuzzy+noise - TS"]["ece"]["verdict"] = v_ts
            out["Fuzzy+noise - Dirichlet"]["ece"]["verdict"] = v_dir
            return out

        per = {m: {k: [0.01, 0.02] for k in sf.METRICS} for m in sf.METHODS}
        return {"name": name, "sources": {"fp32": "fp32", "q": "int4"}, "tests": ["fp32", "q"], "int4_test": "q",
                "summary": {"q": {"q": methods}}, "comparisons": {s: {t: comp(v_ts, v_dir) if s == t == "q" else comp("within noise", "within noise")
                                    for t in ("fp32", "q")} for s in ("fp32", "q")},
                "per_split": {"fp32": {"fp32": per, "q": per}},
                "fits": {s: {m: {"n_gated": 1, "n_fits": 2} for m in sf.FITTED} for s in ("fp32", "q")}}

    blocks = [block("a", ts_vs[0], dir_vs[0]), block("b", ts_vs[1], dir_vs[1])]
    return {"datasets": blocks, "scorecard": sf.scorecard(blocks)}


@pytest.mark.parametrize("ts_vs, dir_vs, word", [
    (("lower", "lower"), ("lower", "lower"), "holds"),
    (("lower", "lower"), ("lower", "within noise"), "holds partly"),
    (("lower", "higher"), ("identical", "lower"), "does not hold"),
])
def test_verdict_needs_clearly_lower_int4_ece_than_both_global_corrections(ts_vs, dir_vs, word):
    report = _report(ts_vs, dir_vs)
    v = sf.verdict(report)
    assert v["word"] == word
    assert report["scorecard"]["n_settings"] == 8
    assert report["scorecard"]["Fuzzy+noise - TS"]["ece"]["within noise"] == 8 - 2
    assert any("kept the gated maps in 4 of 8 Fuzzy+noise fits" in d for d in v["details"])


# --------------------------------------------------------------------------- end to end
def _run(*args):
    return run_script(SCRIPT, *args)


def test_quick_never_writes_to_the_committed_folders():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(ROOT / "docs")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "never writes" in proc.stderr


@pytest.mark.slow
def test_quick_run_writes_well_formed_outputs(tmp_path):
    _run("--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "study_fuzzy.json").read_text(encoding="utf-8"))
    assert report["quick"] is True and report["n_splits"] == 2
    assert [b["name"] for b in report["datasets"]] == ["digits-10", "digits-3"]
    for b in report["datasets"]:
        assert b["tests"] == ["fp32", "w8a8", "w4a8", "w4a4", "logit-int4"] and b["n_calibration"] + b["n_test"] == \
            b["n_samples"]
        for s in b["sources"]:
            for t in b["tests"]:
                for m in sf.METHODS:
                    for k in sf.METRICS:
                        values = b["per_split"][s][t][m][k]
                        assert len(values) == 2 and all(math.isfinite(v) for v in values)
                        assert b["summary"][s][t][m][k]["mean"] == pytest.approx(np.mean(values), rel=1e-5, abs=1e-9)
        assert b["fits"]["fp32"]["Dirichlet"]["nbytes"] == [4 * b["k"] * (b["k"] + 1)]
    assert report["verdict"]["word"] in ("holds", "holds partly", "does not hold")
    doc = (tmp_path / "study-fuzzy.md").read_text(encoding="utf-8")
    md = (tmp_path / "study_fuzzy.md").read_text(encoding="utf-8")
    for text in (md, doc):
        assert "### digits-10" in text and "| — | uncalibrated |" in text and "#### Fuzzy+noise − Fuzzy" in text
    assert doc.count(sf.MARKS[0]) == 1 and doc.count(sf.MARKS[1]) == 1
    for fig in ("study-fuzzy-ece.png", "study-fuzzy-nll.png"):
        assert (tmp_path / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](figures/{fig})" in doc
    # the markdown is a function of the JSON, and hand-written text around the region is kept
    (tmp_path / "study-fuzzy.md").write_text("hand-written\n" + doc + "more hand-written\n", encoding="utf-8")
    _run("--quick", "--out", str(tmp_path), "--page-only")
    assert (tmp_path / "study_fuzzy.md").read_text(encoding="utf-8") == md
    assert (tmp_path / "study-fuzzy.md").read_text(encoding="utf-8") == "hand-written\n" + doc + "more hand-written\n"

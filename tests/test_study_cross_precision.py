"""The cross-precision study (benchmarks/study_cross_precision.py): its per-split work on
synthetic logits, its verdict rules, and a --quick run end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness as h

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import study_cross_precision as cp  # noqa: E402


def _logits(n=300, k=4, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * (np.eye(k)[y] + rng.normal(size=(n, k)))
    return z, y


def test_one_split_applies_fp32_fits_as_fitted_retargeted_and_refitted():
    from precal import PACSCalibrator, TemperatureScaling
    from precal.emulate import round_logits

    z, y = _logits()
    logits = {"fp32": z.astype(np.float32), "int4": round_logits(z.astype(np.float32), "int4")}
    cal, test = h.make_splits(y, 1, 0)[0]
    out = cp.one_split((logits, {"int4": "int4"}, y, cal, test, 0))
    assert set(out["scores"]["fp32"]) >= {"uncalibrated", "TS fp32", "PACS fp32"}
    assert set(out["scores"]["int4"]) >= {"uncalibrated", "TS fp32", "PACS fp32", "PACS fp32→P", "TS refit",
                                          "PACS refit"}
    z = logits["fp32"].astype(np.float64)  # what the study fits on
    z4 = logits["int4"].astype(np.float64)
    ts = TemperatureScaling().fit(z[cal], y[cal])
    assert out["scores"]["int4"]["TS fp32"] == h.scores(y[test], ts.predict_proba(z4[test]), cp.METRICS)
    pacs = PACSCalibrator(precision="fp32").fit(z[cal], y[cal])
    moved = pacs.set_params(precision="int4")
    assert out["scores"]["int4"]["PACS fp32→P"] == h.scores(y[test], moved.predict_proba(z4[test]), cp.METRICS)
    refit = TemperatureScaling().fit(z4[cal], y[cal])
    assert out["scores"]["int4"]["TS refit"] == h.scores(y[test], refit.predict_proba(z4[test]), cp.METRICS)
    assert out["fitted"]["fp32"]["PACS"]["epsilon_"] == pytest.approx(2.0**-24)
    accuracy = {m: s["accuracy"] for m, s in out["scores"]["int4"].items()}
    assert len(set(accuracy.values())) == 1  # TS and PACS keep the argmax, whatever their temperature
    # the composite: fitted at fp32, re-targeted, refitted; TS+top-label has no precision to re-target
    assert {"PACS+top-label fp32", "PACS+top-label fp32→P", "PACS+top-label refit", "TS+top-label fp32",
            "TS+top-label refit"} <= set(out["scores"]["int4"]) and "TS+top-label fp32→P" not in out["scores"]["int4"]
    comp = cp.PACSThenTopLabel("fp32").fit(z[cal], y[cal]).set_params(precision="int4")
    assert out["scores"]["int4"]["PACS+top-label fp32→P"] == h.scores(y[test], comp.predict_proba(z4[test]),
                                                                       cp.METRICS)
    comp4 = cp.PACSThenTopLabel("int4").fit(z4[cal], y[cal])
    assert out["scores"]["int4"]["PACS+top-label refit"] == h.scores(y[test], comp4.predict_proba(z4[test]),
                                                                      cp.METRICS)


def test_composite_is_pacs_then_top_label_on_its_calibrated_logits():
    from precal import PACSCalibrator
    from precal.calibration import TopLabelCalibrator

    rng = np.random.default_rng(3)
    base = 2.0 * rng.normal(size=(3000, 10))
    p = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.uniform(size=(3000, 1))).argmax(axis=1)
    z = base * rng.uniform(1.0, 5.0, size=(3000, 1))  # over-confidence grows with the norm: λ > 0
    comp = cp.PACSThenTopLabel("bf16").fit(z, y)
    pacs = PACSCalibrator(precision="bf16").fit(z, y)
    assert comp.lambda_ == pacs.lambda_ > 0
    top = TopLabelCalibrator(base=None).fit(pacs.decision_function(z), y)
    np.testing.assert_array_equal(comp.predict_proba(z), top.predict_proba(pacs.decision_function(z)))
    maps = comp.top_.breakpoints_.copy()
    comp.set_params(precision="fp8_e4m3")  # re-targets the PACS stage only: the confidence map stays
    np.testing.assert_array_equal(comp.top_.breakpoints_, maps)
    moved = pacs.set_params(precision="fp8_e4m3").decision_function(z)
    np.testing.assert_array_equal(comp.predict_proba(z), top.predict_proba(moved))
    assert cp._retargetable(comp) and cp._retargetable(pacs) and not cp._retargetable(TopLabelCalibrator())


def test_summary_pairs_every_comparison_over_the_splits():
    from precal.emulate import round_logits

    z, y = _logits(seed=1)
    logits = {"fp32": z.astype(np.float32), "bf16": round_logits(z.astype(np.float32), "bf16")}
    splits = h.make_splits(y, 3, 0)
    outs = [cp.one_split((logits, {"bf16": "bf16"}, y, cal, test, s)) for s, (cal, test) in enumerate(splits)]
    r = cp.summarize(outs, splits, {"bf16": "bf16"})
    c = r["comparisons"]["bf16"]["TS fp32 - TS refit"]["nll"]
    a, b = r["per_split"]["bf16"]["TS fp32"]["nll"], r["per_split"]["bf16"]["TS refit"]["nll"]
    assert c["mean"] == pytest.approx(np.mean(np.subtract(a, b))) and c["n"] == 3
    assert r["fitted"]["by_precision"]["bf16"]["retarget_factor"] == 2.0**16
    assert r["n"] == len(y) and r["summary"]["bf16"]["TS refit"]["nll"] == h.mean_sd(b)


def _comp(ece, nll, worse=0, better=0, n=20):
    return {"ece": {"verdict": ece, "mean": 0.0, "sd": 0.0, "n": n}, "nll": {"verdict": nll, "mean": 0.0, "sd": 0.0},
            "splits_much_worse": worse, "splits_much_better": better}


@pytest.mark.parametrize("comp, expected", [
    (_comp("identical", "identical"), "identical"), (_comp("lower", "within noise"), "helps"),
    (_comp("higher", "identical"), "hurts"), (_comp("lower", "higher"), "mixed"),
    (_comp("within noise", "identical"), "within noise"),
    # a failure on some splits only: the mean ± sd rule misses it, the share of much-worse splits does not
    (_comp("within noise", "within noise", worse=5), "hurts"), (_comp("within noise", "within noise", worse=4),
                                                                 "within noise"),
    (_comp("within noise", "within noise", better=8), "helps"), (_comp("lower", "lower", worse=6), "mixed")])
def test_classify(comp, expected):
    assert cp.classify(comp) == expected


def _report(verdicts):
    """A report whose only comparisons are ``verdicts[(model, precision)] = (ece, nll[, splits much worse])``."""
    models = {}
    for (model, p), (ece, nll, *worse) in verdicts.items():
        comps = {key: _comp(ece, nll, *worse)
                 for key in ("PACS fp32→P - TS refit", "PACS fp32→P - TS fp32", "PACS fp32 - TS fp32",
                             "PACS refit - TS refit", "TS fp32 - TS refit")}
        r = models.setdefault(model, {"comparisons": {}, "fitted": {
            "pacs_fp32_lambda_eps": [0.0, 0.0], "pacs_fp32_share_lambda_zero": 1.0, "ts_fp32_T": [1.5, 1.5],
            "by_precision": {}}})
        r["comparisons"][p] = comps
        r["fitted"]["by_precision"][p] = {"retarget_factor": 2.0**16, "retargeted_median_temperature": [1.5, 1.5]}
    return {"blocks": {"b": {"models": models}}, "n_splits": 20}


def test_verdict_words():
    ok = cp.verdict(_report({("m", "bf16"): ("within noise", "identical"), ("m", "int4"): ("lower", "lower")}))
    assert ok["word"] == "reproduced" and ok["fails"] == []
    part = cp.verdict(_report({("m", "bf16"): ("within noise", "identical"), ("m", "int4"): ("lower", "higher")}))
    assert part["word"] == "partly reproduced" and part["fails"] == ["m int4"]
    assert cp.verdict(_report({("m", "bf16"): ("higher", "higher")}))["word"] == "not reproduced"
    some = cp.verdict(_report({("m", "bf16"): ("within noise", "within noise", 8)}))
    assert some["word"] == "not reproduced" and "8 to 8 of 20" in some["reason"]
    groups = cp.where_pacs_helps(_report({("m", "bf16"): ("identical", "identical"),
                                          ("n", "int4"): ("lower", "lower")}))
    assert groups["PACS fp32→P - TS fp32"]["identical"] == ["m bf16"]
    assert groups["PACS fp32→P - TS fp32"]["helps"] == ["n int4"]


@pytest.mark.slow
def test_quick_run_writes_a_page_consistent_with_its_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PRECAL_SEED_CACHE"}
    env["PRECAL_SEED_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_cross_precision.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "study_cross_precision.json").read_text())
    assert report["quick"] is True and report["verdict"]["word"] in ("reproduced", "partly reproduced",
                                                                     "not reproduced")
    for block in report["blocks"].values():
        for r in block["models"].values():
            assert len(r["fitted"]["pacs_fp32_lambda_eps"]) == report["n_splits"]
            for p, by_m in r["per_split"].items():
                acc = {tuple(s["accuracy"]) for s in by_m.values()}
                assert len(acc) == 1  # no calibrator here changes the argmax
                if p != "fp32" and r["fitted"]["pacs_fp32_share_lambda_zero"] == 1.0:
                    assert by_m["PACS fp32→P"] == by_m["TS fp32"]  # λ = 0: re-targeting changes nothing
    doc = (tmp_path / "study-cross-precision.md").read_text()
    assert f"**Verdict: {report['verdict']['word']}.**" in doc and "(quick smoke test)" in doc
    assert "Where PACS helps and where it equals TS" in doc
    assert all(note.split(" (")[0] in doc for note in report["unavailable"])
    assert (tmp_path / "figures" / "study-cross-precision-ece.png").is_file()
    (tmp_path / "study-cross-precision.md").unlink()
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_cross_precision.py"), "--page-only",
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "study-cross-precision.md").read_text() == doc  # the page is a function of the JSON


@pytest.mark.skipif(not (ROOT / "benchmarks" / "results" / "study_cross_precision.json").is_file(),
                    reason="results not committed")
def test_committed_page_matches_the_committed_results():
    """Rebuild it with study_cross_precision.py --page-only when the rendering changes."""
    report = json.loads((ROOT / "benchmarks" / "results" / "study_cross_precision.json").read_text())
    results_md, doc_md = cp.render(report)
    assert (ROOT / "docs" / "study-cross-precision.md").read_text() == doc_md
    assert (ROOT / "benchmarks" / "results" / "study_cross_precision.md").read_text() == results_md


def test_quick_never_writes_the_committed_folders():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_cross_precision.py"), "--quick", "--out",
                           str(ROOT / "docs")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "never writes to the committed" in proc.stderr

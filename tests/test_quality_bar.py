"""The quality-bar benchmark (benchmarks/quality_bar.py): its peers on synthetic logits, the
bar's rules on a made-up cache, and a --quick run end to end (skipped without ../shared)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness as h

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality_bar as qb  # noqa: E402


def _logits(n=600, k=4, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * (np.eye(k)[y] + rng.normal(size=(n, k)))
    return z, y


@pytest.mark.parametrize("k", [2, 4])
def test_sklearn_temperature_peer_matches_precal_temperature_scaling(k):
    """Both fit one temperature by maximum likelihood on the same logits: same probabilities."""
    from precal import TemperatureScaling

    z, y = _logits(k=k)
    peer = qb.SklearnPeer("temperature").fit(z[:300], y[:300]).predict_proba(z[300:])
    ts = TemperatureScaling().fit(z[:300], y[:300]).predict_proba(z[300:])
    np.testing.assert_allclose(peer, ts, atol=2e-3)


@pytest.mark.parametrize("label", ["sklearn sigmoid", "sklearn isotonic", "netcal TS", "netcal isotonic",
                                   "netcal histogram"])
@pytest.mark.parametrize("k", [2, 4])
def test_peers_give_probability_rows(label, k):
    z, y = _logits(k=k)
    p = qb.make_peer(label).fit(z[:300], y[:300]).predict_proba(z[300:])
    assert p.shape == (300, k)
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0)


def test_one_split_scores_and_records_auto_choice_and_failures():
    z, y = _logits()
    cal, test = h.make_splits(y, 1, 0)[0]
    out = qb.one_split((z, y, cal, test, ["uncalibrated", "TS", "Auto"], "fp32"))
    unc = out["uncalibrated"]
    assert unc["accuracy"] == pytest.approx(np.mean(z[test].argmax(axis=1) == y[test]))
    assert unc["nll"] == pytest.approx(h.scores(y[test], h.softmax64(z[test]), ("nll",))["nll"])
    assert out["TS"]["fit_s"] > 0 and set(qb.METRICS) <= set(out["TS"])
    assert out["Auto"]["choice"] in ("temperature", "ets", "top_label_isotonic", "top_label_spline",
                                     "top_label_isotonic_raw", "top_label_spline_raw")


def _cache(values):
    """A cache of ``{method: [(ece, nll, accuracy) per split]}`` for one setting ``f|fp32``."""
    cache = {}
    for label, rows in values.items():
        for s, (e, n, a) in enumerate(rows):
            cache[f"f|fp32|{s}|{label}"] = {"ece": e, "nll": n, "accuracy": a, "dece": e, "fit_s": 0.01}
    return cache


def test_bar_passes_within_one_sd_of_the_best_reference_and_fails_beyond():
    base = {"uncalibrated": [(0.10, 0.50, 0.9)] * 3, "TS": [(0.030, 0.30, 0.9)] * 3,
            "TL isotonic + TS": [(0.010, 0.300, 0.9), (0.012, 0.300, 0.9), (0.014, 0.300, 0.9)]}
    labels = ["uncalibrated", "TS", "TL isotonic + TS", "Auto"]
    # best reference: mean 0.012, sd 0.002 -> target 0.014

    def bar_of(auto):
        cache = _cache(base | {"Auto": auto})
        return qb.bar(qb.summarize(cache, "f|fp32", labels, 3), cache, "f|fp32")

    ok = bar_of([(0.0139, 0.301, 0.9)] * 3)
    assert ok["best_reference"] == "TL isotonic + TS" and ok["ece_target"] == pytest.approx(0.014)
    assert ok["auto_ok"]
    ece_miss = bar_of([(0.0145, 0.30, 0.9)] * 3)
    assert not ece_miss["ece_ok"] and not ece_miss["auto_ok"]
    nll_miss = bar_of([(0.01, 0.306, 0.9)] * 3)
    assert nll_miss["ece_ok"] and not nll_miss["nll_ok"]
    acc_miss = bar_of([(0.01, 0.30, 0.89)] * 3)
    assert not acc_miss["accuracy_change"] >= 0 and acc_miss["accuracy_change"] == pytest.approx(-0.01)
    assert not acc_miss["accuracy_ok"]
    # the change is the mean of the paired per-split differences: equal accuracies give exactly 0
    odd = [(0.01, 0.30, 0.1 + 0.2), (0.01, 0.30, 0.7), (0.01, 0.30, 0.9)]
    base["uncalibrated"] = [(0.10, 0.50, a) for _, _, a in odd]
    assert bar_of(odd)["accuracy_change"] == 0.0


def test_fuzzy_rule_compares_on_the_splits_both_ran():
    cache = _cache({"Dirichlet": [(0.02, 0.30, 0.9), (0.02, 0.31, 0.9), (0.02, 0.32, 0.9)],
                    "Fuzzy": [(0.02, 0.29, 0.9), (0.02, 0.30, 0.9)]})
    labels = ["Dirichlet", "Fuzzy"]
    summary = qb.summarize(cache, "f|fp32", labels, 3)
    assert summary["Fuzzy"]["n"] == 2 and summary["Dirichlet"]["n"] == 3
    res = qb.bar(summary, cache, "f|fp32")
    assert res["fuzzy_minus_dirichlet_nll"]["n"] == 2
    assert res["fuzzy_minus_dirichlet_nll"]["mean"] == pytest.approx(-0.01)
    assert res["fuzzy_ok"]


def test_summarize_reports_a_method_that_failed_everywhere():
    cache = {f"f|fp32|{s}|netcal BBQ": {"error": "ValueError: boom"} for s in range(2)}
    assert qb.summarize(cache, "f|fp32", ["netcal BBQ"], 2)["netcal BBQ"] == {"n": 0, "error": "ValueError: boom"}


@pytest.mark.slow
def test_quick_run_writes_pages_and_reruns_one_method_from_the_cache(tmp_path):
    if not qb.DATA.is_dir():
        pytest.skip(f"{qb.DATA} not found (real logits live outside the repository)")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality_bar.py"), "--quick", "--out", str(tmp_path),
           "--settings", "imdb"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "quality_bar_runs.json").read_text())["runs"]
    report = json.loads((tmp_path / "quality_bar.json").read_text())
    assert set(report["settings"]) == {"cv-textclf_imdb|fp32"}
    assert report["settings"]["cv-textclf_imdb|fp32"]["summary"]["TS"]["n"] == report["n_splits"]
    assert "Auto meets the bar" in (tmp_path / "benchmarks-quality.md").read_text()
    ts_before = {k: v for k, v in runs.items() if k.endswith("|TS")}
    marked = {k: dict(v, fit_s=-1.0) if k.endswith("|TS") else v for k, v in runs.items()}
    (tmp_path / "quality_bar_runs.json").write_text(json.dumps({"runs": marked}))
    proc = subprocess.run(cmd + ["--methods", "auto"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((tmp_path / "quality_bar_runs.json").read_text())["runs"]
    assert all(after[k]["fit_s"] == -1.0 for k in ts_before), "--methods auto must keep the cached TS results"
    assert all(after[k]["fit_s"] >= 0 for k in after if k.endswith("|Auto"))

"""benchmarks/study_fuzzy_reg.py: its methods, one split, the summary and verdict, and its --quick run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness as h
from benchmarks import study_fuzzy_reg as sr
from precal.calibration import FuzzyDirichletCalibrator

from .conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_fuzzy_reg.py"


def _toy(n=240, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    return 2.0 * (np.eye(k)[y] + rng.normal(size=(n, k))), y


def test_method_spec_sets_reg_region_and_keeps_the_other_defaults():
    methods, missing = h.method_table(sr.method_spec((1.0, 10.0), None), random_state=3)
    assert missing == [] and list(methods) == ["TS", "Dirichlet", "ρ=1", "ρ=10", sr.UNCHECKED]
    defaults = FuzzyDirichletCalibrator().get_params()
    for label, rho, check in (("ρ=1", 1.0, True), ("ρ=10", 10.0, True), (sr.UNCHECKED, 10.0, False)):
        params = methods[label]().get_params()
        assert params["reg_region"] == rho and params["check_gates"] is check and params["random_state"] == 3
        changed = ("reg_region", "check_gates", "random_state")
        assert {k: v for k, v in params.items() if k not in changed} == \
            {k: v for k, v in defaults.items() if k not in changed}
    assert methods["ρ=1"]().get_params()["max_iter"] == defaults["max_iter"]
    capped = h.method_table(sr.method_spec((1.0,), 7))[0]
    assert capped["ρ=1"]().max_iter == 7 and capped["TS"]().get_params() == methods["TS"]().get_params()
    assert [sr.rho_label(r) for r in (0.1, 10.0, 100.0)] == ["ρ=0.1", "ρ=10", "ρ=100"]


def test_region_spread_is_zero_for_one_map_and_the_rms_deviation_otherwise():
    est = FuzzyDirichletCalibrator()
    est.coefs_ = np.tile(np.arange(9.0).reshape(3, 3), (3, 1, 1))
    est.intercepts_ = np.zeros((3, 3))
    assert sr.region_spread(est) == 0.0
    est.intercepts_ = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    # deviations from the mean intercept: 6 entries of ±1 among 27 + 9
    assert sr.region_spread(est) == pytest.approx(math.sqrt(6 / 36))


@pytest.fixture(scope="module")
def toy_run():
    z, y = _toy()
    spec = sr.method_spec((1.0, 10.0), 15)
    outs = [sr.one_split((z, y, cal, test, spec, s)) for s, (cal, test) in enumerate(h.make_splits(y, 3, 0))]
    return z, y, outs, sr.summarize(outs, (1.0, 10.0))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_one_split_and_summary(toy_run):
    z, y, outs, methods = toy_run
    assert list(methods) == ["TS", "Dirichlet", "ρ=1", "ρ=10", sr.UNCHECKED]
    for label, e in methods.items():
        for k in (*sr.METRICS, "train_nll", "seconds"):
            assert len(e["per_split"][k]) == 3 and all(math.isfinite(v) for v in e["per_split"][k])
            assert e["summary"][k]["mean"] == pytest.approx(np.mean(e["per_split"][k]))
        assert ("Dirichlet" in e["vs"]) == (label != "Dirichlet") and ("ρ=10" in e["vs"]) == (label != "ρ=10")
        assert ("mean_spread" in e) == (label not in ("TS", "Dirichlet"))
    # TS keeps every argmax: its test accuracy is the raw logits'
    raw = [np.mean(z[test].argmax(axis=1) == y[test]) for _, test in h.make_splits(y, 3, 0)]
    assert methods["TS"]["per_split"]["accuracy"] == pytest.approx(raw)
    # a fuzzy fit whose gates lost is Dirichlet's map: same scores, one map everywhere
    for o in outs:
        for label in ("ρ=1", "ρ=10"):
            if not o[label]["gated"]:
                assert o[label]["nll"] == pytest.approx(o["Dirichlet"]["nll"], abs=1e-9)
                assert o[label]["spread"] == pytest.approx(0.0, abs=1e-9)
    assert methods[sr.UNCHECKED]["n_gated"] == 3  # without the check the gated maps are always kept
    d = np.subtract(methods["ρ=1"]["per_split"]["nll"], methods["Dirichlet"]["per_split"]["nll"])
    assert methods["ρ=1"]["vs"]["Dirichlet"]["nll"]["mean"] == pytest.approx(d.mean())


def _settings(nll):
    """One setting whose per-split test NLLs are ``nll[label]``."""
    methods = {}
    for label, values in nll.items():
        methods[label] = {"per_split": {"nll": values, "ece": values}, "summary": {"nll": h.mean_sd(values)},
                          "n_gated": 0, "n_fits": len(values)}
    for label, e in methods.items():
        e["vs"] = {b: {k: h.paired(e["per_split"][k], methods[b]["per_split"][k],
                                   min_effect=sr.NLL_TOL if k == "nll" else 0.0) for k in ("nll", "ece")}
                   for b in ("Dirichlet", "ρ=10") if b != label}
    return {"toy / int4": {"methods": methods}}


@pytest.mark.parametrize("rho1, rho10, word", [
    ([0.30, 0.31, 0.32], [0.30, 0.31, 0.32], "sensible"),
    ([0.20, 0.21, 0.22], [0.30, 0.31, 0.32], "not supported"),  # another ρ clearly better
    ([0.40, 0.41, 0.42], [0.40, 0.41, 0.42], "not supported"),  # ρ=10 clearly above Dirichlet
])
def test_verdict(rho1, rho10, word):
    dirichlet = [0.30, 0.31, 0.32]
    report = {"rho": [1.0, 10.0], "settings": _settings({"Dirichlet": dirichlet, "ρ=1": rho1, "ρ=10": rho10,
                                                          sr.UNCHECKED: [0.35, 0.36, 0.37]})}
    v = sr.verdict(report)
    assert v["word"] == word
    assert any("clearly above Dirichlet's in 1 of 1 settings (toy / int4) and clearly below it in 0." in d
               for d in v["details"])
    assert any(d.startswith("ρ=10's test NLL is clearly above Dirichlet's in " + ("1" if word == "not supported"
                                                                                  and rho10[0] > 0.3 else "0"))
               for d in v["details"])


def _run(*args):
    return run_script(SCRIPT, *args)


@pytest.mark.slow
def test_quick_run_writes_consistent_outputs(tmp_path):
    _run("--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "study_fuzzy_reg.json").read_text(encoding="utf-8"))
    assert report["quick"] is True and report["n_splits"] == 2 and report["rho"] == [1.0, 10.0]
    assert list(report["settings"]) == ["digits-10 / int4"]
    methods = report["settings"]["digits-10 / int4"]["methods"]
    assert list(methods) == ["TS", "Dirichlet", "ρ=1", "ρ=10", sr.UNCHECKED]
    for e in methods.values():
        assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in e["per_split"].values())
    assert report["verdict"]["word"] in ("sensible", "not supported")
    md = (tmp_path / "study_fuzzy_reg.md").read_text(encoding="utf-8")
    doc = (tmp_path / "study-fuzzy-reg.md").read_text(encoding="utf-8")
    for text in (md, doc):
        table = [line for line in text[text.index("#### digits-10 / int4"):].split("\n\n")[1].splitlines()]
        assert [row.split("|")[1].strip() for row in table[2:]] == list(methods)
        assert all(row.count("|") == table[0].count("|") for row in table)
    assert doc.count(sr.MARKS[0]) == 1 and doc.count(sr.MARKS[1]) == 1
    png = tmp_path / "figures" / sr.FIG_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](figures/{sr.FIG_FILE})" in doc
    (tmp_path / "study-fuzzy-reg.md").write_text("hand-written\n" + doc + "more\n", encoding="utf-8")
    _run("--quick", "--out", str(tmp_path), "--page-only")
    assert (tmp_path / "study_fuzzy_reg.md").read_text(encoding="utf-8") == md
    assert json.loads((tmp_path / "study_fuzzy_reg.json").read_text(encoding="utf-8")) == report
    assert (tmp_path / "study-fuzzy-reg.md").read_text(encoding="utf-8") == "hand-written\n" + doc + "more\n"

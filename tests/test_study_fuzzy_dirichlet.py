"""benchmarks/study_fuzzy_dirichlet.py: its split job, summary and verdict (the full run needs ../shared)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_fuzzy_dirichlet.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_fuzzy_dirichlet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _out(nll, acc, fit_s, gated=False):
    """One split's result as one_split returns it, with the given per-method NLL, accuracy and fit time."""
    return {"scores": {m: {"accuracy": acc[m], "ece": 0.02, "nll": nll[m]} for m in nll},
            "fit_s": {m: fit_s[m] for m in fit_s}, "warnings": [],
            "fitted": {"Dirichlet": {"reg_lambda_": 1.0}, "Fuzzy": {"reg_lambda_": 1.0, "gated_": gated}}}


def _report(study, fuzzy_nll_shift, fuzzy_acc_shift, fuzzy_time):
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(20):
        base = 0.3 + 0.01 * rng.normal()
        nll = {"uncalibrated": base + 0.1, "TS": base + 0.002, "Dirichlet": base,
               "Fuzzy": base + fuzzy_nll_shift + 1e-4 * rng.normal() * (fuzzy_nll_shift != 0)}
        acc = {m: 0.9 for m in nll} | {"Fuzzy": 0.9 + fuzzy_acc_shift}
        outs.append(_out(nll, acc, {"TS": 0.01, "Dirichlet": 0.5, "Fuzzy": fuzzy_time}))
    r = {"a setting": {"n_calibration": 1000, "n_test": 5000, "k": 10} | study.summarize(outs)}
    timing = {"f.npz": {"n": 5000, "k": 100, "median_s": {"TS": 0.01, "Dirichlet": 0.5, "Fuzzy": fuzzy_time},
                        "ratio_to_ts": {"TS": 1.0, "Dirichlet": 50.0, "Fuzzy": fuzzy_time / 0.01}}}
    return {"settings": r, "timing": timing}


def test_verdict_follows_the_three_bars(study):
    same = _report(study, 0.0, 0.0, 0.1)
    assert same["settings"]["a setting"]["comparisons"]["Fuzzy - Dirichlet"]["nll"]["verdict"] == "identical"
    assert study.verdict(same)["word"] == "holds"  # 10x TS, identical NLL, same accuracy
    assert study.verdict(_report(study, 0.0, 0.0, 1.0))["word"] == "holds for quality, not for time"  # 100x
    worse = _report(study, 0.01, 0.0, 0.1)
    assert worse["settings"]["a setting"]["comparisons"]["Fuzzy - Dirichlet"]["nll"]["verdict"] == "higher"
    assert study.verdict(worse)["word"] == "does not hold"
    assert study.verdict(_report(study, 0.0, -0.002, 0.1))["word"] == "does not hold"  # -0.2 accuracy points
    assert study.verdict(_report(study, 0.0, -0.0009, 0.1))["word"] == "holds"  # within 0.1 point
    gain = study.verdict(_report(study, 0.0, 0.005, 0.1))  # a gain is listed, not a failure
    assert gain["word"] == "holds" and "+0.50 points" in gain["details"][1]


def test_one_split_fits_every_method_and_scores_it(study):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    z = 3.0 * (np.eye(3)[y] + rng.normal(size=(300, 3)))
    cal, test = np.arange(150), np.arange(150, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = study.one_split((z, y, cal, test, 0))
    assert list(out["scores"]) == list(study.METHODS)
    assert set(out["fit_s"]) == {"TS", "Dirichlet", "Fuzzy"} and all(t > 0 for t in out["fit_s"].values())
    assert isinstance(out["fitted"]["Fuzzy"]["gated_"], bool)
    assert out["fitted"]["Fuzzy"]["reg_lambda_"] == out["fitted"]["Dirichlet"]["reg_lambda_"]  # stage 1 is Dirichlet
    if not out["fitted"]["Fuzzy"]["gated_"]:
        assert out["scores"]["Fuzzy"]["nll"] == pytest.approx(out["scores"]["Dirichlet"]["nll"], abs=1e-12)

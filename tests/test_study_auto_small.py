"""benchmarks/study_auto_small.py: its data, the ablation, one split, the verdict and its --quick run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness as h
from benchmarks import study_auto_small as sa
from precal.calibration import AutoCalibrator
from precal.calibration.auto import MATRIX_FAMILY

from .conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_auto_small.py"


def test_synthetic_sets_have_the_stated_accuracy_and_only_the_distortion_differs():
    low, plain, distorted = (sa.synthetic(a, t, c, sa.SYNTHETIC_ROWS, sa.SYNTHETIC_CLASSES, seed)
                             for a, t, c, seed in sa.SYNTHETIC.values())
    for (z, y), name in zip((low, plain, distorted), sa.SYNTHETIC):
        stated = int(name.split()[1])  # "synthetic 31 %, ..."
        assert abs(100 * np.mean(z.argmax(axis=1) == y) - stated) < 1.0, name
    (z0, y0), (z1, y1) = plain, distorted
    assert np.array_equal(y0, y1)
    assert np.array_equal(z0.argmax(axis=1), z1.argmax(axis=1))  # raising the top logit keeps the argmax
    changed = np.flatnonzero(np.any(z0 != z1, axis=1))
    assert len(changed) == len(y0)
    rows = np.arange(len(y0))
    assert np.all(z1[rows, z0.argmax(axis=1)] > z0[rows, z0.argmax(axis=1)])


def test_the_ablation_is_auto_without_the_margin():
    """AutoWithoutMargin admits what beats TS's pooled ECE at all; AutoCalibrator only beyond the bootstrap se."""
    z, y = sa.synthetic(0.9, 2.5, 0.0, 600, 10, seed=1)
    plain = sa.AutoWithoutMargin().fit(z, y)
    auto = AutoCalibrator().fit(z, y)
    assert np.array_equal(plain.cv_results_["mean_score"], auto.cv_results_["mean_score"])  # same folds, same fits
    assert np.all(plain.cv_results_["pooled_standard_error"] == 0.0)
    assert np.all(auto.cv_results_["pooled_standard_error"][1:] > 0.0)
    for est, margin in ((plain, 0.0), (auto, auto.cv_results_["pooled_standard_error"])):
        res = est.cv_results_
        gain = res["mean_score"] + margin < res["mean_score"][0]
        ts_family = np.array([c not in MATRIX_FAMILY for c in res["candidate"]])
        assert not np.any(res["eligible"][1:] & ts_family[1:] & ~gain[1:])
    assert AutoCalibrator._ece_margin is True and sa.AutoWithoutMargin._ece_margin is False


def test_one_split_scores_every_method_on_the_test_half():
    z, y = sa.synthetic(1.2, 2.5, 2.0, 1200, 10, seed=2)
    cal, test = h.make_splits(y, 2, 0)[0]
    out = sa.one_split((z, y, cal, test, 300, 7))
    assert list(out) == list(sa.METHODS)
    for label, scores in out.items():
        assert all(math.isfinite(scores[k]) for k in sa.METRICS)
        assert (scores["chosen"] is None) == (label == "TS")
    assert out["TS"]["accuracy"] == pytest.approx(np.mean(z[test].argmax(axis=1) == y[test]))


def _report(auto_ece, plain_ece, auto_nll):
    def paired(a):
        return {"ece": h.paired(a, [0.02] * 3), "nll": h.paired(auto_nll, [0.5] * 3)}

    summary = {m: {"ece": h.mean_sd(v)} for m, v in
               (("TS", [0.02] * 3), ("Auto", auto_ece), ("Auto, no margin", plain_ece))}
    return {"settings": {"s": {"n": 300, "summary": summary,
                               "vs_ts": {"Auto": paired(auto_ece), "Auto, no margin": paired(plain_ece)}}}}


@pytest.mark.parametrize("auto_ece, auto_nll, word", [
    ([0.02, 0.021, 0.019], [0.5, 0.5, 0.5], "holds"),             # within noise
    ([0.03, 0.031, 0.029], [0.5, 0.5, 0.5], "does not hold"),     # clearly above TS
    ([0.02, 0.021, 0.019], [0.51, 0.51, 0.51], "does not hold"),  # NLL beyond the slack
])
def test_verdict(auto_ece, auto_nll, word):
    v = sa.verdict(_report(auto_ece, [0.03, 0.031, 0.029], auto_nll))
    assert v["word"] == word
    assert v["details"][3].startswith("Ablation (no margin): clearly above TS on ECE in 1 of 1")
    excess = 100 * (np.mean(auto_ece) - 0.02)
    assert v["details"][4] == (
        f"Mean held-out ECE over the settings: TS 2.00 %, Auto {100 * np.mean(auto_ece):.2f} %, Auto, no margin "
        f"3.00 %. Mean ECE above TS's in {int(excess > 0)} (Auto, largest excess {excess:+.2f} points) and 1 "
        "(Auto, no margin, largest excess +1.00 points) of 1 settings.")
    assert v["details"][5] == (f"At n = 300: Auto's mean ECE above TS's in {int(excess > 0)}, equal in "
                               f"{int(excess == 0)}, below in {int(excess < 0)} of 1 settings (largest excess "
                               f"{excess:+.2f} points, mean {excess:+.2f}).")
    if word == "does not hold":
        assert "(see the details)" in v["reason"]


def _run(*args):
    return run_script(SCRIPT, *args)


@pytest.mark.slow
def test_quick_run_writes_consistent_outputs(tmp_path):
    _run("--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "study_auto_small.json").read_text(encoding="utf-8"))
    assert report["quick"] is True and report["n_splits"] == 2 and report["sizes"] == [300]
    assert list(report["settings"]) == [f"{name}, n = 300" for name in sa.SYNTHETIC]
    for st in report["settings"].values():
        for m in sa.METHODS:
            assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in st["per_split"][m].values())
        assert sum(st["chosen"]["Auto"].values()) == 2
    assert report["verdict"]["word"] in ("holds", "does not hold")
    doc = (tmp_path / "study-auto-small.md").read_text(encoding="utf-8")
    table = [line for line in doc.splitlines() if line.startswith("| synthetic")]
    assert len(table) == len(sa.SYNTHETIC) and all(row.count("|") == 11 for row in table)
    assert report["verdict"]["reason"] in doc

"""benchmarks/study_fuzzy_reg.py: its helpers, and its --quick run end to end (outputs well formed)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precal.calibration import DirichletCalibrator, FuzzyDirichletCalibrator, TemperatureScaling

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_fuzzy_reg.py"
SHARED_FILE = ROOT.parent / "shared" / "data" / "logits" / "resnet50_cifar10.npz"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_fuzzy_reg", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy(n=240, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = 2.0 * (np.eye(k)[y] + rng.normal(size=(n, k)))
    return z, y


# --------------------------------------------------------------------------- helpers
def test_arguments_defaults_quick_and_bad_values(study):
    full = study.parse_args([])
    assert full.rho == study.RHO_GRID == (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    assert full.splits == study.DEFAULT_SPLITS and full.sources == ("int4", "fp32") and full.max_iter is None
    assert full.datasets == ("digits-10", "resnet50-10", "resnet50-3") and full.workers == 2
    quick = study.parse_args(["--quick"])
    assert quick.rho == (0.0, 0.01, 10.0) and quick.splits == 2 and quick.sources == ("int4",)
    assert quick.max_iter == study.QUICK_MAX_ITER and quick.datasets == ("digits-10", "resnet50-3")
    assert study.parse_args(["--rho", "10,0,1,10"]).rho == (0.0, 1.0, 10.0)  # sorted, deduplicated
    for bad in (["--rho", "-1"], ["--rho", "nan"], ["--rho", "x"], ["--splits", "1"], ["--sources", "int8"],
                ["--sources", "int4,int4"], ["--datasets", "mnist"], ["--max-iter", "0"], ["--workers", "0"]):
        with pytest.raises(SystemExit):
            study.parse_args(bad)
    with pytest.raises(SystemExit, match="never writes"):
        study.output_paths(study.parse_args(["--quick", "--out", str(study.DEFAULT_RESULTS_DIR)]))


def test_make_calibrator_sets_reg_region_and_keeps_other_defaults(study):
    cal = study.make_calibrator("Fuzzy", 0.1, 7, None)
    defaults = FuzzyDirichletCalibrator().get_params()
    params = cal.get_params()
    # the study measures the gated fit itself, so the held-out check that may discard it is off
    assert params["reg_region"] == 0.1 and params["random_state"] == 7 and params["check_gates"] is False
    changed = ("reg_region", "random_state", "check_gates")
    assert {k: v for k, v in params.items() if k not in changed} == \
        {k: v for k, v in defaults.items() if k not in changed}
    assert study.make_calibrator("Fuzzy", 1.0, 0, 12).max_iter == 12
    assert isinstance(study.make_calibrator("TS", None, 0, 5), TemperatureScaling)
    assert study.make_calibrator("Dirichlet", None, 0, 5).get_params() == DirichletCalibrator().get_params()
    with pytest.raises(ValueError, match="method must be"):
        study.make_calibrator("PACS", None, 0, None)
    assert [study.rho_label(r) for r in (0.0, 1e-3, 10.0)] == ["ρ=0", "ρ=0.001", "ρ=10"]


def test_region_spread_is_zero_for_one_map_and_the_rms_deviation_otherwise(study):
    cal = FuzzyDirichletCalibrator()
    cal.coefs_ = np.tile(np.arange(9.0).reshape(3, 3), (3, 1, 1))
    cal.intercepts_ = np.tile([1.0, -1.0, 0.0], (3, 1))
    assert study.region_spread(cal) == 0.0
    cal.coefs_ = cal.coefs_ + np.array([-1.0, 0.0, 1.0])[:, None, None]  # deviations -1, 0, +1 on every entry
    # squared deviations: 9 entries each of 1, 0, 1 over 27 coefficient + 9 intercept entries
    assert study.region_spread(cal) == pytest.approx(math.sqrt(18.0 / 36.0))


def test_replace_region_rewrites_only_between_the_markers(study):
    page = f"# T\n\nintro\n\n{study.BEGIN_MARK}\nold\n{study.END_MARK}\n\n## Reading\nmine\n"
    out = study.replace_region(page, "new\n")
    assert out == f"# T\n\nintro\n\n{study.BEGIN_MARK}\nnew\n{study.END_MARK}\n\n## Reading\nmine\n"
    assert study.replace_region(out, "new") == out
    with pytest.raises(ValueError, match="must contain the line"):
        study.replace_region("no markers", "new")


def test_shared_data_sets_are_skipped_with_a_reason_when_absent(study, tmp_path):
    datasets, reason = study.load_datasets(("resnet50-10", "resnet50-3"), 0, tmp_path / "absent")
    assert datasets == [] and "is not there" in reason


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_jobs_summary_and_verdicts_on_a_toy_data_set(study):
    z, y = _toy()
    ds = {"name": "resnet50-3", "description": "toy", "notes": [], "n_classes": 3, "y": y,
          "logits": {"fp32": z, "logit-int4": np.round(z)}}
    rhos = (0.0, 10.0)
    jobs, sizes = study.make_jobs([ds], ("int4",), rhos, 3, 0, 15)
    n_cal = int(sum(np.bincount(y) // 2))  # half of every class, rounded down
    assert len(jobs) == 3 * (2 + len(rhos)) and sizes["resnet50-3"] == (n_cal, len(y) - n_cal)
    # the INT4 source's rows; calibration and test halves disjoint and covering the pool
    j0 = jobs[0]
    assert len(j0["y_cal"]) + len(j0["y_test"]) == len(y) and set(np.unique(j0["z_cal"] % 1.0)) == {0.0}
    results = study.run_jobs(jobs, workers=1)
    blocks = study.summarise([ds], sizes, ("int4",), rhos, 3, results)
    methods = blocks[0]["sources"]["int4"]["methods"]
    assert list(methods) == ["TS", "Dirichlet", "ρ=0", "ρ=10"]
    assert blocks[0]["sources"]["int4"]["logits"] == "logit-int4"
    for label, e in methods.items():
        for metric in ("nll", "ece", "ace", "accuracy", "train_nll", "gap"):
            assert len(e["per_split"][metric]) == 3 and all(math.isfinite(v) for v in e["per_split"][metric])
            assert e["summary"][metric]["mean"] == pytest.approx(np.mean(e["per_split"][metric]))
        assert e["per_split"]["gap"] == pytest.approx(np.subtract(e["per_split"]["nll"], e["per_split"]["train_nll"]))
        assert ("Dirichlet" in e["vs"]) == (label != "Dirichlet") and ("TS" in e["vs"]) == (label != "TS")
        assert 0 <= e["n_converged"] <= 3
    assert methods["ρ=0"]["rho"] == 0.0 and methods["TS"]["rho"] is None
    # temperature scaling keeps every argmax: its test accuracy is the raw logits' on each split
    raw = [np.mean(j["z_test"].argmax(axis=1) == j["y_test"]) for j in jobs if j["key"][3] == "TS"]
    assert methods["TS"]["per_split"]["accuracy"] == pytest.approx(raw)
    assert methods["ρ=10"]["mean_spread"] < methods["ρ=0"]["mean_spread"]  # the penalty ties the regions
    # paired difference against Dirichlet is the per-split difference
    d = np.subtract(methods["ρ=10"]["per_split"]["nll"], methods["Dirichlet"]["per_split"]["nll"])
    assert methods["ρ=10"]["vs"]["Dirichlet"]["nll"]["mean"] == pytest.approx(d.mean())
    assert methods["ρ=10"]["vs"]["Dirichlet"]["nll"]["wins"] == int(np.sum(d < 0))
    v = study.verdicts(blocks, rhos)
    assert set(v["per_rho"]) == {"ρ=0", "ρ=10"} and v["settings"] == ["resnet50-3 / int4"]
    for row in v["per_rho"].values():
        assert row["n_fits"] == 3 and row["nll"]["better"] == row["nll"]["worse"] == 0  # 3 splits: p >= 0.25
    assert v["smallest_safe_rho"] in (None, *rhos) and v["smallest_near_best_rho"] in (None, *rhos)
    # every ρ against the setting's best: "behind" = significantly worse by more than the tolerance
    best_label = study.rho_label(v["best_nll_rho"]["resnet50-3 / int4"])
    others = v["vs_best_rho"]["resnet50-3 / int4"]
    assert set(others) == {study.rho_label(r) for r in rhos} - {best_label}
    for lab, c in others.items():
        d = np.subtract(methods[lab]["per_split"]["nll"], methods[best_label]["per_split"]["nll"])
        assert c["mean"] == pytest.approx(d.mean()) and c["mean"] >= 0
        assert (lab in v["behind_best_rho"]["resnet50-3 / int4"]) == (c["verdict"] == "worse"
                                                                       and c["mean"] > study.NLL_TOL)
    best = v["best_nll_rho"]["resnet50-3 / int4"]
    assert methods[study.rho_label(best)]["summary"]["nll"]["mean"] == min(
        methods[study.rho_label(r)]["summary"]["nll"]["mean"] for r in rhos)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_checkpoint_stores_every_fit_and_resume_refits_none(study, tmp_path, monkeypatch):
    z, y = _toy(n=120)
    ds = {"name": "resnet50-3", "description": "toy", "notes": [], "n_classes": 3, "y": y,
          "logits": {"fp32": z, "logit-int4": np.round(z)}}
    jobs, _ = study.make_jobs([ds], ("fp32",), (1.0,), 2, 0, 10)
    path = tmp_path / "fits.jsonl"
    first = study.run_jobs(jobs, 1, checkpoint=path)
    stored = study.load_checkpoint(path)
    assert set(stored) == {tuple(j["key"]) for j in jobs}
    path.write_text(path.read_text(encoding="utf-8") + '{"key": ["cut', encoding="utf-8")  # interrupted write
    assert study.load_checkpoint(path).keys() == stored.keys()

    def refuse(job):
        raise AssertionError(f"refitted {job['key']}")

    monkeypatch.setattr(study, "fit_job", refuse)
    again = study.run_jobs(jobs, 1, checkpoint=None, done_before=stored)
    for a, b in zip(first, again):
        assert a["key"] == b["key"] and a["converged"] == b["converged"]
        assert b["scores"]["nll"] == pytest.approx(a["scores"]["nll"], rel=1e-6)
    assert study.load_checkpoint(tmp_path / "absent.jsonl") == {}


# --------------------------------------------------------------------------- end to end
def _run(*args, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_quick_run_writes_consistent_outputs(tmp_path):
    _run("--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "study_fuzzy_reg.json").read_text(encoding="utf-8"))
    assert report["quick"] is True and report["n_splits"] == 2 and report["rho"] == [0.0, 0.01, 10.0]
    assert report["sources"] == ["int4"] and report["fuzzy_params"]["max_iter"] == 40
    assert report["fuzzy_params"]["noise"] == "int4" and report["fuzzy_params"]["n_regions"] == 3
    names = [b["name"] for b in report["datasets"]]
    if SHARED_FILE.is_file():
        assert names == ["digits-10", "resnet50-3"] and report["shared_skipped"] is None
    else:  # no ../shared: the ResNet-50 set is skipped, with the reason in the outputs
        assert names == ["digits-10"] and report["shared_skipped"]
    labels = ["TS", "Dirichlet", "ρ=0", "ρ=0.01", "ρ=10"]
    for block in report["datasets"]:
        assert block["n_calibration"] + block["n_test"] == block["n_samples"]
        src = block["sources"]["int4"]
        assert src["logits"] == ("w4a4" if block["name"] == "digits-10" else "logit-int4")
        assert list(src["methods"]) == labels
        for label, e in src["methods"].items():
            for metric in ("nll", "ece", "ace", "cwece", "accuracy", "train_nll"):
                values = e["per_split"][metric]
                assert len(values) == 2 and all(v is not None and math.isfinite(v) for v in values)
                assert metric in ("nll", "train_nll") or all(0.0 <= v <= 1.0 for v in values)
                assert e["summary"][metric]["mean"] == pytest.approx(np.mean(values), rel=1e-5, abs=1e-9)
            assert len(e["fits"]["converged"]) == len(e["fits"]["seconds"]) == 2
            assert e["n_converged"] == sum(e["fits"]["converged"])
            if label.startswith("ρ"):
                assert e["median_n_iter"] <= 2 * 40  # stage 1: a few Newton steps; stage 2: L-BFGS capped at 40
                assert all(len(c) == 3 for c in e["fits"]["centers"]) and e["min_width"] > 0
            if label != "Dirichlet":
                c = e["vs"]["Dirichlet"]["nll"]
                assert c["n"] == 2 and c["wins"] + c["losses"] <= 2
    v = report["verdicts"]
    assert list(v["per_rho"]) == labels[2:] and len(v["settings"]) == len(names)
    assert all(row["nll"]["better"] == row["nll"]["worse"] == 0 for row in v["per_rho"].values())  # 2 splits

    md = (tmp_path / "study_fuzzy_reg.md").read_text(encoding="utf-8")
    doc = (tmp_path / "study-fuzzy-reg.md").read_text(encoding="utf-8")
    for text in (md, doc):
        assert "### Fitted and tested on int4 logits" in text and "### Computed summary" in text
        # the headline table: header, rule, TS, one row per ρ, the Dirichlet reference
        start = text.index("### Fitted and tested on int4 logits")
        table = [line for line in text[start:].split("\n\n")[1].splitlines() if line.startswith("|")]
        assert [row.split("|")[1].strip() for row in table[2:]] == ["TS", "ρ=0", "ρ=0.01", "ρ=10",
                                                                   "Dirichlet (reference)"]
        assert all(row.count("|") == table[0].count("|") for row in table)
        start = text.index("### Every ρ against the best ρ of its setting")
        table = [line for line in text[start:].split("\n\n")[2].splitlines() if line.startswith("|")]
        assert [row.split("|")[1].strip() for row in table[2:]] == labels[2:]
        assert all(row.count("**best**") <= len(names) for row in table[2:])
        assert sum(row.count("**best**") for row in table[2:]) == len(names)  # one best ρ per setting
    assert doc.count("<!-- BEGIN GENERATED") == 1 and doc.count("<!-- END GENERATED -->") == 1
    png = tmp_path / "figures" / "study-fuzzy-reg-nll-ece.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](figures/study-fuzzy-reg-nll-ece.png)" in doc

    # the markdown is a function of the JSON: re-rendering gives the same files, and keeps hand-written text
    (tmp_path / "study-fuzzy-reg.md").write_text("hand-written\n" + doc + "more\n", encoding="utf-8")
    _run("--quick", "--out", str(tmp_path), "--render-only")
    assert (tmp_path / "study_fuzzy_reg.md").read_text(encoding="utf-8") == md
    assert json.loads((tmp_path / "study_fuzzy_reg.json").read_text(encoding="utf-8")) == report
    assert (tmp_path / "study-fuzzy-reg.md").read_text(encoding="utf-8") == "hand-written\n" + doc + "more\n"


@pytest.mark.slow
def test_missing_shared_data_gives_a_one_line_note_and_no_traceback(tmp_path):
    proc = _run("--quick", "--datasets", "resnet50-3", "--data-dir", str(tmp_path / "absent"),
                "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: shared data skipped")]
    assert len(notes) == 1 and "is not there" in notes[0]
    assert "no data set to run on" in proc.stderr

"""The benchmark and study scripts run end to end (quick mode: small sizes, temp outputs)."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import SKIP_EXIT_CODE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["study_pacs.py", "bench_emulate.py", "bench_scale.py", "bench_speed.py",
                                    "bench_ptq.py", "bench_ptq_layers.py", "check_mx_torchao.py", "study_mx.py",
                                    "quality_bar.py"])
def test_script_quick_mode_runs(script, tmp_path):
    # bench_speed's busy mode: one background spinner is enough to run that path, and two would
    # take both cores of a 2-core CI runner from the other test worker for the whole run
    extra = ["--busy-workers", "1"] if script == "bench_speed.py" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if proc.returncode == SKIP_EXIT_CODE:  # the study harness's "data not found": ../shared is absent
        pytest.skip(proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(tmp_path.rglob("*.md")), "the quick run must write its markdown results"


def test_bench_speed_partial_runs_cite_the_run_that_measured_the_kept_rows(tmp_path):
    """A run without some sections keeps their previous rows; a second such run still names the
    run that measured each, not the partial run that kept them."""
    import json

    from benchmarks import bench_speed

    measured = {"created": "2026-01-01 10:00 UTC", "command": "python benchmarks/bench_speed.py"}
    rows = {"temperature_scaling": [{"n": 1}], "ece": [{"n": 2}], "calibrators": [{"n": 3}]}
    previous = {**measured, "modes": {"quiet": rows}}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(previous))
    modes = {"quiet": {"ece": []}, "busy": None}
    note, sources = bench_speed._keep_previous(modes, path, ("ts", "calibrators"))
    assert sources == {"temperature_scaling": measured, "calibrators": measured} and measured["created"] in note
    assert modes["quiet"] == {"ece": [], "temperature_scaling": [{"n": 1}], "calibrators": [{"n": 3}]}
    # the next partial run keeps the calibrator rows again (from 10:00) and the ECE rows of 11:00
    path.write_text(json.dumps({"created": "2026-01-01 11:00 UTC", "command": "python benchmarks/bench_speed.py "
                                "--sections ece", "sources": sources, "modes": previous["modes"]}))
    note, again = bench_speed._keep_previous({"quiet": {}}, path, ("ece", "calibrators"))
    assert again["calibrators"] == measured and again["ece"]["created"] == "2026-01-01 11:00 UTC"
    assert "the calibrator rows (quiet) are kept from the run of 2026-01-01 10:00 UTC" in note
    # results of a partial run written before reports stored their sources: ts_source, then the note
    path.write_text(json.dumps({"created": "2026-01-01 12:00 UTC", "command": "python benchmarks/bench_speed.py "
                                "--sections ece", "ts_source": measured, "modes": previous["modes"]}))
    note, older = bench_speed._keep_previous({"quiet": {}}, path, ("ts",))
    assert older == {"temperature_scaling": measured} and "10:00" in note and "12:00" not in note
    legacy_note = ("the temperature-scaling rows (quiet) are kept from the run of 2026-01-01 10:00 UTC "
                   "(python benchmarks/bench_speed.py); the other sections are from this run (--sections)")
    path.write_text(json.dumps({"created": "2026-01-01 13:00 UTC", "command": "python benchmarks/bench_speed.py "
                                "--sections ece", "note": legacy_note, "modes": previous["modes"]}))
    note, older = bench_speed._keep_previous({"quiet": {}}, path, ("ts", "calibrators"))
    assert older["temperature_scaling"] == measured and older["calibrators"]["created"] == "2026-01-01 13:00 UTC"


def test_bench_speed_fuzzy_target_reads_the_5000_by_100_row():
    """Issue 14's bar for FuzzyDirichletCalibrator (5 000 x 100 within 20x TS) is judged from that row's ratio;
    without the row it is reported as not run, never as met."""
    from benchmarks import bench_speed

    def modes(ratio):
        rows = [] if ratio is None else [{"n": 5000, "k": 100, "calibrators": {
            "TemperatureScaling()": {"median_s": 0.1, "ratio_to_ts": 1.0},
            "FuzzyDirichletCalibrator()": {"median_s": 0.1 * ratio, "ratio_to_ts": ratio}}}]
        return {"quiet": {"temperature_scaling": [], "ece": [], "calibrators": rows}}

    assert bench_speed.check_targets(modes(19.5))["fuzzy_quiet"]["met"] is True
    missed = bench_speed.check_targets(modes(25.0))["fuzzy_quiet"]
    assert missed["met"] is False and "25x TS" in missed["detail"]
    assert bench_speed.check_targets(modes(None))["fuzzy_quiet"]["met"] is None

"""The ``precal`` command, called in-process and as a real console script."""

import json
import shutil
import subprocess
import sys

import pytest

from precal.cli import main
from precal.demo import format_table, run_demo


def test_demo_json_has_scores_before_and_after(capsys):
    assert main(["demo", "--epochs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [r["precision"] for r in rows[::3]] == ["fp32", "bf16", "fp8_e4m3", "w8a8", "w4a8", "w4a4"]
    assert [r["method"] for r in rows[:3]] == ["uncalibrated", "temperature scaling", "PACS"]
    for row in rows:
        assert set(row) >= {"accuracy", "ece", "ace", "nll", "brier"}
        assert 0.5 < row["accuracy"] <= 1.0
    for before, ts, pacs in zip(rows[::3], rows[1::3], rows[2::3]):
        assert before["precision"] == ts["precision"] == pacs["precision"]
        # neither temperature scaling nor PACS changes the argmax
        assert before["accuracy"] == ts["accuracy"] == pacs["accuracy"]
        assert ts["nll"] <= before["nll"] + 0.05  # fitted on another half: close to or below
    assert all(t > 0 for t in out["fitted"]["temperature"].values())
    assert all(p["lambda"] >= 0 for p in out["fitted"]["pacs"].values())
    assert out["n_calibration"] + out["n_test"] + out["n_train"] == 1797


def test_demo_is_deterministic():
    a = run_demo(random_state=1, epochs=2)
    b = run_demo(random_state=1, epochs=2)
    assert a.rows == b.rows


def test_demo_table_output(capsys):
    assert main(["demo", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "temperature scaling" in out and "ece" in out and "w4a4" in out and "fitted temperatures" in out


def test_bad_argument_gives_one_line_error(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("precal demo: error:") and "\n" not in err


def test_format_table_aligns_columns():
    table = format_table([{"method": "a", "ece": 0.1}, {"method": "longer", "ece": 0.25}]).splitlines()
    assert len({len(line.rstrip()) for line in table}) == 1


@pytest.mark.slow
def test_console_script_runs_the_default_demo():
    exe = shutil.which("precal")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "precal.cli", "demo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "uncalibrated" in proc.stdout and "temperature scaling" in proc.stdout
    version = subprocess.run(cmd[:-1] + ["--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("precal ")


def test_demo_leaves_the_callers_torch_rng_alone():
    import torch

    from precal.demo import digits_logits

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    digits_logits(epochs=1)
    assert torch.equal(torch.rand(3), expected)

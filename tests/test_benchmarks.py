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

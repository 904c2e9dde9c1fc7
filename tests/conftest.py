"""Shared fixtures: small, seeded, over-confident logits."""

import numpy as np
import pytest


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

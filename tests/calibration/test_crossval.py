"""The cross-validated regularisation path: same choice as walking every fold to its own end, fewer fits."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from precal.calibration._crossval import PATIENCE, _better, cross_validated_path

GRID = (1e6, 1e4, 1e2, 1.0, 1e-2)


def _walk_length(table):
    """Strengths a fold visits on its own: up to the first one that ends PATIENCE in a row with
    no new best (the values here are far apart or equal, so the running best is the minimum)."""
    for j in range(PATIENCE, len(table)):
        before = min(table[: j - PATIENCE + 1])
        if not any(_better(v, before) for v in table[j - PATIENCE + 1 : j + 1]):
            return j + 1
    return len(table)


def _uncapped_path(grid, tables, weights):
    """The path as it was before the cap: every fold walks until its own patience runs out,
    then the strengths every fold visited are pooled (the strongest within the tie wins)."""
    visited = [_walk_length(table) for table in tables]
    reach = min(visited)
    pooled = {grid[j]: sum(w * t[j] for t, w in zip(tables, weights)) / sum(weights) for j in range(reach)}
    lowest = min(pooled.values())
    best_strength = next(strength for strength, value in pooled.items() if not _better(lowest, value))
    return best_strength, pooled, sum(visited)


@settings(max_examples=300, deadline=None)
@given(
    tables=st.lists(st.lists(st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]), min_size=len(GRID),
                             max_size=len(GRID)), min_size=2, max_size=5),
    data=st.data(),
)
def test_capped_path_chooses_what_the_uncapped_walk_chooses_with_no_more_fits(tables, data):
    weights = data.draw(st.lists(st.integers(1, 9), min_size=len(tables), max_size=len(tables)))
    splits = [(torch.tensor([f]), torch.tensor([f])) for f in range(len(tables))]  # fold id in the indices
    fits = []

    def fit(fold, strength, warm):
        assert warm is None or warm[1] == GRID[GRID.index(strength) - 1]  # warm-started from the previous one
        fits.append((fold, strength))
        return (fold, strength)

    def score(fold, state, test):
        return tables[fold][GRID.index(state[1])] * weights[fold], float(weights[fold])

    result = cross_validated_path(GRID, splits, lambda train: int(train[0]), fit, score)
    best, pooled, n_uncapped = _uncapped_path(GRID, tables, weights)
    assert result.best == best
    assert result.scores == pooled  # the same floats: the same sums in the same order
    assert result.states == [(f, best) for f in range(len(tables))]
    assert len(fits) <= n_uncapped
    # no fold walks past the strengths every earlier fold reached
    reached = [sum(1 for f, _ in fits if f == fold) for fold in range(len(tables))]
    assert all(reached[f] <= min(reached[:f], default=len(GRID)) for f in range(len(tables)))


def test_the_cap_saves_the_fits_beyond_an_earlier_folds_end():
    # fold 0 stops after three strengths (its NLL rises twice); fold 1 would improve to the end
    tables = [[0.5, 0.6, 0.7, 0.8, 0.9], [1.0, 0.9, 0.8, 0.7, 0.6]]
    fits = []

    def fit(fold, strength, warm):
        fits.append(fold)
        return (fold, strength)

    def score(fold, state, test):
        return tables[fold][GRID.index(state[1])], 1.0

    splits = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([1]))]
    result = cross_validated_path(GRID, splits, lambda train: int(train[0]), fit, score)
    assert fits == [0, 0, 0, 1, 1, 1]  # uncapped, fold 1 would walk all five strengths
    assert list(result.scores) == list(GRID[:3]) and result.best == 1e6
    assert np.isclose(result.scores[1e6], 0.75)

"""Internal cross-validation of a regularisation strength: folds, a warm-started path, held-out NLL.

Used by :class:`~precal.calibration.DirichletCalibrator` and
:class:`~precal.calibration.FuzzyDirichletCalibrator` for their default ``reg_lambda="cv"``.

**Folds by content.** With an integer ``cv`` the fold of a row is a fixed function of its values
(its logits and label, see :func:`content_folds`), not of its position. Repeating a row therefore
puts every copy in the same fold, exactly as an integer sample weight does, so a weighted fit and
a fit on repeated rows see the same cross-validation and choose the same strength; the choice is
also independent of the row order. scikit-learn's splitters (``cv=KFold(5)``) and explicit lists
of ``(train, test)`` index pairs are accepted as well.

**The path.** Strengths are visited from the strongest (the map closest to temperature scaling)
to the weakest, one fold at a time, each fit warm-started from the fold's fit at the previous
strength; a fold stops once its held-out NLL has not improved for :data:`PATIENCE` strengths in a
row (it is close to unimodal in the strength). The strongest strength within a relative ``1e-9``
of the lowest pooled NLL wins, so exact ties and rounding-level differences resolve the same way
on every machine.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["REG_GRID", "PATIENCE", "content_folds", "cv_splits", "check_cv", "PathResult", "cross_validated_path"]

#: Strengths tried by ``reg_lambda="cv"``, strongest first: powers of ten from ``1e6`` (the map is
#: temperature scaling to within the optimiser's tolerance on any calibration set of practical
#: size) down to ``1e-2`` (practically unregularised).
REG_GRID = tuple(10.0**e for e in range(6, -3, -1))

#: The path stops after this many strengths in a row with a held-out NLL above the best so far.
PATIENCE = 2

#: Relative tolerance within which a stronger regularisation wins a tie.
_TIE = 1e-9


def _better(value: float, best: float) -> bool:
    """``value`` beats ``best`` by more than the tie tolerance (any finite value beats ``inf``)."""
    if not math.isfinite(value):
        return False
    return not math.isfinite(best) or value < best - _TIE * (1.0 + abs(best))


def check_cv(cv: Any) -> None:
    """Validate the ``cv`` parameter: an int >= 2, an object with ``split``, or an iterable of pairs."""
    if isinstance(cv, bool):
        raise TypeError(f"cv must be an int >= 2, a cross-validation splitter or an iterable of (train, test) "
                        f"index pairs, got {cv!r}.")
    if isinstance(cv, numbers.Integral):
        if cv < 2:
            raise ValueError(f"cv must be an int >= 2 (the number of folds), got {cv!r}.")
        return
    if not isinstance(cv, (str, bytes, dict)) and (hasattr(cv, "split") or hasattr(cv, "__iter__")):
        return
    raise TypeError(f"cv must be an int >= 2, a cross-validation splitter or an iterable of (train, test) "
                    f"index pairs, got {type(cv).__name__} {cv!r}.")


def content_folds(logits: torch.Tensor, y_idx: torch.Tensor, n_folds: int) -> torch.Tensor:
    r"""The fold of each row, a function of the row's values only: int64 tensor on the logits' device.

    .. math::  h_i = 1000 \sum_k r_k \operatorname{asinh}(z_{ik}) + \varphi\, y_i, \qquad
               \text{fold}_i = \lfloor n_{\text{folds}} \, (h_i - \lfloor h_i \rfloor) \rfloor

    with ``r`` a fixed standard normal vector (seeded) and ``φ`` the golden ratio. ``asinh``
    keeps huge logits in a range where the fractional part still has many digits; the fractional
    part of a large random projection is close to uniform, so folds have about ``n / n_folds``
    rows each (not stratified). Identical rows get the same fold.
    """
    n, k = logits.shape
    gen = torch.Generator().manual_seed(20240917)
    r = torch.randn(k, generator=gen, dtype=torch.float64, device="cpu").to(logits.device)
    h = torch.empty(n, dtype=torch.float64, device=logits.device)
    step = max(1, (1 << 20) // max(k, 1))
    for start in range(0, n, step):
        block = logits[start : start + step].to(torch.float64)
        h[start : start + step] = torch.asinh(block) @ r
    h = h * 1000.0 + y_idx.to(torch.float64) * ((1.0 + math.sqrt(5.0)) / 2.0)
    frac = h - torch.floor(h)
    return torch.clamp((frac * n_folds).long(), 0, n_folds - 1)


def cv_splits(cv: Any, logits: torch.Tensor, y_idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(train, test)`` row-index tensors (int64, on the logits' device) for ``cv``.

    An int gives :func:`content_folds`; a splitter's ``split(X, y)`` is called on the logits and
    labels as numpy arrays; an iterable gives its pairs. Pairs with an empty side are dropped.
    """
    device = logits.device
    if isinstance(cv, numbers.Integral):
        folds = content_folds(logits, y_idx, int(cv))
        pairs = [(torch.nonzero(folds != f)[:, 0], torch.nonzero(folds == f)[:, 0]) for f in range(int(cv))]
    else:
        if hasattr(cv, "split"):
            x_np = logits.detach().cpu().numpy()
            pairs_np = cv.split(x_np, y_idx.detach().cpu().numpy())
        else:
            pairs_np = cv
        pairs = []
        n = logits.shape[0]
        for pair in pairs_np:
            try:
                train, test = pair
            except (TypeError, ValueError) as exc:
                raise ValueError(f"cv must yield (train, test) index pairs, got {pair!r}.") from exc
            idx = []
            for part in (train, test):
                arr = np.asarray(part)
                if arr.dtype == bool:
                    arr = np.flatnonzero(arr)
                if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= n)):
                    raise ValueError(f"cv gave indices that are not row numbers in [0, {n}): {part!r}.")
                idx.append(torch.as_tensor(arr.astype(np.int64), device=device))
            pairs.append((idx[0], idx[1]))
    return [(tr, te) for tr, te in pairs if len(tr) and len(te)]


@dataclass
class PathResult:
    """What :func:`cross_validated_path` found."""

    best: float
    #: strength -> pooled held-out NLL, for the strengths every fold visited (strongest first)
    scores: dict[float, float] = field(default_factory=dict)
    #: per fold, the fitted state at the best strength (warm starts for the final fit)
    states: list[Any] = field(default_factory=list)


def cross_validated_path(
    grid: Sequence[float],
    splits: list[tuple[torch.Tensor, torch.Tensor]],
    make_fold: Callable[[torch.Tensor], Any],
    fit: Callable[[Any, float, Any], Any],
    score: Callable[[Any, Any, torch.Tensor], tuple[float, float]],
) -> PathResult | None:
    """Walk ``grid`` (strongest first) fold by fold with warm starts; pick the lowest pooled NLL.

    Each fold walks the grid until its own held-out NLL has not improved for :data:`PATIENCE`
    strengths in a row (one fold's data are held in memory at a time); the strengths that every
    fold visited are then scored by the pooled held-out NLL (sum of the folds' weighted NLL over
    the sum of their weights), and the strongest one within a relative ``1e-9`` of the lowest wins.

    Parameters
    ----------
    grid : sequence of float
        Strengths, strongest first.
    splits : list of (train, test) index tensors
    make_fold : callable ``(train_idx) -> fold``
        Prepares a fold's training problem (or returns ``None`` when it has no weight).
    fit : callable ``(fold, strength, warm_state) -> state``
        Fits a fold at one strength (``warm_state`` is ``None`` at the first strength, then that
        fold's state at the previous one).
    score : callable ``(fold, state, test_idx) -> (weighted NLL sum, weight sum)``
        Held-out loss of a fitted state.

    Returns
    -------
    PathResult or None
        ``None`` when no split has training and held-out rows of positive weight.
    """
    per_fold: list[tuple[dict[float, tuple[float, float]], dict[float, Any]]] = []
    for train, test in splits:
        fold = make_fold(train)
        if fold is None:
            continue
        scores: dict[float, tuple[float, float]] = {}
        states: dict[float, Any] = {}
        state, best, worse = None, math.inf, 0
        for strength in grid:
            state = fit(fold, strength, state)
            s, w = score(fold, state, test)
            if not w > 0:
                break
            scores[strength], states[strength] = (s, w), state
            value = s / w
            if _better(value, best):
                best, worse = value, 0
            else:
                worse += 1
            if worse >= PATIENCE:
                break
        del fold
        if scores:
            per_fold.append((scores, states))
    if not per_fold:
        return None
    pooled: dict[float, float] = {}
    for strength in grid:
        if not all(strength in scores for scores, _ in per_fold):
            break
        total = sum(scores[strength][0] for scores, _ in per_fold)
        weight = sum(scores[strength][1] for scores, _ in per_fold)
        pooled[strength] = total / weight
    best_value, best_score = None, math.inf
    for strength, value in pooled.items():  # strongest first: a weaker one must win by more than the tie
        if _better(value, best_score):
            best_value, best_score = strength, value
    if best_value is None:
        return None
    return PathResult(best=float(best_value), scores=pooled, states=[states[best_value] for _, states in per_fold])

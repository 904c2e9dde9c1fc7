"""Internal cross-validation of a regularisation strength: folds, a warm-started path, held-out NLL.

Used by :class:`~precal.calibration.DirichletCalibrator` and
:class:`~precal.calibration.FuzzyDirichletCalibrator` for their default ``reg_lambda="cv"``.

**Folds by content.** With an integer ``cv`` the fold of a row is a fixed function of its values
(its logits and label, see :func:`content_folds`), not of its position. Repeating a row therefore
puts every copy in the same fold, exactly as an integer sample weight does, so a weighted fit and
a fit on repeated rows see the same cross-validation and choose the same strength; the choice is
also independent of the row order. scikit-learn's splitters (``cv=KFold(5)``) and explicit lists
of ``(train, test)`` index pairs are accepted as well.

**A subsample at large n.** :func:`cv_splits` with ``max_rows`` keeps, for an integer ``cv``
on more rows than that, only the rows of :func:`content_subsample` (chosen by content, so
identical rows go together again) and splits them into their content folds; the caller sets
``max_rows`` from the work per row (see :class:`~precal.calibration.DirichletCalibrator`).

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

__all__ = [
    "REG_GRID", "PATIENCE", "content_folds", "content_subsample", "cv_splits", "check_cv", "PathResult",
    "cross_validated_path",
]

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


def _content_hash(logits: torch.Tensor, y_idx: torch.Tensor, seed: int = 20240917) -> torch.Tensor:
    """The fractional part of :func:`content_folds`' ``h_i``: float64 in ``[0, 1)``, a function of row ``i`` only."""
    n, k = logits.shape
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(k, generator=gen, dtype=torch.float64, device="cpu").to(logits.device)
    h = torch.empty(n, dtype=torch.float64, device=logits.device)
    step = max(1, (1 << 20) // max(k, 1))
    for start in range(0, n, step):
        block = logits[start : start + step].to(torch.float64)
        h[start : start + step] = torch.asinh(block) @ r
    h = h * 1000.0 + y_idx.to(torch.float64) * ((1.0 + math.sqrt(5.0)) / 2.0)
    return h - torch.floor(h)


def content_folds(logits: torch.Tensor, y_idx: torch.Tensor, n_folds: int) -> torch.Tensor:
    r"""The fold of each row, a function of the row's values only: int64 tensor on the logits' device.

    .. math::  h_i = 1000 \sum_k r_k \operatorname{asinh}(z_{ik}) + \varphi\, y_i, \qquad
               \text{fold}_i = \lfloor n_{\text{folds}} \, (h_i - \lfloor h_i \rfloor) \rfloor

    with ``r`` a fixed standard normal vector (seeded) and ``φ`` the golden ratio. ``asinh``
    keeps huge logits in a range where the fractional part still has many digits; the fractional
    part of a large random projection is close to uniform, so folds have about ``n / n_folds``
    rows each (not stratified). Identical rows get the same fold.
    """
    frac = _content_hash(logits, y_idx)
    return torch.clamp((frac * n_folds).long(), 0, n_folds - 1)


def content_subsample(logits: torch.Tensor, y_idx: torch.Tensor, max_rows: int) -> torch.Tensor | None:
    r"""Rows kept for a cross-validation on at most about ``max_rows`` rows, chosen by content; ``None``: all.

    Row ``i`` is kept when ``u_i < max_rows / n``, ``u_i`` the fractional part of a hash like
    :func:`content_folds`' ``h_i`` but with another projection ``r``, on at most 64 of the ``K``
    columns (evenly spaced; the hash only has to spread rows evenly, and this keeps it cheap
    for many classes): close to uniform and independent of the fold. Identical rows are kept
    or dropped together, so a row repeated ``m`` times and a row of weight ``m`` are kept
    alike as long as both data sets are above ``max_rows`` or both below. Returns sorted
    int64 row indices, or ``None`` when ``n <= max_rows``.
    """
    n, k = logits.shape
    if n <= max_rows:
        return None
    columns = torch.arange(0, k, max(1, -(-k // 64)), device=logits.device)
    u = _content_hash(logits[:, columns], y_idx, seed=20241203)
    return torch.nonzero(u < max_rows / n)[:, 0]


def cv_splits(cv: Any, logits: torch.Tensor, y_idx: torch.Tensor, max_rows: int | None = None
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(train, test)`` row-index tensors (int64, on the logits' device) for ``cv``.

    An int gives :func:`content_folds`, on the rows of :func:`content_subsample` when
    ``max_rows`` is given and ``n`` exceeds it; a splitter's ``split(X, y)`` is called on the
    logits and labels as numpy arrays; an iterable gives its pairs (both used as given, never
    subsampled). Pairs with an empty side are dropped.
    """
    device = logits.device
    if isinstance(cv, numbers.Integral):
        kept = None if max_rows is None else content_subsample(logits, y_idx, max_rows)
        sub_z, sub_y = (logits, y_idx) if kept is None else (logits[kept], y_idx[kept])
        folds = content_folds(sub_z, sub_y, int(cv))
        pairs = [(torch.nonzero(folds != f)[:, 0], torch.nonzero(folds == f)[:, 0]) for f in range(int(cv))]
        if kept is not None:
            pairs = [(kept[tr], kept[te]) for tr, te in pairs]
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
    Since only those strengths are scored, a fold never walks past the last strength that every
    fold before it reached: the fits beyond it could not change the choice (nor the states
    returned), so leaving them out gives the same result with fewer fits.

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
    reach = len(grid)  # strengths every fold walked so far: the pooled score ends there
    for train, test in splits:
        fold = make_fold(train)
        if fold is None:
            continue
        scores: dict[float, tuple[float, float]] = {}
        states: dict[float, Any] = {}
        state, best, worse = None, math.inf, 0
        for strength in grid[:reach]:
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
            reach = min(reach, len(scores))
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

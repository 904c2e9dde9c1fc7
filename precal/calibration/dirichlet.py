"""Dirichlet calibration (Kull et al., 2019): an affine map on log-probabilities, fitted by Newton's method."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import scipy.linalg
import torch
from sklearn.exceptions import ConvergenceWarning

from .._numerics import log_softmax, matmul, softmax_rows, to_tensor
from .._threads import _work_size, map_blocks, map_blocks_in_waves, thread_limits
from .._validation import check_number
from ._base import BaseLogitCalibrator, check_state_keys, state_array, state_count
from ._blocks import WorkBuffers
from ._crossval import REG_GRID, check_cv, cross_validated_path, cv_splits
from .temperature import _on_device, fit_temperature

__all__ = [
    "DirichletCalibrator",
    "DirichletFit",
    "dirichlet_objective",
    "fit_dirichlet",
    "odir_penalty",
    "MAPS",
    "AUTO_FULL_MAX_CLASSES",
]

MAPS = ("auto", "full", "diagonal")

#: ``map="auto"`` fits a full ``W`` up to this many classes and a diagonal one above.
#: A full map has ``K (K + 1)`` parameters (420 at ``K = 20``, 10 100 at ``K = 100``): beyond
#: a few hundred parameters the held-out sets calibrators are usually fitted on (a few
#: thousand samples) pin them down only with strong regularisation, while the diagonal map
#: (``2 K`` parameters) stays safe; each pass also costs ``n K^2`` instead of ``n K``. Ask for
#: ``map="full"`` explicitly when the data support it (the paper does so for CIFAR-100).
AUTO_FULL_MAX_CLASSES = 20

#: Rows per chunk: about ``2**19`` elements (2 MB of float32) per work buffer whatever ``n``.
#: A chunk's four arrays (features, logits, probabilities, their product) on each of two
#: threads then stay within a 32 MB L3 cache while the pass works on them (a value,
#: gradient and curvature pass at 50 000 x 1 000 on two threads: 57-62 ms against 72-85 ms
#: with 2**20).
_CHUNK_ELEMENTS = 1 << 19

#: Fits on up to this many elements (``n K``) run in float64; larger ones in float32 with
#: float64 sums (see :func:`fit_dirichlet`).
_FLOAT64_MAX_ELEMENTS = 1 << 20

#: Up to this many elements (512 MB of float32) the standardised log-probabilities are
#: computed once and kept for all passes (and, for large maps, the probabilities of the
#: current iterate); beyond it each pass recomputes them chunk by chunk.
_CACHE_ELEMENTS = 1 << 27

#: Work arrays above this many bytes come from fresh pages of the operating system (glibc
#: serves allocations above 32 MiB by ``mmap`` and returns them on release); first touching
#: them costs a page fault per 4 KB, so the kept probabilities of larger fits are allocated
#: only once a fit takes a second Newton step (see ``_DataTerm``).
_FRESH_BYTES = 1 << 25

#: Newton systems with up to this many parameters are solved with the exact dense Hessian
#: (Cholesky); larger ones by preconditioned conjugate gradients on Hessian-vector products.
_DENSE_MAX_PARAMS = 512

#: Rows of the strided sample that sets the standardisation (and the temperature start) of large fits.
_STATS_ROWS = 8192

#: A pass on several threads hands out its chunks in waves whose per-chunk partial sums
#: (gradient, curvature, dense Hessian) take at most this many bytes together, so memory
#: stays bounded for large maps; each wave's partials are added in chunk order.
_WAVE_BYTES = 1 << 25

#: Slots of a chunk's work arrays in a pass's :class:`~precal.calibration._blocks.WorkBuffers`.
_SLOT_LOGITS, _SLOT_PROBS, _SLOT_PRODUCT = 0, 1, 2

#: Conjugate-gradient iterations per Newton step at most.
_CG_MAX_ITER = 250

#: Relative residual of the conjugate-gradient solves of the polishing Newton steps (see
#: :func:`_newton`), by working dtype. float32 Hessian-vector products are float32 sums within
#: each chunk, exact to about ``sqrt(eps)`` relative at best: a smaller residual is rounding,
#: and iterating towards it only costs passes (the parameters move by less than their floor).
_POLISH_RTOL = {torch.float64: 1e-10, torch.float32: math.sqrt(float(torch.finfo(torch.float32).eps))}

#: Working dtypes whose Newton iteration may end on a *predicted* last step (see :func:`_newton`),
#: with the parameters within half of ``sqrt(eps) (1 + max|θ|)`` of the minimiser: float32 (the
#: large fits). float64 fits take that step (the sample-weight checks compare their predictions
#: to 1e-7).
_PREDICTED_FLOOR_DTYPES = (torch.float32,)

#: ``reg_lambda="cv"`` with an integer ``cv`` cross-validates on a content-chosen subsample of
#: at most this many units of work per pass (rows times ``K`` for a diagonal map, times
#: ``K (K + 1)`` for a full one); see :meth:`DirichletCalibrator._cross_validate`.
_CV_MAX_WORK = 1 << 21

#: ... but on at least this many rows.
_CV_MIN_ROWS = 2000


# --------------------------------------------------------------------------- the math
def odir_penalty(
    coef: np.ndarray, intercept: np.ndarray, reg_lambda: float, reg_mu: float, reg_diag: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""Off-diagonal and intercept regularisation (ODIR), plus the diagonal's spread, and the gradient.

    .. math::

        P(W, b) = \frac{\lambda}{K(K-1)} \sum_{i \ne j} w_{ij}^2 + \frac{\mu}{K} \sum_j b_j^2
                  + \frac{\nu}{K} \sum_j (w_{jj} - \bar w)^2, \qquad \bar w = \frac1K \sum_j w_{jj}

    The first two terms are ODIR with the normalisation of Kull et al. (2019) (dirichletcal's
    ``reg_norm=True``): ``λ`` times the mean squared off-diagonal entry of ``W`` plus ``μ`` times
    the mean squared intercept. The third, ``ν = reg_diag`` (0 in the paper), is the variance
    of ``W``'s diagonal: with all three strengths large the map is ``W = I / T``, ``b = 0``,
    temperature scaling. A diagonal ``coef`` (shape ``(K,)``) has no off-diagonal entries.

    Returns
    -------
    (value, grad_coef, grad_intercept) : float, ndarray, ndarray
        float64; the gradients have the shapes of ``coef`` and ``intercept``.
    """
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    k = intercept.shape[0]
    value = reg_mu / k * float(intercept @ intercept)
    grad_b = (2.0 * reg_mu / k) * intercept
    diag = coef if coef.ndim == 1 else np.diag(coef)
    spread = diag - diag.mean()
    value += reg_diag / k * float(spread @ spread)
    grad_diag = (2.0 * reg_diag / k) * spread  # the mean's own derivative cancels: sum(spread) = 0
    if coef.ndim == 1:
        return value, grad_diag, grad_b
    grad_w = np.diag(grad_diag)
    if k >= 2:
        off = coef.copy()
        np.fill_diagonal(off, 0.0)
        scale = reg_lambda / (k * (k - 1))
        value += scale * float(np.sum(off * off))
        grad_w = grad_w + (2.0 * scale) * off
    return value, grad_w, grad_b


def _canonical_coef(coef: np.ndarray) -> np.ndarray:
    """``W + 1 v^T`` with ``v`` making the off-diagonal entries of each column sum to zero."""
    k = coef.shape[0]
    off_sum = coef.sum(axis=0) - np.diag(coef)
    return coef - off_sum / (k - 1)


def _chunk_width(k: int, n_params: int) -> int:
    """Elements per row that size the chunks of a value/gradient/Hessian pass: ``P`` for a dense
    Hessian (each chunk's ``rows × P²`` products), else ``K``."""
    return max(k, n_params) if n_params <= _DENSE_MAX_PARAMS else k


def _pass_elements(n: int, k: int, diagonal: bool) -> int:
    """The work of one pass in elements, for precal's thread budget (``n`` times :func:`_chunk_width`)."""
    return n * _chunk_width(k, 2 * k if diagonal else k * (k + 1))


def resolve_map(map_name: Any, n_classes: int) -> str:
    """The map a fit uses: ``map_name``, with ``"auto"`` a full map up to :data:`AUTO_FULL_MAX_CLASSES`
    classes and a diagonal one above."""
    if map_name == "auto":
        return "full" if n_classes <= AUTO_FULL_MAX_CLASSES else "diagonal"
    return map_name


def fit_shape(X: Any) -> tuple[int, int] | None:
    """``(n, K)`` a fit on ``X`` works with, from its shape alone (1-D: one binary logit, two
    classes); ``None`` when the shape does not say (no shape, more than two dimensions, a dask
    array of unknown chunk sizes)."""
    shape = getattr(X, "shape", None)
    try:
        if len(shape) > 2:
            return None
        return int(shape[0]), (max(int(shape[1]), 2) if len(shape) == 2 else 2)
    except (TypeError, ValueError, OverflowError, IndexError):  # NaN rows, no shape
        return None


def fit_work(X: Any, map_name: Any) -> int | None:
    """Elements of work of one pass of a Dirichlet fit over ``X`` (``map_name``: ``"auto"``,
    ``"full"`` or ``"diagonal"``), for the fit's thread budget: :func:`_pass_elements` where
    :func:`fit_shape` knows the shape, else the input's size."""
    shape = fit_shape(X)
    if shape is None:
        return _work_size((X,))
    n, k = shape
    return _pass_elements(n, k, resolve_map(map_name, k) == "diagonal")


def _row_chunks(n: int, elements_per_row: int) -> Iterator[slice]:
    """Slices of at most ``_CHUNK_ELEMENTS / elements_per_row`` rows, all of (nearly) one size,
    so that threads sharing them finish together."""
    most = max(1, _CHUNK_ELEMENTS // max(elements_per_row, 1))
    rows = max(1, -(-n // max(1, -(-n // most))))  # ceil(n / number of chunks)
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


class _Rows:
    """A tensor read chunk by chunk: ``self(rows)`` returns ``data[rows]``."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.n, self.k = data.shape

    def __call__(self, rows: slice) -> torch.Tensor:
        return self.data[rows]


class _StandardisedLogProbs:
    """``(log_softmax(z) - shift) / scale`` chunk by chunk, computed in ``dtype``."""

    def __init__(self, logits: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        self.logits = logits
        self.dtype = dtype
        self.shift = shift.to(dtype)
        self.inv_scale = (1.0 / scale).to(dtype)
        self.n, self.k = logits.shape

    def __call__(self, rows: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        lp = softmax_rows(self.logits[rows].to(self.dtype), out=out, log=True)
        return lp.sub_(self.shift).mul_(self.inv_scale)


@dataclass
class _Evaluation:
    """The data term at one point: value, gradient, and optionally its curvature."""

    f: float
    g: np.ndarray | None = None
    hess: np.ndarray | None = None  # dense (P, P)
    hess_diag: np.ndarray | None = None  # (P,) for full maps, (K, 2, 2) blocks for diagonal ones
    n_errors: int = -1

    def copy(self) -> _Evaluation:
        def dup(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x.copy()

        return _Evaluation(self.f, dup(self.g), dup(self.hess), dup(self.hess_diag), self.n_errors)


class _DataTerm:
    r"""The weighted mean NLL of ``softmax(a)`` and its derivatives, one block kernel over row chunks.

    ``a = F W^T + b`` (full map) or ``a = F ⊙ w + b`` (diagonal map), ``F`` the features (the
    standardised log-probabilities). The parameters are one float64 vector ``θ``: for a full map
    the rows of ``Θ = [W | b]`` (``K × (K + 1)``, so ``a_i = Θ x_i`` with ``x_i = [F_i, 1]``),
    for a diagonal map ``[w, b]``. With ``q_i = softmax(a_i)``, sample weights ``s_i`` summing to
    1 and ``y_i`` one-hot labels:

    .. math::

        \nabla_\Theta = \sum_i s_i (q_i - y_i) x_i^T, \qquad
        \nabla^2_\Theta = \sum_i s_i \big(\operatorname{diag}(q_i) - q_i q_i^T\big) \otimes x_i x_i^T,

    and for a diagonal map ``∇_w = Σ s_i (q_i - y_i) ⊙ F_i`` and the Hessian
    ``Σ s_i J_i^T (diag(q_i) - q_i q_i^T) J_i`` with ``J_i = [diag(F_i), I]``. Element-wise work
    and the products within a chunk run in ``dtype``; sums over chunks in float64. The
    probabilities of the last point evaluated with ``keep=True`` are kept (when the features
    are) for the Hessian-vector products of the conjugate-gradient solver.
    """

    def __init__(self, features: Any, y_idx: torch.Tensor, weights: torch.Tensor | None, *, diagonal: bool,
                 dtype: torch.dtype, device: torch.device, keep_probs: bool, low_rank: bool = True,
                 n_threads: int = 1) -> None:
        self.features = features
        self.n, self.k = features.n, features.k
        self.y = y_idx
        self.weights = weights  # float64, summing to 1, or None (uniform)
        self.diagonal = diagonal
        self.dtype = dtype
        self.device = device
        self.n_params = 2 * self.k if diagonal else self.k * (self.k + 1)
        # at the point of the last evaluate(keep=True): q, and for a diagonal map with low_rank
        # q ⊙ F too (hessp is then matrix-vector products with the kept arrays). Arrays of more
        # than _FRESH_BYTES are kept from the second such evaluation on; until then hessp
        # recomputes q from the features. So a large fit that ends after its first Newton step
        # (warm-started at the solution, as after cross-validation) never allocates them:
        # fresh memory costs a page fault per 4 KB, more than the few products of that step
        # pay for recomputing q.
        self.keep_probs = keep_probs
        self._lazy = self.n * self.k * torch.finfo(dtype).bits // 8 > _FRESH_BYTES
        self.low_rank = keep_probs and diagonal and low_rank
        self.probs: torch.Tensor | None = None
        self.probs_f: torch.Tensor | None = None
        self._n_kept = 0
        self._kept_at: np.ndarray | None = None  # the point whose probabilities hessp uses
        self._kept_curv: np.ndarray | None = None
        self._memo: tuple[np.ndarray, tuple, _Evaluation] | None = None  # see evaluate
        self._gram: tuple[np.ndarray, np.ndarray] | None = None
        self.n_passes = 0
        # threads sharing a pass's chunks (CPU only; see _map_chunks)
        self.n_threads = max(1, int(n_threads)) if device.type == "cpu" else 1
        # elements per row that size evaluate's chunks: a dense Hessian's chunk costs rows x P^2,
        # so its chunks have fewer rows (several per pass, for the threads)
        self.chunk_width = _chunk_width(self.k, self.n_params)

    # ------------------------------------------------------------ parameters
    def params(self, theta: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` (``W`` transposed for a full map, ready for ``F @ W^T``) in ``dtype`` on the device."""
        k = self.k
        t = torch.from_numpy(np.ascontiguousarray(theta)).to(self.device, self.dtype)
        if self.diagonal:
            return t[:k], t[k:]
        big = t.reshape(k, k + 1)
        return big[:, :k].T.contiguous(), big[:, k].contiguous()

    def _flat(self, g_w: torch.Tensor, g_b: torch.Tensor) -> np.ndarray:
        if self.diagonal:
            return torch.cat([g_w, g_b]).cpu().numpy()
        return torch.cat([g_w, g_b[:, None]], dim=1).reshape(-1).cpu().numpy()

    def _chunk_weights(self, rows: slice) -> torch.Tensor | None:
        return None if self.weights is None else self.weights[rows]

    def _map_chunks(self, fn: Any, chunks: list[slice], partial_bytes: int) -> Iterator[Any]:
        """``fn(chunk)`` for each chunk, in chunk order.

        On one thread a plain loop; on several, :func:`precal._threads.map_blocks_in_waves`:
        waves of chunks whose results (``partial_bytes`` each) fit in :data:`_WAVE_BYTES`. Each chunk runs
        the same single-threaded torch kernels whichever thread takes it, and the caller adds
        the partial sums in chunk order, so a pass gives the same bits on any number of threads.
        """
        return map_blocks_in_waves(fn, chunks, self.n_threads, partial_bytes, _WAVE_BYTES)

    # ------------------------------------------------------------ the block kernel
    def _logits(self, feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
                ) -> torch.Tensor:
        if self.diagonal:
            return torch.addcmul(b, feats, w, out=out) if out is not None else torch.addcmul(b, feats, w)
        return torch.add(matmul(feats, w), b, out=out)  # numpy's BLAS on the CPU (see matmul)

    def evaluate(self, theta: np.ndarray, *, grad: bool = True, hess: bool = False, hess_diag: bool = False,
                 keep: bool = False, count_errors: bool = False) -> _Evaluation:
        """Value (and gradient, dense Hessian, curvature for preconditioning) of the data term at ``theta``.

        ``hess_diag`` gives the Hessian's diagonal for a full map and its ``2 × 2`` diagonal
        blocks (one per class, ``(K, 2, 2)``) for a diagonal map. ``keep`` stores what
        :meth:`hessp` needs at this point. The last evaluation with a gradient is remembered:
        asking for the same quantities at the same point again (a warm-started solve begins
        where the previous one ended) returns it without a pass over the data.
        """
        request = (grad, hess, hess_diag, keep, count_errors)
        memo = self._memo
        if grad and memo is not None and memo[1] == request and np.array_equal(memo[0], theta):
            return memo[2].copy()
        if grad or keep:
            self._memo = None  # the kept probabilities are about to change
        f64 = torch.float64
        k, diagonal, dev = self.k, self.diagonal, self.device
        w, b = self.params(theta)
        want_curv = grad and (hess_diag or keep)
        if keep and self.keep_probs:
            self._n_kept += 1
            if (self._n_kept >= 2 or not self._lazy) and self.probs is None:
                self.probs = torch.empty((self.n, k), dtype=self.dtype, device=dev)
                if self.low_rank:
                    self.probs_f = torch.empty((self.n, k), dtype=self.dtype, device=dev)
        store = keep and self.probs is not None
        # below this the true class's probability has lost digits (or underflowed): its NLL is
        # then taken from the logits directly (log-sum-exp), for those rows only
        tiny = math.sqrt(float(torch.finfo(self.dtype).tiny))
        scratch = WorkBuffers()  # freed with the pass

        def chunk(rows: slice) -> tuple:
            """One chunk's partial sums: NLL, errors, gradient halves, curvature, dense Hessian."""
            feats = self.features(rows)
            yc = self.y[rows, None]
            wc = self._chunk_weights(rows)
            a = self._logits(feats, w, b, out=scratch(_SLOT_LOGITS, feats))  # the logits a of the chunk
            a_true = a.gather(1, yc)[:, 0]
            errors = _errors(a, yc, a_true, wc) if count_errors else None
            # one softmax pass (one exp per entry; short rows shifted by the chunk's maximum, see
            # softmax_rows); kept: written straight into the kept buffer
            q = softmax_rows(a, out=self.probs[rows] if store else scratch(_SLOT_PROBS, feats))
            q_true = q.gather(1, yc)[:, 0]
            nll = -torch.log(q_true.to(f64))
            faint = q_true < tiny
            if bool(faint.any()):
                idx = torch.nonzero(faint)[:, 0]
                nll[idx] = torch.logsumexp(a[idx].to(f64), dim=1) - a_true[idx].to(f64)
            total = nll.sum() if wc is None else (nll * wc).sum()
            g_w = g_b = curv = big = None
            if not (grad or hess):
                if store and diagonal and self.probs_f is not None:
                    torch.mul(q, feats, out=self.probs_f[rows])
                return total, errors, g_w, g_b, curv, big
            low = diagonal and store and self.probs_f is not None
            wcd = None if wc is None else wc.to(q.dtype)[:, None]
            if diagonal and (grad or store):
                # column sums as products with the weight vector (no weighted copies of the chunk)
                sw = torch.ones_like(a_true) if wc is None else wc.to(q.dtype)
                qf = torch.mul(q, feats, out=self.probs_f[rows] if low else scratch(_SLOT_PRODUCT, feats))
                if grad:
                    col_f, col_q = (sw @ qf).to(f64), (sw @ q).to(f64)
                    g_w = col_f.index_add(0, yc[:, 0], -(feats.gather(1, yc)[:, 0] * sw).to(f64))
                    g_b = col_q.index_add(0, yc[:, 0], -sw.to(f64))
                    if want_curv:
                        # Σ s q F², Σ s q F, Σ s q, Σ s q² F², Σ s q² F, Σ s q² per class
                        curv = torch.empty((6, k), dtype=f64, device=dev)
                        curv[1], curv[2] = col_f, col_q
                        if wc is None:  # column-wise dot products, no temporaries
                            for i, (x, z) in ((0, (qf, feats)), (3, (qf, qf)), (4, (qf, q)), (5, (q, q))):
                                curv[i] = torch.linalg.vecdot(x, z, dim=0)
                        else:
                            curv[0] = sw @ (qf * feats)
                            curv[3] = sw @ qf.square()
                            curv[4] = sw @ (qf * q)
                            curv[5] = sw @ q.square()
            elif grad:
                wq = q if wc is None else q * wcd
                minus = -(torch.ones_like(q[:, 0]) if wc is None else wc.to(q.dtype))
                r = wq.scatter_add(1, yc, minus[:, None])  # s (q - onehot(y))
                g_b = r.sum(dim=0).to(f64)
                g_w = matmul(r.T, feats).to(f64)
                if want_curv:
                    v = wq - wq * q  # s q (1 - q)
                    curv = torch.empty((k, k + 1), dtype=f64, device=dev)
                    curv[:, k] = v.sum(dim=0).to(f64)
                    curv[:, :k] = matmul(v.T, feats.square()).to(f64)
            if hess:
                big = torch.zeros((self.n_params, self.n_params), dtype=f64, device=dev)
                self._add_hessian(big, feats, q, wc)
            return total, errors, g_w, g_b, curv, big

        partial_bytes = 8 * (self.n_params * (self.n_params if hess else 1) + (6 * k if diagonal else k * (k + 1)))
        total = torch.zeros((), dtype=f64, device=dev)
        errors = torch.zeros((), dtype=torch.int64, device=dev)
        g_w = torch.zeros((k,) if diagonal else (k, k), dtype=f64, device=dev) if grad else None
        g_b = torch.zeros(k, dtype=f64, device=dev) if grad else None
        curv = torch.zeros((6, k) if diagonal else (k, k + 1), dtype=f64, device=dev) if want_curv else None
        big = torch.zeros((self.n_params, self.n_params), dtype=f64, device=dev) if hess else None
        for part in self._map_chunks(chunk, list(_row_chunks(self.n, self.chunk_width)), partial_bytes):
            total += part[0]
            if count_errors:
                errors += part[1]
            for acc, value in zip((g_w, g_b, curv, big), part[2:]):
                if acc is not None:
                    acc += value
        scale = 1.0 / self.n if self.weights is None else 1.0
        self.n_passes += 1
        out = _Evaluation(f=float(total) * scale, n_errors=int(errors) if count_errors else -1)
        if grad:
            out.g = self._flat(g_w, g_b) * scale
        if curv is not None:
            curv = curv.cpu().numpy() * scale
            if diagonal:
                d1, d2, d3, e1, e2, e3 = curv
                blocks = np.empty((k, 2, 2))
                blocks[:, 0, 0], blocks[:, 0, 1], blocks[:, 1, 1] = d1 - e1, d2 - e2, d3 - e3
                blocks[:, 1, 0] = blocks[:, 0, 1]
                out.hess_diag = blocks
            else:
                out.hess_diag = curv.ravel()
        if keep:
            self._kept_at = np.array(theta, dtype=np.float64, copy=True)
            self._kept_curv = curv
        if hess:
            out.hess = big.cpu().numpy() * scale
        if grad:
            self._memo = (np.array(theta, dtype=np.float64, copy=True), request, out.copy())
        return out

    def count_errors(self, theta: np.ndarray) -> int:
        """Rows of positive weight whose true class is not the strict argmax of ``a`` at ``theta``.

        Row ``i`` is an error when some ``a_ij >= a_{i y_i}`` with ``j != y_i``: the largest of the
        other entries reaches the true one (one row maximum, no softmax).
        """
        w, b = self.params(theta)
        scratch = WorkBuffers()  # freed with the pass

        def chunk(rows: slice) -> torch.Tensor:
            yc = self.y[rows, None]
            feats = self.features(rows)
            a = self._logits(feats, w, b, out=scratch(_SLOT_LOGITS, feats))
            return _errors(a, yc, a.gather(1, yc)[:, 0], self._chunk_weights(rows))

        errors = torch.zeros((), dtype=torch.int64, device=self.device)
        for part in self._map_chunks(chunk, list(_row_chunks(self.n, self.k)), 8):
            errors += part  # on the device: one synchronisation per pass
        self.n_passes += 1
        return int(errors)

    def _add_hessian(self, big: torch.Tensor, feats: torch.Tensor, q: torch.Tensor, wc: torch.Tensor | None
                     ) -> None:
        """Add one chunk's ``Σ s_i J_i^T (diag q_i - q_i q_i^T) J_i`` to the dense Hessian ``big``
        (``wc``: the chunk's weights ``s_i``, or None for uniform ones)."""
        f64 = torch.float64
        k = self.k
        per_row = self.n_params
        for sub in _row_chunks(feats.shape[0], per_row):
            fs, qs = feats[sub], q[sub]
            ws = None if wc is None else wc[sub].to(q.dtype)
            wqs = qs if ws is None else qs * ws[:, None]
            root = None if ws is None else ws.sqrt()
            if self.diagonal:
                _subtract_gram(big, torch.cat([qs * fs, qs], dim=1), root)  # rows J_i^T q_i, (rows, 2K)
                idx = torch.arange(k, device=big.device)
                wf = wqs * fs
                big[idx, idx] += (wf * fs).sum(dim=0).to(f64)
                cross = wf.sum(dim=0).to(f64)
                big[idx, idx + k] += cross
                big[idx + k, idx] += cross
                big[idx + k, idx + k] += wqs.sum(dim=0).to(f64)
            else:
                x = torch.cat([fs, torch.ones_like(fs[:, :1])], dim=1)  # (rows, K + 1)
                _subtract_gram(big, (qs[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1), root)  # q_i ⊗ x_i
                xx = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)  # x_i ⊗ x_i
                blocks = matmul(wqs.T, xx).reshape(k, k + 1, k + 1).to(f64)  # Σ s q_ij x_i x_i^T per class j
                view = big.view(k, k + 1, k, k + 1)
                j = torch.arange(k, device=big.device)
                view[j, :, j, :] += blocks

    def gram_eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and vectors of ``G = Σ s x x^T``, ``x = [F, 1]`` (computed once; float64)."""
        if self._gram is None:
            f64 = torch.float64
            k = self.k
            g = torch.zeros((k + 1, k + 1), dtype=f64, device=self.device)

            def chunk(rows: slice) -> torch.Tensor:
                feats = self.features(rows)
                x = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=1)
                wc = self._chunk_weights(rows)
                xw = x if wc is None else x * wc.to(x.dtype)[:, None]
                return matmul(xw.T, x).to(f64)

            for part in self._map_chunks(chunk, list(_row_chunks(self.n, k)), 8 * (k + 1) ** 2):
                g += part
            g = g.cpu().numpy() / (self.n if self.weights is None else 1.0)
            lam, basis = np.linalg.eigh(0.5 * (g + g.T))
            self._gram = (np.maximum(lam, 0.0), basis)
            self.n_passes += 1
        return self._gram

    def hessp(self, v: np.ndarray) -> np.ndarray:
        """The data term's Hessian at the last point evaluated with ``keep=True`` times ``v``."""
        f64 = torch.float64
        k, diagonal, dev = self.k, self.diagonal, self.device
        if self._kept_at is None:  # pragma: no cover - internal misuse
            raise RuntimeError("hessp needs a point evaluated with keep=True first")
        if diagonal and self.low_rank:
            # H = D - U^T S U with U_i = [q_i ⊙ F_i, q_i] (kept, or formed block by block from
            # the features until they are) and D the diagonal blocks; U^T S (U v) over blocks of
            # rows small enough to stay in cache between the two products, so the kept arrays
            # are read once instead of twice
            vt = torch.from_numpy(np.ascontiguousarray(v)).to(dev, self.dtype)
            v_w, v_b = vt[:k], vt[k:]
            kept = self.probs_f is not None
            if not kept:
                w, b = self.params(self._kept_at)
            scratch = WorkBuffers()  # freed with the pass

            def block(rows: slice) -> torch.Tensor:
                if kept:
                    qf, q = self.probs_f[rows], self.probs[rows]
                else:
                    feats = self.features(rows)
                    q = softmax_rows(self._logits(feats, w, b, out=scratch(_SLOT_LOGITS, feats)),
                                     out=scratch(_SLOT_PROBS, feats))
                    qf = torch.mul(q, feats, out=scratch(_SLOT_LOGITS, feats))
                r = torch.addmv(torch.mv(q, v_b), qf, v_w)
                if self.weights is not None:
                    r.mul_(self.weights[rows].to(r.dtype))
                return torch.stack([torch.mv(qf.T, r), torch.mv(q.T, r)]).to(f64)  # float32 products

            acc = torch.zeros((2, k), dtype=f64, device=dev)  # U^T S U v: the w and the b halves
            # blocks of _CHUNK_ELEMENTS / (2 K) rows: 2**18 elements (1 MB of float32) of each kept
            # array, so the second product over a block reads it from cache, and large enough that
            # the four torch calls per block cost less than their arithmetic (measured at 50 000 x
            # 1 000 and on a 1 700-row fold: a quarter of these blocks took 1.2x and 1.7x as long)
            for part in self._map_chunks(block, list(_row_chunks(self.n, 2 * k)), 16 * k):
                acc += part  # float64 sums over blocks
            low = acc.reshape(-1).cpu().numpy()
            if self.weights is None:
                low = low / self.n
            d1, d2, d3 = self._kept_curv[:3]
            self.n_passes += 1
            return np.concatenate([d1 * v[:k] + d2 * v[k:], d2 * v[:k] + d3 * v[k:]]) - low
        vw, vb = self.params(v)
        w = b = None
        if self.probs is None:
            w, b = self.params(self._kept_at)
        h_w = torch.zeros((k,) if diagonal else (k, k), dtype=f64, device=dev)
        h_b = torch.zeros(k, dtype=f64, device=dev)
        scratch = WorkBuffers()  # freed with the pass

        def chunk(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.features(rows)
            if w is None:
                q = self.probs[rows]
            else:
                q = softmax_rows(self._logits(feats, w, b, out=scratch(_SLOT_LOGITS, feats)),
                                 out=scratch(_SLOT_PROBS, feats))
            t = self._logits(feats, vw, vb, out=scratch(_SLOT_PRODUCT, feats)).mul_(q)  # q ⊙ da
            t.addcmul_(q, t.sum(dim=1, keepdim=True), value=-1.0)  # (diag q - q q^T) da
            wc = self._chunk_weights(rows)
            if wc is not None:
                t.mul_(wc.to(t.dtype)[:, None])
            return t.sum(dim=0).to(f64), (torch.linalg.vecdot(t, feats, dim=0) if diagonal else matmul(t.T, feats)).to(f64)

        for part_b, part_w in self._map_chunks(chunk, list(_row_chunks(self.n, k)), 8 * (h_w.numel() + k)):
            h_b += part_b
            h_w += part_w
        self.n_passes += 1
        scale = 1.0 / self.n if self.weights is None else 1.0
        return self._flat(h_w, h_b) * scale


def _errors(a: torch.Tensor, yc: torch.Tensor, a_true: torch.Tensor, wc: torch.Tensor | None) -> torch.Tensor:
    """Rows (of positive weight) where an entry of ``a`` other than the true one is at least ``a_true``.

    The true entries are set to ``-inf`` for one row maximum and restored: ``a`` is the caller's
    work buffer, unchanged on return.
    """
    a.scatter_(1, yc, -math.inf)
    wrong = a.amax(dim=1) >= a_true
    a.scatter_(1, yc, a_true[:, None])
    return wrong.sum() if wc is None else (wrong & (wc > 0)).sum()


def _subtract_gram(big: torch.Tensor, u: torch.Tensor, root_weights: torch.Tensor | None) -> None:
    """``big -= Σ_i s_i u_i u_i^T`` (``u``: rows × P, ``root_weights``: ``sqrt(s_i)`` or None for 1).

    On the CPU ``uᵀu`` goes to numpy's BLAS (:func:`~precal._numerics.matmul`), which computes the
    product of a matrix with its own transpose as a ``syrk`` (half the work). On other devices,
    with ``u = [A | B]`` split at ``h = P/2`` columns, three products ``AᵀA``, ``AᵀB``, ``BᵀB``
    give the symmetric result (three quarters of ``uᵀu``'s work, no host copy).
    """
    if root_weights is not None:
        u = u * root_weights[:, None]
    p = u.shape[1]
    if u.device.type == "cpu" or p < 128:  # halves: no gain below (1.6 ms either way at P = 110)
        big -= matmul(u.T, u).to(torch.float64)
        return
    h = p // 2
    a, b = u[:, :h], u[:, h:]
    cross = (a.T @ b).to(torch.float64)
    big[:h, :h] -= (a.T @ a).to(torch.float64)
    big[:h, h:] -= cross
    big[h:, :h] -= cross.T
    big[h:, h:] -= (b.T @ b).to(torch.float64)


class _Penalty:
    r"""The regularisation as a quadratic form ``½ θ^T R θ`` in the optimiser's coordinates.

    The optimiser works on standardised features ``F = (ℓ - m) / s`` with ``W~ = W diag(s)`` and
    ``b~ = b + W m``; the penalty is evaluated on the original map, at the representative of its
    class of equivalent maps (``W + 1 v^T``, ``b + c 1`` give the same probabilities) with
    zero-mean off-diagonal columns and a zero-mean intercept: ODIR there is the smallest over
    the class, and the objective is exactly flat along the equivalences. Every step is linear, so
    the gradient is ``R θ`` and Hessian-vector products are gradients.
    """

    def __init__(self, k: int, diagonal: bool, shift: np.ndarray, scale: np.ndarray,
                 reg_lambda: float, reg_mu: float, reg_diag: float) -> None:
        self.k, self.diagonal = k, diagonal
        self.m, self.s = shift, scale
        self.lam, self.mu, self.nu = reg_lambda, reg_mu, reg_diag
        self.n_params = 2 * k if diagonal else k * (k + 1)
        self._dense: np.ndarray | None = None

    def to_original(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the original log-probabilities; ``theta`` may have trailing batch axes."""
        k = self.k
        batch = theta.shape[1:]
        expand = (slice(None),) + (None,) * len(batch)
        m, s = self.m[expand], self.s[expand]
        if self.diagonal:
            w = theta[:k] / s
            return w, theta[k:] - w * m
        big = theta.reshape((k, k + 1) + batch)
        w = big[:, :k] / s[None]
        return w, big[:, k] - np.einsum("jl...,l->j...", w, self.m)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """``R θ`` (``theta`` of shape ``(P,)`` or ``(P, m)``)."""
        k = self.k
        batch = theta.shape[1:]
        expand = (slice(None),) + (None,) * len(batch)
        m, s = self.m[expand], self.s[expand]
        w, b = self.to_original(theta)
        # Each gradient below is orthogonal, in exact arithmetic, to the directions the penalty
        # does not see: the flat ones and the temperature (W = I). Large strengths multiply the
        # rounding of the centred differences; projecting that rounding off again keeps it out
        # of the weakly curved temperature direction, where it would move the solution.
        g_b = (2.0 * self.mu / k) * (b - b.mean(axis=0))
        g_b -= g_b.mean(axis=0)
        if self.diagonal:
            g_w = (2.0 * self.nu / k) * (w - w.mean(axis=0))
            g_w -= g_w.mean(axis=0)
            return np.concatenate([(g_w - g_b * m) / s, g_b])
        idx = np.arange(k)
        diag = w[idx, idx]
        canon = w - ((w.sum(axis=0) - diag) / (k - 1))[None]
        big_g = (2.0 * self.lam / (k * (k - 1))) * canon
        d = canon[idx, idx]
        big_g[idx, idx] = (2.0 * self.nu / k) * (d - d.mean(axis=0))
        # the adjoint of the canonicalisation: W_ij (i != j) moves every entry of column j
        g_w = big_g - big_g.sum(axis=0)[None] / (k - 1)
        g_w[idx, idx] = big_g[idx, idx]
        g_w -= g_w.mean(axis=0)[None]  # no component along W + 1 v^T
        alpha = g_w[idx, idx].sum(axis=0) / (k - 1)  # nor along I - 1 1^T / K, i.e. W = I
        g_w[idx, idx] -= alpha
        g_w += alpha / k
        g_wt = (g_w - g_b[:, None] * m[None]) / s[None]
        return np.concatenate([g_wt, g_b[:, None]], axis=1).reshape((self.n_params,) + batch)

    def value(self, theta: np.ndarray) -> float:
        """``½ θ^T R θ``, from the centred terms (no cancellation)."""
        k = self.k
        w, b = self.to_original(theta)
        bc = b - b.mean()
        value = self.mu / k * float(bc @ bc)
        if self.diagonal:
            wc = w - w.mean()
            return value + self.nu / k * float(wc @ wc)
        idx = np.arange(k)
        canon = w - ((w.sum(axis=0) - w[idx, idx]) / (k - 1))[None]
        d = canon[idx, idx] - canon[idx, idx].mean()
        canon[idx, idx] = 0.0
        return value + self.lam / (k * (k - 1)) * float(np.sum(canon * canon)) + self.nu / k * float(d @ d)

    def dense(self) -> np.ndarray:
        """``R`` as a ``(P, P)`` matrix (built once)."""
        if self._dense is None:
            r = self.grad(np.eye(self.n_params))
            self._dense = 0.5 * (r + r.T)
        return self._dense

    def diagonal_estimate(self) -> np.ndarray:
        """``R``'s diagonal (full maps) or its ``2 × 2`` blocks per class (diagonal maps, ``(K, 2, 2)``),
        with the centring corrections left out: for preconditioning."""
        k = self.k
        inv_s2 = 1.0 / self.s**2
        c_b = 2.0 * self.mu / k * (1.0 - 1.0 / k)
        c_d = 2.0 * self.nu / k * (1.0 - 1.0 / k)
        if self.diagonal:  # μ/K (b~ - w~ m/s)² + ν/K (w~/s)² per class
            blocks = np.empty((k, 2, 2))
            blocks[:, 0, 0] = (c_d + c_b * self.m**2) * inv_s2
            blocks[:, 0, 1] = blocks[:, 1, 0] = -c_b * self.m / self.s
            blocks[:, 1, 1] = c_b
            return blocks
        c_o = 2.0 * self.lam / (k * (k - 1)) * (1.0 - 1.0 / (k - 1)) if k > 2 else 0.0
        d_w = np.full((k, k), c_o)
        np.fill_diagonal(d_w, c_d)
        d_w = (d_w + c_b * self.m[None] ** 2) * inv_s2[None]
        return np.concatenate([d_w, np.full((k, 1), c_b)], axis=1).ravel()


def _null_projection(v: np.ndarray, k: int, diagonal: bool) -> np.ndarray:
    """Orthogonal projection onto the directions along which the objective is flat.

    In the optimiser's coordinates adding a constant to column ``j`` of ``W~`` adds
    ``F_ij`` to every logit of row ``i`` (a per-row constant), and adding a constant to ``b~``
    adds the same to every logit: the columns of ``Θ = [W~ | b~]`` filled with a constant
    (only ``b~``'s for a diagonal map).
    """
    out = np.zeros_like(v)
    if diagonal:
        out[k:] = v[k:].mean()
        return out
    big = v.reshape(k, k + 1)
    return np.broadcast_to(big.mean(axis=0), (k, k + 1)).ravel().copy()


@dataclass(frozen=True)
class _NewtonResult:
    theta: np.ndarray
    f: float
    n_iter: int
    n_cg: int
    converged: bool
    message: str
    #: rows the map at ``theta`` misclassifies, when the last pass counted them (else -1)
    n_errors: int = -1


def _preconditioner(curv: np.ndarray, data: _DataTerm, penalty: _Penalty, c: float) -> Any:
    """``r -> M^{-1} r``, ``M`` an approximation of the Hessian that is cheap to invert.

    Diagonal maps: the exact ``2 × 2`` block of each class (``w_k`` and ``b_k`` are strongly
    coupled) plus the penalty's. Full maps: the data term's row ``j`` of ``Θ`` is approximated
    by ``c_j G`` (``c_j = Σ s q_j (1 - q_j)``, ``G = Σ s x x^T`` the features' Gram matrix: the
    columns of ``log_softmax`` are strongly correlated, which a diagonal cannot capture), the
    penalty by a multiple of the identity plus, per row, its rank-two part (the intercept's
    coupling ``b = b~ - W~ m/s`` and the diagonal entry); with ``G = U Λ U^T`` each row's
    system is diagonal plus rank two in ``U``'s basis (Woodbury), two ``K × (K+1)`` products
    per application.
    """
    k = data.k
    if data.diagonal:
        blocks = curv + penalty.diagonal_estimate()
        blocks[:, 1, 1] += c / k
        det = blocks[:, 0, 0] * blocks[:, 1, 1] - blocks[:, 0, 1] ** 2
        scale = np.maximum(blocks[:, 0, 0] * blocks[:, 1, 1], 1e-300)
        singular = ~(det > 1e-12 * scale)
        blocks[singular, 0, 1] = blocks[singular, 1, 0] = 0.0  # fall back to the diagonal there
        det = np.where(singular, scale, det)
        a, b, d = blocks[:, 1, 1] / det, -blocks[:, 0, 1] / det, blocks[:, 0, 0] / det

        def apply_blocks(r: np.ndarray) -> np.ndarray:
            rw, rb = r[:k], r[k:]
            return np.concatenate([a * rw + b * rb, b * rw + d * rb])

        return apply_blocks

    lam, basis = data.gram_eigen()
    c_row = np.maximum(curv.reshape(k, k + 1)[:, k], 0.0)  # Σ s q_j (1 - q_j): x's last entry is 1
    inv_s2 = 1.0 / penalty.s**2
    off = 2.0 * penalty.lam / (k * (k - 1)) * (1.0 - 1.0 / (k - 1)) if k > 2 else 0.0
    alpha = off * inv_s2.mean() + c / k  # the penalty's (and c Π's) level on every entry
    gamma = np.maximum(2.0 * penalty.nu / k * (1.0 - 1.0 / k) * inv_s2 - off * inv_s2, 0.0)  # diagonal excess
    beta = 2.0 * penalty.mu / k * (1.0 - 1.0 / k)
    den = c_row[:, None] * lam[None, :] + alpha  # (K, K+1): row j's M in the basis U
    den = np.maximum(den, 1e-300)
    a_vec = np.concatenate([-penalty.m / penalty.s, [1.0]]) @ basis  # U^T a
    e_rows = basis[:k]  # U^T e_j is row j of U
    a_hat, e_hat = a_vec[None, :] / den, e_rows / den
    s11 = (1.0 / beta if beta > 0 else 1e300) + a_hat @ a_vec
    s12 = np.einsum("jl,jl->j", a_hat, e_rows)
    s22 = np.where(gamma > 0, 1.0 / np.maximum(gamma, 1e-300), 1e300) + np.einsum("jl,jl->j", e_hat, e_rows)
    det = s11 * s22 - s12**2

    def apply_rows(r: np.ndarray) -> np.ndarray:
        r_hat = r.reshape(k, k + 1) @ basis
        z0 = r_hat / den
        t1, t2 = z0 @ a_vec, np.einsum("jl,jl->j", z0, e_rows)
        u1, u2 = (s22 * t1 - s12 * t2) / det, (s11 * t2 - s12 * t1) / det  # S^{-1} t per row
        z = z0 - a_hat * u1[:, None] - e_hat * u2[:, None]
        return (z @ basis.T).ravel()

    return apply_rows


def _pcg(apply: Any, rhs: np.ndarray, precondition: Any, rtol: float, max_iter: int
         ) -> tuple[np.ndarray, int, float]:
    """Preconditioned conjugate gradients for ``A x = rhs`` (``A`` positive definite).

    Returns the solution, the iterations and the relative residual reached, ``|r| / |rhs|``
    (1 when the first direction already met non-positive curvature: the preconditioned ``rhs``
    is returned then, with no residual computed)."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = precondition(r)
    p = z.copy()
    rz = float(r @ z)
    target = rtol * float(np.linalg.norm(rhs))
    it = 0
    for it in range(1, max_iter + 1):
        ap = apply(p)
        curv = float(p @ ap)
        if not curv > 0:  # rounding at a (numerically) singular direction: keep what we have
            if it == 1:
                return z, it, 1.0
            break
        alpha = rz / curv
        x += alpha * p
        r -= alpha * ap
        if float(np.linalg.norm(r)) <= target:
            break
        z = precondition(r)
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, it, float(np.linalg.norm(r)) / max(float(np.linalg.norm(rhs)), 1e-300)


def _polish_rtol(rtol: float, previous_steps: tuple[float, float], bound: float) -> float:
    """Residual to solve a float32 polishing step to, given the last two full steps.

    The step to come is predicted ``~ |d_prev|³ / |d_prev2|²``; solved to a relative residual
    ``ρ`` it leaves about ``ρ |d|`` to go, which ``ρ = bound / (8 |d|)`` keeps at a quarter of
    the half bound the predicted last step is held to (see :func:`_newton`); never tighter than
    ``rtol``, never looser than 0.05.
    """
    last, before = previous_steps
    expected = last * (last / before) ** 2
    return max(rtol, min(0.05, bound / (8.0 * max(expected, 1e-300))))


def _newton(theta: np.ndarray, data: _DataTerm, penalty: _Penalty, *, max_iter: int, tol: float,
            derivatives_at_end: bool = True) -> _NewtonResult:
    r"""Minimise data term + penalty by Newton's method with a backtracking (Armijo) line search.

    Each step solves ``(∇²f + c Π) d = -∇f`` (``Π`` the projection onto the flat directions,
    ``c`` the Hessian's mean diagonal, so the system is positive definite and ``d`` has no
    flat component): exactly by Cholesky for up to :data:`_DENSE_MAX_PARAMS` parameters,
    else by conjugate gradients preconditioned by :func:`_preconditioner`, to a relative
    residual ``min(0.5, sqrt(|∇f| / |∇f_0|))`` (superlinear convergence; for the polishing
    steps below :data:`_POLISH_RTOL`: ``1e-10`` in float64, ``sqrt(eps)`` in float32, whose
    Hessian-vector products are no more exact than that). Once the Newton
    decrement ``δ = -∇f·d`` (twice the predicted decrease) satisfies
    ``δ/2 <= max(tol, 16 eps) (1 + |f|)`` the objective is at its minimum to rounding; the
    iteration then goes on until a step moves no parameter by more than
    ``sqrt(eps) (1 + max|θ|)`` (after it, quadratic convergence leaves them at their own
    rounding floor), at most four such steps. In float32 (:data:`_PREDICTED_FLOOR_DTYPES`) it
    also ends once that step is predicted: a step ``d`` after a full step ``d_prev`` leaves
    about ``|d|³ / |d_prev|² + rtol |d|`` to go (quadratic convergence, plus the residual the
    system was solved to); below half the bound the parameters are taken to be within that
    tolerance of the minimiser, a relative ``sqrt(eps) / 2`` (about 2e-4) of the largest one, far
    inside the statistical error of any fit and at an objective already at its rounding floor.
    The test counts the residual the conjugate gradients reached, and predicts only after full
    steps (after a step shortened to ``t < 1`` about ``(1 - t) |d|`` is left). A polishing step
    whose size the same model predicts is solved only as tightly as that test needs (a relative
    residual of an eighth of the bound over the predicted step, at most 0.05). On 50 000 ×
    1 000 logits: one full pass and nine CG products fewer, a quarter of the fit.

    **Passes.** A step's trial point is evaluated with gradient and curvature (the next step's)
    unless it is known to be the last step: a step on which the decrement has reached the
    floor and which moves no parameter by more than the bound above. With
    ``derivatives_at_end=False`` that last pass computes only the value and the number of
    misclassified rows (``n_errors`` of the result: the fit's warning needs them, and one pass
    gives both); with ``True`` it computes the derivatives too, which the data term remembers,
    so a solve warm-started at the returned point (the next strength of a regularisation
    path) begins without a pass.
    """
    k, diagonal = data.k, data.diagonal
    dense = data.n_params <= _DENSE_MAX_PARAMS
    eps = float(torch.finfo(data.dtype).eps)
    r_dense = penalty.dense() if dense else None

    def full(x: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        ev = data.evaluate(x, grad=True, hess=dense, hess_diag=not dense, keep=not dense)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an infinitely bad point
            # the penalty's gradient from its structured form (centred differences first): the
            # dense R x would sum terms of size λ that cancel, losing digits for large λ
            f, g = ev.f + penalty.value(x), ev.g + penalty.grad(x)
            curv = ev.hess + r_dense if dense else ev.hess_diag  # the data term's only (CG)
        if not (math.isfinite(f) and np.isfinite(g).all() and np.isfinite(curv).all()):
            return math.inf, None, None
        return f, g, curv

    def value(x: np.ndarray, count_errors: bool = False) -> tuple[float, int]:
        ev = data.evaluate(x, grad=False, count_errors=count_errors)
        with np.errstate(over="ignore", invalid="ignore"):
            f = ev.f + penalty.value(x)
        return (f if math.isfinite(f) else math.inf), ev.n_errors

    def last_step(step: float, x_new: np.ndarray, rtol: float, full_step: bool) -> bool:
        """Whether a step of max-norm ``step`` to ``x_new``, taken once the decrement is at the floor
        and solved to a relative residual ``rtol``, ends the fit (``full_step``: taken at ``t = 1``)."""
        bound = math.sqrt(eps) * (1.0 + float(np.max(np.abs(x_new))))
        if step <= bound or polish + 1 >= 4:
            return True
        # float32: when the next step is predicted below half the bound (quadratic convergence
        # after two full steps, |d_next| ~ |d|^3 / |d_prev|^2, plus the residual rtol |d| the
        # system was solved to), the parameters are within that tolerance of the minimiser;
        # taking the step would only confirm it. After a shortened step (t < 1) there is about
        # (1 - t) |d| to go: no prediction then
        previous = previous_steps[0]
        if not (predict_floor and full_step and previous > 0):
            return False
        return step * (step / previous) ** 2 + rtol * step <= bound / 2

    f, g, curv = full(theta)
    if not math.isfinite(f):
        return _NewtonResult(theta, math.inf, 0, 0, False, "the objective overflowed at the start (temperature "
                             "scaling): the logits are too large for a float64 fit")
    g0 = max(float(np.linalg.norm(g)), 1e-300)
    n_cg, message, converged, n_iter, polish = 0, f"max_iter={max_iter} Newton steps reached", False, 0, 0
    predict_floor, previous_steps = data.dtype in _PREDICTED_FLOOR_DTYPES, (0.0, 0.0)  # the last two full steps
    n_errors = -1
    while n_iter < max_iter:
        n_iter += 1
        if dense:
            c = max(float(np.mean(np.diag(curv))), 1e-12)
            d, rtol = _dense_newton_step(curv, g, c, k, diagonal), 0.0
        else:
            pen = penalty.diagonal_estimate()
            if diagonal:
                curv_diag, pen = np.diagonal(curv, axis1=1, axis2=2), np.diagonal(pen, axis1=1, axis2=2)
            else:
                curv_diag = curv
            c = max(float(np.mean(curv_diag + pen)), 1e-12)

            def apply(v: np.ndarray) -> np.ndarray:
                return data.hessp(v) + penalty.grad(v) + c * _null_projection(v, k, diagonal)

            rtol = _POLISH_RTOL.get(data.dtype, 1e-10) if polish else min(0.5, math.sqrt(float(np.linalg.norm(g)) / g0))
            if polish and predict_floor and previous_steps[1] > 0:
                rtol = _polish_rtol(rtol, previous_steps, math.sqrt(eps) * (1.0 + float(np.max(np.abs(theta)))))
            # the residual reached, not the one asked for, is what the predicted last step counts
            d, used, rtol = _pcg(apply, -g, _preconditioner(curv, data, penalty, c), rtol, _CG_MAX_ITER)
            n_cg += used
            d = d - _null_projection(d, k, diagonal)
        dec = -float(g @ d)
        floor = 16.0 * eps * (1.0 + abs(f))
        if not dec > 0:  # no descent direction left: the gradient is at rounding level
            converged, message = True, "converged (gradient at rounding level)"
            break
        final = dec / 2.0 <= max(tol * (1.0 + abs(f)), floor)  # the objective is at its minimum
        t, accepted, trial, errors = 1.0, False, (math.inf, None, None), -1
        # the value alone where the step at t = 1 would be the last and no derivatives are wanted there
        quick = not derivatives_at_end and final and last_step(float(np.max(np.abs(d))), theta + d, rtol, True)
        for attempt in range(60):
            x_new = theta + t * d
            if attempt == 0 and not quick:
                trial = full(x_new)  # accepted, its derivatives serve the next step
                f_new = trial[0]
            else:
                f_new, errors = value(x_new, count_errors=final and not derivatives_at_end)
            if math.isfinite(f_new) and (f_new <= f - 1e-4 * t * dec or (final and f_new <= f + floor)):
                accepted = True
                break
            if math.isfinite(f_new) and f_new > f:  # safeguarded quadratic interpolation
                t = max(0.1 * t, min(0.5 * t, 0.5 * t * t * dec / (f_new - f + t * dec)))
            else:
                t *= 0.5
        if not accepted:
            converged = final
            message = ("converged (at the rounding floor of the objective)" if final
                       else "the line search found no decrease (rounding floor of the objective?)")
            break
        step = float(np.max(np.abs(x_new - theta)))
        theta = x_new
        if final and last_step(step, x_new, rtol, t == 1.0):
            # The objective is at its floor; the parameters along weakly curved directions may
            # still move by up to sqrt(δ / smallest curvature). Newton steps until one is at the
            # rounding level of the parameters put them at their floor too (one or two more).
            converged, message, f = True, "converged", f_new
            if derivatives_at_end and not (trial[1] is not None and t == 1.0):
                full(theta)  # remembered by the data term for a warm start here
            n_errors = errors
            break
        if trial[1] is not None and t == 1.0:
            f, g, curv = trial
        else:
            f, g, curv = full(x_new)
        if g is None:  # pragma: no cover - the value was finite, the gradient not
            message = "the gradient is not finite"
            break
        if final:
            polish += 1
        # quadratic convergence is read off full steps only
        previous_steps = (step, previous_steps[0]) if t == 1.0 else (0.0, 0.0)
    return _NewtonResult(theta, f, n_iter, n_cg, converged, message, n_errors)


def _null_projection_diagonal(k: int, diagonal: bool) -> np.ndarray:
    """The diagonal of the projection of :func:`_null_projection`."""
    if diagonal:
        return np.concatenate([np.zeros(k), np.full(k, 1.0 / k)])
    return np.full(k * (k + 1), 1.0 / k)


def _null_projection_matrix(k: int, diagonal: bool) -> np.ndarray:
    """The projection of :func:`_null_projection` as a matrix."""
    if diagonal:
        out = np.zeros((2 * k, 2 * k))
        out[k:, k:] = 1.0 / k
        return out
    return np.kron(np.full((k, k), 1.0 / k), np.eye(k + 1))


def _dense_newton_step(hess: np.ndarray, g: np.ndarray, c: float, k: int, diagonal: bool) -> np.ndarray:
    """Solve ``(H + c Π) d = -g`` by Cholesky (damped if ``H`` is numerically singular)."""
    n = hess.shape[0]
    a = hess + c * _null_projection_matrix(k, diagonal)
    a = 0.5 * (a + a.T)
    damping = 0.0
    for _ in range(12):
        try:
            factor = scipy.linalg.cho_factor(a + damping * np.eye(n), lower=False, check_finite=False)
            d = -scipy.linalg.cho_solve(factor, g, check_finite=False)
            if np.isfinite(d).all():
                return d
        except (np.linalg.LinAlgError, ValueError):
            pass
        damping = max(damping * 100.0, 1e-12 * c)
    return -g / c  # pragma: no cover - steepest descent as the last resort


def _to_original(theta: np.ndarray, k: int, diagonal: bool, shift: np.ndarray, scale: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The map on the original log-probabilities, as its smallest-ODIR representative."""
    if diagonal:
        coef = theta[:k] / scale
        intercept = theta[k:] - coef * shift
    else:
        big = theta.reshape(k, k + 1)
        coef = big[:, :k] / scale[None, :]
        intercept = big[:, k] - coef @ shift
        coef = _canonical_coef(coef)
    return coef, intercept - intercept.mean()


def logit_magnitude(z: torch.Tensor) -> float:
    """``max(max |z|, 1)``: one pass."""
    return max(*(abs(float(v)) for v in torch.aminmax(z)), 1.0)


def working_dtype(n: int, k: int, logits_dtype: torch.dtype, magnitude: float) -> torch.dtype:
    """float64 up to :data:`_FLOAT64_MAX_ELEMENTS` elements, float32 above (float64 logits near
    or beyond float32's range, 3.4e38, stay float64)."""
    small = n * k <= _FLOAT64_MAX_ELEMENTS
    return torch.float64 if small or (logits_dtype == torch.float64 and magnitude > 1e30) else torch.float32


class _Problem:
    """One Dirichlet fit's data, prepared once: the standardised features and the data term.

    Several fits (a path of regularisation strengths) reuse it, warm-started.
    """

    def __init__(self, logits: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor | None, *,
                 diagonal: bool, dtype: torch.dtype | None = None, magnitude: float | None = None,
                 n_threads: int = 1) -> None:
        z = logits
        n, k = z.shape
        f64 = torch.float64
        if magnitude is None:  # max(|z|, 1), unless the caller knows it
            magnitude = logit_magnitude(z)
        if dtype is None:
            dtype = working_dtype(n, k, z.dtype, magnitude)
        if dtype not in (torch.float32, f64):
            raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {dtype!r}.")
        device = z.device
        self.logits, self.y, self.weights = z, y_idx, weights
        self.n, self.k, self.diagonal, self.dtype = n, k, diagonal, dtype
        self.magnitude = magnitude

        # Column means and standard deviations of the log-probabilities, on all rows or on a
        # strided sample of them (they only choose the optimiser's coordinates), as float64
        # sums of values divided by the largest possible |log p|, 2 max|z|, so squares cannot
        # overflow; weighted, so that weights and repeated rows give the same coordinates.
        unit = 2.0 * magnitude
        stride = max(1, n // _STATS_ROWS)
        sample = z[::stride]
        w_sample = None if weights is None else weights[::stride]
        s1 = torch.zeros(k, dtype=f64, device=device)
        s2 = torch.zeros(k, dtype=f64, device=device)
        for rows in _row_chunks(sample.shape[0], k):
            lp64 = softmax_rows(sample[rows].to(dtype), log=True).to(f64).div_(unit)
            if w_sample is None:
                s1 += lp64.sum(dim=0)
                s2 += lp64.square_().sum(dim=0)
            else:
                wc = w_sample[rows, None]
                s1 += (wc * lp64).sum(dim=0)
                s2 += (wc * lp64.square()).sum(dim=0)
        total_weight = float(sample.shape[0]) if w_sample is None else float(w_sample.sum())
        if not total_weight > 0:  # a sample of zero-weight rows: any coordinates do
            total_weight, s1, s2 = 1.0, s1 * 0.0, s2 * 0.0 + 1.0 / unit**2
        mean = s1 / total_weight
        var = (s2 / total_weight - mean.square()).clamp_min(0.0)
        shift, scale = mean * unit, var.sqrt() * unit
        scale = torch.where(scale > 1e-12 * (1.0 + shift.abs()), scale, torch.ones_like(scale))
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all()):  # pragma: no cover - defensive
            shift, scale = torch.zeros(k, dtype=f64, device=device), torch.ones(k, dtype=f64, device=device)
        features: Any = _StandardisedLogProbs(z, shift, scale, dtype)
        n_threads = n_threads if device.type == "cpu" else 1
        if n * k <= _CACHE_ELEMENTS:  # one pass writes the standardised features
            cache = torch.empty((n, k), dtype=dtype, device=device)
            map_blocks(lambda rows: features(rows, out=cache[rows]), list(_row_chunks(n, k)), n_threads)
            features = _Rows(cache)
        self.shift, self.scale = shift.cpu().numpy(), scale.cpu().numpy()  # K numbers each
        # the kept probabilities (n K; [q ⊙ F, q], 2 n K, for a diagonal map when that fits
        # too) when the features are cached: each array within _CACHE_ELEMENTS
        conjugate_gradients = (2 * k if diagonal else k * (k + 1)) > _DENSE_MAX_PARAMS
        self.data = _DataTerm(features, y_idx, weights, diagonal=diagonal, dtype=dtype, device=device,
                              keep_probs=conjugate_gradients and n * k <= _CACHE_ELEMENTS,
                              low_rank=diagonal and 2 * n * k <= _CACHE_ELEMENTS, n_threads=n_threads)

    def from_original(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """``θ`` of a map on the original log-probabilities: ``W~ = W diag(s)``, ``b~ = b + W m``."""
        m, s = self.shift, self.scale
        if self.diagonal:
            return np.concatenate([coef * s, intercept + coef * m])
        return np.concatenate([coef * s[None, :], (intercept + coef @ m)[:, None]], axis=1).ravel()

    def to_original(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _to_original(theta, self.k, self.diagonal, self.shift, self.scale)

    def start(self) -> np.ndarray:
        """Temperature scaling, ``W = I / T``, ``b = 0``: the best map along the identity ray."""
        # fit_temperature keeps 1/T in [e^-10, e^10]; logits far beyond any real network's are
        # scaled by a power of two first (exact), so the start is temperature scaling there too
        unit = 2.0 ** max(0, math.frexp(self.magnitude)[1] - 20)
        stride = max(1, self.n // _STATS_ROWS)  # any start does; a sample's temperature is close
        z, y = self.logits[::stride], self.y[::stride]
        w = None if self.weights is None else self.weights[::stride]
        if w is not None and not float(w.sum()) > 0:
            z, y, w = self.logits, self.y, self.weights
        z = z if unit == 1.0 else z / unit
        beta = 1.0 / fit_temperature(z, y, w).temperature / unit
        k = self.k
        return self.from_original(np.full(k, beta) if self.diagonal else beta * np.eye(k), np.zeros(k))

    def solve(self, theta: np.ndarray, reg_lambda: float, reg_mu: float, reg_diag: float, *,
              max_iter: int, tol: float, derivatives_at_end: bool = True) -> _NewtonResult:
        """:func:`_newton` from ``theta`` (``derivatives_at_end``: see there; ``False`` for a last fit)."""
        penalty = _Penalty(self.k, self.diagonal, self.shift, self.scale, reg_lambda, reg_mu, reg_diag)
        return _newton(theta, self.data, penalty, max_iter=max_iter, tol=tol, derivatives_at_end=derivatives_at_end)

    def n_errors(self, theta: np.ndarray) -> int:
        """Rows of positive weight whose true class is not the strict argmax of the fitted map."""
        return self.data.count_errors(theta)


def _heldout_nll(logits: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor | None, coef: np.ndarray,
                 intercept: np.ndarray, rows: torch.Tensor, log_probs: torch.Tensor | None = None
                 ) -> tuple[float, float]:
    """``(Σ s_i NLL_i, Σ s_i)`` of the map ``(coef, intercept)`` over ``rows`` (float64).

    ``log_probs``: ``log_softmax`` of ``logits[rows]`` in float64, when the caller keeps it (a
    fold's held-out rows are scored at every strength of the path).
    """
    f64 = torch.float64
    device = logits.device
    w = torch.from_numpy(coef).to(device)
    b = torch.from_numpy(intercept).to(device)
    total = torch.zeros((), dtype=f64, device=device)
    weight = torch.zeros((), dtype=f64, device=device)
    step = max(1, _CHUNK_ELEMENTS // logits.shape[1])
    for start in range(0, len(rows), step):
        idx = rows[start : start + step]
        lp = softmax_rows(logits[idx].to(f64), log=True) if log_probs is None else log_probs[start : start + step]
        a = lp * w + b if w.dim() == 1 else torch.addmm(b, lp, w.T)
        nll = torch.logsumexp(a, dim=1) - a.gather(1, y_idx[idx, None])[:, 0]
        if weights is None:
            total += nll.sum()
            weight += len(idx)
        else:
            wc = weights[idx]
            total += (nll * wc).sum()
            weight += wc.sum()
    return float(total), float(weight)


def dirichlet_objective(
    log_probs: Any,
    y_idx: Any,
    coef: Any,
    intercept: Any,
    sample_weight: Any = None,
    *,
    reg_lambda: float = 0.0,
    reg_mu: float = 0.0,
    reg_diag: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""The Dirichlet calibration objective and its exact gradient.

    .. math::

        L(W, b) = \frac{1}{\sum_i s_i} \sum_i s_i \Big[\log\sum_k e^{a_{ik}} - a_{i y_i}\Big]
                  + P(W, b), \qquad a_i = W \ell_i + b

    with ``ℓ_i = log_softmax(z_i)`` the log-probabilities of the classifier, ``s_i`` the sample
    weights and ``P`` :func:`odir_penalty`. The gradient of the data term is
    ``(Q - Y)^T ℓ / n`` for ``W`` and the column means of ``Q - Y`` for ``b`` (``Q = softmax(a)``,
    ``Y`` one-hot labels); for a diagonal ``W = diag(w)`` it is the column means of
    ``(Q - Y) ⊙ ℓ``. Rows are processed in chunks of about ``2**19`` elements in the dtype of
    ``log_probs`` (float32 or float64), with float64 sums across rows.

    Parameters
    ----------
    log_probs : array-like or torch.Tensor of shape (n, K)
        Log-probabilities ``log_softmax(z)`` (any features work: the map is affine in them).
    y_idx : array-like of int, shape (n,)
        Column index of each sample's true class.
    coef : array-like of shape (K, K) or (K,)
        ``W``, full or its diagonal.
    intercept : array-like of shape (K,)
        ``b``.
    sample_weight : array-like of shape (n,), optional
    reg_lambda, reg_mu, reg_diag : float, default=0
        Regularisation strengths (see :func:`odir_penalty`).

    Returns
    -------
    (value, grad_coef, grad_intercept) : float, ndarray, ndarray
        float64, gradients shaped like ``coef`` and ``intercept``.
    """
    lp = to_tensor(log_probs)
    if lp.dtype not in (torch.float32, torch.float64):
        lp = lp.float()
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    yi = _on_device(y_idx, torch.int64, lp.device)
    w = None
    if sample_weight is not None:
        w = _on_device(sample_weight, torch.float64, lp.device)
        w = w / w.sum()
    k = intercept.shape[0]
    diagonal = coef.ndim == 1
    data = _DataTerm(_Rows(lp), yi, w, diagonal=diagonal, dtype=lp.dtype, device=lp.device, keep_probs=False)
    theta = np.concatenate([coef, intercept]) if diagonal else np.concatenate([coef, intercept[:, None]], 1).ravel()
    ev = data.evaluate(theta)
    g_w, g_b = (ev.g[:k], ev.g[k:]) if diagonal else (ev.g.reshape(k, k + 1)[:, :k], ev.g.reshape(k, k + 1)[:, k])
    p, pg_w, pg_b = odir_penalty(coef, intercept, reg_lambda, reg_mu, reg_diag)
    return ev.f + p, g_w + pg_w, g_b + pg_b


# --------------------------------------------------------------------------- the fit
@dataclass(frozen=True)
class DirichletFit:
    """Result of :func:`fit_dirichlet`."""

    coef: np.ndarray
    intercept: np.ndarray
    objective: float
    n_iter: int
    converged: bool
    message: str
    n_errors: int
    #: conjugate-gradient iterations (0 when the Newton systems were solved densely)
    n_cg: int = 0
    #: passes over the data (values, gradients, Hessians, Hessian-vector products)
    n_passes: int = 0


def _fit_problem(problem: _Problem, reg_lambda: float, reg_mu: float, reg_diag: float, *, max_iter: int,
                 tol: float, init: tuple[np.ndarray, np.ndarray] | None) -> DirichletFit:
    theta0 = problem.start() if init is None else problem.from_original(*(np.asarray(v, np.float64) for v in init))
    result = problem.solve(theta0, reg_lambda, reg_mu, reg_diag, max_iter=max_iter, tol=tol, derivatives_at_end=False)
    coef, intercept = problem.to_original(result.theta)
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):  # pragma: no cover - defensive
        coef, intercept = (np.ones(problem.k) if problem.diagonal else np.eye(problem.k)), np.zeros(problem.k)
    return DirichletFit(
        coef=coef,
        intercept=intercept,
        objective=float(result.f),
        n_iter=result.n_iter,
        converged=result.converged,
        message=result.message,
        n_errors=result.n_errors if result.n_errors >= 0 else problem.n_errors(result.theta),
        n_cg=result.n_cg,
        n_passes=problem.data.n_passes,
    )


def fit_dirichlet(
    logits: Any,
    y_idx: Any,
    sample_weight: Any = None,
    *,
    diagonal: bool = False,
    reg_lambda: float = 0.0,
    reg_mu: float = 0.0,
    reg_diag: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-14,
    dtype: torch.dtype | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> DirichletFit:
    r"""Minimise :func:`dirichlet_objective` over ``(W, b)`` by Newton's method on exact derivatives.

    **Optimiser.** The objective is smooth and convex (the multinomial log-likelihood of a
    linear model in ``ℓ`` plus a quadratic penalty), so Newton's method with a backtracking
    line search converges from any start, quadratically near the minimum, in a handful of
    steps and with nothing to tune. The gradient and Hessian are exact:
    ``∇² = Σ_i s_i (diag(q_i) - q_i q_i^T) ⊗ x_i x_i^T`` with ``x_i = [ℓ_i, 1]`` (for a diagonal
    map, ``J_i^T (diag(q_i) - q_i q_i^T) J_i`` with ``J_i = [diag(ℓ_i), I]``). Up to 512
    parameters (full maps up to 22 classes, diagonal maps up to 256) the Hessian is formed and
    each step solved by Cholesky; larger problems solve each step by conjugate gradients on
    exact Hessian-vector products (one pass each, using the probabilities kept from the
    gradient pass; see "Preconditioning" for when they are kept), preconditioned by the
    Hessian's exact ``2 × 2`` block per class (diagonal maps) or a Kronecker-like Gram-matrix
    approximation (full maps), to a relative residual that shrinks with the gradient (an
    inexact Newton method; superlinear). Everything runs in torch on the logits' device,
    chunked over rows (one block kernel computes values, gradients, Hessians and
    Hessian-vector products, with one fused softmax per chunk; on the CPU the chunks of a
    pass are shared among precal's threads, see :class:`DirichletCalibrator`'s Notes); only
    ``K``-sized vectors and, for dense steps, the ``P × P`` Hessian travel to the host.

    **Stopping.** The iteration stops after the step whose Newton decrement ``δ = -∇L·d``
    satisfies ``δ/2 <= max(tol, 16 eps)(1 + |L|)`` (``eps`` of the working dtype): ``δ/2``
    estimates how far the objective is above its minimum, and the step taken then leaves an
    error of order ``δ²``, so with the default ``tol`` the parameters are at the
    floating-point floor (a gradient of order 1e-15 in float64). Fits of the same objective
    from different starts, or on weighted versus repeated rows, then agree to rounding. The
    pass at the point of that last step computes only the objective and the number of
    misclassified rows (no gradient), so a fit warm-started at its solution costs one
    gradient pass, the conjugate-gradient products of one step and one value pass.

    **Start.** Temperature scaling, ``W = I / T``, ``b = 0`` (:func:`fit_temperature`, a few
    cheap passes): the best map on the ray through the identity. Every accepted step lowers
    the objective and the penalty is zero there, so the fitted NLL is never above temperature
    scaling's.

    **Equivalent maps.** ``softmax(W ℓ + b)`` is unchanged by ``W -> W + 1 v^T`` and
    ``b -> b + c 1``. The penalty is evaluated at the representative with zero-mean
    off-diagonal columns and intercept (for ODIR the smallest over the class), so the objective
    is exactly flat along the equivalences; each Newton system adds the projection onto those
    directions, which makes it positive definite and the step free of them. The map returned is
    that representative: for ``reg_diag = 0`` the minimiser of the paper's objective.

    **Preconditioning.** The columns of ``ℓ = log_softmax(z)`` have means of several units
    and unequal spreads. The optimiser works on standardised features ``ℓ̃ = (ℓ - m) / s``
    (weighted column means ``m``, standard deviations ``s``) with ``W̃ = W diag(s)`` and
    ``b̃ = b + W m``: the same function in better scaled coordinates (Newton's steps do not
    depend on them, the conjugate-gradient solves do), mapped back exactly. Inputs of up to
    ``2**27`` elements keep ``ℓ̃`` (one copy of the logits) and, for conjugate-gradient
    steps, the current probabilities (a second; for a diagonal map also ``q ⊙ ℓ̃``, a third,
    up to ``2**26`` elements); larger ones recompute both chunk by chunk in every pass, so
    memory stays bounded. Above 32 MiB the probabilities are kept from the second Newton step
    on (the first step's products recompute them): freshly allocated memory costs a page fault
    per 4 KB on first touch, more than recomputing them for one step.

    **Precision.** Fits on up to ``2**20`` elements (``n K``) run in float64. Larger ones run
    element-wise work and matrix products in float32, chunk by chunk, and sum over chunks in
    float64; they stop at float32's floor (``16 eps`` above), about 1e-6 in the objective.

    A step that overflows (non-finite objective) is shortened by the line search; the fit
    never returns non-finite parameters.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n, K)
        Validated, finite logits (on any device).
    y_idx : array-like of int, shape (n,)
    sample_weight : array-like of shape (n,), optional
    diagonal : bool, default=False
        Fit ``W = diag(w)`` instead of a full matrix.
    reg_lambda, reg_mu, reg_diag : float, default=0
        Regularisation strengths (see :func:`odir_penalty`).
    max_iter : int, default=100
        Newton steps at most.
    tol : float, default=1e-14
        See "Stopping".
    dtype : torch.float32 or torch.float64, optional
        Force the working precision (default: see "Precision").
    init : (coef, intercept), optional
        Start here instead of at temperature scaling.

    Returns
    -------
    DirichletFit
        ``coef`` (``(K, K)``, or ``(K,)`` when diagonal), ``intercept``, the objective,
        Newton steps, whether it converged, why it stopped, the number of training rows the
        fitted map misclassifies (0 flags separable data), conjugate-gradient iterations and
        passes over the data.
    """
    z = to_tensor(logits)
    if z.dim() != 2:
        raise ValueError(f"logits must be 2-D (n, K), got shape {tuple(z.shape)}.")
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    yi = _on_device(y_idx, torch.int64, z.device)
    weights = None
    if sample_weight is not None:
        weights = _on_device(sample_weight, torch.float64, z.device)
        weights = weights / weights.sum()
    # torch and BLAS on one thread, the chunks of each pass on precal's threads (see DirichletCalibrator's Notes)
    with thread_limits(_pass_elements(*z.shape, diagonal), torch_threads=1, blas_threads=1) as n_threads:
        problem = _Problem(z, yi, weights, diagonal=diagonal, dtype=dtype, n_threads=n_threads)
        return _fit_problem(problem, reg_lambda, reg_mu, reg_diag, max_iter=max_iter, tol=tol, init=init)
# --------------------------------------------------------------------------- the estimator
class _DirichletMap(torch.nn.Module):
    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float32))
        self.register_buffer("intercept", torch.tensor(intercept, dtype=torch.float32))
        self.diagonal = coef.ndim == 1

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits if logits.dtype == torch.float64 else logits.float()
        lp = torch.log_softmax(z, dim=-1)
        coef, intercept = self.coef.to(z.dtype), self.intercept.to(z.dtype)
        out = lp * coef + intercept if self.diagonal else lp @ coef.T + intercept
        return out.to(logits.dtype)


def check_strengths(estimator: Any, names: tuple[str, ...]) -> None:
    """Check the penalty strengths ``names`` of ``estimator``: each a finite float >= 0;
    ``reg_lambda`` may also be ``"cv"`` and ``reg_mu``/``reg_diag`` ``None`` (tied to ``reg_lambda``)."""
    for name in names:
        value = getattr(estimator, name)
        if (name in ("reg_mu", "reg_diag") and value is None) or (name == "reg_lambda" and isinstance(value, str)
                                                                   and value == "cv"):
            continue
        if isinstance(value, str):
            expected = "a float >= 0 or 'cv'" if name == "reg_lambda" else "a float >= 0 or None"
            raise TypeError(f"{name} must be {expected}, got str {value!r}.")
        check_number(value, name, numbers.Real, min_val=0.0, finite=True)


class DirichletCalibrator(BaseLogitCalibrator):
    r"""Dirichlet calibration: an affine map on the log-probabilities, ``q = softmax(W log p + b)``.

    The method of Kull et al. (2019): with ``ℓ = log_softmax(z)`` the classifier's
    log-probabilities, the calibrated probabilities are

    .. math::

        q(z) = \operatorname{softmax}(W \ell + b), \qquad W \in \mathbb{R}^{K \times K},\;
        b \in \mathbb{R}^K,

    fitted by minimising the mean negative log-likelihood plus the off-diagonal and
    intercept regularisation (ODIR) of the paper and the spread of ``W``'s diagonal,

    .. math::

        \frac{1}{n}\sum_i -\log q(z_i)_{y_i}
        + \frac{\lambda}{K(K-1)} \sum_{i \ne j} w_{ij}^2 + \frac{\mu}{K} \sum_j b_j^2
        + \frac{\nu}{K} \sum_j (w_{jj} - \bar w)^2 .

    It generalises beta calibration to many classes, and is a linear layer with softmax on
    top of the log-probabilities. ``map="diagonal"`` restricts ``W`` to a diagonal (vector
    scaling on log-probabilities, ``2K`` parameters). Temperature scaling is the special
    case ``W = I / T``, ``b = 0`` (``ℓ`` and ``z`` differ by a per-row constant, which the
    softmax ignores), so the models are nested: full ⊇ diagonal ⊇ temperature scaling, and
    with ``λ = μ = ν -> ∞`` the fitted map *is* temperature scaling.

    Parameters
    ----------
    map : {"auto", "full", "diagonal"}, default="auto"
        Form of ``W``. ``"auto"`` is ``"full"`` up to 20 classes
        (:data:`AUTO_FULL_MAX_CLASSES`) and ``"diagonal"`` above: a full map has ``K(K+1)``
        parameters and costs ``n K^2`` per pass; the diagonal map stays cheap. Choose
        ``"full"`` explicitly for many classes when the data support it.
    reg_lambda : float or "cv", default="cv"
        ``λ >= 0``, weight of the mean squared off-diagonal entry of ``W`` (no effect on a
        diagonal map), and by default of the two other terms. ``"cv"`` chooses it by internal
        cross-validation (``cv`` folds, held-out NLL) over the powers of ten from ``1e6``
        (temperature scaling) down to ``1e-2`` (see Notes), then refits on all the data.
    reg_mu : float or None, default=None
        ``μ >= 0``, weight of the mean squared intercept. ``None`` uses ``λ`` (the fixed or the
        cross-validated one).
    reg_diag : float or None, default=None
        ``ν >= 0``, weight of the variance of ``W``'s diagonal (its spread around the mean
        scale: how far the map is from a temperature). ``None`` uses ``λ``; ``0`` gives the
        paper's ODIR exactly.
    cv : int, cross-validation splitter or iterable, default=5
        Folds for ``reg_lambda="cv"`` (ignored otherwise). An int assigns each row to a fold
        by its content (its logits and label), so that repeated rows and integer sample
        weights give the same folds; a scikit-learn splitter (e.g. ``StratifiedKFold(5)``) or
        an iterable of ``(train, test)`` index arrays is used as given.
    max_iter : int, default=100
        Maximum Newton steps of each fit.
    tol : float, default=1e-14
        Stop after the Newton step whose predicted decrease of the objective (half the Newton
        decrement) is at most ``tol (1 + |objective|)``; the default ends at the floating-point
        floor (see :func:`fit_dirichlet`).

    Attributes
    ----------
    coef_ : ndarray of shape (n_classes, n_classes) or (n_classes,)
        ``W`` (only its diagonal when ``map_ == "diagonal"``).
    intercept_ : ndarray of shape (n_classes,)
        ``b``.
    map_ : {"full", "diagonal"}
        The form of ``W`` fitted (``map`` with ``"auto"`` resolved).
    reg_lambda_ : float
        The ``λ`` of the fit: ``reg_lambda``, or the one chosen by cross-validation.
    cv_scores_ : dict of float to float
        With ``reg_lambda="cv"``: the pooled held-out NLL of each ``λ`` tried (empty when the
        data could not be split, or after :meth:`from_dict`).
    n_iter_ : int
        Newton steps of the final fit.
    classes_ : ndarray of shape (n_classes,)
        Class labels, one per logit column.
    n_features_in_ : int
        Number of logit columns seen in fit (1 for single-logit binary input).

    Warns
    -----
    ConvergenceWarning
        When the fit stops before converging (``max_iter`` reached, or a line search that finds
        no decrease above the rounding floor), and when the fitted map classifies every
        calibration sample correctly: the likelihood then has no finite maximiser along some
        direction unless the regularisation provides one, so without it the parameters grow
        until the optimiser stops and the probabilities approach 0 and 1. The parameters are
        always finite.

    Notes
    -----
    **Regularisation, chosen by cross-validation.** The three terms shrink the map towards
    temperature scaling: ODIR towards a diagonal map without intercept, the diagonal's spread
    towards a single scale. One strength for all three (the default) gives a path from
    temperature scaling (``λ = 1e6``) to an unregularised Dirichlet map (``λ -> 0``); with
    ``reg_lambda="cv"`` each of the ``cv`` folds walks it from the strongest end, warm-started,
    until its held-out NLL has not improved for two strengths in a row, and the strength with
    the lowest pooled held-out NLL wins (ties go to the stronger; see
    :mod:`precal.calibration._crossval`). So the default adapts to the calibration set: small
    or many-class sets get a map close to temperature scaling, large ones a free map. When the
    data cannot be split (no fold with held-out rows of positive weight), ``λ = 1e6`` is used.
    With an integer ``cv`` on large data the cross-validation runs on a subsample: at most
    ``max(2000, 2**21 / c)`` rows, ``c = K`` for a diagonal map and ``K (K + 1)`` for a full
    one (every row up to 209 715 rows at ``K = 10`` diagonal, 2 097 rows at ``K = 1000``),
    chosen by content so that identical rows are kept or dropped together, in the working
    precision of the final fit. The folds make 15 to 45 warm-started fits
    (five folds, three to nine strengths each; a fold stops at the last strength every earlier
    fold reached, as only those are pooled); on the subsample they cost less than the final
    fit, which always uses every row. A strength chosen on fewer rows is, if anything,
    stronger than all rows would choose (less data supports less freedom): the map errs
    towards temperature scaling. Repeated rows and integer weights give the same subsample
    as long as both data sets are on the same side of the bound.
    The paper's recipe, ODIR only with ``λ`` and ``μ`` searched over powers of ten, is
    ``reg_diag=0`` with a fixed ``reg_lambda`` in a grid search.

    **Fitting.** Newton's method with exact Hessians (dense up to 512 parameters, conjugate
    gradients on Hessian-vector products above), computed in torch on the logits' device over
    chunks of rows with float64 sums, starting from temperature scaling, so on the fitting
    data the objective is never above temperature scaling's. It converges to the
    floating-point floor: fits on weighted and on repeated rows agree to rounding. Each
    Newton step costs one pass over the rows for the gradient and curvature plus one per
    conjugate-gradient iteration. Along the cross-validation path each strength starts from
    the previous one's solution and reuses the derivatives computed there (no pass); the
    final fit starts from the folds' mean solution at the chosen strength, and the pass after
    its last step computes only the objective and the misclassified rows the warning below
    needs. Details in :func:`fit_dirichlet`; measured times in
    ``benchmarks/bench_dirichlet.py`` and ``benchmarks/bench_speed.py``.

    **Threads.** torch, OpenMP and BLAS run on one thread; on the CPU the chunks of rows of
    each pass are shared among precal's threads (its budget: :func:`precal.config_context`,
    the CPUs the process may use) by :func:`precal._threads.map_blocks`, the pool the
    temperature-scaling fit uses. A pass then has one synchronisation point instead of one
    barrier per torch operation (torch's own threads were several times slower than one
    thread on a busy machine, ``benchmarks/bench_speed.py``), a descheduled thread holds up
    only the chunk it is on, and the chunks' partial sums are added in chunk order: the fit
    gives the same bits on any number of threads (tested; BLAS stays on one thread for that
    too, as OpenBLAS's Cholesky of a few hundred parameters differs in the last bits between
    one and two threads). The budget counts the work of a pass, ``n P`` elements for a dense
    Hessian (``P`` parameters) and ``n K`` otherwise: below ``2**19`` of it
    (:data:`precal._threads.MIN_PARALLEL_ELEMENTS`), or with a single chunk of ``2**19``
    elements, a fit runs on one thread.

    **Identifiability.** ``W + 1 v^T`` and ``b + c 1`` give the same probabilities; the
    fitted ``coef_`` and ``intercept_`` are the representative with zero-mean off-diagonal
    entries in each column of ``W`` (the smallest ODIR) and zero-mean ``b``, also when the
    regularisation is zero. The calibrated map is invariant to adding a constant to every
    logit of a sample.

    **Normalisation.** The penalty uses means (``1/(K(K-1))`` and ``1/K``) as in the paper,
    so one ``λ`` means the same for any ``K``; dirichletcal's default (``reg_norm=False``)
    uses plain sums.

    References
    ----------
    M. Kull, M. Perello-Nieto, M. Kängsepp, T. Silva Filho, H. Song, P. Flach. "Beyond
    temperature scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet
    calibration". NeurIPS 2019. arXiv:1910.12656.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration.dirichlet import DirichletCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=1000)
    >>> logits = 3.0 * (np.eye(3)[y] + rng.normal(size=(1000, 3)))  # over-confident
    >>> cal = DirichletCalibrator().fit(logits, y)
    >>> cal.map_, cal.coef_.shape
    ('full', (3, 3))
    >>> cal.predict_proba(logits).sum(axis=1)[:3]
    array([1., 1., 1.])
    """

    _state_keys = ("coef_", "intercept_", "n_iter_", "reg_lambda_")
    _device_native = True
    _fits_dask = True

    def __init__(
        self,
        *,
        map: str = "auto",  # noqa: A002 - the parameter name DESIGN.md fixes
        reg_lambda: float | str = "cv",
        reg_mu: float | None = None,
        reg_diag: float | None = None,
        cv: Any = 5,
        max_iter: int = 100,
        tol: float = 1e-14,
    ) -> None:
        self.map = map
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.reg_diag = reg_diag
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        if not isinstance(self.map, str) or self.map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}, got {self.map!r}.")
        check_strengths(self, ("reg_lambda", "reg_mu", "reg_diag"))
        check_cv(self.cv)
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _resolve_map(self, n_classes: int) -> str:
        return resolve_map(self.map, n_classes)

    def _fit_work(self, X: Any) -> int | None:
        return fit_work(X, self.map)

    def _strengths(self, reg_lambda: float) -> tuple[float, float, float]:
        """``(λ, μ, ν)`` for a given ``λ``: ``reg_mu`` and ``reg_diag`` default to it."""
        reg_mu = reg_lambda if self.reg_mu is None else float(self.reg_mu)
        reg_diag = reg_lambda if self.reg_diag is None else float(self.reg_diag)
        return reg_lambda, reg_mu, reg_diag

    def _fit(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        resolved = self._resolve_map(logits.shape[1])
        diagonal = resolved == "diagonal"
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        weights = None if sample_weight is None else sample_weight / sample_weight.sum()
        opts = {"max_iter": int(self.max_iter), "tol": float(self.tol)}
        # torch and BLAS on one thread; the chunks of each pass shared among precal's threads (see Notes)
        with thread_limits(_pass_elements(*z.shape, diagonal), torch_threads=1, blas_threads=1) as n_threads:
            init, scores, magnitude = None, {}, logit_magnitude(z)
            if isinstance(self.reg_lambda, str):  # "cv"
                reg_lambda, init, scores = self._cross_validate(z, y_idx, weights, diagonal, opts, magnitude,
                                                                n_threads)
            else:
                reg_lambda = float(self.reg_lambda)
            problem = _Problem(z, y_idx, weights, diagonal=diagonal, magnitude=magnitude, n_threads=n_threads)
            result = _fit_problem(problem, *self._strengths(reg_lambda), init=init, **opts)
        self._store(result, resolved, reg_lambda, scores)

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Fit on a dask array with a fixed ``reg_lambda``: every pass of the Newton solver is one
        dask computation in which each chunk runs the in-memory data term on its rows (see
        :func:`precal._dask.dirichlet_problem`). ``reg_lambda="cv"`` is refused (its folds are
        subsets of rows that the fit would have to gather)."""
        from .._dask import DaskLogits, dirichlet_problem

        self._validate_hyperparameters()
        if isinstance(self.reg_lambda, str):
            raise ValueError(
                "DirichletCalibrator(reg_lambda='cv') does not fit Dask arrays: its internal cross-validation "
                "refits on subsets of the rows. Pass a fixed reg_lambda (e.g. the reg_lambda_ that "
                "DirichletCalibrator() chooses on an in-memory sample such as X[:100_000].compute()), or fit "
                "reg_lambda='cv' on computed arrays."
            )
        data = DaskLogits.validated(X, y, sample_weight, owner="DirichletCalibrator")
        self.classes_, self.n_features_in_ = data.classes, data.n_features_in
        resolved = self._resolve_map(data.shape[1])
        reg_lambda = float(self.reg_lambda)
        with thread_limits(0):  # as the in-memory fit
            problem = dirichlet_problem(data, diagonal=resolved == "diagonal")
            result = _fit_problem(problem, *self._strengths(reg_lambda), init=None, max_iter=int(self.max_iter),
                                  tol=float(self.tol))
        self._store(result, resolved, reg_lambda, {})

    def _store(self, result: DirichletFit, resolved: str, reg_lambda: float, scores: dict) -> None:
        """Warn about a fit that did not converge or separates the data; set the fitted attributes."""
        if not result.converged:
            warnings.warn(
                f"DirichletCalibrator: the Newton iteration stopped before converging after {result.n_iter} steps "
                f"(max_iter={self.max_iter}; {result.message}); keeping the last iterate. Increase max_iter "
                "or the regularisation (reg_lambda, reg_mu, reg_diag).",
                ConvergenceWarning,
                stacklevel=5,
            )
        if result.n_errors == 0:
            warnings.warn(
                "DirichletCalibrator: the fitted map classifies every calibration sample correctly, so the "
                "likelihood has no finite maximiser along some direction: unless the regularisation holds them, "
                "the parameters grow until the optimiser stops and the probabilities approach 0 and 1 "
                "(over-fitted). Use more calibration data, map='diagonal', or larger reg_lambda/reg_mu.",
                ConvergenceWarning,
                stacklevel=5,
            )
        self.coef_ = result.coef
        self.intercept_ = result.intercept
        self.map_ = resolved
        self.n_iter_ = result.n_iter
        self.reg_lambda_ = float(reg_lambda)
        self.cv_scores_ = scores

    def _cross_validate(self, z: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor | None, diagonal: bool,
                        opts: dict[str, Any], magnitude: float, n_threads: int = 1
                        ) -> tuple[float, tuple[np.ndarray, np.ndarray] | None, dict]:
        """``λ`` chosen by cross-validated NLL, a warm start for the final fit, and the scores
        (``magnitude``: ``max(max |z|, 1)``; ``n_threads``: threads per pass of each fold's fits)."""

        def weight_of(rows: torch.Tensor) -> float:
            return float(len(rows)) if weights is None else float(weights[rows].sum())

        k = z.shape[1]
        max_rows = max(_CV_MIN_ROWS, _CV_MAX_WORK // (k if diagonal else k * (k + 1)))
        pairs = cv_splits(self.cv, z, y_idx, max_rows=max_rows)
        splits = [(tr, te) for tr, te in pairs if weight_of(tr) > 0 and weight_of(te) > 0]

        # the folds of a subsample run in the precision of the final fit on all rows
        dtype = working_dtype(z.shape[0], k, z.dtype, magnitude)

        def make_fold(train: torch.Tensor) -> _Problem:
            w = None if weights is None else weights[train] / weights[train].sum()
            return _Problem(z[train], y_idx[train], w, diagonal=diagonal, dtype=dtype, n_threads=n_threads)

        def fit(fold: _Problem, reg_lambda: float, warm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            theta0 = fold.start() if warm is None else warm[0]
            theta = fold.solve(theta0, *self._strengths(reg_lambda), **opts).theta
            return (theta, *fold.to_original(theta))

        held_out: dict[int, torch.Tensor | None] = {}  # a fold's held-out log-probabilities, computed once

        def score(fold: _Problem, state: Any, test: torch.Tensor) -> tuple[float, float]:
            if id(test) not in held_out:
                small = len(test) * k <= _CV_MAX_WORK
                held_out[id(test)] = softmax_rows(z[test].to(torch.float64), log=True) if small else None
            return _heldout_nll(z, y_idx, weights, state[1], state[2], test, held_out[id(test)])

        path = cross_validated_path(REG_GRID, splits, make_fold, fit, score)
        if path is None:
            return REG_GRID[0], None, {}
        init = (np.mean([s[1] for s in path.states], axis=0), np.mean([s[2] for s in path.states], axis=0))
        return path.best, init, dict(path.scores)

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        lp = log_softmax(logits)  # float64, on the logits' device
        coef = torch.from_numpy(self.coef_).to(lp.device)
        intercept = torch.from_numpy(self.intercept_).to(lp.device)
        if coef.dim() == 1:
            return lp * coef + intercept
        return lp @ coef.T + intercept

    def _torch_map(self) -> torch.nn.Module:
        return _DirichletMap(self.coef_, self.intercept_)

    def _set_state(self, state: dict[str, Any]) -> None:
        """Load ``coef_`` (nested lists for a full map), ``intercept_``, ``n_iter_`` and ``reg_lambda_``;
        the map form follows from ``coef_``'s shape. Shapes and values are checked before anything is set."""
        k = len(self.classes_)
        check_state_keys(state, self._state_keys, "DirichletCalibrator")
        arrays = {}
        for key in ("coef_", "intercept_"):
            arrays[key] = state_array(state, key)
        if arrays["coef_"].shape not in ((k, k), (k,)):
            raise ValueError(
                f"Calibrator state 'coef_' must be a {k} x {k} nested list (full map) or a list of {k} numbers "
                f"(diagonal map) for {k} classes, got shape {arrays['coef_'].shape}."
            )
        form = "diagonal" if arrays["coef_"].ndim == 1 else "full"
        if form != resolve_map(self.map, k):  # the map a fit with these parameters gives
            raise ValueError(f"Calibrator state 'coef_' is a {form} map, but map={self.map!r} fits a "
                             f"{resolve_map(self.map, k)} one for {k} classes.")
        if arrays["intercept_"].shape != (k,):
            raise ValueError(
                f"Calibrator state 'intercept_' must be a list of {k} numbers, got shape {arrays['intercept_'].shape}."
            )
        n_iter = state_count(state, "n_iter_")
        reg = state["reg_lambda_"]
        if isinstance(reg, bool) or not isinstance(reg, numbers.Real) or not (math.isfinite(reg) and reg >= 0):
            raise ValueError(f"Calibrator state 'reg_lambda_' must be a finite number >= 0, got {reg!r}.")
        self.coef_ = arrays["coef_"]
        self.intercept_ = arrays["intercept_"]
        self.n_iter_ = n_iter
        self.reg_lambda_ = float(reg)
        self.cv_scores_ = {}
        self.map_ = "diagonal" if self.coef_.ndim == 1 else "full"

r"""Fuzzy-gated Dirichlet calibration trained under emulated INT4 noise (seed 003).

With ``ℓ = log_softmax(z)`` and ``c = max softmax(z)`` the classifier's top confidence,
``R`` Gaussian membership functions over ``c`` gate ``R`` Dirichlet maps:

.. math::

    \mu_r(c) = \exp\!\Big(-\frac{(c - m_r)^2}{2\sigma_r^2}\Big), \quad
    w_r = \frac{\mu_r}{\sum_s \mu_s}, \quad
    q(z) = \operatorname{softmax}\Big(\sum_r w_r(c)\,(W_r \ell + b_r)\Big).

See :class:`FuzzyDirichletCalibrator`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from .._numerics import log_softmax, matmul, row_sums, softmax_rows
from .._threads import map_blocks_in_waves, thread_budget, thread_limits
from .._validation import check_number
from ._base import BaseLogitCalibrator, check_state_keys, state_array, state_count
from ._crossval import _better, check_cv, cv_splits
from .dirichlet import (
    MAPS,
    DirichletCalibrator,
    check_strengths,
    fit_dirichlet,
    fit_shape,
    fit_work,
    logit_magnitude,
    resolve_map,
    working_dtype,
)

__all__ = [
    "FuzzyDirichletCalibrator",
    "NOISES",
    "LOSSES",
    "int4_noise_copies",
    "fuzzy_objective",
    "soft_ece",
]

NOISES = (None, "int4")
LOSSES = ("nll", "nll+soft_ece")

#: Soft-ECE: number of Gaussian bins over [0, 1] and the smoothing of ``|acc - conf|``.
SOFT_ECE_BINS = 15
_SOFT_ABS_DELTA = 1e-3

#: Largest membership width (see :func:`_split`).
_MAX_WIDTH = 2.0

#: Elements of the per-region logits tensor per chunk of the objective (bounds the memory of a pass).
_CHUNK_ELEMENTS = 2**22

#: Rows of the stage-2 data term per block (about this many elements of each ``(rows, K)`` work
#: array): the unit of work that precal's threads share in each evaluation (see
#: :meth:`_GateFit.fit`). On wrn-16-4_cifar100 at 5 000 x 100 the fit took 6.2-7.1 s with 2**17
#: or 2**18 (two threads), 15 s with one chunk on torch's threads (measured before the data term's
#: CPU products moved to numpy's BLAS; 4.8-5.4 s since).
_BLOCK_ELEMENTS = 2**18

#: Stage 2 is preconditioned (see :meth:`_GateFit.preconditioner`) up to this many parameters: the
#: dense penalty Hessian and its Cholesky factor cost one to two seconds at the cap (once per stage-2
#: fit; the factor alone 0.75 s on the one thread stage 2 runs torch on, 0.4 s on two), far less
#: than the hundreds of extra L-BFGS iterations they save there.
_PRECONDITION_MAX_PARAMS = 4096

#: ``sqrt(eps)`` of float32: the gradient (in the preconditioned coordinates) at which a line search of a
#: float32 stage 2 may end on the data term's rounding rather than short of the minimum.
_FLOAT32_FLOOR = math.sqrt(float(torch.finfo(torch.float32).eps))

#: Up to this many parameters stage 2 evaluates its penalty as ``½ θᵀ P θ`` (a dense product with the
#: penalty's Hessian, kept for the fit); above, by autograd of :func:`_penalty`. One thread, per evaluation:
#: 0.07 ms against 0.21 ms by autograd at 806 parameters (100 classes, diagonal maps), 4.6 ms against
#: 0.32 ms near 4 000 (P is dense, its cost grows with the square).
_QUADRATIC_PENALTY_MAX_PARAMS = 1024

_DEFAULT_NAMES = {
    1: ("all",),
    2: ("low", "high"),
    3: ("low", "moderate", "high"),
    5: ("very low", "low", "moderate", "high", "very high"),
}


# --------------------------------------------------------------------------- noise
def int4_noise_copies(logits: torch.Tensor, n_copies: int, generator: torch.Generator) -> torch.Tensor:
    r"""``n_copies`` INT4-quantized versions of ``(n, K)`` logits, shape ``(n_copies, n, K)``.

    Copy 0 is exactly what a deployment with per-row symmetric INT4 logits gives,
    ``Q(z)`` (:func:`precal.emulate.quantize` with ``axis=0``). Copy ``j >= 1`` shifts the
    quantization grid by a random sub-step offset: with ``s(z) = max|z| / 7`` the row's INT4
    step and ``u_j ~ U(-1/2, 1/2)^K`` drawn once per copy from ``generator``,

    .. math::  \tilde z_j = Q(z + u_j \odot s(z)) - u_j \odot s(z),

    so each copy rounds every logit to a differently placed grid of the same step (a
    subtractive dither): the rounding errors differ between copies but keep the size INT4
    gives. The offsets are shared by all rows of a copy, so a copy is a fixed function of
    the row: repeating a row and weighting it give the same training data. The offsets are
    drawn on the CPU ``generator`` and moved to the logits' device, so a CUDA fit sees the
    same copies as a CPU one.
    """
    from ..emulate import quantize

    z = logits.to(torch.float64)
    k = z.shape[1]
    step = z.abs().amax(dim=1, keepdim=True) / 7.0
    copies = []
    for j in range(n_copies):
        cpu = {"dtype": torch.float64, "device": "cpu"}  # the generator's device
        u = torch.zeros(k, **cpu) if j == 0 else torch.rand(k, generator=generator, **cpu)
        offset = (u - 0.5 if j else u).to(z.device) * step
        copies.append(quantize(z + offset, "int4", axis=0).to(torch.float64) - offset)
    return torch.stack(copies) if copies else z.new_empty((0,) + tuple(z.shape))


# --------------------------------------------------------------------------- the math
def _min_width(n_regions: int, n_classes: int) -> float:
    """Smallest membership width: a quarter of a region's share of the confidence range."""
    return (1.0 - 1.0 / n_classes) / (4.0 * n_regions)


def _split(theta: torch.Tensor, r: int, k: int, diagonal: bool) -> tuple[torch.Tensor, ...]:
    """``theta`` -> (centres, widths, shared W, shared b, deviations ΔW_r, deviations Δb_r).

    Layout: ``R`` centre parameters, ``R`` width parameters, the shared map ``(W, b)``, then
    the ``R`` deviations ``(ΔW_r, Δb_r)``; region ``r`` applies ``W + ΔW_r`` and ``b + Δb_r``.
    Centres ``m = 1/K + (1 - 1/K) sigmoid(a)`` stay inside the range ``[1/K, 1]`` of the top
    confidence, widths ``σ = σ_min + (2 - σ_min) sigmoid(s)`` between
    ``σ_min = (1 - 1/K) / (4R)``, so the gates stay fuzzy (without a floor, the fit sharpens
    them into hard bins), and 2, beyond which the gates are flat over ``[1/K, 1]`` anyway.
    """
    n_w = k if diagonal else k * k
    w_shape = (k,) if diagonal else (k, k)
    lo = 1.0 / k
    centers = lo + (1.0 - lo) * torch.sigmoid(theta[:r])
    sigma_min = _min_width(r, k)
    widths = sigma_min + (_MAX_WIDTH - sigma_min) * torch.sigmoid(theta[r : 2 * r])
    at = 2 * r
    shared_w = theta[at : at + n_w].reshape(w_shape)
    shared_b = theta[at + n_w : at + n_w + k]
    at += n_w + k
    dev_w = theta[at : at + r * n_w].reshape((r, *w_shape))
    dev_b = theta[at + r * n_w : at + r * n_w + r * k].reshape(r, k)
    return centers, widths, shared_w, shared_b, dev_w, dev_b


def _stage_two_work(rows: int, k: int, r: int, diagonal: bool) -> int:
    """Elements of work of one evaluation of the stage-2 data term on ``rows`` rows (all versions):
    mixing the regions' maps costs ``R K²`` products per row for full maps, ``R K`` for diagonal ones."""
    return rows * r * (k if diagonal else k * k)


def _n_theta(r: int, k: int, diagonal: bool) -> int:
    """Length of the parameter vector of :func:`_split`."""
    return 2 * r + (r + 1) * ((k if diagonal else k * k) + k)


def _unpack(theta: torch.Tensor, r: int, k: int, diagonal: bool) -> tuple[torch.Tensor, ...]:
    """``theta`` -> (centres, widths, per-region coefficients ``W + ΔW_r``, intercepts ``b + Δb_r``)."""
    centers, widths, shared_w, shared_b, dev_w, dev_b = _split(theta, r, k, diagonal)
    return centers, widths, shared_w + dev_w, shared_b + dev_b


def _gates(conf: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Normalised memberships ``w_r`` (rows sum to 1), computed in log space (no 0/0).

    Without a gradient to record, ``(n, R)`` memberships take :func:`~precal._numerics.softmax_rows`
    (a softmax over ``R`` columns is a per-row loop in torch)."""
    log_mu = -(conf[..., None] - centers).square() / (2.0 * widths.square())
    if log_mu.dim() == 2 and not log_mu.requires_grad:
        return softmax_rows(log_mu)
    return torch.softmax(log_mu, dim=-1)


def _mixed_logits(lp: torch.Tensor, gates: torch.Tensor, coefs: torch.Tensor, intercepts: torch.Tensor) -> torch.Tensor:
    """``Σ_r w_r (W_r ℓ + b_r)`` for ``lp`` of shape ``(..., K)`` and ``gates`` ``(..., R)``.

    Written as matrix products, which torch runs far faster than broadcasts over the small
    trailing axes: diagonal maps give ``ℓ ⊙ (w W) + w B``; full maps give ``φ Ŵ + w B`` with
    ``φ = w ⊗ ℓ`` of shape ``(..., R K)`` and ``Ŵ`` the ``W_r^T`` stacked.
    """
    mixed_b = gates @ intercepts
    if coefs.dim() == 2:  # diagonal maps, (R, K)
        return lp * (gates @ coefs) + mixed_b
    r, k = coefs.shape[0], coefs.shape[-1]
    phi = (gates[..., :, None] * lp[..., None, :]).reshape(*lp.shape[:-1], r * k)
    return phi @ coefs.transpose(-1, -2).reshape(r * k, k) + mixed_b


def soft_ece(
    probs: torch.Tensor, pred: torch.Tensor, correct: torch.Tensor, weights: torch.Tensor, n_bins: int = SOFT_ECE_BINS
) -> torch.Tensor:
    r"""Differentiable top-label ECE: Gaussian soft binning of the confidence.

    The confidence of sample ``i`` is the calibrated probability ``c_i = q_{i, pred_i}`` of
    its predicted class ``pred_i`` and ``correct_i`` its 0/1 correctness; both are given, not
    recomputed from ``q``, so the term is smooth in the parameters (an argmax that moves
    would make it jump and stall L-BFGS' line search). :class:`FuzzyDirichletCalibrator`
    passes the classifier's own predictions, which the calibrated maps keep almost
    everywhere. ``c_i`` belongs to bin ``b`` (centre ``t_b = (b + 1/2)/B``) with weight
    ``a_ib = softmax_b(-(c_i - t_b)^2 / (2h^2))``, ``h = 1/B``. With sample weights ``s_i``
    (summing to 1), bin mass ``n_b = Σ s_i a_ib``, ``acc_b`` and ``conf_b`` the
    ``a``-weighted means of ``correct`` and ``c``, the value is ``Σ_b n_b ρ(acc_b - conf_b)``
    with ``ρ(x) = sqrt(x² + δ²) - δ``, ``δ = 10⁻³``, a smooth ``|x|``.
    """
    conf = probs.gather(-1, pred[:, None])[:, 0]
    centres = (torch.arange(n_bins, dtype=probs.dtype, device=probs.device) + 0.5) / n_bins
    a = torch.softmax(-(conf[:, None] - centres).square() * (n_bins**2 / 2.0), dim=-1)
    aw = a * weights[:, None]
    mass = aw.sum(dim=0)
    safe = mass.clamp_min(1e-300)
    acc = (aw * correct[:, None]).sum(dim=0) / safe
    cbin = (aw * conf[:, None]).sum(dim=0) / safe
    gap = acc - cbin
    return (mass * (torch.sqrt(gap.square() + _SOFT_ABS_DELTA**2) - _SOFT_ABS_DELTA)).sum()


def _data_term(
    theta: torch.Tensor, lp: torch.Tensor, conf: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor,
    *, n_regions: int, diagonal: bool,
) -> torch.Tensor:
    """Weighted NLL summed over rows, averaged over the ``C`` versions (rows may be a chunk)."""
    k = lp.shape[-1]
    centers, widths, coefs, intercepts = _unpack(theta, n_regions, k, diagonal)
    out = _mixed_logits(lp, _gates(conf, centers, widths), coefs, intercepts)
    logq = torch.log_softmax(out, dim=-1)
    nll = -logq.gather(-1, y_idx.expand(lp.shape[0], -1)[..., None])[..., 0]  # (C, rows)
    return (nll * weights).sum(dim=-1).mean()


def _data_term_grad(
    params: tuple[torch.Tensor, ...], lp: torch.Tensor, conf: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor,
) -> tuple[float, list[torch.Tensor]]:
    r""":func:`_data_term` and its gradient in the maps' parameters, in closed form (no autograd graph).

    The rows are flat: ``lp`` ``(N, K)``, ``conf``, ``y_idx`` and ``weights`` ``(N,)`` hold every
    version's rows one after another, each weight already divided by the number of versions
    ``C`` (so the value is the mean over versions of the weighted NLL sums). ``params`` are
    ``(centres, widths, coefs, intercepts)`` as :func:`_unpack` gives them. With
    ``o = Σ_r w_r (W_r ℓ + b_r)``, ``q = softmax(o)`` and ``E_i = s_i (q_i - e_{y_i})`` the
    derivative of the value in ``o_i``: ``∂/∂W_r = Σ_i w_ir E_i ℓ_i^T`` (``Σ_i w_ir E_i ⊙ ℓ_i``
    for a diagonal map), ``∂/∂b_r = Σ_i w_ir E_i``, ``∂/∂w_ir = E_i · (W_r ℓ_i + b_r)``, then
    through the gates' softmax to ``log μ_ir = -(c_i - m_r)² / (2σ_r²)`` and on to ``m_r`` and
    ``σ_r``. A few sweeps over the ``(N, K)`` block, several times cheaper than autograd's
    recorded graph; tests check it against autograd of :func:`_data_term`.
    """
    centers, widths, coefs, intercepts = params
    k = lp.shape[1]
    r = centers.shape[0]
    # matrix products through numpy's BLAS on the CPU (precal._numerics.matmul)
    gates = _gates(conf, centers, widths)  # (N, R)
    diagonal = coefs.dim() == 2
    if diagonal:
        out = torch.addcmul(matmul(gates, intercepts), lp, matmul(gates, coefs))
    else:
        phi = (gates[:, :, None] * lp[:, None, :]).reshape(-1, r * k)
        w_hat = coefs.transpose(-1, -2).reshape(r * k, k)  # rows (r, j): W_r[:, j]
        out = matmul(phi, w_hat).add_(matmul(gates, intercepts))
    log_q = softmax_rows(out, log=True)  # log q = o - log Σ exp(o), short rows shifted as a block
    del out
    y_col = y_idx[:, None]
    value = -float((log_q.gather(1, y_col)[:, 0].to(torch.float64) * weights.to(torch.float64)).sum())
    err = log_q.exp_()  # q, then E = s (q - e_y) in place
    err.scatter_add_(1, y_col, err.new_full((err.shape[0], 1), -1.0))
    err.mul_(weights[:, None])
    g_int = gates.T @ err  # (R, K)
    if diagonal:
        err_lp = err * lp
        g_coef = gates.T @ err_lp  # (R, K)
        d_gates = matmul(err_lp, coefs.T).add_(matmul(err, intercepts.T))  # (N, R)
    else:
        g_coef = matmul(phi.T, err).reshape(r, k, k).transpose(-1, -2)  # (R, K, K): ∂/∂W_r[k, j]
        per_region = matmul(err, w_hat.T)  # Σ_k E_k W_r[k, j], (N, R K)
        per_region.view(-1, r, k).mul_(lp[:, None, :])  # times ℓ_j
        # Σ_j per region: a product with the (R K, R) block of ones
        d_gates = matmul(per_region, torch.block_diag(*[lp.new_ones(k, 1)] * r)).add_(matmul(err, intercepts.T))
    # the gates' softmax backward, then log μ_ir = -(c_i - m_r)^2 / (2 σ_r^2)
    d_log_mu = gates * (d_gates - row_sums(gates * d_gates)[:, None])
    diff = conf[:, None] - centers  # (N, R)
    inv_var = widths.square().reciprocal()
    g_centers = (d_log_mu * diff).sum(dim=0) * inv_var
    g_widths = (d_log_mu * diff.square()).sum(dim=0) * inv_var / widths
    return value, [g_centers, g_widths, g_coef, g_int]


def _soft_ece_term(
    theta: torch.Tensor, lp: torch.Tensor, conf: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor,
    *, n_regions: int, diagonal: bool,
) -> torch.Tensor:
    """:func:`soft_ece` of the calibrated probabilities, averaged over the ``C`` versions."""
    k = lp.shape[-1]
    centers, widths, coefs, intercepts = _unpack(theta, n_regions, k, diagonal)
    probs = torch.softmax(_mixed_logits(lp, _gates(conf, centers, widths), coefs, intercepts), dim=-1)
    pred = lp.argmax(dim=-1)  # the classifier's predictions (log-probabilities are monotone in z)
    correct = (pred == y_idx).to(probs.dtype)
    return torch.stack([soft_ece(probs[c], pred[c], correct[c], weights) for c in range(lp.shape[0])]).mean()


def _penalty(
    theta: torch.Tensor, k: int, *, n_regions: int, diagonal: bool, reg_lambda: float, reg_mu: float,
    reg_region: float, shift: torch.Tensor, scale: torch.Tensor, reg_diag: float = 0.0,
) -> torch.Tensor:
    """ODIR and the diagonal's spread on the shared map plus the deviation penalty, in original coordinates.

    The shared map's penalty is :func:`~precal.calibration.dirichlet.odir_penalty` with
    ``reg_diag`` (as :class:`DirichletCalibrator` applies it). Every term is evaluated at the
    equivalent maps with the smallest penalty (``W + 1 v^T`` and ``b + c 1`` give the same
    probabilities), so the objective is flat along the equivalences (exactly here, to rounding
    when stage 2 evaluates it as its quadratic form), as in
    :class:`DirichletCalibrator`; a diagonal ``W`` has no such equivalence, only ``b`` does.
    """
    _, _, shared_w, shared_b, dev_w, dev_b = _split(theta, n_regions, k, diagonal)

    def original(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # standardised features (ℓ - m)/s: W = W~ diag(1/s), b = b~ - W m
        w_o = w / scale
        return w_o, b - (w_o * shift if diagonal else w_o @ shift)

    w_o, b_o = original(shared_w, shared_b)
    value = (reg_mu / k) * (b_o - b_o.mean()).square().sum()
    if diagonal:
        diag = w_o
    elif k > 1:
        off_mask = 1.0 - torch.eye(k, dtype=theta.dtype, device=theta.device)
        off_sum = (w_o * off_mask).sum(dim=0, keepdim=True)  # per column
        canon = w_o - off_sum / (k - 1)  # the representative with zero-mean off-diagonal columns
        value = value + (reg_lambda / (k * (k - 1))) * (canon * off_mask).square().sum()
        diag = torch.diagonal(canon)
    else:
        diag = w_o.reshape(-1)
    if reg_diag:
        value = value + (reg_diag / k) * (diag - diag.mean()).square().sum()
    if reg_region:
        dw_o, db_o = original(dev_w, dev_b)
        if not diagonal:
            dw_o = dw_o - dw_o.mean(dim=-2, keepdim=True)  # column-centred: the smallest ‖ΔW_r + 1 v^T‖
        db_o = db_o - db_o.mean(dim=-1, keepdim=True)
        value = value + reg_region * (dw_o.square().sum() / dw_o[0].numel() + db_o.square().sum() / k)
    return value


def fuzzy_objective(
    theta: torch.Tensor,
    lp: torch.Tensor,
    conf: torch.Tensor,
    y_idx: torch.Tensor,
    weights: torch.Tensor,
    *,
    n_regions: int,
    diagonal: bool,
    reg_lambda: float,
    reg_mu: float,
    reg_region: float = 0.0,
    soft_ece_weight: float = 0.0,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    reg_diag: float = 0.0,
) -> torch.Tensor:
    r"""The training objective of :class:`FuzzyDirichletCalibrator` as a differentiable scalar.

    ``lp`` ``(C, n, K)`` holds the (standardised) log-probabilities of ``C`` versions of the
    data (the clean logits and the noisy copies), ``conf`` ``(C, n)`` their top
    confidences, ``weights`` ``(n,)`` sample weights summing to 1. With region ``r``'s map
    ``(W + ΔW_r, b + Δb_r)``, the value is

    .. math::

        \frac1C \sum_c \sum_i s_i\, \mathrm{NLL}_{ci}
        + \mathrm{ODIR}(W, b) + \frac{\nu}{K} \sum_j (w_{jj} - \bar w)^2
        + \rho \sum_r \Big(\frac{\lVert \Delta W_r \rVert_F^2}{\#W} + \frac{\lVert \Delta b_r \rVert^2}{K}\Big)

    plus ``soft_ece_weight`` times the mean :func:`soft_ece` over versions, with ODIR
    ``λ/(K(K-1)) Σ_{i≠j} W_ij² + μ/K Σ_j b_j²`` (Kull et al., 2019), ``ν = reg_diag`` the
    weight of the spread of the shared map's diagonal (as in :class:`DirichletCalibrator`) and
    ``ρ = reg_region``, all in original coordinates. ``theta`` is laid out as :func:`_split` says, in the
    coordinates of the standardised features ``(ℓ - shift) / scale``.
    """
    k = lp.shape[-1]
    if shift is None or scale is None:
        shift = torch.zeros(k, dtype=theta.dtype, device=theta.device)
        scale = torch.ones(k, dtype=theta.dtype, device=theta.device)
    value = _data_term(theta, lp, conf, y_idx, weights, n_regions=n_regions, diagonal=diagonal)
    if soft_ece_weight:
        value = value + soft_ece_weight * _soft_ece_term(
            theta, lp, conf, y_idx, weights, n_regions=n_regions, diagonal=diagonal
        )
    return value + _penalty(
        theta, k, n_regions=n_regions, diagonal=diagonal, reg_lambda=reg_lambda, reg_mu=reg_mu,
        reg_region=reg_region, shift=shift, scale=scale, reg_diag=reg_diag,
    )


def _weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, qs: np.ndarray) -> np.ndarray:
    """Inverted-CDF quantiles of a 1-D tensor on its device (so weights and repeated rows
    agree exactly); only the ``len(qs)`` results come back to the host."""
    v, order = torch.sort(values, stable=True)
    cum = torch.cumsum(weights[order], dim=0)
    targets = torch.as_tensor(qs, dtype=cum.dtype, device=cum.device) * cum[-1]
    idx = torch.searchsorted(cum, targets, side="left").clamp_(0, len(v) - 1)
    return v[idx].cpu().numpy()


def _gauss_newton_blocks(
    params: tuple[torch.Tensor, ...], lp: torch.Tensor, conf: torch.Tensor, weights: torch.Tensor,
) -> torch.Tensor:
    r"""Gauss-Newton curvature of the data term in each region's map, class by class, on flat rows as
    :func:`_data_term_grad`.

    Row ``k`` of region ``r``'s map acts on ``x_k = (ℓ_k, 1)`` for a diagonal map (``W_r[k]``,
    ``b_r[k]``) and ``x_k = (ℓ, 1)`` for a full one (``W_r[k, :]``, ``b_r[k]``); its block is

    .. math::  G_{rk} = \sum_i s_i\, w_{ir}^2\, q_{ik} (1 - q_{ik})\, x_{ik} x_{ik}^T,

    the Fisher information of that row when each region's map is taken alone and the softmax's
    coupling between classes (``-q_k q_l``) is left out. Returns ``(R, K, F + 1, F + 1)`` with
    ``F = 1`` (diagonal maps) or ``K`` (full maps).
    """
    centers, widths, coefs, intercepts = params
    gates = _gates(conf, centers, widths)
    q = softmax_rows(_mixed_logits(lp, gates, coefs, intercepts))
    v = q.mul_(1.0 - q).mul_(weights[:, None])  # s q (1 - q)
    g2 = gates.square()
    n, k = lp.shape
    if coefs.dim() == 2:  # x_k = (ℓ_k, 1): the three sums of each 2 x 2 block
        wb = g2.T @ (v * lp)
        blocks = torch.stack([g2.T @ (v * lp.square()), wb, wb, g2.T @ v], dim=-1)
        return blocks.reshape(g2.shape[1], k, 2, 2)
    ext = torch.cat([lp, lp.new_ones(n, 1)], dim=1)  # (N, K + 1)
    per_region = []
    for r in range(g2.shape[1]):
        scaled = (v * g2[:, r : r + 1])[:, :, None] * ext[:, None, :]  # (N, K, K + 1)
        per_region.append((scaled.reshape(n, -1).T @ ext).reshape(k, k + 1, k + 1))
    return torch.stack(per_region)


# --------------------------------------------------------------------------- stage 2
def _replicate(coef: np.ndarray, intercept: np.ndarray, r: int) -> tuple[np.ndarray, ...]:
    """``(centres, widths, coefs, intercepts)`` of ``r`` regions that all apply one map (any gates do)."""
    centers = (np.arange(r) + 0.5) / r
    return centers, np.ones(r), np.repeat(coef[None], r, axis=0), np.repeat(intercept[None], r, axis=0)


class _GateFit:
    """Stage 2: the gates and the per-region deviations by L-BFGS-B, from a stage-1 map.

    One instance holds the settings; :meth:`fit` runs on any rows (a fold or all of them) and
    :meth:`heldout_loss` scores fitted parameters on clean held-out rows, so stage 1 and stage 2
    are compared by the same loss.
    """

    def __init__(self, *, r: int, diagonal: bool, strengths: tuple[float, float, float], reg_region: float,
                 ece_weight: float, max_iter: int, tol: float) -> None:
        self.r, self.diagonal, self.strengths, self.reg_region = r, diagonal, strengths, reg_region
        self.ece_weight, self.max_iter, self.tol = ece_weight, max_iter, tol

    def fit(self, versions: torch.Tensor, yi: torch.Tensor, weights: torch.Tensor, w1: np.ndarray,
            b1: np.ndarray) -> tuple[tuple[np.ndarray, ...], int, str | None]:
        """Fitted ``(centres, widths, coefs, intercepts)`` in original coordinates, L-BFGS iterations, and
        why it stopped early (None when it converged). ``versions`` is ``(C, n, K)`` float64, clean first;
        ``weights`` sum to 1.

        torch, OpenMP and BLAS run on one thread throughout (so the fit does not depend on the
        thread count); the blocks of the data term go to precal's threads (:func:`_stage_two_work`).
        """
        n_versions, n, k = versions.shape
        on_cpu = versions.device.type == "cpu"
        n_threads = thread_budget(_stage_two_work(n_versions * n, k, self.r, self.diagonal)) if on_cpu else 1
        with thread_limits(0):
            return self._fit(versions, yi, weights, w1, b1, n_threads)

    def _fit(self, versions: torch.Tensor, yi: torch.Tensor, weights: torch.Tensor, w1: np.ndarray,
             b1: np.ndarray, n_threads: int) -> tuple[tuple[np.ndarray, ...], int, str | None]:
        r, diagonal = self.r, self.diagonal
        reg_lambda, reg_mu, reg_diag = self.strengths
        n_versions, n, k = versions.shape
        f64 = torch.float64
        device = versions.device
        lp = torch.log_softmax(versions, dim=-1)
        conf = lp.max(dim=-1).values.exp()
        shift = (weights[:, None] * lp[0]).sum(dim=0)  # weighted per-column standardisation (clean data)
        scale = ((weights[:, None] * (lp[0] - shift).square()).sum(dim=0)).sqrt()
        scale = torch.where(scale > 1e-12 * (1.0 + shift.abs()), scale, torch.ones_like(scale))
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all()):
            shift, scale = torch.zeros(k, dtype=f64, device=device), torch.ones(k, dtype=f64, device=device)
        lp_std = (lp - shift) / scale
        del lp

        centers0 = _weighted_quantiles(conf[0], weights, (np.arange(r) + 0.5) / r)
        lo = 1.0 / k
        if r > 1 and np.min(np.diff(centers0)) < 1e-3:
            centers0 = lo + (1.0 - lo) * (np.arange(r) + 0.5) / r
        spacing = (centers0[-1] - centers0[0]) / (r - 1) if r > 1 else float(conf[0].std(correction=0))
        sigma_min = _min_width(r, k)
        widths0 = np.full(r, min(max(spacing, 2.0 * sigma_min), 1.0))
        frac = np.clip((centers0 - lo) / (1.0 - lo), 1e-3, 1.0 - 1e-3)
        s, m = scale.cpu().numpy(), shift.cpu().numpy()
        n_w = k if diagonal else k * k
        theta0 = np.concatenate([
            np.log(frac / (1.0 - frac)),  # inverse of the sigmoids in _split
            np.log((widths0 - sigma_min) / (_MAX_WIDTH - widths0)),
            (w1 * s).ravel(),  # standardised coordinates: W~ = W diag(s), b~ = b + W m
            b1 + (w1 * m if diagonal else w1 @ m),
            np.zeros(r * (n_w + k)),
        ])

        # every version's rows one after another, each weight over C: the data term's rows (contiguous chunks)
        flat_lp, flat_conf = lp_std.reshape(-1, k), conf.reshape(-1)
        flat_y, flat_w = yi.repeat(n_versions), (weights / n_versions).repeat(n_versions)
        chunk = max(1, _CHUNK_ELEMENTS // (max(k, r) if diagonal else r * k * k))  # widest temporaries
        block = max(1, min(chunk, _BLOCK_ELEMENTS // max(k, r)))
        blocks = [slice(start, start + block) for start in range(0, flat_lp.shape[0], block)]
        # the data term in DirichletCalibrator's working dtype: float32 above 2**20 elements, with float64 sums
        # across blocks (and of the value across rows); the penalty, the soft-ECE term and the preconditioner stay
        # float64
        work = working_dtype(flat_lp.shape[0], k, f64, logit_magnitude(flat_lp))
        rows_lp, rows_conf, rows_w = (a.to(work) for a in (flat_lp, flat_conf, flat_w))
        opts = {"n_regions": r, "diagonal": diagonal}
        best = {"f": math.inf, "x": theta0.copy()}
        saw_nonfinite = [False]

        def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            theta = torch.tensor(x, dtype=f64, device=device, requires_grad=True)
            params = _unpack(theta, r, k, diagonal)
            detached = tuple(p.detach().to(work) for p in params)
            total, grads = 0.0, [torch.zeros_like(p, dtype=f64) for p in detached]

            def part(rows: slice) -> tuple[float, list[torch.Tensor]]:
                return _data_term_grad(detached, rows_lp[rows], rows_conf[rows], flat_y[rows], rows_w[rows])

            # the NLL is a sum over rows: block by block, the blocks shared among precal's threads
            # (single-threaded torch kernels), the sums in block order, a bounded wave of them at a time
            grad_bytes = 8 * sum(g.numel() for g in grads)
            for value, block_grads in map_blocks_in_waves(part, blocks, n_threads, grad_bytes):
                total += value
                for g, cg in zip(grads, block_grads):
                    g += cg
            torch.autograd.backward(params, grads)  # through _unpack to theta (parameter-sized)
            if self.ece_weight:
                term = self.ece_weight * _soft_ece_term(theta, lp_std, conf, yi, weights, **opts)
                term.backward()
                total += float(term.detach())
            if pen_hess is None:
                term = penalty_of(theta)
                term.backward()
                total += float(term.detach())
            grad = theta.grad.cpu().numpy()
            if pen_hess is not None:  # the penalty is ½ θᵀ P θ
                pen_grad = torch.mv(pen_hess, torch.from_numpy(x)).numpy()
                total += 0.5 * float(x @ pen_grad)
                grad = grad + pen_grad
            if not (math.isfinite(total) and np.isfinite(grad).all()):
                saw_nonfinite[0] = True
                return math.inf, np.zeros_like(x)
            if total < best["f"]:
                best["f"], best["x"] = total, x.copy()
            return total, grad

        def penalty_of(theta: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor] = (shift, scale)) -> torch.Tensor:
            return _penalty(theta, k, reg_lambda=reg_lambda, reg_mu=reg_mu, reg_region=self.reg_region,
                            shift=at[0], scale=at[1], reg_diag=reg_diag, **opts)

        # The penalty is a quadratic form in θ (squares of linear maps of θ, no constant): ½ θᵀ P θ with P its
        # Hessian. Up to _PRECONDITION_MAX_PARAMS parameters P is computed once, on the CPU (K numbers each of
        # shift and scale), for the preconditioner; up to _QUADRATIC_PENALTY_MAX_PARAMS it also gives the penalty
        # at every evaluation, elsewhere autograd does. Reverse over reverse: torch.func.hessian goes forward over
        # reverse, whose first use warns about torch.jit.
        pen_hess, factor = None, None
        if theta0.size <= _PRECONDITION_MAX_PARAMS:
            on_cpu = (shift.to("cpu"), scale.to("cpu"))
            hessian = torch.autograd.functional.hessian(
                lambda t: penalty_of(t, on_cpu), torch.tensor(theta0, dtype=f64, device="cpu"), vectorize=True)
            # from the float64 rows: float32 sums can leave M short of positive definite (a full map's Gram)
            factor = self.preconditioner(theta0, hessian, flat_lp, flat_conf, flat_w, chunk)
            pen_hess = hessian if theta0.size <= _QUADRATIC_PENALTY_MAX_PARAMS else None
            del hessian
        if factor is None:
            objective, start = value_and_grad, theta0
        else:  # θ = θ0 + L^-T u: in u the objective's Hessian is close to the identity
            def to_theta(u: np.ndarray) -> np.ndarray:
                step = torch.linalg.solve_triangular(factor.mT, torch.from_numpy(u)[:, None], upper=True)
                return theta0 + step[:, 0].numpy()

            def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
                value, grad = value_and_grad(to_theta(u))
                rhs = torch.from_numpy(grad)[:, None]
                return value, torch.linalg.solve_triangular(factor, rhs, upper=False)[:, 0].numpy()

            start = np.zeros_like(theta0)
        result = minimize(
            objective, start, jac=True, method="L-BFGS-B",
            options={"maxiter": self.max_iter, "maxfun": 4 * self.max_iter, "ftol": self.tol, "gtol": self.tol},
        )
        x = best["x"]
        g_inf = float(np.max(np.abs(result.jac))) if result.jac is not None else math.inf
        reason = None
        # a line search that ends at the rounding floor of a float32 data term (sqrt(eps), as DirichletCalibrator's
        # float32 polishing tolerance) has converged as far as that dtype can tell; the preconditioned coordinates
        # (where the Hessian is near the identity) are where that gradient reads as a distance to the minimum
        # (float64 fits keep the plain sqrt(tol) test)
        floor = _FLOAT32_FLOOR if factor is not None and work == torch.float32 else 0.0
        if saw_nonfinite[0]:
            reason = "the objective was not finite at a trial point"
        elif result.status == 1 or (result.status == 2 and g_inf > max(math.sqrt(self.tol), floor)):
            where = " in the preconditioned coordinates" if factor is not None else ""
            reason = f"{result.message} (largest gradient component{where} {g_inf:.2e})"
        centers, widths, coefs_std, ints_std = (v.numpy() for v in _unpack(torch.from_numpy(x), r, k, diagonal))
        coefs = coefs_std / s
        intercepts = ints_std - (coefs * m if diagonal else coefs @ m)
        return (centers, widths, coefs, intercepts), int(result.nit), reason

    def preconditioner(self, theta0: np.ndarray, penalty_hessian: torch.Tensor, lp: torch.Tensor, conf: torch.Tensor,
                       weights: torch.Tensor, chunk: int) -> torch.Tensor | None:
        r"""Lower Cholesky factor ``L`` of ``M = L L^T``, a fixed approximation of the objective's Hessian at ``θ0``.

        ``M`` is the penalty's Hessian (exact: the penalty is quadratic) plus the data term's
        Gauss-Newton curvature of each row of each region's map (:func:`_gauss_newton_blocks`: a
        row's coefficients with its intercept, so their coupling is in ``M``), carried to the
        shared map and the deviations (region ``r`` applies ``W + ΔW_r``), and, for the centres
        and widths (flat at the start, where every region applies one map), the median of that
        curvature's diagonal. The penalties are far stiffer than the data (the cross-validated
        ODIR strength of stage 1 is often 10⁴ or more) and tie the shared map to the deviations,
        so plain L-BFGS needed hundreds of iterations on real logits; in the coordinates
        ``u = L^T (θ - θ0)`` it needs tens. ``penalty_hessian`` is the penalty's Hessian (the
        caller's, which it computes only up to :data:`_PRECONDITION_MAX_PARAMS` parameters:
        beyond, L-BFGS runs on ``θ``, as it does when ``M`` is not finite or not positive definite,
        where this returns ``None``). Left out: the curvature between regions (``Σ_i s_i w_ir w_it ...``; the shared
        map's data curvature is underestimated by the factor ``Σ_r w_r²``, where the stiff
        penalties dominate anyway) and between the classes of the softmax. With the coefficient
        and intercept of a row coupled, stage 2 took 27-52 L-BFGS iterations on 5 000 CIFAR-100
        logits and 44-54 on CIFAR-10, where their diagonals alone took 61-78 and 56-70; adding
        the curvature between regions did not lower the counts further.
        """
        r, diagonal = self.r, self.diagonal
        cpu = torch.device("cpu")  # M is parameter-sized and built on the CPU, whatever the data's device
        hess = penalty_hessian.clone()
        theta = torch.tensor(theta0, dtype=torch.float64, device=lp.device)
        params = tuple(p.detach() for p in _unpack(theta, r, lp.shape[1], diagonal))
        blocks = sum(_gauss_newton_blocks(params, lp[start : start + chunk], conf[start : start + chunk],
                                          weights[start : start + chunk]) for start in range(0, lp.shape[0], chunk))
        blocks = blocks.to(cpu)  # (R, K, F + 1, F + 1)
        k = lp.shape[1]
        n_w = k if diagonal else k * k
        # where row k's (W[k, ...], b[k]) sit in a map laid out as (W, b): (K, F + 1) positions
        rows = torch.arange(k, device=cpu)[:, None]
        ids = torch.cat([rows if diagonal else rows * k + torch.arange(k, device=cpu), n_w + rows], dim=1)
        shared = torch.arange(2 * r, 2 * r + n_w + k, device=cpu)  # (W, b)
        diagonals = []
        for j in range(r):
            region = torch.cat([2 * r + n_w + k + j * n_w + torch.arange(n_w, device=cpu),  # ΔW_j
                                2 * r + (r + 1) * n_w + k + j * k + torch.arange(k, device=cpu)])  # Δb_j
            curv = torch.zeros(n_w + k, n_w + k, dtype=torch.float64, device=cpu)
            curv[ids[:, :, None], ids[:, None, :]] = blocks[j]
            diagonals.append(torch.diagonal(curv))
            for a in (shared, region):  # region j applies W + ΔW_j: its curvature in each pair of blocks
                for b in (shared, region):
                    hess[a[:, None], b[None, :]] += curv
        data = torch.cat(diagonals)
        positive = data[data > 0]
        gate = float(torch.quantile(positive, 0.5)) if positive.numel() else 1.0  # the median
        gates = torch.arange(2 * r, device=cpu)
        hess[gates, gates] += gate
        hess.diagonal().add_(1e-10 * float(hess.diagonal().abs().mean()) + 1e-300)
        if not bool(torch.isfinite(hess).all()):  # e.g. log-probabilities whose squares overflow
            return None
        factor, info = torch.linalg.cholesky_ex(hess)
        return factor if int(info) == 0 else None

    def heldout_loss(self, z: torch.Tensor, yi: torch.Tensor, weights: torch.Tensor,
                     params: tuple[np.ndarray, ...]) -> float:
        """The training loss without penalties (weighted mean NLL, plus the soft-ECE term when it is part of
        the loss) of fitted parameters on clean rows ``z``; ``weights`` sum to 1."""
        lp = log_softmax(z)
        centers, widths, coefs, intercepts = (torch.from_numpy(np.asarray(a, np.float64)).to(lp.device)
                                              for a in params)
        out = _mixed_logits(lp, _gates(lp.amax(dim=1).exp(), centers, widths), coefs, intercepts)
        logq = torch.log_softmax(out, dim=-1)
        value = float(-(logq.gather(-1, yi[:, None])[:, 0] * weights).sum())
        if self.ece_weight:
            pred = lp.argmax(dim=-1)
            value += self.ece_weight * float(soft_ece(logq.exp(), pred, (pred == yi).to(lp.dtype), weights))
        return value


# --------------------------------------------------------------------------- torch module
class _FuzzyDirichletMap(torch.nn.Module):
    def __init__(self, centers: np.ndarray, widths: np.ndarray, coefs: np.ndarray, intercepts: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.float32))
        self.register_buffer("coefs", torch.tensor(coefs, dtype=torch.float32))
        self.register_buffer("intercepts", torch.tensor(intercepts, dtype=torch.float32))
        self.diagonal = coefs.ndim == 2

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits if logits.dtype == torch.float64 else logits.float()
        lp = torch.log_softmax(z, dim=-1)
        conf = lp.max(dim=-1).values.exp()
        centers, widths = self.centers.to(z.dtype), self.widths.to(z.dtype)
        coefs, intercepts = self.coefs.to(z.dtype), self.intercepts.to(z.dtype)
        log_mu = -(conf.unsqueeze(-1) - centers).square() / (2.0 * widths.square())
        gates = torch.softmax(log_mu, dim=-1)
        if self.diagonal:
            per_region = lp.unsqueeze(-2) * coefs + intercepts
        else:
            per_region = torch.einsum("...k,rjk->...rj", lp, coefs) + intercepts
        out = (gates.unsqueeze(-1) * per_region).sum(dim=-2)
        return out.to(logits.dtype)


# --------------------------------------------------------------------------- the estimator
class FuzzyDirichletCalibrator(BaseLogitCalibrator):
    r"""Confidence-gated Dirichlet calibration, trained to survive INT4 quantization.

    With ``ℓ = log_softmax(z)`` and ``c = max softmax(z)`` (the classifier's top
    confidence), ``R`` fuzzy regions over ``c`` with Gaussian memberships
    ``μ_r(c) = exp(-(c - m_r)² / (2σ_r²))`` (learnable centres ``m_r`` and widths ``σ_r``)
    give weights ``w_r = μ_r / Σ_s μ_s``; each region has a Dirichlet map
    ``g_r(ℓ) = W_r ℓ + b_r`` (Kull et al., 2019), and

    .. math::  q(z) = \operatorname{softmax}\Big(\sum_r w_r(c)\, g_r(\ell)\Big).

    A prediction can belong partly to several regions, so the correction changes smoothly
    with the confidence (e.g. over-confident at the top, under-confident in the middle).

    **Never worse than Dirichlet calibration, by construction.** The fit starts from
    :class:`DirichletCalibrator` itself (stage 1: its map and its cross-validated ODIR
    strength, on the clean logits) and keeps the gated maps (stage 2, trained with the noisy
    copies) only when they beat that map on the held-out rows of *every* one of the ``cv``
    folds; otherwise every region applies the stage-1 map, and the calibrator *is*
    ``DirichletCalibrator(map=..., cv=cv)``. With ``n_regions=1``, ``noise=None`` and the
    NLL loss stage 2 is skipped.

    Parameters
    ----------
    n_regions : int, default=3
        Number of fuzzy regions ``R >= 1``.
    map : {"auto", "full", "diagonal"}, default="auto"
        Form of every ``W_r``, as in :class:`DirichletCalibrator` (``"auto"``: full up to 20
        classes, diagonal above).
    noise : {"int4", None} or callable, default="int4"
        ``"int4"``: the stage-2 objective also averages over ``n_noise_copies`` copies of the
        logits passed through emulated per-row INT4 fake quantization (see
        :func:`int4_noise_copies`: copy 0 is plain INT4 rounding, the others shift the grid
        by a random sub-step offset so they differ). ``None``: clean logits only. A callable
        ``f(logits, generator) -> noisy_logits`` (float64 ``(n, K)`` tensor and a seeded
        ``torch.Generator``) makes each copy instead; it is given the logits on their
        device, and its output is moved there. Stage 1 (Dirichlet) and the held-out check
        use the clean logits only: the noisy copies are part of the gated candidate, which is
        kept only if it is better on the data given.
    n_noise_copies : int, default=2
        Noisy copies per fit (ignored when ``noise=None``). The copies are drawn once, from
        ``random_state``, and fixed for the whole fit, so the objective is deterministic
        and L-BFGS applies; the clean logits always take part as well.
    loss : {"nll", "nll+soft_ece"}, default="nll"
        Mean NLL, or NLL plus ``soft_ece_weight`` times a differentiable top-label ECE
        (:func:`soft_ece`: Gaussian soft binning of the calibrated confidence into 15 bins,
        smoothed absolute gaps).
    region_names : sequence of str or None, default=None
        One name per region, lowest centre first. ``None``: ``("low", "moderate", "high")``
        for 3 regions, ``("low", "high")`` for 2, ``("all",)`` for 1, five names from
        ``"very low"`` to ``"very high"`` for 5, ``"region 1"``, ... otherwise.
    reg_lambda : float or "cv", default="cv"
        ODIR strength of the shared map, passed to :class:`DirichletCalibrator` (stage 1):
        ``"cv"`` chooses it there by internal cross-validation (``cv`` folds, held-out NLL,
        powers of ten from ``1e6``, temperature scaling, to ``1e-2``); stage 2 keeps the
        chosen ``λ`` (``reg_lambda_``) for the shared map.
    reg_mu : float or None, default=None
        ODIR weight of the mean squared intercept of the shared map; ``None`` uses ``λ``.
    reg_diag : float or None, default=None
        Weight of the spread of the shared map's diagonal, as in :class:`DirichletCalibrator`;
        ``None`` uses ``λ``.
    reg_region : float, default=10.0
        ``ρ >= 0``, weight of the mean squared entry of each region's deviation
        ``(ΔW_r, Δb_r)`` from the shared map in stage 2 (see Notes). ``ρ -> ∞`` ties every
        region to the shared map. Formerly 100, at which the study
        ``benchmarks/study_fuzzy_reg.py`` (docs/study-fuzzy-reg.md) found the regions to apply
        practically one map, and ``1e-2`` before that, which overfitted (the gates narrowed
        onto confident training errors). Now that held-out folds decide whether the gates are
        used at all, ``ρ = 10`` gives them room to act; the default is not tuned further.
    cv : int, cross-validation splitter or iterable, default=5
        Folds of both decisions: the ODIR strength (stage 1, when ``reg_lambda="cv"``) and
        whether the gated maps replace the stage-1 map. An int assigns rows to folds by their
        content (:func:`precal.calibration._crossval.content_folds`), so that weighted and
        repeated rows give the same folds.
    soft_ece_weight : float, default=1.0
        Weight of the soft-ECE term when ``loss="nll+soft_ece"``.
    check_gates : bool, default=True
        Keep the gated maps only when they beat the stage-1 map on every held-out fold (see
        Notes). ``False`` always keeps them (the former behaviour; for studies of the gates).
    max_iter : int, default=100
        Maximum L-BFGS-B iterations of each stage-2 fit; stage 1 uses
        :class:`DirichletCalibrator`'s own Newton settings. Preconditioned (see Notes), stage 2
        converged in 27-52 iterations on 5 000 CIFAR-100 logits (61-78 with the data's diagonal
        curvature alone in the preconditioner), where plain L-BFGS-B needed 380-700; the
        held-out check judges whatever iterate it returns. The former default was 500.
    tol : float, default=1e-8
        L-BFGS-B's ``ftol`` and ``gtol``: it stops when the relative decrease of the
        objective or the largest gradient component (in the preconditioned coordinates when
        stage 2 is preconditioned, see Notes) falls below ``tol``.
    random_state : int, RandomState, Generator or None, default=None
        Seeds the noisy copies. ``None`` uses seed 0, so fits are reproducible by
        default (the copies are part of the objective); pass other seeds to vary them.

    Attributes
    ----------
    centers_ : ndarray of shape (n_regions,)
        Membership centres ``m_r``, ascending (regions are sorted by centre after the fit).
    widths_ : ndarray of shape (n_regions,)
        Membership widths ``σ_r > 0``.
    coefs_ : ndarray of shape (n_regions, K, K) or (n_regions, K)
        ``W_r`` (diagonals only for ``map_ == "diagonal"``).
    intercepts_ : ndarray of shape (n_regions, K)
        ``b_r``.
    map_ : {"full", "diagonal"}
    gated_ : bool
        Whether the regions apply different maps: the gated fit won on every held-out fold.
    reg_lambda_ : float or None
        The ``λ`` of stage 1 (``reg_lambda`` or the cross-validated one); None after
        :meth:`from_dict` (not stored).
    gate_scores_ : list of (float, float)
        Per fold, the held-out loss (weighted mean NLL, plus the soft-ECE term when it is part
        of the loss) of the stage-1 map and of the gated maps fitted on the other folds, up to
        the first fold the gates lose (the later folds are not fitted); empty when stage 2 was
        skipped, and after :meth:`from_dict`.
    n_iter_ : int
        Newton steps of stage 1 plus L-BFGS iterations of the final stage-2 fit.
    n_parameters_ : int
        ``2R + R (K² + K)`` (full) or ``2R + 2RK`` (diagonal).
    nbytes_ : int
        Storage size of the parameters in float32: ``4 * n_parameters_``.

    Warns
    -----
    ConvergenceWarning
        When the stage-2 fit whose parameters are kept (the gated maps) stops at ``max_iter``,
        ends its line search abnormally with a gradient above ``sqrt(tol)``, or meets a
        non-finite objective; the best finite iterate
        is kept (never NaN parameters). Stage 1's warnings (:class:`DirichletCalibrator`'s) are
        passed on.

    Notes
    -----
    **Parameterisation.** Region ``r`` applies ``W_r = W + ΔW_r``, ``b_r = b + Δb_r``: a
    shared map with ODIR (Kull et al., 2019) plus deviations penalised by
    ``ρ (‖ΔW_r‖²/#W + ‖Δb_r‖²/K)`` (see :func:`fuzzy_objective`). Without that penalty the
    gates plus ``R`` free maps overfit: on 5 000 ResNet-50 logits the gates narrowed onto
    the few confident errors and held-out NLL rose while training NLL fell.

    **Fitting.** (1) Stage 1 is :class:`DirichletCalibrator` with ``map``, ``reg_lambda``,
    ``reg_mu``, ``reg_diag`` and ``cv`` passed on, fitted on the clean logits (Newton's
    method; with ``reg_lambda="cv"`` its ODIR strength is cross-validated). Its map is what
    this calibrator returns unless stage 2 wins. (2) Stage 2 fits the gates and the
    per-region deviations jointly by scipy's L-BFGS-B on float64 parameters, from the
    stage-1 map with zero deviations, centres at the ``(r + 1/2)/R`` quantiles of ``c`` and
    widths from their spacing, on the clean logits and the noisy copies together, with the
    stage-1 strengths on the shared map. The NLL's gradient is in closed form, accumulated
    over blocks of rows so memory stays bounded (autograd only for the parameter-sized map
    from ``θ`` and the soft-ECE term, which does not split over rows and is computed on the
    whole batch; the penalty is a quadratic form, ``½ θᵀ P θ`` with ``P`` its Hessian, computed
    once for the preconditioner and, up to 1 024 parameters, used for the penalty's value and
    gradient, which autograd gives above). Like :class:`DirichletCalibrator`'s passes, the
    data term runs in float64 up to 2**20 elements (rows of all versions times classes) and in
    float32 above, with float64 sums across blocks; a float32 fit may end its line search at
    that dtype's rounding floor (a gradient of ``sqrt(eps)``, about 3e-4, in the
    preconditioned coordinates) without a warning. On the CPU the blocks of each evaluation
    are shared among precal's threads (single-threaded torch kernels, sums in block order),
    and the rest of stage 2 (the preconditioner, the soft-ECE term) runs on one thread: the
    same fit on any number of threads. Log-probabilities are standardised per column (a
    reparameterisation: the objective is unchanged), and L-BFGS-B runs in coordinates where a
    fixed approximation of the Hessian at the start is the identity (the penalties' exact
    Hessian, the data's Gauss-Newton curvature of each row of each region's map alone, its
    coefficients and intercept together, and the median of that curvature on the gates'
    centres and widths; up to 4 096 parameters, i.e. with three regions diagonal maps up to
    511 classes and full maps up to 31; beyond, or for non-finite curvature, plain
    L-BFGS-B): the stiff cross-validated
    penalties otherwise cost hundreds of iterations on real logits, and the fit stopped at
    ``max_iter`` short of the optimum. The objective is non-convex in the
    gates; stage 2 never ends above its starting objective, but its minimum is not
    guaranteed global.

    **The held-out decision.** For each of the ``cv`` folds, the stage-1 map is refitted on
    the other folds at the chosen strength (:func:`~precal.calibration.dirichlet.fit_dirichlet`,
    warm-started) and stage 2 is run from it there; both are scored on the fold's clean
    held-out rows by the loss without penalties. The gated maps are refitted on all rows and
    kept only if they have the lower held-out loss on every fold (by more than a relative
    ``1e-9``): with exchangeable folds and no real gain, that happens with probability
    ``2^-cv`` (1/32 with five folds), so a gain has to be consistent, not a fluke of one
    fold. The decision is on the clean logits: the noisy copies make stage 2 a different
    candidate, and they are kept only when that candidate is better on the data given.
    Folds are assigned by row content, so weighted and repeated rows decide alike. The folds
    are visited in order and the first one the gates lose ends the decision, so the cost is
    one to ``cv`` stage-2 fits (plus one on all rows when the gates win) on top of
    :class:`DirichletCalibrator`'s own.

    **Why this design.** With a fixed ``λ = 1e-3`` for the shared map and ``ρ = 100`` (the
    former defaults) the calibrator lost to Dirichlet calibration and to temperature scaling
    in NLL on real networks (docs/study-fuzzy.md): the shared map was under-regularised for
    realistic calibration sets, and the noisy copies and gates could only add variance. The
    shared map is now exactly the cross-validated Dirichlet map, and the gates must earn their
    place on held-out data.

    **Identifiability.** ``W_r + 1 v^T`` and ``b_r + c 1`` give the same probabilities;
    the fitted maps are the representatives with the smallest ODIR, as for
    :class:`DirichletCalibrator`.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration.fuzzy import FuzzyDirichletCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=300)
    >>> logits = 3.0 * (np.eye(3)[y] + rng.normal(size=(300, 3)))
    >>> cal = FuzzyDirichletCalibrator(random_state=0).fit(logits, y)
    >>> cal.n_parameters_, cal.nbytes_
    (42, 168)
    >>> sorted(set(cal.predict_confidence_label(logits)) - {"low", "moderate", "high"})
    []
    """

    _device_native = True
    _state_keys = ("centers_", "widths_", "coefs_", "intercepts_", "n_iter_")

    def __init__(
        self,
        *,
        n_regions: int = 3,
        map: str = "auto",  # noqa: A002 - the parameter name DESIGN.md fixes
        noise: str | Callable[..., Any] | None = "int4",
        n_noise_copies: int = 2,
        loss: str = "nll",
        region_names: Any = None,
        reg_lambda: float | str = "cv",
        reg_mu: float | None = None,
        reg_diag: float | None = None,
        reg_region: float = 10.0,
        cv: Any = 5,
        check_gates: bool = True,
        soft_ece_weight: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-8,
        random_state: Any = None,
    ) -> None:
        self.n_regions = n_regions
        self.map = map
        self.noise = noise
        self.n_noise_copies = n_noise_copies
        self.loss = loss
        self.region_names = region_names
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.reg_diag = reg_diag
        self.reg_region = reg_region
        self.cv = cv
        self.check_gates = check_gates
        self.soft_ece_weight = soft_ece_weight
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    # ------------------------------------------------------------ validation
    def _validate_hyperparameters(self) -> None:
        if isinstance(self.n_regions, bool) or not isinstance(self.n_regions, numbers.Integral) or self.n_regions < 1:
            raise ValueError(f"n_regions must be an integer >= 1, got {self.n_regions!r}.")
        try:
            check_random_state(self.random_state)  # None, an int or a RandomState, as fit needs
        except ValueError as exc:
            raise ValueError(f"random_state: {exc}") from exc
        if not isinstance(self.map, str) or self.map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}, got {self.map!r}.")
        if not (self.noise is None or callable(self.noise) or (isinstance(self.noise, str) and self.noise in NOISES)):
            raise ValueError(f"noise must be 'int4', None or a callable f(logits, generator), got {self.noise!r}.")
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        check_number(self.n_noise_copies, "n_noise_copies", numbers.Integral, min_val=0)
        if self.region_names is not None:  # the default names are made on demand (n_regions may be huge)
            self._names()
        check_strengths(self, ("reg_lambda", "reg_mu", "reg_diag", "reg_region", "soft_ece_weight"))
        check_cv(self.cv)
        if not isinstance(self.check_gates, (bool, np.bool_)):
            raise TypeError(f"check_gates must be True or False, got {self.check_gates!r}.")
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _names(self) -> tuple[str, ...]:
        r = int(self.n_regions)
        if self.region_names is None:
            return _DEFAULT_NAMES[r] if r in _DEFAULT_NAMES else tuple(f"region {i + 1}" for i in range(r))
        names = self.region_names
        if isinstance(names, (str, dict, set, frozenset)) or not all(isinstance(s, str) for s in names):
            raise ValueError(f"region_names must be a sequence of strings, got {names!r}.")
        if len(names) != r:
            raise ValueError(f"region_names has {len(names)} names but n_regions={r}; give one name per region.")
        if len(set(names)) != len(names):
            raise ValueError(f"region_names must be distinct (they label the regions), got {list(names)!r}.")
        return tuple(names)

    def _resolve_map(self, n_classes: int) -> str:
        return resolve_map(self.map, n_classes)

    def _fit_work(self, X: Any) -> int | None:
        """The larger of stage 1's (a Dirichlet fit) and stage 2's work per pass, for the thread budget."""
        stage_one = fit_work(X, self.map)
        shape = fit_shape(X)
        if shape is None:
            return stage_one
        n, k = shape
        def count(value: Any) -> int:  # hyperparameters are validated later, by the fit
            return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else 1

        versions = 1 + (count(self.n_noise_copies) if self.noise is not None else 0)
        diagonal = resolve_map(self.map, k) == "diagonal"
        r = count(self.n_regions)
        return max(stage_one or 0, _stage_two_work(versions * n, k, r, diagonal))

    def _generator(self) -> torch.Generator:
        rs = check_random_state(0 if self.random_state is None else self.random_state)
        return torch.Generator().manual_seed(int(rs.randint(0, 2**31 - 1)))

    def _noisy_copies(self, z: torch.Tensor) -> torch.Tensor:
        """The fixed noisy copies of the fit, ``(n_noise_copies, n, K)`` float64 (none without noise)."""
        n_copies = int(self.n_noise_copies) if self.noise is not None else 0
        if n_copies == 0:
            return z.new_empty((0,) + tuple(z.shape))
        gen = self._generator()
        if self.noise == "int4":
            return int4_noise_copies(z, n_copies, gen)
        copies = []
        for _ in range(n_copies):
            out = torch.as_tensor(self.noise(z.clone(), gen)).to(device=z.device, dtype=torch.float64)
            if out.shape != z.shape or not torch.isfinite(out).all():
                raise ValueError(
                    f"noise callable must return finite logits of shape {tuple(z.shape)}, got shape {tuple(out.shape)}."
                )
            copies.append(out)
        return torch.stack(copies)

    # ------------------------------------------------------------ fit
    def _fit(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        names = self._names()
        r = int(self.n_regions)
        n, k = logits.shape
        resolved = self._resolve_map(k)
        diagonal = resolved == "diagonal"
        ece_weight = float(self.soft_ece_weight) if self.loss == "nll+soft_ece" else 0.0
        f64 = torch.float64
        z = logits.to(f64)  # never written to: the versions below are new tensors
        yi = y_idx.to(torch.int64)
        raw_weights = None if sample_weight is None else sample_weight.to(f64)
        weights = torch.ones(n, dtype=f64, device=z.device) if raw_weights is None else raw_weights
        weights = weights / weights.sum()

        # Stage 1: DirichletCalibrator itself, on the clean logits (its cross-validated strength by default).
        first = self._stage_one(logits, yi, raw_weights, resolved)
        strengths = first._strengths(first.reg_lambda_)
        w1, b1 = first.coef_, first.intercept_
        self.reg_lambda_ = float(first.reg_lambda_)
        self.gate_scores_ = []
        self.gated_ = False

        copies = self._noisy_copies(z)
        if r == 1 and not ece_weight and copies.shape[0] == 0:  # nothing to add to Dirichlet calibration
            self._set_single(w1, b1, k, resolved, first.n_iter_, names)
            return
        versions = torch.cat([z[None], copies])  # (C, n, K)
        del copies
        gates = _GateFit(r=r, diagonal=diagonal, strengths=strengths, reg_region=float(self.reg_region),
                         ece_weight=ece_weight, max_iter=int(self.max_iter), tol=float(self.tol))

        # Stage 2 competes with stage 1 on held-out folds: the gated map is kept only if it wins on every one.
        splits = [(tr, te) for tr, te in cv_splits(self.cv, z, yi)
                  if float(weights[tr].sum()) > 0 and float(weights[te].sum()) > 0] if self.check_gates else []
        for train, test in splits:
            w_tr = weights[train] / weights[train].sum()
            fold_first = fit_dirichlet(z[train], yi[train], w_tr, diagonal=diagonal, reg_lambda=strengths[0],
                                       reg_mu=strengths[1], reg_diag=strengths[2], init=(w1, b1))
            fold_gated = gates.fit(versions[:, train], yi[train], w_tr, fold_first.coef, fold_first.intercept)[0]
            w_te = weights[test] / weights[test].sum()
            single = _replicate(fold_first.coef, fold_first.intercept, r)
            base, gated = (gates.heldout_loss(z[test], yi[test], w_te, p) for p in (single, fold_gated))
            self.gate_scores_.append((base, gated))
            if not _better(gated, base):  # one lost fold decides: the remaining folds are not fitted
                break
        if self.check_gates and not (self.gate_scores_ and all(_better(g, b) for b, g in self.gate_scores_)):
            self._set_single(w1, b1, k, resolved, first.n_iter_, names)
            return
        params, nit, reason = gates.fit(versions, yi, weights, w1, b1)
        if reason:  # only the fit whose parameters are kept: the folds' fits are candidates, judged held out
            self._warn(reason, nit)
        self.gated_ = True
        self._set_fitted(*params, resolved, first.n_iter_ + nit, names)

    def _stage_one(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None,
                   resolved: str) -> DirichletCalibrator:
        """:class:`DirichletCalibrator` fitted with this calibrator's ODIR settings; its warnings are re-raised
        as this calibrator's, at the caller's line."""
        first = DirichletCalibrator(map=resolved, reg_lambda=self.reg_lambda, reg_mu=self.reg_mu,
                                    reg_diag=self.reg_diag, cv=self.cv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first._fit(logits, y_idx, sample_weight)
        for w in caught:
            text = str(w.message).replace("DirichletCalibrator:", "FuzzyDirichletCalibrator (stage 1, Dirichlet):", 1)
            warnings.warn(text, w.category, stacklevel=6)
        return first

    def _set_single(self, coef: np.ndarray, intercept: np.ndarray, k: int, resolved: str, n_iter: int,
                    names: tuple[str, ...]) -> None:
        """Store one map for every region (the gates then change nothing), centres spread over the range."""
        r = int(self.n_regions)
        lo = 1.0 / k
        centers = lo + (1.0 - lo) * (np.arange(r) + 0.5) / r
        widths = np.full(r, min(max((1.0 - lo) / r, 2.0 * _min_width(r, k)), 1.0))
        self._set_fitted(centers, widths, *_replicate(coef, intercept, r)[2:], resolved, n_iter, names)

    def _warn(self, reason: str, n_iter: int) -> None:
        warnings.warn(
            f"FuzzyDirichletCalibrator: L-BFGS-B stopped before converging after {n_iter} iterations ({reason}); "
            "keeping the best iterate. Increase max_iter or the regularisation (reg_lambda, reg_mu, reg_region).",
            ConvergenceWarning,
            stacklevel=5,
        )

    def _set_fitted(self, centers: np.ndarray, widths: np.ndarray, coefs: np.ndarray, intercepts: np.ndarray,
                    resolved: str, n_iter: int, names: tuple[str, ...]) -> None:
        """Store the regions sorted by centre, each map as its smallest-ODIR equivalent."""
        k = intercepts.shape[1]
        intercepts = intercepts - intercepts.mean(axis=1, keepdims=True)
        if coefs.ndim == 3 and k > 1:
            off_sum = coefs.sum(axis=1) - np.diagonal(coefs, axis1=1, axis2=2)  # (R, K): per column
            coefs = coefs - off_sum[:, None, :] / (k - 1)
        order = np.argsort(centers, kind="stable")
        params = (centers[order], widths[order], coefs[order], intercepts[order])
        if not all(np.isfinite(p).all() for p in params) or not (params[1] > 0).all():  # pragma: no cover
            raise FloatingPointError("FuzzyDirichletCalibrator: the fit produced non-finite parameters.")
        self.centers_, self.widths_, self.coefs_, self.intercepts_ = (np.array(p, dtype=np.float64) for p in params)
        self.map_ = resolved
        self.n_iter_ = int(n_iter)
        self.region_names_ = np.array(names)

    # ------------------------------------------------------------ prediction
    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        lp = log_softmax(logits)  # float64, on the logits' device
        params = (torch.from_numpy(a).to(lp.device) for a in (self.centers_, self.widths_, self.coefs_,
                                                              self.intercepts_))
        centers, widths, coefs, intercepts = params
        gates = _gates(lp.amax(dim=1).exp(), centers, widths)
        return _mixed_logits(lp, gates, coefs, intercepts)

    def predict_confidence_label(self, X: Any) -> np.ndarray:
        """Linguistic confidence of each calibrated prediction: a region name per sample.

        The label is the region whose centre is nearest to the *calibrated* top confidence
        ``max_k q_k`` (the probability the user is shown, which after calibration matches
        the accuracy of such predictions), not to the raw ``c`` that drives the gates:
        "high" then means a prediction that is in fact likely right. The cuts lie halfway
        between adjacent centres, so the labels run monotonically from the lowest to the
        highest region as the confidence rises. (The largest normalised membership would
        not: with unequal widths the widest Gaussian wins far from every centre, which
        labelled 0.6 "high" and 0.85 "moderate" on real data.)
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "centers_")
        q = self.predict_proba(X)
        cuts = (self.centers_[1:] + self.centers_[:-1]) / 2.0
        return self.region_names_[np.searchsorted(cuts, q.max(axis=1), side="right")]

    @property
    def n_parameters_(self) -> int:
        """Number of fitted parameters: centres, widths, coefficients and intercepts."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "coefs_")
        return int(self.centers_.size + self.widths_.size + self.coefs_.size + self.intercepts_.size)

    @property
    def nbytes_(self) -> int:
        """Storage size of the parameters in float32 bytes (``4 * n_parameters_``)."""
        return 4 * self.n_parameters_

    def _torch_map(self) -> torch.nn.Module:
        return _FuzzyDirichletMap(self.centers_, self.widths_, self.coefs_, self.intercepts_)

    # ------------------------------------------------------------ persistence
    def _set_state(self, state: dict[str, Any]) -> None:
        """Load the fitted state; shapes and values are checked before anything is set."""
        check_state_keys(state, self._state_keys, "FuzzyDirichletCalibrator")
        self._validate_hyperparameters()
        k, r = len(self.classes_), int(self.n_regions)
        arrays = {}
        for key in ("centers_", "widths_", "coefs_", "intercepts_"):
            arrays[key] = state_array(state, key)
        shapes = {"centers_": [(r,)], "widths_": [(r,)], "coefs_": [(r, k, k), (r, k)], "intercepts_": [(r, k)]}
        for key, allowed in shapes.items():
            if arrays[key].shape not in allowed:
                raise ValueError(
                    f"Calibrator state {key!r} must have shape {' or '.join(map(str, allowed))} for {r} regions "
                    f"and {k} classes, got {arrays[key].shape}."
                )
        # the ranges _split gives: centres in [1/K, 1], sorted (_set_fitted); widths in [σ_min, _MAX_WIDTH]
        slack = 1e-9
        centers, widths = arrays["centers_"], arrays["widths_"]
        if not ((centers >= 1.0 / k - slack) & (centers <= 1.0 + slack)).all() or (np.diff(centers) < 0).any():
            raise ValueError(f"Calibrator state 'centers_' must be sorted confidences in [1/K, 1] = [{1.0 / k:.6g}, 1], "
                             f"got {centers.tolist()}.")
        sigma_min = _min_width(r, k)
        if not ((widths >= sigma_min * (1 - slack)) & (widths <= _MAX_WIDTH * (1 + slack))).all():
            raise ValueError(f"Calibrator state 'widths_' must lie in [{sigma_min:.6g}, {_MAX_WIDTH}] (the widths a fit "
                             f"gives for {r} regions and {k} classes), got {widths.tolist()}.")
        n_iter = state_count(state, "n_iter_")
        self.centers_, self.widths_ = arrays["centers_"], arrays["widths_"]
        self.coefs_, self.intercepts_ = arrays["coefs_"], arrays["intercepts_"]
        self.n_iter_ = n_iter
        self.map_ = "diagonal" if self.coefs_.ndim == 2 else "full"
        self.region_names_ = np.array(self._names())
        self.gated_ = bool(np.any(self.coefs_ != self.coefs_[:1]) or np.any(self.intercepts_ != self.intercepts_[:1]))
        self.reg_lambda_ = None  # not part of the stored state
        self.gate_scores_ = []

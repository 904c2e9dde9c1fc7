"""Structured matrix scaling (Berta, Holzmüller, Jordan & Bach, 2026): a ridge-regularised affine map on TS log-probabilities."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from .._threads import thread_limits
from .._validation import check_number, check_option
from ._base import BaseLogitCalibrator, check_state_keys, state_array, state_count, state_float
from .temperature import fit_temperature, temperature_range

__all__ = [
    "StructuredMatrixScaling",
    "MatrixScalingFit",
    "fit_matrix_scaling",
    "matrix_scaling_objective",
    "penalty_strengths",
    "scaled_log_probabilities",
    "AUTO_FULL_MAX_CLASSES",
    "mixture_weight",
    "MAPS",
]

MAPS = ("auto", "full", "diagonal")

#: ``map="auto"`` fits the full matrix up to this many classes and the diagonal one above.
#: A full map has ``K (K + 1)`` parameters and each pass costs two ``n x K x K`` products
#: (``2 n K^2`` multiply-adds) against ``O(n K)`` for the diagonal map. At ``K = 100`` a full
#: fit of 5 000 rows takes 15-30 passes of about 30 ms (float64, one loaded core): about a
#: second. At ``K = 1000`` each pass would cost 100 times more (minutes per fit), and the
#: 10^6 parameters outnumber any calibration set's labels by far, so the ridge terms, whose
#: off-diagonal strength grows as ``(K (K-1))^ρ / n^τ``, pin them near zero anyway: the
#: diagonal map (``2 K`` parameters) is then the useful part of the model at ``1/K`` of the
#: cost. (probmetrics fits the full map at every ``K``; up to 100 classes, CIFAR-100
#: included, the two agree.)
AUTO_FULL_MAX_CLASSES = 100

#: Rows per chunk of the objective: about ``2**20`` elements of each ``(rows, K)`` temporary.
_CHUNK_ELEMENTS = 1 << 20

_F64 = torch.float64


# --------------------------------------------------------------------------- the math
def scaled_log_probabilities(logits: torch.Tensor, temperature: float, smoothing: float) -> torch.Tensor:
    r"""The features of the map, ``log((1 - c) softmax(z / T) + c / K)``, in float64 on the logits' device.

    Computed as ``logaddexp(log(1 - c) + log_softmax(z / T), log(c / K))``: finite for any
    finite logits, and at least ``log(c / K)``.
    """
    z = logits.to(_F64)
    k = z.shape[-1]
    scaled = torch.log_softmax(z / temperature, dim=-1) + math.log1p(-smoothing)
    return torch.logaddexp(scaled, torch.tensor(math.log(smoothing / k), dtype=_F64, device=z.device))


def mixture_weight(n: float) -> float:
    """``c = 1 / (n + 1)``: the uniform distribution's share in the features (probmetrics' ``"ts-mix"``),
    at most the largest float64 below 1 (``log(1 - c)`` stays finite for a total weight near 0)."""
    return min(1.0 / (n + 1.0), _LARGEST_BELOW_ONE)


_LARGEST_BELOW_ONE = float(np.nextafter(1.0, 0.0))


def penalty_strengths(n: float, k: int, *, reg_intercept: float, reg_diagonal: float, reg_off_diagonal: float,
                      rho: float, tau: float) -> tuple[float, float, float]:
    r"""The ridge weights ``(r_b, r_d, r_o)`` of :func:`matrix_scaling_objective`.

    .. math::

        r_b = \lambda_b \frac{K^\rho}{n^\tau}, \quad r_d = \lambda_d \frac{K^\rho}{n^\tau}, \quad
        r_o = \lambda_o \frac{(K(K-1))^\rho}{n^\tau}

    (Berta et al., 2026): each term's weight grows with its number of parameters and falls
    with the number of samples ``n`` (the total sample weight).
    """
    scale = 1.0 / n**tau
    return (reg_intercept * k**rho * scale, reg_diagonal * k**rho * scale,
            reg_off_diagonal * (k * (k - 1)) ** rho * scale)


def _unpack(theta: torch.Tensor, k: int, diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Δ, b)`` of the parameter vector: ``[vec Δ (row-major K x K, or its K diagonal entries), b]``."""
    if diagonal:
        return theta[:k], theta[k:]
    return theta[: k * k].reshape(k, k), theta[k * k:]


def matrix_scaling_objective(
    theta: torch.Tensor,
    features: torch.Tensor,
    y_idx: torch.Tensor,
    weights: torch.Tensor | None,
    strengths: tuple[float, float, float],
    *,
    diagonal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The SMS objective and its exact gradient in the parameters (float64, one pass over the rows).

    With features ``x_i`` (the TS log-probabilities), parameters ``θ = (Δ, b)`` and
    ``a_i = (I + Δ) x_i + b`` (``Δ`` diagonal for the diagonal map),

    .. math::

        L(θ) = \frac{1}{W}\sum_i w_i \big[\log\textstyle\sum_k e^{a_{ik}} - a_{i y_i}\big]
               + r_b \lVert b\rVert^2 + r_d \lVert \operatorname{diag}\Delta\rVert^2
               + r_o \lVert \operatorname{offdiag}\Delta\rVert^2 ,

    convex in ``θ`` (strictly when the ``r`` are positive). With ``q_i = softmax(a_i)`` and
    ``g_i = w_i (q_i - e_{y_i}) / W`` the gradient is ``∇_Δ = Σ_i g_i x_i^T`` (its diagonal,
    ``Σ_i g_i ⊙ x_i``, for the diagonal map), ``∇_b = Σ_i g_i``, plus ``2 r`` times each
    penalised block. The sums over rows are :func:`_objective_sums` (rows in chunks of about
    ``2**20`` elements; a Dask fit runs the same function on each of its chunks).

    Parameters
    ----------
    theta : torch.Tensor of shape (K (K + 1),) or (2 K,)
        ``[vec Δ (row-major), b]``, or ``[diag Δ, b]`` for the diagonal map.
    features : torch.Tensor of shape (n, K), float64
    y_idx : torch.Tensor of int64, shape (n,)
    weights : torch.Tensor of shape (n,) or None
        Sample weights (``W`` is their sum), or ``None`` for ones.
    strengths : (r_b, r_d, r_o)
        See :func:`penalty_strengths`.
    diagonal : bool

    Returns
    -------
    (value, gradient) : float64 tensors of shape () and ``theta.shape``
    """
    n, k = features.shape
    total = float(n) if weights is None else weights.sum()
    sums = _objective_sums(theta, features, y_idx, weights, diagonal=diagonal)
    return _penalised(theta, sums, total, strengths, k=k, diagonal=diagonal)


def _objective_sums(theta: torch.Tensor, features: torch.Tensor, y_idx: torch.Tensor, weights: torch.Tensor | None,
                    *, diagonal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data term's sums over the rows, not yet divided by ``W``: ``Σ_i w_i NLL_i``,
    ``Σ_i g_i x_i^T`` (``Σ_i g_i ⊙ x_i`` for the diagonal map) and ``Σ_i g_i``, with
    ``g_i = w_i (q_i - e_{y_i})``; float64, rows in chunks of about ``2**20`` elements.

    The one per-chunk kernel of the objective: the in-memory fit calls it on all the rows,
    a Dask fit on each chunk's rows (:func:`_chunk_objective_sums`), summing the chunks' results.
    """
    n, k = features.shape
    delta, b = _unpack(theta, k, diagonal)
    value = torch.zeros((), dtype=_F64, device=features.device)
    g_delta, g_b = torch.zeros_like(delta), torch.zeros_like(b)
    step = max(1, _CHUNK_ELEMENTS // k)
    for start in range(0, n, step):
        x, yb = features[start:start + step], y_idx[start:start + step, None]
        a = torch.addcmul(b, x, delta + 1.0) if diagonal else torch.addmm(b, x, delta.T).add_(x)
        lse = torch.logsumexp(a, dim=1, keepdim=True)
        row = lse[:, 0] - a.gather(1, yb)[:, 0]
        g = a.sub_(lse).exp_()  # q, in place of a
        g.scatter_add_(1, yb, torch.full_like(yb, -1.0, dtype=_F64))
        if weights is not None:
            w = weights[start:start + step]
            row = row * w
            g.mul_(w[:, None])
        value += row.sum()
        g_delta += (g * x).sum(0) if diagonal else g.T @ x
        g_b += g.sum(0)
    return value, g_delta, g_b


def _penalised(theta: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor], total: Any,
               strengths: tuple[float, float, float], *, k: int, diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective and its gradient from the data term's ``sums`` (:func:`_objective_sums`) and ``total = W``."""
    delta, b = _unpack(theta, k, diagonal)
    value, g_delta, g_b = sums
    r_b, r_d, r_o = strengths
    value = value / total + r_b * b.square().sum()
    g_delta, g_b = g_delta / total, g_b / total + 2.0 * r_b * b
    if diagonal:
        value = value + r_d * delta.square().sum()
        g_delta = g_delta + 2.0 * r_d * delta
    else:
        on = torch.diagonal(delta)
        value = value + r_d * on.square().sum() + r_o * (delta.square().sum() - on.square().sum())
        g_delta = g_delta + 2.0 * r_o * delta
        g_delta.diagonal().add_(2.0 * (r_d - r_o) * on)
    return value, torch.cat([g_delta.reshape(-1), g_b])


def _hessian_sums(features: torch.Tensor, weights: torch.Tensor | None, *,
                  diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The data term's Hessian diagonal at ``θ = 0`` as sums over the rows, not yet divided by ``W``:
    ``Σ_i w_i q_ij (1 - q_ij) x_il^2`` and ``Σ_i w_i q_ij (1 - q_ij)`` (the per-chunk kernel, as
    :func:`_objective_sums`)."""
    n, k = features.shape
    h_delta = torch.zeros(k if diagonal else (k, k), dtype=_F64, device=features.device)
    h_b = torch.zeros(k, dtype=_F64, device=features.device)
    step = max(1, _CHUNK_ELEMENTS // k)
    for start in range(0, n, step):
        x = features[start:start + step]
        q = torch.softmax(x, dim=1)
        v = q * (1.0 - q)
        if weights is not None:
            v = v * weights[start:start + step, None]
        h_delta += (v * x * x).sum(0) if diagonal else v.T @ (x * x)
        h_b += v.sum(0)
    return h_delta, h_b


def _penalised_hessian(sums: tuple[torch.Tensor, torch.Tensor], total: Any, strengths: tuple[float, float, float], *,
                       diagonal: bool) -> torch.Tensor:
    """The objective's Hessian diagonal at ``θ = 0`` from :func:`_hessian_sums` and ``total = W``."""
    h_delta, h_b = sums
    r_b, r_d, r_o = strengths
    h_delta, h_b = h_delta / total, h_b / total + 2.0 * r_b
    if diagonal:
        h_delta = h_delta + 2.0 * r_d
    else:
        h_delta = h_delta + 2.0 * r_o
        h_delta.diagonal().add_(2.0 * (r_d - r_o))
    return torch.cat([h_delta.reshape(-1), h_b])


# --------------------------------------------------------------------------- Dask chunks (see precal._dask)
def _chunk_objective_sums(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, theta: np.ndarray,
                          temperature: float, smoothing: float, diagonal: bool) -> np.ndarray:
    """One Dask chunk's :func:`_objective_sums` as one flat float64 vector ``[value, vec ∇Δ, ∇b]``;
    the features are computed from the chunk's logits, as the in-memory fit computes them from all."""
    features = scaled_log_probabilities(z, temperature, smoothing)
    value, g_delta, g_b = _objective_sums(torch.tensor(theta, dtype=_F64), features, y, w, diagonal=diagonal)
    return torch.cat([value.reshape(1), g_delta.reshape(-1), g_b]).numpy()


def _chunk_hessian_sums(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, temperature: float,
                        smoothing: float, diagonal: bool) -> np.ndarray:
    """One Dask chunk's :func:`_hessian_sums` as one flat float64 vector ``[vec h_Δ, h_b]``."""
    h_delta, h_b = _hessian_sums(scaled_log_probabilities(z, temperature, smoothing), w, diagonal=diagonal)
    return torch.cat([h_delta.reshape(-1), h_b]).numpy()


def _split(flat: torch.Tensor, k: int, diagonal: bool, *, value: bool) -> tuple[torch.Tensor, ...]:
    """The tensors of a flat vector of sums (:func:`_chunk_objective_sums`, :func:`_chunk_hessian_sums`)."""
    head = (flat[0],) if value else ()
    rest = flat[1:] if value else flat
    delta, b = _unpack(rest, k, diagonal)
    return (*head, delta, b)


@dataclass(frozen=True)
class MatrixScalingFit:
    """Result of :func:`fit_matrix_scaling`: ``coef`` is ``I + Δ`` (or its diagonal), ``intercept`` is ``b``."""

    coef: np.ndarray
    intercept: np.ndarray
    objective: float
    n_iter: int
    converged: bool
    message: str


def fit_matrix_scaling(
    features: torch.Tensor,
    y_idx: torch.Tensor,
    weights: torch.Tensor | None,
    strengths: tuple[float, float, float],
    *,
    diagonal: bool,
    max_iter: int = 1000,
    tol: float = 1e-12,
) -> MatrixScalingFit:
    """Minimise :func:`matrix_scaling_objective` by L-BFGS-B from ``θ = 0`` (temperature scaling).

    The objective and its exact gradient are computed in torch (float64, on the features'
    device); only the parameter vector and the gradient cross to the host, once per
    evaluation. The variables are rescaled by the square root of the Hessian's diagonal at
    the start (a Jacobi preconditioner: the curvatures ``Σ_i q_ij (1 - q_ij) x_il^2`` of the
    entries differ by orders of magnitude between confidently and rarely predicted classes,
    so the raw problem is badly conditioned; measured, the preconditioned fit converges in
    6-30 iterations on the benchmark's logits). L-BFGS-B stops when the relative decrease of the
    objective in one step is at most ``tol`` or the largest preconditioned gradient entry is
    at most ``tol``; ``converged`` is false only when it stops on ``max_iter``. The start is
    kept if the optimiser ends above it, so the objective never exceeds temperature
    scaling's.
    """
    n, k = features.shape
    total = float(n) if weights is None else weights.sum()
    return _minimise(lambda theta: _objective_sums(theta, features, y_idx, weights, diagonal=diagonal),
                     _hessian_sums(features, weights, diagonal=diagonal), total, strengths, k=k, diagonal=diagonal,
                     device=features.device, max_iter=max_iter, tol=tol)


def _minimise(sums_at: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
              hessian_sums: tuple[torch.Tensor, torch.Tensor], total: Any, strengths: tuple[float, float, float], *,
              k: int, diagonal: bool, device: torch.device, max_iter: int, tol: float) -> MatrixScalingFit:
    """:func:`fit_matrix_scaling` on the data term's sums: ``sums_at(theta)`` gives
    :func:`_objective_sums` over all rows (one pass: in memory, or one Dask computation) and
    ``hessian_sums`` is :func:`_hessian_sums` over all rows; ``total`` is ``W``."""
    n_params = 2 * k if diagonal else k * (k + 1)
    scale = _penalised_hessian(hessian_sums, total, strengths, diagonal=diagonal)
    scale = scale.clamp_min(float(scale.max()) * 1e-12 + 1e-300).rsqrt_()
    scale_np = scale.cpu().numpy()

    def fun(phi: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.from_numpy(phi).to(device) * scale
        value, grad = _penalised(theta, sums_at(theta), total, strengths, k=k, diagonal=diagonal)
        return float(value), (grad * scale).cpu().numpy()

    start = np.zeros(n_params)
    f0 = fun(start)[0]
    result = minimize(fun, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxfun": 2 * max_iter + 20, "ftol": tol, "gtol": tol,
                               "maxcor": 20})
    theta = result.x * scale_np
    objective = float(result.fun)
    if not (np.all(np.isfinite(theta)) and objective <= f0):
        theta, objective = np.zeros(n_params), f0
    if diagonal:
        coef, intercept = 1.0 + theta[:k], theta[k:]
    else:
        coef, intercept = theta[: k * k].reshape(k, k) + np.eye(k), theta[k * k:]
    converged = result.status != 1  # 1: the iteration or evaluation limit
    return MatrixScalingFit(coef=coef, intercept=intercept.copy(), objective=objective, n_iter=int(result.nit),
                            converged=converged, message=str(result.message))


# --------------------------------------------------------------------------- the estimator
class _MatrixScalingMap(torch.nn.Module):
    def __init__(self, temperature: float, smoothing: float, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        k = len(intercept)
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature, dtype=torch.float64))
        self.register_buffer("log_kept", torch.tensor(math.log1p(-smoothing), dtype=torch.float64))
        self.register_buffer("log_floor", torch.tensor(math.log(smoothing / k), dtype=torch.float64))
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float64))
        self.register_buffer("intercept", torch.tensor(intercept, dtype=torch.float64))
        self.diagonal = coef.ndim == 1

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        # float64 logits are mapped in float64 (the buffers' precision), all others in float32
        z = logits if logits.dtype == torch.float64 else logits.float()
        scaled = torch.log_softmax(z * self.inverse_temperature.to(z.dtype), dim=-1) + self.log_kept.to(z.dtype)
        x = torch.logaddexp(scaled, self.log_floor.to(z.dtype).expand_as(scaled))
        coef, intercept = self.coef.to(z.dtype), self.intercept.to(z.dtype)
        out = x * coef + intercept if self.diagonal else x @ coef.T + intercept
        return out.to(logits.dtype)


class StructuredMatrixScaling(BaseLogitCalibrator):
    r"""Structured matrix scaling: temperature scaling, then a ridge-regularised affine map on its log-probabilities.

    The method of Berta, Holzmüller, Jordan & Bach (2026), probmetrics' ``"logistic"``
    calibrator for multiclass problems. First a temperature ``T`` is fitted
    (:class:`TemperatureScaling`); with the features, the log of the TS probabilities mixed
    with the uniform distribution by a weight ``c = 1 / (n + 1)`` (probmetrics' ``"ts-mix"``),

    .. math::

        x = \log\Big((1 - c) \operatorname{softmax}(z / T) + \frac{c}{K}\Big),

    the calibrated logits are an affine map of them, starting from the identity:

    .. math::

        g(z) = (I + \Delta)\, x + b, \qquad p = \operatorname{softmax}(g(z)),

    with ``Δ`` a full ``K x K`` matrix (``map="full"``, ``K (K+1)`` parameters) or a diagonal
    one (``map="diagonal"``: structured vector scaling, ``2 K`` parameters), fitted by

    .. math::

        \min_{\Delta, b}\ \frac{1}{n}\sum_i -\log p_{i y_i}
        + r_b \lVert b\rVert^2 + r_d \sum_j \Delta_{jj}^2 + r_o \sum_{j \ne l} \Delta_{jl}^2,
        \quad r_b = \lambda_b \frac{K^\rho}{n^\tau},\ r_d = \lambda_d \frac{K^\rho}{n^\tau},\
        r_o = \lambda_o \frac{(K(K-1))^\rho}{n^\tau}.

    **What the regularisation means.** Every term pulls ``(Δ, b)`` towards zero, that is
    towards temperature scaling, which is the map at ``Δ = 0, b = 0``. Each strength is
    proportional to the number of parameters it governs (``K`` intercepts, ``K`` diagonal
    entries, ``K (K-1)`` off-diagonal ones) divided by the number of samples: roughly
    "parameters per sample", so small calibration sets or many classes stay close to TS and
    large sets earn the free map. With every ``λ -> ∞`` the fit *is* temperature scaling.
    Unlike TS the map can change the predicted class: on logits of a low-precision model it
    can recover accuracy that quantization lost.

    Parameters
    ----------
    map : {"auto", "full", "diagonal"}, default="auto"
        Form of ``Δ``. ``"auto"`` is ``"full"`` up to 100 classes
        (:data:`AUTO_FULL_MAX_CLASSES`, where the cost of a full pass, ``2 n K^2``, is still
        small) and ``"diagonal"`` above.
    reg_intercept, reg_diagonal, reg_off_diagonal : float, default=1.0
        ``λ_b, λ_d, λ_o >= 0``, the ridge strengths of ``b``, of ``Δ``'s diagonal and of its
        off-diagonal entries (the paper's and probmetrics' defaults). ``0`` leaves a block
        free (with all three 0 the optimum may not exist: separable data then stop on
        ``max_iter``).
    rho, tau : float, default=1.0
        Exponents of the strengths' dependence on the number of parameters (``ρ``) and on
        the number of samples (``τ``).
    max_iter : int, default=1000
        L-BFGS-B iterations at most.
    tol : float, default=1e-12
        L-BFGS-B's tolerances on the relative decrease of the objective and on the largest
        (preconditioned) gradient entry (see :func:`fit_matrix_scaling`).

    Attributes
    ----------
    temperature_ : float
        ``T`` of the first stage.
    smoothing_ : float
        ``c = 1 / (n + 1)``, the uniform distribution's share in the features.
    coef_ : ndarray of shape (n_classes, n_classes) or (n_classes,)
        ``I + Δ`` (its diagonal when ``map_ == "diagonal"``).
    intercept_ : ndarray of shape (n_classes,)
        ``b``.
    map_ : {"full", "diagonal"}
        The form fitted (``map`` with ``"auto"`` resolved).
    n_iter_ : int
        L-BFGS-B iterations.
    classes_, n_features_in_
        As every calibrator.

    Warns
    -----
    ConvergenceWarning
        When L-BFGS-B stops on ``max_iter``; the parameters are then its last iterate (never
        worse than temperature scaling on the fitting objective).

    Notes
    -----
    **The features.** The uniform share ``c`` floors every feature at ``-log((n + 1) K)``
    (about -10.8 for 5 000 samples of 10 classes): a confidently wrong sample cannot feed the
    map a log-probability of -80, so the problem stays well conditioned and the map bounded
    on any logits. With ``c`` tied to the calibration set's size it vanishes as the set grows.

    **Fitting.** The objective is smooth and, with positive strengths, strongly convex; it
    has ``K (K + 1)`` parameters (10 100 at ``K = 100``), too many for a dense Newton step,
    so it is minimised by scipy's L-BFGS-B with the exact gradient computed in torch in
    float64 on the logits' device (one pass over the rows per evaluation; only the
    parameter vector crosses to the host), from ``Δ = 0, b = 0`` (temperature scaling), with
    the variables scaled by the Hessian's diagonal there. So on the fitting data the
    objective is never above temperature scaling's. The features (``8 n K`` bytes) are kept
    for all passes. The fit runs on one thread (as :class:`DirichletCalibrator`'s).

    **Dask arrays.** A ``dask.array`` of logits is fitted chunk by chunk, never gathered:
    the temperature as :class:`TemperatureScaling` fits it, one dask computation for the
    preconditioner, then one per L-BFGS-B evaluation, in which every chunk computes its
    rows' features from its logits (they are not kept between passes) and returns its sums
    of the weighted NLL and of its gradient (``K (K + 1) + 1`` or ``2 K + 1`` floats) by the
    same per-chunk code as the in-memory fit, summed exactly (``math.fsum``). Chunks with
    NaN or infinite logits are reported with their index. With float64 logits the result
    is the in-memory one up to summation order (tested to 1e-10).

    **Sample weights** count samples: the loss is the weighted mean, and ``n`` in the
    strengths and in ``c = 1 / (n + 1)`` is the sum of the weights, so integer weights give
    the fit of repeated rows. Pass counts, not normalised weights: weights summing to 1 tell
    the fit it has one sample (``c = 1/2`` and strong ridge terms, a map close to temperature
    scaling), and a sum near 0 gives uniform probabilities.

    **Differences from probmetrics.** probmetrics (``get_calibrator("logistic")``, solver
    ``"bfgs"``) computes the same map from probabilities: its temperature is fitted on
    ``log p`` clipped at ``log`` of float32's smallest normal number, -87.3 (here on the
    logits: the same unless a log-probability is below -87.3), its features are rounded to
    float32 and its BFGS runs in float32 with torchmin's default tolerance. For binary
    problems probmetrics' ``"logistic"`` switches to affine scaling; here the same SMS map is
    fitted with ``K = 2``.

    References
    ----------
    E. Berta, D. Holzmüller, M. I. Jordan, F. Bach. "Structured matrix scaling for
    multi-class calibration". AISTATS 2026. arXiv:2511.03685.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration import StructuredMatrixScaling
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=1000)
    >>> logits = 3.0 * (np.eye(3)[y] + rng.normal(size=(1000, 3)))  # over-confident
    >>> sms = StructuredMatrixScaling().fit(logits, y)
    >>> sms.map_, sms.coef_.shape, bool(sms.temperature_ > 1.0)
    ('full', (3, 3), True)
    >>> sms.predict_proba(logits).sum(axis=1)[:3]
    array([1., 1., 1.])
    """

    _state_keys = ("temperature_", "smoothing_", "coef_", "intercept_", "n_iter_")
    _device_native = True
    _fits_dask = True

    def __init__(
        self,
        *,
        map: str = "auto",  # noqa: A002 - the name DirichletCalibrator uses
        reg_intercept: float = 1.0,
        reg_diagonal: float = 1.0,
        reg_off_diagonal: float = 1.0,
        rho: float = 1.0,
        tau: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-12,
    ) -> None:
        self.map = map
        self.reg_intercept = reg_intercept
        self.reg_diagonal = reg_diagonal
        self.reg_off_diagonal = reg_off_diagonal
        self.rho = rho
        self.tau = tau
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        check_option(self.map, "map", MAPS)
        for name in ("reg_intercept", "reg_diagonal", "reg_off_diagonal", "rho", "tau"):
            check_number(getattr(self, name), name, numbers.Real, min_val=0.0, finite=True)
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _resolve_map(self, n_classes: int) -> str:
        if self.map == "auto":
            return "full" if n_classes <= AUTO_FULL_MAX_CLASSES else "diagonal"
        return self.map

    def _setup(self, total: float, k: int) -> tuple[str, float, tuple[float, float, float]]:
        """The map form, the uniform share ``c`` and the ridge strengths (total weight ``total``, ``k`` classes)."""
        strengths = penalty_strengths(total, k, reg_intercept=float(self.reg_intercept),
                                      reg_diagonal=float(self.reg_diagonal),
                                      reg_off_diagonal=float(self.reg_off_diagonal), rho=float(self.rho),
                                      tau=float(self.tau))
        return self._resolve_map(k), mixture_weight(total), strengths

    def _fit(self, logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        n, k = logits.shape
        ts = fit_temperature(logits, y_idx, sample_weight)
        weights = None if sample_weight is None else sample_weight.to(_F64)
        total = float(n) if weights is None else float(weights.sum())
        resolved, smoothing, strengths = self._setup(total, k)
        with thread_limits(0):  # torch, OpenMP and BLAS on one thread (see Notes)
            features = scaled_log_probabilities(logits, ts.temperature, smoothing)
            result = fit_matrix_scaling(features, y_idx, weights, strengths, diagonal=resolved == "diagonal",
                                        max_iter=int(self.max_iter), tol=float(self.tol))
        self._store(ts, result, smoothing, resolved)

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Fit on a dask array: the temperature as :class:`TemperatureScaling` fits it, one
        dask computation for the preconditioner, then one per L-BFGS-B evaluation, in which
        every chunk computes its features from its logits and returns the objective's sums
        over its rows by the in-memory kernel (:func:`_objective_sums`); see :mod:`precal._dask`."""
        from .._dask import DaskLogits
        from .temperature import fit_shifted

        self._validate_hyperparameters()
        data = DaskLogits.validated(X, y, sample_weight, owner="StructuredMatrixScaling")
        self.classes_, self.n_features_in_ = data.classes, data.n_features_in
        n, k = data.shape
        ts = fit_shifted(data)
        total = float(n) if data.w is None else float(data.denom)
        resolved, smoothing, strengths = self._setup(total, k)
        diagonal = resolved == "diagonal"
        temperature = float(ts.temperature)

        def sums_at(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
            flat = data.reduce(_chunk_objective_sums, theta.numpy(), temperature, smoothing, diagonal)
            return _split(torch.tensor(flat, dtype=_F64), k, diagonal, value=True)

        with thread_limits(0):  # as the in-memory fit; with the synchronous scheduler the chunks run here
            hessian = _split(torch.tensor(data.reduce(_chunk_hessian_sums, temperature, smoothing, diagonal),
                                          dtype=_F64), k, diagonal, value=False)
            result = _minimise(sums_at, hessian, total, strengths, k=k, diagonal=diagonal, device=torch.device("cpu"),
                               max_iter=int(self.max_iter), tol=float(self.tol))
        self._store(ts, result, smoothing, resolved)

    def _store(self, ts: Any, result: MatrixScalingFit, smoothing: float, resolved: str) -> None:
        """Warn about either stage's convergence, then set the fitted attributes."""
        if not ts.converged:
            warnings.warn(
                f"StructuredMatrixScaling: the temperature of the first stage did not converge in {ts.n_iter} "
                f"passes (T={ts.temperature:.6g}); the map is fitted on it.",
                ConvergenceWarning,
                stacklevel=5,
            )
        if not result.converged:
            warnings.warn(
                f"StructuredMatrixScaling: L-BFGS-B stopped on max_iter={self.max_iter} before converging "
                f"({result.message}); keeping the last iterate. Increase max_iter or the regularisation.",
                ConvergenceWarning,
                stacklevel=5,
            )
        self.temperature_ = float(ts.temperature)
        self.smoothing_ = smoothing
        self.coef_ = result.coef
        self.intercept_ = result.intercept
        self.map_ = resolved
        self.n_iter_ = result.n_iter

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        x = scaled_log_probabilities(logits, self.temperature_, self.smoothing_)
        coef = torch.from_numpy(self.coef_).to(x.device)
        intercept = torch.from_numpy(self.intercept_).to(x.device)
        if coef.dim() == 1:
            return x * coef + intercept
        return x @ coef.T + intercept

    def _torch_map(self) -> torch.nn.Module:
        return _MatrixScalingMap(self.temperature_, self.smoothing_, self.coef_, self.intercept_)

    def _set_state(self, state: dict[str, Any]) -> None:
        """Load ``temperature_``, ``smoothing_``, ``coef_`` (nested lists for a full map), ``intercept_`` and ``n_iter_``;
        the map form follows from ``coef_``'s shape. Everything is checked before anything is set."""
        k = len(self.classes_)
        check_state_keys(state, self._state_keys, "StructuredMatrixScaling")
        lo, hi = temperature_range()
        temperature = state_float(state, "temperature_", min_val=lo, max_val=hi,
                                  what=" (the temperatures a fit can give)")
        smoothing = state_float(state, "smoothing_", min_val=0.0, max_val=1.0)
        if not 0.0 < smoothing < 1.0:
            raise ValueError(f"Calibrator state 'smoothing_' == {smoothing!r}, must be in (0, 1).")
        coef = state_array(state, "coef_", shapes=((k, k), (k,)))
        intercept = state_array(state, "intercept_", shapes=((k,),))
        n_iter = state_count(state, "n_iter_")
        self.temperature_, self.smoothing_, self.n_iter_ = temperature, smoothing, n_iter
        self.coef_, self.intercept_ = coef, intercept
        self.map_ = "diagonal" if coef.ndim == 1 else "full"

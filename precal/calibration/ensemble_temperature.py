"""Ensemble temperature scaling (Zhang, Kailkhura & Han, 2020): TS, the raw softmax and the uniform, mixed."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from .._chunks import FileRows, rows_per_block
from .._validation import check_number, check_option
from ._base import BaseLogitCalibrator, check_state_keys, state_array, state_count, state_float
from ._blocks import CHUNK_ELEMENTS, tensor_blocks
from .temperature import BETA_BOUNDS, fit_temperature, temperature_range

__all__ = ["EnsembleTemperatureScaling", "ensemble_log_proba", "LOSSES"]

LOSSES = ("nll", "mse")


def ensemble_log_proba(logits: torch.Tensor, inverse_temperature: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""``log(w_1 softmax(z/T) + w_2 softmax(z) + w_3/K)`` in float64, by a log-sum-exp of the three terms.

    A zero weight contributes ``-inf`` inside the log-sum-exp and nothing outside, so the
    result is finite whenever one term with positive weight is (always, for finite logits).
    """
    z = logits.to(torch.float64)
    k = z.shape[-1]
    log_w = weights.log()
    terms = torch.stack(
        [
            torch.log_softmax(z * inverse_temperature, dim=-1) + log_w[0],
            torch.log_softmax(z, dim=-1) + log_w[1],
            torch.full_like(z, -math.log(k)) + log_w[2],
        ]
    )
    return torch.logsumexp(terms, dim=0)


class _EnsembleMap(torch.nn.Module):
    def __init__(self, inverse_temperature: float, weights: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("inverse_temperature", torch.tensor(inverse_temperature, dtype=torch.float64))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return ensemble_log_proba(logits, self.inverse_temperature, self.weights).to(logits.dtype)


def _row_statistics(logits: Any, y_idx: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per row (float64, on ``y_idx``'s device): ``log p0_y``, ``log p1_y`` and ``Σ p0²``, ``Σ p0 p1``, ``Σ p1²``.

    ``p0 = softmax(beta z)`` (temperature scaled), ``p1 = softmax(z)``. One pass over the rows
    in chunks (a tensor on its device, or a memory-mapped file read block by block).
    """
    n, k = logits.shape
    out = {key: torch.empty(n, dtype=torch.float64, device=y_idx.device)
           for key in ("lp0_y", "lp1_y", "s00", "s01", "s11")}
    for start, z in tensor_blocks(logits, rows_per_block(k, CHUNK_ELEMENTS)):
        stop = start + z.shape[0]
        z = z.to(device=y_idx.device, dtype=torch.float64)
        yb = y_idx[start:stop, None]
        lp0, lp1 = torch.log_softmax(beta * z, dim=1), torch.log_softmax(z, dim=1)
        p0, p1 = lp0.exp(), lp1.exp()
        out["lp0_y"][start:stop] = lp0.gather(1, yb)[:, 0]
        out["lp1_y"][start:stop] = lp1.gather(1, yb)[:, 0]
        out["s00"][start:stop] = (p0 * p0).sum(dim=1)
        out["s01"][start:stop] = (p0 * p1).sum(dim=1)
        out["s11"][start:stop] = (p1 * p1).sum(dim=1)
    return out


def _brier_in_beta(logits: Any, y_idx: torch.Tensor, weights: torch.Tensor, beta: float) -> tuple[float, float]:
    r"""Weighted mean Brier score of ``softmax(beta z)`` and its derivative in ``beta``.

    Per row ``Σ_k p_k² - 2 p_y + 1``; with ``z̄ = Σ_k p_k z_k`` and ``∂p_k/∂β = p_k (z_k - z̄)``
    the derivative is ``2 Σ_k p_k² (z_k - z̄) - 2 p_y (z_y - z̄)``.
    """
    n, k = logits.shape
    total = torch.zeros(2, dtype=torch.float64, device=y_idx.device)
    for start, z in tensor_blocks(logits, rows_per_block(k, CHUNK_ELEMENTS)):
        stop = start + z.shape[0]
        z = z.to(device=y_idx.device, dtype=torch.float64)
        z = z - z.amax(dim=1, keepdim=True)
        yb = y_idx[start:stop, None]
        p = torch.softmax(beta * z, dim=1)
        centred = z - (p * z).sum(dim=1, keepdim=True)
        p_y, c_y = p.gather(1, yb)[:, 0], centred.gather(1, yb)[:, 0]
        value = (p * p).sum(dim=1) - 2.0 * p_y + 1.0
        slope = 2.0 * (p * p * centred).sum(dim=1) - 2.0 * p_y * c_y
        w = weights[start:stop]
        total += torch.stack([(w * value).sum(), (w * slope).sum()])
    value, slope = total.tolist()
    return value, slope


class EnsembleTemperatureScaling(BaseLogitCalibrator):
    r"""Ensemble temperature scaling: a convex mix of TS, the model's softmax and the uniform.

    The ETS of Zhang, Kailkhura & Han (2020, "Mix-n-Match"):

    .. math::

        p = w_1 \operatorname{softmax}(z / T) + w_2 \operatorname{softmax}(z) + w_3 \frac{1}{K},
        \qquad w_1, w_2, w_3 \ge 0,\; w_1 + w_2 + w_3 = 1

    fitted in two stages as in the paper: first ``T`` (temperature scaling), then the
    weights with ``T`` fixed, both by the same loss. The extra two degrees of freedom let
    the map be less (or more) confident than any single temperature in the tails, which
    helps most on many classes; the mixture preserves the accuracy of the base model.

    Parameters
    ----------
    loss : {"nll", "mse"}, default="nll"
        ``"nll"``: negative log-likelihood (``T`` is then exactly
        :class:`TemperatureScaling`'s); ``"mse"``: the Brier score
        ``Σ_k (p_k - [y = k])²``, the loss of the authors' released code.
    max_iter : int, default=200
        Iterations of each scipy optimiser (SLSQP for the weights, L-BFGS-B for the MSE
        temperature).
    tol : float, default=1e-12
        Their tolerance on the loss.

    Attributes
    ----------
    temperature_ : float
        ``T``.
    weights_ : ndarray of shape (3,)
        ``(w_1, w_2, w_3)``: temperature-scaled, raw and uniform components.
    n_iter_ : int
        SLSQP iterations of the weight fit.
    classes_, n_features_in_
        As every calibrator.

    Notes
    -----
    **Fitting the weights.** With ``P_i = (softmax(z_i/T)_{y_i}, softmax(z_i)_{y_i}, 1/K)``
    the NLL is ``-mean_i log(w · P_i)``, convex in ``w``; the Brier score is the quadratic
    ``w^T A w - 2 b^T w + 1`` with ``A = mean_i Σ_k P_ik P_ik^T``, ``b = mean_i P_i``. After
    one pass over the data both need only per-row numbers (``n x 5``), so SLSQP on the
    simplex (from ``(1, 0, 0)``, as the authors' code) costs microseconds per iteration. The
    log-likelihood is evaluated in log space (``log w · P_i`` by log-sum-exp), so samples
    whose raw softmax gives the true class a probability that underflows stay finite.

    **Properties.** The weight fit starts from ``(1, 0, 0)`` — the first stage's
    temperature scaling — on a convex problem and falls back to that start if the
    optimiser ends higher, so the fitted loss on the calibration data is never above the
    first stage's (for ``loss="nll"``: never above :class:`TemperatureScaling`'s; tested).
    Each component ranks the classes like the logits, so the argmax is kept unless all
    weight goes to the uniform term (possible only when the logits carry no information
    about the labels). Tensors are fitted on their device and 2-D memory-mapped files are
    read block by block, as for :class:`TemperatureScaling`; dask arrays are fitted chunk by
    chunk, one dask computation per pass (for ``loss="nll"`` the two per-row
    log-probabilities of the weight fit are persisted, 16 bytes per sample).

    References
    ----------
    J. Zhang, B. Kailkhura, T. Y.-J. Han. "Mix-n-Match: Ensemble and Compositional Methods
    for Uncertainty Calibration in Deep Learning". ICML 2020. arXiv:2003.07329.

    Examples
    --------
    >>> import numpy as np
    >>> from precal.calibration import EnsembleTemperatureScaling
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 10, size=3000)
    >>> logits = 4.0 * (np.eye(10)[y] + rng.normal(size=(3000, 10)))
    >>> ets = EnsembleTemperatureScaling().fit(logits, y)
    >>> bool(np.isclose(ets.weights_.sum(), 1.0) and ets.temperature_ > 1.0)
    True
    """

    _state_keys = ("temperature_", "weights_", "n_iter_")
    _device_native = True
    _streams_memmaps = True
    _fits_dask = True

    def __init__(self, *, loss: str = "nll", max_iter: int = 200, tol: float = 1e-12) -> None:
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        check_option(self.loss, "loss", LOSSES)
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _fit(self, logits: torch.Tensor | FileRows, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        n, k = logits.shape
        w = torch.ones(n, dtype=torch.float64, device=y_idx.device) if sample_weight is None else sample_weight
        w = w.to(torch.float64) / w.sum()
        beta = 1.0 / fit_temperature(logits, y_idx, sample_weight).temperature
        if self.loss == "mse":
            beta = self._fit_mse_beta(lambda b: _brier_in_beta(logits, y_idx, w, b), beta)
        rows = _row_statistics(logits, y_idx, beta)
        if self.loss == "nll":
            objective = _nll_objective(rows, w, k)
        else:
            objective = _mse_from_sums(_mse_sums(rows, w), k)
        self._fit_weights(objective, beta)

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Fit on a dask array, each pass one dask computation over the row chunks with the
        in-memory per-chunk code (see :mod:`precal._dask`): ``T`` as :class:`TemperatureScaling`
        fits it (for ``loss="mse"`` then one pass per L-BFGS-B evaluation of the Brier score);
        for ``loss="mse"`` one more pass gives the five sums the weight fit needs; for
        ``loss="nll"`` the two per-row log-probabilities of the weight fit are computed once and
        persisted (``16 n`` bytes, on the workers under ``distributed``), and each SLSQP
        evaluation is one dask computation over them."""
        from .._dask import DaskLogits, reduce_arrays
        from .temperature import fit_shifted

        self._validate_hyperparameters()
        data = DaskLogits.validated(X, y, sample_weight, owner="EnsembleTemperatureScaling")
        self.classes_, self.n_features_in_ = data.classes, data.n_features_in
        n, k = data.shape
        beta = 1.0 / fit_shifted(data).temperature
        if self.loss == "mse":
            beta = self._fit_mse_beta(lambda b: tuple(data.reduce(_chunk_brier, b, n, data.denom)), beta)
            objective = _mse_from_sums(data.reduce(_chunk_mse_sums, beta, n, data.denom), k)
        else:
            log_p = data.map_rows(_chunk_log_p, 2, beta).persist()
            w = data.w

            def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
                value, *grad = reduce_arrays(_chunk_nll, [log_p] if w is None else [log_p, w], np.asarray(v),
                                             k, n, data.denom)
                return value, np.array(grad)

        self._fit_weights(objective, beta)

    def _fit_weights(self, objective: Any, beta: float) -> None:
        """SLSQP on the simplex from ``(1, 0, 0)``; stores the fitted attributes."""
        start = np.array([1.0, 0.0, 0.0])
        result = minimize(
            objective, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * 3,
            constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones(3)}],
            options={"maxiter": self.max_iter, "ftol": self.tol},
        )
        weights = np.clip(result.x, 0.0, 1.0)
        weights /= weights.sum()
        if not (np.all(np.isfinite(weights)) and objective(weights)[0] <= objective(start)[0]):
            weights = start
        if not result.success:
            warnings.warn(
                f"EnsembleTemperatureScaling: SLSQP did not converge ({result.message}); keeping the best of its "
                "last iterate and temperature scaling.",
                ConvergenceWarning,
                stacklevel=4,
            )
        self.temperature_ = 1.0 / beta
        self.weights_ = weights
        self.n_iter_ = int(result.nit)

    def _fit_mse_beta(self, brier: Any, beta_nll: float) -> float:
        """The inverse temperature minimising the Brier score: L-BFGS-B on ``log beta`` from the NLL fit;
        ``brier(beta)`` gives the score and its derivative in ``beta`` (one pass)."""

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            beta = math.exp(float(theta[0]))
            value, slope = brier(beta)
            return value, np.array([slope * beta])

        bounds = [(math.log(BETA_BOUNDS[0]), math.log(BETA_BOUNDS[1]))]
        result = minimize(objective, np.array([math.log(beta_nll)]), jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": 1e-10})
        return math.exp(float(result.x[0]))

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        weights = torch.from_numpy(np.asarray(self.weights_, dtype=np.float64)).to(logits.device)
        beta = torch.tensor(1.0 / self.temperature_, dtype=torch.float64, device=logits.device)
        return ensemble_log_proba(logits, beta, weights)

    def _torch_map(self) -> torch.nn.Module:
        return _EnsembleMap(1.0 / self.temperature_, np.asarray(self.weights_, dtype=np.float64))

    def _set_state(self, state: dict[str, Any]) -> None:
        check_state_keys(state, self._state_keys, "EnsembleTemperatureScaling")
        lo, hi = temperature_range()
        temperature = state_float(state, "temperature_", min_val=lo, max_val=hi,
                                  what=" (the temperatures a fit can give)")
        weights = state_array(state, "weights_")
        if weights.shape != (3,) or np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, abs_tol=1e-9):
            raise ValueError(f"Calibrator state 'weights_' must be 3 numbers >= 0 summing to 1, got {weights}.")
        n_iter = state_count(state, "n_iter_")
        self.temperature_, self.weights_, self.n_iter_ = temperature, weights, n_iter


def _nll_objective(rows: dict[str, torch.Tensor], w: torch.Tensor, k: int):
    """``v -> (-Σ_i w_i log(v · P_i), gradient)`` in log space; ``w`` sums to 1."""
    log_p = torch.stack([rows["lp0_y"], rows["lp1_y"], torch.full_like(rows["lp0_y"], -math.log(k))], dim=1)

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        with np.errstate(divide="ignore"):  # a zero weight is log 0 = -inf: that term drops out
            log_v = torch.from_numpy(np.log(np.maximum(v, 0.0))).to(log_p.device)
        log_mix = torch.logsumexp(log_p + log_v, dim=1)  # log(v · P_i)
        ratio = (log_p - log_mix[:, None]).clamp_max(700.0).exp()  # P_ij / (v · P_i)
        value = -(w * log_mix).sum()
        grad = -(w[:, None] * ratio).sum(dim=0)
        return float(value), grad.cpu().numpy()

    return objective


def _mse_sums(rows: dict[str, torch.Tensor], w: torch.Tensor) -> list[float]:
    """``[Σ w s00, Σ w s01, Σ w s11, Σ w p0_y, Σ w p1_y]``: the data the Brier score of the mixture needs."""
    sums = [float((w * rows[key]).sum()) for key in ("s00", "s01", "s11")]
    return sums + [float((w * rows["lp0_y"].exp()).sum()), float((w * rows["lp1_y"].exp()).sum())]


def _mse_from_sums(sums: Any, k: int):
    """``v -> (v^T A v - 2 b^T v + 1, gradient)``: the weighted mean Brier score of the mixture,
    from the sums of :func:`_mse_sums` (``w`` summing to 1)."""
    s00, s01, s11, b0, b1 = (float(v) for v in sums)
    inv_k = 1.0 / k
    a = np.array([
        [s00, s01, inv_k],
        [s01, s11, inv_k],
        [inv_k, inv_k, inv_k],
    ])
    b = np.array([b0, b1, inv_k])

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        av = a @ v
        return float(v @ av - 2.0 * b @ v + 1.0), 2.0 * av - 2.0 * b

    return objective


# ----------------------------------------------------------------------------- Dask chunks (see precal._dask)
def _chunk_weights(y: torch.Tensor, w: torch.Tensor | None, n: int, denom: float) -> torch.Tensor:
    """One chunk's weights normalised over the whole array (``1/n`` each without weights)."""
    return torch.ones(y.shape[0], dtype=torch.float64) / n if w is None else w / denom


def _chunk_brier(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, beta: float, n: int,
                 denom: float) -> tuple[float, float]:
    """:func:`_brier_in_beta` over one chunk (its share of the weighted mean and its derivative)."""
    return _brier_in_beta(z, y, _chunk_weights(y, w, n, denom), beta)


def _chunk_mse_sums(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, beta: float, n: int,
                    denom: float) -> list[float]:
    """:func:`_mse_sums` over one chunk."""
    return _mse_sums(_row_statistics(z, y, beta), _chunk_weights(y, w, n, denom))


def _chunk_log_p(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, beta: float) -> torch.Tensor:
    """``[log p0_y, log p1_y]`` per row of one chunk (``(rows, 2)``, float64)."""
    rows = _row_statistics(z, y, beta)
    return torch.stack([rows["lp0_y"], rows["lp1_y"]], dim=1)


def _chunk_nll(log_p: np.ndarray, *rest: Any) -> list[float]:
    """The NLL objective of :func:`_nll_objective` and its gradient over one chunk of persisted
    ``[log p0_y, log p1_y]`` rows (and weights): ``[value, grad_1, grad_2, grad_3]``."""
    *w_block, v, k, n, denom = rest
    lp = torch.from_numpy(np.asarray(log_p, dtype=np.float64))
    w = None if not w_block else torch.from_numpy(np.asarray(w_block[0], dtype=np.float64))
    rows = {"lp0_y": lp[:, 0], "lp1_y": lp[:, 1]}
    value, grad = _nll_objective(rows, _chunk_weights(lp[:, 0], w, n, denom), k)(v)
    return [value, *grad.tolist()]

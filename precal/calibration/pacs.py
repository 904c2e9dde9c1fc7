"""Precision-Aware Confidence Scaling (PACS): a sample-adaptive temperature driven by the logit norm."""

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
from .._numerics import as_tensor, is_tensor
from .._validation import check_number
from ..emulate.formats import format_info
from ._base import BaseLogitCalibrator, check_state_keys, state_count, state_float
from .temperature import _CACHE_ELEMENTS, _CHUNK_ELEMENTS, fit_temperature, temperature_range, tensor_blocks

__all__ = ["PACSCalibrator", "precision_epsilon", "pacs_risk", "pacs_objective", "RISKS"]

RISKS = ("norm", "peaked")

#: Bounds of the fit's linear parameters ``T(x) = T_TS (a + b r(x) / mean r)``.
_A_BOUNDS = (1e-6, 1e4)
_B_MAX = 1e4


def precision_epsilon(precision: str | float) -> float:
    """The unit roundoff ``ε`` of a precision: a format name (``"bf16"`` -> 2**-8) or a float > 0.

    For float formats ``ε = 2**-(nmant + 1)``, the bound of round-to-nearest
    ``|fl(x) - x| <= ε |x|``; for integer formats half a step relative to full scale.

    Raises
    ------
    ValueError
        Unknown format name, or a number that is not finite and > 0.
    """
    if isinstance(precision, str):
        try:
            return format_info(precision).unit_roundoff
        except ValueError as exc:
            raise ValueError(f"precision={precision!r} is not a known format: {exc}") from exc
    if isinstance(precision, bool) or not isinstance(precision, numbers.Real):
        raise TypeError(f"precision must be a format name or a float > 0, got {type(precision).__name__}.")
    try:
        eps = float(precision)
    except OverflowError:  # an integer beyond float range
        eps = math.inf
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"precision as a number is the unit roundoff ε and must be finite and > 0, got {precision!r}.")
    return eps


def pacs_risk(logits: Any, epsilon: float, *, risk: str = "norm", norm: float = 2) -> Any:
    r"""Per-sample precision risk ``r(x) = ε ||z(x)||_p s(p̂(x))`` on validated 2-D logits.

    ``s ≡ 1`` for ``risk="norm"``; ``s = 4 p̂ (1 - p̂)`` for ``risk="peaked"``, with ``p̂`` the
    top softmax probability, so the risk peaks for confident-but-not-saturated samples as
    the bound ``2 ε ||z|| p (1 - p)`` on the confidence distortion does. Computed in
    float64 with torch; a numpy array in gives a numpy array out, a tensor gives a tensor
    on its device.
    """
    if is_tensor(logits):
        return _risk(logits, epsilon, risk, norm)
    return _risk(as_tensor(np.asarray(logits)), epsilon, risk, norm).numpy()


def _risk(z: torch.Tensor, epsilon: float, risk: str, norm: float) -> torch.Tensor:
    """:func:`pacs_risk` on a tensor, float64, on its device."""
    z = z.to(torch.float64)
    r = epsilon * torch.linalg.vector_norm(z, ord=norm, dim=1)
    if risk == "peaked":
        # top softmax probability 1 / sum_k exp(z_k - max z)
        p_top = 1.0 / (z - z.amax(dim=1, keepdim=True)).exp_().sum(dim=1)
        r = r * 4.0 * p_top * (1.0 - p_top)
    return r


def _nll_and_slopes(
    logits: torch.Tensor | FileRows, u_true: torch.Tensor, beta: torch.Tensor, *, shifted: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL of ``softmax(beta_i z_i)`` and its derivative in ``beta_i`` (float64).

    ``u = z - max z`` row-wise (so ``e^{beta u} <= 1``); ``nll_i = log sum_k e^{beta_i u_ik} -
    beta_i u_i,y``, ``d nll_i / d beta_i = E_{p_i}[u_i] - u_i,y``. With ``shifted=False`` the
    rows of ``logits`` (a tensor, or a memory-mapped file read chunk by chunk) are shifted
    chunk by chunk here. Results live on ``u_true``'s device.
    """
    n, k = logits.shape
    rows = rows_per_block(k, _CHUNK_ELEMENTS)
    nll = torch.empty(n, dtype=torch.float64, device=u_true.device)
    slope = torch.empty(n, dtype=torch.float64, device=u_true.device)
    for start, z in tensor_blocks(logits, rows):
        stop = start + z.shape[0]
        uc = z if shifted else z - z.amax(dim=1, keepdim=True)
        # float64 from here on: in float32 the objective has a rounding floor (~1e-12) that
        # L-BFGS-B's line search cannot see through, and it spends tens of extra passes there
        uc = uc.to(torch.float64)
        w = torch.mul(uc, beta[start:stop, None]).exp_()
        s0 = w.sum(dim=1)
        mean_u = w.mul_(uc).sum(dim=1) / s0
        ut = u_true[start:stop]
        bt = beta[start:stop]
        nll[start:stop] = torch.log(s0) - bt * ut
        slope[start:stop] = mean_u - ut
    return nll, slope


def pacs_objective(
    theta: np.ndarray,
    u: torch.Tensor | FileRows,
    u_true: torch.Tensor,
    rho: torch.Tensor,
    weights: torch.Tensor,
    t_ts: float,
    *,
    shifted: bool = True,
) -> tuple[float, np.ndarray]:
    """Weighted mean NLL of PACS and its exact gradient in the fit's coordinates ``(a, b)``.

    ``T(x_i) = t_ts (a + b rho_i)`` is linear in ``(a, b)``, so the ``a -> 0`` limit (a
    temperature proportional to the risk) is a straight valley that L-BFGS-B follows to its
    bound. With ``beta_i = 1/T(x_i)`` and ``g_i = E_{p_i}[z_i] - z_{i,y_i}``:
    ``df/da = sum_i w_i g_i (-beta_i / (a + b rho_i))`` and ``df/db`` the same times ``rho_i``.
    ``u`` are row-shifted logits (``z - max z``; with ``shifted=False`` raw logits, shifted
    chunk by chunk, e.g. a memory-mapped file), ``u_true`` their true-class entries,
    ``weights`` sum to 1. The sums run on the tensors' device; only the value and the two
    gradient entries come back.
    """
    a, b = float(theta[0]), float(theta[1])
    scale = a + b * rho
    beta = 1.0 / (t_ts * scale)
    nll, slope = _nll_and_slopes(u, u_true, beta, shifted=shifted)
    common = weights * slope * -beta / scale
    grad = torch.stack([common.sum(), (common * rho).sum()]).tolist()
    return float((weights * nll).sum()), np.array(grad)


class _PACSMap(torch.nn.Module):
    def __init__(self, temperature: float, lam: float, epsilon: float, risk: str, norm: float) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))
        self.register_buffer("lam", torch.tensor(lam, dtype=torch.float32))
        self.register_buffer("epsilon", torch.tensor(epsilon, dtype=torch.float32))
        self.peaked = risk == "peaked"
        self.norm = float(norm)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        r = self.epsilon * torch.linalg.vector_norm(z, ord=self.norm, dim=-1)
        if self.peaked:
            p_top = torch.softmax(z, dim=-1).amax(dim=-1)
            r = r * 4.0 * p_top * (1.0 - p_top)
        t = self.temperature * (1.0 + self.lam * r)
        return (z / t.unsqueeze(-1)).to(logits.dtype)


class PACSCalibrator(BaseLogitCalibrator):
    r"""Precision-Aware Confidence Scaling: a temperature that rises with the precision risk.

    Softmax amplifies logit rounding errors ``|δ_i| <= ε |z_i|`` (``ε`` the unit roundoff of
    the precision format): the confidence distortion is bounded by about
    ``2 ε ||z|| p (1 - p)``, so the logit norm is a computable per-sample proxy for the risk
    that low precision has inflated a confidence. PACS scales each sample's logits by its
    own temperature, larger where that risk is larger:

    .. math::

        r(x) = ε \, \|z(x)\|_p \, s(\hat p(x)), \qquad
        T(x) = T_0 \, (1 + λ\, r(x)), \qquad
        q(x) = \operatorname{softmax}(z(x) / T(x))

    with ``s = 4 p̂ (1 - p̂)`` (``risk="peaked"``, the default) or ``s ≡ 1``
    (``risk="norm"``, the paper's). ``T0 > 0`` and ``λ >= 0`` minimise the NLL on held-out
    logits.

    Parameters
    ----------
    precision : str or float, default="bf16"
        The deployment precision whose unit roundoff is ``ε``: a format name known to
        :func:`precal.emulate.format_info` (``"fp16"``, ``"bf16"``, ``"fp8_e4m3"``, ``"int8"``,
        ...) or ``ε`` itself. Changing it after fitting (``set_params(precision=...)``)
        re-targets the calibrator: ``T0`` and ``λ`` stay, ``ε`` changes.
    risk : {"peaked", "norm"}, default="peaked"
        Shape ``s`` of the risk (see above). ``"peaked"`` follows the distortion bound's
        ``p (1 - p)`` factor; in precal's study (docs/study-pacs.md: 19 model x precision
        settings, 20 splits each) it was never clearly worse than temperature scaling and
        clearly better on ACE and NLL in 6 settings, while the paper's ``"norm"`` was
        clearly worse than temperature scaling on ECE and ACE in those same 6. Hence the
        default; ``"norm"`` is kept as the paper's choice.
    norm : float, default=2
        Order ``p >= 1`` of the logit norm (``math.inf`` for the max-norm).
    max_iter : int, default=200
        Iterations of the L-BFGS-B optimiser.
    tol : float, default=1e-9
        Its projected-gradient tolerance.

    Attributes
    ----------
    temperature_ : float
        ``T0``.
    lambda_ : float
        ``λ`` (multiplies ``ε ||z|| s``; 0 means plain temperature scaling).
    epsilon_ : float
        ``ε`` of ``precision`` when fitted. Not stored by :meth:`to_dict` (it follows from
        ``precision``, and predictions always use the current ``precision``'s ``ε``); a
        calibrator loaded with :meth:`from_dict` reports the ``ε`` of its stored ``precision``.
    temperature_scaling_ : float
        The plain temperature-scaling ``T`` (the starting point and the ``λ = 0`` fallback).
    n_iter_ : int
        Optimiser iterations.

    Notes
    -----
    **Properties.** Every sample is divided by a positive temperature, so the argmax (and
    accuracy) never changes. With ``λ = 0`` it is temperature scaling exactly. The fit
    starts from the temperature-scaling solution ``(T, 0)`` and L-BFGS-B never accepts a step
    that increases the objective, so on the fitting data the NLL is never worse than
    temperature scaling's. No full-precision logits are needed, at fit or predict time.

    **Fitting.** With ``T_TS`` the temperature-scaling solution and ``ρ = r / mean(r)``,
    ``T(x) = T_TS (a + b ρ(x))`` is linear in ``(a, b)``, so ``T0 = T_TS a`` and
    ``λ = b / (a mean(r))``. L-BFGS-B optimises ``(a, b)`` from ``(1, 0)`` with bounds
    ``a ∈ [1e-6, 1e4]``, ``b ∈ [0, 1e4]`` and the exact gradient
    ``∂f/∂β_i = E_{p_i}[z_i] - z_{i,y_i}`` chained through ``β_i = 1/T(x_i)``. The linear
    form matters: the NLL is often lowest as ``a -> 0`` (a temperature proportional to the
    risk, i.e. normalised logits), a valley that is straight in ``(a, b)`` but curved in
    ``(T0, λ)``, where an optimiser crawls along it. Each evaluation is one pass over the
    data, chunk by chunk (about ``2**20`` elements), with float32 logits upcast to float64
    one chunk at a time: computed in float32 the objective has a rounding floor (~1e-12)
    that L-BFGS-B's line search cannot see through, and it spent 66-91 evaluations instead
    of 11-21 on 30 000 x 1 000 float32 logits (issue #7 scale benchmark); a float64
    evaluation costs more, the fit as a whole less.

    **Scale and devices.** Given a torch tensor the whole fit runs on the tensor's device
    (only ``(a, b)``, the objective and its gradient pass through the host for scipy); a
    2-D ``numpy.memmap`` is read chunk by chunk from its file in every pass, so logits
    larger than memory can be fitted (the result equals the in-memory fit).

    **Shift.** The risk uses the raw logits (rounding error depends on their actual
    magnitudes), so unlike temperature scaling PACS is not invariant to adding a constant
    to every logit of a sample.

    References
    ----------
    "Precision-Induced Miscalibration: Understanding and Correcting Confidence Distortion
    in Quantized Neural Networks". Project seed 000 (no authors or venue given there).

    Examples
    --------
    >>> import numpy as np
    >>> from precal import PACSCalibrator
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 5, size=1000)
    >>> logits = 4.0 * (np.eye(5)[y] + rng.normal(size=(1000, 5)))
    >>> pacs = PACSCalibrator(precision="bf16").fit(logits, y)
    >>> bool(pacs.lambda_ >= 0 and pacs.temperature_ > 0)
    True
    >>> bool((pacs.predict(logits) == logits.argmax(axis=1)).all())
    True
    """

    _state_keys = ("temperature_", "lambda_", "temperature_scaling_", "n_iter_")
    _device_native = True
    _streams_memmaps = True

    def __init__(
        self,
        *,
        precision: str | float = "bf16",
        risk: str = "peaked",
        norm: float = 2,
        max_iter: int = 200,
        tol: float = 1e-9,
    ) -> None:
        self.precision = precision
        self.risk = risk
        self.norm = norm
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        precision_epsilon(self.precision)
        if not isinstance(self.risk, str) or self.risk not in RISKS:
            raise ValueError(f"risk must be one of {RISKS}, got {self.risk!r}.")
        if isinstance(self.norm, bool) or not isinstance(self.norm, numbers.Real) or not self.norm >= 1:
            raise ValueError(f"norm must be a number >= 1 (or math.inf), got {self.norm!r}.")
        if isinstance(self.norm, numbers.Integral) and self.norm > 2**53:
            raise ValueError(f"norm must be a number >= 1 (or math.inf), got the integer {self.norm}; use math.inf.")
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _risk(self, logits: torch.Tensor, epsilon: float) -> torch.Tensor:
        return _risk(logits, epsilon, self.risk, self.norm)

    def _fit(self, logits: torch.Tensor | FileRows, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        eps = precision_epsilon(self.precision)
        ts = fit_temperature(logits, y_idx, sample_weight)
        n, k = logits.shape
        device = y_idx.device
        f64 = torch.float64
        # One pass: each row's true-class shifted logit u_y = z_y - max z, and its risk.
        # In-memory inputs of up to 2**27 elements keep the shifted rows for the
        # objective's passes; larger ones and memory-mapped files are shifted chunk by
        # chunk in every pass.
        cache = None
        if not isinstance(logits, FileRows) and logits.numel() <= _CACHE_ELEMENTS:
            cache = torch.empty_like(logits, memory_format=torch.contiguous_format)
        u_true = torch.empty(n, dtype=f64, device=device)
        r = torch.empty(n, dtype=f64, device=device)
        for start, z in tensor_blocks(logits, rows_per_block(k, _CHUNK_ELEMENTS)):
            stop = start + z.shape[0]
            u = z - z.amax(dim=1, keepdim=True)
            if cache is not None:
                cache[start:stop] = u
            u_true[start:stop] = u.gather(1, y_idx[start:stop, None])[:, 0].to(f64)
            r[start:stop] = self._risk(z, eps)
        w = torch.ones(n, dtype=f64, device=device) if sample_weight is None else sample_weight
        w = w / w.sum()
        # The weighted mean risk sets the units of c (sample weights act as repetitions).
        r_ref = float((w * r).sum())
        if not r_ref > 0:
            r_ref = 1.0
        rho = r / r_ref
        source, shifted = (logits, False) if cache is None else (cache, True)

        t_ts = float(ts.temperature)

        last: dict[bytes, tuple[float, np.ndarray]] = {}

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            # one pass over the data per new point: scipy starts by evaluating the start again
            key = np.asarray(theta, dtype=np.float64).tobytes()
            if key not in last:
                last.clear()
                last[key] = pacs_objective(theta, source, u_true, rho, w, t_ts, shifted=shifted)
            value, grad = last[key]
            return value, grad.copy()

        start = np.array([1.0, 0.0])
        f_start = objective(start)[0]
        result = minimize(
            objective, start, jac=True, method="L-BFGS-B", bounds=[_A_BOUNDS, (0.0, _B_MAX)],
            options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 1e-15},
        )
        theta = result.x if np.all(np.isfinite(result.x)) and result.fun <= f_start else start
        if not result.success and result.nit >= self.max_iter:
            warnings.warn(
                f"PACSCalibrator: L-BFGS-B stopped after max_iter={self.max_iter} iterations "
                f"({result.message}); keeping the best iterate.",
                ConvergenceWarning,
                stacklevel=3,
            )
        a, b = float(theta[0]), float(theta[1])
        self.temperature_ = t_ts * a
        self.lambda_ = b / (a * r_ref)
        self.epsilon_ = eps
        self.temperature_scaling_ = t_ts
        self.n_iter_ = int(result.nit)

    def sample_temperature(self, X: Any) -> Any:
        """Per-sample temperatures ``T(x) = T0 (1 + λ r(x))`` at the current ``precision``.

        A numpy array for array input; a float64 tensor on ``X``'s device for tensor input.
        """
        t = self._sample_temperature(self._validated_logits(X))
        return t if is_tensor(X) else t.numpy()

    def _sample_temperature(self, logits: torch.Tensor) -> torch.Tensor:
        return self.temperature_ * (1.0 + self.lambda_ * self._risk(logits, precision_epsilon(self.precision)))

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(torch.float64) / self._sample_temperature(logits)[:, None]

    def _torch_map(self) -> torch.nn.Module:
        return _PACSMap(self.temperature_, self.lambda_, precision_epsilon(self.precision), self.risk, self.norm)

    def _set_state(self, state: dict[str, Any]) -> None:
        """Load the fitted state; each value in the range a fit gives (``T_TS`` within
        temperature scaling's bounds, ``T0 = T_TS a`` with ``a`` within ``_A_BOUNDS``, ``λ >= 0``)."""
        if "epsilon_" in state:
            raise ValueError(
                "Calibrator state 'epsilon_' is not stored: predictions use the ε of params['precision'] "
                "(set_params(precision=...) re-targets a calibrator), so a stored ε could only disagree with it. "
                "Remove the key (files written by precal 0.1.0 before this change carry it)."
            )
        check_state_keys(state, self._state_keys, "PACSCalibrator")
        lo, hi = temperature_range()
        what = " (the values a fit can give)"
        t_ts = state_float(state, "temperature_scaling_", min_val=lo, max_val=hi, what=what)
        t0 = state_float(state, "temperature_", min_val=t_ts * _A_BOUNDS[0] * (1.0 - 1e-12),
                         max_val=t_ts * _A_BOUNDS[1] * (1.0 + 1e-12), what=what)
        lam = state_float(state, "lambda_", min_val=0.0, what=what)
        self.temperature_, self.lambda_, self.temperature_scaling_ = t0, lam, t_ts
        self.n_iter_ = state_count(state, "n_iter_")
        self.epsilon_ = precision_epsilon(self.precision)

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
from .._threads import thread_limits
from .._validation import check_number
from ..emulate.formats import format_info
from ._base import BaseLogitCalibrator, check_state_keys, state_count, state_float
from ._blocks import CHUNK_ELEMENTS, LOG2E, Block, ShiftedLogits, scratch, tensor_blocks
from .temperature import fit_shifted, temperature_range

__all__ = ["PACSCalibrator", "precision_epsilon", "pacs_risk", "pacs_objective", "RISKS"]

RISKS = ("norm", "peaked")

#: Bounds of the fit's linear parameters ``T(x) = T_TS (a + b r(x) / mean r)``.
_A_BOUNDS = (1e-6, 1e4)
_B_MAX = 1e4


def precision_epsilon(precision: str | float) -> float:
    """The unit roundoff ``ε`` of a precision: a format name (``"bf16"`` -> 2**-8) or a float in (0, 1).

    For float formats ``ε = 2**-(nmant + 1)``, the bound of round-to-nearest
    ``|fl(x) - x| <= ε |x|``; for integer formats half a step relative to full scale.

    Raises
    ------
    ValueError
        Unknown format name, or a number outside (0, 1) (a relative rounding error of 100 % or
        more describes no number format).
    """
    if isinstance(precision, str):
        try:
            return format_info(precision).unit_roundoff
        except ValueError as exc:
            raise ValueError(f"precision={precision!r} is not a known format: {exc}") from exc
    if isinstance(precision, bool) or not isinstance(precision, numbers.Real):
        raise TypeError(f"precision must be a format name or a float in (0, 1), got {type(precision).__name__}.")
    try:
        eps = float(precision)
    except OverflowError:  # an integer beyond float range
        eps = math.inf
    if not 0.0 < eps < 1.0:
        raise ValueError(f"precision as a number is the unit roundoff ε and must be in (0, 1), got {precision!r}.")
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


def _risk(z: torch.Tensor, epsilon: float, risk: str, norm: float, *, in_scratch: bool = False) -> torch.Tensor:
    """:func:`pacs_risk` on a tensor, float64, on its device (``in_scratch``: float64 copies
    of ``z`` in this thread's reused block buffers, for the blocks of a fit)."""
    z = scratch(0, z, torch.float64).copy_(z) if in_scratch else z.to(torch.float64)
    r = epsilon * torch.linalg.vector_norm(z, ord=norm, dim=1)
    if risk == "peaked":
        # top softmax probability 1 / sum_k exp(z_k - max z)
        shifted = z.sub_(z.amax(dim=1, keepdim=True)) if in_scratch else z - z.amax(dim=1, keepdim=True)
        p_top = 1.0 / shifted.exp_().sum(dim=1)
        r = r * 4.0 * p_top * (1.0 - p_top)
    return r


def _block_objective(block: Block, beta: torch.Tensor, gain: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``[sum w nll_i, sum w c_i, sum w c_i rho_i]`` over one block, float64, with
    ``c_i = gain_i (E_{p_i}[u_i] - u_{i,y})`` and ``p_i = softmax(beta_i u_i)``.

    ``nll_i = log sum_k e^{beta_i u_ik} - beta_i u_{i,y}``. The element-wise work runs in
    float64 (``u`` is upcast block by block into reused buffers): in float32 the
    objective has a rounding floor (~1e-12) that L-BFGS-B's line search cannot see
    through, and it spends tens of extra passes there.
    """
    u, dim, u_true, w = block
    u = scratch(1, u, torch.float64).copy_(u)
    scaled = beta * LOG2E  # e^{beta u} = 2^{beta log2(e) u}
    e = torch.mul(u, scaled[None, :] if dim == 0 else scaled[:, None], out=scratch(0, u)).exp2_()
    s0 = e.sum(dim)
    slope = e.mul_(u).sum(dim) / s0 - u_true
    common = gain * slope
    terms = torch.stack([torch.log(s0) - beta * u_true, common, common * rho])
    return (terms if w is None else terms * w).sum(1)


def _objective_totals(theta: np.ndarray, data: ShiftedLogits, rho: torch.Tensor, t_ts: float) -> list[float]:
    """The totals of :func:`_block_objective` over the blocks of ``data`` (not yet divided by the weight)."""
    a, b = float(theta[0]), float(theta[1])
    scale = a + b * rho
    beta = 1.0 / (t_ts * scale)
    gain = -beta / scale

    def terms(block: Block, span: tuple[int, int]) -> torch.Tensor:
        rows = slice(*span)
        return _block_objective(block, beta[rows], gain[rows], rho[rows])

    return data.totals(terms)


def _objective(theta: np.ndarray, data: ShiftedLogits, rho: torch.Tensor, t_ts: float) -> tuple[float, np.ndarray]:
    """:func:`pacs_objective` over :class:`~precal.calibration._blocks.ShiftedLogits`: one pass."""
    f, grad_a, grad_b = (total / data.denom for total in _objective_totals(theta, data, rho, t_ts))
    return f, np.array([grad_a, grad_b])


def _chunk_risk_sum(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, epsilon: float, risk: str,
                    norm: float) -> list[float]:
    """``[Σ w r]`` over one chunk of rows (a Dask chunk): the numerator of the mean risk."""
    r = _risk(z, epsilon, risk, norm)
    return [float(r.sum() if w is None else (w * r).sum())]


def _chunk_objective(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, theta: np.ndarray, t_ts: float,
                     r_ref: float, epsilon: float, risk: str, norm: float) -> list[float]:
    """The objective's totals over one chunk of rows (a Dask chunk), by the in-memory kernel:
    the chunk's shifted blocks and its own risk ``rho = r / r_ref``, per row as in memory."""
    data = ShiftedLogits(z, y, w, 1)
    r = torch.empty(z.shape[0], dtype=torch.float64)

    def fill(zb: torch.Tensor, span: tuple[int, int]) -> None:
        r[span[0] : span[1]] = _risk(zb, epsilon, risk, norm, in_scratch=True)

    data.each_raw(fill)
    return _objective_totals(theta, data, r / r_ref, t_ts)


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
    block by block, e.g. a memory-mapped file), ``u_true`` their true-class entries,
    ``weights`` sum to 1. The sums run on the tensors' device; only the value and the two
    gradient entries come back.
    """
    a, b = float(theta[0]), float(theta[1])
    rho = rho.to(torch.float64)
    scale = a + b * rho
    beta = 1.0 / (t_ts * scale)
    gain = -beta / scale
    u_true = u_true.to(torch.float64)
    weights = weights.to(torch.float64)
    total = torch.zeros(3, dtype=torch.float64, device=u_true.device)
    for start, z in tensor_blocks(u, rows_per_block(u.shape[1], CHUNK_ELEMENTS)):
        rows = slice(start, start + z.shape[0])
        block = Block(z if shifted else z - z.amax(dim=1, keepdim=True), 1, u_true[rows], weights[rows])
        total += _block_objective(block, beta[rows], gain[rows], rho[rows])
    f, grad_a, grad_b = total.tolist()
    return f, np.array([grad_a, grad_b])


class _PACSMap(torch.nn.Module):
    def __init__(self, temperature: float, lam: float, epsilon: float, risk: str, norm: float) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))
        self.register_buffer("lam", torch.tensor(lam, dtype=torch.float32))
        self.register_buffer("epsilon", torch.tensor(epsilon, dtype=torch.float32))
        self.peaked = risk == "peaked"
        self.norm = float(norm)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits if logits.dtype == torch.float64 else logits.float()  # float32 unless given float64 (MPS has none)
        # the norm of z / m times m (m = max |z|, at least 1): a plain float32 norm overflows for logits
        # beyond about 1e19 (its square passes float32's maximum), which made T infinite and the output NaN
        m = z.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
        r = self.epsilon.to(z.dtype) * torch.linalg.vector_norm(z / m, ord=self.norm, dim=-1) * m.squeeze(-1)
        if self.peaked:
            p_top = torch.softmax(z, dim=-1).amax(dim=-1)
            r = r * 4.0 * p_top * (1.0 - p_top)
        t = self.temperature.to(z.dtype) * (1.0 + self.lam.to(z.dtype) * r)
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
        ...) or ``ε`` itself, a float in (0, 1). Changing it after fitting (``set_params(precision=...)``)
        re-targets the calibrator: ``T0`` and ``λ`` stay, ``ε`` changes. Fit at the
        precision you deploy: re-targeting a fit made at another precision multiplies
        the adaptive term by the ratio of the ``ε`` (see *Where it helps* below).
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
    data, block by block (about ``2**18`` elements; the row-shifted logits of the
    temperature-scaling start are kept and reused), with float32 logits upcast to float64
    one block at a time: computed in float32 the objective has a rounding floor (~1e-12)
    that L-BFGS-B's line search cannot see through, and it spent 66-91 evaluations instead
    of 11-21 on 30 000 x 1 000 float32 logits (issue #7 scale benchmark); a float64
    evaluation costs more, the fit as a whole less.

    **Scale and devices.** Given a torch tensor the whole fit runs on the tensor's device
    (only ``(a, b)``, the objective and its gradient pass through the host for scipy); on
    the CPU the blocks of a pass are shared among up to ``precal.get_config()["n_threads"]``
    threads (see :mod:`precal._threads`), with the same result for any thread count; a
    2-D ``numpy.memmap`` is read block by block from its mapping in every pass, so logits
    larger than memory can be fitted (the result equals the in-memory fit). A ``dask.array``
    is fitted chunk by chunk: every evaluation is one dask computation in which each chunk
    computes its own rows' risk and returns the objective's three sums by the same block
    kernel (see :mod:`precal._dask`); the mean risk is one more pass.

    **Where it helps and where it equals temperature scaling** (measured in
    ``docs/study-cross-precision.md``: the digits CNN and ResNet-20 emulated end to end at
    six precisions, two CIFAR-10 ResNet-50s rounded in logit space to four; 20 settings,
    20 calibration/test splits each). Fitted on logits of the precision it is applied at,
    PACS *helps* only on the focal-loss ResNet-50 (all four precisions: NLL 0.0013 lower
    than temperature scaling's, sd 0.0003 over splits; ECE within noise, 0.03-0.09 points
    lower) and *equals* temperature scaling in the other 16 settings (ECE within
    ±0.18 points, NLL within noise); its fit is exactly temperature scaling (``λ = 0``) on
    35-60 % of the splits of the other three models. It never did clearly worse.
    **Re-targeting does not work**: the fit depends on ``ε`` only through ``r / mean(r)``, so
    ``λ ε`` comes out the same whatever ``precision`` is fitted with, and
    ``set_params(precision=P)`` after a fit at fp32 multiplies ``λ ε`` by
    ``ε_P / ε_fp32`` (2^16 for bf16). Wherever the fp32 fit found ``λ > 0`` that wrecks the
    calibration: +1.7 to +84 ECE points against temperature scaling refitted at ``P``,
    clearly or often worse in all 20 settings. The adaptive term learns how the model's
    miscalibration grows with its logit norm, not a rounding error (in ``docs/study-pacs.md``
    emulated low precision moved the uncalibrated ECE by more than one split-to-split sd in
    3 of 16 settings, by at most 0.04 points). Composing PACS with top-label
    recalibration (PACS, then :class:`~precal.calibration.TopLabelCalibrator` with
    ``base=None`` on its calibrated logits) equalled ``TopLabelCalibrator()`` (temperature
    scaling + top-label) within noise in all 20 settings (ECE within ±0.12 points, NLL
    within ±0.001), so precal has no such composite.

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
    _fits_dask = True

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
        with thread_limits(math.prod(logits.shape), torch_threads=1) as n_threads:
            self._fit_shifted(logits, y_idx, sample_weight, n_threads)

    def _fit_shifted(
        self, logits: torch.Tensor | FileRows, y_idx: torch.Tensor, sample_weight: torch.Tensor | None, n_threads: int
    ) -> None:
        eps = precision_epsilon(self.precision)
        w = None if sample_weight is None else sample_weight.to(torch.float64)
        # The shifted rows serve the temperature-scaling start and every pass of the objective.
        data = ShiftedLogits(logits, y_idx, w, n_threads)
        t_ts = float(fit_shifted(data).temperature)
        # One pass over the raw rows for the risk (it depends on the logits themselves).
        r = torch.empty(logits.shape[0], dtype=torch.float64, device=y_idx.device)

        def risk(z: torch.Tensor, span: tuple[int, int]) -> None:
            r[span[0] : span[1]] = _risk(z, eps, self.risk, self.norm, in_scratch=True)

        data.each_raw(risk)
        # The weighted mean risk sets the units of b (sample weights act as repetitions).
        r_ref = float(r.sum() if w is None else (w * r).sum()) / data.denom
        if not r_ref > 0:
            r_ref = 1.0
        rho = r / r_ref
        self._minimise(lambda theta: _objective(theta, data, rho, t_ts), t_ts, r_ref, eps, stacklevel=6)

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Fit on a dask array: the temperature-scaling start as :class:`TemperatureScaling` does,
        one pass for the mean risk, then one dask computation per L-BFGS-B evaluation, each chunk
        reduced by the in-memory kernel (:func:`_chunk_objective`); see :mod:`precal._dask`."""
        from .._dask import DaskLogits

        self._validate_hyperparameters()
        eps = precision_epsilon(self.precision)
        data = DaskLogits.validated(X, y, sample_weight, owner="PACSCalibrator")
        self.classes_, self.n_features_in_ = data.classes, data.n_features_in
        t_ts = float(fit_shifted(data).temperature)
        (risk_total,) = data.reduce(_chunk_risk_sum, eps, self.risk, self.norm)
        r_ref = risk_total / data.denom
        if not r_ref > 0:
            r_ref = 1.0

        def evaluate(theta: np.ndarray) -> tuple[float, np.ndarray]:
            totals = data.reduce(_chunk_objective, np.asarray(theta, dtype=np.float64), t_ts, r_ref, eps, self.risk,
                                 self.norm)
            f, grad_a, grad_b = (total / data.denom for total in totals)
            return f, np.array([grad_a, grad_b])

        self._minimise(evaluate, t_ts, r_ref, eps, stacklevel=5)

    def _minimise(self, evaluate: Any, t_ts: float, r_ref: float, eps: float, *, stacklevel: int) -> None:
        """L-BFGS-B on ``(a, b)`` from ``(1, 0)`` with ``evaluate(theta) -> (f, grad)`` (one pass
        over the data per new point); stores the fitted attributes."""
        last: dict[bytes, tuple[float, np.ndarray]] = {}

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            # one pass over the data per new point: scipy starts by evaluating the start again
            key = np.asarray(theta, dtype=np.float64).tobytes()
            if key not in last:
                last.clear()
                last[key] = evaluate(theta)
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
                stacklevel=stacklevel,  # the caller of fit
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

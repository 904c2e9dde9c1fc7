"""Temperature scaling (Guo et al., 2017): one temperature fitted by Newton's method on ``1/T``."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._chunks import FileRows, file_rows
from .._numerics import to_tensor
from .._threads import thread_limits
from .._validation import check_number
from ._base import BaseLogitCalibrator, check_state_keys, state_count, state_float
from ._blocks import LOG2E, Block, ShiftedLogits, scratch

__all__ = ["TemperatureScaling", "fit_temperature", "temperature_nll_derivatives", "TemperatureFit"]

#: Bounds on the inverse temperature ``beta = 1/T``; the same as scikit-learn's
#: ``log(beta) in [-10, 10]`` so both libraries search the same interval.
BETA_BOUNDS = (math.exp(-10.0), math.exp(10.0))

#: Rows of the subsample that gives Newton its starting point on large inputs.
_WARM_START_ROWS = 4096

_F64 = torch.float64


def _block_terms(block: Block, beta: float, with_f: bool) -> torch.Tensor:
    """``[sum w (log s0 - beta u_y), sum w (E[u] - u_y), sum w Var[u]]`` over one block, float64.

    ``E`` and ``Var`` are under ``softmax(beta u)``, ``s0 = sum_k e^{beta u_k}``. The
    element-wise work and the sums over classes run in the logits' dtype, the rest in
    float64. The first entry is 0 unless ``with_f``.
    """
    u, dim, u_true, w = block
    e = torch.mul(u, beta * LOG2E, out=scratch(0, u)).exp2_()  # e^{beta u} <= 1, reused in place below
    sums = torch.stack([e.sum(dim), e.mul_(u).sum(dim), e.mul_(u).sum(dim)]).to(_F64)
    s0 = sums[0]
    moments = sums[1:] / s0  # E[u], E[u^2]
    first = torch.log(s0) - beta * u_true if with_f else torch.zeros_like(s0)
    terms = torch.stack([first, moments[0] - u_true, (moments[1] - moments[0].square()).clamp_min_(0.0)])
    return (terms if w is None else terms * w).sum(1)


def _block_terms_at_zero(block: Block) -> torch.Tensor:
    """``[sum w (E[u] - u_y), sum w Var[u]]`` at ``beta = 0`` (uniform weights: no exponentials)."""
    u, dim, u_true, w = block
    moments = torch.stack([u.sum(dim), torch.mul(u, u, out=scratch(0, u)).sum(dim)]).to(_F64) / u.shape[dim]
    terms = torch.stack([moments[0] - u_true, (moments[1] - moments[0].square()).clamp_min_(0.0)])
    return (terms if w is None else terms * w).sum(1)


def _derivatives(data: ShiftedLogits, beta: float, with_f: bool = False) -> tuple[float, float, float]:
    """``(f, f', f'')`` at ``beta`` from one pass over the blocks (``f`` is 0 unless ``with_f``)."""
    f, g, h = (total / data.denom for total in data.totals(lambda block, _: _block_terms(block, beta, with_f)))
    return f, g, h


def temperature_nll_derivatives(
    logits: torch.Tensor | FileRows,
    y_idx: torch.Tensor,
    beta: float,
    sample_weight: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    r"""Mean NLL of ``softmax(beta * z)`` and its first two derivatives in ``beta``.

    .. math::

        f(\beta) &= \frac{1}{W}\sum_i w_i \Big[\log\sum_k e^{\beta z_{ik}} - \beta z_{i y_i}\Big] \\
        f'(\beta) &= \frac{1}{W}\sum_i w_i \big(\mathbb{E}_{p_i}[z_i] - z_{i y_i}\big) \\
        f''(\beta) &= \frac{1}{W}\sum_i w_i \operatorname{Var}_{p_i}[z_i] \;\ge 0,
        \qquad p_i = \operatorname{softmax}(\beta z_i)

    ``f`` is convex in ``beta``. Each row is first shifted by its largest logit,
    ``u = z - max_k z``, which leaves every quantity unchanged (``f`` gains the constant
    ``beta * max z`` that cancels against the true-class term) and keeps ``e^{beta u} <= 1``,
    so logits of 1e4 cannot overflow and the variance ``E[u^2] - E[u]^2`` is formed from
    small numbers. Element-wise work and the sums over classes run in the logits' dtype
    (float32 or float64; torch sums with cascade summation, relative error near the dtype's
    eps); the per-row results are combined and summed over samples in float64. Rows are
    processed in blocks of about ``2**18`` elements on the tensors' device, so memory stays
    bounded for any ``n``, and on the CPU the blocks are shared among precal's threads
    (:func:`precal.config_context`); a :class:`~precal._chunks.FileRows` (a memory-mapped
    file) is read block by block from its mapping.

    Parameters
    ----------
    logits : torch.Tensor or FileRows of shape (n, K)
        float32 or float64 (other dtypes are upcast to float32).
    y_idx : torch.Tensor of int64, shape (n,)
    beta : float
        Inverse temperature, ``beta > 0``.
    sample_weight : torch.Tensor of shape (n,), optional

    Returns
    -------
    (f, f', f'') : tuple of float
    """
    z = logits_source(logits)
    with thread_limits(math.prod(z.shape), torch_threads=1) as n_threads:
        w = None if sample_weight is None else sample_weight.to(_F64)
        return _derivatives(ShiftedLogits(z, y_idx, w, n_threads, keep=False), beta, with_f=True)


def _on_device(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` (array-like or tensor) as a ``dtype`` tensor on ``device`` (no copy when it already is one)."""
    return to_tensor(x).to(device=device, dtype=dtype)


def logits_source(logits: Any) -> torch.Tensor | FileRows:
    """A :class:`FileRows` for a streamable memory-mapped array (see :func:`precal._chunks.file_rows`),
    else ``logits`` as a tensor (float32/float64, on its device)."""
    if isinstance(logits, FileRows):
        return logits
    rows = file_rows(logits) if isinstance(logits, np.ndarray) else None
    if rows is not None:
        return rows
    z = to_tensor(logits)
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperature`."""

    temperature: float
    n_iter: int
    converged: bool


def fit_temperature(
    logits: Any,
    y_idx: Any,
    sample_weight: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> TemperatureFit:
    r"""Fit ``T`` minimising the NLL of ``softmax(z / T)`` by safeguarded Newton on ``s = log(1/T)``.

    Each iteration makes one pass over the data (the derivatives of
    :func:`temperature_nll_derivatives` in ``beta = 1/T``) and takes the Newton step in
    ``s = log beta``, where the NLL is close to a parabola over the whole range:
    ``s - φ'/φ''`` with ``φ' = beta f'`` and ``φ'' = beta f' + beta^2 f''``. Where
    ``φ'' <= 0`` (far below the minimiser) it takes the Newton step in ``beta`` instead.
    Because ``f`` is convex in ``beta``, the sign of ``f'`` brackets the minimiser; a step
    that would leave the bracket is replaced by its geometric midpoint, so the method cannot
    diverge. From ``beta = 1`` it typically converges in 4-6 passes. ``beta`` is kept in
    ``[e^-10, e^10]`` (scikit-learn's bounds); a minimiser outside them ends on the bound
    (``TemperatureScaling`` then warns, saying which way the NLL still falls).
    On more than 16 384 rows the iteration starts from the minimiser on a strided subsample
    of 4 096 rows, which saves one or two full passes. Inputs of up to 2**27 elements keep
    the row-shifted logits (one extra copy, class-major for up to 32 classes) for all
    passes; larger ones are processed block by block with no copy. Tensors are fitted on
    their device; on the CPU the blocks of a pass are shared among up to
    ``precal.get_config()["n_threads"]`` threads (default: the CPUs the process may use),
    with the same result for any thread count. A memory-mapped file (``numpy.memmap`` or
    :class:`~precal._chunks.FileRows`) is read block by block from the file in every pass
    (see :mod:`precal._chunks`): memory stays at a few blocks whatever its size.

    Parameters
    ----------
    logits : array-like, numpy.memmap, FileRows or torch.Tensor of shape (n, K)
        Validated, finite logits (any float dtype, any device).
    y_idx : array-like of int, shape (n,)
        Column index of each sample's true class.
    sample_weight : array-like of shape (n,), optional
    max_iter : int, default=100
        Maximum number of Newton/bisection passes.
    tol : float, default=1e-4
        Stop when a step changes ``beta`` by at most ``tol * beta``, and take that step.
        Newton converges quadratically, so the step taken leaves a relative error of order
        ``tol**2`` (about 1e-8): at the float32 rounding floor of the derivatives and far
        below scikit-learn's own tolerance.

    Returns
    -------
    TemperatureFit
        ``temperature``, the number of passes and whether it converged.
    """
    z = logits_source(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (n, K), got shape {tuple(z.shape)}.")
    with thread_limits(math.prod(z.shape), torch_threads=1) as n_threads:
        return _fit_temperature(z, y_idx, sample_weight, max_iter, tol, n_threads)


def _fit_temperature(
    z: torch.Tensor | FileRows, y_idx: Any, sample_weight: Any, max_iter: int, tol: float, n_threads: int
) -> TemperatureFit:
    device = torch.device("cpu") if isinstance(z, FileRows) else z.device
    yi = _on_device(y_idx, torch.int64, device)
    w = None if sample_weight is None else _on_device(sample_weight, _F64, device)
    return fit_shifted(ShiftedLogits(z, yi, w, n_threads), max_iter, tol)


def fit_shifted(data: Any, max_iter: int = 100, tol: float = 1e-4) -> TemperatureFit:
    """:func:`fit_temperature` on logits already held as :class:`~precal.calibration._blocks.ShiftedLogits`.

    ``data`` may be anything with the same pass interface: ``shape``, ``denom``,
    ``totals(fn)`` and ``subsample(stride)`` (a :class:`ShiftedLogits` in memory), such as
    the Dask logits of :class:`precal._dask.DaskLogits`.
    """
    n = data.shape[0]
    if n > 4 * _WARM_START_ROWS:
        # A deterministic strided subsample puts the start within a few percent of the
        # minimiser, so the full-data Newton iteration needs two or three passes.
        sub = data.subsample(n // _WARM_START_ROWS)
        beta = 1.0 / _newton(sub, _start(sub), max_iter, 1e-3)[0]
    else:
        beta = _start(data)
    temperature, n_iter, converged = _newton(data, beta, max_iter, tol)
    return TemperatureFit(temperature=temperature, n_iter=n_iter, converged=converged)


def _start(data: ShiftedLogits) -> float:
    """Newton's step from ``beta = 0``, ``-f'(0) / f''(0)``, from the uniform-weight moments (no exponentials).

    ``f'`` is concave in ``beta`` in the usual case (``f''`` falls as the probabilities
    sharpen), so this step lands below the minimiser, where the log-space steps of
    :func:`_newton` are long. Where ``f'(0) >= 0`` (logits no better than chance on
    average) it is 1.
    """
    g0, h0 = (total / data.denom for total in data.totals(lambda block, _: _block_terms_at_zero(block)))
    lo, hi = BETA_BOUNDS
    return min(max(-g0 / h0, lo), hi) if g0 < 0 and h0 > 0 else 1.0


def _newton(data: ShiftedLogits, beta: float, max_iter: int, tol: float) -> tuple[float, int, bool]:
    """Safeguarded Newton for the convex ``f(beta)``; returns ``(1/beta, passes, converged)``.

    Each pass gives ``f'`` and ``f''`` at ``beta`` and two Newton steps: in ``beta``, and
    in ``s = log beta`` (``φ(s) = f(e^s)``, ``φ' = beta f'``, ``φ'' = beta f' + beta^2 f''``).
    Above the minimiser (``f' > 0``) the ``beta`` step comes first, below it the ``log beta``
    step (longer where ``f''`` falls fast); the first one inside the bracket that the signs
    of ``f'`` give is taken, else the bracket's geometric midpoint.
    """
    lo, hi = BETA_BOUNDS
    beta = min(max(beta, lo), hi)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        _, g, h = _derivatives(data, beta)
        if g == 0.0:
            converged = True
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        linear = beta - g / h if h > 0 else math.inf
        curvature = g + beta * h  # φ''(s) / beta
        logarithmic = beta * math.exp(min(-g / curvature, 50.0)) if curvature > 0 else math.inf
        steps = (linear, logarithmic) if g > 0 else (logarithmic, linear)
        new = next((step for step in steps if lo < step < hi), math.sqrt(lo * hi))
        if abs(new - beta) <= tol * beta or hi - lo <= tol * lo:
            beta, converged = new, True
            break
        beta = new
    return 1.0 / beta, n_iter, converged


class _TemperatureMap(torch.nn.Module):
    def __init__(self, inverse_temperature: float) -> None:
        super().__init__()
        self.register_buffer("inverse_temperature", torch.tensor(inverse_temperature, dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.inverse_temperature


def _all_right(logits: torch.Tensor, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> bool:
    """Whether every sample of positive weight has its label as the strict argmax (separable data)."""
    z = logits.reshape(len(y_idx), -1)
    true = z.gather(1, y_idx.to(z.device, torch.int64)[:, None])
    beaten = (z >= true).sum(dim=1) > 1  # another class ties or beats the label
    if sample_weight is not None:
        beaten = beaten & (sample_weight.to(z.device) > 0)
    return not bool(beaten.any())


class TemperatureScaling(BaseLogitCalibrator):
    r"""Temperature scaling: ``p = softmax(z / T)`` with one ``T > 0`` fitted by NLL.

    The method of Guo et al. (2017). ``T > 1`` softens over-confident predictions,
    ``T < 1`` sharpens under-confident ones; the argmax, hence accuracy, never changes.
    The fit minimises the mean negative log-likelihood, a convex function of the inverse
    temperature ``beta = 1/T``, by Newton's method with exact first and second derivatives
    (see :func:`fit_temperature`): a handful of passes over the data, float64 accumulation.

    Parameters
    ----------
    max_iter : int, default=100
        Maximum number of passes over the data.
    tol : float, default=1e-4
        Relative change of ``1/T`` at which the fit stops (the error left is of order
        ``tol**2``, see :func:`fit_temperature`).

    Attributes
    ----------
    temperature_ : float
        The fitted temperature ``T``.
    n_iter_ : int
        Number of passes the fit took.
    classes_ : ndarray of shape (n_classes,)
        Class labels, one per logit column.
    n_features_in_ : int
        Number of logit columns seen in fit (1 for single-logit binary input).

    Notes
    -----
    .. math::

        \hat T = \arg\min_{T>0} -\frac{1}{n}\sum_i \log \operatorname{softmax}(z_i / T)_{y_i}

    The fitted temperature equals scikit-learn's ``CalibratedClassifierCV(method=
    "temperature")`` and netcal's ``TemperatureScaling`` (tested to 1e-4 relative).

    References
    ----------
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger. "On Calibration of Modern Neural
    Networks". ICML 2017. arXiv:1706.04599.

    Examples
    --------
    >>> import numpy as np
    >>> from precal import TemperatureScaling
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=500)
    >>> logits = 3.0 * (np.eye(3)[y] + rng.normal(size=(500, 3)))  # over-confident
    >>> ts = TemperatureScaling().fit(logits, y)
    >>> bool(ts.temperature_ > 1.0)
    True
    >>> ts.predict_proba(logits).sum(axis=1)[:3]
    array([1., 1., 1.])
    """

    _state_keys = ("temperature_", "n_iter_")
    _device_native = True
    _streams_memmaps = True
    _fits_dask = True

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-4) -> None:
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _fit(self, logits: torch.Tensor | FileRows, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        result = fit_temperature(logits, y_idx, sample_weight, max_iter=self.max_iter, tol=self.tol)
        separable = not result.converged and isinstance(logits, torch.Tensor) and _all_right(logits, y_idx,
                                                                                             sample_weight)
        self._store(result, separable=separable)

    def _fit_dask(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Fit on a dask array: one pass to check the chunks, then one dask computation per
        Newton pass, each chunk reduced by the in-memory block kernel (see :mod:`precal._dask`)."""
        from .._dask import DaskLogits

        self._validate_hyperparameters()
        data = DaskLogits.validated(X, y, sample_weight)
        self.classes_, self.n_features_in_ = data.classes, data.n_features_in
        self._store(fit_shifted(data, self.max_iter, self.tol))

    def _store(self, result: TemperatureFit, separable: bool = False) -> None:
        if separable:
            warnings.warn(
                f"TemperatureScaling: every calibration sample (of positive weight) is classified right, so the "
                f"NLL keeps falling as T shrinks and has no finite optimum; the fit stopped after "
                f"max_iter={self.max_iter} passes at T={result.temperature:.6g}, a very confident map. Calibrate "
                "on more data, with some misclassified samples.",
                ConvergenceWarning,
                stacklevel=5,
            )
        elif not result.converged:
            warnings.warn(
                f"TemperatureScaling did not converge in max_iter={self.max_iter} passes "
                f"(T={result.temperature:.6g}); increase max_iter.",
                ConvergenceWarning,
                stacklevel=5,
            )
        beta = 1.0 / result.temperature
        # within 0.1 % of a bound: the solver's tolerance (1e-4 on log beta by default) stops short of it
        if result.converged and not BETA_BOUNDS[0] * (1 + 1e-3) < beta < BETA_BOUNDS[1] * (1 - 1e-3):
            why = ("the NLL still falls as T grows: on these data the logits rank the classes no better than "
                   "a constant, or they are far larger than their information (check that X holds this model's "
                   "logits for these labels)" if beta <= BETA_BOUNDS[0] * (1 + 1e-3) else
                   "the NLL still falls as T shrinks: the logits are far smaller than their information, or "
                   "every sample is classified right with a margin and the likelihood has no finite optimum "
                   "(use more calibration data)")
            warnings.warn(f"TemperatureScaling: the temperature stopped at its bound T={result.temperature:.6g} "
                          f"(e^{10 if beta < 1 else -10}); {why}.", ConvergenceWarning, stacklevel=5)
        self.temperature_ = float(result.temperature)
        self.n_iter_ = int(result.n_iter)

    def _calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(torch.float64) / self.temperature_

    def _torch_map(self) -> torch.nn.Module:
        return _TemperatureMap(1.0 / self.temperature_)

    def _set_state(self, state: dict[str, Any]) -> None:
        check_state_keys(state, self._state_keys, "TemperatureScaling")
        lo, hi = temperature_range()
        self.temperature_ = state_float(state, "temperature_", min_val=lo, max_val=hi,
                                        what=" (the temperatures a fit can give)")
        self.n_iter_ = state_count(state, "n_iter_")


def temperature_range() -> tuple[float, float]:
    """The temperatures :func:`fit_temperature` can give, ``1 / BETA_BOUNDS`` (with rounding room)."""
    return (1.0 / BETA_BOUNDS[1]) * (1.0 - 1e-12), (1.0 / BETA_BOUNDS[0]) * (1.0 + 1e-12)

"""Temperature scaling (Guo et al., 2017): one temperature fitted by Newton's method on 1/T."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._chunks import FileRows, file_rows, row_blocks, rows_per_block
from .._numerics import as_tensor, to_tensor
from .._validation import check_number
from ._base import BaseLogitCalibrator, check_state_keys, state_count, state_float

__all__ = ["TemperatureScaling", "fit_temperature", "temperature_nll_derivatives", "TemperatureFit"]

#: Bounds on the inverse temperature ``beta = 1/T``; the same as scikit-learn's
#: ``log(beta) in [-10, 10]`` so both libraries search the same interval.
BETA_BOUNDS = (math.exp(-10.0), math.exp(10.0))

#: Rows per chunk: about 2**20 elements, so each work buffer holds 4 MB of float32 (8 MB of
#: float64) whatever ``n``; chunks of this size stay in cache and were faster than 2**22 on a
#: single CPU thread.
_CHUNK_ELEMENTS = 1 << 20

#: Up to this many elements (512 MB of float32) the row-shifted logits are computed once and
#: kept for all passes; beyond it each pass shifts chunk by chunk (memory stays bounded).
_CACHE_ELEMENTS = 1 << 27

#: Rows of the subsample that gives Newton its starting point on large inputs.
_WARM_START_ROWS = 4096


def temperature_nll_derivatives(
    logits: torch.Tensor | FileRows,
    y_idx: torch.Tensor,
    beta: float,
    sample_weight: torch.Tensor | None = None,
    *,
    shifted: bool = False,
    shifted_out: torch.Tensor | None = None,
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
    eps); the per-row results are combined and summed over samples in float64. Rows are processed in
    chunks of about ``2**20`` elements on the tensors' device, so memory stays bounded
    for any ``n``; a :class:`~precal._chunks.FileRows` (a memory-mapped file) is read chunk
    by chunk from its file.

    Parameters
    ----------
    logits : torch.Tensor or FileRows of shape (n, K)
        float32 or float64 (other dtypes are upcast to float32).
    y_idx : torch.Tensor of int64, shape (n,)
    beta : float
        Inverse temperature, ``beta > 0``.
    sample_weight : torch.Tensor of shape (n,), optional
    shifted : bool, default=False
        The rows are already shifted by their maximum (see ``shifted_out``), which saves
        two of the five element-wise passes when the derivatives are evaluated repeatedly.
    shifted_out : torch.Tensor, optional
        With ``shifted=False``, also write the row-shifted logits into this tensor (same
        shape), so later calls can pass it with ``shifted=True``.

    Returns
    -------
    (f, f', f'') : tuple of float
    """
    if not isinstance(logits, FileRows) and logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    f64 = torch.float64
    n, k = logits.shape
    rows = rows_per_block(k, _CHUNK_ELEMENTS)
    device = logits.device if isinstance(logits, torch.Tensor) else torch.device("cpu")
    total = torch.zeros(3, dtype=f64, device=device)
    for start, z in tensor_blocks(logits, rows):
        stop = start + z.shape[0]
        if shifted:
            u = z
        elif shifted_out is not None:
            u = torch.sub(z, z.amax(dim=1, keepdim=True), out=shifted_out[start:stop])
        else:
            u = z - z.amax(dim=1, keepdim=True)  # u <= 0, max_k u = 0
        u_true = u.gather(1, y_idx[start:stop, None])[:, 0].to(f64)
        w = torch.mul(u, beta).exp_()  # e^{beta u}, one work buffer reused in place below
        s0 = w.sum(dim=1).to(f64)  # >= 1
        mean_u = w.mul_(u).sum(dim=1).to(f64) / s0
        mean_u2 = w.mul_(u).sum(dim=1).to(f64) / s0
        terms = torch.stack(
            [torch.log(s0) - beta * u_true, mean_u - u_true, (mean_u2 - mean_u.square()).clamp_min(0.0)]
        )
        if sample_weight is not None:
            terms = terms * sample_weight[start:stop].to(f64)
        total += terms.sum(dim=1)
    denom = float(n) if sample_weight is None else float(sample_weight.to(f64).sum())
    f, g, h = (total / denom).tolist()
    return f, g, h


def _on_device(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` (array-like or tensor) as a ``dtype`` tensor on ``device`` (no copy when it already is one)."""
    return to_tensor(x).to(device=device, dtype=dtype)


def tensor_blocks(logits: torch.Tensor | FileRows, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block)`` over the rows of a tensor (views on its device) or a :class:`FileRows`
    (CPU tensors over a buffer that the next block overwrites)."""
    for start, block in row_blocks(logits, rows):
        yield start, as_tensor(block) if isinstance(block, np.ndarray) else block


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
    r"""Fit ``T`` minimising the NLL of ``softmax(z / T)`` by safeguarded Newton on ``beta = 1/T``.

    Each iteration makes one pass over the data (:func:`temperature_nll_derivatives`) and
    takes the Newton step ``beta - f'/f''``. Because ``f`` is convex, the sign of ``f'``
    brackets the minimiser; a step that would leave the bracket is replaced by its geometric
    midpoint, so the method cannot diverge. From ``beta = 1`` it typically converges in
    4-8 passes. ``beta`` is kept in ``[e^-10, e^10]`` (scikit-learn's bounds); a minimiser
    outside them ends on the bound. On more than 16 384 rows the iteration starts from the
    minimiser on a strided subsample of 4 096 rows, which saves one or two full passes.
    Inputs of up to 2**27 elements keep the row-shifted logits of the first pass (one extra
    copy) for the later passes; larger ones are processed chunk by chunk with no copy.
    Tensors are fitted on their device. A memory-mapped file (``numpy.memmap`` or
    :class:`~precal._chunks.FileRows`) is read chunk by chunk from the file in every pass
    (see :mod:`precal._chunks`): memory stays at a few chunks whatever its size.

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
        ``tol**2`` (about 1e-8): below the float32 rounding floor of the derivatives and far
        below scikit-learn's own tolerance.

    Returns
    -------
    TemperatureFit
        ``temperature``, the number of passes and whether it converged.
    """
    z = logits_source(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (n, K), got shape {tuple(z.shape)}.")
    streamed = isinstance(z, FileRows)
    device = torch.device("cpu") if streamed else z.device
    yi = _on_device(y_idx, torch.int64, device)
    w = None if sample_weight is None else _on_device(sample_weight, torch.float64, device)
    # Small enough in-memory inputs keep their row-shifted copy (written by the first full
    # pass) so that later passes skip the shift.
    small = not streamed and z.numel() <= _CACHE_ELEMENTS
    cache = torch.empty_like(z, memory_format=torch.contiguous_format) if small else None
    beta = 1.0
    n = z.shape[0]
    if n > 4 * _WARM_START_ROWS:
        # A deterministic strided subsample puts the start within a few percent of the
        # minimiser, so the full-data Newton iteration needs two or three passes.
        stride = n // _WARM_START_ROWS
        sub_w = None if w is None else w[::stride]
        sub_z = as_tensor(z.take(np.arange(0, n, stride))) if streamed else z[::stride]
        beta = 1.0 / _newton(sub_z, yi[::stride], sub_w, 1.0, max_iter, 1e-3, None)[0]
    temperature, n_iter, converged = _newton(z, yi, w, beta, max_iter, tol, cache)
    return TemperatureFit(temperature=temperature, n_iter=n_iter, converged=converged)


def _newton(
    z: torch.Tensor | FileRows, yi: torch.Tensor, w: torch.Tensor | None, beta: float, max_iter: int, tol: float,
    cache: torch.Tensor | None,
) -> tuple[float, int, bool]:
    """Safeguarded Newton on the convex ``f(beta)``; returns ``(1/beta, passes, converged)``.

    With a ``cache`` tensor, the first pass stores the row-shifted logits in it and the
    following passes read them from there.
    """
    lo, hi = BETA_BOUNDS
    beta = min(max(beta, lo), hi)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if cache is None:
            _, g, h = temperature_nll_derivatives(z, yi, beta, w)
        elif n_iter == 1:
            _, g, h = temperature_nll_derivatives(z, yi, beta, w, shifted_out=cache)
        else:
            _, g, h = temperature_nll_derivatives(cache, yi, beta, w, shifted=True)
        if g == 0.0:
            converged = True
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.inf
        new = step if lo < step < hi else math.sqrt(lo * hi)
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

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-4) -> None:
        self.max_iter = max_iter
        self.tol = tol

    def _validate_hyperparameters(self) -> None:
        check_number(self.max_iter, "max_iter", numbers.Integral, min_val=1)
        check_number(self.tol, "tol", numbers.Real, min_val=0.0, include_boundaries="neither", finite=True)

    def _fit(self, logits: torch.Tensor | FileRows, y_idx: torch.Tensor, sample_weight: torch.Tensor | None) -> None:
        result = fit_temperature(logits, y_idx, sample_weight, max_iter=self.max_iter, tol=self.tol)
        if not result.converged:
            warnings.warn(
                f"TemperatureScaling did not converge in max_iter={self.max_iter} passes "
                f"(T={result.temperature:.6g}); increase max_iter.",
                ConvergenceWarning,
                stacklevel=3,
            )
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

r"""Post-training quantization algorithms as weight schemes: GPTQ, AWQ, SmoothQuant.

Three published PTQ algorithms, on plain torch (CPU or GPU, no other dependency),
registered as weight schemes (:mod:`precal.emulate.weights`) when
:mod:`precal.emulate` is imported:

==================  ===============  ==========================================================
scheme              config suffix    what it does to a layer
==================  ===============  ==========================================================
``"gptq"``          ``-gptq``        quantizes the weight column by column, feeding each
                    (``-actorder``)  column's rounding error back into the columns not yet
                                     quantized through the inverse Hessian of the layer's
                                     calibration inputs (Frantar et al., 2023)
``"awq"``           ``-awq``         scales input channel ``j`` of the weight by
                                     ``s_j = mean|x_j|^α`` before round-to-nearest and divides
                                     the input by ``s_j``; ``α`` grid-searched for the
                                     smallest layer output error (Lin et al., 2024)
``"smoothquant"``   ``-sq``          migrates activation outliers into the weight:
                                     ``s_j = max|X_j|^α / max|W_j|^(1-α)``, ``W diag(s)``
                                     quantized, input ``X diag(s)^-1`` (Xiao et al., 2023)
==================  ===============  ==========================================================

Config names: ``"w4a16-g128-gptq"``, ``"w4a16-g128-gptq-actorder"``, ``"w4a16-gptq"``,
``"w4a16-g128-awq"``, ``"w8a8-sq"``, ``"w8a8-dyn-sq"``; parameters through
``QuantConfig.options`` (``parse_config("w4a16-g128-gptq", options={"damp": 0.1})`` or
``emulate_model(model, "w4a16-g128-gptq", options={"damp": 0.1}, ...)``):

* GPTQ: ``damp`` (0.01, fraction of the mean Hessian diagonal added to it),
  ``block_size`` (128, lazy-batch block), ``act_order`` (False), ``static_groups``
  (default: True with ``act_order`` and groups);
* AWQ: ``alpha`` (None: grid search; a number fixes it), ``n_grid`` (20), ``max_rows``
  (the search's error is measured on the first 4096 calibration rows of each layer;
  ``mean|x|`` uses them all);
* SmoothQuant: ``alpha`` (0.5).

Layers: every registered layer that hands its inputs to a weight scheme. Linear layers and
GPT-2's ``Conv1D`` give their tokens; ``Conv1d``/``Conv2d`` their unfolded patches;
**grouped and depthwise** convolutions their patches per group, ``(groups, rows,
in/groups * kernel)``: GPTQ quantizes the groups in one batched pass, each with the Hessian
of its own input channels (:func:`gptq_quantize` on a 3-D weight), and AWQ/SmoothQuant fold
each input channel's factor into the weight columns of the output channels of its group,
the only ones that read it (an exact fold). ``nn.MultiheadAttention`` runs its calibration
pass through a float :class:`~precal.emulate.EmulatedMultiheadAttention`, so that its
query/key/value projections (the packed ``in_proj_weight``) and ``out_proj`` each get their
own input (one ``X^T X`` for q/k/v in self-attention).

Calibration inputs come from :func:`~precal.emulate.emulate_model`'s one pass of the
calibration data through the **float** model (BatchNorm folded): every layer sees float
inputs. The reference GPTQ and AWQ code quantizes a transformer block by block and feeds
the next block the quantized block's outputs; precal does not (its Hessians and scales
come from float activations). SmoothQuant's and AWQ's scales are per layer (the layer's
input divided by ``s`` in the emulated layer, ``input_scale``), not shared by the q/k/v
projections and folded into the preceding LayerNorm as in the papers' code; the product
is the same up to float rounding, the activation quantizer sees the same smoothed input.

Checked against llmcompressor 0.14 (``benchmarks/ptq_reference/``,
``tests/emulate/test_ptq_reference.py``): on one tiny Llama with the same calibration
tokens, precal's relative logit error is within 0.3 % of llmcompressor's for GPTQ (with and
without act-order), and 2-3 % below it for AWQ and SmoothQuant (docs/emulate-ptq.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .formats import IntFormat, format_info
from .quantize import fake_quantize_int, int_qparams, quantize
from .weights import WeightResult, WeightScheme, register_weight_scheme

__all__ = [
    "gptq_quantize",
    "inverse_cholesky_upper",
    "awq_search",
    "awq_scales",
    "smoothquant_scales",
    "GPTQScheme",
    "AWQScheme",
    "SmoothQuantScheme",
    "GPTQ_OPTIONS",
    "AWQ_OPTIONS",
    "SMOOTHQUANT_OPTIONS",
]

#: Options of the ``"gptq"`` scheme (``QuantConfig.options``) and their defaults.
GPTQ_OPTIONS = {"damp": 0.01, "block_size": 128, "act_order": False, "static_groups": None}
#: Options of the ``"awq"`` scheme and their defaults.
AWQ_OPTIONS = {"alpha": None, "n_grid": 20, "max_rows": 4096}
#: Options of the ``"smoothquant"`` scheme and their defaults.
SMOOTHQUANT_OPTIONS = {"alpha": 0.5}


#: Columns per inner sub-block of GPTQ's lazy batches (a CPU speed-up; same sums, another order).
_SUB_BLOCK = 16


def _int_format(fmt: Any, scheme: str) -> IntFormat:
    f = format_info(fmt)
    if not isinstance(f, IntFormat):
        raise ValueError(f"Weight scheme {scheme!r} quantizes to integer formats, got {f.name!r}.")
    return f


def _qparams(w: torch.Tensor, fmt: IntFormat, symmetric: bool, scale_rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point of ``w`` (rows: output channels), shape ``(..., rows, 1)``."""
    return int_qparams(w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True), fmt, symmetric=symmetric,
                       scale_rule=scale_rule)


def inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor | None:
    r"""Upper Cholesky factor ``U`` of ``H^{-1}`` (``H^{-1} = U^T U``) from one Cholesky of ``H``.

    With ``J`` the exchange matrix (reversed identity), ``J H J = L L^T`` gives
    ``H^{-1} = J L^{-T} L^{-1} J = U^T U`` with ``U = J L^{-1} J``, upper triangular with a
    positive diagonal, hence the Cholesky factor GPTQ's error feedback uses (Frantar et al.,
    2023, Sec. 3.3 "Cholesky reformulation"). One Cholesky and one triangular inverse,
    about ``2n^3/3`` flops, instead of inverting ``H`` and factoring the inverse
    (``chol(H)``, ``H^{-1}``, ``chol(H^{-1})``: about ``5n^3/3``). A batch ``(..., n, n)``
    of matrices gives the batch of factors.

    Returns None when ``H`` (any matrix of a batch) is not (numerically) positive definite.
    """
    n = H.shape[-1]
    L, info = torch.linalg.cholesky_ex(H.flip(-2, -1))
    if bool((info != 0).any()):
        return None
    eye = torch.eye(n, dtype=H.dtype, device=H.device).expand_as(L)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(-2, -1)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, fmt: Any, *, group_size: int | None = None,
                  symmetric: bool = True, scale_rule: str = "half_range", damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False,
                  static_groups: bool | None = None) -> torch.Tensor:
    r"""GPTQ: quantize a weight column by column with second-order error feedback.

    Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
    Generative Pre-trained Transformers", ICLR 2023 (Algorithm 1), as the authors' code
    (``gptq.py``, ``fasterquant``) runs it.

    For a layer ``y = x W^T`` with calibration inputs ``X`` (rows are tokens), GPTQ
    minimises ``||X W^T - X \hat W^T||^2`` one input column at a time. With the Hessian
    ``H = 2 X^T X`` (here ``hessian``; its scale does not matter),

    1. dead inputs (``H_jj = 0``) get ``H_jj = 1`` and ``W_{:,j} = 0``;
    2. with ``act_order``, columns are processed by descending ``H_jj``;
    3. ``H += λ I`` with ``λ = damp · mean(diag H)``; ``U = chol(H^{-1})``, upper
       triangular (``H^{-1} = U^T U``);
    4. for each column ``j``: ``q_j = Q(w_j)`` (round to nearest with the current
       scales), ``e_j = (w_j - q_j) / U_jj``, ``w_k -= e_j U_jk`` for ``k > j``.
       Updates of the columns past the current block of ``block_size`` columns are
       applied once per block (lazy batching: ``W_{:,>b} -= E_b U_{b,>b}``), which gives
       the same result as one update per column up to float rounding.

    Scales: per output channel, from the whole weight before quantization; with
    ``group_size``, one scale per output channel and group of ``group_size`` consecutive
    columns, computed from the group's **current** (error-updated) weights when its
    first column is reached. (The authors' code takes them from ``W[:, j:j+g]``, which
    lacks the updates made inside the current lazy block when a group starts inside it,
    i.e. ``group_size < block_size``; precal applies those pending updates, so its result
    equals Algorithm 1 without lazy batching for every group size, and the authors' code
    whenever ``block_size`` divides ``group_size``.) With ``static_groups`` (default
    when ``act_order`` and ``group_size`` are both set) all group scales are computed
    first from the (dead-zeroed) weight, so that groups stay consecutive columns of the
    original order.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_channels, columns)`` float weight; the computation runs in its dtype
        (float32 or float64) on its device. A batch ``(groups, out_channels, columns)``
        quantizes each ``weight[i]`` with its own ``hessian[i]`` in one pass (a grouped
        or depthwise convolution: one small Hessian per group of input channels), equal to
        one call per group (tested bit for bit).
    hessian : torch.Tensor
        ``(columns, columns)``, ``2 X^T X`` (any positive multiple; the authors' code uses
        ``2 X^T X / n``); ``(groups, columns, columns)`` with a batched weight.
    fmt : str or IntFormat
        Integer format (``"int4"``, ``"int8"``, ...).
    group_size : int, optional
        Columns per group (must divide ``columns``); None: one scale per output channel.
    symmetric : bool, default=True
    scale_rule : {"half_range", "qmax"}, default="half_range"
        Symmetric scale rule (:data:`~precal.emulate.SCALE_RULES`; GPTQ's own quantizer is
        ``"half_range"``).
    damp : float, default=0.01
        Dampening, as a fraction of the mean of the Hessian's diagonal.
    block_size : int, default=128
        Columns per lazy-batch block.
    act_order : bool, default=False
        Process columns by descending Hessian diagonal.
    static_groups : bool, optional
        Compute every group's scales before quantizing (default: ``act_order and
        group_size``).

    Returns
    -------
    torch.Tensor
        The fake-quantized weight, shape and dtype of ``weight``, columns in their
        original order.

    Raises
    ------
    ValueError
        A non-integer format, a group size that does not divide the columns, a Hessian of
        the wrong shape, non-finite values, or a damped Hessian that is not positive
        definite (raise ``damp``).

    Notes
    -----
    With ``H`` a multiple of the identity every ``U_jk`` (``k != j``) is zero, no error is
    fed back, and the result equals round to nearest bit for bit (tested).
    """
    f = _int_format(fmt, "gptq")
    if weight.dim() not in (2, 3):
        raise ValueError("weight must be 2-D (out_channels, columns) or 3-D (groups, out_channels, columns), got "
                         f"shape {tuple(weight.shape)}.")
    rows, n = weight.shape[-2:]
    if hessian.shape != (*weight.shape[:-2], n, n):
        raise ValueError(f"hessian must be {(*weight.shape[:-2], n, n)} for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}.")
    if group_size is not None and (group_size < 1 or n % group_size):
        raise ValueError(f"group_size={group_size} does not divide the {n} columns.")
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    if not torch.isfinite(hessian).all() or not torch.isfinite(weight).all():
        raise ValueError("GPTQ needs a finite weight and Hessian.")
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    W = weight.detach().to(dtype).clone()
    H = hessian.detach().to(torch.float64).clone()
    g = group_size
    if static_groups is None:
        static_groups = bool(act_order and g)

    def fq(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return fake_quantize_int(w, scale, zero, f.qmin, f.qmax)

    def columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # t[..., :, index[...]] per batch
        return t.gather(-1, index.unsqueeze(-2).expand(*t.shape[:-1], index.shape[-1]))

    if g is None:  # per output channel: scales from the whole weight, before the dead columns are zeroed
        scale, zero = _qparams(W, f, symmetric, scale_rule)
    diag = H.diagonal(dim1=-2, dim2=-1)  # a view: writes go to H
    dead = diag == 0
    diag[dead] = 1.0
    W.masked_fill_(dead.unsqueeze(-2), 0.0)
    if g is not None and static_groups:
        params = [_qparams(W[..., i:i + g], f, symmetric, scale_rule) for i in range(0, n, g)]
        group_scales = torch.cat([p[0] for p in params], dim=-1)  # (..., rows, n / g)
        group_zeros = torch.cat([p[1] for p in params], dim=-1)
    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(dim1=-2, dim2=-1), dim=-1, descending=True, stable=True)
        W = columns(W, perm)
        H = columns(H, perm).gather(-2, perm.unsqueeze(-1).expand(*perm.shape, n))
    diag = H.diagonal(dim1=-2, dim2=-1)
    diag += damp * diag.mean(dim=-1, keepdim=True)
    U = inverse_cholesky_upper(H)
    if U is None:
        raise ValueError(f"GPTQ: the Hessian with damp={damp} is not positive definite; raise options['damp'].")
    Hinv = U.to(dtype)

    Q = torch.zeros_like(W)
    sub = _SUB_BLOCK
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[..., i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[..., i1:i2, i1:i2]
        # inside a block, the rank-1 updates touch only a sub-block of `sub` columns; the rest
        # of the block gets them as one product per sub-block (the same sums, another order)
        for j1 in range(0, i2 - i1, sub):
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
                col = i1 + i
                if g is not None:
                    if static_groups:
                        index = (perm[..., col:col + 1] // g if perm is not None
                                 else torch.full(W.shape[:-2] + (1,), col // g, device=W.device))
                        scale, zero = columns(group_scales, index), columns(group_zeros, index)
                    elif col % g == 0:  # the group's current weights: pending updates applied
                        end = col + g
                        parts = [W1[..., i:min(end - i1, j2)]]
                        if end - i1 > j2:
                            stop = min(end, i2) - i1
                            parts.append(W1[..., j2:stop] - Err1[..., j1:i] @ Hinv1[..., j1:i, j2:stop])
                        if end > i2:
                            parts.append(W[..., i2:end] - Err1[..., :i] @ Hinv[..., i1:col, i2:end])
                        scale, zero = _qparams(torch.cat(parts, dim=-1), f, symmetric, scale_rule)
                w = W1[..., i:i + 1]
                q = fq(w, scale, zero)
                Q[..., col:col + 1] = q
                err = (w - q) / Hinv1[..., i:i + 1, i:i + 1]
                W1[..., i:j2] -= err @ Hinv1[..., i:i + 1, i:j2]
                Err1[..., i:i + 1] = err
            if j2 < i2 - i1:
                W1[..., j2:] -= Err1[..., j1:j2] @ Hinv1[..., j1:j2, j2:]
        if i2 < n:
            W[..., i2:] -= Err1 @ Hinv[..., i1:i2, i2:]
    if perm is not None:
        Q = columns(Q, torch.argsort(perm, dim=-1))
    return Q.to(weight.dtype)


def _channel_stat(x: torch.Tensor, channels: int | None, reduce: str) -> torch.Tensor:
    """Per input channel sum|x| or max|x| of rows whose columns are (channel, kernel position).

    ``x`` is 2-D ``(rows, columns)``, or ``(groups, rows, columns)`` for a grouped
    convolution (group ``i`` holds input channels ``i * channels / groups`` onwards): the
    result is in the input's channel order either way.
    """
    a = x.abs()
    if x.dim() == 3:
        a = a.reshape(x.shape[0], x.shape[1], channels // x.shape[0], -1)
        return (a.sum((1, 3)) if reduce == "sum" else a.amax((1, 3))).reshape(-1)
    if channels is not None and channels != x.shape[1]:
        a = a.reshape(x.shape[0], channels, -1).transpose(1, 2).reshape(-1, channels)
    return a.sum(0) if reduce == "sum" else a.amax(0)


def _expand(s: torch.Tensor, shape: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """Per-input-channel factors onto a ``(out_channels, columns)`` weight.

    A convolution's kernel positions share their channel's factor. Ungrouped: one row of
    ``columns`` factors (broadcast over the output channels); grouped (``groups`` > 1): the
    ``(out_channels, columns)`` matrix whose row ``r`` holds the factors of the input channels
    of ``r``'s group, the only ones it reads: ``W * _expand(s)`` with input channel ``c``
    divided by ``s_c`` is the same convolution, as each channel belongs to one group.
    """
    rows, columns = shape
    if groups == 1:
        return s if s.numel() == columns else s.repeat_interleave(columns // s.numel())
    per_group = s.reshape(groups, -1)
    return per_group.repeat_interleave(columns // per_group.shape[1], dim=1).repeat_interleave(rows // groups, dim=0)


def awq_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""AWQ's per-input-channel scale for one ``α``: ``s = mean|x|^α``, normalised.

    ``s = clamp(mean|x_j|^α, 1e-4)``, then ``s / sqrt(max(s) min(s))`` (the authors'
    ``auto_scale``); ``α = 0`` gives ``s = 1``.
    """
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_search(weight: torch.Tensor, gram: torch.Tensor, x_mean: torch.Tensor, quantizer: Any, *,
               n_grid: int = 20, alpha: float | None = None) -> tuple[float, torch.Tensor, list[float]]:
    r"""AWQ's activation-aware scale search for one layer.

    Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan and Han, "AWQ: Activation-aware
    Weight Quantization for LLM Compression and Acceleration", MLSys 2024 (Sec. 3.2).

    With ``s(α) = mean|x|^α`` per input channel (:func:`awq_scales`), AWQ quantizes
    ``Q(W diag(s))`` and divides the input by ``s``, and picks

    ``α* = argmin_α || X W^T - (X diag(s)^{-1}) Q(W diag(s))^T ||^2``

    over the grid ``α = i / n_grid``, ``i = 0 .. n_grid - 1`` (the authors'
    ``auto_scale``: 0, 0.05, ..., 0.95 for 20 points). With
    ``D = Q(W diag(s)) diag(s)^{-1} - W`` the error is ``X D^T``, so its mean square over
    the ``n`` rows and the output channels is ``sum((D G) ∘ D) / out_channels`` with
    ``G = X^T X / n`` (``gram``): one product per ``α`` instead of a pass over the rows.
    ``α = 0`` (``s = 1``, round to nearest) is tried first and only a strictly smaller
    error replaces it, so the chosen ``α`` never does worse than round to nearest on the
    rows ``G`` comes from (up to the float32 rounding of the products).

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_channels, columns)`` float weight.
    gram : torch.Tensor
        ``(columns, columns)``, ``X^T X / n`` of the calibration rows the error is
        measured on; ``(groups, columns, columns)`` for a grouped convolution, one per
        group of input channels (output channel ``r`` in group ``r // (out_channels /
        groups)``), the error summed over the groups.
    x_mean : torch.Tensor
        Mean ``|x|`` per input channel (``columns``, or input channels of a convolution
        whose kernel positions share the channel's scale).
    quantizer : callable
        ``quantizer(w) -> fake-quantized w`` (the config's round to nearest).
    n_grid : int, default=20
    alpha : float, optional
        Use this ``α`` instead of searching.

    Returns
    -------
    alpha : float
    s : torch.Tensor
        The per-channel scale (length of ``x_mean``).
    losses : list of float
        Mean squared output error for each ``α`` tried, in grid order.
    """
    columns = weight.shape[1]
    G = gram.to(device=weight.device, dtype=torch.float32)
    groups = G.shape[0] if G.dim() == 3 else 1
    grid = [float(alpha)] if alpha is not None else [i / n_grid for i in range(n_grid)]
    best = (None, None, float("inf"))
    losses = []
    for a in grid:
        s = awq_scales(x_mean, a)
        sc = _expand(s, (weight.shape[0], columns), groups)
        D = quantizer(weight * sc) / sc - weight
        if groups > 1:
            D = D.reshape(groups, -1, columns)
        loss = float(((D @ G) * D).double().sum() / weight.shape[0])
        losses.append(loss)
        if loss < best[2] or best[0] is None:
            best = (a, s, loss)
    return best[0], best[1], losses


def smoothquant_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5,
                       groups: int = 1) -> torch.Tensor:
    r"""SmoothQuant's per-input-channel smoothing factors.

    Xiao, Lin, Seznec, Wu, Demouth and Han, "SmoothQuant: Accurate and Efficient
    Post-Training Quantization for Large Language Models", ICML 2023 (Sec. 4, Eq. 4):

    ``s_j = max|X_j|^α / max|W_j|^(1-α)``,

    ``max|X_j|`` over the calibration tokens, ``max|W_j|`` over the output channels that
    read input ``j`` (and a convolution's kernel positions; with ``groups``, the output
    channels of ``j``'s group), both clamped to at least 1e-5 as in the authors'
    ``smooth_ln_fcs``, ``s`` too. ``Y = (X diag(s)^{-1}) (W diag(s))^T = X W^T``: the
    activation outliers move into the weight, which is then quantized.

    Parameters
    ----------
    act_absmax : torch.Tensor
        ``max|X_j|`` per input channel.
    weight : torch.Tensor
        ``(out_channels, columns)``; columns grouped per input channel for convolutions.
    alpha : float, default=0.5
        Migration strength (0: no smoothing of activations, 1: all onto the weights).
    groups : int, default=1
        A grouped convolution's groups (``weight`` is ``(out_channels, in_channels /
        groups * kernel)``).
    """
    channels = act_absmax.numel()
    if groups == 1:
        w_max = weight.abs().reshape(weight.shape[0], channels, -1).amax(dim=(0, 2))
    else:
        w = weight.abs().reshape(groups, weight.shape[0] // groups, channels // groups, -1)
        w_max = w.amax(dim=(1, 3)).reshape(-1)
    w_max = w_max.clamp(min=1e-5)
    return (act_absmax.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


def _options(config: Any, defaults: dict[str, Any], scheme: str) -> dict[str, Any]:
    given = dict(getattr(config, "options", None) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for weight scheme {scheme!r}; it takes {sorted(defaults)}.")
    return {**defaults, **given}


def _channels(layer: nn.Module) -> int | None:
    """Input channels of a convolution (its unfolded columns are channel x kernel position)."""
    return layer.in_channels if isinstance(layer, nn.modules.conv._ConvNd) else None


def _groups(layer: nn.Module) -> int:
    """A convolution's groups (1 for other layers)."""
    return layer.groups if isinstance(layer, nn.modules.conv._ConvNd) else 1


class _InputStats(WeightScheme):
    needs_inputs = True
    grouped_inputs = True
    option_defaults: dict[str, Any] = {}

    def check(self, config: Any) -> None:
        super().check(config)
        if config.weight_format is not None:
            _int_format(config.weight_format, self.name)
        opts = _options(config, self.option_defaults, self.name)
        self.check_options(opts)

    def check_options(self, opts: dict[str, Any]) -> None:
        pass

    def _rtn(self, config: Any, group_size: int | None):
        return lambda w: quantize(w, config.weight_format, axis=0, group_size=group_size,
                                  symmetric=config.weight_symmetric, scale_rule=config.weight_scale_rule)

    @staticmethod
    def _require(state: Any, name: str, scheme: str) -> None:
        if state is None or not state.get("count"):
            raise ValueError(f"Weight scheme {scheme!r} has no calibration inputs for layer {name!r}: pass "
                             "calibration_data to emulate_model.")


def _check_alpha(alpha: Any, scheme: str) -> None:
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 <= alpha <= 1):
        raise ValueError(f"{scheme}: options['alpha'] must be a number in [0, 1], got {alpha!r}.")


class GPTQScheme(_InputStats):
    """Weight scheme ``"gptq"``: :func:`gptq_quantize` with the layer's Hessian.

    ``observe`` accumulates ``H = 2 X^T X / n`` over every calibration batch in float32, as
    the authors' code (one ``X^T X`` per batch; layers fed the same input tensor, such as
    the q/k/v projections of an attention block, share it); the Cholesky factor of the
    inverse is computed in float64 (:func:`inverse_cholesky_upper`), the column loop in
    float32;
    ``quantize`` runs GPTQ with the config's format, group size, symmetry and scale rule
    and the options in :data:`GPTQ_OPTIONS`.
    """

    name = "gptq"
    option_defaults = GPTQ_OPTIONS

    def check_options(self, opts):
        if not (isinstance(opts["damp"], (int, float)) and opts["damp"] >= 0):
            raise ValueError(f"gptq: options['damp'] must be a number >= 0, got {opts['damp']!r}.")
        if not (isinstance(opts["block_size"], int) and opts["block_size"] >= 1):
            raise ValueError(f"gptq: options['block_size'] must be a positive integer, got {opts['block_size']!r}.")

    def __init__(self) -> None:
        self._shared: tuple | None = None

    def begin(self, name, layer):
        return {"H": None, "count": 0}

    def observe(self, state, x):
        x = x.detach().float()
        h = self._gram(x)
        if state["H"] is None:
            state["H"] = h.mul(2.0)
        else:
            state["H"].add_(h, alpha=2.0)
        state["count"] += x.shape[-2]

    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        """``X^T X`` in float32, computed once for layers fed the same tensor (q/k/v projections).

        The last product is kept with its input; the next layer reuses it when its input is
        the same memory (storage, offset, shape, strides) at the same version (no in-place
        change since). Holding the input keeps its memory from being reused by another tensor.
        """
        try:
            key = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), x.dtype,
                   x.device, x._version)
        except RuntimeError:  # inference tensors have no version counter: no sharing
            key = None
        if key is not None and self._shared is not None and self._shared[0] == key:
            return self._shared[2]
        h = x.mT @ x  # (groups, columns, columns) for a grouped convolution's (groups, rows, columns)
        self._shared = (key, x, h) if key is not None else None
        return h

    def quantize(self, weight, config, *, group_size, state=None, name=""):
        self._shared = None  # calibration is over: free the last input
        self._require(state, name, self.name)
        opts = _options(config, self.option_defaults, self.name)
        H = (state["H"] / state["count"]).to(weight.device)
        shape = weight.shape
        if H.dim() == 3:  # a grouped convolution: output channels by group, one Hessian each
            weight = weight.reshape(H.shape[0], -1, shape[1])
        q = gptq_quantize(weight, H, config.weight_format, group_size=group_size, symmetric=config.weight_symmetric,
                          scale_rule=config.weight_scale_rule, damp=float(opts["damp"]),
                          block_size=opts["block_size"], act_order=bool(opts["act_order"]),
                          static_groups=opts["static_groups"])
        return WeightResult(q.reshape(shape))


class AWQScheme(_InputStats):
    """Weight scheme ``"awq"``: :func:`awq_search` on the layer's calibration inputs.

    ``observe`` accumulates ``mean|x|`` per input channel over every calibration row and
    the Gram matrix ``X^T X`` of the first ``max_rows`` rows for the search; ``quantize`` returns
    ``Q(W diag(s))`` with ``input_scale = s`` (the emulated layer divides its input by
    ``s``; ``s = 1``, i.e. ``α = 0``, returns plain round to nearest and no input scale).
    The chosen ``α`` and the losses are kept in ``self.last`` (by layer name).
    """

    name = "awq"
    option_defaults = AWQ_OPTIONS

    def __init__(self) -> None:
        self.last: dict[str, dict[str, Any]] = {}

    def check_options(self, opts):
        _check_alpha(opts["alpha"], "awq")
        for key in ("n_grid", "max_rows"):
            if not (isinstance(opts[key], int) and opts[key] >= 1):
                raise ValueError(f"awq: options[{key!r}] must be a positive integer, got {opts[key]!r}.")

    def begin(self, name, layer, config=None):
        max_rows = _options(config, self.option_defaults, self.name)["max_rows"] if config is not None \
            else self.option_defaults["max_rows"]
        return {"sum": None, "count": 0, "gram": None, "kept": 0, "channels": _channels(layer),
                "groups": _groups(layer), "max_rows": max_rows}

    def observe(self, state, x):
        x = x.detach().float()
        s = _channel_stat(x, state["channels"], "sum")
        per_row = x.shape[-1] * state["groups"] // (state["channels"] or x.shape[-1])  # kernel positions
        state["sum"] = s if state["sum"] is None else state["sum"] + s
        state["count"] += x.shape[-2] * per_row
        room = state["max_rows"] - state["kept"]
        if room > 0:  # the first max_rows rows enter the search's Gram matrix (one per group)
            rows = x[..., :room, :]
            g = (rows.mT @ rows).double()
            state["gram"] = g if state["gram"] is None else state["gram"] + g
            state["kept"] += rows.shape[-2]

    def quantize(self, weight, config, *, group_size, state=None, name=""):
        self._require(state, name, self.name)
        opts = _options(config, self.option_defaults, self.name)
        gram = state["gram"] / state["kept"]
        x_mean = (state["sum"] / state["count"]).to(weight.device)
        rtn = self._rtn(config, group_size)
        alpha, s, losses = awq_search(weight, gram, x_mean, rtn, n_grid=opts["n_grid"], alpha=opts["alpha"])
        self.last[name] = {"alpha": alpha, "losses": losses}
        if torch.all(s == 1):
            return WeightResult(rtn(weight))
        return WeightResult(rtn(weight * _expand(s, weight.shape, state["groups"])), input_scale=s)


class SmoothQuantScheme(_InputStats):
    """Weight scheme ``"smoothquant"``: :func:`smoothquant_scales`, then the config's quantization.

    ``observe`` keeps ``max|x|`` per input channel; ``quantize`` returns the config's
    round-to-nearest of ``W diag(s)`` with ``input_scale = s``: the emulated layer divides
    its input by ``s`` before the activation quantizer (static observers calibrate on the
    smoothed input).
    """

    name = "smoothquant"
    option_defaults = SMOOTHQUANT_OPTIONS

    def check_options(self, opts):
        _check_alpha(opts["alpha"], "smoothquant")
        if opts["alpha"] is None:
            raise ValueError("smoothquant: options['alpha'] must be a number in [0, 1], got None.")

    def begin(self, name, layer):
        return {"max": None, "count": 0, "channels": _channels(layer), "groups": _groups(layer)}

    def observe(self, state, x):
        m = _channel_stat(x.detach().float(), state["channels"], "max")
        state["max"] = m if state["max"] is None else torch.maximum(state["max"], m)
        state["count"] += x.shape[-2]

    def quantize(self, weight, config, *, group_size, state=None, name=""):
        self._require(state, name, self.name)
        opts = _options(config, self.option_defaults, self.name)
        groups = state["groups"]
        s = smoothquant_scales(state["max"].to(weight.device), weight, float(opts["alpha"]), groups=groups)
        rtn = self._rtn(config, group_size)
        return WeightResult(rtn(weight * _expand(s, weight.shape, groups)), input_scale=s)


register_weight_scheme("gptq", GPTQScheme())
register_weight_scheme("awq", AWQScheme())
register_weight_scheme("smoothquant", SmoothQuantScheme())

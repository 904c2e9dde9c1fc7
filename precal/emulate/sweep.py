"""One call, many precisions: ``sweep(model, data, configs) -> {config: logits}``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import QuantConfig, _call, _model_device, _to_device, emulate_model, iter_batches, parse_config

__all__ = ["sweep", "predict_logits"]


def predict_logits(model: nn.Module, data: Any, *, batch_size: int = 256, device: Any = None,
                   progress: Any = None) -> np.ndarray:
    """Run ``model`` over ``data`` in batches under ``torch.no_grad()``; float32 numpy logits."""
    device = torch.device(device) if device is not None else _model_device(model)
    outputs = []
    model.eval()
    with torch.no_grad():
        for batch in iter_batches(data, batch_size):
            out = _call(model, _to_device(batch, device))
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"The model must return a logits tensor, got {type(out).__name__}.")
            outputs.append(out.detach().float().cpu())
            if progress is not None:
                progress.update(1)
    if not outputs:
        raise ValueError("data yielded no batch.")
    return torch.cat(outputs).numpy()


def sweep(
    model: nn.Module,
    data: Any,
    configs: Sequence[str | QuantConfig] = ("fp32", "bf16", "fp8_e4m3", "w8a8", "w4a8", "w4a4"),
    *,
    calibration_data: Any = None,
    batch_size: int = 256,
    device: Any = None,
    progress: bool = True,
    skip: Iterable[str] = (),
    overrides: dict[str, Any] | None = None,
    observer: str | None = None,
    n_calibration_batches: int = 8,
) -> dict[str, np.ndarray]:
    """Logits of ``model`` on ``data`` at every precision config.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified: each config runs on an emulated copy (:func:`emulate_model`).
    data : tensor, numpy array or iterable of batches (e.g. a DataLoader)
        Evaluation inputs; batches of ``(inputs, labels)`` use their first element.
    configs : sequence of str or QuantConfig
        Config names, e.g. ``["fp32", "bf16", "fp16", "fp8_e4m3", "w8a8", "w4a8", "w4a4",
        "w4a16-g128"]``.
    calibration_data : optional
        Inputs for the activation observers of ``w*a*`` configs (kept out of ``data``).
    batch_size : int, default=256
        Rows per forward pass when ``data`` is a tensor or array; memory is bounded by it.
    device : torch.device or str, optional
        Where to run; default is the model's device. Use ``"cuda"`` to run on a GPU.
    progress : bool, default=True
        Show a progress bar (tqdm) over configs and batches when stderr is a terminal.
    skip, overrides, observer, n_calibration_batches
        As in :func:`emulate_model`.

    Returns
    -------
    dict
        ``{config name: float32 ndarray (n_samples, n_outputs)}`` in the order given.

    Raises
    ------
    ValueError
        Unknown or duplicate config names, or an activation config without calibration data.
    """
    parsed = [parse_config(c) for c in configs]
    names = [c.name for c in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate config names in {names}.")
    if not parsed:
        raise ValueError("configs is empty.")
    target = torch.device(device) if device is not None else _model_device(model)
    total = None
    if isinstance(data, (torch.Tensor, np.ndarray)):
        total = len(parsed) * -(-len(data) // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI)
        bar = tqdm(total=total, desc="precal sweep", unit="batch", leave=False, disable=None)
    results: dict[str, np.ndarray] = {}
    try:
        for cfg in parsed:
            if bar is not None:
                bar.set_postfix_str(cfg.name)
            emulated = emulate_model(
                model.to(target) if _model_device(model) == target else _copy_to(model, target),
                cfg,
                calibration_data=calibration_data,
                batch_size=batch_size,
                skip=skip,
                overrides=overrides,
                observer=observer,
                n_calibration_batches=n_calibration_batches,
            )
            results[cfg.name] = predict_logits(emulated, data, batch_size=batch_size, device=target, progress=bar)
            del emulated
    finally:
        if bar is not None:
            bar.close()
    return results


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device)

"""One call, many precisions: ``sweep(model, data, configs) -> {config: logits}``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import call_model, check_batch, describe_batch, iter_batches, logits_of, to_device
from .model import QuantConfig, _model_device, _prepare, emulate_model, parse_config

__all__ = ["sweep", "predict_logits"]


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the block, the model's own mode afterwards; a graph that cannot switch
    modes (a torch.export module raises NotImplementedError) runs as it is."""
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:
        yield
        return
    try:
        yield
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, data: Any, *, batch_size: int = 256, device: Any = None,
                   progress: Any = None, output: Callable[[Any], Any] | None = None) -> np.ndarray:
    """Run ``model`` over ``data`` in batches under ``torch.no_grad()``; float32 numpy logits.

    The model runs in eval mode (its previous mode is restored afterwards). ``output``
    picks the logits from the model's output (default: see
    :func:`~precal.emulate.batches.logits_of`: a tensor, ``.logits``, ``["logits"]`` or the
    first element of a tuple). Batches are concatenated along the first axis.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    outputs = []
    with _eval_mode(model), torch.no_grad():
        for batch in iter_batches(data, batch_size):
            check_batch(batch, "data")
            out = logits_of(call_model(model, to_device(batch, device)), output)
            outputs.append(out.detach().float().cpu())
            if progress is not None:
                progress.update(1)
    if not outputs:
        raise ValueError("data yielded no batch.")
    try:
        return torch.cat(outputs).numpy()
    except RuntimeError as exc:
        shapes = sorted({tuple(o.shape) for o in outputs})[:3]
        raise ValueError(f"The logits of different batches cannot be stacked (shapes {shapes}); pass output= "
                         "to pick one row per sample, e.g. output=lambda o: o.logits[:, -1].") from exc


def _entries(configs: Any) -> list[tuple[str, QuantConfig | nn.Module]]:
    """(name, QuantConfig or model) pairs from a sequence or a mapping of configs."""
    if isinstance(configs, (str, QuantConfig)):
        configs = [configs]
    if isinstance(configs, Mapping):
        items = list(configs.items())
    else:
        items = []
        for c in configs:
            if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str):
                items.append(c)
            elif isinstance(c, Mapping):
                items.extend(c.items())
            else:
                items.append((None, c))
    entries = []
    for name, c in items:
        if isinstance(c, nn.Module):
            if not isinstance(name, str) or not name:
                raise ValueError("A model in configs needs a name: pass {'name': model} or ('name', model).")
            entries.append((name, c))
            continue
        cfg = parse_config(c)
        entries.append((name if isinstance(name, str) else cfg.name, cfg))
    return entries


def _first_batch(data: Any, what: str, n_entries: int) -> Any:
    if isinstance(data, (torch.Tensor, np.ndarray, Mapping)):
        batch = next(iter_batches(data, 2), None)
    else:
        if isinstance(data, Iterable) and not isinstance(data, (str, bytes)) and iter(data) is data:
            if n_entries > 1 or what == "data":
                raise TypeError(f"{what} is a one-shot iterator ({type(data).__name__}), but it is read more than "
                                "once: pass a list of batches, a tensor or a DataLoader.")
            return None
        batch = next(iter(iter_batches(data, 2)), None)
    if batch is None:
        raise ValueError(f"{what} yielded no batch.")
    check_batch(batch, what)
    return batch


def _same_structure(data_batch: Any, cal_batch: Any) -> None:
    a, b = describe_batch(data_batch), describe_batch(cal_batch)
    if a[0] != b[0]:
        raise ValueError(f"calibration_data batches are {b[0]}s but data batches are {a[0]}s: give the calibration "
                         "inputs the structure of the evaluation inputs.")
    if a[0] == "tensor":
        floating = data_batch.is_floating_point(), cal_batch.is_floating_point()
        if floating[0] != floating[1] or (floating[0] and a[1] != b[1]):
            raise ValueError(f"calibration_data rows have shape {b[1]} ({cal_batch.dtype}) but data rows have shape "
                             f"{a[1]} ({data_batch.dtype}).")
    elif not set(a[1]) & set(b[1]):
        raise ValueError(f"calibration_data batches have keys {list(b[1])} but data batches have {list(a[1])}.")


def _head_rows(batch: Any, n: int = 2) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in batch.items()}


def _check_sweep(model: nn.Module, data: Any, configs: Any, calibration_data: Any, skip: Iterable[str],
                 overrides: dict[str, Any] | None, observer: str | None, output: Any, predict: Any,
                 options: dict[str, Any]) -> tuple[list[tuple[str, QuantConfig | nn.Module]], Any]:
    """Every check of :func:`sweep` that needs no forward pass: ``(entries, first data batch)``."""
    entries = _entries(configs)
    if not entries:
        raise ValueError("configs is empty.")
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate config names in {names}.")
    if predict is not None and not callable(predict):
        raise TypeError(f"predict must be callable, got {type(predict).__name__}.")
    if output is not None and not callable(output):
        raise TypeError(f"output must be callable, got {type(output).__name__}.")
    if predict is None and data is None:
        raise ValueError("data is None: pass evaluation inputs, or predict=callable(model) -> logits.")
    first = None if data is None else _first_batch(data, "data", len(entries))
    emulated_cfgs = [c for _, c in entries if isinstance(c, QuantConfig)]
    for cfg in emulated_cfgs:  # every config's checks before any forward pass
        _prepare(model, cfg, calibration_data=calibration_data, skip=skip, overrides=overrides, observer=observer,
                 check_data=False, **options)
    n_uses = sum(1 for c in emulated_cfgs if not c.is_identity)
    if calibration_data is not None and n_uses:
        cal_first = _first_batch(calibration_data, "calibration_data", n_uses)
        if cal_first is not None and first is not None:
            _same_structure(first, cal_first)
    return entries, first


def _distributed_plan(ctx: Any, model: nn.Module, data: Any, configs: Any, calibration_data: Any, skip: Iterable[str],
                      overrides: dict[str, Any] | None, observer: str | None, output: Any, predict: Any,
                      options: dict[str, Any], batch_size: int, n_calibration_batches: int) -> tuple[tuple, dict]:
    """The local checks of a distributed sweep, this rank's shard, and what every rank must agree on."""
    from . import distributed as dist_

    if predict is not None:
        raise ValueError("predict= replaces the forward pass over data, which a distributed sweep cannot shard: run "
                         "it with distributed=False (every rank runs everything), or shard inside predict yourself.")
    if data is None:
        raise ValueError("data is None: a distributed sweep shards data over the ranks.")
    entries, first = _check_sweep(model, data, configs, calibration_data, skip, overrides, observer, output, predict,
                                  options)
    part, n_local, n_batches = dist_.shard(data, batch_size, ctx)
    kind, n = dist_.data_length(data)
    if calibration_data is None:
        calibration = "none"
    else:
        try:
            calibration = "{1} {0}".format(*dist_.data_length(calibration_data))
        except (TypeError, ValueError):
            calibration = type(calibration_data).__name__
    plan = {
        "configs": [f"{name}: {cfg!r}" if isinstance(cfg, QuantConfig)
                    else f"{name}: {type(cfg).__name__} {dist_.state_digest(cfg)}" for name, cfg in entries],
        "options": repr((sorted([skip] if isinstance(skip, str) else list(skip)), overrides, observer,
                         n_calibration_batches, sorted(options.items()))),
        "batch_size": batch_size,
        "input length": f"{n} {kind}",
        "input batch structure": repr(describe_batch(first)),
        "first and last inputs (digest)": dist_.inputs_digest(data, first),
        "calibration data length": calibration,
        "model weights (digest)": dist_.state_digest(model),
    }
    return (entries, first, part, n_local, n_batches), plan


def sweep(
    model: nn.Module,
    data: Any,
    configs: Any = ("fp32", "bf16", "fp8_e4m3", "w8a8", "w4a8", "w4a4"),
    *,
    calibration_data: Any = None,
    batch_size: int = 256,
    device: Any = None,
    progress: bool = True,
    skip: Iterable[str] = (),
    overrides: dict[str, Any] | None = None,
    observer: str | None = None,
    n_calibration_batches: int = 8,
    output: Callable[[Any], Any] | None = None,
    predict: Callable[[nn.Module], Any] | None = None,
    distributed: bool | None = None,
    process_group: Any = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Logits of ``model`` on ``data`` at every precision config (and of other tools' models).

    Parameters
    ----------
    model : torch.nn.Module
        Not modified: each config runs on an emulated copy (:func:`emulate_model`).
    data : tensor, numpy array, dict of tensors or iterable of batches (e.g. a DataLoader)
        Evaluation inputs. Batches of ``(inputs, labels)`` use their first element; dict
        batches (a tokenizer's output, a DataLoader of dicts) are passed as keyword
        arguments. May be None with ``predict``.
    configs : sequence or mapping
        Config names or :class:`QuantConfig`\\ s, e.g. ``["fp32", "bf16", "fp8_e4m3",
        "w8a8", "w8a8-dyn", "w4a16-g128"]``. An entry may also be a ``(name, model)`` pair
        or a ``{name: model}`` dict (or ``configs`` a mapping ``{name: config or model}``):
        such a model — quantized by torchao, llmcompressor or any other tool — runs as it
        is, on its own device, beside the emulated configs.
    calibration_data : optional
        Inputs for the activation observers of static ``w*a*`` configs (kept out of
        ``data``); same structure as ``data``.
    batch_size : int, default=256
        Rows per forward pass when ``data`` is a tensor, array or dict of tensors.
    device : torch.device or str, optional
        Where emulated configs run; default is the model's device.
    progress : bool, default=True
        Show a progress bar (tqdm) over configs and batches when stderr is a terminal.
    skip, overrides, observer, n_calibration_batches, **options
        As in :func:`emulate_model`.
    output : callable, optional
        Picks the logits from a model's output (default: the output if it is a tensor,
        else ``.logits``, ``["logits"]`` or its first element).
    predict : callable, optional
        ``predict(model) -> logits`` replaces the batched forward over ``data`` (e.g.
        ``lambda m: multiple_choice_logits(m, tokenizer, contexts, choices)``).
    distributed : bool, optional
        Data-parallel over the processes of a ``torch.distributed`` group (launched with
        ``torchrun``): each rank emulates its contiguous shard of ``data``, in whole
        batches of ``batch_size`` (:mod:`precal.emulate.distributed`), for every config,
        calibrating activation observers on the whole ``calibration_data``; the logits are
        gathered and **every rank** gets the whole dict, rows in input order, bit-identical
        to a single-process sweep with the same ``batch_size``. None (default): shard
        whenever a process group with more than one process is initialised; True: require
        one; False: never shard (every rank runs the whole sweep). Every rank must pass the
        same model, data, calibration data and configs (checked before any forward pass).
    process_group : torch.distributed.ProcessGroup, optional
        The group to shard over; default the whole world.

    Returns
    -------
    dict
        ``{name: float32 ndarray (n_samples, ...)}`` in the order given (on every rank of
        a distributed sweep).

    Raises
    ------
    ValueError, TypeError
        Before any emulated forward pass: unknown or duplicate names, unknown layer names
        or types in ``skip``/``overrides``, group sizes that do not divide a layer, data or
        calibration batches of the wrong structure, and (after one forward pass of
        ``model`` on two rows of ``data``) a model output without logits. Distributed:
        ``distributed=True`` without an initialised process group; ``predict=``; data
        without a length or in a shuffling/distributed DataLoader; ranks that disagree on
        configs, options, input length or model weights (every rank raises, before any
        forward pass); calibration that differs between ranks (before the config runs
        on ``data``). A rank that fails makes every other rank raise
        :class:`~precal.emulate.distributed.RankFailedError` (a ``RuntimeError``) naming it.
    """
    from . import distributed as dist_

    ctx = dist_.resolve(distributed, process_group)
    if ctx is None:
        entries, first = _check_sweep(model, data, configs, calibration_data, skip, overrides, observer, output,
                                      predict, options)
        local, n_local, n_batches = data, None, None
    else:
        entries, first, local, n_local, n_batches = dist_.agree(ctx, lambda: _distributed_plan(
            ctx, model, data, configs, calibration_data, skip, overrides, observer, output, predict, options,
            batch_size, n_calibration_batches))
    target = torch.device(device) if device is not None else _model_device(model)
    if first is not None and predict is None:  # one small forward of the float model: is there a logits tensor?
        with _eval_mode(model), torch.no_grad():
            logits_of(call_model(model, to_device(_head_rows(first), _model_device(model))), output)

    total = None
    if ctx is not None:
        total = len(entries) * n_local
    elif isinstance(data, (torch.Tensor, np.ndarray)) and predict is None:
        total = len(entries) * -(-len(data) // batch_size)
    bar = None
    if progress and (ctx is None or ctx.rank == 0):  # one bar, rank 0's, in a distributed sweep
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI)
        bar = tqdm(total=total, desc="precal sweep", unit="batch", leave=False, disable=None)
    results: dict[str, np.ndarray] = {}
    try:
        for name, cfg in entries:
            if bar is not None:
                bar.set_postfix_str(name)
            if ctx is not None:
                results[name] = _run_shard(ctx, model, name, cfg, local, n_local, target, calibration_data,
                                           batch_size, bar, output, dict(skip=skip, overrides=overrides,
                                           observer=observer, n_calibration_batches=n_calibration_batches,
                                           **options))
                continue
            run_model, run_device = _config_model(model, cfg, target, calibration_data, batch_size, dict(
                skip=skip, overrides=overrides, observer=observer, n_calibration_batches=n_calibration_batches,
                **options))
            if predict is not None:
                with _eval_mode(run_model), torch.no_grad():
                    out = predict(run_model)
                out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else out
                results[name] = np.asarray(out, dtype=np.float32)
            else:
                results[name] = predict_logits(run_model, data, batch_size=batch_size, device=run_device,
                                               progress=bar, output=output)
            del run_model
    finally:
        if bar is not None:
            bar.close()
    return results


def _config_model(model: nn.Module, cfg: QuantConfig | nn.Module, target: torch.device, calibration_data: Any,
                  batch_size: int, kwargs: dict[str, Any]) -> tuple[nn.Module, torch.device]:
    """The model a config runs (an emulated copy, or a given model as is) and its device."""
    if isinstance(cfg, nn.Module):
        return cfg, _model_device(cfg)
    source = model if _model_device(model) == target else copy.deepcopy(model).to(target)
    return emulate_model(source, cfg, calibration_data=calibration_data, batch_size=batch_size, **kwargs), target


def _run_shard(ctx: Any, model: nn.Module, name: str, cfg: QuantConfig | nn.Module, local: Any, n_local: int,
               target: torch.device, calibration_data: Any, batch_size: int, bar: Any, output: Any,
               kwargs: dict[str, Any]) -> np.ndarray:
    """One config of a distributed sweep: calibrate on all of calibration_data, check that every
    rank calibrated alike, run this rank's shard, gather every shard on every rank."""
    from . import distributed as dist_

    run_model, logits, error = None, None, None
    try:
        run_model, run_device = _config_model(model, cfg, target, calibration_data, batch_size, kwargs)
    except Exception as exc:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
        error = exc
    if isinstance(cfg, QuantConfig) and calibration_data is not None:  # (overrides may quantize under "fp32")
        dist_.check_calibration(ctx, run_model, name, error)
    try:
        if error is None and n_local:
            logits = predict_logits(run_model, local, batch_size=batch_size, device=run_device, progress=bar,
                                    output=output)
    except Exception as exc:  # noqa: BLE001 - as above
        error = exc
    del run_model
    return dist_.gather_rows(ctx, logits, error, name)

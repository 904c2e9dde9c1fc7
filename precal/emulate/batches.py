"""Model inputs and outputs: batches from tensors, arrays and DataLoaders; logits from outputs.

Inputs (:func:`iter_batches`): a tensor or array is cut into rows; an iterable (a
DataLoader, a list of batches) yields its items: a tensor is the model's input, a dict is
passed as keyword arguments (keys the model's ``forward`` does not take are dropped, as
the Hugging Face ``Trainer`` does, unless it takes ``**kwargs``), and a tuple or list
``(inputs, labels, ...)`` gives its first element.

Outputs (:func:`logits_of`): a tensor is the logits; otherwise ``output.logits``
(``transformers``' ``ModelOutput``), ``output["logits"]`` (a dict), or the first element of
a tuple or list; ``output=`` callables pick something else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["iter_batches", "logits_of", "check_batch", "call_model"]


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[Any]:
    """Yield model inputs from a tensor, a numpy array or an iterable of batches.

    Tensors and arrays are cut into ``batch_size`` rows, and so is a dict of tensors (a
    tokenizer's output: each batch a dict of the same keys). From an iterable (a DataLoader),
    each item is used as is if it is a tensor or a dict (passed as keyword arguments), and
    its first element if it is a tuple or list ``(inputs, labels, ...)``.
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("data must have a batch dimension.")
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    if isinstance(data, Mapping):  # a dict of whole-dataset tensors (e.g. a tokenizer's output)
        data = dict(data)
        lengths = {v.shape[0] for v in data.values() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim}
        if len(lengths) != 1:
            raise ValueError(f"A dict of inputs needs tensors with one common first dimension, got lengths "
                             f"{sorted(lengths)} for keys {sorted(data)}.")
        n = lengths.pop()
        for start in range(0, n, batch_size):
            yield {k: (torch.as_tensor(v[start : start + batch_size]) if isinstance(v, (torch.Tensor, np.ndarray))
                       and v.ndim else v) for k, v in data.items()}
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(f"data must be a tensor, an array or an iterable of batches, got {type(data).__name__}.")
    for item in data:
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError("data yielded an empty tuple/list as a batch.")
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        yield item


def check_batch(batch: Any, what: str = "data") -> None:
    """Raise ``TypeError`` unless ``batch`` is a tensor or a dict of keyword inputs with a tensor."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError(f"{what}: a batch is a 0-d tensor; batches need a batch dimension.")
        return
    if isinstance(batch, Mapping):
        if not batch or not all(isinstance(k, str) for k in batch):
            raise TypeError(f"{what}: a dict batch needs string keys (the model's keyword arguments), got "
                            f"{list(batch)[:5]}.")
        if not any(isinstance(v, torch.Tensor) for v in batch.values()):
            raise TypeError(f"{what}: a dict batch holds no tensor (keys {sorted(batch)}).")
        return
    raise TypeError(
        f"{what}: a batch must be a tensor, a numpy array, a dict of keyword inputs, or a tuple/list whose "
        f"first element is one of those; got {type(batch).__name__}."
    )


def describe_batch(batch: Any) -> tuple:
    """A batch's structure for comparing two data sources: kind, trailing shape or keys."""
    if isinstance(batch, torch.Tensor):
        return ("tensor", tuple(batch.shape[1:]))
    return ("dict", tuple(sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))))


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return batch.to(device)


_SIGNATURES: dict[Any, tuple[bool, frozenset]] = {}


def _accepted(model: nn.Module) -> tuple[bool, frozenset]:
    forward = type(model).forward
    if forward not in _SIGNATURES:
        try:
            params = inspect.signature(forward).parameters.values()
        except (TypeError, ValueError):
            _SIGNATURES[forward] = (True, frozenset())
        else:
            var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
            _SIGNATURES[forward] = (var_kw, frozenset(p.name for p in params))
    return _SIGNATURES[forward]


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a dict (keys ``forward`` does not take dropped), ``model(batch)`` otherwise."""
    if isinstance(batch, Mapping):
        var_kw, names = _accepted(model)
        if not var_kw:
            batch = {k: v for k, v in batch.items() if k in names}
        return model(**batch)
    return model(batch)


def logits_of(output: Any, pick: Callable[[Any], Any] | None = None) -> torch.Tensor:
    """The logits tensor in a model's output (see the module docstring); ``pick`` overrides the rule."""
    if pick is not None:
        output = pick(output)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        kind = type(output).__name__
        keys = f" with keys {sorted(output)}" if isinstance(output, Mapping) else ""
        raise TypeError(
            f"The model returned a {kind}{keys} with no logits tensor: return a tensor, an object with a "
            "`.logits` tensor, a dict with a 'logits' tensor or a tuple whose first element is the logits, "
            "or pass output=callable that picks the logits from the output."
        )
    return logits

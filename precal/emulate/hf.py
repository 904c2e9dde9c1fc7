"""Causal language models as classifiers: per-choice log-likelihoods of multiple-choice prompts.

:func:`multiple_choice_logits` scores a question the way lm-evaluation-harness scores
ARC, PIQA, HellaSwag or MMLU-style "loglikelihood" tasks (Gao et al., 2021-2024,
``lm_eval/models/huggingface.py``, ``_encode_pair`` and ``_loglikelihood_tokens``): for each
choice, the sum of the log-probabilities of the continuation's tokens given the context,

.. math::  \\ell_c = \\sum_{t \\in \\text{continuation}_c} \\log p(x_t \\mid x_{<t}),

optionally divided by the continuation's length in characters (the harness's ``acc_norm``)
or tokens. The ``(n_questions, n_choices)`` array is a logits matrix: its softmax is the
model's distribution over the choices, its argmax the harness's prediction, so the
calibrators and metrics of precal apply to it directly, and ``sweep(..., predict=...)``
gives it at every precision config.

One call scores questions with the same number of choices (one column per choice). PIQA
(2), HellaSwag and MMLU (4) are one call; ARC's questions have 3 to 5 choices, so they are
scored one call per choice count, each group its own logits matrix (and its own calibrator:
a calibrator is fitted to a fixed number of classes). A padded matrix is not offered: a
padding score of ``-inf`` is a probability of 0 that calibrators and log-losses reject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import logits_of

__all__ = ["multiple_choice_logits"]

_NORMALIZE = (None, "chars", "tokens")


def _encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    if hasattr(tokenizer, "encode"):
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    if callable(tokenizer):
        return lambda text: list(tokenizer(text))
    raise TypeError(f"tokenizer must have an encode() method or be a callable str -> token ids, "
                    f"got {type(tokenizer).__name__}.")


def _encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                 prefix_token: int | None) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split as lm-evaluation-harness does."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:  # trailing spaces of the context belong to the continuation
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    cont = whole[len(ctx):]
    if not context:
        if prefix_token is None:
            raise ValueError("An empty context needs a prefix token: the tokenizer has no bos/eos token id.")
        ctx = [prefix_token]
    return ctx, cont


def multiple_choice_logits(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    normalize: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    device: Any = None,
) -> np.ndarray:
    """Per-choice log-likelihoods of a causal LM, ``(n_questions, n_choices)`` float32.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM: ``model(input_ids=..., attention_mask=...)`` returns logits
        ``(batch, tokens, vocab)`` (a tensor, ``.logits`` or first element of a tuple).
    tokenizer : transformers tokenizer or callable
        Anything with ``encode(text, add_special_tokens=False)``, or a function
        ``str -> list[int]``. Its ``bos_token_id`` (else ``eos_token_id``) is the prefix
        of an empty context, its ``pad_token_id`` (else 0) pads batches on the right.
    contexts : sequence of str
        One prompt per question (e.g. ``"Question: ...\\nAnswer:"``).
    choices : sequence of sequences of str
        The continuations of each question (e.g. ``" Paris"``), the same number for all:
        group questions with other counts (ARC's 3 to 5 choices) into separate calls.
    normalize : {None, "chars", "tokens"}, default=None
        None: sum of log-probabilities (harness ``acc``); ``"chars"``: divided by the
        continuation's length in characters (harness ``acc_norm``); ``"tokens"``: by its
        number of tokens.
    batch_size : int, default=16
        Sequences per forward pass.
    max_length : int, optional
        Keep at most this many tokens of each sequence (the left is cut, as the harness
        does); default: no limit.
    device : optional
        Default: the model's device.

    Returns
    -------
    ndarray of float32, shape (n_questions, n_choices)

    Raises
    ------
    ValueError
        Mismatched lengths, a question with another number of choices, an empty
        continuation, an unknown ``normalize``.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}.")
    if isinstance(contexts, str) or isinstance(choices, str):
        raise TypeError("contexts and choices are sequences (one entry per question), not a single string.")
    if len(contexts) != len(choices):
        raise ValueError(f"contexts has {len(contexts)} questions but choices has {len(choices)}.")
    if not len(contexts):
        raise ValueError("contexts is empty.")
    counts = {len(c) for c in choices}
    if len(counts) != 1 or 0 in counts or any(isinstance(c, str) for c in choices):
        raise ValueError(f"Every question needs the same number (>= 1) of choices as a list of strings; got counts "
                         f"{sorted(counts)}. Score each group of questions with one choice count in its own call "
                         f"(ARC has 3 to 5 choices): one logits matrix per group.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    encode = _encoder(tokenizer)
    prefix = getattr(tokenizer, "bos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else pad

    requests = []  # (question, choice, input ids, number of continuation tokens, continuation)
    for i, (context, options) in enumerate(zip(contexts, choices)):
        for j, continuation in enumerate(options):
            ctx, cont = _encode_pair(encode, context, continuation, prefix)
            if not cont:
                raise ValueError(f"Question {i}, choice {j}: the continuation {continuation!r} encodes to no token.")
            ids = (ctx + cont)
            if max_length is not None:
                ids = ids[-(max_length + 1):]
            requests.append((i, j, ids[:-1], cont, continuation))

    device = torch.device(device) if device is not None else next(
        (t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    scores = np.zeros((len(contexts), counts.pop()), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(requests), batch_size):
                chunk = requests[start:start + batch_size]
                width = max(len(r[2]) for r in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (_, _, inp, _, _) in enumerate(chunk):
                    ids[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
                    mask[row, :len(inp)] = 1
                logits = logits_of(model(input_ids=ids.to(device), attention_mask=mask.to(device)))
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for row, (i, j, inp, cont, text) in enumerate(chunk):
                    n = len(cont)
                    positions = torch.arange(len(inp) - n, len(inp))
                    value = float(logprobs[row, positions, torch.tensor(cont)].double().sum())
                    if normalize == "chars":
                        value /= max(len(text), 1)
                    elif normalize == "tokens":
                        value /= n
                    scores[i, j] = value
    finally:
        model.train(was_training)
    return scores.astype(np.float32)

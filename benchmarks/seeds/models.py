"""Plain-torch definitions of the four real classifiers in ``../shared/data/models``.

Each class reproduces the architecture described in ``shared/data/models/README.md``, with
module names equal to the keys of the stored ``state_dict``, so
``model.load_state_dict(torch.load(path, weights_only=True))`` works with ``strict=True``
(the MiniLM encoder ignores the two unused keys ``pooler.dense.*`` and
``embeddings.position_ids``). No torchvision or transformers: every layer is an ``nn.Conv2d``,
``nn.Linear``, ``nn.BatchNorm2d``, ``nn.LayerNorm`` or ``nn.Embedding``, so precal's
emulator (:func:`precal.emulate.emulate_model`) finds and wraps the conv/linear layers and
folds the BatchNorms.

Models (all return logits; inputs are preprocessed by :mod:`benchmarks.seeds.data`):

* :class:`CifarResNet` -- ResNet-20/56 for CIFAR-10 (He et al., 2016, §4.2) with the
  parameter-free "option A" shortcut; :func:`cifar_resnet` builds one from its depth.
* :class:`LeNet5` -- the ReLU/max-pool LeNet-5 for 32x32 MNIST.
* :class:`MiniLMEncoder` -- the 6-layer, 384-wide post-LayerNorm BERT encoder of
  all-MiniLM-L6-v2 with mean pooling and L2 normalisation.
* :class:`MiniLMClassifier` -- that encoder plus a linear head (384 -> 3), called as
  ``model(input_ids=..., attention_mask=...)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet", "LeNet5", "MiniLMEncoder", "MiniLMClassifier"]


# --------------------------------------------------------------------------- CIFAR ResNets
class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus an option-A shortcut, then ReLU.

    Option A (He et al., 2016): identity when the shape is unchanged; otherwise the input is
    subsampled (``x[:, :, ::2, ::2]``) and zero-padded on the channel axis by
    ``out_channels // 4`` channels on each side. It has no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pad = out_channels // 4 if (stride != 1 or in_channels != out_channels) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 CIFAR images: 16 -> 32 -> 64 channels, n blocks per stage.

    Parameters
    ----------
    n_blocks : int
        Blocks per stage ``n`` (3 for ResNet-20, 9 for ResNet-56).
    n_classes : int, default=10
    """

    def __init__(self, n_blocks: int, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n_blocks, 1)
        self.layer2 = self._stage(16, 32, n_blocks, 2)
        self.layer3 = self._stage(32, 64, n_blocks, 2)
        self.linear = nn.Linear(64, n_classes)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # global average pool over the 8x8 map
        return self.linear(out)


def cifar_resnet(depth: int, n_classes: int = 10) -> CifarResNet:
    """An untrained CIFAR ResNet of ``depth = 6 n + 2`` layers (20 -> n = 3, 56 -> n = 9).

    Raises
    ------
    ValueError
        If ``depth`` is not of the form ``6 n + 2`` with ``n >= 1``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}.")
    return CifarResNet((depth - 2) // 6, n_classes)


# --------------------------------------------------------------------------- LeNet-5
class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling on 1x32x32 inputs (keys ``convnet.c1`` ... ``fc.f7``).

    conv 1->6 5x5 -> ReLU -> maxpool 2 -> conv 6->16 5x5 -> ReLU -> maxpool 2 ->
    conv 16->120 5x5 -> ReLU -> flatten -> linear 120->84 -> ReLU -> linear 84->10 (logits).
    """

    def __init__(self) -> None:
        super().__init__()
        self.convnet = nn.Sequential(OrderedDict([
            ("c1", nn.Conv2d(1, 6, 5)),
            ("relu1", nn.ReLU()),
            ("s2", nn.MaxPool2d(2, 2)),
            ("c3", nn.Conv2d(6, 16, 5)),
            ("relu3", nn.ReLU()),
            ("s4", nn.MaxPool2d(2, 2)),
            ("c5", nn.Conv2d(16, 120, 5)),
            ("relu5", nn.ReLU()),
        ]))
        self.fc = nn.Sequential(OrderedDict([
            ("f6", nn.Linear(120, 84)),
            ("relu6", nn.ReLU()),
            ("f7", nn.Linear(84, 10)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convnet(x).flatten(1))


# --------------------------------------------------------------------------- MiniLM
class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _AttentionOutput(hidden, eps)


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)


class _Output(nn.Module):
    def __init__(self, n_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Layer(nn.Module):
    """One post-LayerNorm BERT layer: self-attention + residual + LN, FFN (erf GELU) + residual + LN."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Dense(hidden, ffn)
        self.output = _Output(ffn, hidden, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        n, t, h = x.shape
        d = h // self.heads
        att = self.attention.self

        def split(v: torch.Tensor) -> torch.Tensor:
            return v.view(n, t, self.heads, d).transpose(1, 2)

        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask_bias
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, h)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(context))
        ffn = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + ffn)


class _Encoder(nn.Module):
    def __init__(self, n_layers: int, hidden: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Layer(hidden, heads, ffn, eps) for _ in range(n_layers)])


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence encoder: BERT (6 layers, 384 wide, 12 heads, FFN 1536).

    ``forward(input_ids, attention_mask)`` returns the L2-normalised mean of the last
    hidden states over positions where ``attention_mask`` is 1, shape ``(n, 384)``.
    Token type ids are all 0; positions are ``0 .. T-1``. Padded key positions get a
    very large negative attention score (``torch.finfo(float32).min``), as in BERT.
    """

    def __init__(self, *, vocab: int = 30522, hidden: int = 384, n_layers: int = 6, heads: int = 12,
                 ffn: int = 1536, max_positions: int = 512, eps: float = 1e-12) -> None:
        super().__init__()
        self.embeddings = _Embeddings(vocab, hidden, max_positions, eps)
        self.encoder = _Encoder(n_layers, hidden, heads, ffn, eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.long()
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        pooled = (x * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def load_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a BERT ``state_dict`` (``embeddings.*``, ``encoder.layer.*``), ignoring the
        unused ``pooler.*`` and ``embeddings.position_ids`` entries; strict otherwise."""
        kept = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        self.load_state_dict(kept, strict=True)


class MiniLMClassifier(nn.Module):
    """:class:`MiniLMEncoder` followed by a linear head ``logits = e W^T + b`` on the embedding.

    The head is the module ``head`` (``nn.Linear(384, n_classes)``): load
    ``fpb_minilm_head.pt`` into it with ``model.head.load_state_dict(...)``.
    """

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.encoder = MiniLMEncoder()
        self.head = nn.Linear(384, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))

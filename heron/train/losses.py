"""The training loss: summed next-token cross-entropy, optionally over chunks of positions.

``chunked_cross_entropy`` applies the output head and the cross-entropy to ``chunk`` positions
at a time under ``torch.utils.checkpoint``: the forward pass keeps only the head's input, and the
backward pass recomputes one chunk's logits at a time, so the ``[B, T, V]`` logits (and their
float32 copy) never exist whole — what dominates the memory of a 65k-vocabulary model at long
contexts. The value is the same sum of the same per-token losses (only the order of the float
additions differs).

``LossModel`` is what the trainer wraps in DDP / FSDP: ``loss_model(x, y)`` returns the summed
loss (so the head runs inside the wrapped forward, where DDP and FSDP see it), ``loss_model(x)``
the model's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["chunked_cross_entropy", "LossModel"]


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _chunk_loss(features, weight, bias, targets, ignore_index: int):
    logits = F.linear(features, weight, bias)
    return F.cross_entropy(_at_least_float32(logits), targets, ignore_index=ignore_index, reduction="sum")


def chunked_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, chunk: int, ignore_index: int = -100) -> torch.Tensor:
    """``F.cross_entropy(linear(features, weight, bias).float(), targets, reduction="sum")`` over
    chunks of ``chunk`` positions (``features [..., C]``, ``targets [...]``), each chunk's logits
    recomputed in the backward pass instead of stored. Returns a float32 scalar (float64 for
    float64 logits)."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if features.shape[:-1] != targets.shape:
        raise ValueError(f"features {tuple(features.shape)} and targets {tuple(targets.shape)} do not match")
    flat = features.reshape(-1, features.shape[-1])
    labels = targets.reshape(-1)
    total = None
    for start in range(0, flat.shape[0], chunk):
        part = checkpoint(_chunk_loss, flat[start:start + chunk], weight, bias, labels[start:start + chunk],
                          ignore_index, use_reentrant=False)
        total = part if total is None else total + part
    if total is None:  # no positions
        total = flat.sum() * 0.0
    return total


class LossModel(nn.Module):
    """``(x, y)`` -> summed cross-entropy of ``model(x)`` against ``y`` (``-100`` = unscored);
    ``x`` alone -> ``model(x)``. With ``ce_chunk > 0`` the model must offer ``features(x)`` and a
    linear ``head`` (RWKV8 does): the head and the loss then run ``ce_chunk`` positions at a time."""

    def __init__(self, model: nn.Module, vocab_size: int, task: str, ce_chunk: int = 0) -> None:
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size
        self.task = task
        self.ce_chunk = ce_chunk
        if ce_chunk and not (callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Linear)):
            raise ValueError(f"ce_chunk needs a model with features(tokens) and a linear head (RWKV8); "
                             f"{type(model).__name__} has none: set ce_chunk = 0")

    def _check_classes(self, classes: int) -> None:
        if classes < self.vocab_size:
            raise ValueError(
                f"the model predicts {classes} classes but task {self.task!r} "
                f"uses {self.vocab_size} tokens (check --model-config vocab_size)"
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return self.model(x)
        if self.ce_chunk:
            head = self.model.head
            self._check_classes(head.out_features)
            return chunked_cross_entropy(self.model.features(x), head.weight, head.bias, y, self.ce_chunk)
        logits = self.model(x)
        self._check_classes(logits.shape[-1])
        return F.cross_entropy(_at_least_float32(logits).reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=-100, reduction="sum")

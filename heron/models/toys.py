"""The official ROSA counting toys (spec/RWKV8.md §7, shared/checkpoints/README.md).

Variants (official module names, so the official state dicts load unchanged):

- ``"emb"`` (251014_rosa_onlyemb_train): ``x = e(t) + emb_rosa(t); logits = o(x)``
- ``"1bit"`` (251014_rosa_1bit_train): ``... x = x + rosa_1bit(x); logits = o(x)``
- ``"1bit_run"`` (checkpoint 251016): ``x = x + rosa1(x); x = x + lin(x); x = x + rosa2(x)``,
  1-bit layers
- ``"4bit"`` (checkpoint 251018): ``rosa1, lin, rosa2, lin1, rosa3, lin2, rosa4`` with 4-bit
  layers, every step residual

All modules keep their own torch/official initial values (``nn.Embedding`` N(0, 1),
``nn.Linear`` defaults, ``emb0 = -1e-5``, ``emb1 = +1e-5``); the official recipe trains them with
plain AdamW defaults (weight decay 0.01) and a cosine schedule from 1e-3 to 1e-6 (spec §5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heron.layers.rosa import EmbROSA, ROSABits

__all__ = ["VARIANTS", "CountingToyConfig", "CountingToy", "from_official", "load_official", "evaluate_counting"]

VARIANTS = ("emb", "1bit", "1bit_run", "4bit")

# Layer sequence per variant: ("rosa", name, bits) or ("lin", name).
_LAYOUTS = {
    "emb": [],
    "1bit": [("rosa", "rosa_1bit", 1)],
    "1bit_run": [("rosa", "rosa1", 1), ("lin", "lin"), ("rosa", "rosa2", 1)],
    "4bit": [
        ("rosa", "rosa1", 4), ("lin", "lin"), ("rosa", "rosa2", 4), ("lin", "lin1"),
        ("rosa", "rosa3", 4), ("lin", "lin2"), ("rosa", "rosa4", 4),
    ],
}


@dataclass
class CountingToyConfig:
    variant: str = "1bit"
    vocab_size: int = 11
    n_embd: int = 64
    estimator: str = "flip"
    tau: float = 1e-3
    window: int = 16

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("vocab_size", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.variant == "4bit" and self.n_embd % 4:
            raise ValueError(f"the 4bit toy needs n_embd divisible by 4, got {self.n_embd}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CountingToy(nn.Module):
    """``model(tokens [B, T], state=None, return_state=False) -> logits [B, T, V]``."""

    def __init__(self, config: CountingToyConfig | None = None, **overrides):
        super().__init__()
        config = dataclasses.replace(config or CountingToyConfig(), **overrides)
        self.config = config
        V, C = config.vocab_size, config.n_embd
        self.e = nn.Embedding(V, C)
        self.emb_rosa = EmbROSA(V, C)
        self.layout = _LAYOUTS[config.variant]
        for entry in self.layout:
            if entry[0] == "rosa":
                layer = ROSABits(C, bits=entry[2], estimator=config.estimator, tau=config.tau, window=config.window)
            else:
                layer = nn.Linear(C, C)
            self.add_module(entry[1], layer)
        self.o = nn.Linear(C, V)

    def forward(self, idx: torch.Tensor, state: list | None = None, return_state: bool = False):
        stateful = state is not None or return_state
        rosa_names = ["emb_rosa"] + [entry[1] for entry in self.layout if entry[0] == "rosa"]
        if state is not None and (not isinstance(state, list) or len(state) != len(rosa_names)):
            raise ValueError(f"state must be the list of {len(rosa_names)} ROSA layer states a previous call returned")
        states = list(state) if state is not None else [None] * len(rosa_names)
        new_states = []
        if stateful:
            emb, layer_state = self.emb_rosa(idx, states[0], return_state=True)
            new_states.append(layer_state)
        else:
            emb = self.emb_rosa(idx)
        x = self.e(idx.to(torch.int64)) + emb
        for entry in self.layout:
            layer = getattr(self, entry[1])
            if entry[0] == "lin":
                x = x + layer(x)
            elif stateful:
                out, layer_state = layer(x, states[len(new_states)], return_state=True)
                new_states.append(layer_state)
                x = x + out
            else:
                x = x + layer(x)
        logits = self.o(x)
        return (logits, new_states) if return_state else logits

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def _variant_of(state_dict: dict) -> str:
    keys = set(state_dict)
    if "lin1.weight" in keys:
        return "4bit"
    if "lin.weight" in keys:
        return "1bit_run"
    if "rosa_1bit.emb0" in keys:
        return "1bit"
    if {"e.weight", "emb_rosa.emb.weight", "o.weight"} <= keys:
        return "emb"
    raise ValueError(
        "state_dict is not a counting-toy layout: expected keys e.weight, emb_rosa.emb.weight, o.weight "
        f"(+ rosa*/lin* layers), got {sorted(keys)[:8]}..."
    )


def from_official(state_dict: dict, **config_overrides) -> CountingToy:
    """The toy whose layout matches an official counting-toy state dict, with its weights loaded
    unchanged (keys and shapes must match exactly)."""
    variant = _variant_of(state_dict)
    vocab_size, n_embd = state_dict["e.weight"].shape
    config = CountingToyConfig(variant=variant, vocab_size=int(vocab_size), n_embd=int(n_embd))
    model = CountingToy(dataclasses.replace(config, **config_overrides))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model


def load_official(path, **config_overrides) -> CountingToy:
    """Load ``251016_rosa_1bit_run.pth`` / ``251018_rosa_4bit_run.pth`` (CUDA-saved; mapped to CPU)."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return from_official(state_dict, **config_overrides)


@torch.no_grad()
def evaluate_counting(model: nn.Module, num_samples: int = 512, seed: int = 0, seq_len: int = 127,
                      batch_size: int = 128) -> dict[str, float]:
    """Next-token loss and accuracy on fresh counting samples (all ``seq_len`` positions scored)."""
    from heron.data.counting import CountingSource

    source = CountingSource(seq_len=seq_len)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total_loss, correct, scored = 0.0, 0, 0
    remaining = num_samples
    while remaining > 0:
        inputs, targets = source.batch(min(batch_size, remaining), generator)
        remaining -= inputs.shape[0]
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs).float()
        total_loss += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == targets).sum())
        scored += targets.numel()
    return {"loss": total_loss / scored, "accuracy": correct / scored}

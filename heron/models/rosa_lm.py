"""The pure ROSA language model (spec/RWKV8.md §4; official 260212 1-bit / 260222 4-bit demos).

The time-mix is replaced by a ROSA-QKV block; there is no WKV state at all:

    x = emb[tokens]; x = ln0(x)                               (block 0 only)
    per block: x = x + rosa(ln3(x)); x = x + ffn(ln2(x))      (ffn = RWKV-7 channel-mix, no enn)
    logits = head(ln_out(x))

Official key names: ``emb``, ``blocks.{i}.ln0`` (block 0), ``blocks.{i}.ln2/ln3``,
``blocks.{i}.rosa.{x_q,x_k,x_v,q,k,v,o,rosa_qkv.emb}``, ``blocks.{i}.ffn.{x_k,key,value}``,
``ln_out``, ``head`` (no bias).

ROSA conventions (spec/ROSA.md §3): 1-bit blocks map "no match" to ``-e`` (symbol 0), 4-bit
blocks to ``0`` — both are the ROSA layer's ``bits`` setting. The official demo regenerates the
whole context for every new token; here RNN mode keeps each block's online automata in the
state, so a step costs amortised near-constant time and equals GPT mode exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heron.layers.channel_mix import ChannelMix, ChannelMixState, check_token_ids
from heron.layers.time_mix import check_batch_index, check_flag, detached_cpu_copy

__all__ = ["ROSALMConfig", "ROSALM", "ROSALMState", "ROSALMBlockState"]


@dataclass
class ROSALMConfig:
    """Shape of a pure ROSA LM.

    - ``bits``: ROSA-QKV symbol width, 1 or 4 (``n_embd`` must be a multiple of ``bits``).
    - ``dim_ffn``: channel-mix width, default ``4 * n_embd``.
    - ``rosa_estimator`` / ``rosa_tau`` / ``rosa_window``: the ROSA blocks' gradient estimator
      (:mod:`heron.ops.rosa.grad`). The default is the cheap ``"window"`` estimator (the bit-flip
      finite difference truncated to ``rosa_window`` positions, O(T * window) per stream), since
      an LM trains on long contexts; ``"flip"`` is the official O(T^2) one.
    - ``rosa_qk_init``: ``"independent"`` (official: the ROSA blocks' ``q`` and ``k`` projections
      are drawn independently) or ``"tied"`` (each block's ``k`` and ``x_k`` start equal to its
      ``q`` and ``x_q``, so every channel starts as token ROSA on its own bit stream) or
      ``"shared"`` (no key projection: the keys are the queries; with the ``"value"`` estimator
      the same model as ``"tied"``, cheaper); see :class:`heron.layers.rosa.ROSAQKV` and
      docs/models.md.
    - ``rosa_max_gain``: ``None`` (the spec's unbounded estimator) or a bound on the gradient each
      ROSA block's estimator sends upstream, relative to its output gradient (docs/estimators.md,
      "Deep models").
    """

    n_layer: int
    n_embd: int
    vocab_size: int
    bits: int = 1
    dim_ffn: int | None = None
    rosa_estimator: str = "window"
    rosa_tau: float = 1e-3
    rosa_window: int = 16
    layer_norm_eps: float = 1e-5
    rosa_qk_init: str = "independent"
    rosa_max_gain: float | None = None

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ROSALMConfig.{name} must be a positive int, got {value!r}")
        if self.bits not in (1, 4):
            raise ValueError(f"ROSALMConfig.bits must be 1 or 4 (the official ROSA-QKV widths), got {self.bits!r}")
        if self.n_embd % self.bits != 0:
            raise ValueError(f"ROSALMConfig.n_embd ({self.n_embd}) must be a multiple of bits ({self.bits})")
        if self.dim_ffn is None:
            self.dim_ffn = 4 * self.n_embd
        if isinstance(self.dim_ffn, bool) or not isinstance(self.dim_ffn, int) or self.dim_ffn < 1:
            raise ValueError(f"ROSALMConfig.dim_ffn must be a positive int, got {self.dim_ffn!r}")
        if isinstance(self.rosa_window, bool) or not isinstance(self.rosa_window, int) or self.rosa_window < 1:
            raise ValueError(f"ROSALMConfig.rosa_window must be a positive int, got {self.rosa_window!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"ROSALMConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        from heron.models.rwkv8 import _check_estimator_fields

        _check_estimator_fields(self, "ROSALMConfig")
        from heron.layers.rosa import check_qk_init

        check_qk_init(self.rosa_qk_init, "ROSALMConfig.rosa_qk_init")
        from heron.models.rwkv8 import _check_max_gain

        _check_max_gain(self.rosa_max_gain, "ROSALMConfig.rosa_max_gain")

    # The channel-mix layer reads these from its config: the pure ROSA LM uses the RWKV-7 one.
    @property
    def deep_embed(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return asdict(self)


def _rosa_block_class():
    try:
        from heron.layers.rosa import ROSAQKV
    except ImportError as error:  # the ROSA layer is a separate part of the package
        raise ImportError(f"ROSALM needs heron.layers.rosa.ROSAQKV: {error}") from error
    return ROSAQKV


def _detach(value):
    # the ROSA block already stores a detached token shift; its automata hold no graph
    return value.detach() if hasattr(value, "detach") else value


@dataclass
class ROSALMBlockState:
    """RNN state of one block: the ROSA block's state (token shift + online automata) and the
    channel-mix token shift (the previous token's ``ln2`` output)."""

    rosa: Any
    ffn: ChannelMixState

    def to(self, device=None, dtype=None) -> "ROSALMBlockState":
        return ROSALMBlockState(self.rosa.to(device), self.ffn.to(device, dtype))

    def copy(self) -> "ROSALMBlockState":
        return ROSALMBlockState(self.rosa.copy(), self.ffn.copy())

    def detach(self) -> "ROSALMBlockState":
        return ROSALMBlockState(_detach(self.rosa), self.ffn.detach())

    def select(self, batch_index: torch.Tensor) -> "ROSALMBlockState":
        return ROSALMBlockState(self.rosa.select(batch_index), self.ffn.select(batch_index))


class ROSALMState:
    """The model's RNN state: one :class:`ROSALMBlockState` per block.

    The token shifts are fresh tensors on every call, but the ROSA automata advance in place
    (copying them every step would make generation quadratic): continuing a state consumes it.
    To branch (beam search, several continuations of one prompt) ``copy()`` the state first.
    """

    def __init__(self, blocks: list[ROSALMBlockState]):
        if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, ROSALMBlockState) for b in blocks):
            raise TypeError("ROSALMState(blocks) expects a list of ROSALMBlockState")
        self.blocks = list(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def batch_size(self) -> int:
        return self.blocks[0].ffn.batch_size

    def to(self, device=None, dtype=None) -> "ROSALMState":
        return ROSALMState([block.to(device, dtype) for block in self.blocks])

    def copy(self) -> "ROSALMState":
        return ROSALMState([block.copy() for block in self.blocks])

    def detach(self) -> "ROSALMState":
        return ROSALMState([block.detach() for block in self.blocks])

    def select(self, batch_index) -> "ROSALMState":
        """Reorder or subset the batch (beam search, dropping finished sequences)."""
        index = check_batch_index(batch_index, self.batch_size)
        return ROSALMState([block.select(index.to(block.ffn.x_prev.device)) for block in self.blocks])

    def state_dict(self) -> dict:
        """Plain tensors and containers (loadable with ``torch.load(weights_only=True)``)."""
        return {"n_layer": len(self.blocks),
                "blocks": [{"rosa": block.rosa.state_dict(), "ffn_x_prev": detached_cpu_copy(block.ffn.x_prev)}
                           for block in self.blocks]}

    @classmethod
    def from_state_dict(cls, data: dict, device=None) -> "ROSALMState":
        """Inverse of :meth:`state_dict` (the automata are rebuilt by replaying their histories)."""
        from heron.layers.rosa import ROSAState

        if not isinstance(data, dict) or "blocks" not in data:
            raise ValueError("ROSALMState.from_state_dict expects the dict written by ROSALMState.state_dict()")
        blocks = []
        for layer, entry in enumerate(data["blocks"]):
            missing = {"rosa", "ffn_x_prev"} - set(entry)
            if missing:
                raise ValueError(f"state block {layer} is missing {sorted(missing)}")
            blocks.append(ROSALMBlockState(ROSAState.from_state_dict(entry["rosa"], device),
                                           ChannelMixState(entry["ffn_x_prev"].to(device))))
        return cls(blocks)

    def save(self, path) -> None:
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path, device=None) -> "ROSALMState":
        return cls.from_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True), device=device)


class ROSALMBlock(nn.Module):
    def __init__(self, config: ROSALMConfig, layer_id: int):
        super().__init__()
        eps = config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(config.n_embd, eps=eps)
        self.ln2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.ln3 = nn.LayerNorm(config.n_embd, eps=eps)
        self.rosa = _rosa_block_class()(config.n_embd, bits=config.bits, estimator=config.rosa_estimator,
                                        tau=config.rosa_tau, window=config.rosa_window,
                                        qk_init=config.rosa_qk_init, max_gain=config.rosa_max_gain)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x, state: ROSALMBlockState | None, return_state: bool):
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        if state is None and not return_state:
            x = x + self.rosa(self.ln3(x))
            return x + self.ffn(self.ln2(x)), None
        # continuing a state always goes through the stateful path (the automata advance)
        rosa_state = state.rosa if state is not None else None
        ffn_state = state.ffn if state is not None else None
        rosa_out, new_rosa = self.rosa(self.ln3(x), state=rosa_state, return_state=True)
        x = x + rosa_out
        ffn_out, new_ffn = self.ffn(self.ln2(x), None, ffn_state, return_state=True)
        return x + ffn_out, ROSALMBlockState(new_rosa, new_ffn)


class ROSALM(nn.Module):
    """Pure ROSA language model; see the module docstring.

    - GPT mode ``model(tokens [B, T], state=None, return_state=False)`` -> ``logits [B, T, V]``
      or ``(logits, state)``, continuing ``state`` (``None`` = empty history);
    - RNN mode ``model.step(token_ids [B], state=None)`` -> ``(logits [B, V], state)``.
    """

    def __init__(self, config: ROSALMConfig):
        super().__init__()
        if not isinstance(config, ROSALMConfig):
            raise TypeError(f"config must be a ROSALMConfig, got {type(config).__name__}")
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(ROSALMBlock(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def _check_state(self, state, batch_size: int) -> None:
        if not isinstance(state, ROSALMState):
            raise TypeError(f"state must be a ROSALMState or None, got {type(state).__name__}")
        if len(state) != self.config.n_layer:
            raise ValueError(f"state has {len(state)} blocks, the model has n_layer={self.config.n_layer}")
        if state.batch_size != batch_size:
            raise ValueError(f"state has batch size {state.batch_size}, tokens have {batch_size}")

    def forward(self, tokens: torch.Tensor, state: ROSALMState | None = None, return_state: bool = False):
        """``tokens [B, T]`` -> ``logits [B, T, V]`` (or ``(logits, state)``), continuing ``state``."""
        check_flag(return_state, "return_state")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] == 0:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor [B, T] with T >= 1, got {got}")
        tokens = check_token_ids(tokens, self.config.vocab_size, tuple(tokens.shape), name="tokens", check_range=True)
        if state is not None:
            self._check_state(state, tokens.shape[0])
        x = self.emb(tokens)
        new_blocks = []
        for layer, block in enumerate(self.blocks):
            x, new_block = block(x, state.blocks[layer] if state is not None else None, return_state)
            new_blocks.append(new_block)
        logits = self.head(self.ln_out(x))
        return (logits, ROSALMState(new_blocks)) if return_state else logits

    def step(self, token_ids: torch.Tensor, state: ROSALMState | None = None):
        """RNN mode: one token per sequence, ``token_ids [B]`` -> ``(logits [B, V], state)``."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            got = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"token_ids must be an integer tensor [B], got {got}")
        logits, new_state = self.forward(token_ids[:, None], state, return_state=True)
        return logits[:, 0], new_state

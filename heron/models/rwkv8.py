"""The RWKV-8 "Heron" model (spec/RWKV8.md §4): time-mix x070 + channel-mix x080 with DeepEmbed,
optionally a ROSA-QKV block beside every time-mix.

    x = emb[tokens]; x = ln0(x)                                  (block 0, when config.ln0)
    per block: x = x + att(ln1(x)) [+ rosa(ln3(x))]; x = x + ffn(ln2(x))
    logits = head(ln_out(x))

Official key names (``emb``, ``blocks.{i}.ln0/ln1/ln2/ln3``, ``blocks.{i}.att.*``,
``blocks.{i}.ffn.*``, ``blocks.{i}.rosa.*``, ``ln_out``, ``head``), so rc00 checkpoints load with
``load_state_dict`` unchanged and the task layout through a key renaming.

Two modes on the same weights:
- GPT mode ``model(tokens [B, T], state=None, return_state=False)``: training and prefill;
- RNN mode ``model.step(token_ids [B], state=None) -> (logits [B, V], state)``: generation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heron.layers.channel_mix import ChannelMix, ChannelMixState, check_token_ids
from heron.layers.side_stream import join_side_stream, launch_on_side_stream
from heron.layers.time_mix import (
    TimeMix,
    TimeMixState,
    check_batch_index,
    check_flag,
    detached_cpu_copy,
    wkv_state_dtype,
)

__all__ = ["RWKV8Config", "RWKV8", "State", "BlockState", "Block", "default_lora_rank"]

ROSA_KINDS = {None: 0, "qkv1": 1, "qkv4": 4}


def _check_max_gain(value, name: str) -> None:
    """``None`` or a positive finite number (the ROSA estimators' gain bound)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be None or a positive finite number, got {value!r}")


def _check_estimator_fields(config, owner: str) -> None:
    """``rosa_estimator`` and ``rosa_tau`` are checked even for a model without ROSA blocks, so a
    typo fails where it is made rather than when ROSA is switched on later. The ROSA layers'
    own :class:`~heron.ops.rosa.grad.EstimatorConfig` does the checking; its message ("estimator
    must ...", "tau must ...") gets the config field's name."""
    from heron.ops.rosa.grad import EstimatorConfig

    try:
        EstimatorConfig(config.rosa_estimator, config.rosa_tau)
    except ValueError as exc:
        raise ValueError(f"{owner}.rosa_{exc}") from None


def default_lora_rank(n_embd: int, factor: float) -> int:
    """Spec §5: ``max(32, round(factor * sqrt(C) / 32) * 32)`` (2.5 decay and in-context rate,
    1.7 value, 5 gate)."""
    return max(32, int(round(factor * math.sqrt(n_embd) / 32)) * 32)


@dataclass
class RWKV8Config:
    """Shape and layout of an RWKV-8 model. ``None`` fields take their documented defaults.

    - ``dim_ffn``: channel-mix width, default ``4 * n_embd``.
    - ``lora_rank_decay / _iclr / _value / _gate``: time-mix LoRA ranks, defaults from spec §5.
    - ``rosa``: ``None`` or ``"qkv1"`` / ``"qkv4"``: a ROSA-QKV block (``ln3``, ``rosa``) beside
      every time-mix; ``rosa_estimator``/``rosa_tau`` configure its gradient estimator;
      ``rosa_qk_init`` its initial key projection: ``"independent"`` (official), ``"tied"``
      (``k``/``x_k`` start equal to ``q``/``x_q``) or ``"shared"`` (no key projection: the keys
      are the queries, token ROSA per channel; with the ``"value"`` estimator the same model as
      ``"tied"``, cheaper; see :class:`heron.layers.rosa.ROSAQKV`);
      ``rosa_max_gain`` (default ``None``, the spec's unbounded estimator) bounds the gradient each
      ROSA block's estimator sends upstream to that many times its output gradient: without it the
      estimator's gain compounds through the layers of a deep model (docs/estimators.md).
    - ``deep_embed``: x080 channel-mix with the ``enn`` table (else the RWKV-7 channel-mix);
      ``deep_embed_on_cpu`` keeps the table in CPU memory whatever device the model moves to.
    - ``ln0``: LayerNorm right after the embedding (rc00 layout; the task models have none).
    - ``head_bias``: the output projection has a bias (task models).
    - ``layer0_value_lora``: block 0 keeps ``v0 v1 v2`` (unused), as the task checkpoints store them.
    - ``layer_norm_eps`` for ``ln0..ln3, ln_out``; ``ln_x_eps`` for the time-mix GroupNorm.
    """

    n_layer: int
    n_embd: int
    vocab_size: int
    head_size: int = 64
    dim_ffn: int | None = None
    lora_rank_decay: int | None = None
    lora_rank_iclr: int | None = None
    lora_rank_value: int | None = None
    lora_rank_gate: int | None = None
    rosa: str | None = None
    rosa_estimator: str = "flip"
    rosa_tau: float = 1e-3
    deep_embed: bool = True
    deep_embed_on_cpu: bool = False
    ln0: bool = True
    head_bias: bool = False
    layer0_value_lora: bool = False
    layer_norm_eps: float = 1e-5
    ln_x_eps: float = 64e-5
    rosa_qk_init: str = "independent"
    rosa_max_gain: float | None = None

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "vocab_size", "head_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RWKV8Config.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.head_size != 0:
            raise ValueError(f"RWKV8Config.n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        if self.dim_ffn is None:
            self.dim_ffn = 4 * self.n_embd
        defaults = {"lora_rank_decay": 2.5, "lora_rank_iclr": 2.5, "lora_rank_value": 1.7, "lora_rank_gate": 5.0}
        for name, factor in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default_lora_rank(self.n_embd, factor))
        for name in ("dim_ffn", *defaults):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RWKV8Config.{name} must be a positive int, got {value!r}")
        if self.rosa not in ROSA_KINDS:
            raise ValueError(f"RWKV8Config.rosa must be None, 'qkv1' or 'qkv4', got {self.rosa!r}")
        if self.rosa == "qkv4" and self.n_embd % 4 != 0:
            raise ValueError(f"RWKV8Config.n_embd must be a multiple of 4 for rosa='qkv4', got {self.n_embd}")
        from heron.layers.rosa import check_qk_init

        check_qk_init(self.rosa_qk_init, "RWKV8Config.rosa_qk_init")
        _check_max_gain(self.rosa_max_gain, "RWKV8Config.rosa_max_gain")
        for name in ("deep_embed", "deep_embed_on_cpu", "ln0", "head_bias", "layer0_value_lora"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RWKV8Config.{name} must be a bool, got {getattr(self, name)!r}")
        if self.deep_embed_on_cpu and not self.deep_embed:
            raise ValueError("RWKV8Config.deep_embed_on_cpu needs deep_embed=True")
        _check_estimator_fields(self, "RWKV8Config")
        for name in ("layer_norm_eps", "ln_x_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RWKV8Config.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def rosa_bits(self) -> int:
        return ROSA_KINDS[self.rosa]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RWKV8Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RWKV8Config fields: {unknown}")
        return cls(**data)


def _copy_rosa_state(rosa_state):
    return None if rosa_state is None else rosa_state.copy()


@dataclass
class BlockState:
    """RNN state of one block: time-mix, channel-mix and (with ROSA) the ROSA block's state."""

    att: TimeMixState
    ffn: ChannelMixState
    rosa: Any = None

    def to(self, device=None, dtype=None) -> "BlockState":
        rosa = None if self.rosa is None else self.rosa.to(device)
        return BlockState(self.att.to(device, dtype), self.ffn.to(device, dtype), rosa)

    def copy(self) -> "BlockState":
        return BlockState(self.att.copy(), self.ffn.copy(), _copy_rosa_state(self.rosa))

    def detach(self) -> "BlockState":
        rosa = self.rosa.detach() if self.rosa is not None and hasattr(self.rosa, "detach") else self.rosa
        return BlockState(self.att.detach(), self.ffn.detach(), rosa)


class State:
    """The model's RNN state: one :class:`BlockState` per block, batch-major tensors.

    Per block: ``att.x_prev [B, C]`` and ``ffn.x_prev [B, C]`` (the previous token's ``ln1``/``ln2``
    output, activation dtype), ``att.wkv [B, H, N_v, N_k]`` (float32; float64 for float64 models)
    and, with ROSA, the ROSA block's state (``heron.layers.rosa.ROSAState``: the token shift, the
    previous ``ln3`` output, and one online automaton per stream).
    The model returns new states and never modifies the tensors passed in; the ROSA automata are
    the exception: they advance in place (copying them every step would make generation
    quadratic), so the returned state shares them with the one passed in. ``copy()`` a ROSA state
    before reusing it (branching, beam search).
    """

    def __init__(self, blocks: list[BlockState]):
        if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, BlockState) for b in blocks):
            raise TypeError("State(blocks) expects a list of BlockState")
        self.blocks = list(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __repr__(self) -> str:
        if not self.blocks:
            return "State(n_layer=0)"
        att = self.blocks[0].att
        return (f"State(n_layer={len(self.blocks)}, batch_size={self.batch_size}, "
                f"x_prev={att.x_prev.dtype}, wkv={att.wkv.dtype}, device={att.wkv.device}, "
                f"rosa={self.blocks[0].rosa is not None})")

    @property
    def batch_size(self) -> int:
        return self.blocks[0].att.batch_size

    @property
    def device(self) -> torch.device:
        return self.blocks[0].att.wkv.device

    def to(self, device=None, dtype=None) -> "State":
        """A copy on ``device``; ``dtype`` converts the ``x_prev`` entries (WKV stays float32,
        or float64 for float64)."""
        return State([block.to(device, dtype) for block in self.blocks])

    def copy(self) -> "State":
        return State([block.copy() for block in self.blocks])

    def detach(self) -> "State":
        """Cut the autograd graph (truncated backprop through time)."""
        return State([block.detach() for block in self.blocks])

    def select(self, batch_index) -> "State":
        """Reorder or subset the batch (beam search, dropping finished sequences)."""
        batch_size = self.batch_size
        index = check_batch_index(batch_index, batch_size)
        selected = []
        for block in self.blocks:
            idx = index.to(block.att.wkv.device)
            rosa = None if block.rosa is None else block.rosa.select(index, batch_size)
            selected.append(BlockState(block.att.select(idx), block.ffn.select(idx), rosa))
        return State(selected)

    @classmethod
    def zeros(cls, config: RWKV8Config, batch_size: int, device=None, dtype=torch.float32) -> "State":
        """The zero state (what ``state=None`` means); with ROSA, the block states start empty."""
        if config.rosa is not None:
            raise ValueError("State.zeros: a ROSA model's initial state is made by the model; pass state=None")
        C, H, N = config.n_embd, config.n_head, config.head_size
        blocks = [
            BlockState(
                TimeMixState(torch.zeros(batch_size, C, device=device, dtype=dtype),
                             torch.zeros(batch_size, H, N, N, device=device, dtype=wkv_state_dtype(dtype))),
                ChannelMixState(torch.zeros(batch_size, C, device=device, dtype=dtype)),
            )
            for _ in range(config.n_layer)
        ]
        return cls(blocks)

    # official flat list -------------------------------------------------------------------------

    def to_official(self, batch_index: int | None = None) -> list[torch.Tensor]:
        """The official flat list of ``3 * n_layer`` tensors (``att_x_prev [C]``,
        ``att_kv [H, N_v, N_k]``, ``ffn_x_prev [C]`` per layer) for one sequence of the batch
        (``batch_index``; may be omitted when the batch has one sequence)."""
        if any(block.rosa is not None for block in self.blocks):
            raise ValueError("the official flat state list has no place for ROSA state; use state_dict()")
        if batch_index is None:
            if self.batch_size != 1:
                raise ValueError(f"batch_index is required for a state of batch size {self.batch_size}")
            batch_index = 0
        if not 0 <= batch_index < self.batch_size:
            raise ValueError(f"batch_index must be in [0, {self.batch_size}), got {batch_index}")
        flat = []
        for block in self.blocks:
            flat += [block.att.x_prev[batch_index].clone(), block.att.wkv[batch_index].clone(),
                     block.ffn.x_prev[batch_index].clone()]
        return flat

    @classmethod
    def from_official(cls, flat: list[torch.Tensor], device=None, dtype=None) -> "State":
        """Build a batch-1 state from the official flat list (``dtype`` converts the ``x_prev``
        entries; WKV states keep float32, or become float64 when ``dtype`` is float64)."""
        if not isinstance(flat, (list, tuple)) or len(flat) % 3 != 0 or not flat:
            raise ValueError("the official state must be a non-empty list of 3 * n_layer tensors")
        blocks = []
        for layer in range(len(flat) // 3):
            att_x, att_kv, ffn_x = flat[3 * layer: 3 * layer + 3]
            for name, tensor, dims in (("att_x_prev", att_x, 1), ("att_kv", att_kv, 3), ("ffn_x_prev", ffn_x, 1)):
                if not isinstance(tensor, torch.Tensor) or tensor.dim() != dims:
                    raise ValueError(f"official state entry {3 * layer} ({name}, layer {layer}) must be a "
                                     f"{dims}-D tensor")
            if att_kv.shape[1] != att_kv.shape[2] or att_kv.shape[0] * att_kv.shape[1] != att_x.shape[0]:
                raise ValueError(f"layer {layer}: att_kv {tuple(att_kv.shape)} does not match att_x_prev "
                                 f"{tuple(att_x.shape)}")
            x_dtype = dtype if dtype is not None else att_x.dtype
            blocks.append(BlockState(
                TimeMixState(att_x.to(device=device, dtype=x_dtype)[None].clone(),
                             att_kv.to(device=device, dtype=wkv_state_dtype(x_dtype))[None].clone()),
                ChannelMixState(ffn_x.to(device=device, dtype=x_dtype)[None].clone()),
            ))
        return cls(blocks)

    # serialisation -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain tensors and containers (loadable with ``torch.load(weights_only=True)``)."""
        out = {"n_layer": len(self.blocks), "blocks": []}
        for block in self.blocks:
            entry = {"att_x_prev": detached_cpu_copy(block.att.x_prev), "att_kv": detached_cpu_copy(block.att.wkv),
                     "ffn_x_prev": detached_cpu_copy(block.ffn.x_prev)}
            if block.rosa is not None:
                entry["rosa"] = block.rosa.state_dict()
            out["blocks"].append(entry)
        return out

    @classmethod
    def from_state_dict(cls, data: dict, device=None) -> "State":
        """Inverse of :meth:`state_dict` (ROSA automata are rebuilt by replaying their histories)."""
        if not isinstance(data, dict) or "blocks" not in data:
            raise ValueError("State.from_state_dict expects the dict written by State.state_dict()")
        blocks = []
        for layer, entry in enumerate(data["blocks"]):
            missing = {"att_x_prev", "att_kv", "ffn_x_prev"} - set(entry)
            if missing:
                raise ValueError(f"state block {layer} is missing {sorted(missing)}")
            rosa = None
            if "rosa" in entry:
                from heron.layers.rosa import ROSAState

                rosa = ROSAState.from_state_dict(entry["rosa"], device)
            blocks.append(BlockState(
                TimeMixState(entry["att_x_prev"].to(device), entry["att_kv"].to(device)),
                ChannelMixState(entry["ffn_x_prev"].to(device)),
                rosa,
            ))
        return cls(blocks)

    def save(self, path) -> None:
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path, device=None) -> "State":
        return cls.from_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True), device=device)


def _rosa_block_class():
    try:
        from heron.layers.rosa import ROSAQKV
    except ImportError as error:  # the ROSA layer is a separate part of the package
        raise ImportError(f"RWKV8Config.rosa needs heron.layers.rosa.ROSAQKV: {error}") from error
    return ROSAQKV


class Block(nn.Module):
    def __init__(self, config: RWKV8Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        eps = config.layer_norm_eps
        if layer_id == 0 and config.ln0:
            self.ln0 = nn.LayerNorm(config.n_embd, eps=eps)
        self.ln1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.ln2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)
        self.has_rosa = config.rosa is not None
        if self.has_rosa:
            self.ln3 = nn.LayerNorm(config.n_embd, eps=eps)
            self.rosa = _rosa_block_class()(config.n_embd, bits=config.rosa_bits,
                                            estimator=config.rosa_estimator, tau=config.rosa_tau,
                                            qk_init=config.rosa_qk_init, max_gain=config.rosa_max_gain)
        # an execution setting, not part of the model: see RWKV8.overlap_rosa
        self.rosa_overlap = False

    def forward(self, x, token_ids, v_first, state: BlockState | None, return_state: bool):
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        att_state = state.att if state is not None else None
        ffn_state = state.ffn if state is not None else None
        if self.has_rosa and self.rosa_overlap and state is None and not return_state and x.is_cuda:
            # the ROSA block is queued first, on the side stream, so that it runs beside the time-mix
            rosa_out = launch_on_side_stream(self.rosa, self.ln3(x))
            att_out, v_first = self.att(self.ln1(x), v_first, None)
            x = x + att_out + join_side_stream(rosa_out)
            return x + self.ffn(self.ln2(x), token_ids, None), v_first, None
        if return_state:
            att_out, v_first, new_att = self.att(self.ln1(x), v_first, att_state, return_state=True)
        else:
            att_out, v_first = self.att(self.ln1(x), v_first, att_state)
        new_rosa = None
        if self.has_rosa:
            # the ROSA block reads the same block input as the time-mix (they run side by side)
            rosa_state = state.rosa if state is not None else None
            if return_state:
                rosa_out, new_rosa = self.rosa(self.ln3(x), state=rosa_state, return_state=True)
            else:
                rosa_out = self.rosa(self.ln3(x), state=rosa_state)
            x = x + att_out + rosa_out
        else:
            x = x + att_out
        if return_state:
            ffn_out, new_ffn = self.ffn(self.ln2(x), token_ids, ffn_state, return_state=True)
            return x + ffn_out, v_first, BlockState(new_att, new_ffn, new_rosa)
        return x + self.ffn(self.ln2(x), token_ids, ffn_state), v_first, None


class RWKV8(nn.Module):
    """RWKV-8 language model; see the module docstring. Plain ``nn.Module``, ``[B, T, C]``
    activations; the initial parameter values are the modules' official values (task recipe),
    ``heron.models.init.init_lm_recipe`` applies the language-model recipe."""

    def __init__(self, config: RWKV8Config):
        super().__init__()
        if not isinstance(config, RWKV8Config):
            raise TypeError(f"config must be an RWKV8Config, got {type(config).__name__}")
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head_bias)

    def overlap_rosa(self, enabled: bool = True) -> "RWKV8":
        """Run each ROSA block on a second CUDA stream, beside its block's time-mix (both read the
        block input; ``heron.layers.side_stream``), in GPT-mode calls on CUDA without a state.
        The same numbers either way: an execution setting, like ``torch.compile``, that
        changes neither the parameters nor the state dict. No effect on the CPU, in RNN mode or
        without ROSA blocks. Returns the model."""
        if not isinstance(enabled, bool):
            raise TypeError(f"overlap_rosa: enabled must be a bool, got {type(enabled).__name__}")
        for block in self.blocks:
            block.rosa_overlap = enabled
        return self

    def _check_state(self, state, batch_size: int) -> None:
        if not isinstance(state, State):
            raise TypeError(f"state must be a heron.models.rwkv8.State or None, got {type(state).__name__}")
        if len(state) != self.config.n_layer:
            raise ValueError(f"state has {len(state)} blocks, the model has n_layer={self.config.n_layer}")
        if state.batch_size != batch_size:
            raise ValueError(f"state has batch size {state.batch_size}, tokens have {batch_size}")
        if self.config.rosa is not None and any(block.rosa is None for block in state.blocks):
            raise ValueError("state lacks the ROSA block states this ROSA model needs")

    def forward(self, tokens: torch.Tensor, state: State | None = None, return_state: bool = False):
        """``tokens [B, T]`` -> ``logits [B, T, V]`` (or ``(logits, state)``), continuing ``state``."""
        if check_flag(return_state, "return_state"):
            features, new_state = self.features(tokens, state, return_state=True)
            return self.head(features), new_state
        return self.head(self.features(tokens, state))

    def features(self, tokens: torch.Tensor, state: State | None = None, return_state: bool = False):
        """The head's input ``ln_out(x) [B, T, C]`` (or ``(features, state)``): ``forward`` is
        ``head(features(...))``. Training with a large vocabulary applies the head in chunks of
        positions (``heron.train.losses.chunked_cross_entropy``) so the logits never exist whole."""
        check_flag(return_state, "return_state")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] == 0:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor [B, T] with T >= 1, got {got}")
        if tokens.device != self.emb.weight.device:
            raise ValueError(f"tokens are on {tokens.device} but the model is on {self.emb.weight.device}")
        tokens = check_token_ids(tokens, self.config.vocab_size, tuple(tokens.shape), name="tokens", check_range=True)
        if state is not None:
            self._check_state(state, tokens.shape[0])
        x = self.emb(tokens)
        v_first = None
        new_blocks = []
        for layer, block in enumerate(self.blocks):
            block_state = state.blocks[layer] if state is not None else None
            x, v_first, new_block = block(x, tokens, v_first, block_state, return_state)
            new_blocks.append(new_block)
        features = self.ln_out(x)
        if return_state:
            return features, State(new_blocks)
        return features

    def step(self, token_ids: torch.Tensor, state: State | None = None):
        """RNN mode: one token per sequence, ``token_ids [B]`` -> ``(logits [B, V], state)``."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            got = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"token_ids must be an integer tensor [B], got {got}")
        logits, new_state = self.forward(token_ids[:, None], state, return_state=True)
        return logits[:, 0], new_state

    def zero_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The state ``state=None`` stands for, on the model's device and dtype by default."""
        weight = self.emb.weight
        return State.zeros(self.config, batch_size, device=device or weight.device, dtype=dtype or weight.dtype)

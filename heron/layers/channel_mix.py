"""Channel mixing: RWKV-8 "x080" with DeepEmbed, or the RWKV-7 one without it (spec/RWKV8.md §3).

    xx = shift(x) - x;  h = relu(key(x + xx * x_k)) ** 2;  out = value(h) [* enn[token_id]]

The layer reads the normalised block input (token shift acts after ``ln2``); its RNN state is the
previous token's normalised input.

DeepEmbed (``enn``, a ``[V, C]`` table) is only ever indexed by the current token, so it can stay
in CPU memory while the rest of the model lives on the GPU: with ``deep_embed_on_cpu`` the table
ignores device moves (``model.to("cuda")`` keeps it on the CPU, dtype changes still apply), and
each forward gathers the rows of the batch's tokens on the CPU and copies only those to the
activations' device. Gradients flow back into the CPU table through the copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .time_mix import check_batch_index, check_flag, check_layer_input, orthogonal_init_

__all__ = ["ChannelMix", "ChannelMixState", "check_token_ids"]


def check_token_ids(token_ids, vocab_size: int, shape: tuple[int, ...], name: str = "token_ids",
                    check_range: bool = False) -> torch.Tensor:
    """Raise a clear TypeError/ValueError unless ``token_ids`` is an integer tensor of ``shape``
    (with ``check_range``, also unless every id lies in ``[0, vocab_size)``; that check reads the
    values, a device sync on GPU, and is skipped while ``torch.compile`` traces). Returns the ids
    as an embedding index: int8/int16/uint8 ids become int64 (``nn.Embedding`` takes int32/int64)."""
    if not isinstance(token_ids, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of shape {list(shape)}, got {type(token_ids).__name__}")
    if token_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor (token ids in [0, {vocab_size})), got dtype {token_ids.dtype}")
    if tuple(token_ids.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(token_ids.shape)}")
    if check_range and token_ids.numel() and not torch.compiler.is_compiling():
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} must lie in [0, {vocab_size}), found values in [{low}, {high}]")
    return token_ids if token_ids.dtype in (torch.int64, torch.int32) else token_ids.long()


@dataclass
class ChannelMixState:
    """RNN state of one channel-mix layer: ``x_prev [B, C]``, the previous token's normalised input."""

    x_prev: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.x_prev.shape[0]

    def to(self, device=None, dtype=None) -> "ChannelMixState":
        return ChannelMixState(self.x_prev.to(device=device, dtype=dtype))

    def copy(self) -> "ChannelMixState":
        return ChannelMixState(self.x_prev.clone())

    def detach(self) -> "ChannelMixState":
        return ChannelMixState(self.x_prev.detach())

    def select(self, batch_index: torch.Tensor) -> "ChannelMixState":
        """Reorder/subset the batch: integer rows or a boolean mask (:func:`check_batch_index`)."""
        return ChannelMixState(self.x_prev[check_batch_index(batch_index, self.x_prev.shape[0]).to(self.x_prev.device)])


class ChannelMix(nn.Module):
    """Channel mixing. ``config`` needs ``n_embd, dim_ffn, vocab_size, deep_embed`` and optionally
    ``deep_embed_on_cpu``. ``forward(x, token_ids=None, state=None, return_state=False)`` returns
    ``out`` or ``(out, new_state)``; ``token_ids [B, T]`` are required with DeepEmbed.
    """

    def __init__(self, config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_embd = config.n_embd
        self.dim_ffn = config.dim_ffn
        self.vocab_size = config.vocab_size
        self.x_k = nn.Parameter(torch.empty(1, 1, config.n_embd))
        self.key = nn.Linear(config.n_embd, config.dim_ffn, bias=False)
        self.value = nn.Linear(config.dim_ffn, config.n_embd, bias=False)
        self.deep_embed = bool(config.deep_embed)
        self.deep_embed_on_cpu = self.deep_embed and bool(getattr(config, "deep_embed_on_cpu", False))
        if self.deep_embed:
            self.enn = nn.Embedding(config.vocab_size, config.n_embd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official module values of the task scripts: ``x_k = 0``, ``key`` orthogonal with gain 2,
        ``value = 0``; DeepEmbed starts at ones so the layer starts as the RWKV-7 channel-mix."""
        self.x_k.zero_()
        orthogonal_init_(self.key.weight, 2.0)
        self.value.weight.zero_()
        if self.deep_embed:
            self.enn.weight.fill_(1.0)

    def _apply(self, fn, recurse=True):
        if not self.deep_embed_on_cpu:
            return super()._apply(fn, recurse)
        # Keep the DeepEmbed table out of device moves: apply everything else, then learn the
        # dtype ``fn`` would give from an empty probe and convert the table on the CPU.
        table = self._modules.pop("enn")
        try:
            super()._apply(fn, recurse)
        finally:
            self._modules["enn"] = table
        weight = table.weight
        target_dtype = fn(torch.empty(0, dtype=weight.dtype)).dtype
        if target_dtype != weight.dtype:
            weight.data = weight.data.to(target_dtype)
            if weight.grad is not None:
                weight.grad = weight.grad.to(target_dtype)
        return self

    def zero_state(self, batch_size: int, device=None, dtype=torch.float32) -> ChannelMixState:
        return ChannelMixState(torch.zeros(batch_size, self.n_embd, device=device, dtype=dtype))

    def deep_embed_rows(self, token_ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``enn[token_ids]`` on ``like``'s device and dtype (gathered on the CPU when offloaded)."""
        table_device = self.enn.weight.device
        rows = self.enn(token_ids.to(table_device))
        return rows.to(device=like.device, dtype=like.dtype, non_blocking=True)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None,
                state: ChannelMixState | None = None, return_state: bool = False):
        check_layer_input(x, self.n_embd)
        check_flag(return_state, "return_state")
        B, T, C = x.shape
        if self.deep_embed:
            if token_ids is None:
                raise ValueError("token_ids [B, T] are required by the DeepEmbed channel-mix")
            # The range check reads the ids: free on the CPU (where DeepEmbed tables usually live),
            # a device sync on a GPU, where the models check their tokens once instead of per layer.
            on_cpu = isinstance(token_ids, torch.Tensor) and not token_ids.is_cuda
            token_ids = check_token_ids(token_ids, self.vocab_size, (B, T), check_range=on_cpu)
        if state is not None:
            if not isinstance(state, ChannelMixState):
                raise TypeError(f"state must be a ChannelMixState or None, got {type(state).__name__}")
            if not isinstance(state.x_prev, torch.Tensor) or not state.x_prev.is_floating_point():
                got = state.x_prev.dtype if isinstance(state.x_prev, torch.Tensor) else type(state.x_prev).__name__
                raise TypeError(f"state.x_prev must be a floating-point tensor [{B}, {C}], got {got}")
            if tuple(state.x_prev.shape) != (B, C):
                raise ValueError(f"state.x_prev must have shape [{B}, {C}], got {tuple(state.x_prev.shape)}")
            if state.x_prev.device != x.device:
                raise ValueError(f"state.x_prev must be on the input's device {x.device}")
            x_prev = state.x_prev.to(x.dtype)
        else:
            x_prev = x.new_zeros(B, C)
        shifted = torch.cat([x_prev.unsqueeze(1), x[:, :-1]], dim=1)
        mixed = x + (shifted - x) * self.x_k
        hidden = torch.relu(self.key(mixed)) ** 2
        out = self.value(hidden)
        if self.deep_embed:
            out = out * self.deep_embed_rows(token_ids, out)
        if return_state:
            return out, ChannelMixState(x[:, -1].clone())  # a view would pin the whole [B, T, C] input
        return out

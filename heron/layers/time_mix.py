"""RWKV-7 time mixing "x070", the sequence mixer RWKV-8 keeps (spec/RWKV8.md §2).

The layer reads the *normalised* block input (token shift acts after ``ln1``), so its RNN state
holds the previous token's normalised input and the WKV matrix state.

Conventions: activations ``[B, T, C]``; the WKV state is ``[B, H, N_v, N_k]`` in float32 (float64
when the layer runs in float64); ``w`` is the log of the log-decay (decay = exp(-exp(w))), the
in-context update vectors are ``a = -kk`` and ``b = kk * a_lr`` as in the official kernels.
Parameter names and shapes follow the official checkpoints (``x_r ... [1, 1, C]``, LoRA factors
``w1 [C, D]``/``w2 [D, C]``, ``r_k [H, N]``), so official state dicts load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heron.ops.wkv7 import wkv7, wkv7_step

__all__ = ["TimeMix", "TimeMixState", "check_batch_index", "check_layer_input", "orthogonal_init_", "wkv_state_dtype"]


def check_layer_input(x, n_embd: int, name: str = "x") -> None:
    """Raise a clear TypeError/ValueError unless ``x`` is a floating ``[B, T, n_embd]`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, T, {n_embd}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3 or x.shape[-1] != n_embd or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape [B, T, {n_embd}] with T >= 1, got {tuple(x.shape)}")


def check_flag(value, name: str) -> bool:
    """``return_state`` and similar switches: a bool, not any truthy object (a state passed in
    the wrong position would otherwise be read as ``True``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def detached_cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy with its own compact storage, for state dicts: a view (such as the last
    position of a prefill's activations) would otherwise carry its whole base tensor into the file."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def check_batch_index(batch_index, batch_size: int, name: str = "batch_index") -> torch.Tensor:
    """The rows a state's ``select`` keeps, as a 1-D int64 CPU tensor: integer indices in
    ``[0, batch_size)`` (any order, repeats allowed), or a boolean mask of ``batch_size`` rows (the
    rows where it is true, as ``x[mask]``). Floats are refused rather than truncated."""
    index = torch.as_tensor(batch_index)
    if index.numel() == 0 and index.dtype != torch.bool:
        index = index.to(torch.int64)  # torch.as_tensor([]) is float32
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype == torch.bool:
        if index.numel() != batch_size:
            raise ValueError(f"{name}: a boolean mask needs one entry per row ({batch_size}), got {index.numel()}")
        return index.cpu().nonzero().squeeze(1)
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"{name} must hold integers or be a boolean mask, got dtype {index.dtype}")
    index = index.to("cpu", torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch_size):
        raise ValueError(f"{name} must lie in [0, {batch_size}), got {index.tolist()}")
    return index


def wkv_state_dtype(activation_dtype: torch.dtype) -> torch.dtype:
    """The WKV state stays float32 for reduced precision (as in the official kernels), float64 for float64."""
    return torch.float64 if activation_dtype == torch.float64 else torch.float32


@dataclass
class TimeMixState:
    """RNN state of one time-mix layer.

    ``x_prev [B, C]``: the previous token's normalised input (activation dtype);
    ``wkv [B, H, N_v, N_k]``: the WKV matrix state (float32, float64 for float64 models).
    """

    x_prev: torch.Tensor
    wkv: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.x_prev.shape[0]

    def to(self, device=None, dtype=None) -> "TimeMixState":
        """Move to ``device``; ``dtype`` converts ``x_prev`` and keeps the WKV state's precision rule."""
        x_prev = self.x_prev.to(device=device, dtype=dtype)
        wkv_dtype = wkv_state_dtype(dtype) if dtype is not None else self.wkv.dtype
        return TimeMixState(x_prev, self.wkv.to(device=device, dtype=wkv_dtype))

    def copy(self) -> "TimeMixState":
        return TimeMixState(self.x_prev.clone(), self.wkv.clone())

    def detach(self) -> "TimeMixState":
        return TimeMixState(self.x_prev.detach(), self.wkv.detach())

    def select(self, batch_index: torch.Tensor) -> "TimeMixState":
        """Reorder/subset the batch (beam search, dropping finished sequences): integer rows or a
        boolean mask (:func:`check_batch_index`)."""
        index = check_batch_index(batch_index, self.x_prev.shape[0]).to(self.x_prev.device)
        return TimeMixState(self.x_prev[index], self.wkv[index])


@torch.no_grad()
def orthogonal_init_(tensor: torch.Tensor, gain: float) -> torch.Tensor:
    """``nn.init.orthogonal_`` for any float dtype (QR needs float32/64: draw there, then copy)."""
    if tensor.dtype in (torch.float32, torch.float64):
        return nn.init.orthogonal_(tensor, gain=gain)
    draw = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
    nn.init.orthogonal_(draw, gain=gain)
    return tensor.copy_(draw)


def _ortho_(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Orthogonal init with the official LoRA gain rule: sqrt(rows/cols) for tall matrices, times ``scale``."""
    rows, cols = tensor.shape
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    return orthogonal_init_(tensor, gain * scale)


class TimeMix(nn.Module):
    """x070 time mixing. ``config`` needs ``n_embd, head_size, n_layer``, the LoRA ranks
    ``lora_rank_decay, lora_rank_iclr, lora_rank_value, lora_rank_gate``, ``ln_x_eps`` and
    ``layer0_value_lora`` (keep ``v0 v1 v2`` in layer 0, unused, as the task checkpoints do).

    ``forward(x, v_first=None, state=None, return_state=False)`` returns ``(out, v_first)`` or
    ``(out, v_first, new_state)``: layer 0 produces ``v_first`` (its values), later layers
    need it (``[B, T, C]``).
    """

    def __init__(self, config, layer_id: int):
        super().__init__()
        n_embd, head_size = config.n_embd, config.head_size
        if n_embd % head_size != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of head_size ({head_size})")
        if not 0 <= layer_id < config.n_layer:
            raise ValueError(f"layer_id must be in [0, {config.n_layer}), got {layer_id}")
        self.layer_id = layer_id
        self.n_layer = config.n_layer
        self.n_embd = n_embd
        self.head_size = head_size
        self.n_head = n_embd // head_size
        self.mixes_value_with_first_layer = layer_id > 0
        has_value_lora = layer_id > 0 or bool(getattr(config, "layer0_value_lora", False))

        def vector():
            return nn.Parameter(torch.empty(1, 1, n_embd))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vector() for _ in range(6))
        rank_decay, rank_iclr = config.lora_rank_decay, config.lora_rank_iclr
        rank_value, rank_gate = config.lora_rank_value, config.lora_rank_gate
        self.w0 = vector()
        self.w1 = nn.Parameter(torch.empty(n_embd, rank_decay))
        self.w2 = nn.Parameter(torch.empty(rank_decay, n_embd))
        self.a0 = vector()
        self.a1 = nn.Parameter(torch.empty(n_embd, rank_iclr))
        self.a2 = nn.Parameter(torch.empty(rank_iclr, n_embd))
        if has_value_lora:
            self.v0 = vector()
            self.v1 = nn.Parameter(torch.empty(n_embd, rank_value))
            self.v2 = nn.Parameter(torch.empty(rank_value, n_embd))
        self.g1 = nn.Parameter(torch.empty(n_embd, rank_gate))
        self.g2 = nn.Parameter(torch.empty(rank_gate, n_embd))
        self.k_k = vector()
        self.k_a = vector()
        self.r_k = nn.Parameter(torch.empty(self.n_head, head_size))
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.key = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(n_embd, n_embd, bias=False)
        self.output = nn.Linear(n_embd, n_embd, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, n_embd, eps=config.ln_x_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official module initial values (spec §5), used as-is by the task recipe."""
        C, N, L = self.n_embd, self.head_size, self.n_layer
        ratio_0_to_1 = self.layer_id / (L - 1) if L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - self.layer_id / L
        channel = torch.arange(C, dtype=torch.float64)
        ddd = (channel / C).view(1, 1, C)
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(self, name).copy_(1.0 - torch.pow(ddd, power * ratio_1_to_almost0))
        linear = channel / (C - 1) - 0.5 if C > 1 else torch.zeros_like(channel)
        centred = ((channel % N) - (N - 1) / 2) / ((N - 1) / 2) if N > 1 else torch.zeros_like(channel)
        zigzag = centred * centred.abs()
        position = channel / (C - 1) if C > 1 else torch.zeros_like(channel)
        decay_speed = -6 + 6 * position ** (1 + ratio_0_to_1**0.3)
        self.w0.copy_((decay_speed + 0.5 + 2.5 * zigzag).view(1, 1, C))
        self.a0.copy_((-0.19 + 0.3 * zigzag + 0.4 * linear).view(1, 1, C))
        if hasattr(self, "v0"):
            self.v0.copy_((0.73 - 0.4 * linear).view(1, 1, C))
            self.v1.zero_()
            _ortho_(self.v2, 0.1)
        self.k_k.copy_((0.71 - 0.1 * linear).view(1, 1, C))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        for first, second in ((self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)):
            first.zero_()
            _ortho_(second, 0.1)
        bound = 1.0 / math.sqrt(C)
        self.receptance.weight.uniform_(-0.5 * bound, 0.5 * bound)
        self.key.weight.uniform_(-0.05 * bound, 0.05 * bound)
        self.value.weight.uniform_(-0.5 * bound, 0.5 * bound)
        self.output.weight.zero_()
        self.ln_x.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=torch.float32) -> TimeMixState:
        H, N = self.n_head, self.head_size
        return TimeMixState(
            torch.zeros(batch_size, self.n_embd, device=device, dtype=dtype),
            torch.zeros(batch_size, H, N, N, device=device, dtype=wkv_state_dtype(dtype)),
        )

    def _check_state(self, state, x: torch.Tensor) -> None:
        if not isinstance(state, TimeMixState):
            raise TypeError(f"state must be a TimeMixState or None, got {type(state).__name__}")
        B = x.shape[0]
        H, N = self.n_head, self.head_size
        for name in ("x_prev", "wkv"):
            value = getattr(state, name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"state.{name} must be a floating-point tensor, got {got}")
        if tuple(state.x_prev.shape) != (B, self.n_embd):
            raise ValueError(f"state.x_prev must have shape [{B}, {self.n_embd}], got {tuple(state.x_prev.shape)}")
        if tuple(state.wkv.shape) != (B, H, N, N):
            raise ValueError(f"state.wkv must have shape [{B}, {H}, {N}, {N}], got {tuple(state.wkv.shape)}")
        if state.x_prev.device != x.device or state.wkv.device != x.device:
            raise ValueError(f"state tensors must be on the input's device {x.device}")

    def forward(self, x: torch.Tensor, v_first: torch.Tensor | None = None, state: TimeMixState | None = None,
                return_state: bool = False):
        check_layer_input(x, self.n_embd)
        check_flag(return_state, "return_state")
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        if self.mixes_value_with_first_layer:
            if not isinstance(v_first, torch.Tensor) or v_first.shape != x.shape or not v_first.is_floating_point():
                got = (f"{v_first.dtype} {tuple(v_first.shape)}" if isinstance(v_first, torch.Tensor)
                       else type(v_first).__name__)
                raise ValueError(f"v_first must be layer 0's values (floating point) of shape {tuple(x.shape)} for layer "
                                 f"{self.layer_id}, got {got}")
        if state is not None:
            self._check_state(state, x)
            x_prev, wkv_state = state.x_prev.to(x.dtype), state.wkv
        else:
            x_prev, wkv_state = x.new_zeros(B, C), None

        shifted = torch.cat([x_prev.unsqueeze(1), x[:, :-1]], dim=1)
        delta = shifted - x
        xr = x + delta * self.x_r
        xw = x + delta * self.x_w
        xk = x + delta * self.x_k
        xv = x + delta * self.x_v
        xa = x + delta * self.x_a
        xg = x + delta * self.x_g

        r = self.receptance(xr)
        w = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5
        k = self.key(xk)
        v = self.value(xv)
        if self.mixes_value_with_first_layer:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        else:
            v_first = v
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0)
        k = k * (1 + (iclr - 1) * self.k_a)
        r4, k4, v4 = r.view(B, T, H, N), k.view(B, T, H, N), v.view(B, T, H, N)
        iclr4 = iclr.view(B, T, H, N)

        if T == 1:
            # the state's precision follows the activations (the rule GPT mode applies), whatever
            # dtype the caller's state came in: a half state would make the step run in half
            state_dtype = wkv_state_dtype(x.dtype)
            if wkv_state is None:
                wkv_state = x.new_zeros(B, H, N, N, dtype=state_dtype)
            wkv_state = wkv_state.to(state_dtype)
            y, new_wkv = wkv7_step(
                r4[:, 0], w.view(B, H, N), k4[:, 0], v4[:, 0], -kk[:, 0], kk[:, 0] * iclr4[:, 0], wkv_state,
            )
            y = y.to(x.dtype).view(B, 1, C)
        else:
            # Under autocast the projections come out in bf16/fp16 while the decay/LoRA math is
            # fp32: the kernel takes one input dtype, that of r (its state stays fp32).
            kernel_dtype = r4.dtype
            y, new_wkv = wkv7(r4, *(t.to(kernel_dtype) for t in (w.view(B, T, H, N), k4, v4, -kk, kk * iclr4)),
                              state=wkv_state, return_state=True)
            y = y.reshape(B, T, C)

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r4 * k4 * self.r_k).sum(dim=-1, keepdim=True) * v4
        y = y + bonus.view(B, T, C)
        out = self.output(y * g)
        if not return_state:
            return out, v_first
        # the state keeps its autograd graph (callers detach for truncated backprop) and follows
        # the precision rule even when the caller passed a state of another dtype
        new_state = TimeMixState(x[:, -1].clone(), new_wkv.to(wkv_state_dtype(x.dtype)))
        return out, v_first, new_state

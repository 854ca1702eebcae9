"""WKV7 for generation: one step (RNN mode) or a few steps, any batch size, any device.

A handful of batched matrix products per step and no per-call set-up, so a decode step costs a
few microseconds of kernel launches instead of the chunked path's fixed overhead.
"""

from __future__ import annotations

import torch


def wkv7_step(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on ``[B, H, N]`` inputs and a ``[B, H, N_v, N_k]`` state; returns ``(y, new_state)``.

    Arithmetic in the state's dtype (float32, or float64); ``y`` has the dtype of ``r``.
    """
    _check_step(r, w, k, v, a, b, state)
    out_dtype, compute = r.dtype, state.dtype
    r, w, k, v, a, b = (x.to(compute) for x in (r, w, k, v, a, b))
    decay = torch.exp(-torch.exp(w))
    removal = state @ a.unsqueeze(-1)  # [B, H, N_v, 1]
    new_state = (
        state * decay.unsqueeze(-2)
        + removal * b.unsqueeze(-2)
        + v.unsqueeze(-1) * k.unsqueeze(-2)
    )
    y = (new_state @ r.unsqueeze(-1)).squeeze(-1)
    return y.to(out_dtype), new_state


def _check_step(r, w, k, v, a, b, state) -> None:
    """Shapes and dtypes, named: a mismatched state would otherwise broadcast across the batch."""
    named = (("r", r), ("w", w), ("k", k), ("v", v), ("a", a), ("b", b), ("state", state))
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if r.dim() != 3:
        raise ValueError(f"r must be [B, H, N], got shape {tuple(r.shape)}")
    for name, tensor in named[1:6]:
        if tensor.shape != r.shape:
            raise ValueError(f"{name} must have r's shape {tuple(r.shape)}, got {tuple(tensor.shape)}")
    B, H, N = r.shape
    if tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"state must be [B, H, N, N] = {[B, H, N, N]}, got {list(state.shape)}")


def wkv7_steps(r, w, k, v, a, b, state):
    """The step recurrence over ``[B, T, H, N]`` inputs (short sequences); ``(y, final_state)``."""
    outputs = []
    for t in range(r.shape[1]):
        y_t, state = wkv7_step(r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t], state)
        outputs.append(y_t)
    if not outputs:
        return r.new_zeros(r.shape), state
    return torch.stack(outputs, dim=1).to(r.dtype), state

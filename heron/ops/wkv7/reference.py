"""The WKV7 recurrence written step by step (spec/RWKV8.md §2): the reference every fast path
is tested against. Official conventions: ``w`` is the log of the log-decay (decay =
exp(-exp(w))), ``a``/``b`` are the in-context update vectors (the model passes ``a = -kk`` and
``b = kk * a_lr``), inputs are ``[B, T, H, N]`` and the state is ``[B, H, N_v, N_k]``.
"""

from __future__ import annotations

import torch


def wkv7_reference(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(y, final_state)``; arithmetic in float64 for float64 inputs, else float32.

    ``y`` has the dtype of ``r``; the state is float64 for float64 inputs, else float32.
    Differentiable through autograd (slow; for tests).
    """
    B, T, H, N = r.shape
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    out_dtype = r.dtype
    r, w, k, v, a, b = (t.to(compute) for t in (r, w, k, v, a, b))
    if state is None:
        S = torch.zeros(B, H, N, N, dtype=compute, device=r.device)
    else:
        S = state.to(compute)
    decay = torch.exp(-torch.exp(w))
    ys = []
    for t in range(T):
        # S[..., i, j]: i indexes values, j indexes keys.
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = (
            S * decay[:, t, :, None, :]
            + sa[..., :, None] * b[:, t, :, None, :]
            + v[:, t, :, :, None] * k[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    return y.to(out_dtype), S

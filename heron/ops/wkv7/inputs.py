"""Random WKV7 inputs drawn as ANCHORS.md prescribes (shared by the tests and the benchmark)."""

from __future__ import annotations

import torch


def random_inputs(B, T, H, N, *, dtype=torch.float64, device="cpu", seed=0, with_state=True,
                  draw_on_device=False):
    """``(r, w, k, v, a, b, state)``: r, k ~ N(0, 0.5^2), v ~ N(0, 1), w = -softplus(-u) - 0.5
    with u ~ N(-1, 1), kk L2-normalised N(0, 1) per head, a = -kk, b = kk * sigmoid(N(0, 1)),
    state ~ N(0, 0.3^2) (float32, float64 for float64 inputs) or None.

    Drawn in float64 on the CPU (reproducible everywhere) unless ``draw_on_device``, which draws
    in float32 on ``device`` (fast for benchmark-sized tensors)."""
    draw_device = torch.device(device) if draw_on_device else torch.device("cpu")
    draw_dtype = torch.float32 if draw_on_device else torch.float64
    generator = torch.Generator(device=draw_device).manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, device=draw_device, dtype=draw_dtype)

    r = normal(B, T, H, N) * 0.5
    k = normal(B, T, H, N) * 0.5
    v = normal(B, T, H, N)
    w = -torch.nn.functional.softplus(-(normal(B, T, H, N) - 1.0)) - 0.5
    kk = torch.nn.functional.normalize(normal(B, T, H, N), dim=-1)
    a = -kk
    b = kk * torch.sigmoid(normal(B, T, H, N))
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    state = (normal(B, H, N, N) * 0.3).to(state_dtype).to(device) if with_state else None
    tensors = tuple(x.to(dtype).to(device).contiguous() for x in (r, w, k, v, a, b))
    return tensors + (state,)

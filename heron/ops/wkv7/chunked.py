"""Chunked pure-PyTorch WKV7: the CPU path (and the generic fallback on any device).

The recurrence of one head, with ``S`` the ``[N_v, N_k]`` state, is

    S_t = S_{t-1} (diag(d_t) + a_t b_t^T) + v_t k_t^T,      y_t = S_t r_t,

with ``d_t = exp(-exp(w_t))``. Inside a chunk of ``L`` steps starting from ``S_0``, write
``g_t`` for the inclusive cumulative log-decay and ``h_t = S_{t-1} a_t`` for the in-context
"removal" vector. Unrolling gives

    h_t = S_0 (a_t * e^{g_{t-1}}) + sum_{s<t} h_s <a_t, b_s e^{g_{t-1}-g_s}> + v_s <a_t, k_s e^{g_{t-1}-g_s}>

which is a unit lower-triangular linear system for the ``h`` of the whole chunk (a WY-style
representation, solved by substitution), after which the outputs and the state at the chunk's
end are plain matrix products:

    y = (r e^{g}) S_0^T + M_rb h + M_rk v,      S_L = S_0 diag(e^{g_L}) + (v^T k + h^T b) e^{g_L - g}.

Everything that does not depend on ``S_0`` is formed for all chunks at once; only the
``[N, N]`` state is carried sequentially from chunk to chunk (a few small batched products per
chunk).

Numerical safety: every decay factor that appears is ``exp`` of a *difference* of cumulative
log-decays taken in the causal direction, so it lies in ``[0, 1]`` and nothing is ever divided
by a small cumulative decay. The triangular system is solved by substitution, which stays
exact when consecutive ``kk`` directions are aligned (series-type inverses do not). When the
cumulative log-decay inside every chunk stays above ``-FACTORED_LOG_DECAY_LIMIT``, the
differences are factored as ``e^{g_t} * e^{-g_s}`` (products of moderate numbers, fast matrix
products); otherwise the exact pairwise form ``exp(g_t - g_s)`` is used, which cannot overflow
whatever the decay.
"""

from __future__ import annotations

import contextlib

import torch

DEFAULT_CHUNK_LENGTH = 16
# exp(40) ~ 2e17: factors this large times O(1) inputs stay far from float32 overflow and the
# matching e^{g} ~ 4e-18 far from its underflow, so the factored form is exact to rounding.
FACTORED_LOG_DECAY_LIMIT = 40.0
# Per-step log-decays are floored here: exp(-30) ~ 1e-13 (float32) and exp(-200) (float64) are
# far below the rounding of anything they multiply, so the result is unchanged, while the
# cumulative sums inside a chunk stay small enough that their differences keep their precision.
LOG_DECAY_FLOOR = {torch.float32: -30.0, torch.float64: -200.0}


def _pairwise_coupling(left, left_log, right, right_log, mask):
    """``[..., t, s] = sum_j left[t, j] right[s, j] exp(left_log[t, j] - right_log[s, j])`` where
    ``mask[t, s]``, else 0; the exponent is formed pairwise, so it can never overflow."""
    diff = left_log.unsqueeze(-2) - right_log.unsqueeze(-3)
    # Mathematically <= 0 where used; clamp so rounding can never produce a factor > 1.
    diff = diff.clamp(max=0.0).masked_fill(~mask[..., None], float("-inf"))
    return (left.unsqueeze(-2) * right.unsqueeze(-3) * diff.exp()).sum(-1)


def wkv7_chunked(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_length: int = DEFAULT_CHUNK_LENGTH,
    force_pairwise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked WKV7 on ``[B, T, H, N]`` inputs; returns ``(y, final_state)``.

    Arithmetic in float64 for float64 inputs, else float32; ``y`` has the input dtype and the
    state ``[B, H, N_v, N_k]`` is float32 (float64). Differentiable through autograd in every
    input including ``state``. Inputs are assumed validated (see ``heron.ops.wkv7.wkv7``).

    Autocast is off inside: it would run the matrix products below in bfloat16/float16 against
    the float32 state (the in-place ``baddbmm_`` then refuses the mixed dtypes).
    """
    with without_autocast(r.device):
        return _wkv7_chunked(r, w, k, v, a, b, state, chunk_length, force_pairwise)


def without_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (nothing where it has no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _wkv7_chunked(r, w, k, v, a, b, state, chunk_length, force_pairwise):
    B, T, H, N = r.shape
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    device = r.device
    if state is None:
        state = torch.zeros(B, H, N, N, dtype=compute, device=device)
    else:
        state = state.to(compute)
    if r.numel() == 0:  # T, B, H or N is 0
        return r.new_zeros(B, T, H, N), state

    L = chunk_length
    num_chunks = (T + L - 1) // L
    padding = num_chunks * L - T
    C, BH = num_chunks, B * H

    def prepare(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, N] -> chunk-major [C, B*H, L, N], so the sequential pass over chunks reads
        # contiguous blocks; padded steps have k = v = a = b = r = 0 and log-decay 0, so they
        # leave the state untouched.
        x = x.to(compute)
        if padding:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, padding))
        return x.reshape(B, C, L, H, N).permute(1, 0, 3, 2, 4).reshape(C, BH, L, N)

    r_, k_, v_, a_, b_ = (prepare(x) for x in (r, k, v, a, b))
    log_decay = prepare((-torch.exp(w.to(compute))).clamp(min=LOG_DECAY_FLOOR[compute]))

    g = log_decay.cumsum(-2)  # inclusive cumulative log-decay within each chunk
    g_last = g[..., -1:, :]

    pairwise = force_pairwise or bool((g_last.detach().min() < -FACTORED_LOG_DECAY_LIMIT).item())
    decay_to = g.exp()  # e^{g_t}; e^{g_{t-1}} is the same shifted by one step (1 at the start)
    decay_end = g_last.exp()  # [C, BH, 1, N_k]
    a_decayed = a_ * torch.nn.functional.pad(decay_to[..., :-1, :], (0, 0, 1, 0), value=1.0)  # reads S_0 into h_t
    r_decayed = r_ * decay_to  # r_t e^{g_t}: reads S_0 into y_t
    strict = torch.ones(L, L, dtype=torch.bool, device=device).tril(-1)
    inclusive = torch.ones(L, L, dtype=torch.bool, device=device).tril(0)
    if pairwise:
        g_excl = torch.nn.functional.pad(g[..., :-1, :], (0, 0, 1, 0))  # g_{t-1}
        m_ab = _pairwise_coupling(a_, g_excl, b_, g, strict)  # h_t <- h_s
        m_ak = _pairwise_coupling(a_, g_excl, k_, g, strict)  # h_t <- v_s
        m_rb = _pairwise_coupling(r_, g, b_, g, inclusive)  # y_t <- h_s
        m_rk = _pairwise_coupling(r_, g, k_, g, inclusive)  # y_t <- v_s
        to_end = (g_last - g).clamp(max=0.0).exp()
        b_to_end = b_ * to_end
        k_to_end = k_ * to_end
    else:
        # e^{-g_s} (at most e^{FACTORED_LOG_DECAY_LIMIT} here) as a reciprocal of e^{g_s}: one
        # exp fewer over the whole input, equal to rounding
        b_undecayed = b_ / decay_to
        k_undecayed = k_ / decay_to
        b_to_end = b_undecayed * decay_end  # b_s e^{g_L - g_s}: carries h_s to the chunk's end
        k_to_end = k_undecayed * decay_end
        # Contiguous [N, L] operands: batched matmuls with a transposed operand are several
        # times slower on CPU.
        b_undecayed = b_undecayed.transpose(-1, -2).contiguous()
        k_undecayed = k_undecayed.transpose(-1, -2).contiguous()
        m_ab = (a_decayed @ b_undecayed).masked_fill(~strict, 0.0)
        m_ak = (a_decayed @ k_undecayed).masked_fill(~strict, 0.0)
        m_rb = (r_decayed @ b_undecayed).masked_fill(~inclusive, 0.0)
        m_rk = (r_decayed @ k_undecayed).masked_fill(~inclusive, 0.0)

    # Solve (I - M_ab) [U | Hv] = [a_decayed | M_ak V]: h_t = S_0 u_t + hv_t.
    # (I - M_ab)^{-1} by a triangular solve against the identity (substitution: exact even for
    # aligned kk directions, unlike a Neumann-type product); solving for the L x L inverse and
    # multiplying afterwards is much faster on CPU than solving for the 2N right-hand sides.
    eye = torch.eye(L, dtype=compute, device=device)
    system = eye - m_ab
    inverse = torch.linalg.solve_triangular(
        system, eye.expand_as(system), upper=False, unitriangular=True
    )
    u = inverse @ a_decayed
    hv = (inverse @ m_ak) @ v_  # L x L products first: cheaper than inverse @ (M_ak V)
    y_free = m_rk @ v_  # the S_0-free part of y

    # Carry the state from chunk to chunk, batched over B*H; the S_0-free parts of h and y were
    # formed for all chunks at once above. Per chunk: h = Hv + U S_0^T,
    # y = M_rk V + R_decayed S_0^T + M_rb h, then S_L = S_0 diag(e^{g_L}) + V^T K_to_end +
    # h^T B_to_end (accumulated in place into the freshly decayed state). Two products per chunk
    # rather than one on concatenated operands: the concatenations cost more than the extra
    # calls. unbind once: indexing chunk c inside the loop would make autograd scatter every
    # chunk's gradient into a full-size zero tensor (quadratic in C).
    per_chunk = [x.unbind(0) for x in (u, r_decayed, hv, y_free, v_.transpose(-1, -2), k_to_end, b_to_end,
                                        m_rb, decay_end)]
    outputs = []
    current = state.reshape(BH, N, N)
    for read_h, read_y, free_h, free_y, value_t, key_to_end, removal_to_end, coupling, decay in zip(*per_chunk):
        state_t = current.transpose(-1, -2)
        h = torch.baddbmm(free_h, read_h, state_t)
        outputs.append(torch.baddbmm(free_y, read_y, state_t).baddbmm_(coupling, h))
        decayed = current * decay
        current = decayed.baddbmm_(value_t, key_to_end).baddbmm_(h.transpose(-1, -2), removal_to_end)
    current = current.reshape(B, H, N, N)

    y = torch.stack(outputs).reshape(C, B, H, L, N).permute(1, 0, 3, 2, 4).reshape(B, C * L, H, N)
    y = y[:, :T]
    return y.to(r.dtype), current

"""Triton kernels of the split WKV7 backward's chunk-parallel pass (the math:
:mod:`heron.ops.wkv7.split_backward`). Imported only where Triton is installed (CPU tensors need
``TRITON_INTERPRET=1`` before triton is first imported).

One program: key columns ``[BJ c, BJ c + BJ)`` of one chunk of one (batch, head), numbered
``program_id(0) = ((batch * H + head) * num_chunks + chunk) * (N // BJ) + c``, so that the
programs of one chunk run side by side and share its inputs in L2. Rows of the ``[L, *]`` tiles are the chunk's steps; "values"
run over a head's value indices, "keys" over the program's key columns. Every gradient of a key
column depends on that column of the states only, so the programs never communicate.

Two kernels share the grid and each writes the chunks the other skips:
- :func:`factored_kernel`: tensor-core products with the decay ratios factored as
  ``exp(lam_s) * exp(-lam_q)``, for chunks whose decays allow it (the model's always do);
- :func:`stepped_kernel`: the other chunks (a decay near zero), stepping through them exactly.

The factored kernel accumulates its products over the value index in blocks of BK values (a
matrix product's K loop): the first version held whole [L, N] tiles of four inputs at once and,
in its sm_90 build, used all 255 registers and spilled 0.5-3.5 KB per thread (ninth session;
``tools/triton_resources.py`` reports a build's registers and spills without a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _program(num_chunks, N: tl.constexpr, BJ: tl.constexpr):
    """(chunk, batch * H + head, column block) of this program."""
    pid = tl.program_id(0)
    rest = pid // (N // BJ)
    return rest % num_chunks, rest // num_chunks, pid % (N // BJ)


@triton.jit
def _row_offset(bh, t, T, H, N: tl.constexpr):
    """Offset of step ``t``'s vector of head ``bh % H`` of batch ``bh // H`` in a ``[B, T, H, N]`` tensor."""
    return (((bh // H) * T + t) * H + bh % H).to(tl.int64) * N


@triton.jit
def _place(chunk, bh, column_block, T, H, N: tl.constexpr, L: tl.constexpr, BJ: tl.constexpr):
    """Offsets of the program's ``[L, BJ]`` tiles and of its steps' rows (``[L, 1]``), the row mask,
    and the program's indices."""
    steps = tl.arange(0, L)
    values = tl.arange(0, N)
    keys = column_block * BJ + tl.arange(0, BJ)
    t = chunk * L + steps
    rows = _row_offset(bh, t, T, H, N)[:, None]
    return rows + keys[None, :], rows, (t < T)[:, None], steps, values, keys


@triton.jit
def _log_decays(w_ptr, part, valid):
    """g = log(decay) = -exp(w), 0 on padded steps."""
    return -tl.exp(tl.load(w_ptr + part, mask=valid, other=float("-inf")).to(tl.float32))


@triton.jit
def _well_conditioned(g, max_log_decay, max_step_log_decay):
    # The factored path needs finite exp(-lam) and every decay >= e^-max_step_log_decay (the
    # scaling identity's float32 error in the decay gradient grows like 1/decay).
    total = -tl.sum(g, axis=0)
    return (tl.max(tl.max(-g, axis=1), axis=0) <= max_step_log_decay) & (tl.max(total, axis=0) <= max_log_decay)


@triton.jit
def factored_kernel(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr, futures_ptr,
    dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr,
    T, H, num_chunks, max_log_decay, max_step_log_decay,
    N: tl.constexpr, L: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    chunk, bh, column_block = _program(num_chunks, N, BJ)
    part, rows, valid, steps, values, keys = _place(chunk, bh, column_block, T, H, N, L, BJ)
    g = _log_decays(w_ptr, part, valid)
    if _well_conditioned(g, max_log_decay, max_step_log_decay):
        lam = tl.cumsum(g, axis=0)  # the chunk's cumulative log-decay, inclusive
        out_type = dr_ptr.dtype.element_ty
        state_base = (bh * (num_chunks + 1) + chunk).to(tl.int64) * N * N
        future_base = (bh * num_chunks + chunk).to(tl.int64) * N * N
        # Every product over the value index, accumulated over blocks of BK values (a matrix
        # product's K loop: only [L, BK] slices of dy, sa, v, gb live at a time):
        # [L, BJ]: dy S_in, gb S_in (the entering state, read by r and a), v G_end, sa G_end (the
        # chunk's final gradient, read by k and b); [L, L]: the pairwise products of the chunk's
        # steps; [BJ]: sum_i G_end S_end, every later step's share of the decay gradient.
        dy_state = tl.zeros((L, BJ), dtype=tl.float32)
        gb_state = tl.zeros((L, BJ), dtype=tl.float32)
        v_future = tl.zeros((L, BJ), dtype=tl.float32)
        u_future = tl.zeros((L, BJ), dtype=tl.float32)
        yu = tl.zeros((L, L), dtype=tl.float32)
        yv = tl.zeros((L, L), dtype=tl.float32)
        gu = tl.zeros((L, L), dtype=tl.float32)
        gv = tl.zeros((L, L), dtype=tl.float32)
        carry = tl.zeros((BJ,), dtype=tl.float32)
        for start in range(0, N, BK):
            block = start + tl.arange(0, BK)
            slices = rows + block[None, :]
            dy = tl.load(dy_ptr + slices, mask=valid, other=0.0).to(tl.float32)
            u = tl.load(u_ptr + slices, mask=valid, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + slices, mask=valid, other=0.0).to(tl.float32)
            gb = tl.load(gb_ptr + slices, mask=valid, other=0.0).to(tl.float32)
            square = block[:, None] * N + keys[None, :]
            s_in = tl.load(states_ptr + state_base + square)
            g_end = tl.load(futures_ptr + future_base + square)
            dy_state += tl.dot(dy, s_in, input_precision=PRECISION)
            gb_state += tl.dot(gb, s_in, input_precision=PRECISION)
            v_future += tl.dot(v, g_end, input_precision=PRECISION)
            u_future += tl.dot(u, g_end, input_precision=PRECISION)
            yu += tl.dot(dy, tl.trans(u), input_precision=PRECISION)
            yv += tl.dot(dy, tl.trans(v), input_precision=PRECISION)
            gu += tl.dot(gb, tl.trans(u), input_precision=PRECISION)
            gv += tl.dot(gb, tl.trans(v), input_precision=PRECISION)
            carry += tl.sum(g_end * tl.load(states_ptr + state_base + N * N + square), axis=0)

        down = tl.exp(-lam)
        up = tl.exp(lam)
        up_prev = tl.exp(lam - g)
        incl = steps[:, None] >= steps[None, :]
        strict = steps[:, None] > steps[None, :]
        later = steps[None, :] >= steps[:, None]
        later_strict = steps[None, :] > steps[:, None]
        b = tl.load(b_ptr + part, mask=valid, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + part, mask=valid, other=0.0).to(tl.float32)
        b_down = b * down
        k_down = k * down
        # dr_s = S_s^T dy_s, da_s = S_{s-1}^T gb_s: the entering state decayed, plus the chunk's
        # writes sa_q b_q^T + v_q k_q^T (q <= s, q < s)
        grad_r = up * (dy_state + tl.dot(tl.where(incl, yu, 0.0), b_down, input_precision=PRECISION)
                       + tl.dot(tl.where(incl, yv, 0.0), k_down, input_precision=PRECISION))
        tl.store(dr_ptr + part, grad_r.to(out_type), mask=valid)
        r = tl.load(r_ptr + part, mask=valid, other=0.0).to(tl.float32)
        acc = r * grad_r
        grad_a = up_prev * (gb_state + tl.dot(tl.where(strict, gu, 0.0), b_down, input_precision=PRECISION)
                            + tl.dot(tl.where(strict, gv, 0.0), k_down, input_precision=PRECISION))
        tl.store(da_ptr + part, grad_a.to(out_type), mask=valid)
        a = tl.load(a_ptr + part, mask=valid, other=0.0).to(tl.float32)
        a_grad_a = a * grad_a
        acc += a_grad_a
        # dk_s = G_s^T v_s, db_s = G_s^T sa_s: the chunk's final G decayed back, plus dy_q r_q^T
        # (q >= s) and gb_q a_q^T (q > s); v_s . dy_q is yv[q, s]
        r_up = r * up
        a_up = a * up_prev
        from_end = tl.exp(tl.sum(g, axis=0))[None, :]
        grad_k = down * (from_end * v_future
                         + tl.dot(tl.where(later, tl.trans(yv), 0.0), r_up, input_precision=PRECISION)
                         + tl.dot(tl.where(later_strict, tl.trans(gv), 0.0), a_up, input_precision=PRECISION))
        tl.store(dk_ptr + part, grad_k.to(out_type), mask=valid)
        acc -= k * grad_k
        grad_b = down * (from_end * u_future
                         + tl.dot(tl.where(later, tl.trans(yu), 0.0), r_up, input_precision=PRECISION)
                         + tl.dot(tl.where(later_strict, tl.trans(gu), 0.0), a_up, input_precision=PRECISION))
        tl.store(db_ptr + part, grad_b.to(out_type), mask=valid)
        acc -= b * grad_b
        # the decay gradient from the scaling identity: dg_s = sum_{q>=s} (r dr - b db - k dk)_q
        # + sum_{q>s} (a da)_q + sum_i G_end S_end
        grad_g = tl.cumsum(acc, axis=0, reverse=True) - a_grad_a + carry[None, :]
        tl.store(dw_ptr + part, (grad_g * g).to(out_type), mask=valid)


@triton.jit
def stepped_kernel(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr, futures_ptr,
    dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr,
    T, H, num_chunks, max_log_decay, max_step_log_decay,
    N: tl.constexpr, L: tl.constexpr, BJ: tl.constexpr,
):
    # A decay near zero: step through the chunk, G backwards from its end (never dividing by the
    # decay) and S_{s-1} recomputed from the chunk's entering state; the decay gradient directly
    # as d_s sum_i G_s S_{s-1}. O(L^2) state updates: only for such chunks.
    chunk, bh, column_block = _program(num_chunks, N, BJ)
    part, rows, valid, steps, values, keys = _place(chunk, bh, column_block, T, H, N, L, BJ)
    g = _log_decays(w_ptr, part, valid)
    if not _well_conditioned(g, max_log_decay, max_step_log_decay):
        out_type = dr_ptr.dtype.element_ty
        square = values[:, None] * N + keys[None, :]
        s_in = tl.load(states_ptr + (bh * (num_chunks + 1) + chunk).to(tl.int64) * N * N + square)
        g_state = tl.load(futures_ptr + (bh * num_chunks + chunk).to(tl.int64) * N * N + square)
        for back in range(0, L):
            s = L - 1 - back
            t_s = chunk * L + s
            present_v = (values * 0 + t_s) < T  # masks as tensors: the interpreter rejects scalar ones
            present = (keys * 0 + t_s) < T
            row = _row_offset(bh, t_s, T, H, N)
            dy_s = tl.load(dy_ptr + row + values, mask=present_v, other=0.0).to(tl.float32)
            u_s = tl.load(u_ptr + row + values, mask=present_v, other=0.0).to(tl.float32)
            v_s = tl.load(v_ptr + row + values, mask=present_v, other=0.0).to(tl.float32)
            gb_s = tl.load(gb_ptr + row + values, mask=present_v, other=0.0).to(tl.float32)
            r_s = tl.load(r_ptr + row + keys, mask=present, other=0.0).to(tl.float32)
            k_s = tl.load(k_ptr + row + keys, mask=present, other=0.0).to(tl.float32)
            a_s = tl.load(a_ptr + row + keys, mask=present, other=0.0).to(tl.float32)
            b_s = tl.load(b_ptr + row + keys, mask=present, other=0.0).to(tl.float32)
            g_s = -tl.exp(tl.load(w_ptr + row + keys, mask=present, other=float("-inf")).to(tl.float32))
            d_s = tl.exp(g_s)
            g_state += dy_s[:, None] * r_s[None, :]
            previous = s_in
            for q in range(0, s):
                t_q = chunk * L + q
                here_v = (values * 0 + t_q) < T
                here = (keys * 0 + t_q) < T
                row_q = _row_offset(bh, t_q, T, H, N)
                u_q = tl.load(u_ptr + row_q + values, mask=here_v, other=0.0).to(tl.float32)
                v_q = tl.load(v_ptr + row_q + values, mask=here_v, other=0.0).to(tl.float32)
                b_q = tl.load(b_ptr + row_q + keys, mask=here, other=0.0).to(tl.float32)
                k_q = tl.load(k_ptr + row_q + keys, mask=here, other=0.0).to(tl.float32)
                d_q = tl.exp(-tl.exp(tl.load(w_ptr + row_q + keys, mask=here, other=float("-inf")).to(tl.float32)))
                previous = previous * d_q[None, :] + u_q[:, None] * b_q[None, :] + v_q[:, None] * k_q[None, :]
            current = previous * d_s[None, :] + u_s[:, None] * b_s[None, :] + v_s[:, None] * k_s[None, :]
            out = row + keys
            tl.store(dr_ptr + out, tl.sum(current * dy_s[:, None], axis=0).to(out_type), mask=present)
            tl.store(da_ptr + out, tl.sum(previous * gb_s[:, None], axis=0).to(out_type), mask=present)
            tl.store(dk_ptr + out, tl.sum(g_state * v_s[:, None], axis=0).to(out_type), mask=present)
            tl.store(db_ptr + out, tl.sum(g_state * u_s[:, None], axis=0).to(out_type), mask=present)
            grad_g = d_s * tl.sum(g_state * previous, axis=0)
            tl.store(dw_ptr + out, (grad_g * g_s).to(out_type), mask=present)
            g_state = g_state * d_s[None, :] + gb_s[:, None] * a_s[None, :]

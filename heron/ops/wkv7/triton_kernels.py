"""Triton kernels of the split WKV7 backward's chunk-parallel pass (the math:
:mod:`heron.ops.wkv7.split_backward`). Imported only where Triton is installed (CPU tensors need
``TRITON_INTERPRET=1`` before triton is first imported).

Two kernels, each with one program per chunk of one (batch, head):
- :func:`stacked_chunk_kernel`: tensor-core products with the decay ratios factored as
  ``exp(lam_s) * exp(-lam_q)``, for chunks whose decays allow it (the model's always do); rows of its
  ``[L, N]`` tiles are the chunk's steps. It marks the chunks it leaves (a decay near zero).
- :func:`stepped_kernel`, launched after it: the marked chunks, stepping through them exactly, BJ
  key columns at a time (every gradient of a key column depends on that column of the states only).
  The other programs read their mark and stop. (Until the eleventh session this kernel tested every
  chunk's decays again, one program per chunk and key-column block: 15% of the pass's time, 0.45 of
  3.05 ms at (8, 4096, 32, 64) on an H200. Taking the exact path inside the stacked kernel instead
  made it spill more.)

Registers are what limits these kernels: the stacked kernel's sm_90 build at 32-step chunks and
head size 64 uses 255 and spills ~0.5 KB, and a profile on an H200 found the L1 (spills, shared
memory) the busiest unit at 12.5% occupancy (tenth session). ``tools/triton_resources.py``
reports a build's registers and spills without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_offset(bh, t, T, H, N: tl.constexpr):
    """Offset of step ``t``'s vector of head ``bh % H`` of batch ``bh // H`` in a ``[B, T, H, N]`` tensor."""
    return (((bh // H) * T + t) * H + bh % H).to(tl.int64) * N


@triton.jit
def _well_conditioned(g, max_log_decay, max_step_log_decay):
    # The factored path needs finite exp(-lam) and every decay >= e^-max_step_log_decay (the
    # scaling identity's float32 error in the decay gradient grows like 1/decay).
    total = -tl.sum(g, axis=0)
    return (tl.max(tl.max(-g, axis=1), axis=0) <= max_step_log_decay) & (tl.max(total, axis=0) <= max_log_decay)


@triton.jit
def _step_through_columns(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr, futures_ptr,
    dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr, chunk, bh, column_block, T, H, num_chunks,
    N: tl.constexpr, L: tl.constexpr, BJ: tl.constexpr,
):
    # A decay near zero: step through the chunk for BJ key columns (every gradient of a key column
    # depends on that column of the states only), G backwards from the chunk's end (never dividing
    # by the decay) and S_{s-1} recomputed from the chunk's entering state; the decay gradient
    # directly as d_s sum_i G_s S_{s-1}. O(L^2) state updates: only for such chunks.
    values = tl.arange(0, N)
    keys = column_block * BJ + tl.arange(0, BJ)
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
        dy_s = _load_rows(dy_ptr, row, values, present_v)
        u_s = _load_rows(u_ptr, row, values, present_v)
        v_s = _load_rows(v_ptr, row, values, present_v)
        gb_s = _load_rows(gb_ptr, row, values, present_v)
        r_s = _load_rows(r_ptr, row, keys, present)
        k_s = _load_rows(k_ptr, row, keys, present)
        a_s = _load_rows(a_ptr, row, keys, present)
        b_s = _load_rows(b_ptr, row, keys, present)
        g_s = -tl.exp(tl.load(w_ptr + row + keys, mask=present, other=float("-inf")).to(tl.float32))
        d_s = tl.exp(g_s)
        g_state += dy_s[:, None] * r_s[None, :]
        previous = s_in
        for q in range(0, s):
            t_q = chunk * L + q
            here_v = (values * 0 + t_q) < T
            here = (keys * 0 + t_q) < T
            row_q = _row_offset(bh, t_q, T, H, N)
            u_q = _load_rows(u_ptr, row_q, values, here_v)
            v_q = _load_rows(v_ptr, row_q, values, here_v)
            b_q = _load_rows(b_ptr, row_q, keys, here)
            k_q = _load_rows(k_ptr, row_q, keys, here)
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


@triton.jit
def _head_rows(bh, chunk, T, H, N: tl.constexpr, L: tl.constexpr):
    """(offset of head ``bh % H`` of batch ``bh // H`` in a ``[B, T, H, N]`` tensor, int64 scalar;
    the chunk's ``[L, N]`` offsets from it, int32; the ``[L, 1]`` mask of steps before ``T``).
    64-bit [L, N] offset tensors take two registers per element; the launcher checks that
    ``T * H * N`` and ``B * T * H`` fit in int32."""
    steps = chunk * L + tl.arange(0, L)
    head = ((bh // H) * T * H + bh % H).to(tl.int64) * N
    return head, steps[:, None] * (H * N) + tl.arange(0, N)[None, :], (steps < T)[:, None]


@triton.jit
def _load_rows(ptr, base, offsets, valid):
    """``ptr[base + offsets]`` in float32, zeros where ``valid`` is false (past ``T``): a chunk's
    ``[L, N]`` rows, or one step's values or key columns."""
    return tl.load(ptr + base + offsets, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, value, head, offsets, valid):
    tl.store(ptr + head + offsets, value.to(ptr.dtype.element_ty), mask=valid)


@triton.jit
def _stack(upper, lower, L: tl.constexpr, N: tl.constexpr):
    """``[2L, N]``: ``upper`` over ``lower``."""
    return tl.reshape(tl.permute(tl.join(upper, lower), (2, 0, 1)), (2 * L, N))


@triton.jit
def _halves(x, L: tl.constexpr, N: tl.constexpr):
    """The upper and lower ``[L, N]`` halves of a ``[2L, N]`` tile."""
    return tl.split(tl.permute(tl.reshape(x, (2, L, N)), (1, 2, 0)))


@triton.jit
def _square(ptr, index, N: tl.constexpr):
    """The ``index``-th ``[N, N]`` float32 matrix of a contiguous stack."""
    square = tl.arange(0, N)[:, None] * N + tl.arange(0, N)[None, :]
    return tl.load(ptr + index.to(tl.int64) * N * N + square)


@triton.jit
def stacked_chunk_kernel(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr, futures_ptr,
    dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr,
    stepped_ptr, T, H, num_chunks, max_log_decay, max_step_log_decay,
    N: tl.constexpr, L: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per chunk (program_id(0) = (batch * H + head) * num_chunks + chunk), the step
    # vectors stacked in pairs ([2L, N] tiles: the readers' gradients [dy; gb], the writes [u; v])
    # so that the chunk takes five large matrix products (a layout with a program per block of key
    # columns, or with a score of small products, ran 1.6-2.5x slower on an H200). The [2L, 2L]
    # product [dy; gb] [u; v]^T holds the four step-pair blocks; masked (a step's r reads its own
    # write, its a only earlier ones) it gives [dr; da] from [b; k] and, transposed, [db; dk] from
    # [r; a].
    pid = tl.program_id(0)
    chunk = pid % num_chunks
    bh = pid // num_chunks
    head, offsets, valid = _head_rows(bh, chunk, T, H, N, L)
    g = tl.where(valid, -tl.exp(_load_rows(w_ptr, head, offsets, valid)), 0.0)  # log-decay, 0 past T
    conditioned = _well_conditioned(g, max_log_decay, max_step_log_decay)
    tl.store(stepped_ptr + pid, (~conditioned).to(tl.int8))  # the chunks stepped_kernel takes
    if conditioned:
        # the three products with the step vectors first, so that they and the states die early
        # (loading the vectors again later instead of keeping them spilled more: the loads merge)
        readers = _stack(_load_rows(dy_ptr, head, offsets, valid), _load_rows(gb_ptr, head, offsets, valid),
                         L, N)
        writes = _stack(_load_rows(u_ptr, head, offsets, valid), _load_rows(v_ptr, head, offsets, valid), L, N)
        products = tl.dot(readers, tl.trans(writes), input_precision=PRECISION)
        upper = (tl.arange(0, 2 * L) < L)[:, None]
        reader_step = (tl.arange(0, 2 * L) % L)[:, None]
        writer_step = (tl.arange(0, 2 * L) % L)[None, :]
        products = tl.where(tl.where(upper, reader_step >= writer_step, reader_step > writer_step), products, 0.0)
        entering = tl.dot(readers, _square(states_ptr, bh * (num_chunks + 1) + chunk, N),
                          input_precision=PRECISION)  # [dy S_in; gb S_in]
        g_end = _square(futures_ptr, bh * num_chunks + chunk, N)
        leaving = tl.dot(writes, g_end, input_precision=PRECISION)  # [u G_end; v G_end]
        carry = tl.sum(g_end * _square(states_ptr, bh * (num_chunks + 1) + chunk + 1, N), axis=0)
        # the decay scales go on [L, N] halves, never on stacked [2L, N] tiles: fewer tiles live at
        # once (488 -> 272 bytes spilled per thread at N = 64, sm_90), 14-15% faster on an H200
        lam = tl.cumsum(g, axis=0)
        down = tl.exp(-lam)
        bk_down = _stack(_load_rows(b_ptr, head, offsets, valid) * down,
                         _load_rows(k_ptr, head, offsets, valid) * down, L, N)
        grad_r, grad_a = _halves(entering + tl.dot(products, bk_down, input_precision=PRECISION), L, N)
        grad_r *= tl.exp(lam)  # r reads S_s, a reads S_{s-1}
        grad_a *= tl.exp(lam - g)
        _store_rows(dr_ptr, grad_r, head, offsets, valid)
        _store_rows(da_ptr, grad_a, head, offsets, valid)
        r = _load_rows(r_ptr, head, offsets, valid)
        a = _load_rows(a_ptr, head, offsets, valid)
        ra_scaled = _stack(r * tl.exp(lam), a * tl.exp(lam - g), L, N)
        from_end = tl.exp(tl.sum(g, axis=0))[None, :]
        grad_b, grad_k = _halves(from_end * leaving + tl.dot(tl.trans(products), ra_scaled, input_precision=PRECISION),
                                 L, N)
        grad_b *= down
        grad_k *= down
        _store_rows(db_ptr, grad_b, head, offsets, valid)
        _store_rows(dk_ptr, grad_k, head, offsets, valid)

        # the decay gradient from the scaling identity: dg_s = sum_{q>=s} (r dr + a da - b db - k dk)_q
        # - (a da)_s + sum_i G_end S_end
        # (b and k loaded again rather than kept live through the products, like the vectors above)
        a_terms = a * grad_a
        terms = r * grad_r + a_terms - _load_rows(b_ptr, head, offsets, valid) * grad_b \
            - _load_rows(k_ptr, head, offsets, valid) * grad_k
        grad_g = tl.cumsum(terms, axis=0, reverse=True) - a_terms + carry[None, :]
        _store_rows(dw_ptr, grad_g * g, head, offsets, valid)


@triton.jit
def stepped_kernel(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr, futures_ptr,
    dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr,
    stepped_ptr, T, H, num_chunks, max_log_decay, max_step_log_decay,
    N: tl.constexpr, L: tl.constexpr, BJ: tl.constexpr,
):
    # The chunks the stacked kernel (launched before, same program numbering) marked in stepped_ptr.
    pid = tl.program_id(0)
    if tl.load(stepped_ptr + pid) != 0:
        chunk = pid % num_chunks
        bh = pid // num_chunks
        for column_block in range(0, N // BJ):
            _step_through_columns(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, u_ptr, gb_ptr, states_ptr,
                                  futures_ptr, dr_ptr, dw_ptr, dk_ptr, da_ptr, db_ptr, chunk, bh, column_block, T, H,
                                  num_chunks, N, L, BJ)

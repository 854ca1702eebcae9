"""The WKV7 backward in two passes: a sequential pass for the one quantity that needs the full
state recurrence, then a chunk-parallel pass for everything else (matrix products, tensor cores).

Notation (spec/RWKV8.md §2; rows i index values, columns j keys): ``sa_t = S_{t-1} a_t`` and
``S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T``, ``y_t = S_t r_t``, ``d = exp(g)``,
``g = -exp(w)``. ``G_t = dL/dS_t`` obeys ``G_{t-1} = G_t diag(d_t) + gb_t a_t^T + dy_{t-1} r_{t-1}^T``
with ``gb_t = G_t b_t``: the only coupling between the columns of ``G`` (and, in the forward,
of ``S``) is through ``gb`` (``sa``). Once the forward has saved ``sa`` and a first backward pass
has saved ``gb``, both recurrences are per-column linear scans with per-column decay -- gated
linear attention with two write/read pairs -- and every remaining gradient is a chunk-local
matrix expression:

1. :func:`state_gradients_reference` (CUDA: ``heron::wkv7_cuda_state_gradients``), sequential,
   row-local like the forward: ``gb_t``, ``dv_t = G_t k_t``, the initial state's gradient, and
   ``G`` at the end of every chunk (from the future only: ``dy r^T`` of the chunk's last step not
   yet added).
2. :func:`chunk_gradients_torch` / :func:`chunk_gradients_triton`, one program per (chunk, head):
   ``dr, da`` from the chunk's entering state, ``dk, db`` from the chunk's final ``G``, and the
   decay gradient from the scaling identity (scaling column j of every state from step t on and
   compensating in the later reads and writes leaves the loss unchanged):
   ``dg_t = sum_{q>=t} (r dr - b db - k dk)_q + sum_{q>t} (a da)_q + sum_i G^fut_{end}[i] S_{end}[i]``
   within a chunk, the last term carrying every later step (and the final state's gradient).

Within a chunk the decay ratios ``gamma_s / gamma_q`` are products of per-step factors; the Triton
kernel forms them as ``exp(lambda_s) * exp(-lambda_q)`` (lambda: the chunk's cumulative log-decay),
exact while no step's decay falls under e^-MAX_STEP_LOG_DECAY and the chunk's total log-decay
stays under :data:`MAX_CHUNK_LOG_DECAY`; other chunks (decay near zero) step through the chunk,
recomputing the state, and never divide by the decay.
"""

from __future__ import annotations

import torch

# The Triton kernel's factored path needs every column's cumulative log-decay over a chunk under
# MAX_CHUNK_LOG_DECAY (exp(-lambda) stays finite in float32) and every step's under
# MAX_STEP_LOG_DECAY (decay >= e^-1.5: the scaling identity's float32 error in the decay gradient
# grows like 1/decay). Other chunks step through exactly (the model's decays, exp(w) <= e^-0.5,
# never need to).
MAX_CHUNK_LOG_DECAY = 60.0
MAX_STEP_LOG_DECAY = 1.5


def forward_states_reference(r, w, k, v, a, b, state, chunk):
    """The forward with what the split backward needs: ``(y, final_state, removal, states)``,
    ``removal[:, t] = S_{t-1} a_t`` and ``states[:, :, c] = S`` entering chunk c (the last slot:
    the final state), float64 for float64 inputs else float32. Step by step (tests)."""
    B, T, H, N = r.shape
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, w, k, v, a, b = (x.to(compute) for x in (r, w, k, v, a, b))
    S = torch.zeros(B, H, N, N, dtype=compute, device=r.device) if state is None else state.to(compute)
    decay = torch.exp(-torch.exp(w))
    num_chunks = -(-T // chunk)
    states = S.new_zeros(B, H, num_chunks + 1, N, N)
    removal = torch.zeros_like(r)
    ys = []
    for t in range(T):
        if t % chunk == 0:
            states[:, :, t // chunk] = S
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        removal[:, t] = sa
        S = S * decay[:, t, :, None, :] + sa[..., :, None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    states[:, :, num_chunks] = S
    return torch.stack(ys, dim=1), S, removal, states


def state_gradients_reference(r, w, k, a, b, grad_y, grad_final_state, chunk):
    """Pass 1 of the split backward, step by step: ``(grad_b_dot, grad_v, future_grads,
    grad_initial_state)`` with ``grad_b_dot[:, t] = G_t b_t``, ``grad_v[:, t] = G_t k_t`` and
    ``future_grads[:, :, c]`` = the gradient of the state at chunk c's last step from the later
    steps only (``grad_final_state`` for the last chunk)."""
    B, T, H, N = r.shape
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, w, k, a, b, grad_y = (x.to(compute) for x in (r, w, k, a, b, grad_y))
    G = (torch.zeros(B, H, N, N, dtype=compute, device=r.device) if grad_final_state is None
         else grad_final_state.to(compute).clone())
    decay = torch.exp(-torch.exp(w))
    num_chunks = -(-T // chunk)
    future_grads = G.new_zeros(B, H, num_chunks, N, N)
    grad_b_dot = torch.zeros_like(r)
    grad_v = torch.zeros_like(r)
    for t in range(T - 1, -1, -1):
        if t == T - 1 or (t + 1) % chunk == 0:
            future_grads[:, :, t // chunk] = G
        G = G + grad_y[:, t, :, :, None] * r[:, t, :, None, :]
        gb = torch.einsum("bhij,bhj->bhi", G, b[:, t])
        grad_b_dot[:, t] = gb
        grad_v[:, t] = torch.einsum("bhij,bhj->bhi", G, k[:, t])
        G = G * decay[:, t, :, None, :] + gb[..., :, None] * a[:, t, :, None, :]
    return grad_b_dot, grad_v, future_grads, G


def _to_chunks(x, chunk, compute):
    """``[B, T, H, N]`` -> ``[B, H, C, L, N]`` in ``compute``, zero-padded to whole chunks."""
    B, T, H, N = x.shape
    num_chunks = -(-T // chunk)
    x = torch.nn.functional.pad(x.to(compute), (0, 0, 0, 0, 0, num_chunks * chunk - T))
    return x.view(B, num_chunks, chunk, H, N).permute(0, 3, 1, 2, 4)


def _from_chunks(x, T):
    B, H, C, L, N = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, C * L, H, N)[:, :T]


def chunk_gradients_torch(r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, chunk):
    """Pass 2 of the split backward in PyTorch: ``(grad_r, grad_w, grad_k, grad_a, grad_b)`` in
    the compute dtype (float64 for float64 inputs, else float32). The decay ratios are formed per
    pair as ``exp(lambda_s - lambda_q)`` (never above 1): exact for any decay, O(L^2 N) memory per
    chunk -- the oracle for the Triton kernel."""
    T = r.shape[1]
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, k, v, a, b, dy, u, gb = (_to_chunks(x, chunk, compute) for x in (r, k, v, a, b, grad_y, removal, grad_b_dot))
    g = -torch.exp(_to_chunks(w, chunk, compute))
    L = r.shape[-2]
    g = g * (torch.arange(L, device=r.device) < T - torch.arange(g.shape[2], device=r.device)[:, None] * chunk
             ).to(compute)[..., None]  # padded steps decay by 1
    lam = torch.cumsum(g, dim=-2)                      # lambda_s, [B, H, C, L, N]
    lam_prev = lam - g                                 # lambda_{s-1}
    states, future_grads = states.to(compute), future_grads.to(compute)
    s_in, s_end = states[:, :, :-1], states[:, :, 1:]
    steps = torch.arange(L, device=r.device)
    upper = steps[:, None] >= steps[None, :]  # [s, q]: q <= s

    def ratio(later, earlier, mask):
        # [B, H, C, s, q, N]: exp(later_s - earlier_q) where mask[s, q], else 0
        diff = later[..., :, None, :] - earlier[..., None, :, :]
        return torch.where(mask[..., None], torch.exp(torch.where(mask[..., None], diff, 0)), 0)

    def dot(x, y):  # [.., s, N] x [.., q, N] -> [.., s, q]
        return torch.einsum("...si,...qi->...sq", x, y)

    incl, strict = upper, steps[:, None] > steps[None, :]
    # dr_s = S_s^T dy_s, da_s = S_{s-1}^T gb_s: the entering state decayed, plus the chunk's writes
    r_ratio, a_ratio = ratio(lam, lam, incl), ratio(lam_prev, lam, strict)
    grad_r = torch.exp(lam) * torch.einsum("...si,...ij->...sj", dy, s_in) + torch.einsum(
        "...sqj,...sq,...qj->...sj", r_ratio, dot(dy, u), b) + torch.einsum("...sqj,...sq,...qj->...sj", r_ratio, dot(dy, v), k)
    grad_a = torch.exp(lam_prev) * torch.einsum("...si,...ij->...sj", gb, s_in) + torch.einsum(
        "...sqj,...sq,...qj->...sj", a_ratio, dot(gb, u), b) + torch.einsum("...sqj,...sq,...qj->...sj", a_ratio, dot(gb, v), k)
    # dk_s = G_s^T v_s, db_s = G_s^T sa_s, G_s = the chunk's final G decayed back, plus dy r^T (q >= s)
    # and gb a^T (q > s) of the chunk's later steps
    lam_end = lam[..., -1:, :]
    k_ratio, k_ratio_next = ratio(lam, lam, incl), ratio(lam_prev, lam, strict)  # indexed [q, s]

    def from_future(x):
        return (torch.exp(lam_end - lam) * torch.einsum("...si,...ij->...sj", x, future_grads)
                + torch.einsum("...qsj,...qs,...qj->...sj", k_ratio, dot(dy, x), r)
                + torch.einsum("...qsj,...qs,...qj->...sj", k_ratio_next, dot(gb, x), a))

    grad_k, grad_b = from_future(v), from_future(u)
    carry = (future_grads * s_end).sum(-2)[..., None, :]  # [B, H, C, 1, N]
    reads = r * grad_r - b * grad_b - k * grad_k
    later_a = torch.nn.functional.pad((a * grad_a)[..., 1:, :], (0, 0, 0, 1))
    grad_g = torch.flip(torch.cumsum(torch.flip(reads + later_a, [-2]), -2), [-2]) + carry
    grad_w = grad_g * g
    return tuple(_from_chunks(x, T) for x in (grad_r, grad_w, grad_k, grad_a, grad_b))


def split_backward_reference(r, w, k, v, a, b, state, grad_y, grad_final_state, chunk=16):
    """Both passes from the step-by-step forward: the gradients of ``(r, w, k, v, a, b, state)``
    (tests)."""
    _, _, removal, states = forward_states_reference(r, w, k, v, a, b, state, chunk)
    grad_b_dot, grad_v, future_grads, grad_state = state_gradients_reference(
        r, w, k, a, b, grad_y, grad_final_state, chunk)
    grad_r, grad_w, grad_k, grad_a, grad_b = chunk_gradients_torch(
        r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, chunk)
    return grad_r, grad_w, grad_k, grad_v, grad_a, grad_b, grad_state


def _kernels(device: torch.device):
    """The Triton kernels module. CPU tensors need Triton's interpreter, which Triton picks when it
    is imported (``TRITON_INTERPRET=1``; the tests set it on machines without a GPU)."""
    import os

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("chunk_gradients_triton: CPU tensors run in Triton's interpreter; set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    from . import triton_kernels

    return triton_kernels


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Key columns per step of the Triton pass's exact path (whose state tiles are [N, BJ]).
STEPPED_COLUMNS = 16


def chunk_length(head_size: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Steps per chunk of pass 2 (a multiple of the forward's segment: heron.ops.wkv7.cuda): the
    fastest on an H200 (tenth session): 32 at head size 64 (64 steps: 20% slower, 16: 50%), 64 at
    128 for 16-bit inputs. float32 inputs keep 32 at 128: their exact products in [128, 128] tiles
    took minutes to build. Shorter chunks mean more saved states (the forward writes one every chunk)."""
    return 64 if head_size >= 128 and dtype != torch.float32 else 32


def default_warps(head_size: int, chunk: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Warps per program of the stacked kernel: 8 where its [2 chunk, head size] tiles reach 8192
    elements (64-step chunks at 64, 32-step at 128: 20-30% faster than 4 on an H200), else 4 (one
    warpgroup; 30% faster at 32-step chunks, head size 64). float32 inputs keep 4, their tested build."""
    return 8 if 2 * chunk * head_size >= 8192 and dtype != torch.float32 else 4


def chunk_gradients_triton(r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, chunk,
                           *, precision: str | None = None, max_log_decay: float = MAX_CHUNK_LOG_DECAY,
                           num_warps: int | None = None):
    """Pass 2 of the split backward in Triton (:mod:`heron.ops.wkv7.triton_kernels`):
    ``(grad_r, grad_w, grad_k, grad_a, grad_b)`` in the inputs' dtype. CUDA tensors run compiled;
    CPU tensors run in Triton's interpreter (tests). ``precision``: the matrix products'
    (``"ieee"``, the default for float32 inputs, or ``"tf32"``, the default otherwise).
    ``max_log_decay``: chunks past it step through exactly (``< 0``: every chunk does; tests).
    ``num_warps``: the stacked kernel's (default :func:`default_warps`)."""
    B, T, H, N = r.shape
    if chunk < 16 or chunk & (chunk - 1) or N < 16 or N & (N - 1):
        raise ValueError(f"chunk_gradients_triton: chunk and head size must be powers of two >= 16, got {chunk}, {N}")
    num_chunks = -(-T // chunk)
    if tuple(states.shape) != (B, H, num_chunks + 1, N, N) or states.dtype != torch.float32:
        raise ValueError(f"chunk_gradients_triton: states must be float32 {(B, H, num_chunks + 1, N, N)}, "
                         f"got {states.dtype} {tuple(states.shape)}")
    if tuple(future_grads.shape) != (B, H, num_chunks, N, N) or future_grads.dtype != torch.float32:
        raise ValueError(f"chunk_gradients_triton: future_grads must be float32 {(B, H, num_chunks, N, N)}, "
                         f"got {future_grads.dtype} {tuple(future_grads.shape)}")
    if max(T * H * N, B * T * H) >= 2**31:  # the stacked kernel's in-head offsets and row count are int32
        raise ValueError(f"chunk_gradients_triton: T * H * N and B * T * H must be below 2**31, got {T * H * N}, "
                         f"{B * T * H}")
    if precision is None:
        precision = "ieee" if r.dtype == torch.float32 else "tf32"
    grads = [torch.empty_like(r) for _ in range(5)]
    if B * T * H == 0:
        return tuple(grads)
    kernels = _kernels(r.device)
    programs = B * H * num_chunks
    stepped = torch.empty(programs, dtype=torch.int8, device=r.device)  # written by the stacked kernel
    # one argument list for both kernels (the stepped kernel leaves the decay bounds unread: it
    # takes the chunks the stacked kernel marked)
    args = (r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, *grads,
            stepped, T, H, num_chunks, float(max_log_decay), MAX_STEP_LOG_DECAY)
    kernels.stacked_chunk_kernel[(programs,)](
        *args, N=N, L=chunk, PRECISION=precision, num_warps=num_warps or default_warps(N, chunk, r.dtype))
    kernels.stepped_kernel[(programs,)](*args, N=N, L=chunk, BJ=STEPPED_COLUMNS, num_warps=4)
    return tuple(grads)

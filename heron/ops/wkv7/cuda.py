"""CUDA WKV7: builds the kernels through ``heron.ops._build`` and registers them as
``torch.library`` custom ops (``heron::wkv7_cuda_forward``, ``heron::wkv7_cuda_backward``, and the
split backward's ``heron::wkv7_cuda_state_gradients`` + ``heron::wkv7_chunk_gradients``) with
autograd, so eager code and ``torch.compile`` graphs call the same kernels.

Two backward schemes (:data:`BACKWARD`): ``"sequential"`` (one CUDA kernel per head stepping back
through time) and ``"split"`` (:mod:`heron.ops.wkv7.split_backward`: a sequential CUDA pass for
the state gradient's coupling term, then a chunk-parallel Triton pass on the tensor cores for
every other gradient; needs Triton). The default, ``"auto"``, takes the split one for 16-bit
inputs, where it is the faster.
"""

from __future__ import annotations

import torch

from .._build import ExtensionUnavailable, load_extension
from . import split_backward

SUPPORTED_HEAD_SIZES = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SOURCES = ("wkv7/csrc/wkv7_binding.cpp", "wkv7/csrc/wkv7_kernels.cu")


# The backward steps backwards through a segment of the saved states (S_{t-1} from S_t by dividing
# by the decay) when every column's sum of exp(w) over the segment is at most this, so rounding
# errors grow at most e**7 ~ 1100-fold within a segment; otherwise, and always when this is <= 0,
# it recomputes S_{t-1} from the state entering the segment (exact for any decay, ~1.4x slower).
# With the model's decay parametrisation (exp(w) <= e**-0.5) a 16-step segment sums to <= 9.7.
BACKSTEP_MAX_LOG_GROWTH = 7.0
# State rows per lane group in the forward kernel (1, 2 or 4; 2 applies to head sizes 32 and 64, 4
# to 64 and 128, else the nearest that applies): the rows share every value read from shared
# memory. 4 (half-width lanes) was the fastest at every benchmarked shape (twelfth session, one
# H200, bf16: forward 1.99 against 2.21 ms with 2 rows at (8, 4096, 32), 3.34 against 6.28 at
# (8, 4096, 16, 128)).
FORWARD_ROWS_PER_THREAD = 4
# State columns per lane group in the backward kernel (1 or 2; 2 applies to head sizes 32 and 64).
BACKWARD_COLUMNS_PER_THREAD = 2
# "auto" (the default), "split" (needs Triton) or "sequential"; read when the forward runs, which
# saves what its backward needs (the split backward: a state every chunk, not every segment). Both
# are exact and tested. "auto" takes the split backward for 16-bit inputs where Triton is installed
# (float32 inputs need exact products, which the tensor cores do not give): it was the faster at
# every benchmarked shape (fourteenth session, one H200, bf16 fwd+bwd: 6.26 / 2.18 / 16.37 ms at
# (8, 4096, 32), (32, 1024, 12), (4, 16384, 32) against 8.88 / 4.00 / 25.29 sequential; twelfth: 6.52
# against 6.96 at (8, 4096, 64, 32), 2.69 against 2.71 at (16, 1024, 64, 32), 5.39 against 5.85 at
# (8, 4096, 128, 16)); docs/benchmarks/wkv7.md.
BACKWARD = "auto"
# State rows per lane group in the split backward's sequential pass (as FORWARD_ROWS_PER_THREAD;
# pass 1 took 1.81 against 2.07 ms with 2 rows at (8, 4096, 32)).
STATE_GRADIENT_ROWS_PER_THREAD = 4
# Warps per program of the split backward's Triton pass, and its chunk length (0: the defaults of
# heron.ops.wkv7.split_backward; the chunk must be a multiple of the segment).
CHUNK_GRADIENT_WARPS = 0
SPLIT_CHUNK_LENGTH = 0


def segment_length(head_size: int) -> int:
    """Steps between the states the forward saves; must match ``Config<N>::kSegment`` in the kernels."""
    return 8 if head_size >= 128 else 16


def load():
    """The compiled extension; raises :class:`ExtensionUnavailable` when it cannot be built."""
    return load_extension("wkv7_cuda", _SOURCES, cuda=True)


_available: bool | None = None


def available() -> bool:
    """Whether the kernels can run here (CUDA visible and the extension builds); cached."""
    global _available
    if _available is None:
        if not torch.cuda.is_available():
            _available = False
        else:
            try:
                load()
                _available = True
            except ExtensionUnavailable:
                _available = False
    return _available


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def uses_split_backward(shape, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether a forward of ``[B, T, H, N]`` inputs that needs a backward saves for the split one
    (:data:`BACKWARD`). Never where ``T * H * N`` (or ``B * T * H``) reaches 2**31, past the
    Triton pass's int32 offsets."""
    if BACKWARD not in ("auto", "split", "sequential"):
        raise ValueError(f"heron.ops.wkv7.cuda.BACKWARD must be 'auto', 'split' or 'sequential', got {BACKWARD!r}")
    B, T, H, N = shape
    if BACKWARD == "sequential" or (BACKWARD == "auto" and dtype == torch.float32):
        return False
    return max(T * H * N, B * T * H) < 2**31 and split_backward.triton_available()


def split_checkpoint_stride(head_size: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Forward segments per chunk of the split backward's parallel pass. At least 2: the backward
    tells the schemes apart by the stride of the saved states (1: the sequential one)."""
    chunk = SPLIT_CHUNK_LENGTH or split_backward.chunk_length(head_size, dtype)
    segment = segment_length(head_size)
    if chunk % segment or chunk < 2 * segment:
        raise ValueError(f"wkv7 CUDA: SPLIT_CHUNK_LENGTH must be a multiple of {segment} (the forward's segment "
                         f"at head size {head_size}) and at least {2 * segment}, got {chunk}")
    return chunk // segment


@torch.library.custom_op("heron::wkv7_cuda_forward", mutates_args=(), device_types="cuda")
def cuda_forward(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    save_for_backward: bool,
    rows_per_thread: int,
    checkpoint_stride: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, final_state, removal, checkpoints)``; the last two are empty unless saved.
    ``rows_per_thread`` as :data:`FORWARD_ROWS_PER_THREAD`; ``checkpoint_stride``: segments
    between saved states (1 for the sequential backward, :func:`split_checkpoint_stride` for the
    split one)."""
    extension = load()
    with torch.cuda.device(r.device):
        outputs = extension.forward(
            r, w, k, v, a, b, state, save_for_backward, rows_per_thread, checkpoint_stride, _stream(r.device)
        )
    return tuple(outputs)


@cuda_forward.register_fake
def _(r, w, k, v, a, b, state, save_for_backward, rows_per_thread, checkpoint_stride):
    B, T, H, N = r.shape
    segments = -(-T // segment_length(N))
    slots = -(-segments // checkpoint_stride) + 1
    saved_batch = B if save_for_backward else 0
    return (
        torch.empty_like(r),
        r.new_empty(B, H, N, N, dtype=torch.float32),
        r.new_empty(saved_batch, T, H, N, dtype=torch.float32),
        r.new_empty(saved_batch, H, slots, N, N, dtype=torch.float32),
    )


@torch.library.custom_op("heron::wkv7_cuda_state_gradients", mutates_args=(), device_types="cuda")
def cuda_state_gradients(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    grad_y: torch.Tensor,
    grad_final_state: torch.Tensor | None,
    rows_per_thread: int,
    chunk_segments: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1 of the split backward: ``(grad_b_dot, grad_v, future_grads, grad_initial_state)``
    (:func:`heron.ops.wkv7.split_backward.state_gradients_reference`)."""
    extension = load()
    with torch.cuda.device(r.device):
        outputs = extension.state_gradients(
            r, w, k, a, b, grad_y, grad_final_state, rows_per_thread, chunk_segments, _stream(r.device)
        )
    return tuple(outputs)


@cuda_state_gradients.register_fake
def _(r, w, k, a, b, grad_y, grad_final_state, rows_per_thread, chunk_segments):
    B, T, H, N = r.shape
    segments = -(-T // segment_length(N))
    chunks = -(-segments // chunk_segments)
    return (
        r.new_empty(B, T, H, N, dtype=torch.float32),
        torch.empty_like(r),
        r.new_empty(B, H, chunks, N, N, dtype=torch.float32),
        r.new_empty(B, H, N, N, dtype=torch.float32),
    )


@torch.library.custom_op("heron::wkv7_chunk_gradients", mutates_args=(), device_types="cuda")
def chunk_gradients(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    grad_y: torch.Tensor,
    removal: torch.Tensor,
    grad_b_dot: torch.Tensor,
    states: torch.Tensor,
    future_grads: torch.Tensor,
    chunk: int,
    num_warps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2 of the split backward (Triton): ``(grad_r, grad_w, grad_k, grad_a, grad_b)``;
    ``num_warps`` as :data:`CHUNK_GRADIENT_WARPS`."""
    with torch.cuda.device(r.device):
        return split_backward.chunk_gradients_triton(
            r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, chunk, num_warps=num_warps or None)


@chunk_gradients.register_fake
def _(r, w, k, v, a, b, grad_y, removal, grad_b_dot, states, future_grads, chunk, num_warps):
    return tuple(torch.empty_like(r) for _ in range(5))


@torch.library.custom_op("heron::wkv7_cuda_backward", mutates_args=(), device_types="cuda")
def cuda_backward(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    removal: torch.Tensor,
    checkpoints: torch.Tensor,
    grad_y: torch.Tensor,
    grad_final_state: torch.Tensor | None,
    columns_per_thread: int,
    max_log_growth: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns the gradients of ``(r, w, k, v, a, b, initial_state)``; ``columns_per_thread`` as
    :data:`BACKWARD_COLUMNS_PER_THREAD`, ``max_log_growth`` as :data:`BACKSTEP_MAX_LOG_GROWTH`
    (``<= 0``: always recompute)."""
    extension = load()
    with torch.cuda.device(r.device):
        outputs = extension.backward(
            r, w, k, v, a, b, removal, checkpoints, grad_y, grad_final_state, columns_per_thread,
            float(max_log_growth), _stream(r.device),
        )
    return tuple(outputs)


@cuda_backward.register_fake
def _(r, w, k, v, a, b, removal, checkpoints, grad_y, grad_final_state, columns_per_thread, max_log_growth):
    B, T, H, N = r.shape
    grads = tuple(torch.empty_like(r) for _ in range(6))
    return grads + (r.new_empty(B, H, N, N, dtype=torch.float32),)


def _setup_context(ctx, inputs, output):
    r, w, k, v, a, b, state, save_for_backward, _rows_per_thread, checkpoint_stride = inputs
    _, _, removal, checkpoints = output
    ctx.saved = save_for_backward
    ctx.has_state = state is not None
    ctx.checkpoint_stride = checkpoint_stride
    ctx.save_for_backward(r, w, k, v, a, b, removal, checkpoints)
    # Outputs without a gradient reach the backward as None, not as zeros: autograd would otherwise
    # fill zero gradients for `removal` and `checkpoints` (never used downstream) on every backward,
    # 0.8 GB at (8, 4096, 32, 64); not filling them made the fwd+bwd 2-3.5% faster on an H200
    # (fifteenth session: 6.06 against 6.24 ms there, 15.94 against 16.28 at (4, 16384, 32)).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_final_state, _grad_removal, _grad_checkpoints):
    if not ctx.saved:
        raise RuntimeError(
            "wkv7 CUDA: backward called on a forward that did not save its states; call the "
            "forward with save_for_backward=True when gradients are needed"
        )
    r, w, k, v, a, b, removal, checkpoints = ctx.saved_tensors
    grad_y = torch.zeros_like(r) if grad_y is None else grad_y.to(r.dtype).contiguous()
    if grad_final_state is not None:
        grad_final_state = grad_final_state.float().contiguous()
    if ctx.checkpoint_stride == 1:
        grads = cuda_backward(
            r, w, k, v, a, b, removal, checkpoints, grad_y, grad_final_state, BACKWARD_COLUMNS_PER_THREAD,
            BACKSTEP_MAX_LOG_GROWTH,
        )
    else:
        grad_b_dot, grad_v, future_grads, grad_initial = cuda_state_gradients(
            r, w, k, a, b, grad_y, grad_final_state, STATE_GRADIENT_ROWS_PER_THREAD, ctx.checkpoint_stride)
        grad_r, grad_w, grad_k, grad_a, grad_b = chunk_gradients(
            r, w, k, v, a, b, grad_y, removal, grad_b_dot, checkpoints, future_grads,
            ctx.checkpoint_stride * segment_length(r.shape[-1]), CHUNK_GRADIENT_WARPS)
        grads = (grad_r, grad_w, grad_k, grad_v, grad_a, grad_b, grad_initial)
    grad_state = grads[6] if ctx.has_state else None
    return (*grads[:6], grad_state, None, None, None)


cuda_forward.register_autograd(_backward, setup_context=_setup_context)


def wkv7_cuda(r, w, k, v, a, b, state=None):
    """CUDA WKV7 on validated ``[B, T, H, N]`` CUDA inputs; returns ``(y, final_state)``."""
    inputs = [x.contiguous() for x in (r, w, k, v, a, b)]
    if state is not None:
        state = state.to(torch.float32).contiguous()
    needs_grad = torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs) or (state is not None and state.requires_grad)
    )
    stride = 1
    if needs_grad and uses_split_backward(r.shape, r.dtype):
        stride = split_checkpoint_stride(r.shape[-1], r.dtype)
    y, final_state, _, _ = cuda_forward(*inputs, state, needs_grad, FORWARD_ROWS_PER_THREAD, stride)
    return y, final_state

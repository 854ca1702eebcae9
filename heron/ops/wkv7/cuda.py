"""CUDA WKV7: builds the kernels through ``heron.ops._build`` and registers them as
``torch.library`` custom ops (``heron::wkv7_cuda_forward`` / ``heron::wkv7_cuda_backward``)
with autograd, so eager code and ``torch.compile`` graphs call the same kernels.
"""

from __future__ import annotations

import torch

from .._build import ExtensionUnavailable, load_extension

SUPPORTED_HEAD_SIZES = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SOURCES = ("wkv7/csrc/wkv7_binding.cpp", "wkv7/csrc/wkv7_kernels.cu")


# The backward steps backwards through a segment of the saved states (S_{t-1} from S_t by dividing
# by the decay) when every column's sum of exp(w) over the segment is at most this, so rounding
# errors grow at most e**7 ~ 1100-fold within a segment; otherwise, and always when this is <= 0,
# it recomputes S_{t-1} from the state entering the segment (exact for any decay, ~1.4x slower).
# With the model's decay parametrisation (exp(w) <= e**-0.5) a 16-step segment sums to <= 9.7.
BACKSTEP_MAX_LOG_GROWTH = 7.0
# State rows per lane group in the forward kernel (1 or 2; 2 applies to head sizes 32 and 64): two
# rows share every value read from shared memory.
FORWARD_ROWS_PER_THREAD = 2
# State columns per lane group in the backward kernel (1 or 2; 2 applies to head sizes 32 and 64).
BACKWARD_COLUMNS_PER_THREAD = 2


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, final_state, removal, checkpoints)``; the last two are empty unless saved.
    ``rows_per_thread`` as :data:`FORWARD_ROWS_PER_THREAD`."""
    extension = load()
    with torch.cuda.device(r.device):
        outputs = extension.forward(
            r, w, k, v, a, b, state, save_for_backward, rows_per_thread, _stream(r.device)
        )
    return tuple(outputs)


@cuda_forward.register_fake
def _(r, w, k, v, a, b, state, save_for_backward, rows_per_thread):
    B, T, H, N = r.shape
    segments = -(-T // segment_length(N))
    saved_batch = B if save_for_backward else 0
    return (
        torch.empty_like(r),
        r.new_empty(B, H, N, N, dtype=torch.float32),
        r.new_empty(saved_batch, T, H, N, dtype=torch.float32),
        r.new_empty(saved_batch, H, segments + 1, N, N, dtype=torch.float32),
    )


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
    r, w, k, v, a, b, state, save_for_backward, _rows_per_thread = inputs
    _, _, removal, checkpoints = output
    ctx.saved = save_for_backward
    ctx.has_state = state is not None
    ctx.save_for_backward(r, w, k, v, a, b, removal, checkpoints)


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
    grads = cuda_backward(
        r, w, k, v, a, b, removal, checkpoints, grad_y, grad_final_state, BACKWARD_COLUMNS_PER_THREAD,
        BACKSTEP_MAX_LOG_GROWTH,
    )
    grad_state = grads[6] if ctx.has_state else None
    return (*grads[:6], grad_state, None, None)


cuda_forward.register_autograd(_backward, setup_context=_setup_context)


def wkv7_cuda(r, w, k, v, a, b, state=None):
    """CUDA WKV7 on validated ``[B, T, H, N]`` CUDA inputs; returns ``(y, final_state)``."""
    inputs = [x.contiguous() for x in (r, w, k, v, a, b)]
    if state is not None:
        state = state.to(torch.float32).contiguous()
    needs_grad = torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs) or (state is not None and state.requires_grad)
    )
    y, final_state, _, _ = cuda_forward(*inputs, state, needs_grad, FORWARD_ROWS_PER_THREAD)
    return y, final_state

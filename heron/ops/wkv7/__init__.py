"""WKV7: the RWKV-7/8 time-mix recurrence (spec/RWKV8.md §2), reference + chunked + CUDA.

``wkv7(r, w, k, v, a, b, state=None, return_state=False, *, backend="auto")`` on ``[B, T, H, N]``
inputs in the official conventions (decay = exp(-exp(w)), the model passes ``a = -kk`` and
``b = kk * a_lr``); the state is ``[B, H, N_v, N_k]`` float32 (float64 for float64 inputs).

Backends:
- ``"cuda"``: the CUDA kernels (float32 / bfloat16 / float16 inputs, head sizes 16/32/64/128).
- ``"chunked"``: chunked pure PyTorch (any device, any head size; float32/float64 arithmetic).
- ``"reference"``: the step-by-step reference (tests).
- ``"auto"``: CUDA tensors -> CUDA kernels when the dtype/head size are supported and the
  extension builds (else chunked, after one warning); CPU -> the per-step path for sequences of
  at most ``SHORT_SEQUENCE`` steps (RNN-mode generation), else chunked.

All backends take an initial state and return the final state, are differentiable in every
input including the initial state, and are registered as ``torch.library`` custom ops so
``torch.compile`` traces through them.
"""

from __future__ import annotations

import warnings

import torch

from . import cuda as _cuda
from .chunked import without_autocast, wkv7_chunked
from .convert import fla_log_decay_to_w, state_from_fla, state_to_fla, w_to_fla_log_decay
from .reference import wkv7_reference
from .step import wkv7_step, wkv7_steps

__all__ = [
    "wkv7",
    "wkv7_reference",
    "wkv7_chunked",
    "wkv7_step",
    "wkv7_steps",
    "w_to_fla_log_decay",
    "fla_log_decay_to_w",
    "state_to_fla",
    "state_from_fla",
    "BACKENDS",
    "SHORT_SEQUENCE",
]

BACKENDS = ("auto", "reference", "chunked", "cuda")
# Up to this many steps the per-step recurrence beats the chunked path's set-up cost on CPU.
SHORT_SEQUENCE = 4
_NAMES = ("r", "w", "k", "v", "a", "b")
_warned_fallback = False


def _validate(tensors, state, return_state, backend):
    for name, x in zip(_NAMES, tensors):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv7: {name} must be a torch.Tensor, got {type(x).__name__}")
    r = tensors[0]
    if r.dim() != 4:
        raise ValueError(f"wkv7: r must be 4-D [B, T, H, N], got shape {tuple(r.shape)}")
    if not r.dtype.is_floating_point:
        raise TypeError(f"wkv7: inputs must be floating point, got r.dtype={r.dtype}")
    for name, x in zip(_NAMES[1:], tensors[1:]):
        if x.shape != r.shape:
            raise ValueError(
                f"wkv7: {name} has shape {tuple(x.shape)}, expected r's shape {tuple(r.shape)} [B, T, H, N]"
            )
        if x.dtype != r.dtype:
            raise TypeError(f"wkv7: {name} has dtype {x.dtype}, expected r's dtype {r.dtype}")
        if x.device != r.device:
            raise ValueError(f"wkv7: {name} is on {x.device}, expected r's device {r.device}")
    B, _, H, N = r.shape
    if state is not None:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"wkv7: state must be a torch.Tensor or None, got {type(state).__name__}")
        if tuple(state.shape) != (B, H, N, N):
            raise ValueError(
                f"wkv7: state has shape {tuple(state.shape)}, expected [B, H, N_v, N_k] = {(B, H, N, N)}"
            )
        if not state.dtype.is_floating_point:
            raise TypeError(f"wkv7: state must be floating point, got {state.dtype}")
        if state.device != r.device:
            raise ValueError(f"wkv7: state is on {state.device}, expected r's device {r.device}")
    if not isinstance(return_state, bool):
        raise TypeError(f"wkv7: return_state must be a bool, got {type(return_state).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"wkv7: backend must be one of {BACKENDS}, got {backend!r}")


def _check_cuda_supported(r: torch.Tensor) -> str | None:
    """Why the CUDA kernels cannot take ``r`` (None when they can)."""
    if r.device.type != "cuda":
        return f"the CUDA backend needs CUDA tensors, got device {r.device}"
    if r.dtype not in _cuda.SUPPORTED_DTYPES:
        return f"the CUDA backend takes float32, bfloat16 or float16 inputs, got {r.dtype}"
    head_size = r.shape[-1]
    if head_size not in _cuda.SUPPORTED_HEAD_SIZES:
        return (
            f"the CUDA backend supports head sizes {_cuda.SUPPORTED_HEAD_SIZES}, got N={head_size} "
            "(use backend='chunked' for other head sizes)"
        )
    return None


def wkv7(r, w, k, v, a, b, state=None, return_state=False, *, backend="auto"):
    """The WKV7 recurrence on ``[B, T, H, N]`` inputs; returns ``y`` or ``(y, final_state)``.

    ``state``: optional ``[B, H, N_v, N_k]`` initial state (zeros when None). ``y`` has the
    input dtype; the final state is float32 (float64 for float64 inputs).
    """
    tensors = (r, w, k, v, a, b)
    _validate(tensors, state, return_state, backend)
    if backend == "auto":
        backend = _auto_backend(r)
    if backend == "cuda":
        reason = _check_cuda_supported(r)
        if reason is not None:
            raise ValueError(f"wkv7: {reason}")
        y, final_state = _cuda.wkv7_cuda(*tensors, state)
    elif backend == "reference":
        with without_autocast(r.device):  # float32 arithmetic, as promised, under autocast too
            y, final_state = wkv7_reference(*tensors, state)
    elif backend == "step":
        with without_autocast(r.device):
            y, final_state = wkv7_steps(*tensors, _initial_state(r, state))
    else:
        y, final_state = _chunked(*tensors, state)
    return (y, final_state) if return_state else y


def _compute_dtype(r: torch.Tensor) -> torch.dtype:
    return torch.float64 if r.dtype == torch.float64 else torch.float32


def _initial_state(r, state):
    dtype = _compute_dtype(r)
    if state is None:
        B, _, H, N = r.shape
        return torch.zeros(B, H, N, N, dtype=dtype, device=r.device)
    return state.to(dtype)


def _auto_backend(r: torch.Tensor) -> str:
    global _warned_fallback
    if r.device.type == "cuda" and _check_cuda_supported(r) is None:
        # Inside a compiled graph the build check cannot be traced; the custom op builds (or
        # explains why it cannot) when the graph first runs.
        if torch.compiler.is_compiling() or _cuda.available():
            return "cuda"
        if not _warned_fallback:
            _warned_fallback = True
            try:
                _cuda.load()
            except Exception as exc:  # the message says why the build failed
                warnings.warn(f"wkv7: {exc}; using the chunked PyTorch path", stacklevel=3)
    if r.shape[1] <= SHORT_SEQUENCE:
        return "step"
    return "chunked"


def _chunked(r, w, k, v, a, b, state):
    if torch.compiler.is_compiling():
        # Inside a compiled graph the chunked path is one opaque custom op (its data-dependent
        # branch and Python loop must not be traced); eager code keeps plain autograd, which
        # avoids recomputing the forward in the backward.
        initial = _initial_state(r, state)
        return chunked_op(r, w, k, v, a, b, initial)
    return wkv7_chunked(r, w, k, v, a, b, state)


@torch.library.custom_op("heron::wkv7_chunked", mutates_args=())
def chunked_op(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, final_state = wkv7_chunked(r, w, k, v, a, b, state)
    # match the strides the fake below promises (compiled graphs view the outputs accordingly)
    return torch.empty_like(r).copy_(y), torch.empty_like(state).copy_(final_state)


@chunked_op.register_fake
def _(r, w, k, v, a, b, state):
    return torch.empty_like(r), torch.empty_like(state)


@torch.library.custom_op("heron::wkv7_chunked_backward", mutates_args=())
def chunked_backward_op(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    grad_y: torch.Tensor,
    grad_final_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Recompute the forward and pull the gradients back through it: the chunked path has no
    # hand-written backward. (Custom-op bodies run below the autograd dispatch key, so plain
    # torch.autograd.grad cannot be used here; torch.func.vjp carries its own autograd level.)
    _, pullback = torch.func.vjp(wkv7_chunked, r, w, k, v, a, b, state)
    grads = pullback((grad_y, grad_final_state))
    # match the strides the fake below promises (compiled graphs view the outputs accordingly)
    return tuple(torch.empty_like(x).copy_(g) for x, g in zip((r, w, k, v, a, b, state), grads))


@chunked_backward_op.register_fake
def _(r, w, k, v, a, b, state, grad_y, grad_final_state):
    return tuple(torch.empty_like(x) for x in (r, w, k, v, a, b, state))


def _chunked_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _chunked_backward(ctx, grad_y, grad_final_state):
    r, w, k, v, a, b, state = ctx.saved_tensors
    grad_y = torch.zeros_like(r) if grad_y is None else grad_y
    grad_final_state = torch.zeros_like(state) if grad_final_state is None else grad_final_state
    return chunked_backward_op(r, w, k, v, a, b, state, grad_y, grad_final_state)


chunked_op.register_autograd(_chunked_backward, setup_context=_chunked_setup_context)


class _CallableModule(type(warnings)):
    """Lets ``heron.ops.wkv7(...)`` (the documented op) and ``heron.ops.wkv7.wkv7(...)`` be the
    same call while the module keeps its other attributes (backends, converters, reference)."""

    def __call__(self, *args, **kwargs):
        return wkv7(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule

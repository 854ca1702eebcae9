"""ROSA (Rapid Online Suffix Automaton): exact token and QKV ROSA on integer streams.

Shapes: ``[T]``, ``[B, T]`` or channel streams ``[B, T, S]`` (time is dim 1 for 3-D inputs);
int64 symbols in ``[0, 2**31)``; output int64 of the same shape, ``-1`` where there is no match.
See spec/ROSA.md §1-2 for the semantics and ``csrc/rosa_core.h`` for the O(T log T) algorithm.

Backends: ``"cuda"`` (a block per stream grouping equal suffixes level by level, with one GPU thread
per stream running the automaton for the streams that kernel hands over), ``"cpu"`` (C++, parallel over streams, the GIL
released), ``"python"`` (the plain online suffix automaton of ``reference.py``, one stream at a
time; quadratic on constant or periodic streams). ``"auto"`` picks CUDA for CUDA tensors, else the
C++ CPU path, else Python; when a native build is impossible it falls back with one warning.
"""

from __future__ import annotations

import warnings

import torch

from .._build import ExtensionUnavailable, load_extension
from .online import OnlineROSA
from .reference import (
    SuffixAutomatonROSA,
    rosa_automaton,
    rosa_grouping,
    rosa_oracle,
    rosa_qkv_automaton,
    rosa_qkv_grouping,
    rosa_qkv_oracle,
    rosa_runs,
)

__all__ = [
    "rosa",
    "rosa_qkv",
    "pack_bits",
    "unpack_bits",
    "OnlineROSA",
    "rosa_oracle",
    "rosa_qkv_oracle",
    "rosa_automaton",
    "rosa_qkv_automaton",
    "rosa_grouping",
    "rosa_qkv_grouping",
    "rosa_runs",
    "SuffixAutomatonROSA",
    "native_cpu",
    "native_cuda",
    "SYMBOL_LIMIT",
]

SYMBOL_LIMIT = 2**31
BACKENDS = ("auto", "cpu", "cuda", "python")
# Integer dtypes accepted as symbol streams (converted to int64); bool and floats are refused so
# that a thresholding step is never skipped by accident.
_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

_CPU_SOURCES = ["rosa/csrc/rosa_cpu.cpp"]
_CUDA_SOURCES = ["rosa/csrc/rosa_cuda_binding.cpp", "rosa/csrc/rosa_cuda.cu", "rosa/csrc/rosa_grouping_cuda.cu"]
_warned: set[str] = set()
# The automaton kernel runs one GPU thread per stream: small blocks spread a few thousand streams
# over every SM.
CUDA_THREADS_PER_BLOCK = 32
# The grouping kernel (one block per stream, csrc/rosa_grouping_cuda.cu) runs first on streams
# with symbols up to the extension's `grouping_max_symbol` (255) and T <= 16384 (token) / 8192
# (QKV); after this many element visits per element a stream goes to the automaton. Random 1- and
# 4-bit streams need 10-15 (token and QKV, T = 512 and 4096: at most 15.0 in a simulation of the
# algorithm), periodic ones up to T. 0 runs the automaton alone (benchmarks compare the two so).
# Token streams with at most 64 runs of equal symbols (the nearly constant channels of trained deep
# layers) are answered from their runs inside the grouping kernel and never reach the budget.
CUDA_GROUPING_WORK_PER_ELEMENT = 32


def native_cpu():
    """The C++ CPU extension (built on first use), or raise ``ExtensionUnavailable``."""
    return load_extension("rosa_cpu", _CPU_SOURCES)


def native_cuda():
    """The CUDA extension (built on first use), or raise ``ExtensionUnavailable``."""
    return load_extension("rosa_cuda", _CUDA_SOURCES, cuda=True)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def _check_symbols(name: str, tensor) -> torch.Tensor:
    """Validate an integer symbol tensor; return it as int64."""
    return _check_symbol_tensors([(name, tensor)])[0][0]


def _check_symbol_layout(name: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer symbols, got {type(tensor).__name__}")
    if tensor.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"{name} must hold integer symbols (int64, or int32/int16/int8/uint8), got {tensor.dtype}; "
            "threshold float activations first (e.g. with pack_bits)"
        )
    if tensor.dim() not in (1, 2, 3):
        raise ValueError(
            f"{name} must have shape [T], [B, T] or [B, T, S], got {tuple(tensor.shape)}"
        )
    if tensor.device.type not in ("cpu", "cuda"):  # e.g. meta tensors: there are no symbols to read
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {tensor.device}")


def _check_symbol_tensors(named) -> list[tuple[torch.Tensor, int]]:
    """Validate ``(name, tensor)`` pairs; return each as int64 with its largest symbol (-1 if
    empty). The value ranges of all tensors are read back together: one device-to-host copy (one
    synchronisation on a GPU) however many tensors are checked."""
    for name, tensor in named:
        _check_symbol_layout(name, tensor)
    ranges = [torch.stack(torch.aminmax(t)).to(torch.int64) for _, t in named if t.numel() > 0]
    if len({r.device for r in ranges}) == 1:
        values = iter(torch.cat(ranges).tolist())
    else:  # mixed devices (refused later by the caller): read each back on its own
        values = iter([value for r in ranges for value in r.tolist()])
    out = []
    for name, tensor in named:
        largest = -1
        if tensor.numel() > 0:
            low, high = next(values), next(values)
            if low < 0:
                raise ValueError(f"{name} must hold non-negative symbols, found {low}")
            if high >= SYMBOL_LIMIT:
                raise ValueError(f"{name} must hold symbols below 2**31, found {high}")
            largest = high
        out.append((tensor.to(torch.int64), largest))
    return out


def _as_streams(tensor: torch.Tensor) -> torch.Tensor:
    """View as [B, T, S] (the kernels' layout: stream (b, s), element t at b*T*S + t*S + s)."""
    if tensor.dim() == 1:
        return tensor.reshape(1, -1, 1)
    if tensor.dim() == 2:
        return tensor.unsqueeze(-1)
    return tensor


def _python_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, length, channels = q.shape
    rows = [t.cpu().permute(0, 2, 1).reshape(batch * channels, length).tolist() for t in (q, k, v)]
    out = torch.tensor(
        [rosa_qkv_automaton(a, b, c) for a, b, c in zip(*rows)], dtype=torch.int64
    ).reshape(batch, channels, length)
    return out.permute(0, 2, 1).contiguous()


def _dense_sigma(k: torch.Tensor, limit: int, largest_key: int | None = None) -> int:
    """Alphabet size for dense transitions (largest key symbol + 1) or 0 for hashed ones."""
    if k.numel() == 0:
        return 1
    sigma = (int(k.max()) if largest_key is None else largest_key) + 1
    return sigma if sigma <= limit else 0


def _cpu_forward(q, k, v, strict: bool, largest_key: int | None = None) -> torch.Tensor:
    try:
        ext = native_cpu()
    except ExtensionUnavailable as exc:
        if strict:
            raise
        _warn_once("cpu", f"{exc}; ROSA falls back to the pure-Python automaton")
        return _python_forward(q, k, v)
    q, k, v = (t.cpu().contiguous() for t in (q, k, v))
    return ext.forward(q, k, v, _dense_sigma(k, ext.dense_max_sigma, largest_key))


def _cuda_forward(q, k, v, strict: bool, largest_key: int | None = None) -> torch.Tensor:
    """``largest_key`` bounds the key symbols (``None``: read here); the grouping kernel is skipped
    when it rules the grouping kernel out (it would hand every stream to the automaton)."""
    try:
        ext = native_cuda()
    except ExtensionUnavailable as exc:
        if strict:
            raise
        _warn_once("cuda", f"{exc}; ROSA runs on the CPU for these CUDA tensors")
        return _cpu_forward(q, k, v, strict=False, largest_key=largest_key).to(q.device)
    q, k, v = (t.contiguous() for t in (q, k, v))
    with torch.cuda.device(q.device):
        free_bytes, _ = torch.cuda.mem_get_info()
        # Streams run in chunks whose scratch fits in half the free memory (at most 8 GiB).
        workspace_limit = max(1, min(free_bytes // 2, 8 << 30))
        if largest_key is None and k.numel() > 0:
            largest_key = int(k.max())
        grouping = CUDA_GROUPING_WORK_PER_ELEMENT if (largest_key or 0) <= ext.grouping_max_symbol else 0
        return ext.forward(
            q, k, v, _dense_sigma(k, ext.dense_max_sigma, largest_key), CUDA_THREADS_PER_BLOCK,
            workspace_limit, torch.cuda.current_stream().cuda_stream,
            grouping_work_per_element=grouping,
        )


def rosa_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """QKV ROSA (spec §2): for each i, ``v[j + 1]`` for the latest ``j < i`` ending the longest
    suffix of ``q[0..i]`` found in ``k``; ``-1`` when ``q[i]`` does not occur in ``k[0..i-1]``.

    ``q``, ``k``, ``v``: integer tensors of one shape ``[T]``, ``[B, T]`` or ``[B, T, S]`` on one
    device, symbols in ``[0, 2**31)``. Returns int64 of that shape on that device.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # Token ROSA passes one tensor three times: validate (one pass over the data) once; the
    # ranges of all distinct tensors come back to the host in one copy (one GPU sync per call).
    same_k, same_v = k is q, v is q
    named = [("q", q)] + ([] if same_k else [("k", k)]) + ([] if same_v else [("v", v)])
    checked = iter(_check_symbol_tensors(named))
    q, largest_query = next(checked)
    k, largest_key = (q, largest_query) if same_k else next(checked)
    v = q if same_v else next(checked)[0]
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    return _dispatch(q, k, v, largest_key, backend)


def _dispatch(q, k, v, largest_key: int, backend: str = "auto") -> torch.Tensor:
    """Run validated int64 ``q, k, v`` of one shape and device; ``largest_key`` bounds the key
    symbols from above (it picks dense transitions when it is below ``dense_max_sigma``)."""
    length = q.shape[0] if q.dim() == 1 else q.shape[1]
    if length >= 2**29:
        raise ValueError(f"q: T must be below 2**29 (32-bit automaton states), got {length}")
    device = q.device
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors; q is on {device}")
    streams = [_as_streams(t) for t in (q, k, v)]
    if backend == "python":
        out = _python_forward(*streams)
    elif backend == "cpu":
        out = _cpu_forward(*streams, strict=True, largest_key=largest_key)
    elif backend == "cuda":
        out = _cuda_forward(*streams, strict=True, largest_key=largest_key)
    elif device.type == "cuda":
        out = _cuda_forward(*streams, strict=False, largest_key=largest_key)
    else:
        out = _cpu_forward(*streams, strict=False, largest_key=largest_key)
    return out.reshape(q.shape).to(device)


def _rosa_qkv_trusted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alphabet: int) -> torch.Tensor:
    """:func:`rosa_qkv` (``backend="auto"``) without reading the symbols back to the host: for
    callers that built ``q, k, v`` themselves (int64, one shape and device, every symbol in
    ``[0, alphabet)``, e.g. from ``pack_bits``), so the training path never synchronises with
    the GPU. Nothing is checked beyond the layout; out-of-range symbols are undefined behaviour.
    ``v`` may hold any values in ``[0, 2**31)`` (positions, for instance): only the keys index the
    transition tables. Pass ``k is q`` for token ROSA (the kernels then skip the matcher)."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64 or tensor.dim() not in (1, 2, 3):
            raise TypeError(f"_rosa_qkv_trusted: {name} must be an int64 tensor [T], [B, T] or [B, T, S]")
    if not (q.shape == k.shape == v.shape) or not (q.device == k.device == v.device):
        raise ValueError("_rosa_qkv_trusted: q, k and v must have one shape and device")
    if isinstance(alphabet, bool) or not isinstance(alphabet, int) or alphabet < 1:
        raise ValueError(f"_rosa_qkv_trusted: alphabet must be a positive int, got {alphabet!r}")
    largest_key = min(alphabet, SYMBOL_LIMIT) - 1 if k.numel() > 0 else -1
    return torch.ops.heron.rosa_qkv_symbols(q, k, v, largest_key, k is q)


# The engine as a torch.library custom op, so that torch.compile traces the ROSA layers into one
# graph with the rest of a block (an opaque extension call would be a graph break per layer) and
# autograd Functions around it stay traceable. ``keys_are_queries`` keeps token ROSA's "k is q"
# through tracing, where tensor identity is not preserved.
@torch.library.custom_op("heron::rosa_qkv_symbols", mutates_args=())
def _rosa_qkv_symbols(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, largest_key: int, keys_are_queries: bool
) -> torch.Tensor:
    out = _dispatch(q, q if keys_are_queries else k, v, largest_key)
    return out.clone() if out.data_ptr() in (q.data_ptr(), k.data_ptr(), v.data_ptr()) and out.numel() else out


@_rosa_qkv_symbols.register_fake
def _(q, k, v, largest_key, keys_are_queries):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def rosa(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Token ROSA (spec §1): QKV ROSA with ``q = k = v = x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of integer symbols, got {type(x).__name__}")
    return rosa_qkv(x, x, x, backend=backend)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in 1..8, got {type(bits).__name__}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return bits


def pack_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Threshold ``x[..., C]`` at 0 and pack ``bits`` channels into one symbol (spec §3):
    symbol ``c`` = ``sum_m (x[..., bits*c + m] > 0) << m``; returns int64 ``[..., C // bits]``."""
    bits = _check_bits(bits)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"x must be a real tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have a channel dimension, got a 0-d tensor")
    channels = x.shape[-1]
    if channels % bits != 0:
        raise ValueError(f"x: the channel count {channels} is not divisible by bits={bits}")
    grouped = (x > 0).reshape(*x.shape[:-1], channels // bits, bits).to(torch.int64)
    weights = torch.bitwise_left_shift(
        torch.ones(bits, dtype=torch.int64, device=x.device), torch.arange(bits, device=x.device)
    )
    return (grouped * weights).sum(-1)


def unpack_bits(symbols: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[..., G]`` symbols in ``[0, 2**bits)`` to 0/1 int64
    ``[..., G * bits]`` (bit ``m`` of symbol ``g`` at channel ``bits*g + m``)."""
    bits = _check_bits(bits)
    if not isinstance(symbols, torch.Tensor):
        raise TypeError(f"symbols must be a torch.Tensor, got {type(symbols).__name__}")
    if symbols.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"symbols must be an integer tensor, got {symbols.dtype}")
    if symbols.dim() == 0:
        raise ValueError("symbols must have a group dimension, got a 0-d tensor")
    if symbols.numel() > 0:
        low, high = torch.aminmax(symbols)
        if int(low) < 0 or int(high) >= 2**bits:
            raise ValueError(
                f"symbols must lie in [0, {2**bits}) for bits={bits}, found [{int(low)}, {int(high)}]"
            )
    shifts = torch.arange(bits, device=symbols.device)
    unpacked = torch.bitwise_right_shift(symbols.to(torch.int64).unsqueeze(-1), shifts) & 1
    return unpacked.reshape(*symbols.shape[:-1], symbols.shape[-1] * bits)

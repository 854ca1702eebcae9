"""Trainable ROSA: autograd Functions for the channel and QKV ROSA ops and their gradient estimators.

ROSA is piecewise constant in its float inputs (spec/ROSA.md §3–4). The ops here threshold float
activations into symbol streams (``x > 0``, grouped ``bits`` channels per symbol), run exact ROSA
on them (``heron.ops.rosa.rosa_qkv``) and decode every output symbol ``y`` (``-1`` = no match)
through a *decode table* ``table[y + 1, c]``: the layer output at channel ``c`` when the symbol of
its group is ``y``. Every official layer variant is such a table built from its learned vectors
(:func:`channel_decode_table`, :func:`qkv_decode_table`), so the learned vectors get exact
gradients through the table by ordinary autograd, and the thresholded inputs get an estimator:

``"flip"``
    The official bit-flip estimator (spec §4): for every position ``t`` and bit ``m`` of a stream,
    ``dL/dx = (phi(bit=1) - phi(bit=0)) / (2 * max(|x|, tau))`` with ``phi = sum_t g[t] . out_t``.
    Computed exactly (same numbers as :func:`naive_flip_grad_channel` / :func:`naive_flip_grad_qkv`
    up to float summation order) by the C++ (OpenMP) or CUDA kernels, which re-run only the
    suffix a flip changes: O(bits * T^2) re-run positions per stream (each a few bitset word
    operations on the CPU); the official choice for short contexts.
``"window"``
    The same finite difference, but each flip re-runs only the ``window`` positions starting at
    the flipped one (effects further away are dropped). O(bits * T * window) re-run positions per
    stream on the CPU:
    the cheap estimator for long contexts. ``window >= T`` equals ``"flip"``.
``"value"``
    Copy-through: only the value path of the flip (an output that *retrieved* position ``t``
    changes when the bit at ``t`` flips; the match itself is held fixed). O(bits * T) per stream,
    pure PyTorch on any device. The retrieval indices it needs come from the forward pass (the
    forward kernel runs with the positions as values and the output is gathered from them), so
    its backward runs no automaton. For QKV ops it gives the value gradient only (``q``/``k``
    get zeros), so use it for channel layers or as a baseline.

All estimators share the denominator ``2 * max(|x|, tau)``; see docs/estimators.md.

``max_gain`` (optional, any estimator): the spec's per-element numbers are kept *in direction*, but
the estimated input gradient of one op call (``dx``, or ``dq, dk, dv`` together) is scaled down
when its norm exceeds ``max_gain`` times the norm of the upstream gradient ``grad_out``. The
``1 / max(|x|, tau)`` factor gives every ROSA op a gradient gain of ~``1 / sqrt(tau)`` from its
output to its inputs, and in a deep model that gain compounds layer after layer through the
residual stream (docs/estimators.md, "Deep models"); the bound stops the compounding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .._build import ExtensionUnavailable, load_extension
from .reference import rosa_qkv_automaton

__all__ = [
    "ESTIMATORS",
    "EstimatorConfig",
    "channel_decode_table",
    "qkv_decode_table",
    "rosa_channel",
    "rosa_qkv_channels",
    "flip_deltas",
    "flip_deltas_reference",
    "naive_flip_grad_channel",
    "naive_flip_grad_qkv",
    "native_flip_cpu",
    "native_flip_cuda",
]

ESTIMATORS = ("flip", "window", "value")
DEFAULT_WINDOW = 16
NO_MATCH_CONVENTIONS = ("zero", "symbol0")

_CPU_SOURCES = ["rosa/csrc/rosa_flip_cpu.cpp"]
_CUDA_SOURCES = ["rosa/csrc/rosa_flip_cuda_binding.cpp", "rosa/csrc/rosa_flip_cuda.cu"]
_warned: set[str] = set()


def native_flip_cpu():
    """The C++ flip-estimator extension (built on first use), or raise ``ExtensionUnavailable``."""
    return load_extension("rosa_flip_cpu", _CPU_SOURCES)


def native_flip_cuda():
    """The CUDA flip-estimator extension (built on first use), or raise ``ExtensionUnavailable``."""
    return load_extension("rosa_flip_cuda", _CUDA_SOURCES, cuda=True)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# configuration and validation


@dataclass(frozen=True)
class EstimatorConfig:
    """Which gradient estimator a ROSA op uses for its thresholded inputs."""

    estimator: str = "flip"
    tau: float = 1e-3
    window: int = DEFAULT_WINDOW
    max_gain: float | None = None  # None: the spec's numbers unscaled

    def __post_init__(self):
        if not isinstance(self.estimator, str) or self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0 < self.tau < float("inf"):
            # (an infinite floor would silently zero every input gradient)
            raise ValueError(f"tau must be a positive finite float, got {self.tau!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive int, got {self.window!r}")
        if self.max_gain is not None and (
            isinstance(self.max_gain, bool) or not isinstance(self.max_gain, (int, float))
            or not 0 < self.max_gain < float("inf")
        ):
            raise ValueError(f"max_gain must be None or a positive finite float, got {self.max_gain!r}")

    def window_for(self, length: int) -> int:
        """Positions each flip re-runs (the whole suffix for ``"flip"``)."""
        return length if self.estimator == "flip" else min(self.window, max(length, 1))


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in 1..8, got {type(bits).__name__}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return bits


def check_activation(name: str, x, channels: int | None = None, bits: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, T, C], got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be a floating-point tensor [B, T, C], got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B, T, C], got {tuple(x.shape)}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name} must have {channels} channels (last dim), got {x.shape[-1]}")
    if x.shape[-1] % bits != 0:
        raise ValueError(f"{name}: channels ({x.shape[-1]}) must be divisible by bits ({bits})")
    return x


# ----------------------------------------------------------------------------------------------
# decode tables


def channel_decode_table(emb0: torch.Tensor, emb1: torch.Tensor, bits: int, no_match: str) -> torch.Tensor:
    """Decode table ``[2^bits + 1, C]`` of the channel layers (``ROSABits``): bit 1 of the output
    symbol selects ``emb1[c]``, bit 0 ``emb0[c]``; no match gives ``0`` (``no_match="zero"``, the
    official 1-bit layer) or decodes as symbol 0, i.e. ``emb0`` (``"symbol0"``, the official 4-bit
    layer). Differentiable in ``emb0`` and ``emb1``."""
    if no_match not in NO_MATCH_CONVENTIONS:
        raise ValueError(f"no_match must be one of {NO_MATCH_CONVENTIONS}, got {no_match!r}")
    e0 = emb0.reshape(-1)
    e1 = emb1.reshape(-1)
    bit = _symbol_bits(bits, e0.shape[0], e0.device, e0.dtype)  # [2^bits, C]
    matched = e0 + bit * (e1 - e0)
    first = torch.zeros_like(e0) if no_match == "zero" else e0
    return torch.cat([first.unsqueeze(0), matched], dim=0)


def qkv_decode_table(emb: torch.Tensor, bits: int, no_match: str) -> torch.Tensor:
    """Decode table ``[2^bits + 1, C]`` of the ROSA-QKV op: bit 1 gives ``+emb[c]``, bit 0
    ``-emb[c]``; no match gives ``-emb`` (``"symbol0"``, the official 1-bit op) or ``0``
    (``"zero"``, the official 4-bit op)."""
    if no_match not in NO_MATCH_CONVENTIONS:
        raise ValueError(f"no_match must be one of {NO_MATCH_CONVENTIONS}, got {no_match!r}")
    e = emb.reshape(-1)
    bit = _symbol_bits(bits, e.shape[0], e.device, e.dtype)
    matched = (2.0 * bit - 1.0) * e
    first = torch.zeros_like(e) if no_match == "zero" else -e
    return torch.cat([first.unsqueeze(0), matched], dim=0)


def _symbol_bits(bits: int, channels: int, device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``[2^bits, C]``: bit ``c % bits`` of symbol ``y`` (channel ``c`` decodes bit ``c % bits``),
    as ``dtype``. A constant (cached, see :func:`_constant`)."""

    def build():
        symbols = torch.arange(2**bits, device=device).unsqueeze(1)
        which = (torch.arange(channels, device=device) % bits).unsqueeze(0)
        return ((symbols >> which) & 1).to(dtype)

    return _constant(("symbol_bits", bits, channels, dtype), device, build)


def _bit_weights(bits: int, device) -> torch.Tensor:
    """uint8 ``[bits]``: ``1 << m`` (a cached constant)."""

    def build():
        ones = torch.ones(bits, dtype=torch.uint8, device=device)
        return torch.bitwise_left_shift(ones, torch.arange(bits, dtype=torch.uint8, device=device))

    return _constant(("bit_weights", bits), device, build)


def _bit_masks(bits: int, device) -> torch.Tensor:
    """int64 ``[bits]``: ``1 << m`` (a cached constant)."""
    return _constant(("bit_masks", bits), device, lambda: 1 << torch.arange(bits, device=device))


# Small constant tensors of the hot path (bit masks) per device: rebuilding them costs a few
# kernel launches per call, and building one from Python data on a GPU would be a synchronising
# host-to-device copy. Only plain tensors made outside tracing are kept; they are made outside
# inference mode so that autograd may save them later. Never modified in place.
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(key: tuple, device, build) -> torch.Tensor:
    device = torch.device(device)
    key = key + (device,)
    cached = _CONSTANTS.get(key)
    if cached is not None:
        return cached
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    compiling = getattr(torch, "compiler", None) is not None and torch.compiler.is_compiling()
    if type(value) is torch.Tensor and device.type != "meta" and not compiling:
        _CONSTANTS[key] = value
    return value


# ----------------------------------------------------------------------------------------------
# layout helpers: [B, T, C] activations <-> [B, T, G] symbols <-> [S = B*G, T] streams


def pack_symbols(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``[B, T, C]`` float -> ``[B, T, C // bits]`` int64 symbols (bit m = channel bits*g + m > 0).

    The bits are weighted in uint8 and summed straight into int64 (the kernels' symbol type), so
    no int64 ``[B, T, C]`` intermediate is written: 3 kernels (1 for ``bits == 1``)."""
    B, T, C = x.shape
    positive = x > 0
    if bits == 1:
        return positive.to(torch.int64)
    grouped = positive.reshape(B, T, C // bits, bits)
    # eager: reinterpret the bools in place (no conversion kernel); Inductor cannot lower a bool
    # view and fuses the conversion anyway
    grouped = grouped.to(torch.uint8) if torch.compiler.is_compiling() else grouped.view(torch.uint8)
    return (grouped * _bit_weights(bits, x.device)).sum(-1, dtype=torch.int64)


def _to_streams(symbols: torch.Tensor) -> torch.Tensor:
    B, T, G = symbols.shape
    return symbols.permute(0, 2, 1).reshape(B * G, T).contiguous()


def _from_streams(per_bit: torch.Tensor, B: int, G: int) -> torch.Tensor:
    """``[S, T, bits]`` -> ``[B, T, G * bits]``."""
    S, T, bits = per_bit.shape
    return per_bit.reshape(B, G, T, bits).permute(0, 2, 1, 3).reshape(B, T, G * bits)


def _group_index(y: torch.Tensor, bits: int) -> torch.Tensor:
    """``[B * T, G, bits]`` view of ``y + 1`` repeated over each group's ``bits`` channels (an
    expanded view: the int64 ``[B * T, C]`` index is never written)."""
    B, T, G = y.shape
    return (y + 1).reshape(B * T, G, 1).expand(B * T, G, bits)


def _decode(table: torch.Tensor, y: torch.Tensor, bits: int) -> torch.Tensor:
    """``out[b, t, c] = table[y[b, t, c // bits] + 1, c]``."""
    B, T, G = y.shape
    return table.reshape(table.shape[0], G, bits).gather(0, _group_index(y, bits)).reshape(B, T, G * bits)


def _table_grad(table: torch.Tensor, y: torch.Tensor, grad_out: torch.Tensor, bits: int) -> torch.Tensor:
    """Exact gradient of :func:`_decode` w.r.t. ``table``: ``grad_out`` summed per (symbol, channel)."""
    B, T, G = y.shape
    rows, channels = table.shape
    source = grad_out.reshape(B * T, G, bits).to(table.dtype)
    grad = torch.zeros(rows, G, bits, dtype=table.dtype, device=table.device)
    return grad.scatter_add_(0, _group_index(y, bits), source).reshape(rows, channels)


def _value_table(grad_out: torch.Tensor, table: torch.Tensor, bits: int) -> torch.Tensor:
    """``val[s, t, y + 1] = sum_m g[b, t, bits*g + m] * table[y + 1, bits*g + m]`` as ``[S, T, Y]``."""
    B, T, C = grad_out.shape
    G = C // bits
    g = grad_out.reshape(B, T, G, bits)
    tab = table.reshape(table.shape[0], G, bits).to(grad_out.dtype)
    val = torch.einsum("btgm,ygm->bgty", g, tab)
    return val.reshape(B * G, T, table.shape[0]).contiguous()


def _forward_symbols(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bits: int) -> torch.Tensor:
    """ROSA of symbol tensors built by :func:`pack_symbols` (in ``[0, 2^bits)`` by construction):
    no validation pass, so no host-device synchronisation."""
    from . import _rosa_qkv_trusted  # the engine; imported late so this module loads on its own

    return _rosa_qkv_trusted(q, k, v, 2**bits)


def _retrieve(q: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    """Retrieval index ``j + 1`` (``-1`` = no match) of every position of ``[B, T, G]`` symbol
    tensors: the forward kernel with the positions as values (the match never depends on ``v``).
    Pass ``k is q`` for token ROSA."""
    B, T, G = q.shape
    positions = torch.arange(T, device=q.device).reshape(1, T, 1).expand(B, T, G).contiguous()
    return _forward_symbols(q, k, positions, bits)


def _retrieved_values(v: torch.Tensor, retrieved: torch.Tensor) -> torch.Tensor:
    """``v[b, r, g]`` at the retrieval indices ``r = retrieved[b, t, g]``, ``-1`` where there is
    no match: the ROSA output."""
    return v.gather(1, retrieved.clamp_min(0)).masked_fill_(retrieved < 0, -1)


# ----------------------------------------------------------------------------------------------
# phi differences: the kernels and their pure-Python fallback


def flip_deltas(q, k, v, val, bits: int, window: int, *, token: bool, want=(True, True, True)):
    """``phi(flipped) - phi(original)`` for every flip of a stream bit: ``[S, T, bits]`` each.

    ``q, k, v``: int64 ``[S, T]`` streams (``token=True``: one stream used as q, k and v, a flip
    changes all three; the result is returned as the first element). ``val``: ``[S, T, 2^bits+1]``.
    ``want``: which of (q, k, v) to compute in QKV mode (``None`` for the others). Runs the C++ or
    CUDA kernel when available, else :func:`flip_deltas_reference` (with one warning).
    """
    want = tuple(bool(w) for w in want)
    deltas = torch.ops.heron.rosa_flip_deltas(q, k, v, val, bits, window, token, *want)
    if token:
        return (deltas[0],)
    return tuple(d if w else None for d, w in zip(deltas, want))


# The estimator kernels as torch.library custom ops (see heron.ops.rosa's rosa_qkv_symbols): the
# backward of the ROSA autograd Functions then traces into a compiled graph. Outputs not wanted
# come back as empty [0] tensors (a custom op returns tensors, never None).
@torch.library.custom_op("heron::rosa_flip_deltas", mutates_args=())
def _flip_deltas_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, val: torch.Tensor, bits: int, window: int,
    token: bool, want_q: bool, want_k: bool, want_v: bool,
) -> list[torch.Tensor]:
    want = (want_q, want_k, want_v)
    deltas = _flip_deltas_eager(q, k, v, val, bits, window, token=token, want=want)
    if token:
        return [deltas[0].contiguous()]
    empty = val.new_empty(0)
    return [d.contiguous() if w and d is not None else empty.clone() for d, w in zip(deltas, want)]


@_flip_deltas_op.register_fake
def _(q, k, v, val, bits, window, token, want_q, want_k, want_v):
    S, T = val.shape[0], val.shape[1]
    if token:
        return [val.new_empty(S, T, bits)]
    return [val.new_empty(S, T, bits) if w else val.new_empty(0) for w in (want_q, want_k, want_v)]


def _flip_deltas_eager(q, k, v, val, bits: int, window: int, *, token: bool, want=(True, True, True)):
    device = val.device
    if val.dtype not in (torch.float32, torch.float64):
        # bf16/fp16 upstream gradients (autocast): sum the deltas in fp32, hand back the input dtype
        deltas = _flip_deltas_eager(q, k, v, val.float(), bits, window, token=token, want=want)
        return tuple(d.to(val.dtype) if d is not None else None for d in deltas)
    S, T = val.shape[0], val.shape[1]
    if S == 0 or T == 0:
        zeros = val.new_zeros(S, T, bits)
        return (zeros,) if token else tuple(zeros.clone() if w else None for w in want)
    ext = None
    if device.type == "cuda":
        try:
            ext = native_flip_cuda()
        except ExtensionUnavailable as exc:
            _warn_once("cuda", f"{exc}; the ROSA flip estimator runs on the CPU for CUDA tensors")
            cpu = _flip_deltas_eager(
                q.cpu(), k.cpu(), v.cpu(), val.cpu(), bits, window, token=token, want=want
            )
            return tuple(d.to(device) if d is not None else None for d in cpu)
    else:
        try:
            ext = native_flip_cpu()
        except ExtensionUnavailable as exc:
            _warn_once("cpu", f"{exc}; the ROSA flip estimator falls back to pure Python (slow)")
    if ext is None:
        return flip_deltas_reference(q, k, v, val, bits, window, token=token, want=want)
    with _on_device(device) as stream_args:
        if token:
            return (ext.flip_token(q.contiguous(), val.contiguous(), bits, window, *stream_args),)
        dq, dk, dv = ext.flip_qkv(
            q.contiguous(), k.contiguous(), v.contiguous(), val.contiguous(), bits, window, *want,
            *stream_args,
        )
    return tuple(d if w else None for d, w in zip((dq, dk, dv), want))


class _on_device:
    """For CUDA: make ``device`` current and yield ``(raw stream handle,)`` for the binding,
    which takes the caller's stream instead of including c10/cuda headers; ``()`` on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.guard = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.guard is None:
            return ()
        self.guard.__enter__()
        return (torch.cuda.current_stream(self.device).cuda_stream,)

    def __exit__(self, *exc):
        if self.guard is not None:
            self.guard.__exit__(*exc)
        return False


def flip_deltas_reference(q, k, v, val, bits: int, window: int, *, token: bool, want=(True, True, True)):
    """Pure-Python :func:`flip_deltas`: every flipped stream is re-run from scratch with the plain
    suffix automaton and scored through ``val``: positions ``t .. t+window-1`` only, except for
    value flips, which are scored everywhere (the kernels' closed form: a value flip changes only
    the outputs that copy it, wherever they are, docs/estimators.md)."""
    S, T = val.shape[0], val.shape[1]
    table = val.detach().cpu().double()
    qs, ks, vs = (t.detach().cpu().tolist() for t in (q, k, v))
    targets = ("token",) if token else tuple(n for n, w in zip("qkv", want) if w)
    out = {name: torch.zeros(S, T, bits, dtype=torch.float64) for name in targets}
    for s in range(S):
        base_y = rosa_qkv_automaton(qs[s], ks[s], vs[s])
        base = [float(table[s, i, base_y[i] + 1]) for i in range(T)]
        for name in targets:
            for t in range(T):
                for m in range(bits):
                    streams = {"q": list(qs[s]), "k": list(ks[s]), "v": list(vs[s])}
                    for which in ("qkv" if name == "token" else name):
                        streams[which][t] ^= 1 << m
                    y = rosa_qkv_automaton(streams["q"], streams["k"], streams["v"])
                    end = T if name == "v" else min(T, t + window)
                    out[name][s, t, m] = sum(float(table[s, i, y[i] + 1]) - base[i] for i in range(t, end))
    result = {n: d.to(val.dtype).to(val.device) for n, d in out.items()}
    if token:
        return (result["token"],)
    return tuple(result.get(n) for n in "qkv")


def value_deltas(retrieved: torch.Tensor, values: torch.Tensor, val: torch.Tensor, bits: int) -> torch.Tensor:
    """Copy-through deltas ``[S, T, bits]``: an output at ``i`` that retrieved position
    ``r = retrieved[s, i]`` changes to the flipped value symbol ``values[s, r] ^ (1 << m)``."""
    S, T, Y = val.shape
    matched = retrieved >= 0
    r = retrieved.clamp_min(0)
    source = values.gather(1, r)  # [S, T] the retrieved symbol (= y where matched)
    base = val.gather(2, torch.where(matched, source + 1, torch.zeros_like(source)).unsqueeze(-1))
    flips = source.unsqueeze(-1) ^ _bit_masks(bits, val.device)  # [S, T, bits]
    diff = val.gather(2, flips + 1) - base
    diff = diff * matched.unsqueeze(-1).to(val.dtype)
    out = torch.zeros(S, T, bits, dtype=val.dtype, device=val.device)
    return out.scatter_add_(1, r.unsqueeze(-1).expand(S, T, bits), diff)


def retrieval_indices(q: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    """Retrieval index ``j + 1`` of every position of ``[S, T]`` streams (``-1`` = no match)."""
    return torch.ops.heron.rosa_retrieval_indices(q, k, bits)


@torch.library.custom_op("heron::rosa_retrieval_indices", mutates_args=())
def _retrieval_indices_op(q: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    return _retrieval_indices_eager(q, k, bits)


@_retrieval_indices_op.register_fake
def _(q, k, bits):
    return torch.empty_like(q, dtype=torch.int64, memory_format=torch.contiguous_format)


def _retrieval_indices_eager(q: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    if q.device.type == "cuda":
        try:
            ext = native_flip_cuda()
            with _on_device(q.device) as stream_args:
                return ext.retrieval(q.contiguous(), k.contiguous(), 2**bits, *stream_args)
        except ExtensionUnavailable as exc:
            _warn_once("cuda-r", f"{exc}; ROSA retrieval indices are computed on the CPU")
            return _retrieval_indices_eager(q.cpu(), k.cpu(), bits).to(q.device)
    try:
        return native_flip_cpu().retrieval(q.contiguous(), k.contiguous(), 2**bits)
    except ExtensionUnavailable as exc:
        _warn_once("cpu-r", f"{exc}; ROSA retrieval indices fall back to pure Python")
    return torch.tensor(
        [_retrieval_python(a, b) for a, b in zip(q.tolist(), k.tolist())], dtype=torch.int64
    ).reshape(q.shape)


def _retrieval_python(q: list[int], k: list[int]) -> list[int]:
    # Retrieval index = j + 1: run the automaton with v = positions.
    return rosa_qkv_automaton(q, k, list(range(len(q))))


# ----------------------------------------------------------------------------------------------
# autograd Functions


def _finish(delta: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
    """``(phi_plus - phi_minus) / (2 max(|x|, tau))`` from ``phi(flipped) - phi(original)``."""
    # ``where(x > 0, -d, d)`` equals ``sign * delta / denominator`` bit for bit (negation is exact)
    scaled = delta / (2.0 * x.abs().clamp_min(tau).to(delta.dtype))
    return torch.where(x > 0, -scaled, scaled).to(x.dtype)


def _bound_gain(grads: list, grad_out: torch.Tensor, max_gain: float | None) -> list:
    """Scale the estimated input gradients of one op call (``None`` entries skipped) by one common
    factor so that their joint norm is at most ``max_gain * |grad_out|``; unchanged when it already
    is, or when ``max_gain`` is ``None``. The factor stays on the device (no host read-back). A
    non-finite estimate gets the factor 0 rather than spreading ``inf``/``nan`` upstream."""
    present = [g for g in grads if g is not None]
    if max_gain is None or not present:
        return grads
    # at least float32 (bf16/fp16 gradients under autocast), float64 for float64 gradients
    compute = torch.float64 if any(g.dtype == torch.float64 for g in present) else torch.float32
    squares = torch.stack([g.to(compute).square().sum() for g in present]).sum()
    limit = max_gain * grad_out.to(compute).norm()
    # limit / norm <= 1 is the factor; clamp_min keeps 0 / 0 away for an all-zero estimate
    factor = (limit / squares.sqrt().clamp_min(torch.finfo(compute).tiny)).clamp(max=1.0)
    factor = torch.where(torch.isfinite(squares), factor, torch.zeros_like(factor))
    return [None if g is None else g * factor.to(g.dtype) for g in grads]


@torch.library.custom_op("heron::rosa_value_input_grad", mutates_args=())
def _value_input_grad_op(grad_out: torch.Tensor, table: torch.Tensor, retrieved: torch.Tensor,
                         symbols: torch.Tensor, x: torch.Tensor, bits: int, tau: float,
                         max_gain: float) -> torch.Tensor:
    """The value estimator's gradient w.r.t. the float input ``x`` [B, T, C] whose thresholded bits
    are the ROSA's values (``symbols`` = ``pack_symbols(x, bits)`` [B, T, C // bits]; ``retrieved``
    of that shape: the retrieval index of every output): copy-through deltas, scaled by
    ``_finish`` and bounded to ``max_gain`` (``<= 0``: unbounded).

    One opaque op in a compiled graph, from the saved tensors to the input gradient: the same
    eager code wherever it is called from. (Made one op as a guess at the compiled-ROSA gradient
    bug, which turned out to be elsewhere: see :func:`_as_dtype`.)"""
    B, T, C = x.shape
    delta = value_deltas(_to_streams(retrieved), _to_streams(symbols), _value_table(grad_out, table, bits), bits)
    grad = _finish(_from_streams(delta, B, C // bits), x, tau)
    if max_gain > 0:
        (grad,) = _bound_gain([grad], grad_out, max_gain)
    return grad.contiguous()


@_value_input_grad_op.register_fake
def _(grad_out, table, retrieved, symbols, x, bits, tau, max_gain):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def value_input_grad(grad_out, table, retrieved, symbols, x, bits: int, config: EstimatorConfig) -> torch.Tensor:
    """:func:`_value_input_grad_op` with the estimator's settings (``config.max_gain`` None:
    unbounded)."""
    max_gain = config.max_gain if config.max_gain is not None else 0.0
    return torch.ops.heron.rosa_value_input_grad(grad_out, table.detach(), retrieved, symbols, x, bits,
                                                 float(config.tau), float(max_gain))


def _retrieval_grid(streams: torch.Tensor, B: int, G: int) -> torch.Tensor:
    """``[S, T]`` retrieval streams as ``[B, T, G]`` (a view)."""
    return streams.reshape(B, G, -1).permute(0, 2, 1)


def _as_dtype(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``out`` in ``dtype``, converted only when it differs. The ROSA Functions' forwards return
    this: torch 2.11's torch.compile (dynamo's autograd.Function tracing) gives a Function whose
    forward returns ``out.to(out.dtype)`` (the same tensor again) an all-zero incoming gradient,
    so every gradient through the ROSA layers was lost in compiled blocks (found on the H100s,
    reproduced on the CPU with torch 2.11, fixed in 2.13; tests/layers/test_rosa_compile.py)."""
    return out if out.dtype == dtype else out.to(dtype)


class _ChannelROSA(torch.autograd.Function):
    """Channel ROSA (token ROSA on each group's symbol stream), decoded through ``table``.

    ``retrieve`` (the value estimator with ``x`` needing a gradient): the forward kernel runs with
    the positions as values, so it yields the retrieval indices the estimator needs and the output
    is gathered from them; the backward then runs no automaton at all."""

    @staticmethod
    def forward(ctx, x, table, bits: int, config: EstimatorConfig, retrieve: bool = False):
        symbols = pack_symbols(x, bits)
        if retrieve:
            retrieved = _retrieve(symbols, symbols, bits)
            y = _retrieved_values(symbols, retrieved)
        else:
            retrieved = None
            y = _forward_symbols(symbols, symbols, symbols, bits)
        ctx.save_for_backward(x, table, symbols, y, retrieved)
        ctx.bits, ctx.config = bits, config
        return _as_dtype(_decode(table, y, bits), x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, table, symbols, y, retrieved = ctx.saved_tensors
        bits, config = ctx.bits, ctx.config
        B, T, C = x.shape
        G = C // bits
        grad_x = grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = _table_grad(table, y, grad_out, bits)
        if ctx.needs_input_grad[0]:
            if config.estimator == "value":
                if retrieved is None:  # forward ran without the retrieval (applied directly)
                    streams = _to_streams(symbols)
                    retrieved = _retrieval_grid(retrieval_indices(streams, streams, bits), B, G)
                grad_x = value_input_grad(grad_out, table, retrieved, symbols, x, bits, config)
            else:
                streams = _to_streams(symbols)
                val = _value_table(grad_out, table.detach(), bits)
                (delta,) = flip_deltas(
                    streams, streams, streams, val, bits, config.window_for(T), token=True
                )
                grad_x = _finish(_from_streams(delta, B, G), x, config.tau)
                (grad_x,) = _bound_gain([grad_x], grad_out, config.max_gain)
        return grad_x, grad_table, None, None, None


class _QKVROSA(torch.autograd.Function):
    """QKV ROSA on channel groups of ``q, k, v``, decoded through ``table``.

    ``retrieve``: as for :class:`_ChannelROSA` (value estimator, ``v`` needing a gradient); only
    ``v``, the output and the retrieval indices are saved then, since the value estimator's
    ``q``/``k`` gradients are zero (``v``'s symbols are recomputed in the backward).

    ``k=None``: shared keys (the keys are the queries; one symbol tensor, so the engine runs token
    ROSA without the matcher). The estimator's query and key gradients are formed as for two
    inputs and summed into ``q``'s. (None rather than ``q`` twice: torch.compile cannot trace an
    autograd Function given one tensor for two inputs.)"""

    @staticmethod
    def forward(ctx, q, k, v, table, bits: int, config: EstimatorConfig, retrieve: bool = False):
        shared = k is None
        qs, vs = pack_symbols(q, bits), pack_symbols(v, bits)
        ks = qs if shared else pack_symbols(k, bits)
        ctx.bits, ctx.config, ctx.retrieve, ctx.shared = bits, config, retrieve, shared
        ctx.q_like = (q.shape, q.dtype, q.device)
        ctx.k_like = ctx.q_like if shared else (k.shape, k.dtype, k.device)
        if retrieve:
            retrieved = _retrieve(qs, ks, bits)
            y = _retrieved_values(vs, retrieved)
            ctx.save_for_backward(v, table, y, retrieved)
        else:
            y = _forward_symbols(qs, ks, vs, bits)
            ctx.save_for_backward(q, k, v, table, qs, ks, vs, y)
        return _as_dtype(_decode(table, y, bits), q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        bits, config = ctx.bits, ctx.config
        if ctx.retrieve:
            v, table, y, retrieved = ctx.saved_tensors
            q = k = qs = ks = vs = None
        else:
            q, k, v, table, qs, ks, vs, y = ctx.saved_tensors
            if ctx.shared:
                k, ks = q, qs
            retrieved = None
        B, T, C = v.shape
        G = C // bits
        grads = [None, None, None]
        grad_table = None
        if ctx.needs_input_grad[3]:
            grad_table = _table_grad(table, y, grad_out, bits)
        want = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        if ctx.shared:  # the key gradient is part of the query's
            want = (want[0], want[0], want[2])
        if config.estimator == "value":
            # copy-through: the matches are held fixed, so q and k get exact zeros
            for i, (shape, dtype, device) in enumerate((ctx.q_like, ctx.k_like)):
                if want[i]:
                    grads[i] = torch.zeros(shape, dtype=dtype, device=device)
            if want[2]:
                if retrieved is None:  # forward ran without the retrieval (applied directly)
                    retrieved = _retrieval_grid(retrieval_indices(_to_streams(qs), _to_streams(ks), bits), B, G)
                vs = pack_symbols(v, bits) if vs is None else vs  # not saved when the forward retrieved
                # bounded inside: the zero q and k gradients add nothing to the joint norm
                grads[2] = value_input_grad(grad_out, table, retrieved, vs, v, bits, config)
        elif any(want):
            val = _value_table(grad_out, table.detach(), bits)
            streams = [_to_streams(s) for s in (qs, ks, vs)]
            deltas = flip_deltas(*streams, val, bits, config.window_for(T), token=False, want=want)
            for i, (inp, delta) in enumerate(zip((q, k, v), deltas)):
                if want[i]:
                    grads[i] = _finish(_from_streams(delta, B, G), inp, config.tau)
            if ctx.shared:  # bound what the one input receives, not its two parts apart
                grads = _merge_key_into_query(grads)
            grads = _bound_gain(grads, grad_out, config.max_gain)
        if ctx.shared:
            grads = _merge_key_into_query(grads)
        return grads[0], grads[1], grads[2], grad_table, None, None, None


def _merge_key_into_query(grads: list) -> list:
    """Shared keys (``k is q``): the key gradient is part of the query's (idempotent)."""
    query, key = grads[0], grads[1]
    merged = query + key if query is not None and key is not None else (query if query is not None else key)
    return [merged, None, grads[2]]


def _wants_retrieval(config: EstimatorConfig, x: torch.Tensor) -> bool:
    """The value estimator will need ``x``'s retrieval indices: get them from the forward run."""
    return config.estimator == "value" and torch.is_grad_enabled() and x.requires_grad


def rosa_channel(x: torch.Tensor, table: torch.Tensor, bits: int, config: EstimatorConfig) -> torch.Tensor:
    """Channel ROSA layer op: ``out[b, t, c] = table[y + 1, c]`` with ``y`` the token ROSA of the
    ``bits``-channel symbol stream of ``x > 0``; gradients per ``config`` (see module doc)."""
    bits = check_bits(bits)
    check_activation("x", x, table.shape[1], bits)
    _check_table(table, bits, x)
    return _ChannelROSA.apply(x, table, bits, config, _wants_retrieval(config, x))


def rosa_qkv_channels(q, k, v, table: torch.Tensor, bits: int, config: EstimatorConfig) -> torch.Tensor:
    """ROSA-QKV op on float channels: thresholded ``q, k, v`` grouped ``bits`` at a time."""
    bits = check_bits(bits)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_activation(name, t, table.shape[1], bits)
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    _check_table(table, bits, q)
    return _QKVROSA.apply(q, None if k is q else k, v, table, bits, config, _wants_retrieval(config, v))


def _check_table(table: torch.Tensor, bits: int, like: torch.Tensor) -> None:
    if table.dim() != 2 or table.shape[0] != 2**bits + 1:
        raise ValueError(f"decode table must be [2^bits + 1, C] = [{2**bits + 1}, C], got {tuple(table.shape)}")
    if table.device != like.device:
        raise ValueError(f"decode table is on {table.device} but the input is on {like.device}")


# ----------------------------------------------------------------------------------------------
# naive references (the literal definition of spec §4; tiny inputs only)


def _phi(grad_out_stream: torch.Tensor, table: torch.Tensor, y: list[int], channels: slice) -> float:
    """``sum_t g[t] . out_t`` for one group's channels, out decoded from the symbol outputs ``y``."""
    rows = torch.tensor([s + 1 for s in y], dtype=torch.int64)
    out = table[rows][:, channels]
    return float((grad_out_stream * out).sum())


def naive_flip_grad_channel(x, table, bits: int, grad_out, tau: float = 1e-3) -> torch.Tensor:
    """Bit-flip gradient of the channel op by its definition: for every (b, t, channel) flip the
    bit, re-run ROSA on the whole flipped stream, and difference ``phi`` (float64 throughout)."""
    x = x.detach().double().cpu()
    table = table.detach().double().cpu()
    grad_out = grad_out.detach().double().cpu()
    B, T, C = x.shape
    symbols = pack_symbols(x, bits)
    grad = torch.zeros_like(x)
    for b in range(B):
        for g in range(C // bits):
            stream = symbols[b, :, g].tolist()
            cols = slice(g * bits, (g + 1) * bits)
            g_stream = grad_out[b, :, cols]
            base = _phi(g_stream, table, rosa_qkv_automaton(stream, stream, stream), cols)
            for t in range(T):
                for m in range(bits):
                    flipped = list(stream)
                    flipped[t] ^= 1 << m
                    phi = _phi(g_stream, table, rosa_qkv_automaton(flipped, flipped, flipped), cols)
                    value = x[b, t, g * bits + m]
                    plus, minus = (base, phi) if value > 0 else (phi, base)
                    grad[b, t, g * bits + m] = (plus - minus) / (2.0 * max(abs(float(value)), tau))
    return grad


def naive_flip_grad_qkv(q, k, v, table, bits: int, grad_out, tau: float = 1e-3):
    """Bit-flip gradients ``(dq, dk, dv)`` of the QKV op by the definition of spec §4."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    table = table.detach().double().cpu()
    grad_out = grad_out.detach().double().cpu()
    B, T, C = q.shape
    syms = [pack_symbols(t, bits) for t in (q, k, v)]
    grads = [torch.zeros_like(q) for _ in range(3)]
    for b in range(B):
        for g in range(C // bits):
            streams = [s[b, :, g].tolist() for s in syms]
            cols = slice(g * bits, (g + 1) * bits)
            g_stream = grad_out[b, :, cols]
            base = _phi(g_stream, table, rosa_qkv_automaton(*streams), cols)
            for which, source in enumerate((q, k, v)):
                for t in range(T):
                    for m in range(bits):
                        changed = [list(s) for s in streams]
                        changed[which][t] ^= 1 << m
                        phi = _phi(g_stream, table, rosa_qkv_automaton(*changed), cols)
                        value = source[b, t, g * bits + m]
                        plus, minus = (base, phi) if value > 0 else (phi, base)
                        grads[which][b, t, g * bits + m] = (plus - minus) / (
                            2.0 * max(abs(float(value)), tau)
                        )
    return tuple(grads)

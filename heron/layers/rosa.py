"""ROSA layers (spec/ROSA.md §3): ``EmbROSA``, ``ROSABits``, the ROSA-QKV op and the ``ROSAQKV`` block.

Parameter names and initial values are the official ones, so the official state dicts load
unchanged: ``EmbROSA.emb`` (``nn.Embedding``), ``ROSABits.emb0 / emb1`` ``[1, 1, C]``,
``ROSAQKV.x_q x_k x_v`` ``[1, 1, C]``, ``q k v o`` (``nn.Linear`` with bias) and
``ROSAQKV.rosa_qkv.emb`` ``[1, 1, C]``.

Every layer is called as ``layer(x, state=None, return_state=False)`` (docs/design.md). Without
a state the whole sequence runs through :func:`heron.ops.rosa.rosa_qkv`; with a state given or
``return_state=True`` the ROSA part runs through :class:`heron.ops.rosa.OnlineROSA`, so that the
returned :class:`ROSAState` continues exactly where the chunk ended (RNN mode is ``T = 1``).
Gradients of the thresholded inputs come from the estimator chosen per layer (``estimator=``,
see :mod:`heron.ops.rosa.grad` and docs/estimators.md); the learned vectors get exact gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops.rosa.grad import (
    DEFAULT_WINDOW,
    EstimatorConfig,
    _decode,
    channel_decode_table,
    check_activation,
    check_bits,
    pack_symbols,
    qkv_decode_table,
    rosa_channel,
    rosa_qkv_channels,
)
from .time_mix import check_batch_index, check_flag, detached_cpu_copy

__all__ = ["ROSAState", "EmbROSA", "ROSABits", "ROSAQKVOp", "ROSAQKV", "QK_INITS", "check_qk_init"]

# The trainable ops outside any compiled graph (a graph break around each call), for layers whose
# ``eager_under_compile`` is set: heron.train.distributed.apply_compile(rosa_eager=True), on request
# only since the ninth session confirmed on a GPU the fix of the compiled ROSA gradients (lost
# under torch 2.11, docs/limits.md). Outside torch.compile these are the plain functions.
_rosa_channel_eager = torch.compiler.disable(rosa_channel)
_rosa_qkv_channels_eager = torch.compiler.disable(rosa_qkv_channels)


@dataclass
class ROSAState:
    """State of a ROSA layer: the online automata of its streams and, for ``ROSAQKV``, the
    token shift (the previous position's block input, ``[B, C]``)."""

    automaton: object  # heron.ops.rosa.OnlineROSA
    x_prev: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> "ROSAState":
        """The automata live on the CPU; only the token shift moves (and takes ``dtype``), as the
        other states' ``to(device, dtype)``."""
        return ROSAState(self.automaton, None if self.x_prev is None else self.x_prev.to(device=device, dtype=dtype))

    def copy(self) -> "ROSAState":
        return ROSAState(
            self.automaton.copy(), None if self.x_prev is None else self.x_prev.clone()
        )

    def detach(self) -> "ROSAState":
        """Cut the token shift from the autograd graph (the automata hold no gradients)."""
        return ROSAState(self.automaton, None if self.x_prev is None else self.x_prev.detach())

    def select(self, batch_index, batch_size: int | None = None) -> "ROSAState":
        """Reorder or subset the batch rows (beam search). Each row owns ``num_streams / B``
        consecutive streams (stream ``b * G + g``); ``batch_size`` defaults to ``x_prev``'s rows."""
        if batch_size is None:
            if self.x_prev is None:
                raise ValueError("batch_size is needed to select rows of a state without x_prev")
            batch_size = self.x_prev.shape[0]
        streams = self.automaton.num_streams
        if batch_size < 1 or streams % batch_size:
            raise ValueError(f"batch_size {batch_size} does not divide the state's {streams} streams")
        index = check_batch_index(batch_index, batch_size)
        per_row = streams // batch_size
        stream_index = (index.unsqueeze(1) * per_row + torch.arange(per_row)).reshape(-1)
        x_prev = None if self.x_prev is None else self.x_prev[index.to(self.x_prev.device)]
        return ROSAState(self.automaton.select(stream_index), x_prev)

    def state_dict(self) -> dict:
        """Plain tensors (loadable with ``torch.load(weights_only=True)``)."""
        out = {"automaton": self.automaton.state_dict()}
        if self.x_prev is not None:
            out["x_prev"] = detached_cpu_copy(self.x_prev)
        return out

    @classmethod
    def from_state_dict(cls, data: dict, device=None) -> "ROSAState":
        """Inverse of :meth:`state_dict`; the automata are rebuilt by replaying their histories."""
        if not isinstance(data, dict) or "automaton" not in data:
            raise ValueError("ROSAState.from_state_dict expects the dict written by ROSAState.state_dict()")
        from ..ops.rosa import OnlineROSA

        x_prev = data.get("x_prev")
        return cls(OnlineROSA.from_state_dict(data["automaton"]), None if x_prev is None else x_prev.to(device))


QK_INITS = ("independent", "tied", "shared")


def check_qk_init(value, name: str = "qk_init") -> str:
    """Validate a ROSA-QKV key initialisation (:data:`QK_INITS`); ``name`` names it in the error."""
    if not isinstance(value, str) or value not in QK_INITS:
        raise ValueError(f"{name} must be one of {', '.join(repr(v) for v in QK_INITS)}, got {value!r}")
    return value


def _new_automaton(num_streams: int):
    from ..ops.rosa import OnlineROSA

    return OnlineROSA(num_streams)


def _check_automaton(automaton, name: str) -> None:
    from ..ops.rosa import OnlineROSA

    if not isinstance(automaton, OnlineROSA):
        raise TypeError(f"{name} must be a heron.ops.rosa.OnlineROSA, got {type(automaton).__name__}")


def _check_state(state, name: str, num_streams: int, need_shift: bool = False) -> None:
    if state is None:
        return
    if not isinstance(state, ROSAState):
        raise TypeError(f"state must be a ROSAState from a previous call of {name}, got {type(state).__name__}")
    _check_automaton(state.automaton, "state.automaton")
    if state.automaton.num_streams != num_streams:
        raise ValueError(
            f"state holds {state.automaton.num_streams} streams but {name} needs {num_streams} "
            "for this input (batch size or width changed?)"
        )
    if need_shift and state.x_prev is None:
        raise ValueError(f"state of {name} must carry x_prev (the token shift)")


def _refuse_grad_through_history(state, *tensors) -> None:
    """The estimators treat a chunk as a whole stream; a carried history would make them wrong."""
    if state is None or state.automaton.length == 0:
        return
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError(
            "gradients through a carried ROSA state are not supported (the estimators assume the "
            "chunk starts the stream); run RNN-mode steps under torch.no_grad() or pass state=None"
        )


def _streams(symbols: torch.Tensor) -> torch.Tensor:
    B, T, G = symbols.shape
    return symbols.permute(0, 2, 1).reshape(B * G, T)


def _unstreams(streams: torch.Tensor, B: int, G: int) -> torch.Tensor:
    T = streams.shape[1]
    return streams.reshape(B, G, T).permute(0, 2, 1)


def _check_width(n_embd, bits) -> tuple[int, int]:
    """Validate a channel layer's width and symbol size; returns ``(n_embd, bits)``."""
    bits = check_bits(bits)
    if isinstance(n_embd, bool) or not isinstance(n_embd, int) or n_embd < 1:
        raise ValueError(f"n_embd must be a positive int, got {n_embd!r}")
    if n_embd % bits != 0:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by bits ({bits})")
    return n_embd, bits


class EmbROSA(nn.Module):
    """Token ROSA with a learned embedding: ``out[b, t] = emb[y[b, t]]``, zero where ``y = -1``.

    Input: token ids ``[B, T]`` (int), values in ``[0, vocab_size)``. Exact gradients (the
    embedding gets a scatter-add; nothing upstream is differentiable).
    """

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("n_embd", n_embd)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size = vocab_size
        self.n_embd = n_embd
        self.emb = nn.Embedding(vocab_size, n_embd)

    def forward(self, idx: torch.Tensor, state: ROSAState | None = None, return_state: bool = False):
        check_flag(return_state, "return_state")
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids [B, T], got {type(idx).__name__}")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
            raise TypeError(f"idx must hold integer token ids, got {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape [B, T], got {tuple(idx.shape)}")
        high = 0
        if idx.numel() > 0:
            low, high = torch.stack(torch.aminmax(idx)).tolist()  # one read-back (one GPU sync)
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"idx must hold token ids in [0, {self.vocab_size}), found [{low}, {high}]")
        idx = idx.to(torch.int64)
        _check_state(state, "EmbROSA", idx.shape[0])
        if state is None and not return_state:
            from ..ops.rosa import _rosa_qkv_trusted

            y = _rosa_qkv_trusted(idx, idx, idx, high + 1)  # validated above: no second read-back
        else:
            automaton = state.automaton if state is not None else _new_automaton(idx.shape[0])
            y = automaton.extend(idx, idx, idx).to(idx.device)
            state = ROSAState(automaton)
        out = self.emb(y.clamp_min(0)) * (y >= 0).unsqueeze(-1).to(self.emb.weight.dtype)
        return (out, state) if return_state else out


class ROSABits(nn.Module):
    """The official n-bit channel ROSA layer: ``x > 0`` grouped ``bits`` channels per symbol,
    token ROSA per group stream, output bit 1 -> ``emb1[c]``, bit 0 -> ``emb0[c]``.

    ``no_match``: ``"zero"`` (no match gives 0, the official 1-bit layer) or ``"symbol0"`` (no
    match decodes as symbol 0, i.e. ``emb0``, the official 4-bit layer); the default follows the
    official layer for the chosen ``bits`` (``"zero"`` for 1 bit, ``"symbol0"`` otherwise).
    ``estimator``: ``"flip"`` (official), ``"window"`` (flip truncated to ``window`` positions),
    ``"value"`` (copy-through); ``tau`` is the flip denominator floor; ``max_gain`` (default
    ``None``: unbounded, as the spec) bounds the estimated input gradient's norm to ``max_gain``
    times the output gradient's (see :mod:`heron.ops.rosa.grad` and docs/estimators.md).
    """

    def __init__(
        self,
        n_embd: int,
        bits: int = 1,
        estimator: str = "flip",
        tau: float = 1e-3,
        window: int = DEFAULT_WINDOW,
        no_match: str | None = None,
        max_gain: float | None = None,
    ):
        super().__init__()
        self.n_embd, self.bits = _check_width(n_embd, bits)
        self.no_match = no_match if no_match is not None else ("zero" if bits == 1 else "symbol0")
        self.config = EstimatorConfig(estimator, tau, window, max_gain)
        channel_decode_table(torch.zeros(1), torch.zeros(1), 1, self.no_match)  # validates no_match
        self.emb0 = nn.Parameter(torch.full((1, 1, n_embd), -1e-5))
        self.emb1 = nn.Parameter(torch.full((1, 1, n_embd), 1e-5))
        self.eager_under_compile = False  # see _rosa_channel_eager

    def extra_repr(self) -> str:
        return (
            f"{self.n_embd}, bits={self.bits}, estimator={self.config.estimator!r}, "
            f"tau={self.config.tau}, no_match={self.no_match!r}"
            + (f", max_gain={self.config.max_gain}" if self.config.max_gain is not None else "")
        )

    def decode_table(self) -> torch.Tensor:
        return channel_decode_table(self.emb0, self.emb1, self.bits, self.no_match)

    def forward(self, x: torch.Tensor, state: ROSAState | None = None, return_state: bool = False):
        check_activation("x", x, self.n_embd, self.bits)
        check_flag(return_state, "return_state")
        B, T, _ = x.shape
        G = self.n_embd // self.bits
        _check_state(state, "ROSABits", B * G)
        table = self.decode_table().to(x.device)
        if state is None and not return_state:
            op = _rosa_channel_eager if self.eager_under_compile else rosa_channel
            return op(x, table, self.bits, self.config)
        _refuse_grad_through_history(state, x)
        automaton = state.automaton if state is not None else _new_automaton(B * G)
        fresh = automaton.length == 0
        streams = _streams(pack_symbols(x.detach(), self.bits)).cpu()
        y = _unstreams(automaton.extend(streams, streams, streams), B, G).to(x.device)
        if fresh and torch.is_grad_enabled() and x.requires_grad:
            out = rosa_channel(x, table, self.bits, self.config)  # same output, with the estimator
        else:
            out = _decode(table, y, self.bits).to(x.dtype)
        return (out, ROSAState(automaton)) if return_state else out


class ROSAQKVOp(nn.Module):
    """The ROSA-QKV op: QKV ROSA on ``bits``-channel groups of ``q > 0``, ``k > 0``, ``v > 0``;
    output bit 1 -> ``+emb[c]``, bit 0 -> ``-emb[c]``. ``no_match``: ``"symbol0"`` (``-emb``, the
    official 1-bit op) or ``"zero"`` (``0``, the official 4-bit op); the default follows ``bits``."""

    def __init__(
        self,
        n_embd: int,
        bits: int = 1,
        estimator: str = "flip",
        tau: float = 1e-3,
        window: int = DEFAULT_WINDOW,
        no_match: str | None = None,
        max_gain: float | None = None,
    ):
        super().__init__()
        self.n_embd, self.bits = _check_width(n_embd, bits)
        self.no_match = no_match if no_match is not None else ("symbol0" if bits == 1 else "zero")
        self.config = EstimatorConfig(estimator, tau, window, max_gain)
        qkv_decode_table(torch.zeros(1), 1, self.no_match)  # validates no_match
        self.emb = nn.Parameter(torch.full((1, 1, n_embd), 1.0))
        self.eager_under_compile = False  # see _rosa_qkv_channels_eager

    def extra_repr(self) -> str:
        return (
            f"{self.n_embd}, bits={self.bits}, estimator={self.config.estimator!r}, "
            f"tau={self.config.tau}, no_match={self.no_match!r}"
            + (f", max_gain={self.config.max_gain}" if self.config.max_gain is not None else "")
        )

    def decode_table(self) -> torch.Tensor:
        return qkv_decode_table(self.emb, self.bits, self.no_match)

    def forward(self, q, k, v, automaton=None):
        """``automaton``: an ``OnlineROSA`` to continue (it is advanced in place), or ``None``."""
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_activation(name, t, self.n_embd, self.bits)
        table = self.decode_table().to(q.device)
        if automaton is None:
            op = _rosa_qkv_channels_eager if self.eager_under_compile else rosa_qkv_channels
            return op(q, k, v, table, self.bits, self.config)
        if not (q.shape == k.shape == v.shape):
            raise ValueError(
                f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        B, T, C = q.shape
        G = C // self.bits
        _check_automaton(automaton, "automaton")
        if automaton.num_streams != B * G:
            raise ValueError(f"automaton holds {automaton.num_streams} streams, q, k, v of shape {tuple(q.shape)} need "
                             f"B * C / bits = {B * G}")
        fresh = automaton.length == 0
        streams = [_streams(pack_symbols(t.detach(), self.bits)).cpu() for t in (q, k, v)]
        y = _unstreams(automaton.extend(*streams), B, G).to(q.device)
        if fresh and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return rosa_qkv_channels(q, k, v, table, self.bits, self.config)
        return _decode(table, y, self.bits).to(q.dtype)


class ROSAQKV(nn.Module):
    """The ROSA-QKV block of the official RWKV-8 task models (spec/ROSA.md §3):

        xx = shift(x) - x;  q, k, v = x + xx * x_q, x + xx * x_k, x + xx * x_v
        out = o(rosa_qkv(q(q), k(k), v(v)))

    ``shift(x)[t] = x[t-1]`` with ``state.x_prev`` (or zeros) at ``t = 0``.

    ``qk_init``: ``"independent"`` (official: ``q`` and ``k`` are drawn independently, so at
    initialisation a channel's query bits have nothing to do with its key bits), ``"tied"``
    (``k`` starts as a copy of ``q`` and ``x_k`` as a copy of ``x_q``, so every channel starts as
    token ROSA on its own bit stream; the two still train separately) or ``"shared"`` (there is
    no key path: the keys *are* the queries, ``k = q``, and the block has no ``k`` / ``x_k``
    parameters). No extra random numbers are drawn, so the other parameters are the same for a
    seed (``"shared"`` draws ``k`` and drops it). ``"shared"`` runs token ROSA on each channel
    (the cheaper kernels) and computes one projection fewer; with the ``"value"`` estimator,
    which gives ``q`` and ``k`` no gradient, a ``"tied"`` block keeps ``k == q`` for ever, so
    ``"shared"`` is the same model at a lower cost.

    ``max_gain`` bounds the gradient the estimator sends into ``q, k, v`` (and from there into the
    block input) to ``max_gain`` times the op's output gradient: the remedy for deep models,
    where the unbounded estimator's gain compounds through the layers (docs/estimators.md).
    """

    def __init__(
        self,
        n_embd: int,
        bits: int = 1,
        estimator: str = "flip",
        tau: float = 1e-3,
        window: int = DEFAULT_WINDOW,
        no_match: str | None = None,
        qk_init: str = "independent",
        max_gain: float | None = None,
    ):
        super().__init__()
        self.qk_init = check_qk_init(qk_init)
        self.n_embd, self.bits = n_embd, bits
        self.rosa_qkv = ROSAQKVOp(n_embd, bits, estimator, tau, window, no_match, max_gain)
        self.x_q = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.x_k = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.x_v = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.q = nn.Linear(n_embd, n_embd)
        self.k = nn.Linear(n_embd, n_embd)
        self.v = nn.Linear(n_embd, n_embd)
        self.o = nn.Linear(n_embd, n_embd)
        if self.qk_init == "tied":
            self.tie_qk_()
        elif self.qk_init == "shared":  # drawn above (same random stream as the others), then dropped
            del self.k, self.x_k
            self.k = self.x_k = None

    def extra_repr(self) -> str:
        return f"qk_init={self.qk_init!r}" if self.qk_init != "independent" else ""

    @torch.no_grad()
    def tie_qk_(self) -> "ROSAQKV":
        """Set the key path to the query path (``k <- q``, ``x_k <- x_q``), in place (nothing to
        do for ``qk_init="shared"``, which has no key path)."""
        if self.k is None:
            return self
        self.k.weight.copy_(self.q.weight)
        self.k.bias.copy_(self.q.bias)
        self.x_k.copy_(self.x_q)
        return self

    def forward(self, x: torch.Tensor, state: ROSAState | None = None, return_state: bool = False):
        check_activation("x", x, self.n_embd, self.bits)
        check_flag(return_state, "return_state")
        B, T, C = x.shape
        G = C // self.bits
        _check_state(state, "ROSAQKV", B * G, need_shift=True)
        if state is not None and tuple(state.x_prev.shape) != (B, C):
            raise ValueError(f"state.x_prev must have shape [{B}, {C}], got {tuple(state.x_prev.shape)}")
        first = state.x_prev.to(x.dtype).unsqueeze(1) if state is not None else x.new_zeros(B, 1, C)
        shifted = torch.cat([first, x[:, :-1]], dim=1)
        xx = shifted - x
        q = self.q(x + xx * self.x_q)
        k = q if self.k is None else self.k(x + xx * self.x_k)  # shared: the same tensor (token ROSA)
        v = self.v(x + xx * self.x_v)
        if state is None and not return_state:
            return self.o(self.rosa_qkv(q, k, v))
        _refuse_grad_through_history(state, q, k, v)
        automaton = state.automaton if state is not None else _new_automaton(B * G)
        y = self.rosa_qkv(q, k, v, automaton=automaton)
        x_prev = x[:, -1].detach().clone() if T > 0 else state.x_prev if state is not None else x.new_zeros(B, C)
        out = self.o(y)
        return (out, ROSAState(automaton, x_prev)) if return_state else out

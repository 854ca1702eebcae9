"""Incremental (RNN-mode) QKV ROSA: one online automaton per stream (spec/ROSA.md §5).

``OnlineROSA`` keeps, for each of ``num_streams`` streams, the suffix automaton of the keys pushed
so far and the matcher of the queries, so one step costs amortized O(log T) per stream: the C++
automaton starts with the official last-end update along the suffix-link chain (fastest on
random-like streams) under a budget of chain steps, and a stream that exceeds it (constant or
periodic keys) switches for good to a link-cut tree over its suffix links (see
``csrc/rosa_cpu.cpp``). Its outputs equal :func:`heron.ops.rosa.rosa_qkv` on the concatenated
history exactly.

The automata live on the CPU whatever the device of the inputs; outputs come back on the inputs'
device. Serialization stores the pushed ``q``, ``k``, ``v`` histories (``[S, T]`` int64 each);
``from_state_dict`` replays them, which rebuilds the automata exactly in O(T log T) per stream.

When the C++ extension cannot be built, a list of the pure-Python ``SuffixAutomatonROSA`` does the
same job (exact, but quadratic on constant or periodic streams).
"""

from __future__ import annotations

import copy as _copy
import threading

import torch

from .._build import ExtensionUnavailable
from .reference import SuffixAutomatonROSA

_BACKENDS = ("auto", "cpu", "python")


class OnlineROSA:
    """Online QKV ROSA over ``num_streams`` independent streams.

    ``push(q, k, v)`` takes int ``[S]`` tensors (one step of every stream) and returns int64 ``[S]``;
    ``extend(q, k, v)`` takes ``[S, T]`` and returns ``[S, T]``. ``backend``: ``"auto"`` (C++ when it
    builds, else Python), ``"cpu"`` (C++ or raise), ``"python"``.

    Calls on one object from several threads are serialised (the C++ bank releases the GIL while
    it works, and two extends at once corrupted it); separate objects run in parallel.
    """

    def __init__(self, num_streams: int, *, backend: str = "auto"):
        if isinstance(num_streams, bool) or not isinstance(num_streams, int):
            raise TypeError(f"num_streams must be an int, got {type(num_streams).__name__}")
        if num_streams < 0:
            raise ValueError(f"num_streams must be >= 0, got {num_streams}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self._lock = threading.Lock()
        self._bank = None
        self._automata: list[SuffixAutomatonROSA] | None = None
        self._queries: list[list[int]] | None = None
        self._length = 0
        if backend != "python":
            from . import _warn_once, native_cpu

            try:
                self._bank = native_cpu().OnlineBank(num_streams)
            except ExtensionUnavailable as exc:
                if backend == "cpu":
                    raise
                _warn_once("online", f"{exc}; OnlineROSA falls back to the pure-Python automaton")
        if self._bank is None:
            self._automata = [SuffixAutomatonROSA() for _ in range(num_streams)]
            self._queries = [[] for _ in range(num_streams)]
        self._num_streams = num_streams

    # ---- properties
    @property
    def num_streams(self) -> int:
        return self._num_streams

    @property
    def length(self) -> int:
        """Number of steps pushed so far (the same for every stream)."""
        return self._length

    @property
    def backend(self) -> str:
        return "cpu" if self._bank is not None else "python"

    def __repr__(self) -> str:
        return f"OnlineROSA(num_streams={self.num_streams}, length={self.length}, backend={self.backend!r})"

    # ---- stepping
    def _validate(self, q, k, v, dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from . import _check_symbol_tensors

        expected = "[S]" if dims == 1 else "[S, T]"
        named = (("q", q), ("k", k), ("v", v))
        # the value ranges of all three come back to the host in one copy (one GPU sync per step)
        checked = [tensor for tensor, _ in _check_symbol_tensors(named)]
        for (name, _), tensor in zip(named, checked):
            if tensor.dim() != dims or tensor.shape[0] != self.num_streams:
                raise ValueError(
                    f"{name} must have shape {expected} with S = num_streams = {self.num_streams}, "
                    f"got {tuple(tensor.shape)}"
                )
        q, k, v = checked
        if not (q.shape == k.shape == v.shape):
            raise ValueError(
                f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if not (q.device == k.device == v.device):
            raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
        return q, k, v

    def _extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        device = q.device
        q, k, v = (t.detach().to("cpu", torch.int64).contiguous() for t in (q, k, v))
        with self._lock:
            if self._bank is not None:
                out = self._bank.extend(q, k, v)
            else:
                rows = []
                for stream, (qs, ks, vs) in enumerate(zip(q.tolist(), k.tolist(), v.tolist())):
                    automaton = self._automata[stream]
                    self._queries[stream].extend(qs)
                    rows.append([automaton.push(a, b, c) for a, b, c in zip(qs, ks, vs)])
                out = torch.tensor(rows, dtype=torch.int64).reshape(q.shape)
            self._length += q.shape[1]
        return out.to(device)

    def push(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One step of every stream: int ``[S]`` each; returns int64 ``[S]``."""
        q, k, v = self._validate(q, k, v, dims=1)
        return self._extend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)

    def extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``T`` steps of every stream: int ``[S, T]`` each; returns int64 ``[S, T]``."""
        q, k, v = self._validate(q, k, v, dims=2)
        return self._extend(q, k, v)

    # ---- branching
    def copy(self) -> "OnlineROSA":
        """An independent deep copy (beam search, branching prompts)."""
        clone = OnlineROSA.__new__(OnlineROSA)
        clone._lock = threading.Lock()
        clone._num_streams = self._num_streams
        with self._lock:
            clone._length = self._length
            clone._bank = self._bank.copy() if self._bank is not None else None
            clone._automata = _copy.deepcopy(self._automata)
            clone._queries = _copy.deepcopy(self._queries)
        return clone

    def __deepcopy__(self, memo) -> "OnlineROSA":
        return self.copy()

    def select(self, stream_index: torch.Tensor) -> "OnlineROSA":
        """A new OnlineROSA whose stream ``i`` is a copy of stream ``stream_index[i]`` of this one
        (reorder, subset or repeat streams)."""
        if not isinstance(stream_index, torch.Tensor):
            raise TypeError(f"stream_index must be a torch.Tensor, got {type(stream_index).__name__}")
        if stream_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"stream_index must be an integer tensor, got {stream_index.dtype}")
        if stream_index.dim() != 1:
            raise ValueError(f"stream_index must be 1-D, got shape {tuple(stream_index.shape)}")
        index = stream_index.detach().to("cpu", torch.int64).contiguous()
        if index.numel() > 0 and (int(index.min()) < 0 or int(index.max()) >= self.num_streams):
            raise ValueError(
                f"stream_index must lie in [0, {self.num_streams}), found "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        chosen = OnlineROSA.__new__(OnlineROSA)
        chosen._lock = threading.Lock()
        chosen._num_streams = index.numel()
        with self._lock:
            chosen._length = self._length
            if self._bank is not None:
                chosen._bank = self._bank.select(index)
                chosen._automata = chosen._queries = None
            else:
                chosen._bank = None
                chosen._automata = [_copy.deepcopy(self._automata[i]) for i in index.tolist()]
                chosen._queries = [list(self._queries[i]) for i in index.tolist()]
        return chosen

    # ---- serialization
    def history(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pushed ``q``, ``k``, ``v`` (int64 ``[S, T]`` each, CPU)."""
        if self._bank is not None:
            with self._lock:
                q, k, v = self._bank.history()
            return q, k, v
        shape = (self.num_streams, self.length)
        q = torch.tensor(self._queries, dtype=torch.int64).reshape(shape)
        k = torch.tensor([a.keys for a in self._automata], dtype=torch.int64).reshape(shape)
        v = torch.tensor([a.values for a in self._automata], dtype=torch.int64).reshape(shape)
        return q, k, v

    def state_dict(self) -> dict:
        q, k, v = self.history()
        return {"num_streams": self.num_streams, "length": self.length, "q": q, "k": k, "v": v}

    @classmethod
    def from_state_dict(cls, state: dict, *, backend: str = "auto") -> "OnlineROSA":
        """Rebuild from :meth:`state_dict` by replaying the stored histories."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from OnlineROSA.state_dict(), got {type(state).__name__}")
        missing = [key for key in ("num_streams", "length", "q", "k", "v") if key not in state]
        if missing:
            raise ValueError(f"state is missing the keys {missing}")
        num_streams, length = int(state["num_streams"]), int(state["length"])
        restored = cls(num_streams, backend=backend)
        for name in ("q", "k", "v"):
            tensor = state[name]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (num_streams, length):
                raise ValueError(
                    f"state[{name!r}] must be a tensor of shape ({num_streams}, {length}), "
                    f"got {getattr(tensor, 'shape', type(tensor).__name__)}"
                )
        restored.extend(state["q"], state["k"], state["v"])
        return restored

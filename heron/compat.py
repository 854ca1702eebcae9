"""The interface the original description used, as thin layers over Heron's own classes.

    from heron import RWKV_x070, ROSA_1bit_LAYER, ROSA_LM

- ``RWKV_x070(args)``: ``args`` carries ``n_layer, n_embd, vocab_size, head_size`` and
  ``MODEL_NAME`` (an official ``.pth`` path without its extension, as in the official demos).
  ``forward(idx, state, full_output=False)``, ``forward_one(token_id, state)`` and
  ``forward_seq(token_ids, state, full_output=False)`` return ``(logits, state)``; the state is
  the official flat list of ``3 * n_layer`` tensors (or a :class:`heron.models.rwkv8.State`,
  needed for models with ROSA blocks, whose automata have no place in the flat list).
- ``ROSA_1bit_LAYER(n_embd, tau=1e-3)``: the official 1-bit channel layer (bit-flip estimator).
- ``ROSA_LM(n_layer=12, n_embd=768, ...)``: the pure ROSA language model.

The environment variables of the official scripts are never required. Where set they act as
defaults and are checked against the arguments (see :func:`official_environment`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from heron.layers.rosa import ROSABits
from heron.models.loading import load
from heron.models.rosa_lm import ROSALM, ROSALMConfig
from heron.models.rwkv8 import RWKV8, State

__all__ = ["RWKV_x070", "ROSA_1bit_LAYER", "ROSA_LM", "official_environment", "OfficialEnvironment"]

SUPPORTED_TESTING = ("x070",)


@dataclass(frozen=True)
class OfficialEnvironment:
    """What the official scripts' environment variables say, once checked (``None`` = unset)."""

    head_size: int | None
    cuda_on: bool | None
    jit_on: bool | None
    testing: str | None


def _flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if raw not in ("0", "1"):
        raise ValueError(f"environment variable {name} must be '0' or '1', got {raw!r}")
    return raw == "1"


def official_environment() -> OfficialEnvironment:
    """Read and validate ``RWKV_HEAD_SIZE``, ``RWKV_CUDA_ON``, ``RWKV_JIT_ON``, ``RWKV_MY_TESTING``.

    - ``RWKV_HEAD_SIZE``: default head size where ``args`` gives none; must agree with ``args``
      and with the checkpoint otherwise.
    - ``RWKV_CUDA_ON``: ``0`` runs on the CPU kernels, ``1`` on CUDA (an error when no GPU is
      visible); unset: CUDA when available.
    - ``RWKV_JIT_ON``: accepted for compatibility. Heron's kernels are always compiled (and
      cached); ``1`` additionally wraps GPT mode in ``torch.compile``.
    - ``RWKV_MY_TESTING``: the architecture tag; only ``x070`` (the RWKV-7 time-mix that RWKV-8
      uses) is meaningful here, anything else is refused rather than silently ignored.
    """
    raw_head = os.environ.get("RWKV_HEAD_SIZE")
    head_size = None
    if raw_head not in (None, ""):
        try:
            head_size = int(raw_head)
        except ValueError:
            raise ValueError(f"environment variable RWKV_HEAD_SIZE must be an integer, got {raw_head!r}") from None
        if head_size < 1:
            raise ValueError(f"environment variable RWKV_HEAD_SIZE must be positive, got {head_size}")
    testing = os.environ.get("RWKV_MY_TESTING") or None
    if testing is not None and testing not in SUPPORTED_TESTING:
        raise ValueError(
            f"environment variable RWKV_MY_TESTING={testing!r} names an architecture Heron does not "
            f"implement here; supported: {', '.join(SUPPORTED_TESTING)} (or leave it unset)"
        )
    return OfficialEnvironment(head_size, _flag("RWKV_CUDA_ON"), _flag("RWKV_JIT_ON"), testing)


def _resolve_device(env: OfficialEnvironment, requested) -> torch.device:
    if requested is not None:
        device = torch.device(requested)
        if env.cuda_on is not None and (device.type == "cuda") != env.cuda_on:
            raise ValueError(
                f"args.device={str(device)!r} conflicts with RWKV_CUDA_ON={int(env.cuda_on)}"
            )
        return device
    if env.cuda_on is True:
        if not torch.cuda.is_available():
            raise ValueError("RWKV_CUDA_ON=1 but no CUDA device is visible; unset it or set it to 0")
        return torch.device("cuda")
    if env.cuda_on is False:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RWKV_x070(nn.Module):  # noqa: N801 - the name of the described interface
    """An official RWKV-8 (rc00 layout) or task checkpoint behind the official demo's calls."""

    def __init__(self, args):
        super().__init__()
        env = official_environment()
        for name in ("n_layer", "n_embd", "vocab_size", "MODEL_NAME"):
            if not hasattr(args, name):
                raise ValueError(f"args must carry {name} (see heron.compat's docstring)")
        head_size = getattr(args, "head_size", None)
        if head_size is None:
            head_size = env.head_size
        elif env.head_size is not None and env.head_size != head_size:
            raise ValueError(
                f"args.head_size={head_size} conflicts with RWKV_HEAD_SIZE={env.head_size}"
            )
        path = Path(str(args.MODEL_NAME) + ".pth")
        self.device = _resolve_device(env, getattr(args, "device", None))
        dtype = getattr(args, "dtype", None) or torch.float32
        model = load(path, device=self.device, dtype=dtype)
        if not isinstance(model, RWKV8):
            raise ValueError(f"{path} holds a {type(model).__name__}, not an RWKV-8 model")
        config = model.config
        expected = {"n_layer": config.n_layer, "n_embd": config.n_embd,
                    "vocab_size": config.vocab_size, "head_size": config.head_size}
        given = {"n_layer": args.n_layer, "n_embd": args.n_embd, "vocab_size": args.vocab_size,
                 "head_size": head_size}
        wrong = [f"{k}={given[k]} (checkpoint: {v})" for k, v in expected.items()
                 if given[k] is not None and given[k] != v]
        if wrong:
            raise ValueError(f"args do not match {path}: " + ", ".join(wrong))
        self.model = model.eval()
        self.args = args
        self._sequence = torch.compile(self.model) if env.jit_on else self.model

    # -- state conversion ------------------------------------------------------------------------
    def _to_state(self, state):
        if state is None:
            return None
        if isinstance(state, State):
            return state
        if all(entry is None for entry in state):
            return None  # the official demo's freshly allocated list
        dtype = next(self.model.parameters()).dtype
        return State.from_official(list(state), device=self.device, dtype=dtype)

    def _from_state(self, state: State, given):
        if isinstance(given, State) or self.model.config.rosa is not None:
            return state
        flat = state.to_official(0)
        if isinstance(given, list) and len(given) == len(flat):
            given[:] = flat  # the official code updates the caller's list in place
            return given
        return flat

    def _tokens(self, token_ids) -> torch.Tensor:
        tokens = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(1, -1)
        if tokens.numel() == 0:
            raise ValueError("token_ids must hold at least one token")
        return tokens

    # -- the described calls ---------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, idx, state, full_output: bool = False):
        """A list of several tokens goes through GPT mode, one token through RNN mode."""
        if isinstance(idx, (list, tuple)) and len(idx) > 1:
            return self.forward_seq(idx, state, full_output)
        if isinstance(idx, (list, tuple)):
            idx = idx[0]
        return self.forward_one(idx, state)

    @torch.no_grad()
    def forward_one(self, idx: int, state):
        """RNN mode: ``(logits [V], state)``."""
        logits, new_state = self.model.step(self._tokens([int(idx)])[0], self._to_state(state))
        return logits[0].float(), self._from_state(new_state, state)

    @torch.no_grad()
    def forward_seq(self, idx, state, full_output: bool = False):
        """GPT mode: ``(logits [T, V] if full_output else [V], state)``."""
        logits, new_state = self._sequence(self._tokens(idx), self._to_state(state), return_state=True)
        logits = logits[0].float()
        return (logits if full_output else logits[-1]), self._from_state(new_state, state)


class ROSA_1bit_LAYER(ROSABits):  # noqa: N801
    """The official 1-bit ROSA layer: ``ROSABits(n_embd, bits=1, estimator="flip", tau=tau)``."""

    def __init__(self, n_embd: int, tau: float = 1e-3):
        super().__init__(n_embd, bits=1, estimator="flip", tau=tau)


class ROSA_LM(ROSALM):  # noqa: N801
    """The pure ROSA language model with the described defaults (12 layers, width 768)."""

    def __init__(self, n_layer: int = 12, n_embd: int = 768, vocab_size: int = 65536,
                 bits: int = 1, **config):
        super().__init__(ROSALMConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                                      bits=bits, **config))

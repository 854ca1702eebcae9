"""Converters between the official WKV7 conventions (used by Heron) and flash-linear-attention's.

Official: ``w`` is the log of the log-decay (decay = exp(-exp(w))), state ``[B, H, N_v, N_k]``.
fla (``chunk_rwkv7`` / ``fused_recurrent_rwkv7``): the decay input is the log-decay itself
(decay = exp(log_decay)), state ``[B, H, N_k, N_v]``. ``r, k, v, a, b`` are the same tensors.

The decay converters compute in the input's dtype and read no values (no checks, no host sync):
in float32 ``exp`` leaves its range beyond ``|w|`` of about 87 (``w = -120`` gives a log-decay of
``-0.0`` and back ``w = -inf``; ``w = 100`` a log-decay of ``-inf``), so convert in float64 for
exact round trips of extreme values. A log-decay ``>= 0`` (no decay, or growth) has no official
``w``: it converts to ``nan`` (``> 0``) or ``-inf`` (``0``).
"""

from __future__ import annotations

import torch


def w_to_fla_log_decay(w: torch.Tensor) -> torch.Tensor:
    """Official ``w`` -> fla's log-decay ``-exp(w)``."""
    return -torch.exp(w)


def fla_log_decay_to_w(log_decay: torch.Tensor) -> torch.Tensor:
    """fla's log-decay (must be < 0) -> official ``w = log(-log_decay)``."""
    return torch.log(-log_decay)


def state_to_fla(state: torch.Tensor) -> torch.Tensor:
    """Official ``[B, H, N_v, N_k]`` -> fla ``[B, H, N_k, N_v]`` (contiguous)."""
    return state.transpose(-1, -2).contiguous()


def state_from_fla(state: torch.Tensor) -> torch.Tensor:
    """fla ``[B, H, N_k, N_v]`` -> official ``[B, H, N_v, N_k]`` (contiguous)."""
    return state.transpose(-1, -2).contiguous()

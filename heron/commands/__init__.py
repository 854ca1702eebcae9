"""Subcommands of the ``heron`` command line, and checks they share."""

from __future__ import annotations

import re

__all__ = ["resolve_device"]

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def resolve_device(value, option: str = "--device"):
    """The ``torch.device`` named by ``value``: ``auto`` (the first GPU when CUDA is available,
    else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Anything else, or a GPU this machine does
    not have, is a ``ValueError`` naming ``option``, raised before a model is loaded."""
    import torch

    text = value.strip().lower() if isinstance(value, str) else None
    match = _DEVICE_PATTERN.match(text) if text is not None else None
    if match is None:
        raise ValueError(f"{option}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{option} {value}: CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    if match.group(2) is not None and int(match.group(2)) >= count:
        raise ValueError(f"{option} {value}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(cuda:0 .. cuda:{count - 1})")
    return torch.device(text)

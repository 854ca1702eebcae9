"""Subcommands of the ``heron`` command line, and checks they share."""

from __future__ import annotations

import re

__all__ = ["check_output_path", "resolve_device"]

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


def check_output_path(name: str, option: str, *, folder: bool) -> None:
    """Refuse an output path that cannot be written (``folder``: a folder to create or reuse; else
    a file) before the work that would fill it, which would otherwise fail only at the end."""
    from pathlib import Path

    path = Path(name)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {name}: is a file, expected a folder (existing or to be created)")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {name}: is a folder, expected a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {name}: {parent} is a file, not a folder")
            break

"""Training checkpoints: written atomically, verified when read, the previous one kept.

A checkpoint file is a short header line ``HERON-CHECKPOINT 1 <sha256> <length>`` followed by a
``torch.save`` archive of the payload. The digest catches what the zip container alone does
not (``torch.load`` happily reads an archive with a flipped byte inside a tensor).

Writing: the archive goes to a temporary file in the same directory, is flushed and fsynced,
the current checkpoint is renamed to ``<name>.prev`` and the temporary file renamed into place
(``os.replace`` is atomic on POSIX). A crash at any moment leaves at least one complete,
verifiable checkpoint on disk: the new one, or the previous one under ``.prev``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

MAGIC = b"HERON-CHECKPOINT"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated or not a Heron training checkpoint."""


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _fsync_directory(directory: Path) -> None:
    # The renames are durable only once the directory entry is on disk; some platforms
    # (Windows) cannot open directories, where os.replace is still atomic.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically; the checkpoint it replaces becomes ``path.prev``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getbuffer()
    header = b"%s %d %s %d\n" % (MAGIC, FORMAT_VERSION, hashlib.sha256(body).hexdigest().encode(), len(body))
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint; raises :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give its {CHECKPOINT_NAME}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        body = _verified_body(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_previous_hint(path)}") from None
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # the digest matched, so this is a payload we cannot interpret
        raise CheckpointError(f"checkpoint {path} could not be read: {exc}{_previous_hint(path)}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(payload).__name__}, expected a dict")
    return payload


def _verified_body(path: Path) -> memoryview:
    """The payload bytes after the header, once its length and sha256 digest check out."""
    data = path.read_bytes()
    newline = data.find(b"\n", 0, 256)
    header = data[:newline].split(b" ") if newline > 0 else []
    if len(header) != 4 or header[0] != MAGIC:
        raise CheckpointError(f"{path} is not a Heron training checkpoint (no {MAGIC.decode()} header)")
    if header[1] != str(FORMAT_VERSION).encode():
        raise CheckpointError(
            f"checkpoint {path} has format version {header[1].decode(errors='replace')}, "
            f"this Heron reads version {FORMAT_VERSION}"
        )
    if not header[3].isdigit():
        raise CheckpointError(f"checkpoint {path} has a damaged header (length {header[3][:20]!r})")
    body = memoryview(data)[newline + 1:]
    expected_length = int(header[3])
    if len(body) != expected_length:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(body)} of {expected_length} bytes)")
    if hashlib.sha256(body).hexdigest().encode() != header[2]:
        raise CheckpointError(f"checkpoint {path} is corrupt (sha256 digest mismatch)")
    return body


def _previous_hint(path: Path) -> str:
    previous = previous_path(path)
    if not previous.is_file():
        return ""
    try:
        _verified_body(previous)
    except CheckpointError:
        return f"; the previous checkpoint {previous} is damaged too"
    return f"; the previous checkpoint is intact at {previous} (resume with --resume {previous})"


def latest_checkpoint(directory: str | Path) -> Path:
    """The checkpoint to resume from in a run directory: ``checkpoint.pt``, or ``.prev`` when a
    crash hit between the two renames of :func:`save_checkpoint`."""
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    if path.is_file():
        return path
    if previous_path(path).is_file():
        return previous_path(path)
    raise CheckpointError(f"no checkpoint to resume from in {directory} (expected {path})")

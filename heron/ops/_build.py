"""The one mechanism that builds Heron's native kernels.

Every C++/CUDA kernel is compiled on first use through ``torch.utils.cpp_extension.load`` and
cached on disk, keyed by the sources' content, the torch version and the Python version, so a
rebuild happens only when a source changes. The cache lives in ``~/.cache/heron/extensions``
(override with the ``HERON_EXTENSION_DIR`` environment variable; nothing else is configurable
and nothing is required).

Callers use :func:`load_extension`; when no compiler (or, for CUDA sources, no GPU toolkit) is
available it raises :class:`ExtensionUnavailable` with a message that says why, and callers fall
back to their pure-PyTorch path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterable, Sequence

import torch

CSRC_ROOT = Path(__file__).resolve().parent

_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}
_lock = threading.Lock()


class ExtensionUnavailable(RuntimeError):
    """A native extension could not be built or loaded; the message says why."""


def cache_root() -> Path:
    override = os.environ.get("HERON_EXTENSION_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "heron" / "extensions"


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def _local_headers(paths: Sequence[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    pending = list(paths)
    while pending:
        text = pending.pop().read_text(errors="replace")
        for name in _INCLUDE.findall(text):
            for folder in {p.parent for p in paths}:
                header = (folder / name).resolve()
                if header.exists() and header not in seen:
                    seen[header] = None
                    pending.append(header)
    return sorted(seen)


def _source_digest(paths: Sequence[Path], flags: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    # Local headers the sources include (transitively) are part of the build too; other
    # headers in the folder are not, so editing one extension's header rebuilds only it.
    for header in _local_headers(paths):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def load_extension(
    name: str,
    sources: Sequence[str | Path],
    *,
    cuda: bool = False,
    extra_cflags: Sequence[str] = (),
    extra_cuda_cflags: Sequence[str] = (),
    verbose: bool = False,
) -> ModuleType:
    """Build (once) and import the extension ``name`` from ``sources``.

    ``sources`` are paths relative to ``heron/ops`` or absolute. Raises
    :class:`ExtensionUnavailable` when it cannot be built here.
    """
    key = f"{name}-{'cuda' if cuda else 'cpu'}"
    with _lock:
        if key in _loaded:
            return _loaded[key]
        if key in _failed:
            raise ExtensionUnavailable(_failed[key])
        try:
            module = _build(name, sources, cuda, extra_cflags, extra_cuda_cflags, verbose)
        except ExtensionUnavailable as exc:
            _failed[key] = str(exc)
            raise
        _loaded[key] = module
        return module


def _build(name, sources, cuda, extra_cflags, extra_cuda_cflags, verbose) -> ModuleType:
    from torch.utils import cpp_extension

    paths = [p if Path(p).is_absolute() else CSRC_ROOT / p for p in sources]
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise ExtensionUnavailable(f"extension {name!r}: source file {path} is missing")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise ExtensionUnavailable(
            f"extension {name!r} needs a C++ compiler (g++ or clang++) on PATH; none was found. "
            "Install one (e.g. `apt-get install g++`) or use the pure-PyTorch fallback."
        )
    if cuda:
        if not torch.cuda.is_available():
            raise ExtensionUnavailable(f"extension {name!r} needs a CUDA device; none is visible")
        if cpp_extension.CUDA_HOME is None:
            raise ExtensionUnavailable(
                f"extension {name!r} needs the CUDA toolkit (nvcc); CUDA_HOME was not found"
            )
    cflags = ["-O3", "-std=c++17", "-fopenmp", *extra_cflags]
    cuda_cflags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", *extra_cuda_cflags]
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
        cuda_cflags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    digest = _source_digest(paths, cflags + cuda_cflags)
    module_name = f"heron_{name}_{digest}"
    build_dir = cache_root() / module_name
    build_dir.mkdir(parents=True, exist_ok=True)
    staged = _stage_sources(paths, build_dir / "src")
    try:
        return cpp_extension.load(
            name=module_name,
            sources=[str(p) for p in staged],
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_cflags if cuda else None,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            with_cuda=cuda,
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors, missing toolchain, ABI problems
        raise ExtensionUnavailable(
            f"extension {name!r} failed to build in {build_dir}: {type(exc).__name__}: {exc}"
        ) from exc


def _stage_sources(paths: Sequence[Path], folder: Path) -> list[Path]:
    """Copies of the sources and the local headers they include, inside the cache folder, to build
    from. ninja records the sources' absolute paths: building from a checkout's own files made two
    checkouts with the same sources (the cache key) rebuild each other's extension every time one
    of them loaded it. The copies' paths depend only on the key, so a build is reused from
    anywhere. (Compiler messages therefore name the copies; the originals have the same lines.)"""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*paths, *_local_headers(paths)]:
        copy = folder / path.name
        if not copy.exists():  # the folder's name is the content's digest: an existing copy is current
            temporary = folder / f".{path.name}.{os.getpid()}.tmp"
            shutil.copyfile(path, temporary)
            os.replace(temporary, copy)
    return [folder / path.name for path in paths]


def extension_or_none(name: str, sources: Sequence[str | Path], **kwargs) -> ModuleType | None:
    """Like :func:`load_extension` but returns ``None`` (after one warning) when unavailable."""
    try:
        return load_extension(name, sources, **kwargs)
    except ExtensionUnavailable as exc:
        key = f"warned-{name}-{kwargs.get('cuda', False)}"
        if key not in _failed:
            _failed[key] = "warned"
            import warnings

            warnings.warn(f"{exc}; falling back to the pure-PyTorch implementation", stacklevel=2)
        return None

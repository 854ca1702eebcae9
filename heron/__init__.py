"""Heron: RWKV-8 "Heron" with ROSA for PyTorch — training, generation and fast kernels.

The main entry points are re-exported lazily (importing ``heron`` stays cheap):
``heron.RWKV8``, ``heron.RWKV8Config``, ``heron.ROSALM``, ``heron.ROSALMConfig``, ``heron.load``,
``heron.save``, ``heron.rosa``, ``heron.rosa_qkv``, ``heron.wkv7`` and the described interface
``heron.RWKV_x070``, ``heron.ROSA_1bit_LAYER``, ``heron.ROSA_LM`` (see :mod:`heron.compat`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RWKV8": "heron.models.rwkv8",
    "RWKV8Config": "heron.models.rwkv8",
    "ROSALM": "heron.models.rosa_lm",
    "ROSALMConfig": "heron.models.rosa_lm",
    "load": "heron.models.loading",
    "save": "heron.models.loading",
    "rosa": "heron.ops.rosa",
    "rosa_qkv": "heron.ops.rosa",
    "wkv7": "heron.ops.wkv7",
    "RWKV_x070": "heron.compat",
    "ROSA_1bit_LAYER": "heron.compat",
    "ROSA_LM": "heron.compat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'heron' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

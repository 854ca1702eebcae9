"""Heron's primitives, each with a reference, a CPU and a CUDA implementation:

- :mod:`heron.ops.rosa` — ``rosa``, ``rosa_qkv``, ``pack_bits``, ``OnlineROSA``, estimators;
- :mod:`heron.ops.wkv7` — the WKV7 recurrence; the module itself is callable, so
  ``heron.ops.wkv7(r, w, k, v, a, b, ...)`` and ``heron.ops.wkv7.wkv7(...)`` are the same call.
"""

from heron.ops import rosa, wkv7

__all__ = ["rosa", "wkv7"]

"""Shared WKV7 test helpers (inputs drawn as ANCHORS.md prescribes, see heron.ops.wkv7.inputs)."""

from __future__ import annotations

import torch

from heron.ops.wkv7.inputs import random_inputs


make_inputs = random_inputs


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    x, reference = x.double(), reference.double()
    return ((x - reference).norm() / reference.norm().clamp_min(1e-30)).item()

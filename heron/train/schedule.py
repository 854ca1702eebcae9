"""Learning-rate schedule: linear warm-up, then cosine decay to a final value.

The schedule is a pure function of the step index, so resuming needs only the step counter and
nothing about the schedule can drift between an interrupted and an uninterrupted run.
"""

from __future__ import annotations

import math

import torch


def learning_rate(step: int, *, steps: int, lr: float, lr_final: float, warmup: int) -> float:
    """The rate used by optimiser step ``step`` (0-based) of a ``steps``-step run.

    Warm-up rises linearly to ``lr`` over the first ``warmup`` steps (step 0 already trains, at
    ``lr / warmup``); the cosine then runs so that the last step uses exactly ``lr_final``.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step}")
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = steps - warmup - 1
    progress = 1.0 if decay_steps <= 0 else (step - warmup) / decay_steps
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * progress))


def apply_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    """Set every group's rate; a group's ``lr_scale`` (e.g. 2 for the LM recipe's ``att.w0``)
    multiplies the scheduled value."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)

"""Watching the gradient norm that the clip measures, without a host read-back per step.

``torch.nn.utils.clip_grad_norm_`` multiplies every gradient by ``max_norm / norm``. Two cases make
that silently stop training:

- a **non-finite norm**: ``inf`` (one tensor's sum of squares overflowed float32, i.e. some
  gradient element beyond ~1e19) turns every gradient into ``0`` (or ``nan`` where an element was
  itself infinite); ``nan`` poisons every gradient;
- a **huge finite norm**: the clipped gradients shrink by ``norm / max_norm``, and once they fall
  to the order of AdamW's ``eps`` (``1e-18`` in the LM recipe) the update ``m / (sqrt(v) + eps)``
  shrinks with them: the weights stop moving although every step "succeeds".

Both happened to deep ROSA models (docs/estimators.md, "Deep models"): the ROSA estimators' gain
compounds over the layers, to a norm of ~1e19 at 12 layers. :class:`GradNormMonitor` keeps, on the
device, the number of non-finite norms and the largest finite one since the last report, and
:meth:`GradNormMonitor.report` turns them into a warning at logging time (one read-back then).
"""

from __future__ import annotations

import math

import torch

__all__ = ["HUGE_NORM_RATIO", "GradNormMonitor"]

# A norm this many times the clip threshold scales the clipped gradients by <= 1e-12: gradients of
# 1e-6 and smaller (most of a model's, at a mean token loss) then fall to AdamW's 1e-18 eps. Lower
# ratios happen in models that train: the 4-layer ROSA model of `heron train text` clips norms of
# ~2e9 with normal updates (the head moves ~0.7 x lr per step).
HUGE_NORM_RATIO = 1e12

_ADVICE = ("a ROSA model's estimator gradient compounds over its layers: bound it with "
           "rosa_max_gain (e.g. 1.0) or raise rosa_tau; see docs/estimators.md, 'Deep models'")


class GradNormMonitor:
    """Device-side tally of the clip's gradient norms between two :meth:`report` calls."""

    def __init__(self, max_norm: float = math.inf) -> None:
        self.max_norm = max_norm
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self._nonfinite: torch.Tensor | None = None
        self._largest: torch.Tensor | None = None

    def update(self, norm: torch.Tensor) -> None:
        """Record one step's total gradient norm (a 0-d tensor on any device; not read back)."""
        norm = norm.detach().float()
        finite = torch.isfinite(norm)
        nonfinite = (~finite).to(torch.int64)
        largest = torch.where(finite, norm, torch.zeros_like(norm))
        if self._nonfinite is None:
            self._nonfinite, self._largest = nonfinite, largest
        else:
            self._nonfinite = self._nonfinite + nonfinite
            self._largest = torch.maximum(self._largest, largest)
        self.steps += 1

    def values(self) -> tuple[int, float]:
        """``(non-finite norms, largest finite norm)`` since the last report (one read-back)."""
        if self._nonfinite is None:
            return 0, 0.0
        nonfinite, largest = torch.stack([self._nonfinite.double(), self._largest.double()]).tolist()
        return int(nonfinite), float(largest)

    def report(self) -> str | None:
        """A warning for the steps since the last call, or ``None`` when their norms were sane;
        starts a new tally either way."""
        steps = self.steps
        nonfinite, largest = self.values()
        self._reset()
        if nonfinite:
            return (f"gradient norm not finite at {nonfinite} of the last {steps} step(s): the clip zeroed "
                    f"(inf) or poisoned (nan) their gradients, so they did not train; {_ADVICE}")
        if math.isfinite(self.max_norm) and largest > HUGE_NORM_RATIO * self.max_norm:
            return (f"gradient norm up to {largest:.3g} in the last {steps} step(s): clipped to "
                    f"{self.max_norm:g}, gradients shrink by that factor and AdamW's update vanishes once "
                    f"they reach its eps; {_ADVICE}")
        return None

"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Order of operations (the common convention): scale the logits by ``1 / temperature``, keep the
``top_k`` largest (``0`` = all), turn them into probabilities, keep the smallest set of most
probable tokens whose probability reaches ``top_p`` (``1.0`` = all), renormalise, sample.
``temperature = 0`` is greedy (arg-max), whatever ``top_k``/``top_p``. Ties (in arg-max and at the
top-k boundary) go to the smaller id. A row with a NaN or without any finite logit (a model that
diverged) is a ``ValueError`` in both modes rather than an arbitrary token.

Sampling is by inverse CDF from uniforms the caller supplies (``uniforms [B]`` in ``[0, 1)``),
so the random stream lives on a CPU ``torch.Generator`` whatever the logits' device, and the
same seed picks the same tokens on CPU and GPU (up to the logits themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplingOptions", "sample_next", "sample_next_reference", "filtered_probabilities"]


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature >= 0 or self.temperature == float("inf"):
            raise ValueError(f"temperature: expected a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: expected an int >= 0 (0 = no limit), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_logits(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got {logits.dtype}")
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits: expected shape [B, V] with B, V >= 1, got {tuple(logits.shape)}")
    return logits


def _check_uniforms(uniforms, batch_size: int) -> torch.Tensor:
    if not isinstance(uniforms, torch.Tensor) or not uniforms.is_floating_point():
        raise TypeError("uniforms: expected a floating-point tensor of random numbers in [0, 1)")
    if uniforms.shape != (batch_size,):
        raise ValueError(f"uniforms: expected shape ({batch_size},), got {tuple(uniforms.shape)}")
    if uniforms.numel() and not bool(((uniforms >= 0) & (uniforms < 1)).all()):  # NaN fails both
        raise ValueError("uniforms: values must lie in [0, 1)")
    return uniforms


def filtered_probabilities(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Sampling distribution ``[B, V]`` (float64) after temperature, top-k and top-p."""
    logits = _check_logits(logits)
    if options.greedy:
        raise ValueError("options: temperature 0 is greedy and has no sampling distribution")
    scaled = logits.double() / options.temperature
    vocab = scaled.shape[1]
    if 0 < options.top_k < vocab:
        # a stable sort breaks ties towards the smaller id (torch.topk leaves ties unspecified)
        kept = torch.sort(scaled, dim=1, descending=True, stable=True).indices[:, :options.top_k]
        mask = torch.ones_like(scaled, dtype=torch.bool).scatter_(1, kept, False)
        scaled = scaled.masked_fill(mask, float("-inf"))
    probabilities = torch.softmax(scaled, dim=1)
    if options.top_p < 1.0:
        sorted_probabilities, order = torch.sort(probabilities, dim=1, descending=True, stable=True)
        before = torch.cumsum(sorted_probabilities, dim=1) - sorted_probabilities
        # a token is kept when the tokens more probable than it do not yet reach top_p
        drop_sorted = before >= options.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        probabilities = probabilities.masked_fill(drop, 0.0)
        probabilities = probabilities / probabilities.sum(dim=1, keepdim=True)
    return probabilities


def _refuse_rows(usable: torch.Tensor) -> None:
    if not bool(usable.all()):
        rows = torch.nonzero(~usable).flatten().tolist()
        raise ValueError(f"logits: row(s) {rows[:8]} give no finite distribution (NaN or no finite value)")


def sample_next(logits: torch.Tensor, options: SamplingOptions, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids ``[B]`` (int64, on the logits' device)."""
    logits = _check_logits(logits)
    if not isinstance(options, SamplingOptions):
        raise TypeError(f"options: expected SamplingOptions, got {type(options).__name__}")
    if options.greedy:
        # argmax would quietly return 0 (or the NaN's index) for a diverged model; refuse such
        # rows as the sampling path below does (NaN anywhere, or no finite logit at all)
        usable = torch.isfinite(logits).any(dim=1) & ~torch.isnan(logits).any(dim=1)
        _refuse_rows(usable)
        return torch.argmax(logits, dim=1)
    if uniforms is None:
        raise ValueError("uniforms: sampling with temperature > 0 needs one uniform number per row")
    uniforms = _check_uniforms(uniforms, logits.shape[0])
    probabilities = filtered_probabilities(logits, options)
    cumulative = torch.cumsum(probabilities, dim=1)
    # a row with no finite logit (a model that diverged) has no distribution to sample from
    _refuse_rows(torch.isfinite(cumulative[:, -1]))
    targets = uniforms.to(device=cumulative.device, dtype=torch.float64)[:, None] * cumulative[:, -1:]
    # first index whose cumulative mass exceeds the target: zero-probability tokens are never hit
    chosen = torch.searchsorted(cumulative, targets, right=True)[:, 0]
    return chosen.clamp_(max=logits.shape[1] - 1)


def sample_next_reference(logits: torch.Tensor, options: SamplingOptions, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """The same rule written row by row in plain Python (the oracle for :func:`sample_next`)."""
    import math

    chosen = []
    for row in range(logits.shape[0]):
        values = [float(v) for v in logits[row].double().cpu()]
        if options.greedy:
            best = max(range(len(values)), key=lambda index: (values[index], -index))
            chosen.append(best)
            continue
        scaled = [v / options.temperature for v in values]
        order = sorted(range(len(scaled)), key=lambda index: (-scaled[index], index))
        if 0 < options.top_k < len(scaled):
            allowed = set(order[:options.top_k])
        else:
            allowed = set(order)
        peak = max(scaled[index] for index in allowed)
        weights = [math.exp(scaled[index] - peak) if index in allowed else 0.0 for index in range(len(scaled))]
        total = sum(weights)
        probabilities = [w / total for w in weights]
        if options.top_p < 1.0:
            kept, mass = set(), 0.0
            for index in sorted(range(len(scaled)), key=lambda i: (-probabilities[i], i)):
                if kept and mass >= options.top_p:
                    break
                kept.add(index)
                mass += probabilities[index]
            probabilities = [p if index in kept else 0.0 for index, p in enumerate(probabilities)]
            total = sum(probabilities)
            probabilities = [p / total for p in probabilities]
        target = float(uniforms[row]) * sum(probabilities)
        running = 0.0
        pick = len(probabilities) - 1
        for index, p in enumerate(probabilities):
            running += p
            if running > target:
                pick = index
                break
        chosen.append(pick)
    return torch.tensor(chosen, dtype=torch.int64)

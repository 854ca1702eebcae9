"""Copy ability: can the model continue a random sequence it has seen once?

Protocol (issue 7): draw ``length = 64`` tokens independently and uniformly (with replacement)
from a pool — the 1000 most frequent tokens of the validation split, end-of-text excluded —
prompt the model with those 64 tokens followed by their first ``cue = 8``, decode the next
``length - cue = 56`` tokens greedily, and compare them with tokens ``cue .. length-1`` of the
draw. ``token_accuracy`` is the share of equal tokens over all trials (the issue's metric, to
reach >= 95% over 200 trials); ``exact_share`` the share of trials copied without a mistake;
``per_trial_first_error`` where each trial's first mistake falls (``length - cue`` when there is
none), which tells a model that loses the thread (and never finds it again) from one that slips
now and then.

The prompt is random, so the model can only succeed by retrieving what followed the cue earlier
in its context — what ROSA's suffix matching provides and a small RNN usually cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from heron.generate.loop import generate, model_vocab_size

__all__ = ["CopyEvalResult", "copy_eval", "copy_prompts", "first_true_index"]


@dataclass
class CopyEvalResult:
    token_accuracy: float
    exact_share: float
    trials: int
    length: int
    cue: int
    per_trial_accuracy: list[float] = field(repr=False, default_factory=list)
    per_trial_first_error: list[int] = field(repr=False, default_factory=list)

    def tokens_after_first_error(self) -> float:
        """Share of the tokens after each failing trial's first mistake that are still right
        (0 when no trial fails): near 0, a mistake ends the copy; higher, the model recovers."""
        decoded = self.length - self.cue
        right = total = 0.0
        for accuracy, first in zip(self.per_trial_accuracy, self.per_trial_first_error):
            if first < decoded:
                right += accuracy * decoded - first
                total += decoded - first - 1
        return right / total if total else 0.0

    def summary(self) -> str:
        failing = sorted(first for first in self.per_trial_first_error if first < self.length - self.cue)
        detail = ""
        if failing:
            detail = (f"; failing trials' first mistake at token {failing[len(failing) // 2]} (median), "
                      f"{100 * self.tokens_after_first_error():.1f}% right after it")
        return (f"copy ability: {100 * self.token_accuracy:.2f}% of {self.trials} x {self.length - self.cue} tokens "
                f"copied, {100 * self.exact_share:.1f}% of trials exact "
                f"(prompt = {self.length} random tokens + their first {self.cue}){detail}")


def copy_prompts(pool: torch.Tensor, trials: int, length: int, cue: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompts [trials, length + cue], expected [trials, length - cue])`` for the protocol."""
    draws = pool[torch.randint(0, pool.numel(), (trials, length), generator=generator)]
    prompts = torch.cat([draws, draws[:, :cue]], dim=1)
    return prompts, draws[:, cue:]


def first_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row of a ``[N, L]`` bool mask, the index of its first ``True`` (``L`` when none): where
    each trial's first mistake falls, or its first token of some kind."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got "
                        f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask: expected shape [N, L], got {tuple(mask.shape)}")
    length = mask.shape[1]
    if length == 0:
        # min() over an empty dimension raises; no column means no True, so every row gets L = 0
        return torch.zeros(mask.shape[0], dtype=torch.int64, device=mask.device)
    positions = torch.where(mask, torch.arange(length, device=mask.device),
                            torch.full_like(mask, length, dtype=torch.int64))
    return positions.min(dim=1).values


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def copy_eval(model: torch.nn.Module, pool, *, trials: int = 200, length: int = 64, cue: int = 8,
              seed: int = 0, batch_size: int = 50, incremental: bool = True) -> CopyEvalResult:
    """Run the copy protocol on ``model`` with tokens drawn from ``pool`` (1-D ids)."""
    trials, length, cue, batch_size = (_check_positive(n, v) for n, v in
                                       (("trials", trials), ("length", length), ("cue", cue),
                                        ("batch_size", batch_size)))
    if cue >= length:
        raise ValueError(f"cue: expected fewer than length = {length} tokens, got {cue}")
    pool = torch.as_tensor(pool)
    if pool.dim() != 1 or pool.numel() == 0 or pool.is_floating_point() or pool.dtype == torch.bool:
        raise ValueError(f"pool: expected a non-empty 1-D integer tensor of token ids, got {pool.dtype} "
                         f"{tuple(pool.shape)}")
    pool = pool.to(torch.int64)
    vocab_size = model_vocab_size(model)
    if pool.min() < 0 or (vocab_size is not None and pool.max() >= vocab_size):
        raise ValueError(f"pool: token ids must lie in [0, {vocab_size})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    prompts, expected = copy_prompts(pool, trials, length, cue, torch.Generator().manual_seed(seed))
    per_trial, first_errors = [], []
    decoded = length - cue
    for first in range(0, trials, batch_size):
        chunk = prompts[first:first + batch_size]
        output = generate(model, chunk, decoded, temperature=0.0, incremental=incremental)
        produced = torch.tensor(output.tokens, dtype=torch.int64)
        wrong = produced != expected[first:first + batch_size]
        per_trial.extend((~wrong).double().mean(dim=1).tolist())
        first_errors.extend(first_true_index(wrong).tolist())
    accuracy = sum(per_trial) / trials
    exact = sum(1 for value in per_trial if value == 1.0) / trials
    return CopyEvalResult(token_accuracy=accuracy, exact_share=exact, trials=trials, length=length, cue=cue,
                          per_trial_accuracy=per_trial, per_trial_first_error=first_errors)

"""Generating tunes: prompts from key and meter, a batched sampling loop, tune assembly.

The model is prompted with the separator ``<tune>`` followed by a canonical header
(``X:1 / M / L / K``, the form every training tune has), samples the body token by token with
``model.step`` and stops at the next ``<tune>``. Any model with the repository's interface works:
``model(tokens [B, T], state=None, return_state=True) -> (logits [B, T, V], state)`` and
``model.step(token_ids [B], state) -> (logits [B, V], state)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from heron.data.music import (
    ABCTokenizer,
    abc_pieces_with_kind,
    default_unit_length,
    header_text,
    normalise_key,
    normalise_meter,
    normalise_unit_length,
)
from heron.generate.sampling import SamplingOptions, sample_next

__all__ = ["TunePrompt", "make_prompt", "GeneratedTune", "generate_tunes", "known_keys", "known_meters"]


def _known(tokenizer: ABCTokenizer, field_name: str) -> list[str]:
    prefix = f"{field_name}:"
    return sorted(t[len(prefix):-1] for t in tokenizer.tokens if t.startswith(prefix) and t.endswith("\n"))


def _fraction_order(value: str) -> tuple:
    """Order of ``N/D`` values by beat unit, then beats (2/2 3/2, 2/4 3/4 4/4, 6/8 9/8 12/8), and
    anything else (free meter ``none``) last; string order would put 12/8 before 2/1."""
    numerator, _, denominator = value.partition("/")
    if numerator.isdigit() and denominator.isdigit():
        return (0, int(denominator), int(numerator), value)
    return (1, 0, 0, value)


def known_keys(tokenizer: ABCTokenizer) -> list[str]:
    """Keys that occur often enough in training to be whole tokens (``K:G\\n``)."""
    return _known(tokenizer, "K")


def known_meters(tokenizer: ABCTokenizer) -> list[str]:
    """Meters whose header line is a token, in musical order (by beat unit, then beats)."""
    return sorted(_known(tokenizer, "M"), key=_fraction_order)


@dataclass(frozen=True)
class TunePrompt:
    key: str
    meter: str
    unit_length: str

    @property
    def header(self) -> str:
        return header_text(self.meter, self.unit_length, self.key)


def make_prompt(tokenizer: ABCTokenizer, *, key: str, meter: str, unit_length: str | None = None) -> TunePrompt:
    """Validated prompt. A key or meter is *known* when the training data made its header line a
    token; anything else would ask the model for something it has never seen, so it is an error."""
    if not isinstance(tokenizer, ABCTokenizer):
        raise TypeError(f"tokenizer must be an ABCTokenizer, got {type(tokenizer).__name__}")
    key = normalise_key(key)
    meter = normalise_meter(meter)
    unit_length = default_unit_length(meter) if unit_length is None else normalise_unit_length(unit_length)
    if not tokenizer.has_piece(f"K:{key}\n"):
        raise ValueError(f"key: unknown key {key!r}; the training tunes use {', '.join(known_keys(tokenizer))}")
    if not tokenizer.has_piece(f"M:{meter}\n"):
        raise ValueError(f"meter: unknown meter {meter!r}; the training tunes use {', '.join(known_meters(tokenizer))}")
    if not tokenizer.has_piece(f"L:{unit_length}\n"):
        known = sorted(_known(tokenizer, "L"), key=_fraction_order)
        raise ValueError(f"unit_length: unknown unit length {unit_length!r}; the training tunes use {', '.join(known)}")
    return TunePrompt(key, meter, unit_length)


@dataclass
class GeneratedTune:
    """``finished``: the model ended the tune itself (sampled ``<tune>``) within ``max_tokens``;
    otherwise the body is cut back to its last bar line (``cut_at_bar``), or kept whole when it
    has none. ``tokens``: the sampled tokens the body holds, so counted after that cut."""

    prompt: TunePrompt
    body: str
    finished: bool
    tokens: int
    cut_at_bar: bool = False

    def abc(self, number: int = 1, title: str | None = None) -> str:
        return header_text(self.prompt.meter, self.prompt.unit_length, self.prompt.key, number=number, title=title) + self.body


def _last_bar_end(body: str) -> int:
    """Characters of ``body`` up to the end of its last bar line; 0 when it has none."""
    end = 0
    position = 0
    for kind, piece in abc_pieces_with_kind(body):
        position += len(piece)
        if kind == "bar":
            end = position
    return end


def _cut_unfinished(tokenizer: ABCTokenizer, ids: list[int]) -> tuple[str, int, bool]:
    """``(body, tokens kept, cut at a bar)`` of a tune stopped by the token limit: it ends at its
    last bar line, not mid-note. A body without any bar line (a very small limit) is kept whole,
    as cutting it would leave a tune with no notes at all."""
    body = tokenizer.decode(ids)
    end = _last_bar_end(body)
    if not end:
        return body, len(ids), False
    kept = 0
    position = 0
    for token_id in ids:
        position += len(tokenizer.decode([token_id]))
        if position > end:
            break
        kept += 1
    return body[:end], kept, True


def _check_model_output(logits: torch.Tensor, batch: int, vocab_size: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(f"model: step returned logits of shape {tuple(logits.shape)}, expected [{batch}, V]")
    if logits.shape[1] != vocab_size:
        raise ValueError(
            f"model: its vocabulary has {logits.shape[1]} tokens but the ABC tokenizer has {vocab_size}; "
            "was the checkpoint trained on another dataset or tokenizer?"
        )


@torch.no_grad()
def generate_tunes(
    model: torch.nn.Module,
    tokenizer: ABCTokenizer,
    prompts: Sequence[TunePrompt],
    *,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_tokens: int = 1024,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> list[GeneratedTune]:
    """One tune per prompt. Tune ``i`` draws its sampling uniforms from its own CPU generator
    seeded from ``(seed, i)``, so a seed gives the same tunes on any device and with any
    ``batch_size`` (up to the logits themselves)."""
    if not prompts:
        raise ValueError("prompts must hold at least one TunePrompt")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    options = SamplingOptions(temperature=temperature, top_p=top_p)
    model_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if model_vocab is not None and model_vocab != tokenizer.vocab_size:
        raise ValueError(
            f"model: its vocabulary has {model_vocab} tokens but the ABC tokenizer has {tokenizer.vocab_size}; "
            "was the checkpoint trained on another dataset or tokenizer?"
        )
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    # one random stream per tune, so a tune depends on (seed, its index) and not on batching
    generators = [torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63) for index in range(len(prompts))]
    separator = tokenizer.separator_id
    model.eval()
    results: list[GeneratedTune] = []
    for start in range(0, len(prompts), batch_size):
        group = list(prompts[start : start + batch_size])
        # rows whose prompts have the same token count run as one batch (no padding needed);
        # known headers are one token per line, so prompts of known keys and meters all match
        prompt_ids = [[separator] + tokenizer.encode(prompt.header) for prompt in group]
        by_length: dict[int, list[int]] = {}
        for row, ids in enumerate(prompt_ids):
            by_length.setdefault(len(ids), []).append(row)
        bodies: list[GeneratedTune | None] = [None] * len(group)
        for rows in by_length.values():
            tokens = torch.tensor([prompt_ids[row] for row in rows], dtype=torch.int64, device=device)
            logits, state = model(tokens, state=None, return_state=True)
            logits = logits[:, -1, :]
            generated: list[list[int]] = [[] for _ in rows]
            finished = [False] * len(rows)
            for _ in range(max_tokens):
                _check_model_output(logits, len(rows), tokenizer.vocab_size)
                uniforms = torch.cat([torch.rand(1, generator=generators[start + row], dtype=torch.float64) for row in rows])
                chosen = sample_next(logits.float(), options, uniforms)
                chosen_list = chosen.tolist()
                for index, token_id in enumerate(chosen_list):
                    if finished[index]:
                        continue
                    if token_id == separator:
                        finished[index] = True
                    else:
                        generated[index].append(token_id)
                if all(finished):
                    break
                logits, state = model.step(chosen.to(device), state)
            for index, row in enumerate(rows):
                if finished[index]:
                    body, kept, cut = tokenizer.decode(generated[index]), len(generated[index]), False
                else:
                    body, kept, cut = _cut_unfinished(tokenizer, generated[index])
                if body and not body.endswith("\n"):
                    body += "\n"
                bodies[row] = GeneratedTune(group[row], body, finished[index], kept, cut)
        results.extend(bodies)  # type: ignore[arg-type]
    return results

"""The counting task of the official ROSA toy training (spec/RWKV8.md §7).

A sample is ``[10] + digits(n) + [10] + digits(n+1) + [10] + ...`` cut to ``seq_len + 1`` tokens
(vocabulary ``0-9`` and the separator ``10``), with the digit count of ``n`` uniform in
``1..max_digits`` and ``n`` uniform among numbers of that many digits (``0..9`` for one digit).
The model reads the first ``seq_len`` tokens and predicts the next one at every position (the
official scripts: sample length 128, so ``seq_len = 127``).

:class:`CountingSource` follows the data contract of docs/design.md: every random choice comes
from the ``torch.Generator`` passed to :meth:`CountingSource.batch`.
"""

from __future__ import annotations

import torch

__all__ = ["SEPARATOR", "VOCAB_SIZE", "counting_tokens", "CountingSource"]

SEPARATOR = 10
VOCAB_SIZE = 11


def counting_tokens(start: int, length: int) -> list[int]:
    """``[10] + digits(start) + [10] + digits(start + 1) + ...`` cut to ``length`` tokens."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    tokens = [SEPARATOR]
    number = start
    while len(tokens) < length:
        tokens.extend(int(ch) for ch in str(number))
        tokens.append(SEPARATOR)
        number += 1
    return tokens[:length]


class CountingSource:
    """Counting batches: ``inputs [B, seq_len]`` and next-token ``targets [B, seq_len]`` (all scored)."""

    vocab_size = VOCAB_SIZE

    def __init__(self, seq_len: int = 127, max_digits: int = 3):
        for name, value in (("seq_len", seq_len), ("max_digits", max_digits)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_digits > 18:
            raise ValueError(f"max_digits must be at most 18 (int64 sampling), got {max_digits}")
        self.seq_len = seq_len
        self.max_digits = max_digits

    def starts(self, batch_size: int, generator: torch.Generator) -> list[int]:
        """The first number of each sample (digit count uniform, then the number uniform)."""
        counts = torch.randint(1, self.max_digits + 1, (batch_size,), generator=generator)
        low = torch.where(counts == 1, torch.zeros_like(counts), 10 ** (counts - 1))
        span = 10**counts - low  # numbers with that digit count
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        offsets = (uniform * span.double()).long().clamp(max=span - 1)
        return (low + offsets).tolist()

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        rows = [counting_tokens(start, self.seq_len + 1) for start in self.starts(batch_size, generator)]
        tokens = torch.tensor(rows, dtype=torch.long)
        return tokens[:, :-1], tokens[:, 1:].clone()

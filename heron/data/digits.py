"""The digit tasks of spec/RWKV8.md §7: reversing numbers and adding/subtracting them.

Three things live here, kept separate because they are used separately:

- **sample construction** (`reverse_tokens`, `arith_tokens`): one task string as token ids,
  padded to a fixed length;
- **the official evaluation samplers** (`official_reverse_samples`, `official_arith_samples`):
  the exact draw of the official run scripts — a private ``random.Random(seed)`` (never the
  global RNG), consumed in the official order, so seed 42 reproduces the published runs and
  seed 1234 the golden dev sets;
- **the honest scoring protocol** (`scored_positions`, `score_predictions`): which prediction
  positions count, and the digit accuracy per digit count;
- **training batch sources** (`ReverseDigits`, `ArithDigits`), following the data contract of
  docs/design.md: ``batch(batch_size, generator)`` takes every random choice from the
  ``torch.Generator``, so saving the generator state makes a resumed run continue bit-for-bit.

Token ids: reversal ``0-9`` digits, ``','`` = 10, ``'#'`` = 11 (V = 12); arithmetic ``0-9``,
``'+'`` = 10, ``'-'`` = 11, ``'='`` = 12 (V = 13).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

__all__ = [
    "REVERSE_ALPHABET",
    "ARITH_ALPHABET",
    "TASKS",
    "encode",
    "decode",
    "reverse_tokens",
    "arith_tokens",
    "official_reverse_samples",
    "official_arith_samples",
    "official_samples",
    "default_length",
    "scored_positions",
    "score_predictions",
    "DigitScore",
    "ReverseDigits",
    "ArithDigits",
    "evaluate",
]

REVERSE_ALPHABET = "0123456789,#"
ARITH_ALPHABET = "0123456789+-="
TASKS = ("reverse", "arith")

# The official scripts pad every sample to 129 tokens (257 for the 1-120 digit reversal run):
# the model reads the first 128 and the last token is only a target.
_BLOCK = 128


def _alphabet(task: str) -> str:
    if task == "reverse":
        return REVERSE_ALPHABET
    if task == "arith":
        return ARITH_ALPHABET
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def encode(text: str, task: str) -> list[int]:
    """Token ids of a task string (``"12,21#"`` for reversal, ``"3+4=7"`` for arithmetic)."""
    alphabet = _alphabet(task)
    try:
        return [alphabet.index(ch) for ch in text]
    except ValueError:
        bad = next(ch for ch in text if ch not in alphabet)
        raise ValueError(f"text holds {bad!r}, which is not in the {task} alphabet {alphabet!r}") from None


def decode(tokens, task: str) -> str:
    """The task string of a sequence of token ids."""
    alphabet = _alphabet(task)
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    for t in ids:
        if not 0 <= int(t) < len(alphabet):
            raise ValueError(f"tokens holds {t}, expected ids in [0, {len(alphabet)}) for task {task}")
    return "".join(alphabet[int(t)] for t in ids)


def _pad(text: str, pad: str, length: int, what: str) -> str:
    if len(text) > length:
        raise ValueError(f"length={length} is too short for the {what} sample {text!r} ({len(text)} characters)")
    return text + pad * (length - len(text))


def reverse_tokens(number: int, length: int = _BLOCK + 1) -> list[int]:
    """``digits(number) + ',' + reversed digits + '#'``, padded with ``'#'`` to ``length``."""
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"number must be a non-negative int, got {number!r}")
    digits = str(number)
    return encode(_pad(digits + "," + digits[::-1] + "#", "#", length, "reverse"), "reverse")


def arith_tokens(left: int, op: str, right: int, length: int = _BLOCK + 1) -> list[int]:
    """``"{left}{op}{right}={result}"`` padded with ``'='`` to ``length`` (the result may be negative)."""
    if op not in ("+", "-"):
        raise ValueError(f"op must be '+' or '-', got {op!r}")
    for name, value in (("left", left), ("right", right)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    result = left + right if op == "+" else left - right
    return encode(_pad(f"{left}{op}{right}={result}", "=", length, "arith"), "arith")


def _randint_digits(rng: random.Random, digits: int) -> int:
    """The official ``get_randint``: uniform over ``digits``-digit numbers (0..9 for one digit)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _longest_sample(task: str, max_digits: int) -> int:
    """Characters of the longest sample, closing separator included: the closing separator must
    lie in the tokens the model reads, because its position ends the scored span."""
    _alphabet(task)
    _check_positive("max_digits", max_digits)
    # reverse: d + ',' + d + '#'; arith: m + op + d + '=' + (d + 1 result characters, sign or
    # carry) + '='
    return 2 * max_digits + 2 if task == "reverse" else 3 * max_digits + 3


def default_length(task: str, max_digits: int) -> int:
    """Padded sample length (model reads all but the last token): 129 when the longest sample
    fits, otherwise the next multiple of 128 plus one (257 for reversal of 120 digits)."""
    blocks = -(-_longest_sample(task, max_digits) // _BLOCK)
    return blocks * _BLOCK + 1


def _check_length(task: str, max_digits: int, length: int | None) -> int:
    longest = _longest_sample(task, max_digits)
    if length is None:
        return default_length(task, max_digits)
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    if length - 1 < longest:
        raise ValueError(
            f"length={length} cannot hold {task} samples of {max_digits} digits: the model reads "
            f"length - 1 tokens and the longest sample needs {longest}"
        )
    return length


def official_reverse_samples(
    max_digits: int, per_digit: int = 10, seed: int = 42, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official reversal evaluation draw: ``(tokens [N, length], digit_counts [N])``.

    ``random.Random(seed)``, then for ``d`` in ``1..max_digits``, ``per_digit`` numbers of ``d``
    digits in order — the draw of the official 251105/260123 run scripts (seed 42, 10 per count).
    """
    _check_positive("max_digits", max_digits)
    _check_positive("per_digit", per_digit)
    length = _check_length("reverse", max_digits, length)
    rng = random.Random(seed)
    rows, counts = [], []
    for digits in range(1, max_digits + 1):
        for _ in range(per_digit):
            rows.append(reverse_tokens(_randint_digits(rng, digits), length))
            counts.append(digits)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(counts, dtype=torch.long)


def _operand_digits(digits: int, shape: int) -> tuple[int, int]:
    """Operand digit counts of shape ``m`` in ``1..2d-1``: ``(m, d)`` then ``(d, 2d - m)``."""
    return (shape, digits) if shape <= digits else (digits, 2 * digits - shape)


def official_arith_samples(
    max_digits: int, rounds: int = 1, seed: int = 42, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official arithmetic evaluation draw: ``(tokens [N, length], digit_counts [N])``.

    ``random.Random(seed)``, then for ``d`` in ``1..max_digits`` and each round, for ``m`` in
    ``1..2d-1``: ``a = randint``, ``b = randint``, ``op = choice(['+', '-'])`` in that order (the
    official 251024 script runs one round). Round ``r`` of digit count ``d`` follows round
    ``r - 1`` of the same ``d``, so one round reproduces the official draw exactly.
    """
    _check_positive("max_digits", max_digits)
    _check_positive("rounds", rounds)
    length = _check_length("arith", max_digits, length)
    rng = random.Random(seed)
    rows, counts = [], []
    for digits in range(1, max_digits + 1):
        for _ in range(rounds):
            for shape in range(1, 2 * digits):
                left_digits, right_digits = _operand_digits(digits, shape)
                left = _randint_digits(rng, left_digits)
                right = _randint_digits(rng, right_digits)
                op = rng.choice(["+", "-"])
                rows.append(arith_tokens(left, op, right, length))
                counts.append(digits)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(counts, dtype=torch.long)


def official_samples(
    task: str, max_digits: int, samples: int | None = None, seed: int = 42, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official draw for ``task``; ``samples`` is per digit count for reversal (default 10)
    and the number of rounds of operand shapes for arithmetic (default 1)."""
    _alphabet(task)
    if task == "reverse":
        return official_reverse_samples(max_digits, 10 if samples is None else samples, seed, length)
    return official_arith_samples(max_digits, 1 if samples is None else samples, seed, length)


def _first_index(mask: torch.Tensor, what: str) -> torch.Tensor:
    """Index of the first True in each row; ValueError if a row has none."""
    found = mask.any(dim=1)
    if not bool(found.all()):
        row = int((~found).nonzero()[0, 0])
        raise ValueError(f"tokens row {row} has no {what} in the positions the model reads")
    return mask.int().argmax(dim=1)


def scored_positions(tokens: torch.Tensor, task: str) -> torch.Tensor:
    """Bool mask ``[N, L-1]`` of the prediction positions the protocol scores.

    ``tokens`` are full samples ``[N, L]``; the model reads ``tokens[:, :-1]`` and its prediction at
    position ``t`` is compared with ``tokens[:, t+1]``. Reversal: positions ``index(',') ..
    index('#') - 1`` (the first ``'#'`` is predicted too). Arithmetic: ``p1 .. p2 - 1`` with ``p1``
    the first ``'='`` and ``p2`` the position before the next ``'='`` (the result characters only).
    Positions are searched in the ``L - 1`` tokens the model reads, as the official scripts do.
    """
    alphabet = _alphabet(task)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be a [N, L] tensor with L >= 2, got {getattr(tokens, 'shape', type(tokens))}")
    read = tokens[:, :-1].long()
    positions = torch.arange(read.shape[1], device=read.device)
    if task == "reverse":
        start = _first_index(read == alphabet.index(","), "','")
        stop = _first_index(read == alphabet.index("#"), "'#'")
    else:
        is_equals = read == alphabet.index("=")
        start = _first_index(is_equals, "'='")
        after_start = is_equals & (positions[None, :] > start[:, None])
        stop = _first_index(after_start, "second '='") - 1
    if bool((stop < start).any()):
        row = int((stop < start).nonzero()[0, 0])
        raise ValueError(f"tokens row {row} is not a {task} sample (separator order is wrong)")
    return (positions[None, :] >= start[:, None]) & (positions[None, :] < stop[:, None])


@dataclass
class DigitScore:
    """Honest digit accuracy: totals and per digit count (``{d: (correct, scored)}``)."""

    correct: int
    scored: int
    per_digit: dict[int, tuple[int, int]]

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else float("nan")

    def __str__(self) -> str:
        return f"{self.correct}/{self.scored} = {100 * self.accuracy:.2f}%"


def score_predictions(
    tokens: torch.Tensor, predictions: torch.Tensor, task: str, digit_counts: torch.Tensor | None = None
) -> DigitScore:
    """Score argmax ``predictions [N, L-1]`` (on ``tokens[:, :-1]``) against ``tokens [N, L]``."""
    if not isinstance(predictions, torch.Tensor) or predictions.dim() != 2:
        raise ValueError(f"predictions must be a [N, L-1] tensor, got {getattr(predictions, 'shape', type(predictions))}")
    if tokens.dim() != 2 or predictions.shape != (tokens.shape[0], tokens.shape[1] - 1):
        raise ValueError(
            f"predictions must have shape [N, L-1] = {[tokens.shape[0], tokens.shape[1] - 1]} for tokens "
            f"{list(tokens.shape)}, got {list(predictions.shape)}"
        )
    if digit_counts is not None and (digit_counts.dim() != 1 or digit_counts.shape[0] != tokens.shape[0]):
        raise ValueError(f"digit_counts must be a [N] tensor with N = {tokens.shape[0]}, got {list(digit_counts.shape)}")
    mask = scored_positions(tokens, task)
    hits = (predictions.long().to(tokens.device) == tokens[:, 1:].long()) & mask
    correct_per_row = hits.sum(dim=1)
    scored_per_row = mask.sum(dim=1)
    per_digit: dict[int, tuple[int, int]] = {}
    if digit_counts is not None:
        for digits in sorted(set(digit_counts.tolist())):
            rows = digit_counts == digits
            per_digit[int(digits)] = (int(correct_per_row[rows].sum()), int(scored_per_row[rows].sum()))
    return DigitScore(int(correct_per_row.sum()), int(scored_per_row.sum()), per_digit)


# --------------------------------------------------------------------------------------------
# training batch sources


def _random_numbers(digit_counts: torch.Tensor, width: int, generator: torch.Generator) -> torch.Tensor:
    """Digits ``[B, width]`` (most significant first, right-aligned, zero-filled) of numbers drawn
    uniformly among ``digit_counts[b]``-digit numbers.

    A leading digit uniform in 1..9 followed by uniform digits is uniform over the d-digit
    numbers; drawing digit by digit keeps 120-digit numbers out of int64 arithmetic.
    """
    batch = digit_counts.shape[0]
    digits = torch.randint(0, 10, (batch, width), generator=generator)
    leading = torch.randint(1, 10, (batch,), generator=generator)
    column = torch.arange(width)
    first = width - digit_counts  # column of the leading digit
    multi = digit_counts > 1
    rows = torch.arange(batch)
    digits[rows[multi], first[multi]] = leading[multi]
    digits[column[None, :] < first[:, None]] = 0
    return digits


def _digits_to_int(row: torch.Tensor, count: int) -> int:
    return int("".join(str(d) for d in row[row.shape[0] - count :].tolist()))


class _DigitSource(ABC):
    """Shared part of the digit batch sources. ``seq_len`` (tokens the model reads) defaults to
    the official length for ``max_digits`` (128, or 256 for reversal beyond 63 digits);
    ``score_all`` puts every next token in the targets instead of the protocol's positions."""

    task: str
    vocab_size: int

    def __init__(self, max_digits: int, seq_len: int | None = None, score_all: bool = False) -> None:
        _check_positive("max_digits", max_digits)
        if seq_len is None:
            seq_len = default_length(self.task, max_digits) - 1
        _check_positive("seq_len", seq_len)
        _check_length(self.task, max_digits, seq_len + 1)
        self.max_digits = max_digits
        self.seq_len = seq_len
        self.score_all = bool(score_all)

    @abstractmethod
    def _rows(self, batch_size: int, generator: torch.Generator) -> list[list[int]] | torch.Tensor:
        """``batch_size`` full samples of ``seq_len + 1`` token ids (rows of ints or an int64
        tensor ``[B, seq_len + 1]``), drawn from ``generator``."""

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs [B, seq_len]``, ``targets [B, seq_len]`` (next tokens; ``-100`` outside the
        protocol's scored positions unless ``score_all``). All randomness from ``generator``."""
        _check_positive("batch_size", batch_size)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        rows = self._rows(batch_size, generator)
        tokens = rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.long)
        inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
        if not self.score_all:
            targets[~scored_positions(tokens, self.task)] = -100
        return inputs, targets


class ReverseDigits(_DigitSource):
    """Reversal training data: digit count uniform in ``1..max_digits``, the number uniform among
    numbers of that many digits (0..9 for one digit), padded with ``'#'`` to ``seq_len + 1``."""

    task = "reverse"
    vocab_size = len(REVERSE_ALPHABET)

    def _rows(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        # Built with index arithmetic instead of one Python string per row: at batch 256 the
        # string path took ~12 ms per batch, a fifth of an H100 training step of the 40K model.
        # Same draws and same tokens as reverse_tokens() (tests/data/test_digits.py checks it).
        counts = torch.randint(1, self.max_digits + 1, (batch_size,), generator=generator)
        numbers = _random_numbers(counts, self.max_digits, generator)
        width, length = self.max_digits, self.seq_len + 1
        position = torch.arange(length)[None, :]
        digits = counts[:, None]
        # digits(n) at 0..d-1 read numbers[width-d+p]; the reversed digits at d+1..2d read
        # numbers[width+d-p]; clamping keeps the gathers in range where the mask discards them.
        forward = numbers.gather(1, (width - digits + position).clamp(0, width - 1))
        backward = numbers.gather(1, (width + digits - position).clamp(0, width - 1))
        tokens = torch.full((batch_size, length), REVERSE_ALPHABET.index("#"), dtype=torch.long)
        tokens = torch.where(position < digits, forward, tokens)
        tokens = torch.where(position == digits, REVERSE_ALPHABET.index(","), tokens)
        return torch.where((position > digits) & (position <= 2 * digits), backward, tokens)


class ArithDigits(_DigitSource):
    """Arithmetic training data: digit count ``d`` uniform in ``1..max_digits``, operand shape
    ``m`` uniform in ``1..2d-1`` (operand digit counts as the official sampler), operands uniform
    among numbers of their digit counts, operator uniform over ``+``/``-``."""

    task = "arith"
    vocab_size = len(ARITH_ALPHABET)

    def _rows(self, batch_size: int, generator: torch.Generator) -> list[list[int]]:
        counts = torch.randint(1, self.max_digits + 1, (batch_size,), generator=generator)
        # shape = 1 + floor(u * (2d - 1)) is uniform in 1..2d-1 with one draw for the whole batch.
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        shapes = 1 + (uniform * (2 * counts - 1)).long().clamp(max=2 * counts - 2)
        operand_counts = [_operand_digits(int(d), int(m)) for d, m in zip(counts, shapes)]
        left_counts = torch.tensor([pair[0] for pair in operand_counts], dtype=torch.long)
        right_counts = torch.tensor([pair[1] for pair in operand_counts], dtype=torch.long)
        lefts = _random_numbers(left_counts, self.max_digits, generator)
        rights = _random_numbers(right_counts, self.max_digits, generator)
        subtract = torch.randint(0, 2, (batch_size,), generator=generator).bool()
        return [
            arith_tokens(
                _digits_to_int(lefts[row], int(left_counts[row])),
                "-" if bool(subtract[row]) else "+",
                _digits_to_int(rights[row], int(right_counts[row])),
                self.seq_len + 1,
            )
            for row in range(batch_size)
        ]


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model,
    tokens: torch.Tensor,
    task: str,
    digit_counts: torch.Tensor | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[DigitScore, torch.Tensor]:
    """Run ``model`` (``tokens [B, T] -> logits [B, T, V]``) on ``tokens[:, :-1]`` in batches and
    score its argmax by the protocol. Returns ``(score, predictions [N, L-1])``."""
    _alphabet(task)
    _check_positive("batch_size", batch_size)
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    predictions = []
    starts = range(0, tokens.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"eval {task}", unit="batch", leave=False)
    for start in starts:
        chunk = tokens[start : start + batch_size, :-1].to(device)
        predictions.append(model(chunk).argmax(dim=-1).cpu())
    predicted = torch.cat(predictions) if predictions else tokens.new_zeros(0, tokens.shape[1] - 1)
    return score_predictions(tokens, predicted, task, digit_counts), predicted

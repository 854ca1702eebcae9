"""The digit tasks: official samplers, the honest scoring protocol, training batch sources."""

from __future__ import annotations

import pytest
import torch

from heron.data import digits
from heron.data.digits import (
    ArithDigits,
    ReverseDigits,
    arith_tokens,
    decode,
    default_length,
    encode,
    evaluate,
    official_arith_samples,
    official_reverse_samples,
    reverse_tokens,
    score_predictions,
    scored_positions,
)


# ---------------------------------------------------------------------------------------------
# against the golden dev sets (official sampler with seed 1234, official model predictions)


@pytest.mark.parametrize(
    "name, task, make",
    [
        ("golden_reverse60_dev", "reverse", lambda: official_reverse_samples(60, per_digit=20, seed=1234)),
        ("golden_arith20_dev", "arith", lambda: official_arith_samples(20, rounds=1, seed=1234)),
    ],
)
def test_sampler_and_protocol_reproduce_golden(shared, name, task, make):
    golden = torch.load(shared / "golden" / f"{name}.pt", weights_only=True)
    tokens, counts = make()
    assert torch.equal(tokens, golden["src"].long())
    assert torch.equal(counts, golden["digits"])
    # scoring the official predictions by our protocol gives the official (correct, scored)
    score = score_predictions(tokens, golden["pred"].long(), task, counts)
    assert (score.correct, score.scored) == tuple(golden["digit_acc"])
    assert sum(c for c, _ in score.per_digit.values()) == score.correct
    assert sorted(score.per_digit) == list(range(1, counts.max().item() + 1))


def test_official_draw_sizes_match_published_counts():
    # spec §7: 18900 scored digits for reversal 1-60, 73800 for 1-120, 5635 for arithmetic 1-20
    for task, max_digits, scored in (("reverse", 60, 18900), ("reverse", 120, 73800), ("arith", 20, 5635)):
        tokens, counts = digits.official_samples(task, max_digits)
        perfect = tokens[:, 1:]
        assert score_predictions(tokens, perfect, task, counts).scored == scored
    tokens, _ = official_reverse_samples(120)
    assert tokens.shape == (1200, 257)


def test_official_sampler_uses_private_rng():
    import random

    random.seed(7)
    before = random.random()
    random.seed(7)
    official_reverse_samples(5)
    official_arith_samples(5)
    assert random.random() == before  # the global RNG was not consumed
    a, _ = official_reverse_samples(5, seed=3)
    b, _ = official_reverse_samples(5, seed=3)
    c, _ = official_reverse_samples(5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_arith_rounds_extend_per_digit_count():
    one, counts_one = official_arith_samples(4, rounds=1)
    two, counts_two = official_arith_samples(4, rounds=2)
    assert two.shape[0] == 2 * one.shape[0]
    assert torch.equal(one[:1], two[:1])  # d = 1 has one shape: its first round is drawn first
    assert counts_two.tolist() == sorted(counts_two.tolist())


# ---------------------------------------------------------------------------------------------
# sample construction and scored positions by hand


def test_samples_by_hand():
    assert decode(reverse_tokens(120, 10), "reverse") == "120,021###"
    assert decode(arith_tokens(3, "-", 14, 10), "arith") == "3-14=-11=="
    assert decode(arith_tokens(99, "+", 1, 9), "arith") == "99+1=100="
    assert encode("0,#", "reverse") == [0, 10, 11]
    assert encode("+-=", "arith") == [10, 11, 12]


def test_scored_positions_by_hand():
    tokens = torch.tensor([reverse_tokens(12, 8)])  # "12,21###": predict '2','1','#' at 2, 3, 4
    assert scored_positions(tokens, "reverse")[0].nonzero().flatten().tolist() == [2, 3, 4]
    tokens = torch.tensor([arith_tokens(3, "-", 14, 11)])  # "3-14=-11===": result '-','1','1'
    assert scored_positions(tokens, "arith")[0].nonzero().flatten().tolist() == [4, 5, 6]
    tokens = torch.tensor([arith_tokens(3, "+", 4, 7)])  # "3+4=7==": closing '=' not scored
    assert scored_positions(tokens, "arith")[0].nonzero().flatten().tolist() == [3]


def test_score_counts_only_scored_positions():
    tokens, counts = official_reverse_samples(6, per_digit=3)
    perfect = tokens[:, 1:].clone()
    base = score_predictions(tokens, perfect, "reverse", counts)
    assert base.correct == base.scored == sum(3 * (d + 1) for d in range(1, 7))
    mask = scored_positions(tokens, "reverse")
    wrong_inside = perfect.clone()
    row, col = mask.nonzero()[5].tolist()
    wrong_inside[row, col] = (wrong_inside[row, col] + 1) % 12
    assert score_predictions(tokens, wrong_inside, "reverse").correct == base.correct - 1
    wrong_outside = perfect.clone()
    row, col = (~mask).nonzero()[5].tolist()
    wrong_outside[row, col] = (wrong_outside[row, col] + 1) % 12
    assert score_predictions(tokens, wrong_outside, "reverse").correct == base.correct
    assert f"{base}" == f"{base.correct}/{base.scored} = 100.00%"


def test_default_length():
    assert default_length("reverse", 60) == 129
    assert default_length("reverse", 63) == 129
    assert default_length("reverse", 64) == 257
    assert default_length("reverse", 120) == 257
    assert default_length("arith", 20) == 129
    assert default_length("arith", 42) == 257


def test_bad_input_raises():
    with pytest.raises(ValueError, match="max_digits"):
        official_reverse_samples(0)
    with pytest.raises(ValueError, match="task must be one of"):
        digits.official_samples("copy", 3)
    with pytest.raises(ValueError, match="number"):
        reverse_tokens(-1)
    with pytest.raises(ValueError, match="op"):
        arith_tokens(1, "*", 2)
    with pytest.raises(ValueError, match="length"):
        official_reverse_samples(70, length=129)
    with pytest.raises(ValueError, match="length"):
        reverse_tokens(12345, length=5)
    with pytest.raises(ValueError, match="alphabet"):
        encode("1+2", "reverse")
    with pytest.raises(ValueError, match="no ','"):
        scored_positions(torch.full((1, 10), 3), "reverse")
    with pytest.raises(ValueError, match="second '='"):
        scored_positions(torch.tensor([encode("1+2=3", "arith")]), "arith")
    tokens, _ = official_reverse_samples(2)
    with pytest.raises(ValueError, match="predictions"):
        score_predictions(tokens, tokens, "reverse")
    with pytest.raises(ValueError, match="max_digits"):
        ReverseDigits(0)
    with pytest.raises(ValueError, match="length"):
        ReverseDigits(64, seq_len=128)
    with pytest.raises(TypeError, match="generator"):
        ReverseDigits(3).batch(2, 42)


# ---------------------------------------------------------------------------------------------
# training batch sources


@pytest.mark.parametrize("source", [ReverseDigits(60), ReverseDigits(120), ArithDigits(20)])
def test_batch_source_contract(source):
    generator = torch.Generator().manual_seed(5)
    inputs, targets = source.batch(64, generator)
    assert inputs.shape == targets.shape == (64, source.seq_len)
    assert inputs.dtype == targets.dtype == torch.long
    assert int(inputs.max()) < source.vocab_size and int(inputs.min()) >= 0
    # targets are the next tokens at the protocol's scored positions, -100 elsewhere
    mask = targets != -100
    assert not bool(mask[:, -1].any())  # the scored span ends inside the tokens the model reads
    assert torch.equal(targets[:, :-1][mask[:, :-1]], inputs[:, 1:][mask[:, :-1]])
    for row in range(64):
        text = decode(inputs[row], source.task)
        if source.task == "reverse":
            number = text.split(",")[0]
            assert text.startswith(number + "," + number[::-1] + "#")
            assert len(number) == 1 or number[0] != "0"
            answer = number[::-1] + "#"
        else:
            left_op_right, rest = text.split("=", 1)
            op = "+" if "+" in left_op_right else "-"
            left, right = left_op_right.split(op)
            result = rest.split("=")[0]
            assert int(result) == (int(left) + int(right) if op == "+" else int(left) - int(right))
            assert all(len(operand) == 1 or operand[0] != "0" for operand in (left, right))
            assert max(len(left), len(right)) <= source.max_digits
            answer = result
        assert decode(targets[row][targets[row] != -100], source.task) == answer
    # the same generator state gives the same batch; the state advances
    again = torch.Generator().manual_seed(5)
    assert torch.equal(source.batch(64, again)[0], inputs)
    assert not torch.equal(source.batch(64, again)[0], inputs)


def test_batch_source_digit_counts_cover_range():
    source = ReverseDigits(8)
    inputs, _ = source.batch(2000, torch.Generator().manual_seed(0))
    lengths = (inputs == 10).int().argmax(dim=1)
    histogram = torch.bincount(lengths, minlength=9)[1:]
    assert histogram.min() > 150  # uniform over 1..8: 250 expected each
    one_digit = inputs[lengths == 1, 0]
    assert set(one_digit.tolist()) == set(range(10))
    assert ReverseDigits(5, score_all=True).batch(3, torch.Generator())[1].min() >= 0
    assert (ReverseDigits(60).seq_len, ReverseDigits(120).seq_len, ArithDigits(20).seq_len) == (128, 256, 128)


def test_evaluate_batches_and_scores():
    tokens, counts = official_reverse_samples(10, per_digit=4)
    answers = {tuple(row[:-1].tolist()): row[1:] for row in tokens}

    class ReverseOracle(torch.nn.Module):
        """Knows each sample's next tokens, except that it always gets position 0 wrong."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch):
            nxt = torch.stack([answers[tuple(row.tolist())] for row in batch])
            nxt[:, 0] = (nxt[:, 0] + 1) % 12
            return torch.nn.functional.one_hot(nxt, 12).float() * self.scale

    score, predicted = evaluate(ReverseOracle(), tokens, "reverse", counts, batch_size=7)
    assert predicted.shape == (tokens.shape[0], tokens.shape[1] - 1)
    assert score.correct == score.scored  # position 0 is never scored for reversal
    assert sorted(score.per_digit) == list(range(1, 11))


@pytest.mark.parametrize("max_digits", [1, 7, 60, 120])
def test_reverse_rows_match_reverse_tokens(max_digits):
    """The vectorised sampler builds exactly reverse_tokens() of the numbers it draws."""
    from heron.data.digits import _random_numbers

    source = ReverseDigits(max_digits)
    rows = source._rows(300, torch.Generator().manual_seed(11))
    replay = torch.Generator().manual_seed(11)
    counts = torch.randint(1, max_digits + 1, (300,), generator=replay)
    numbers = _random_numbers(counts, max_digits, replay)
    for row in range(300):
        digits = "".join(str(d) for d in numbers[row, max_digits - int(counts[row]) :].tolist())
        assert rows[row].tolist() == reverse_tokens(int(digits), source.seq_len + 1)

"""Parity with the official task models: golden dev sets of the official code (H100) and the
`heron eval` protocol figures of spec/RWKV8.md §7."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from heron.data import digits
from heron.models.loading import load

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("heron.layers.rosa") is None, reason="heron.layers.rosa (ROSAQKV) not built yet"
)

GOLDEN = [
    ("golden_reverse60_dev", "251105_reverse_L2", "reverse"),
    ("golden_arith20_dev", "251024_rosaQKV_L2_digit20", "arith"),
]


def _relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("golden_name, checkpoint, task", GOLDEN)
def test_golden_dev_set(shared, golden_name, checkpoint, task):
    golden = torch.load(shared / "golden" / f"{golden_name}.pt", weights_only=True)
    model = load(shared / "checkpoints" / f"{checkpoint}.pth").eval()
    tokens = golden["src"].long()
    score, predicted = digits.evaluate(model, tokens, task, golden["digits"], batch_size=200)
    agreement = (predicted == golden["pred"].long()).double().mean().item()
    assert agreement >= 0.9995, f"argmax agrees with the official model at {agreement:.4%} of positions"
    with torch.no_grad():
        logits = model(tokens[:64, :-1])
    assert _relative_l2(logits, golden["logits_first64"]) < 1e-4
    correct, scored = golden["digit_acc"]
    assert score.scored == scored
    assert abs(score.accuracy - correct / scored) * 100 <= 0.05


def test_eval_command_reverse60(shared, capsys):
    """`heron eval reverse --checkpoint 251105_reverse_L2.pth --digits 60` prints 99.62% (its time, 26-40 s on
    2 cores against the 2-minute target, is recorded in docs/benchmarks.md, not asserted here)."""
    from heron.cli import main

    code = main(["eval", "reverse", "--checkpoint", str(shared / "checkpoints" / "251105_reverse_L2.pth"),
                 "--digits", "60", "--verbose"])
    out = capsys.readouterr().out
    assert code == 0
    match = re.search(r"digit accuracy (\d+)/(\d+) = ([\d.]+)%", out)
    assert match, out
    correct, scored = int(match.group(1)), int(match.group(2))
    assert scored == 18900
    assert abs(100 * correct / scored - 99.62) <= 0.05
    assert match.group(3) == "99.62"
    assert out.count(" digits: ") == 60  # --verbose: one line per digit count


@pytest.mark.slow
@pytest.mark.parametrize(
    "checkpoint, task, max_digits, published",
    [
        ("260123_reverse_L2", "reverse", 120, (73183, 73800)),
        ("260123_reverse_L2_only_rwkv7", "reverse", 60, (18900, 18900)),
        ("251024_rosaQKV_L2_digit20", "arith", 20, (5482, 5635)),
    ],
)
def test_published_accuracies(shared, checkpoint, task, max_digits, published):
    """The honest figures of spec/RWKV8.md §7 (official code, official sampler, seed 42)."""
    model = load(shared / "checkpoints" / f"{checkpoint}.pth").eval()
    tokens, counts = digits.official_samples(task, max_digits)
    score, _ = digits.evaluate(model, tokens, task, counts)
    assert score.scored == published[1]
    assert abs(score.accuracy - published[0] / published[1]) * 100 <= 0.05


def test_eval_command_small(shared, capsys):
    """A quick end-to-end run of the command on arithmetic, 1-3 digits (9 samples)."""
    from heron.cli import main

    code = main(["eval", "arith", "--checkpoint", str(shared / "checkpoints" / "251024_rosaQKV_L2_digit20.pth"),
                 "--digits", "3", "--samples", "2", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"18 samples .*digit accuracy \d+/\d+ = [\d.]+%", out), out


def test_eval_command_rejects_wrong_vocabulary(shared, capsys):
    from heron.cli import main

    code = main(["eval", "arith", "--checkpoint", str(shared / "checkpoints" / "251105_reverse_L2.pth"),
                 "--digits", "2"])
    assert code == 2
    assert "vocabulary 12" in capsys.readouterr().err

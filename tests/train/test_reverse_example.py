"""The committed reversal model (examples/reverse) loads and scores what its README says."""

from pathlib import Path

import torch

import heron.models
from heron.data import digits

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reverse"


def test_reverse_example_holds_one_loadable_model_that_scores_its_figure():
    assert sorted(p.name for p in EXAMPLE.iterdir() if p.suffix in (".safetensors", ".pth", ".pt")) == [
        "model.safetensors"
    ]
    model = heron.models.load(EXAMPLE / "model.safetensors").eval()
    tokens, counts = digits.official_samples("reverse", 60)
    with torch.no_grad():
        predictions = model(tokens[:, :-1]).argmax(-1)
    score = digits.score_predictions(tokens, predictions, "reverse", counts)
    # README.md: 18797/18900 = 99.46% on the official draw, fp32 on the CPU
    assert abs(score.accuracy - 18797 / 18900) < 5e-4

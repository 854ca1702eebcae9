"""The committed arithmetic model (examples/arith) loads and scores what its README says, and its
config file is the recipe of that run."""

from pathlib import Path

import torch

import heron.models
from heron.data import digits
from heron.train.config import read_config_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "arith"


def test_arith_example_holds_one_loadable_model_that_scores_its_figure():
    assert sorted(p.name for p in EXAMPLE.iterdir() if p.suffix in (".safetensors", ".pth", ".pt")) == [
        "model.safetensors"
    ]
    model = heron.models.load(EXAMPLE / "model.safetensors").eval()
    assert sum(p.numel() for p in model.parameters()) == 568_077  # the official 251024 shape
    tokens, counts = digits.official_samples("arith", 20)
    with torch.no_grad():
        predictions = torch.cat([model(tokens[i:i + 512, :-1]).argmax(-1) for i in range(0, len(tokens), 512)])
    score = digits.score_predictions(tokens, predictions, "arith", counts)
    # README.md: 5367/5635 = 95.24% on the official draw, fp32
    assert abs(score.accuracy - 5367 / 5635) < 5e-4


def test_arith_config_is_the_recipe_of_the_committed_run():
    # tools/gpu_arith_session.sh scales evaluations and the curriculum to its step count: a tenth
    # and a fifth of the run; the committed run had 14,000 steps
    options = read_config_file(EXAMPLE / "config.toml")
    steps = options["steps"]
    assert steps == 14_000 and options["eval_every"] == steps // 10
    assert options["task_options"]["curriculum"] == [[0, 5], [steps // 10, 10], [steps // 5, 20]]

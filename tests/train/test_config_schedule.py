import json

import pytest

from heron.train.config import TrainConfig, merge_options, parse_assignment, read_config_file, trajectory_differences
from heron.train.schedule import learning_rate


def test_config_from_toml_and_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('task = "reverse"\nsteps = 50\nlr = 2e-3\n[model_config]\nn_embd = 32\n[task_options]\nmax_digits = 10\n')
    values = read_config_file(toml)
    assert values == {"task": "reverse", "steps": 50, "lr": 2e-3, "model_config": {"n_embd": 32},
                      "task_options": {"max_digits": 10}}
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps(values))
    assert read_config_file(as_json) == values
    config = TrainConfig.from_dict(values)
    assert config.steps == 50 and config.model_config == {"n_embd": 32}


@pytest.mark.parametrize("text, message", [
    ('steps = 5\nbogus = 1\n', "unknown option"),
    ('steps = [', "not valid TOML"),
])
def test_config_file_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config_file(path)


def test_config_file_wrong_suffix_and_missing(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3")
    with pytest.raises(ValueError, match=".toml or .json"):
        read_config_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_config_file(tmp_path / "nope.toml")


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a positive integer"),
    ("batch_size", 10, "divisible by grad_accum"),
    ("recipe", "adam", "recipe must be one of"),
    ("dtype", "fp8", "dtype must be one of"),
    ("lr", -1.0, "lr must be"),
    ("warmup", -1, "warmup must be a non-negative integer"),
])
def test_config_validation(field, value, message):
    values = {"task": "x", "steps": 10, "grad_accum": 4, "batch_size": 8, field: value}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


def test_merge_and_trajectory_differences():
    base = {"task": "t", "lr": 1e-3, "out": "a", "model_config": {"n_embd": 32, "n_layer": 2}}
    merged = merge_options(base, {"out": "b", "model_config": {"n_layer": 3}})
    assert merged["model_config"] == {"n_embd": 32, "n_layer": 3}
    changes = trajectory_differences(base, merged)
    assert changes == ["model_config.n_layer: 2 -> 3"]  # out is operational
    assert trajectory_differences(base, {**base, "lr": 2e-3}) == ["lr: 0.001 -> 0.002"]


def test_parse_assignment():
    assert parse_assignment("n_layer=2", "--model-config") == ("n_layer", 2)
    assert parse_assignment("rosa=qkv1", "--model-config") == ("rosa", "qkv1")
    assert parse_assignment("curriculum=[[0,5],[10,9]]", "--task-option") == ("curriculum", [[0, 5], [10, 9]])
    assert parse_assignment("rosa=null", "--model-config") == ("rosa", None)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignment("n_layer", "--model-config")


def test_schedule_cosine_and_warmup():
    kwargs = dict(steps=101, lr=1e-3, lr_final=1e-6)
    assert learning_rate(0, warmup=0, **kwargs) == pytest.approx(1e-3)
    assert learning_rate(100, warmup=0, **kwargs) == pytest.approx(1e-6)
    assert learning_rate(50, warmup=0, **kwargs) == pytest.approx(0.5 * (1e-3 + 1e-6))
    rates = [learning_rate(s, warmup=0, **kwargs) for s in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    warm = [learning_rate(s, warmup=10, **kwargs) for s in range(101)]
    assert warm[0] == pytest.approx(1e-4) and warm[9] == pytest.approx(1e-3)
    assert warm[10] == pytest.approx(1e-3) and warm[100] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(warm[:10], warm[1:10]))
    assert learning_rate(0, steps=1, lr=1e-3, lr_final=2e-4, warmup=0) == pytest.approx(2e-4)  # a 1-step run ends at lr_final
    with pytest.raises(ValueError, match="step must be in"):
        learning_rate(101, warmup=0, **kwargs)

"""The example recipes for `heron train abc`: valid configs, equal parameter counts."""

from __future__ import annotations

from pathlib import Path


from heron.train.config import TrainConfig, read_config_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "music"
ROSA_RECIPE = EXAMPLES / "config.toml"
RWKV7_RECIPE = EXAMPLES / "config_rwkv7.json"


def _config(path: Path) -> TrainConfig:
    return TrainConfig.from_dict(read_config_file(path))


def test_recipes_are_valid_and_train_the_same_way():
    rosa, rwkv7 = _config(ROSA_RECIPE), _config(RWKV7_RECIPE)
    assert rosa.task == rwkv7.task == "abc"
    assert rosa.model_config["rosa"] == "qkv1" and rwkv7.model_config["rosa"] is None
    assert rwkv7.model_config["deep_embed"] is False  # RWKV-7 channel-mix: no DeepEmbed either
    assert 0 < rosa.time_limit <= 10.0
    ignored = {"model_config", "out"}
    assert {k: v for k, v in rosa.to_dict().items() if k not in ignored} == \
        {k: v for k, v in rwkv7.to_dict().items() if k not in ignored}


def test_recipes_have_equal_parameter_counts():
    from heron.models.rwkv8 import RWKV8, RWKV8Config

    counts = []
    for path in (ROSA_RECIPE, RWKV7_RECIPE):
        model = RWKV8(RWKV8Config(vocab_size=256, **_config(path).model_config))
        counts.append(sum(parameter.numel() for parameter in model.parameters()))
    assert counts[0] == counts[1] == 4_929_280

"""A few steps of every registered task, through the real data modules and models."""

import dataclasses

import pytest
import torch

from heron.train.checkpoint import load_checkpoint
from heron.train.config import TrainConfig
from heron.train.tasks import Curriculum, get_task, task_names
from heron.train.trainer import train

TINY_LM = {"n_layer": 1, "n_embd": 32, "head_size": 16}
QUIET = dict(progress=False, tensorboard=False, device="cpu", log_every=1)


def _config(tmp_path, task, **overrides):
    return TrainConfig.from_dict({**get_task(task).defaults, "task": task, "out": str(tmp_path), **QUIET, **overrides})


def test_registry_lists_the_tasks():
    assert {"counting", "reverse", "arith", "text", "abc"} <= set(task_names())


@pytest.mark.parametrize("task, rosa", [("reverse", None), ("reverse", "qkv1"), ("arith", "qkv1")])
def test_digit_tasks_run_and_export_a_loadable_model(tmp_path, task, rosa):
    model_config = {"rosa": rosa} if task == "reverse" else {"rosa": rosa, "n_embd": 32, "dim_ffn": 64, "lora_rank_decay": 8,
                                                             "lora_rank_iclr": 8, "lora_rank_value": 8, "lora_rank_gate": 8}
    config = _config(tmp_path, task, steps=3, batch_size=8, eval_every=2, eval_samples=1, model_config=model_config,
                     task_options={"max_digits": 4, "seq_len": 16, "curriculum": [[0, 2], [2, 4]]})
    result = train(config)
    assert result.finished and len(result.losses) == 3
    assert 0.0 <= result.metrics["digit_accuracy"] <= 1.0
    from heron.models.loading import load

    setup = get_task(task).build(config)
    assert [setup.sources.at(step).max_digits for step in range(4)] == [2, 2, 4, 4]  # the curriculum
    # The exported file holds exactly the trained weights: same logits as the checkpoint's model.
    trained = setup.model
    trained.load_state_dict(load_checkpoint(result.checkpoint)["model"])
    tokens = torch.randint(0, trained.config.vocab_size, (2, 9))
    torch.testing.assert_close(load(result.model_file)(tokens), trained(tokens))


def test_reverse_default_model_is_the_official_shape():
    setup = get_task("reverse").build(TrainConfig(task="reverse", task_options={"max_digits": 3}))
    assert sum(p.numel() for p in setup.model.parameters()) == 39_564  # as checkpoint 251105_reverse_L2


def test_curriculum_is_a_function_of_the_step():
    stages = Curriculum([(0, "a"), (10, "b"), (25, "c")])
    assert [stages.at(s) for s in (0, 9, 10, 24, 25, 1000)] == ["a", "a", "b", "b", "c", "c"]
    with pytest.raises(ValueError, match="first stage at step 0"):
        Curriculum([(5, "a")])
    with pytest.raises(ValueError, match="increasing"):
        Curriculum([(0, "a"), (5, "b"), (5, "c")])


@pytest.mark.parametrize("options, message", [
    ({"curriculum": [[0, 70]]}, r"digit counts must be in 1..max_digits=60"),
    ({"curriculum": [[3, 10]]}, "must start at step 0"),
    ({"curriculum": "fast"}, "list of \\[first_step, max_digits\\] pairs"),
    ({"max_digit": 5}, r"has no option\(s\) \['max_digit'\]"),
])
def test_digit_task_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        get_task("reverse").build(TrainConfig(task="reverse", task_options=options, model_config={"rosa": None}))


def test_unknown_model_config_field():
    with pytest.raises(ValueError, match=r"--model-config: unknown field\(s\) \['layers'\]"):
        get_task("reverse").build(TrainConfig(task="reverse", model_config={"layers": 3}))


def test_text_task_on_a_file(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat. " * 200)
    config = _config(tmp_path / "run", "text", steps=3, batch_size=4, warmup=1, eval_samples=2,
                     model_config={**TINY_LM, "rosa": None},
                     task_options={"data": [str(data)], "tokenizer": "bytes", "seq_len": 32})
    result = train(config)
    assert result.finished and result.metrics["eval_loss"] > 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_text_task_trains_the_pure_rosa_lm(tmp_path):
    from heron.models.loading import load
    from heron.models.rosa_lm import ROSALM

    data = tmp_path / "corpus.txt"
    data.write_text("abcabcabd " * 200)
    config = _config(tmp_path / "run", "text", model="rosa_lm", steps=3, batch_size=4, warmup=1, eval_samples=2,
                     model_config={"n_layer": 1, "n_embd": 16, "bits": 4},
                     task_options={"data": [str(data)], "tokenizer": "bytes", "seq_len": 32})
    result = train(config)
    assert result.finished and result.metrics["eval_loss"] > 0
    model = load(tmp_path / "run" / "model.safetensors")
    assert isinstance(model, ROSALM) and model.config.bits == 4 and model.config.n_embd == 16


def test_language_model_variant_errors(tmp_path):
    with pytest.raises(ValueError, match="--model must be one of rwkv8, rosa_lm"):
        train(_config(tmp_path, "text", model="gpt2"))
    with pytest.raises(ValueError, match="ROSALMConfig has"):
        train(_config(tmp_path, "text", model="rosa_lm", model_config={"head_size": 16},
                      task_options={"tokenizer": "bytes", "seq_len": 32}))


def test_text_task_missing_data(tmp_path):
    config = _config(tmp_path, "text", task_options={"data": [str(tmp_path / "absent.txt")]})
    with pytest.raises(FileNotFoundError, match="data file\\(s\\) not found: .*absent.txt"):
        train(config)


def test_text_task_takes_a_binidx_prefix_and_refuses_repeated_files(tmp_path):
    from heron.data.text import write_binidx

    prefix = write_binidx(tmp_path / "corpus.v1", [list(range(1, 2000)) + [0]] * 3)
    setup = get_task("text").build(_config(tmp_path / "run", "text", task_options={"data": [str(prefix)], "seq_len": 32}))
    assert setup.sources.at(0).num_tokens > 0
    text_file = tmp_path / "a.txt"
    text_file.write_text("hello world " * 200)
    with pytest.raises(ValueError, match="given more than once: .*a.txt"):
        get_task("text").build(_config(tmp_path / "run2", "text", task_options={
            "data": [str(text_file), str(tmp_path / "." / "a.txt")], "tokenizer": "bytes", "seq_len": 32}))


def test_evaluation_options_are_checked_before_training(tmp_path):
    text_file = tmp_path / "a.txt"
    text_file.write_text("hello world " * 400)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="task option eval_batches: expected an int >= 1"):
            get_task("text").build(_config(tmp_path / "run", "text", task_options={
                "data": [str(text_file)], "tokenizer": "bytes", "seq_len": 32, "eval_batches": bad}))


def test_resume_refuses_changed_training_data(tmp_path):
    text_file = tmp_path / "a.txt"
    text_file.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    options = {"data": [str(text_file)], "tokenizer": "bytes", "seq_len": 32}
    small = {"n_layer": 1, "n_embd": 32, "head_size": 16}
    config = _config(tmp_path / "run", "text", steps=3, batch_size=2, time_limit=1e-9, model_config=small,
                     task_options=options)
    first = train(config)
    assert not first.finished
    text_file.write_text("the quick brown fox jumps over the lazy cat. " * 50)  # edited between the slices
    with pytest.raises(ValueError, match="the training data changed since checkpoint .*train: .* tokens"):
        train(dataclasses.replace(config, time_limit=0.0), resume=first.checkpoint)


def test_text_data_option_must_name_files(tmp_path):
    for bad, message in ((5, "task option data: expected a file path or a list of paths"),
                         ([str(tmp_path)], "data must be files .* not folders")):
        with pytest.raises(ValueError, match=message):
            get_task("text").build(_config(tmp_path / "run", "text", task_options={"data": bad, "seq_len": 32}))


def test_abc_task(tmp_path):
    pytest.importorskip("music21")
    config = _config(tmp_path, "abc", steps=2, batch_size=2, warmup=1, eval_samples=1,
                     model_config={**TINY_LM, "rosa": None}, task_options={"seq_len": 32})
    result = train(config)
    assert result.finished and result.metrics["eval_bits_per_token"] > 0
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("variant", ["emb", "1bit", "4bit"])
def test_counting_task(tmp_path, variant):
    config = _config(tmp_path, "counting", model=variant, steps=2, batch_size=4, eval_samples=8,
                     task_options={"seq_len": 16})
    result = train(config)
    assert result.finished and set(result.metrics) == {"eval_loss", "next_token_accuracy"}
    from heron.models.loading import load

    assert type(load(result.model_file)).__name__ == "CountingToy"


def test_counting_errors(tmp_path):
    with pytest.raises(ValueError, match="variant must be one of"):
        train(_config(tmp_path, "counting", model="9bit", steps=1))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_layer'\]"):
        train(_config(tmp_path, "counting", steps=1, model_config={"n_layer": 2}))
    with pytest.raises(ValueError, match="has no model variants"):
        train(_config(tmp_path, "reverse", model="1bit", steps=1))


def test_text_task_repeat_augmentation(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat. " * 200)
    options = {"data": [str(data)], "tokenizer": "bytes", "seq_len": 32, "repeat_prob": 0.5, "repeat_min": 4,
               "repeat_max": 12, "repeat_random": 1.0, "repeat_gap": 0}
    config = _config(tmp_path / "run", "text", steps=2, batch_size=4, warmup=1, eval_samples=2,
                     model_config={**TINY_LM, "rosa": None}, task_options=options)
    setup = get_task("text").build(config)
    source = setup.sources.at(0)
    assert source.repeats is not None and source.repeats.repeat_prob == 0.5 and source.repeats.repeat_gap == 0
    assert train(config).finished
    plain = get_task("text").build(_config(tmp_path / "plain", "text", model_config={**TINY_LM, "rosa": None},
                                           task_options={**options, "repeat_prob": 0.0}))
    assert plain.sources.at(0).repeats is None
    counted = get_task("text").build(_config(tmp_path / "counted", "text", model_config={**TINY_LM, "rosa": None},
                                             task_options={**options, "repeat_count": 2}))
    assert counted.sources.at(0).repeats.repeat_count == 2


def test_text_task_copy_metric_at_every_evaluation(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat. a dog ran. " * 200)
    config = _config(tmp_path / "run", "text", steps=2, batch_size=4, warmup=1, eval_samples=1, eval_every=1,
                     model_config={**TINY_LM, "rosa": "qkv4", "rosa_estimator": "value"},
                     task_options={"data": [str(data)], "tokenizer": "bytes", "seq_len": 32, "copy_trials": 3,
                                   "copy_pool": 10})
    result = train(config)
    assert result.finished
    assert 0.0 <= result.metrics["copy_token_accuracy"] <= 1.0
    assert result.metrics["copy_exact_share"] in (0.0, 1 / 3, 2 / 3, 1.0)
    plain = train(_config(tmp_path / "plain", "text", steps=1, batch_size=4, warmup=1, eval_samples=1,
                          model_config={**TINY_LM, "rosa": None},
                          task_options={"data": [str(data)], "tokenizer": "bytes", "seq_len": 32}))
    assert "copy_token_accuracy" not in plain.metrics  # off by default


@pytest.mark.parametrize("options, message", [
    ({"copy_trials": -1}, "copy_trials: expected an int >= 0"),
    ({"copy_seed": 1.5}, "copy_seed: expected an int >= 0"),
    ({"copy_trials": 2}, "copy_pool: count: the stream has only .* lower copy_pool"),
    ({"repeat_prob": 2}, "repeat_prob: expected a number in \\[0, 1\\]"),
    ({"repeat_prob": 0.5, "repeat_min": 40}, "repeat_min: 40 tokens do not fit twice"),
    ({"repeat_max": 4}, "repeat_max: expected an int >= repeat_min = 16"),
    ({"repeat_count": 0}, "repeat_count: expected an int >= 1"),
    ({"repeat_prob": 0.5, "repeat_min": 8, "repeat_count": 3}, "repeat_min: 8 tokens do not fit twice in each of "
                                                               "repeat_count = 3"),
    ({"repeat_length": 8}, r"has no option\(s\) \['repeat_length'\]"),
])
def test_text_task_repeat_option_errors(tmp_path, options, message):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat. " * 200)
    config = _config(tmp_path / "run", "text", model_config={**TINY_LM, "rosa": None},
                     task_options={"data": [str(data)], "tokenizer": "bytes", "seq_len": 32, **options})
    with pytest.raises(ValueError, match=message):
        get_task("text").build(config)

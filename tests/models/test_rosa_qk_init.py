"""The ``rosa_qk_init`` option (issue 7): the ROSA-QKV key projection starts as the query one.

Default ``"independent"`` leaves the official initial values untouched; ``"tied"`` copies
``q -> k`` and ``x_q -> x_k`` in every ROSA-QKV block, through construction and both init recipes,
and the field round-trips through our checkpoint format and ``heron train --model-config``.
"""

from __future__ import annotations

import pytest
import torch

from heron.layers.rosa import ROSAQKV
from heron.models import ROSALM, RWKV8, ROSALMConfig, RWKV8Config, load, save
from heron.models.init import init_lm_recipe, init_task_recipe


def _rosa_lm(qk_init=None, seed=0):
    torch.manual_seed(seed)
    extra = {} if qk_init is None else {"rosa_qk_init": qk_init}
    return ROSALM(ROSALMConfig(n_layer=2, n_embd=16, vocab_size=11, **extra))


def _rwkv8(qk_init=None, seed=0, rosa="qkv1"):
    torch.manual_seed(seed)
    extra = {} if qk_init is None else {"rosa_qk_init": qk_init}
    return RWKV8(RWKV8Config(n_layer=2, n_embd=32, head_size=16, vocab_size=11, rosa=rosa, deep_embed=False,
                             **extra))


def _rosa_blocks(model):
    return [module for module in model.modules() if isinstance(module, ROSAQKV)]


def _assert_tied(block):
    torch.testing.assert_close(block.k.weight, block.q.weight, rtol=0, atol=0)
    torch.testing.assert_close(block.k.bias, block.q.bias, rtol=0, atol=0)
    torch.testing.assert_close(block.x_k, block.x_q, rtol=0, atol=0)


def test_default_is_independent_and_unchanged():
    assert ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5).rosa_qk_init == "independent"
    assert RWKV8Config(n_layer=1, n_embd=32, head_size=16, vocab_size=5).rosa_qk_init == "independent"
    assert ROSAQKV(8).qk_init == "independent"
    # the default draws exactly what the model drew before the option existed (same seed, same values)
    plain, explicit = _rosa_lm(None), _rosa_lm("independent")
    for (name, a), (_, b) in zip(plain.state_dict().items(), explicit.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for block in _rosa_blocks(plain):
        assert not torch.equal(block.k.weight, block.q.weight)


@pytest.mark.parametrize("make", [_rosa_lm, _rwkv8])
def test_tied_makes_k_equal_q_and_changes_nothing_else(make):
    tied, independent = make("tied"), make("independent")
    blocks = _rosa_blocks(tied)
    assert len(blocks) == 2
    for block in blocks:
        _assert_tied(block)
    # no extra random draws: every parameter except the key path equals the independent model's
    independent_params = dict(independent.named_parameters())
    for name, parameter in tied.named_parameters():
        if ".rosa.k." not in name and not name.endswith(".rosa.x_k"):
            torch.testing.assert_close(parameter, independent_params[name], rtol=0, atol=0, msg=name)


def test_tied_survives_both_init_recipes():
    model = _rwkv8("tied")
    for recipe in (init_task_recipe, init_lm_recipe):
        with torch.no_grad():
            for block in _rosa_blocks(model):
                block.x_q.normal_()  # the recipes reset the token-shift mixes: the tie must follow
        recipe(model)
        for block in _rosa_blocks(model):
            _assert_tied(block)
    rosa_lm = _rosa_lm("tied")
    init_task_recipe(rosa_lm)
    for block in _rosa_blocks(rosa_lm):
        _assert_tied(block)


def test_tied_then_trains_k_and_q_separately():
    model = _rosa_lm("tied")
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1)).backward()
    block = _rosa_blocks(model)[0]
    assert block.k.weight.grad is not None and block.q.weight.grad is not None  # two parameters, not one


@pytest.mark.parametrize("make", [_rosa_lm, _rwkv8])
def test_field_round_trips_through_save_and_load(make, tmp_path):
    model = make("tied")
    path = save(model, tmp_path / "model.safetensors")
    again = load(path)
    assert again.config.rosa_qk_init == "tied"
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert load(save(make(), tmp_path / "plain.safetensors")).config.rosa_qk_init == "independent"


@pytest.mark.parametrize("bad", ["tie", "Tied", None, 1, True])
def test_bad_values_name_the_field(bad):
    with pytest.raises(ValueError, match=r"ROSALMConfig\.rosa_qk_init must be one of 'independent', 'tied'"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5, rosa_qk_init=bad)
    with pytest.raises(ValueError, match=r"RWKV8Config\.rosa_qk_init must be one of 'independent', 'tied'"):
        RWKV8Config(n_layer=1, n_embd=32, head_size=16, vocab_size=5, rosa="qkv1", rosa_qk_init=bad)
    with pytest.raises(ValueError, match=r"qk_init must be one of 'independent', 'tied'"):
        ROSAQKV(8, qk_init=bad)


@pytest.mark.parametrize("variant", ["rosa_lm", "rwkv8"])
def test_heron_train_accepts_the_field(variant, tmp_path):
    from heron.train.config import TrainConfig, parse_assignment
    from heron.train.tasks import get_task
    from heron.train.trainer import train

    assert parse_assignment("rosa_qk_init=tied", "--model-config") == ("rosa_qk_init", "tied")

    data = tmp_path / "corpus.txt"
    data.write_text("abcabcabd " * 200)
    model_config = {"n_layer": 1, "n_embd": 16, "rosa_qk_init": "tied"}
    if variant == "rwkv8":
        model_config.update(n_embd=32, head_size=16, rosa="qkv1", deep_embed=False)
    config = TrainConfig.from_dict({
        **get_task("text").defaults, "task": "text", "out": str(tmp_path / "run"), "progress": False,
        "tensorboard": False, "device": "cpu", "log_every": 1, "model": variant, "steps": 2, "batch_size": 2,
        "warmup": 1, "eval_samples": 1, "model_config": model_config,
        "task_options": {"data": [str(data)], "tokenizer": "bytes", "seq_len": 16}})
    result = train(config)
    assert result.finished
    assert load(tmp_path / "run" / "model.safetensors").config.rosa_qk_init == "tied"

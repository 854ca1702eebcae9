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
    with pytest.raises(ValueError, match=r"ROSALMConfig\.rosa_qk_init must be one of 'independent', 'tied', 'shared'"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5, rosa_qk_init=bad)
    with pytest.raises(ValueError, match=r"RWKV8Config\.rosa_qk_init must be one of 'independent', 'tied', 'shared'"):
        RWKV8Config(n_layer=1, n_embd=32, head_size=16, vocab_size=5, rosa="qkv1", rosa_qk_init=bad)
    with pytest.raises(ValueError, match=r"qk_init must be one of 'independent', 'tied', 'shared'"):
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


# ------------------------------------------------------------------------------------------
# "shared": no key path, the keys are the queries


@pytest.mark.parametrize("make", [_rosa_lm, _rwkv8])
def test_shared_has_no_key_path_and_draws_like_tied(make):
    shared, tied = make("shared"), make("tied")
    for block in _rosa_blocks(shared):
        assert block.k is None and block.x_k is None
    names = set(shared.state_dict())
    assert not any(".rosa.k." in name or name.endswith(".rosa.x_k") for name in names)
    tied_state = tied.state_dict()
    for name, value in shared.state_dict().items():  # every other parameter as "tied" draws it
        torch.testing.assert_close(value, tied_state[name], rtol=0, atol=0, msg=name)
    for recipe in (init_task_recipe, init_lm_recipe) if isinstance(shared, RWKV8) else (init_task_recipe,):
        recipe(shared)  # the recipes skip the missing key path


@pytest.mark.parametrize("bits", [1, 4])
def test_shared_equals_tied_under_the_value_estimator_through_training(bits):
    # The value estimator gives q and k no gradient, so a tied block keeps k == q through AdamW
    # (equal zero gradients, equal decay): the shared model is the same model, step by step.
    def build(qk_init):
        torch.manual_seed(3)
        model = RWKV8(RWKV8Config(n_layer=2, n_embd=32, head_size=16, vocab_size=11, rosa=f"qkv{bits}",
                                  deep_embed=False, rosa_qk_init=qk_init, rosa_estimator="value", rosa_tau=0.1))
        init_lm_recipe(model)
        with torch.no_grad():  # give the ROSA outputs weight, so their gradients matter
            for block in _rosa_blocks(model):
                block.o.weight.normal_(std=0.1)
        return model

    tied, shared = build("tied"), build("shared")
    shared.load_state_dict({name: value for name, value in tied.state_dict().items()
                            if ".rosa.k." not in name and not name.endswith(".rosa.x_k")})
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (tied, shared)]
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        tokens = torch.randint(0, 11, (2, 24), generator=generator)
        losses = []
        for model, optimizer in zip((tied, shared), optimizers):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-6)
    for block in _rosa_blocks(tied):
        _assert_tied(block)  # still tied after training
    shared_state = shared.state_dict()
    for name, value in tied.state_dict().items():
        if name in shared_state:
            torch.testing.assert_close(shared_state[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_shared_with_the_flip_estimator_sums_the_query_and_key_gradients():
    torch.manual_seed(5)
    tied = ROSAQKV(8, bits=1, estimator="flip", tau=0.1, qk_init="tied")
    torch.manual_seed(5)
    shared = ROSAQKV(8, bits=1, estimator="flip", tau=0.1, qk_init="shared")
    x = torch.randn(2, 14, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    tied, shared = tied.double(), shared.double()
    grad_out = torch.randn(2, 14, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out_tied, out_shared = tied(x), shared(x)
    torch.testing.assert_close(out_shared, out_tied, rtol=0, atol=0)
    (out_tied * grad_out).sum().backward()
    (out_shared * grad_out).sum().backward()
    torch.testing.assert_close(shared.q.weight.grad, tied.q.weight.grad + tied.k.weight.grad)
    torch.testing.assert_close(shared.x_q.grad, tied.x_q.grad + tied.x_k.grad)


@pytest.mark.parametrize("make", [_rosa_lm, _rwkv8])
def test_shared_round_trips_and_rnn_mode_matches(make, tmp_path):
    model = make("shared").double()
    again = load(save(model, tmp_path / "model.safetensors"))
    assert again.config.rosa_qk_init == "shared"
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(8))
    again = again.double()
    with torch.no_grad():
        full = model(tokens)
        torch.testing.assert_close(again(tokens), full, rtol=0, atol=0)
        state, steps = None, []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-9, atol=1e-9)

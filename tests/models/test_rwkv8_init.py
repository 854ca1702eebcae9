"""Initialisation recipes and optimiser settings (spec/RWKV8.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from heron.models.init import (
    LM_BETAS,
    LM_EPS,
    init_lm_recipe,
    init_task_recipe,
    lm_learning_rate,
    lm_param_groups,
    make_lm_optimizer,
    make_task_optimizer,
    task_learning_rate,
)
from heron.models.rwkv8 import RWKV8

from .test_rwkv8 import small_config


def gram(weight, columns: bool):
    w = weight.detach().double()
    return w.T @ w if columns else w @ w.T


def eye(n):
    return torch.eye(n, dtype=torch.float64)


def test_lm_recipe_values():
    config = small_config(n_layer=3, n_embd=32, vocab_size=50, dim_ffn=64)
    torch.manual_seed(0)
    model = init_lm_recipe(RWKV8(config))
    assert model.emb.weight.abs().max() <= 1e-4 and model.emb.weight.abs().max() > 0
    head_gain = 0.5 * math.sqrt(50 / 32)
    torch.testing.assert_close(gram(model.head.weight, columns=True), head_gain**2 * eye(32), rtol=0, atol=1e-5)
    for layer, block in enumerate(model.blocks):
        att, ffn = block.att, block.ffn
        assert torch.all(att.output.weight == 0) and torch.all(ffn.value.weight == 0)
        torch.testing.assert_close(gram(att.key.weight, True), 0.01 * eye(32), rtol=0, atol=1e-6)
        torch.testing.assert_close(gram(att.receptance.weight, True), eye(32), rtol=0, atol=1e-5)
        torch.testing.assert_close(gram(att.value.weight, True), eye(32), rtol=0, atol=1e-5)
        torch.testing.assert_close(gram(ffn.key.weight, True), eye(32), rtol=0, atol=1e-5)  # [64, 32]: gain 1
        assert torch.allclose(att.ln_x.weight, torch.full((32,), ((layer + 1) / 3) ** 0.7))
        # LoRA factors and vectors keep the module values
        assert torch.all(att.w1 == 0) and torch.all(att.a1 == 0) and torch.all(att.g1 == 0)
        torch.testing.assert_close(gram(att.g2, False), 0.01 * eye(att.g2.shape[0]), rtol=0, atol=1e-6)
        assert torch.all(att.k_a == 1.02)
        i = 7
        expected_x_k = 1 - (i / 32) ** ((1 - layer / 3) ** 4)
        assert math.isclose(ffn.x_k[0, 0, i].item(), expected_x_k, rel_tol=1e-6)
        assert torch.all(ffn.enn.weight == 1)


def test_task_recipe_redraws_module_values_and_is_seeded():
    config = small_config(deep_embed=False, ln0=False, head_bias=True)
    torch.manual_seed(1)
    first = init_task_recipe(RWKV8(config))
    with torch.no_grad():
        for param in first.parameters():
            param.add_(1.0)
    torch.manual_seed(2)
    init_task_recipe(first)
    second = RWKV8(config)
    torch.manual_seed(2)
    init_task_recipe(second)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    ffn = second.blocks[0].ffn
    assert torch.all(ffn.x_k == 0) and torch.all(ffn.value.weight == 0)
    torch.testing.assert_close(gram(ffn.key.weight, True), 4 * eye(32), rtol=0, atol=1e-5)
    # the time-mix matrices are the module values, not torch's Linear defaults
    assert torch.all(second.blocks[1].att.output.weight == 0)
    assert second.blocks[1].att.key.weight.abs().max() <= 0.05 / math.sqrt(32)


def test_task_recipe_resets_rosa_blocks():
    model = RWKV8(small_config(rosa="qkv1"))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    init_task_recipe(model)
    rosa = model.blocks[1].rosa
    assert torch.all(rosa.x_q == 0) and torch.all(rosa.x_k == 0) and torch.all(rosa.x_v == 0)
    assert torch.all(rosa.rosa_qkv.emb == 1)
    assert rosa.q.weight.abs().max() <= 1 / math.sqrt(32)  # torch's Linear default bound


def test_recipes_work_in_half_precision():
    model = RWKV8(small_config()).half()
    init_lm_recipe(model)
    assert model.head.weight.dtype == torch.float16 and torch.isfinite(model.head.weight).all()


def test_lm_param_groups():
    model = RWKV8(small_config())
    groups = lm_param_groups(model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
    by_name = {group["name"]: group for group in groups}
    decay = {names[id(p)] for p in by_name["decay"]["params"]}
    assert "blocks.0.att.receptance.weight" in decay and "emb.weight" in decay and "head.weight" in decay
    assert not any(n.endswith(("w1", "w2", "ln1.weight", "x_r")) for n in decay)
    assert all(model.get_parameter(n).dim() >= 2 for n in decay)
    double = {names[id(p)] for p in by_name["w0_2x"]["params"]}
    assert double == {f"blocks.{i}.att.w0" for i in range(3)}
    assert by_name["w0_2x"]["lr"] == 2e-3 and by_name["w0_2x"]["weight_decay"] == 0
    assert by_name["no_decay"]["weight_decay"] == 0 and by_name["decay"]["weight_decay"] == 0.1
    optimizer = make_lm_optimizer(model, lr=1e-3)
    assert optimizer.defaults["betas"] == LM_BETAS and optimizer.defaults["eps"] == LM_EPS
    with pytest.raises(ValueError, match="lr"):
        lm_param_groups(model, lr=0.0)
    task = make_task_optimizer(model, lr=1e-3)
    assert task.defaults["weight_decay"] == 0.01 and task.defaults["betas"] == (0.9, 0.999)


def test_learning_rate_schedules():
    assert task_learning_rate(0, 1000, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert task_learning_rate(999, 1000, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert task_learning_rate(500, 1001, 1e-3, 1e-6) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lm_learning_rate(0, 100, 1e-3, 1e-5, warmup_steps=10) == pytest.approx(1e-4)
    assert lm_learning_rate(10, 100, 1e-3, 1e-5, warmup_steps=10) == pytest.approx(1e-3)
    assert lm_learning_rate(99, 100, 1e-3, 1e-5, warmup_steps=10) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="step"):
        task_learning_rate(1000, 1000, 1e-3, 1e-6)

"""Chunked head + cross-entropy == F.cross_entropy on the full logits, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from heron.train.losses import LossModel, chunked_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_cross_entropy_matches_full(chunk, bias):
    torch.manual_seed(0)
    B, T, C, V = 3, 8, 16, 50
    features = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, C, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, V, (B, T))
    targets[0, :3] = -100  # unscored positions
    full = F.cross_entropy(F.linear(features, weight, b).reshape(-1, V), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    leaves = [features, weight] + ([b] if bias else [])
    expected = torch.autograd.grad(full, leaves)
    loss = chunked_cross_entropy(features, weight, b, targets, chunk)
    got = torch.autograd.grad(loss, leaves)
    torch.testing.assert_close(loss, full, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_chunked_cross_entropy_float32_and_bf16_autocast():
    torch.manual_seed(1)
    features = torch.randn(2, 33, 32, requires_grad=True)
    weight = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = F.cross_entropy(F.linear(features, weight).float().reshape(-1, 300), targets.reshape(-1),
                               reduction="sum")
        chunked = chunked_cross_entropy(features, weight, None, targets, 10)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-3)
    expected = torch.autograd.grad(full, [features, weight])
    got = torch.autograd.grad(chunked, [features, weight])
    for g, e in zip(got, expected):  # bf16 matmuls: the chunks round their partial sums differently
        assert float((g - e).norm() / e.norm()) < 1e-2


def test_chunked_cross_entropy_errors():
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        chunked_cross_entropy(torch.zeros(2, 4), torch.zeros(5, 4), None, torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="do not match"):
        chunked_cross_entropy(torch.zeros(2, 4), torch.zeros(5, 4), None, torch.zeros(3, dtype=torch.long), 2)


def test_loss_model_chunked_equals_full_on_rwkv8():
    from heron.models.rwkv8 import RWKV8, RWKV8Config

    torch.manual_seed(0)
    model = RWKV8(RWKV8Config(n_layer=2, n_embd=32, vocab_size=97, head_size=16, rosa=None, deep_embed=True))
    with torch.no_grad():  # a non-zero head and channel-mix so every gradient is non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    full, chunked = LossModel(model, 97, "t"), LossModel(model, 97, "t", ce_chunk=5)
    torch.testing.assert_close(full(x), model(x))  # no targets: the logits
    loss = full(x, y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    loss_chunked = chunked(x, y)
    got = torch.autograd.grad(loss_chunked, list(model.parameters()))
    torch.testing.assert_close(loss_chunked, loss, rtol=1e-6, atol=1e-5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="predicts 97 classes"):
        LossModel(model, 200, "t", ce_chunk=5)(x, y)

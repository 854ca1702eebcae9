"""ChannelMix (x080 with DeepEmbed, RWKV-7 without) against a per-token reference (spec §3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from heron.layers.channel_mix import ChannelMix, ChannelMixState


def make_config(deep_embed=True, on_cpu=False, n_embd=8, dim_ffn=20, vocab_size=11):
    return SimpleNamespace(n_embd=n_embd, dim_ffn=dim_ffn, vocab_size=vocab_size, deep_embed=deep_embed,
                           deep_embed_on_cpu=on_cpu)


def randomized(layer, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    layer = layer.to(dtype)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator, dtype=dtype))
    return layer


def reference_channel_mix(layer, x, tokens, x_prev):
    p = {name: param.detach().double() for name, param in layer.named_parameters()}
    B, T, C = x.shape
    out = torch.zeros(B, T, C, dtype=torch.float64)
    for b in range(B):
        prev = x_prev[b].double()
        for t in range(T):
            xt = x[b, t].double()
            mixed = xt + (prev - xt) * p["x_k"].reshape(C)
            hidden = torch.relu(p["key.weight"] @ mixed) ** 2
            y = p["value.weight"] @ hidden
            if layer.deep_embed:
                y = y * p["enn.weight"][tokens[b, t]]
            out[b, t] = y
            prev = xt
    return out


@pytest.mark.parametrize("deep_embed", [True, False])
def test_matches_reference_with_and_without_state(deep_embed):
    cfg = make_config(deep_embed)
    layer = randomized(ChannelMix(cfg, 0), seed=1)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, cfg.n_embd, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, cfg.vocab_size, (3, 6), generator=generator)
    x_prev = torch.randn(3, cfg.n_embd, generator=generator, dtype=torch.float64)
    for state in (None, ChannelMixState(x_prev)):
        out, new_state = layer(x, tokens if deep_embed else None, state, return_state=True)
        start = x_prev if state is not None else torch.zeros_like(x_prev)
        ref = reference_channel_mix(layer, x, tokens, start)
        assert out.abs().max() > 1e-3
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new_state.x_prev, x[:, -1], rtol=0, atol=0)


def test_chunks_equal_whole():
    cfg = make_config()
    layer = randomized(ChannelMix(cfg, 0), seed=3)
    x = torch.randn(2, 7, cfg.n_embd, dtype=torch.float64)
    tokens = torch.randint(0, cfg.vocab_size, (2, 7))
    whole = layer(x, tokens)
    first, state = layer(x[:, :3], tokens[:, :3], return_state=True)
    second = layer(x[:, 3:], tokens[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-13, atol=1e-13)


def test_official_initial_values():
    layer = ChannelMix(make_config(), 0)
    assert torch.all(layer.x_k == 0) and torch.all(layer.value.weight == 0) and torch.all(layer.enn.weight == 1)
    key = layer.key.weight.detach().double()  # [dim_ffn, C]: tall, orthonormal columns times gain 2
    torch.testing.assert_close(key.T @ key, 4 * torch.eye(key.shape[1], dtype=torch.float64), rtol=0, atol=1e-5)


def test_deep_embed_on_cpu_stays_put_and_learns():
    layer = ChannelMix(make_config(on_cpu=True), 0)
    layer.to(torch.float64)
    assert layer.enn.weight.dtype == torch.float64 and layer.key.weight.dtype == torch.float64
    layer.to("meta")  # a device move: everything but the table leaves the CPU
    assert layer.key.weight.device.type == "meta"
    assert layer.enn.weight.device.type == "cpu"

    layer = randomized(ChannelMix(make_config(on_cpu=True), 0), seed=4)
    plain = ChannelMix(make_config(on_cpu=False), 0).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    tokens = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(layer(x, tokens), plain(x, tokens), rtol=0, atol=0)
    layer(x, tokens).square().sum().backward()
    plain(x, tokens).square().sum().backward()
    torch.testing.assert_close(layer.enn.weight.grad, plain.enn.weight.grad, rtol=0, atol=0)
    assert layer.enn.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    layer = ChannelMix(make_config(), 0)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="token_ids"):
        layer(x)
    with pytest.raises(ValueError, match="token_ids must have shape"):
        layer(x, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer tensor"):
        layer(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 3, 9), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="state.x_prev"):
        layer(x, torch.zeros(2, 3, dtype=torch.int64), ChannelMixState(torch.zeros(3, 8)))
    for bad in (None, torch.zeros(2, 8, dtype=torch.int64)):
        with pytest.raises(TypeError, match="state.x_prev must be a floating-point tensor"):
            layer(x, torch.zeros(2, 3, dtype=torch.int64), ChannelMixState(bad))
    assert not hasattr(ChannelMix(make_config(deep_embed=False), 0), "enn")


def test_state_select_follows_the_batch_index_contract():
    state = ChannelMixState(torch.arange(6.0).view(3, 2))
    assert torch.equal(state.select(torch.tensor([2, 0])).x_prev, torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert torch.equal(state.select(torch.tensor([False, True, False])).x_prev, torch.tensor([[2.0, 3.0]]))
    with pytest.raises(TypeError, match="integers"):
        state.select(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="lie in"):
        state.select(torch.tensor([3]))
    with pytest.raises(ValueError, match="boolean mask"):
        state.select(torch.tensor([True]))


def test_token_ids_out_of_range_or_small_integer_dtypes():
    layer = randomized(ChannelMix(make_config(), 0), seed=3)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    for bad in (11, -1):
        with pytest.raises(ValueError, match="token_ids must lie in \\[0, 11\\)"):
            layer(x, torch.full((2, 3), bad))
    tokens = torch.randint(0, 11, (2, 3))
    expected = layer(x, tokens)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        torch.testing.assert_close(layer(x, tokens.to(dtype)), expected, rtol=0, atol=0)

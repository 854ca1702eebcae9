"""TimeMix (x070) against a per-token, per-head reference written straight from spec/RWKV8.md §2."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from heron.layers.time_mix import TimeMix, TimeMixState


def make_config(n_embd=16, head_size=4, n_layer=3, rank=4, layer0_value_lora=False):
    return SimpleNamespace(n_embd=n_embd, head_size=head_size, n_layer=n_layer, lora_rank_decay=rank,
                           lora_rank_iclr=rank + 1, lora_rank_value=rank + 2, lora_rank_gate=rank + 3,
                           ln_x_eps=64e-5, layer0_value_lora=layer0_value_lora)


def randomized(layer: TimeMix, seed: int, dtype=torch.float64) -> TimeMix:
    """Perturb every parameter so no term of the layer is trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    layer = layer.to(dtype)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator, dtype=dtype))
    return layer


def reference_time_mix(layer: TimeMix, x, v_first, x_prev, wkv):
    """One token at a time, one head at a time, in float64; returns (out, v, x_prev, wkv)."""
    p = {name: param.detach().double() for name, param in layer.named_parameters()}
    B, T, C = x.shape
    H, N = layer.n_head, layer.head_size
    x = x.double()
    out = torch.zeros(B, T, C, dtype=torch.float64)
    values = torch.zeros(B, T, C, dtype=torch.float64)
    wkv = wkv.double().clone()
    x_prev = x_prev.double().clone()
    vec = lambda name: p[name].reshape(C)  # noqa: E731
    for b in range(B):
        for t in range(T):
            xt = x[b, t]
            delta = x_prev[b] - xt
            xr, xw, xk, xv, xa, xg = (xt + delta * vec(n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
            r = p["receptance.weight"] @ xr
            k = p["key.weight"] @ xk
            v = p["value.weight"] @ xv
            w = vec("w0") + torch.tanh(xw @ p["w1"]) @ p["w2"]
            w = -F.softplus(-w) - 0.5
            decay = torch.exp(-torch.exp(w))
            a = torch.sigmoid(vec("a0") + (xa @ p["a1"]) @ p["a2"])
            g = torch.sigmoid(xg @ p["g1"]) @ p["g2"]
            if layer.layer_id > 0:
                mix = torch.sigmoid(vec("v0") + (xv @ p["v1"]) @ p["v2"])
                v = v + (v_first[b, t].double() - v) * mix
            values[b, t] = v
            kk_full = k * vec("k_k")
            k = k * (1 + (a - 1) * vec("k_a"))
            y = torch.zeros(C, dtype=torch.float64)
            for h in range(H):
                sl = slice(h * N, (h + 1) * N)
                kk = kk_full[sl] / max(kk_full[sl].norm().item(), 1e-12)
                S = wkv[b, h]
                S = S * decay[sl][None, :] + torch.outer(S @ (-kk), kk * a[sl]) + torch.outer(v[sl], k[sl])
                wkv[b, h] = S
                yh = S @ r[sl]
                yh = (yh - yh.mean()) / torch.sqrt(yh.var(unbiased=False) + layer.ln_x.eps)
                yh = yh * p["ln_x.weight"][sl] + p["ln_x.bias"][sl]
                yh = yh + (r[sl] * k[sl] * p["r_k"][h]).sum() * v[sl]
                y[sl] = yh
            out[b, t] = p["output.weight"] @ (y * g)
            x_prev[b] = xt
    return out, values, x_prev, wkv


def random_inputs(B, T, C, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=generator, dtype=dtype)


@pytest.mark.parametrize("layer_id", [0, 1])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("input_scale", [1.0, 0.0, 30.0])  # ordinary, all-zero (kk of norm 0), large
def test_matches_reference(layer_id, with_state, input_scale):
    cfg = make_config()
    layer = randomized(TimeMix(cfg, layer_id), seed=layer_id)
    B, T, C = 2, 7, cfg.n_embd
    H, N = C // cfg.head_size, cfg.head_size
    x = input_scale * random_inputs(B, T, C, seed=10)
    v_first = random_inputs(B, T, C, seed=11) if layer_id > 0 else None
    if with_state:
        state = TimeMixState(random_inputs(1, B, C, seed=12)[0], 0.3 * random_inputs(B * H, N, N, seed=13).view(B, H, N, N))
    else:
        state = None
    out, v_out, new_state = layer(x, v_first, state, return_state=True)
    x_prev0 = state.x_prev if state else torch.zeros(B, C, dtype=torch.float64)
    wkv0 = state.wkv if state else torch.zeros(B, H, N, N, dtype=torch.float64)
    ref_out, ref_v, ref_prev, ref_wkv = reference_time_mix(layer, x, v_first, x_prev0, wkv0)
    assert out.abs().max() > 1e-3  # the check below is not vacuous
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(new_state.x_prev, ref_prev, rtol=0, atol=0)
    torch.testing.assert_close(new_state.wkv, ref_wkv, rtol=1e-9, atol=1e-10)
    if layer_id == 0:
        torch.testing.assert_close(v_out, ref_v, rtol=1e-12, atol=1e-12)
    else:
        assert v_out is v_first


@pytest.mark.parametrize("layer_id", [0, 2])
def test_chunks_and_steps_equal_whole_sequence(layer_id):
    cfg = make_config()
    layer = randomized(TimeMix(cfg, layer_id), seed=5)
    B, T, C = 2, 9, cfg.n_embd
    x = random_inputs(B, T, C, seed=6)
    v_first = random_inputs(B, T, C, seed=7) if layer_id else None
    whole, _, whole_state = layer(x, v_first, return_state=True)

    state, parts = None, []
    for start, stop in ((0, 4), (4, 5), (5, 9)):
        vf = v_first[:, start:stop] if layer_id else None
        out, _, state = layer(x[:, start:stop], vf, state, return_state=True)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(state.wkv, whole_state.wkv, rtol=1e-11, atol=1e-11)

    state, steps = None, []
    for t in range(T):
        vf = v_first[:, t:t + 1] if layer_id else None
        out, _, state = layer(x[:, t:t + 1], vf, state, return_state=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(state.wkv, whole_state.wkv, rtol=1e-11, atol=1e-11)


def test_state_precision_follows_activation_dtype():
    cfg = make_config()
    layer = TimeMix(cfg, 0)
    _, _, state = layer(torch.randn(1, 3, cfg.n_embd), return_state=True)
    assert state.wkv.dtype == torch.float32 and state.x_prev.dtype == torch.float32
    layer = layer.double()
    _, _, state = layer(torch.randn(1, 3, cfg.n_embd, dtype=torch.float64), return_state=True)
    assert state.wkv.dtype == torch.float64
    copied = state.copy()
    copied.wkv.add_(1.0)
    assert not torch.equal(copied.wkv, state.wkv)
    assert state.to(dtype=torch.float16).wkv.dtype == torch.float32
    assert state.select(torch.tensor([0, 0])).batch_size == 2
    assert state.select(torch.tensor([True])).batch_size == 1
    with pytest.raises(TypeError, match="batch_index must hold integers"):
        state.select(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"batch_index must lie in \[0, 1\)"):
        state.select(torch.tensor([1]))


@pytest.mark.parametrize("state_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_state_of_another_dtype_gives_the_same_step_as_gpt_mode(state_dtype):
    """The one-token path used to run in the state's dtype (a half state: 1e-3 off GPT mode)."""
    cfg = make_config()
    layer = randomized(TimeMix(cfg, 0), seed=4, dtype=torch.float32)
    x = random_inputs(2, 2, cfg.n_embd, seed=5, dtype=torch.float32)
    generator = torch.Generator().manual_seed(6)
    state = TimeMixState(torch.randn(2, cfg.n_embd, generator=generator),
                         0.3 * torch.randn(2, cfg.n_embd // cfg.head_size, cfg.head_size, cfg.head_size,
                                                     generator=generator))
    state = TimeMixState(state.x_prev, state.wkv.to(state_dtype).float().to(state_dtype))
    with torch.no_grad():
        step = layer(x[:, :1], state=state)[0]
        whole = layer(x, state=state)[0][:, :1]
    torch.testing.assert_close(step, whole, rtol=1e-5, atol=1e-5)


def test_gradients_gradcheck():
    cfg = make_config(n_embd=8, head_size=4, rank=2)
    layer = randomized(TimeMix(cfg, 1), seed=9)
    x = random_inputs(1, 3, 8, seed=1).requires_grad_(True)
    v_first = random_inputs(1, 3, 8, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b)[0], (x, v_first), eps=1e-6, atol=1e-6)


def test_layer0_value_lora_is_stored_but_unused():
    cfg = make_config(layer0_value_lora=True)
    layer = randomized(TimeMix(cfg, 0), seed=1)
    assert {"v0", "v1", "v2"} <= set(dict(layer.named_parameters()))
    x = random_inputs(1, 4, cfg.n_embd, seed=3)
    before = layer(x)[0]
    with torch.no_grad():
        layer.v0.add_(5.0)
        layer.v1.add_(1.0)
    torch.testing.assert_close(layer(x)[0], before, rtol=0, atol=0)
    assert "v0" not in dict(TimeMix(make_config(), 0).named_parameters())


def test_official_initial_values():
    cfg = make_config(n_embd=16, head_size=4, n_layer=4)
    layer_id = 1
    layer = TimeMix(cfg, layer_id)
    C, N, L = 16, 4, 4
    r1, r0 = 1 - layer_id / L, layer_id / (L - 1)
    i = 5
    assert math.isclose(layer.x_r[0, 0, i].item(), 1 - (i / C) ** (0.2 * r1), rel_tol=1e-6)
    assert math.isclose(layer.x_w[0, 0, i].item(), 1 - (i / C) ** (0.9 * r1), rel_tol=1e-6)
    z = ((i % N) - (N - 1) / 2) / ((N - 1) / 2)
    zz, lin = z * abs(z), i / (C - 1) - 0.5
    w0 = -6 + 6 * (i / (C - 1)) ** (1 + r0**0.3) + 0.5 + 2.5 * zz
    assert math.isclose(layer.w0[0, 0, i].item(), w0, rel_tol=1e-6)
    assert math.isclose(layer.a0[0, 0, i].item(), -0.19 + 0.3 * zz + 0.4 * lin, rel_tol=1e-6)
    assert math.isclose(layer.v0[0, 0, i].item(), 0.73 - 0.4 * lin, rel_tol=1e-6)
    assert math.isclose(layer.k_k[0, 0, i].item(), 0.71 - 0.1 * lin, rel_tol=1e-6)
    assert torch.all(layer.k_a == 1.02) and torch.all(layer.r_k == -0.04)
    assert torch.all(layer.w1 == 0) and torch.all(layer.output.weight == 0)
    w2 = layer.w2.detach().double()
    torch.testing.assert_close(w2 @ w2.T, 0.01 * torch.eye(w2.shape[0], dtype=torch.float64), rtol=0, atol=1e-6)
    bound = 0.5 / math.sqrt(C)
    assert layer.receptance.weight.abs().max() <= bound


def test_bad_inputs_raise_clear_errors():
    cfg = make_config()
    layer0, layer1 = TimeMix(cfg, 0), TimeMix(cfg, 1)
    with pytest.raises(ValueError, match="x must have shape"):
        layer0(torch.randn(2, 3, cfg.n_embd + 1))
    with pytest.raises(ValueError, match="T >= 1"):
        layer0(torch.randn(2, 0, cfg.n_embd))
    with pytest.raises(TypeError, match="floating-point"):
        layer0(torch.ones(2, 3, cfg.n_embd, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer0([[0.0] * cfg.n_embd])
    with pytest.raises(ValueError, match="v_first"):
        layer1(torch.randn(2, 3, cfg.n_embd))
    with pytest.raises(ValueError, match="state.wkv"):
        layer0(torch.randn(2, 3, cfg.n_embd),
               state=TimeMixState(torch.zeros(2, cfg.n_embd), torch.zeros(2, 4, 3, 3)))
    with pytest.raises(TypeError, match="TimeMixState"):
        layer0(torch.randn(2, 3, cfg.n_embd), state=(torch.zeros(2, cfg.n_embd),))
    x = torch.randn(2, 3, cfg.n_embd)
    with pytest.raises(ValueError, match="v_first must be layer 0's values"):
        layer1(x, v_first=x.long())
    H, N = layer0.n_head, layer0.head_size
    for x_prev, wkv, name in ((torch.zeros(2, cfg.n_embd), torch.zeros(2, H, N, N, dtype=torch.int64), "state.wkv"),
                              ([0.0] * cfg.n_embd, torch.zeros(2, H, N, N), "state.x_prev")):
        for T in (1, 3):  # the single-step path and the sequence path
            with pytest.raises(TypeError, match=f"{name} must be a floating-point tensor"):
                layer0(x[:, :T], state=TimeMixState(x_prev, wkv))
    with pytest.raises(ValueError, match="multiple of head_size"):
        TimeMix(make_config(n_embd=10, head_size=4), 0)

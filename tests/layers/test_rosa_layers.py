"""ROSA layers: official names and initial values, outputs against explicit formulations, state."""

import pytest
import torch
from torch import nn

from heron.layers.rosa import EmbROSA, ROSABits, ROSAQKV, ROSAQKVOp, ROSAState
from heron.ops.rosa import OnlineROSA
from heron.ops.rosa.grad import pack_symbols
from heron.ops.rosa.reference import rosa_oracle, rosa_qkv_oracle


def _channel_rosa(symbols: torch.Tensor) -> torch.Tensor:
    """[B, T, G] symbols -> [B, T, G] token-ROSA outputs by the brute-force oracle."""
    return torch.tensor(
        [[rosa_oracle(stream) for stream in symbols[b].T.tolist()] for b in range(symbols.shape[0])]
    ).permute(0, 2, 1)


def _qkv_rosa(q, k, v) -> torch.Tensor:
    return torch.tensor(
        [[rosa_qkv_oracle(a, b, c) for a, b, c in zip(q[i].T.tolist(), k[i].T.tolist(), v[i].T.tolist())]
         for i in range(q.shape[0])]
    ).permute(0, 2, 1)


def _bits_of(y: torch.Tensor, bits: int, channels: int) -> torch.Tensor:
    return (y.clamp_min(0).repeat_interleave(bits, -1) >> (torch.arange(channels) % bits)) & 1


# ------------------------------------------------------------------------------------------
# names, shapes, initial values


def test_official_parameter_names_and_initial_values():
    emb = EmbROSA(11, 8)
    assert set(emb.state_dict()) == {"emb.weight"}
    bits = ROSABits(8, bits=4)
    assert set(bits.state_dict()) == {"emb0", "emb1"}
    assert bits.emb0.shape == (1, 1, 8)
    assert torch.all(bits.emb0 == -1e-5) and torch.all(bits.emb1 == 1e-5)
    block = ROSAQKV(8)
    assert set(block.state_dict()) == {
        "x_q", "x_k", "x_v", "q.weight", "q.bias", "k.weight", "k.bias", "v.weight", "v.bias",
        "o.weight", "o.bias", "rosa_qkv.emb",
    }
    assert torch.all(block.rosa_qkv.emb == 1.0) and block.rosa_qkv.emb.shape == (1, 1, 8)
    assert torch.all(block.x_q == 0) and torch.all(block.x_k == 0) and torch.all(block.x_v == 0)
    assert isinstance(block.q, nn.Linear) and block.q.bias is not None


def test_no_match_conventions_follow_the_official_layers():
    assert ROSABits(8, bits=1).no_match == "zero"
    assert ROSABits(8, bits=4).no_match == "symbol0"
    assert ROSAQKVOp(8, bits=1).no_match == "symbol0"
    assert ROSAQKVOp(8, bits=4).no_match == "zero"


# ------------------------------------------------------------------------------------------
# outputs against explicit formulations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emb_rosa_output_and_exact_gradient(dtype):
    torch.manual_seed(0)
    layer = EmbROSA(5, 6).to(dtype)
    idx = torch.randint(0, 5, (3, 17))
    out = layer(idx)
    assert out.dtype == dtype
    y = torch.tensor([rosa_oracle(row) for row in idx.tolist()])
    weight = layer.emb.weight.detach().clone().requires_grad_(True)
    explicit = torch.where((y >= 0).unsqueeze(-1), weight[y.clamp_min(0)], torch.zeros((), dtype=dtype))
    torch.testing.assert_close(out, explicit)
    grad_out = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, layer.emb.weight, grad_out)
    (want,) = torch.autograd.grad(explicit, weight, grad_out)
    torch.testing.assert_close(got, want)
    assert torch.all(out[y < 0] == 0)


@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rosa_bits_matches_the_official_formulation(bits, dtype):
    torch.manual_seed(bits)
    C = 8
    layer = ROSABits(C, bits=bits).to(dtype)
    with torch.no_grad():
        layer.emb0.normal_()
        layer.emb1.normal_()
    x = torch.randn(2, 13, C, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == x.shape
    y = _channel_rosa(pack_symbols(x, bits))
    bit = _bits_of(y, bits, C).bool()
    explicit = torch.where(bit, layer.emb1, layer.emb0)
    if bits == 1:  # the 1-bit layer outputs 0 on no match; the 4-bit one decodes symbol 0
        explicit = torch.where(y.repeat_interleave(bits, -1) < 0, torch.zeros((), dtype=dtype), explicit)
    torch.testing.assert_close(out, explicit)


@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rosa_qkv_block_matches_the_official_formulation(bits, dtype):
    torch.manual_seed(10 + bits)
    C = 8
    block = ROSAQKV(C, bits=bits).to(dtype)
    with torch.no_grad():
        block.x_q.uniform_(-1, 1)
        block.x_k.uniform_(-1, 1)
        block.x_v.uniform_(-1, 1)
        block.rosa_qkv.emb.normal_()
    x = torch.randn(2, 11, C, dtype=dtype)
    out = block(x)
    assert out.dtype == dtype
    shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    xx = shifted - x
    q = block.q(x + xx * block.x_q)
    k = block.k(x + xx * block.x_k)
    v = block.v(x + xx * block.x_v)
    y = _qkv_rosa(*(pack_symbols(t, bits) for t in (q, k, v)))
    sign = 2.0 * _bits_of(y, bits, C).to(dtype) - 1.0
    if bits == 4:  # the 4-bit op gives 0 on no match, the 1-bit op -e
        sign = torch.where(y.repeat_interleave(bits, -1) < 0, torch.zeros((), dtype=dtype), sign)
    explicit = block.o(sign * block.rosa_qkv.emb)
    torch.testing.assert_close(out, explicit)


def test_rosa_qkv_block_trains_every_parameter():
    torch.manual_seed(3)
    block = ROSAQKV(8, bits=1).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)
    block(x).square().sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["flip", "window", "value"])
def test_layers_accept_every_estimator(estimator):
    torch.manual_seed(4)
    layer = ROSABits(8, bits=4, estimator=estimator, window=4)
    x = torch.randn(2, 10, 8, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------
# state: chunked and T = 1 steps equal the whole sequence


def _chunks(layer, x, sizes):
    outs, state = [], None
    first = 0
    for size in sizes:
        out, state = layer(x[:, first:first + size], state=state, return_state=True)
        outs.append(out)
        first += size
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("make", [
    lambda: ROSABits(8, bits=1), lambda: ROSABits(8, bits=4), lambda: ROSAQKV(8, bits=1), lambda: ROSAQKV(8, bits=4),
])
def test_stateful_chunks_equal_the_whole_sequence(make):
    torch.manual_seed(5)
    layer = make().double()
    x = torch.randn(3, 14, 8, dtype=torch.float64)
    with torch.no_grad():
        whole = layer(x)
        chunked, state = _chunks(layer, x, [5, 1, 8])
        steps, _ = _chunks(layer, x, [1] * 14)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(steps, whole)
    assert isinstance(state, ROSAState) and state.automaton.length == 14


def test_emb_rosa_stateful_steps_equal_the_whole_sequence():
    torch.manual_seed(6)
    layer = EmbROSA(4, 5)
    idx = torch.randint(0, 4, (2, 20))
    whole = layer(idx)
    outs, state = [], None
    for t in range(20):
        out, state = layer(idx[:, t:t + 1], state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole)
    branch = state.copy()
    a, _ = layer(idx[:, :3], state=state, return_state=True)
    b, _ = layer(idx[:, :3], state=branch, return_state=True)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bits", [1, 4])
def test_state_select_and_serialisation_continue_exactly(bits):
    torch.manual_seed(8)
    block = ROSAQKV(8, bits=bits).double()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        _, state = block(x[:, :6], return_state=True)
        whole = block(x)[:, 6:]
        order = torch.tensor([2, 0, 2])
        picked, _ = block(x[order, 6:], state=state.select(order), return_state=True)
        torch.testing.assert_close(picked, whole[order])
        default_size, _ = block(x[order, 6:], state=state.select(order, 3), return_state=True)
        torch.testing.assert_close(default_size, whole[order])
        masked, _ = block(x[[0, 2], 6:], state=state.select(torch.tensor([True, False, True])), return_state=True)
        torch.testing.assert_close(masked, whole[[0, 2]])
        restored = ROSAState.from_state_dict(state.state_dict())
        again, _ = block(x[:, 6:], state=restored.detach(), return_state=True)
        torch.testing.assert_close(again, whole)
    with pytest.raises(ValueError, match="batch_index"):
        state.select(torch.tensor([3]))
    with pytest.raises(TypeError, match="batch_index must hold integers"):
        state.select(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="from_state_dict"):
        ROSAState.from_state_dict({"x": 1})


def test_fresh_state_keeps_gradients_and_history_refuses_them():
    torch.manual_seed(7)
    layer = ROSABits(4, bits=1).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    out, state = layer(x, return_state=True)
    out.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="carried ROSA state"):
        layer(x, state=state, return_state=True)
    with torch.no_grad():
        layer(x, state=state, return_state=True)


# ------------------------------------------------------------------------------------------
# validation


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        ROSABits(6, bits=4)
    with pytest.raises(ValueError, match="estimator"):
        ROSABits(8, estimator="ste")
    with pytest.raises(ValueError, match="no_match"):
        ROSAQKV(8, no_match="minus")
    with pytest.raises(ValueError, match="8 channels"):
        ROSABits(8)(torch.randn(1, 3, 4))
    with pytest.raises(TypeError, match="integer token ids"):
        EmbROSA(4, 4)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"token ids in \[0, 4\)"):
        EmbROSA(4, 4)(torch.tensor([[0, 4]]))
    layer = ROSABits(8)
    _, state = layer(torch.randn(2, 3, 8), return_state=True)
    with pytest.raises(ValueError, match="streams"):
        layer(torch.randn(3, 3, 8), state=state, return_state=True)
    with pytest.raises(TypeError, match="ROSAState"):
        layer(torch.randn(2, 3, 8), state={"x": 1}, return_state=True)
    with pytest.raises(TypeError, match="state.automaton must be a heron.ops.rosa.OnlineROSA"):
        layer(torch.randn(2, 3, 8), state=ROSAState("abc"), return_state=True)
    op = ROSAQKVOp(8)
    q = torch.randn(2, 3, 8)
    with pytest.raises(TypeError, match="automaton must be a heron.ops.rosa.OnlineROSA"):
        op(q, q, q, automaton="abc")
    with pytest.raises(ValueError, match="automaton holds 3 streams"):
        op(q, q, q, automaton=OnlineROSA(3))


def test_continuing_a_state_without_return_state_returns_only_the_output():
    """docs/design.md: ``layer(x, state, return_state=False)`` returns ``out`` alone."""
    from heron.layers.rosa import ROSABits, ROSAQKV

    torch.manual_seed(0)
    for layer in (ROSABits(8, bits=1), ROSABits(8, bits=4), ROSAQKV(8, bits=1)):
        x = torch.randn(2, 5, 8)
        with torch.no_grad():
            whole = layer(torch.cat([x, x], dim=1))
            _, state = layer(x, return_state=True)
            continued = layer(x, state=state)
        assert isinstance(continued, torch.Tensor)
        torch.testing.assert_close(continued, whole[:, 5:])


def test_rosa_state_to_takes_device_and_dtype_like_the_other_states():
    block = ROSAQKV(8, bits=1)
    _, state = block(torch.randn(2, 5, 8), return_state=True)
    moved = state.to("cpu", torch.float64)
    assert moved.x_prev.dtype == torch.float64 and moved.automaton is state.automaton
    assert state.to(dtype=torch.float16).x_prev.dtype == torch.float16
    with pytest.raises(TypeError, match="return_state must be a bool"):
        block(torch.randn(2, 5, 8), return_state="yes")

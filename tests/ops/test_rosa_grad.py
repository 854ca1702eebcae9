"""The ROSA gradient estimators against their naive definitions (spec/ROSA.md §4)."""

import itertools

import pytest
import torch

from heron.ops.rosa import grad as G
from heron.ops.rosa.reference import rosa_qkv_oracle


def _native_cpu():
    try:
        return G.native_flip_cpu()
    except G.ExtensionUnavailable as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"C++ flip extension unavailable: {exc}")


def _streams(kind: str, S: int, T: int, bits: int, generator) -> torch.Tensor:
    if kind == "random":
        return torch.randint(0, 2**bits, (S, T), generator=generator)
    if kind == "constant":
        return torch.full((S, T), 2**bits - 1, dtype=torch.int64)
    if kind == "periodic":
        period = torch.randint(0, 2**bits, (S, 3), generator=generator)
        return period.repeat(1, T // 3 + 1)[:, :T].contiguous()
    raise AssertionError(kind)


# ------------------------------------------------------------------------------------------
# kernels: phi differences equal re-running every flipped stream


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 2, 7, 12])
@pytest.mark.parametrize("kind", ["random", "constant", "periodic"])
def test_cpu_flip_deltas_equal_rerunning_every_flip(bits, T, kind):
    ext = _native_cpu()
    generator = torch.Generator().manual_seed(bits * 100 + T)
    S = 3
    x = _streams(kind, S, T, bits, generator)
    val = torch.randn(S, T, 2**bits + 1, dtype=torch.float64, generator=generator)
    for window in (T, 2):
        got = ext.flip_token(x, val, bits, window)
        (want,) = G.flip_deltas_reference(x, x, x, val, bits, window, token=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        q, k, v = (_streams(kind, S, T, bits, generator) for _ in range(3))
        q = torch.randint(0, 2**bits, (S, T), generator=generator) if kind == "random" else q
        dq, dk, dv = ext.flip_qkv(q, k, v, val, bits, window, True, True, True)
        rq, rk, rv = G.flip_deltas_reference(q, k, v, val, bits, window, token=False)
        torch.testing.assert_close(dq, rq, rtol=0, atol=1e-12)
        torch.testing.assert_close(dk, rk, rtol=0, atol=1e-12)
        # value flips are never windowed, in the kernels and in the Python fallback alike (the
        # fallback used to cut them at the window, so machines without the build trained differently)
        torch.testing.assert_close(dv, rv, rtol=0, atol=1e-12)


def test_cpu_flip_float32_matches_float64():
    ext = _native_cpu()
    generator = torch.Generator().manual_seed(5)
    x = torch.randint(0, 2, (16, 40), generator=generator)
    val = torch.randn(16, 40, 3, dtype=torch.float64, generator=generator)
    got = ext.flip_token(x, val.float(), 1, 40)
    want = ext.flip_token(x, val, 1, 40)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_retrieval_indices_follow_the_oracle():
    generator = torch.Generator().manual_seed(3)
    q = torch.randint(0, 3, (4, 15), generator=generator)
    k = torch.randint(0, 3, (4, 15), generator=generator)
    got = G.retrieval_indices(q, k, 2)
    positions = list(range(15))
    want = [rosa_qkv_oracle(a, b, positions) for a, b in zip(q.tolist(), k.tolist())]
    assert got.tolist() == want


def test_empty_streams_give_empty_gradients():
    val = torch.zeros(0, 5, 3)
    (d,) = G.flip_deltas(torch.zeros(0, 5, dtype=torch.long), None, None, val, 1, 5, token=True)
    assert d.shape == (0, 5, 1)


# ------------------------------------------------------------------------------------------
# layer ops: flip estimator equals the naive definition; exact learned-vector gradients


def _channel_input(B, T, C, dtype, generator, dead_channel=True):
    x = torch.randn(B, T, C, dtype=dtype, generator=generator)
    if dead_channel:  # an all-constant stream (a dead channel) and an all-negative one
        x[0, :, 0] = x[0, :, 0].abs() + 0.5
        x[-1, :, -1] = -x[-1, :, -1].abs() - 0.5
    x[0, -1, 1] = 1e-5  # below tau: the denominator floor is used
    return x.requires_grad_(True)


@pytest.mark.parametrize("bits,no_match", [(1, "zero"), (4, "symbol0"), (2, "zero")])
@pytest.mark.parametrize("T", [1, 6, 11])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channel_flip_gradient_equals_naive_definition(bits, no_match, T, dtype):
    generator = torch.Generator().manual_seed(bits * 7 + T)
    C = 2 * bits
    x = _channel_input(2, T, C, dtype, generator)
    emb0 = torch.randn(C, dtype=dtype, generator=generator)
    emb1 = torch.randn(C, dtype=dtype, generator=generator)
    table = G.channel_decode_table(emb0, emb1, bits, no_match)
    out = G.rosa_channel(x, table, bits, G.EstimatorConfig("flip"))
    assert out.dtype == dtype
    grad_out = torch.randn(out.shape, dtype=dtype, generator=generator)
    (grad_x,) = torch.autograd.grad(out, x, grad_out)
    want = G.naive_flip_grad_channel(x, table, bits, grad_out)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(grad_x.double(), want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("T", [2, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_qkv_flip_gradients_equal_naive_definition(bits, T, dtype):
    generator = torch.Generator().manual_seed(bits * 11 + T)
    C = 2 * bits
    q, k, v = (_channel_input(2, T, C, dtype, generator, dead_channel=False) for _ in range(3))
    with torch.no_grad():
        k[0, :, 0] = 1.0  # a constant key stream
    emb = torch.randn(C, dtype=dtype, generator=generator)
    table = G.qkv_decode_table(emb, bits, "symbol0" if bits == 1 else "zero")
    out = G.rosa_qkv_channels(q, k, v, table, bits, G.EstimatorConfig("flip"))
    grad_out = torch.randn(out.shape, dtype=dtype, generator=generator)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = G.naive_flip_grad_qkv(q, k, v, table, bits, grad_out)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-3
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=tolerance, atol=tolerance)


def test_qkv_gradient_only_for_inputs_that_need_it():
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(1, 8, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(1, 8, 4, dtype=torch.float64, generator=generator)
    v = torch.randn(1, 8, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    table = G.qkv_decode_table(torch.ones(4, dtype=torch.float64), 1, "symbol0")
    out = G.rosa_qkv_channels(q, k, v, table, 1, G.EstimatorConfig())
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    gq, gv = torch.autograd.grad(out, (q, v), grad_out)
    rq, _, rv = G.naive_flip_grad_qkv(q, k, v, table, 1, grad_out)
    torch.testing.assert_close(gq, rq)
    torch.testing.assert_close(gv, rv)


def _explicit_channel(x, emb0, emb1, bits, no_match):
    """The official formulation: per-bit torch.where on the decoded symbol (autograd-exact in emb)."""
    symbols = G.pack_symbols(x.detach(), bits)
    y = torch.tensor(
        [[rosa_qkv_oracle(s, s, s) for s in symbols[b].T.tolist()] for b in range(x.shape[0])]
    ).permute(0, 2, 1)
    decoded = y.clamp_min(0).repeat_interleave(bits, -1)
    bit = (decoded >> (torch.arange(x.shape[-1]) % bits)) & 1
    out = torch.where(bit.bool(), emb1, emb0)
    if no_match == "zero":
        out = torch.where(y.repeat_interleave(bits, -1) < 0, torch.zeros_like(out), out)
    return out


@pytest.mark.parametrize("bits,no_match", [(1, "zero"), (4, "symbol0"), (4, "zero")])
def test_learned_vectors_get_exact_gradients(bits, no_match):
    generator = torch.Generator().manual_seed(bits)
    C = 2 * bits
    x = torch.randn(3, 10, C, dtype=torch.float64, generator=generator)
    emb0 = torch.randn(C, dtype=torch.float64, generator=generator, requires_grad=True)
    emb1 = torch.randn(C, dtype=torch.float64, generator=generator, requires_grad=True)
    grad_out = torch.randn(3, 10, C, dtype=torch.float64, generator=generator)
    out = G.rosa_channel(x, G.channel_decode_table(emb0, emb1, bits, no_match), bits, G.EstimatorConfig())
    got = torch.autograd.grad(out, (emb0, emb1), grad_out)
    explicit = _explicit_channel(x, emb0, emb1, bits, no_match)
    torch.testing.assert_close(out, explicit)
    want = torch.autograd.grad(explicit, (emb0, emb1), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_qkv_emb_gradient_is_exact():
    generator = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 12, 8, dtype=torch.float64, generator=generator) for _ in range(3))
    emb = torch.randn(8, dtype=torch.float64, generator=generator, requires_grad=True)
    grad_out = torch.randn(2, 12, 8, dtype=torch.float64, generator=generator)
    for bits, no_match in ((1, "symbol0"), (4, "zero")):
        out = G.rosa_qkv_channels(q, k, v, G.qkv_decode_table(emb, bits, no_match), bits, G.EstimatorConfig())
        (got,) = torch.autograd.grad(out, emb, grad_out)
        sq, sk, sv = (G.pack_symbols(t, bits) for t in (q, k, v))
        y = torch.stack([
            torch.tensor([rosa_qkv_oracle(a, b, c) for a, b, c in zip(sq[i].T.tolist(), sk[i].T.tolist(), sv[i].T.tolist())]).T
            for i in range(2)
        ])
        channel_y = y.repeat_interleave(bits, -1)
        bit = (channel_y.clamp_min(0) >> (torch.arange(8) % bits)) & 1
        sign = 2.0 * bit.double() - 1.0
        if no_match == "zero":
            sign = torch.where(channel_y < 0, torch.zeros_like(sign), sign)
        want = (grad_out * sign).sum((0, 1))
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------
# cheap estimators


def test_window_estimator_equals_flip_when_the_window_covers_the_sequence():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    table = G.channel_decode_table(torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), 1, "zero")
    grad_out = torch.randn(2, 9, 4, dtype=torch.float64, generator=generator)
    flip = torch.autograd.grad(G.rosa_channel(x, table, 1, G.EstimatorConfig("flip")), x, grad_out)[0]
    wide = torch.autograd.grad(G.rosa_channel(x, table, 1, G.EstimatorConfig("window", window=9)), x, grad_out)[0]
    narrow = torch.autograd.grad(G.rosa_channel(x, table, 1, G.EstimatorConfig("window", window=2)), x, grad_out)[0]
    torch.testing.assert_close(wide, flip)
    assert not torch.allclose(narrow, flip)


def _naive_value_grad(x, table, bits, grad_out, tau):
    """Copy-through by definition: hold every match fixed, flip the bit of the retrieved symbol."""
    symbols = G.pack_symbols(x, bits)
    B, T, C = x.shape
    grad = torch.zeros_like(x)
    for b in range(B):
        for g in range(C // bits):
            stream = symbols[b, :, g].tolist()
            retrieved = rosa_qkv_oracle(stream, stream, list(range(T)))
            cols = slice(g * bits, (g + 1) * bits)
            for i, r in enumerate(retrieved):
                if r < 0:
                    continue
                for m in range(bits):
                    flipped = stream[r] ^ (1 << m)
                    delta = float((grad_out[b, i, cols] * (table[flipped + 1, cols] - table[stream[r] + 1, cols])).sum())
                    value = float(x[b, r, g * bits + m])
                    sign = -1.0 if value > 0 else 1.0
                    grad[b, r, g * bits + m] += sign * delta / (2 * max(abs(value), tau))
    return grad


@pytest.mark.parametrize("bits", [1, 4])
def test_value_estimator_equals_its_definition(bits):
    generator = torch.Generator().manual_seed(10 + bits)
    C = 2 * bits
    x = torch.randn(2, 13, C, dtype=torch.float64, generator=generator, requires_grad=True)
    table = G.channel_decode_table(torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64), bits, "symbol0")
    grad_out = torch.randn(2, 13, C, dtype=torch.float64, generator=generator)
    out = G.rosa_channel(x, table, bits, G.EstimatorConfig("value"))
    (got,) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(got, _naive_value_grad(x.detach(), table, bits, grad_out, 1e-3))


def test_value_estimator_gives_qkv_value_gradient_only():
    generator = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 10, 4, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(3))
    table = G.qkv_decode_table(torch.ones(4, dtype=torch.float64), 1, "symbol0")
    grad_out = torch.randn(2, 10, 4, dtype=torch.float64, generator=generator)
    out = G.rosa_qkv_channels(q, k, v, table, 1, G.EstimatorConfig("value"))
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad_out)
    _, _, rv = G.naive_flip_grad_qkv(q, k, v, table, 1, grad_out)
    assert not gq.any() and not gk.any()
    torch.testing.assert_close(gv, rv)


# ------------------------------------------------------------------------------------------
# the training hot path: no host reads, the value estimator's retrieval comes from the forward


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("kind", ["random", "constant", "periodic"])
def test_forward_retrieval_equals_the_retrieval_kernel(bits, kind):
    generator = torch.Generator().manual_seed(bits + 31)
    B, T, G_ = 2, 40, 3
    q, k = (_streams(kind, B * G_, T, bits, generator).reshape(B, G_, T).permute(0, 2, 1).contiguous()
            for _ in range(2))
    if kind == "random":
        k[0, :, 0] = 0  # a constant key stream among random ones
    for query, key in ((q, k), (k, k)):  # QKV and token ROSA (k is q: the token kernel)
        got = G._retrieve(query, key, bits)
        want = G.retrieval_indices(G._to_streams(query), G._to_streams(key), bits)
        assert torch.equal(G._to_streams(got), want)
        v = torch.randint(0, 2**bits, (B, T, G_), generator=generator)
        assert torch.equal(G._retrieved_values(v, got), G._forward_symbols(query, key, v, bits))


@pytest.mark.parametrize("bits", [1, 4])
def test_value_estimator_backward_runs_no_automaton(bits, monkeypatch):
    generator = torch.Generator().manual_seed(40 + bits)
    C = 2 * bits
    q, k, v = (torch.randn(3, 17, C, dtype=torch.float64, generator=generator) for _ in range(3))
    emb = torch.randn(C, dtype=torch.float64, generator=generator)
    grad_out = torch.randn(3, 17, C, dtype=torch.float64, generator=generator)
    config = G.EstimatorConfig("value")

    def grads(retrieve):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v, emb)]
        table = G.qkv_decode_table(inputs[3], bits, "zero")
        out = G._QKVROSA.apply(*inputs[:3], table, bits, config, retrieve)
        return [out, *torch.autograd.grad(out, inputs, grad_out)]

    reference = grads(False)  # the backward computes the retrieval indices itself

    def refuse(*args, **kwargs):
        raise AssertionError("the value estimator's backward re-ran the automaton")

    monkeypatch.setattr(G, "retrieval_indices", refuse)
    for got, want in zip(grads(True), reference):
        assert torch.equal(got, want)
    # through the public op (which asks for the forward retrieval whenever v needs a gradient)
    vg = v.clone().requires_grad_(True)
    out = G.rosa_qkv_channels(q, k, vg, G.qkv_decode_table(emb, bits, "zero"), bits, config)
    assert torch.equal(torch.autograd.grad(out, vg, grad_out)[0], reference[3])
    # the channel op likewise (token ROSA: the forward retrieval runs the token kernel)
    table = G.channel_decode_table(emb, -emb, bits, "symbol0")

    def channel_grad(op):
        x = q.clone().requires_grad_(True)
        return torch.autograd.grad(op(x), x, grad_out)[0]

    got = channel_grad(lambda x: G.rosa_channel(x, table, bits, config))
    monkeypatch.undo()
    assert torch.equal(got, channel_grad(lambda x: G._ChannelROSA.apply(x, table, bits, config, False)))


@pytest.mark.parametrize("estimator", ["value", "window", "flip"])
def test_layer_ops_read_no_tensor_values(estimator):
    """No ``item()``/``tolist()``/``int(tensor)`` in forward or backward: each would be a
    host-device synchronisation on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 12, 8, generator=generator, requires_grad=True) for _ in range(3))
    emb = torch.randn(8, generator=generator, requires_grad=True)
    config = G.EstimatorConfig(estimator, window=4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = G.rosa_qkv_channels(q, k, v, G.qkv_decode_table(emb, 4, "zero"), 4, config)
        out2 = G.rosa_channel(q, G.channel_decode_table(emb, -emb, 1, "zero"), 1, config)
        (out.square().sum() + out2.sum()).backward()
    reads = [e.name for e in prof.events() if e.name == "aten::_local_scalar_dense"]
    assert reads == []


def test_pack_symbols_equals_pack_bits():
    from heron.ops.rosa import pack_bits

    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(3))
    x[0, 0, :8] = 0.0
    for bits in (1, 2, 3, 4, 6, 8):
        got = G.pack_symbols(x, bits)
        assert got.dtype == torch.int64 and torch.equal(got, pack_bits(x, bits))


def test_cached_constants_made_in_inference_mode_serve_training():
    G._CONSTANTS.clear()
    x = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(1))
    emb0 = torch.randn(4, requires_grad=True)
    with torch.inference_mode():
        G.rosa_channel(x, G.channel_decode_table(emb0, emb0 + 1, 2, "zero"), 2, G.EstimatorConfig("value"))
    out = G.rosa_channel(x.requires_grad_(True), G.channel_decode_table(emb0, emb0 + 1, 2, "zero"), 2,
                         G.EstimatorConfig("value"))
    out.sum().backward()  # the cached bit table is saved by autograd: it must not be an inference tensor
    assert emb0.grad is not None and x.grad is not None


# ------------------------------------------------------------------------------------------
# validation


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 4, 4)
    table = G.channel_decode_table(torch.zeros(4), torch.zeros(4), 1, "zero")
    with pytest.raises(ValueError, match="estimator"):
        G.EstimatorConfig("straight")
    with pytest.raises(ValueError, match="tau"):
        G.EstimatorConfig("flip", tau=0.0)
    with pytest.raises(ValueError, match="tau must be a positive finite float"):
        G.EstimatorConfig("flip", tau=float("inf"))  # would zero every input gradient
    with pytest.raises(ValueError, match="window"):
        G.EstimatorConfig("window", window=0)
    with pytest.raises(ValueError, match="bits"):
        G.rosa_channel(x, table, 9, G.EstimatorConfig())
    with pytest.raises(TypeError, match="bits"):
        G.rosa_channel(x, table, 1.0, G.EstimatorConfig())
    with pytest.raises(TypeError, match="x must be a floating-point"):
        G.rosa_channel(x.long(), table, 1, G.EstimatorConfig())
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, C\]"):
        G.rosa_channel(x[0], table, 1, G.EstimatorConfig())
    with pytest.raises(ValueError, match="divisible"):
        G.rosa_channel(torch.randn(1, 4, 6), G.channel_decode_table(torch.zeros(6), torch.zeros(6), 4, "zero"), 4,
                       G.EstimatorConfig())
    with pytest.raises(ValueError, match="no_match"):
        G.channel_decode_table(torch.zeros(4), torch.zeros(4), 1, "none")
    with pytest.raises(ValueError, match="same shape"):
        G.rosa_qkv_channels(x, x, torch.randn(1, 5, 4), G.qkv_decode_table(torch.ones(4), 1, "symbol0"), 1,
                            G.EstimatorConfig())


# ------------------------------------------------------------------------------------------
# the CUDA kernel's diagonal-DP algorithm (rosa_flip_dp.h), run on the host


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 2, 33, 64, 65, 130])
def test_diagonal_dp_equals_match_set_kernel(bits, T):
    ext = _native_cpu()
    generator = torch.Generator().manual_seed(100 * bits + T)
    S = 12
    for kind in ("random", "constant", "periodic"):
        x = _streams(kind, S, T, bits, generator)
        q, k, v = (torch.randint(0, 2**bits, (S, T), generator=generator) for _ in range(3))
        if kind != "random":  # long matches: the adversarial case of the query early exit
            q, k = x.clone(), x.clone()
        for dtype in (torch.float64, torch.float32):
            val = torch.randn(S, T, 2**bits + 1, dtype=torch.float64, generator=generator).to(dtype)
            atol = 1e-10 if dtype == torch.float64 else 1e-4
            for window in (T, 5, 1):
                torch.testing.assert_close(
                    ext.flip_dp_host(x, x, x, val, bits, window, True, True, False, False)[0],
                    ext.flip_token(x, val, bits, window), rtol=0, atol=atol)
                got = ext.flip_dp_host(q, k, v, val, bits, window, False, True, True, True)
                want = ext.flip_qkv(q, k, v, val, bits, window, True, True, True)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, rtol=0, atol=atol)


def test_diagonal_dp_rejects_long_streams():
    ext = _native_cpu()
    x = torch.zeros(1, 513, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="T must be <= 512"):
        ext.flip_dp_host(x, x, x, torch.zeros(1, 513, 3, dtype=torch.float64), 1, 0, True, True, False, False)


# ------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [1, 4])
def test_cuda_flip_equals_cpu(bits):
    ext_cpu = _native_cpu()
    ext_cuda = G.native_flip_cuda()
    generator = torch.Generator().manual_seed(bits)
    stream = torch.cuda.current_stream().cuda_stream
    # T <= 512 runs the warp-per-stream diagonal DP (every lane count 1..16), 600 the automaton
    shapes = ((30, 20), (64, 37), (40, 128), (12, 200), (9, 300), (5, 600))
    for (S, T), kind in itertools.product(shapes, ("random", "constant", "periodic")):
        x = _streams(kind, S, T, bits, generator)
        q, k, v = (torch.randint(0, 2**bits, (S, T), generator=generator) for _ in range(3))
        k[:4] = 0
        val = torch.randn(S, T, 2**bits + 1, dtype=torch.float64, generator=generator)
        for window in (T, 5):
            torch.testing.assert_close(
                ext_cuda.flip_token(x.cuda(), val.cuda(), bits, window, stream).cpu(),
                ext_cpu.flip_token(x, val, bits, window), rtol=0, atol=1e-12)
            got = ext_cuda.flip_qkv(q.cuda(), k.cuda(), v.cuda(), val.cuda(), bits, window, True, True, True, stream)
            want = ext_cpu.flip_qkv(q, k, v, val, bits, window, True, True, True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g.cpu(), w, rtol=0, atol=1e-12)
        got = ext_cuda.retrieval(q.cuda(), k.cuda(), 2**bits, stream).cpu()
        assert torch.equal(got, ext_cpu.retrieval(q, k, 2**bits))


@pytest.mark.gpu
def test_cuda_layer_gradients_equal_cpu():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 33, 8, generator=generator)
    emb0, emb1 = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    grad_out = torch.randn(4, 33, 8, generator=generator)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_(True)
        e0, e1 = emb0.to(device).requires_grad_(True), emb1.to(device).requires_grad_(True)
        out = G.rosa_channel(xd, G.channel_decode_table(e0, e1, 4, "symbol0"), 4, G.EstimatorConfig())
        results.append([t.cpu() for t in (out, *torch.autograd.grad(out, (xd, e0, e1), grad_out.to(device)))])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [1, 4])
def test_cuda_value_estimator_equals_cpu_without_host_syncs(bits):
    from heron.layers.rosa import ROSAQKV

    generator = torch.Generator().manual_seed(bits)
    q = torch.randn(4, 64, 16, generator=generator)
    qs, ks = (G.pack_symbols(t.cuda(), bits) for t in (q, q.roll(3, dims=1)))  # long matches
    for query, key in ((qs, ks), (ks, ks)):  # QKV and token kernels against the retrieval kernel
        want = G.retrieval_indices(G._to_streams(query), G._to_streams(key), bits)
        assert torch.equal(G._to_streams(G._retrieve(query, key, bits)), want)

    torch.manual_seed(0)
    layer = ROSAQKV(32, bits=bits, estimator="value", qk_init="tied")
    x = torch.randn(3, 48, 32, generator=generator)
    results = []
    for device in ("cpu", "cuda"):
        layer = layer.to(device)
        # A fresh leaf per device: x.to("cpu") would be x itself, made a leaf needing a gradient,
        # and the CUDA copy's backward would then send its gradient to the host (a sync).
        xd = x.to(device, copy=True).requires_grad_(True)
        for _ in range(2):  # warm up: build the kernels, fill the constant cache
            layer(xd).square().sum().backward()
        layer.zero_grad(set_to_none=True)
        # The sync debug mode raises on every synchronising torch call (.item(), copies to the
        # host, nonzero, ...). A profiler would also record its own start/stop synchronisations.
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = layer(xd)
            out.square().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results.append([t.detach().to("cpu", copy=True) for t in (out, *(p.grad for p in layer.parameters()))])
    # float32 sums in another order (the CUDA scatter-adds): the estimator's 1 / max(|v|, tau)
    # terms reach 500 and cancel, so the parameters' summed gradients (~10) agree to ~3e-4 only
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(b.abs().max())))


# ------------------------------------------------------------------------------------------
# max_gain: the estimated input gradient bounded relative to the output gradient


def _qkv_grads(config, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    # pre-threshold values near 0 (|x| << 1): the 1 / max(|x|, tau) factor makes the gain large
    q, k, v = (scale * torch.randn(2, 24, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    table = G.qkv_decode_table(torch.ones(8, dtype=torch.float64), 1, "symbol0")
    grad_out = torch.randn(2, 24, 8, generator=generator, dtype=torch.float64)
    out = G.rosa_qkv_channels(q, k, v, table, 1, config)
    return torch.autograd.grad(out, (q, k, v), grad_out), grad_out


@pytest.mark.parametrize("estimator", ["flip", "window", "value"])
def test_max_gain_bounds_the_qkv_gradient_and_keeps_its_direction(estimator):
    free, grad_out = _qkv_grads(G.EstimatorConfig(estimator, window=4), scale=1e-2)
    free_norm = torch.stack([g.norm() for g in free]).norm()
    assert free_norm > 10 * grad_out.norm()  # the unbounded estimator amplifies (what compounds)
    bounded, _ = _qkv_grads(G.EstimatorConfig(estimator, window=4, max_gain=0.5), scale=1e-2)
    bounded_norm = torch.stack([g.norm() for g in bounded]).norm()
    torch.testing.assert_close(bounded_norm, 0.5 * grad_out.norm(), rtol=1e-6, atol=0)
    factor = bounded_norm / free_norm
    for b, f in zip(bounded, free):  # one common factor: the spec's direction is kept
        torch.testing.assert_close(b, f * factor, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("estimator", ["flip", "window"])
def test_max_gain_bounds_what_shared_keys_receive(estimator):
    """k is q (rosa_qk_init="shared"): the bound holds on q's whole gradient, not on its query and
    key parts apart (their sum could exceed it by up to sqrt(2), compounding over the layers)."""
    generator = torch.Generator().manual_seed(8)
    table = G.qkv_decode_table(torch.ones(8, dtype=torch.float64), 1, "symbol0")
    for _ in range(5):
        q = (1e-2 * torch.randn(2, 24, 8, generator=generator, dtype=torch.float64)).requires_grad_(True)
        v = torch.randn(2, 24, 8, generator=generator, dtype=torch.float64).requires_grad_(True)
        grad_out = torch.randn(2, 24, 8, generator=generator, dtype=torch.float64)
        config = G.EstimatorConfig(estimator, window=4, max_gain=1.0)
        grad_q, grad_v = torch.autograd.grad(G.rosa_qkv_channels(q, q, v, table, 1, config), (q, v), grad_out)
        assert torch.stack([grad_q.norm(), grad_v.norm()]).norm() <= grad_out.norm() * (1 + 1e-9)


def test_max_gain_leaves_small_gradients_unchanged():
    free, grad_out = _qkv_grads(G.EstimatorConfig("window", window=4))
    gain = float(torch.stack([g.norm() for g in free]).norm() / grad_out.norm())
    bounded, _ = _qkv_grads(G.EstimatorConfig("window", window=4, max_gain=2 * gain))
    for b, f in zip(bounded, free):
        assert torch.equal(b, f)


def test_max_gain_bounds_the_channel_gradient():
    generator = torch.Generator().manual_seed(3)
    x = (1e-2 * torch.randn(3, 20, 8, generator=generator)).requires_grad_(True)
    table = G.channel_decode_table(torch.full((8,), -1.0), torch.ones(8), 1, "zero")
    grad_out = torch.randn(3, 20, 8, generator=generator)
    (free,) = torch.autograd.grad(G.rosa_channel(x, table, 1, G.EstimatorConfig("flip")), x, grad_out)
    (bounded,) = torch.autograd.grad(G.rosa_channel(x, table, 1, G.EstimatorConfig("flip", max_gain=1.0)), x, grad_out)
    assert free.norm() > grad_out.norm()
    torch.testing.assert_close(bounded.norm(), grad_out.norm(), rtol=1e-5, atol=0)
    torch.testing.assert_close(bounded, free * (bounded.norm() / free.norm()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_max_gain_validation(bad):
    with pytest.raises(ValueError, match="max_gain"):
        G.EstimatorConfig("window", max_gain=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [1, 4])
def test_cuda_flip_at_the_dp_limit_equals_cpu(bits):
    """T = 512 exactly (the longest stream of the warp-per-stream DP kernel, the throughput
    benchmark's ctx) with the window estimator's window 16 and many streams: the shapes the
    shorter cases above do not reach."""
    ext_cpu = _native_cpu()
    ext_cuda = G.native_flip_cuda()
    generator = torch.Generator().manual_seed(512 + bits)
    stream = torch.cuda.current_stream().cuda_stream
    S, T = 96, 512
    q, k, v = (torch.randint(0, 2**bits, (S, T), generator=generator) for _ in range(3))
    k[:8] = q[:8]  # tied streams: long matches
    val = torch.randn(S, T, 2**bits + 1, dtype=torch.float64, generator=generator)
    for window in (16, T):
        got = ext_cuda.flip_qkv(q.cuda(), k.cuda(), v.cuda(), val.cuda(), bits, window, True, True, True, stream)
        want = ext_cpu.flip_qkv(q, k, v, val, bits, window, True, True, True)
        for g, w in zip(got, want):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=1e-12)


def test_max_gain_factor_keeps_float64_precision():
    # The bound's factor is computed in float64 for float64 gradients (a float32 factor would put
    # a 1e-7 relative error into every bounded float64 gradient) and in float32 for bf16 ones.
    generator = torch.Generator().manual_seed(11)
    grads = [torch.randn(3, 5, 8, generator=generator, dtype=torch.float64) * 10, None]
    grad_out = torch.randn(3, 5, 8, generator=generator, dtype=torch.float64)
    (bounded, missing) = G._bound_gain(grads, grad_out, 1.0)
    expected = grads[0] * (grad_out.norm() / grads[0].norm())
    assert missing is None
    assert torch.allclose(bounded, expected, rtol=1e-13, atol=0)
    low = G._bound_gain([grads[0].bfloat16()], grad_out.bfloat16(), 1.0)[0]
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.double(), expected, rtol=2e-2)


def test_rosa_functions_return_no_no_op_conversion():
    # torch 2.11 loses the gradient of a traced autograd.Function that returns out.to(out.dtype)
    # (tools/torch_function_to_repro.py): the ROSA Functions convert only when the dtype differs
    out = torch.randn(3, 4)
    assert G._as_dtype(out, torch.float32) is out
    converted = G._as_dtype(out, torch.bfloat16)
    assert converted.dtype == torch.bfloat16 and torch.equal(converted, out.to(torch.bfloat16))

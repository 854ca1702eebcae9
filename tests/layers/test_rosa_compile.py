"""The ROSA layers trace into one torch.compile graph (no graph break) and give the eager
outputs and gradients: the engine and the estimator kernels are torch.library custom ops
(``heron::rosa_qkv_symbols``, ``heron::rosa_flip_deltas``, ``heron::rosa_retrieval_indices``).

Traced with ``backend="aot_eager"`` (dynamo + AOTAutograd, the same graphs Inductor would get)
so the tests stay fast; the GPU benchmark (benchmarks/train_step.py --compile) runs Inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch

from heron.layers.rosa import ROSABits, ROSAQKV
from heron.ops.rosa.grad import EstimatorConfig, flip_deltas, pack_symbols, retrieval_indices


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each layer's forward may be compiled only 8 times (dynamo's recompile limit per code object,
    # a hard failure under fullgraph): start every test from an empty cache, so that the graphs
    # of tests run before these (e.g. tests/train/test_compile.py first) do not count.
    torch._dynamo.reset()
    yield


def _compare(layer: torch.nn.Module, x: torch.Tensor) -> None:
    traced_layer = copy.deepcopy(layer)
    traced = torch.compile(traced_layer, backend="aot_eager", fullgraph=True)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    results = []
    for module in (layer, traced):
        inp = x.detach().clone().requires_grad_()
        out = module(inp)
        params = [p for p in module.parameters() if p.requires_grad] if module is layer else \
            [p for p in traced_layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad((out * grad_out).sum(), [inp] + params)
        results.append((out.detach(), grads))
    (eager_out, eager_grads), (traced_out, traced_grads) = results
    torch.testing.assert_close(traced_out, eager_out, rtol=0, atol=0)
    assert any(g.abs().sum() > 0 for g in eager_grads[:1]), "the input gradient should not vanish"
    for eager_grad, traced_grad in zip(eager_grads, traced_grads):
        torch.testing.assert_close(traced_grad, eager_grad, rtol=1e-6, atol=1e-6)


def _input(C: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 24, C, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("estimator", ["value", "window", "flip"])
def test_rosa_qkv_block_compiles_to_one_graph_with_eager_gradients(estimator, bits):
    torch.manual_seed(0)
    layer = ROSAQKV(16, bits=bits, estimator=estimator, tau=0.1, window=4, qk_init="tied", max_gain=2.0)
    _compare(layer, _input(16))


@pytest.mark.parametrize("estimator", ["value", "flip"])
def test_shared_keys_compile_to_one_graph_with_eager_gradients(estimator, monkeypatch):
    # qk_init="shared": k is q, so the engine runs token ROSA; the identity must survive tracing
    import heron.ops.rosa as rosa_package

    module = __import__("sys").modules["heron.ops.rosa"]
    calls = []
    original = module._dispatch

    def spy(q, k, v, largest_key, backend="auto"):
        calls.append(k is q)
        return original(q, k, v, largest_key, backend)

    monkeypatch.setattr(module, "_dispatch", spy)
    torch.manual_seed(2)
    layer = ROSAQKV(16, bits=4, estimator=estimator, tau=0.1, window=4, qk_init="shared")
    _compare(layer, _input(16, seed=3))
    assert calls and all(calls), "shared keys should reach the engine as token ROSA (k is q)"
    assert rosa_package is not None


@pytest.mark.parametrize("estimator", ["value", "window"])
def test_channel_rosa_layer_compiles_to_one_graph_with_eager_gradients(estimator):
    torch.manual_seed(1)
    layer = ROSABits(16, bits=4, estimator=estimator, tau=0.1, window=4)
    with torch.no_grad():  # distinct learned vectors, so every table entry matters
        layer.emb0.normal_()
        layer.emb1.normal_()
    _compare(layer, _input(16, seed=2))


def test_rosa_custom_ops_pass_opcheck():
    # schema, fake (meta) implementation and aliasing of the ops the compiled graphs call
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 2, (2, 20, 3), generator=g)
    k = torch.randint(0, 2, (2, 20, 3), generator=g)
    v = torch.randint(0, 2, (2, 20, 3), generator=g)
    torch.library.opcheck(torch.ops.heron.rosa_qkv_symbols.default, (q, k, v, 1, False))
    torch.library.opcheck(torch.ops.heron.rosa_qkv_symbols.default, (q, q, q, 1, True))
    streams_q, streams_k = q[:, :, 0].contiguous(), k[:, :, 0].contiguous()
    torch.library.opcheck(torch.ops.heron.rosa_retrieval_indices.default, (streams_q, streams_k, 1))
    val = torch.randn(2, 20, 3, generator=g, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.heron.rosa_flip_deltas.default, (streams_q, streams_k, streams_q, val, 1, 5, False, True, False, True)
    )
    torch.library.opcheck(
        torch.ops.heron.rosa_flip_deltas.default, (streams_q, streams_q, streams_q, val, 1, 5, True, True, True, True)
    )
    # the value estimator's input gradient: [B, T, C] float input of 4-bit groups (C = 8, G = 2)
    x = torch.randn(2, 20, 8, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 20, 8, generator=g, dtype=torch.float64)
    table = torch.randn(17, 8, generator=g, dtype=torch.float64)
    retrieved = torch.randint(-1, 20, (2, 20, 2), generator=g)
    for max_gain in (0.0, 0.5):
        torch.library.opcheck(torch.ops.heron.rosa_value_input_grad.default,
                              (grad_out, table, retrieved, pack_symbols(x, 4), x, 4, 0.1, max_gain))


def test_op_wrappers_keep_their_python_results():
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 4, (3, 17), generator=g)
    k = torch.randint(0, 4, (3, 17), generator=g)
    val = torch.randn(3, 17, 5, generator=g, dtype=torch.float64)
    dq, dk, dv = flip_deltas(q, k, q, val, 2, 17, token=False, want=(True, False, True))
    assert dk is None and dq.shape == dv.shape == (3, 17, 2)
    (dt,) = flip_deltas(q, q, q, val, 2, 17, token=True)
    assert dt.shape == (3, 17, 2)
    from heron.ops.rosa import rosa_qkv

    positions = torch.arange(17).expand(3, 17).contiguous()
    torch.testing.assert_close(retrieval_indices(q, k, 2), rosa_qkv(q, k, positions))
    assert EstimatorConfig("window", 0.1, 4).window_for(17) == 4

"""The split WKV7 backward (heron.ops.wkv7.split_backward) on the CPU: its math against autograd
through the float64 reference, and its Triton kernel (in Triton's interpreter) against the
PyTorch form of the same pass."""

from __future__ import annotations

import pytest
import torch

from heron.ops.wkv7 import split_backward, wkv7_reference

from .wkv7_inputs import make_inputs, relative_l2


def _autograd_gradients(inputs, grad_y, grad_final):
    leaves = [x.clone().requires_grad_() for x in inputs]
    y, final_state = wkv7_reference(*leaves)
    return torch.autograd.grad((y * grad_y).sum() + (final_state * grad_final).sum(), leaves)


def _autograd_gradients_of(leaves, state, grad_y, grad_final):
    y, final_state = wkv7_reference(*leaves, state)
    return torch.autograd.grad((y * grad_y).sum() + (final_state * grad_final).sum(), leaves)


@pytest.mark.parametrize("B,T,H,N,chunk", [(2, 37, 2, 8, 16), (1, 64, 1, 16, 16), (2, 5, 1, 4, 4),
                                           (1, 1, 1, 4, 8), (1, 65, 2, 16, 32)])
def test_split_backward_equals_autograd(B, T, H, N, chunk):
    inputs = make_inputs(B, T, H, N, seed=T + N)
    generator = torch.Generator().manual_seed(1)
    grad_y = torch.randn(B, T, H, N, generator=generator, dtype=torch.float64)
    grad_final = torch.randn(B, H, N, N, generator=generator, dtype=torch.float64)
    expected = _autograd_gradients(inputs, grad_y, grad_final)
    got = split_backward.split_backward_reference(*inputs, grad_y, grad_final, chunk)
    for name, g, e in zip(("r", "w", "k", "v", "a", "b", "state"), got, expected):
        assert relative_l2(g, e) < 1e-12, name


def test_split_backward_with_vanishing_decay():
    # exp(w) = e^5 on some steps: a decay of ~1e-64, where dividing by cumulative decays overflows;
    # the PyTorch pass forms every ratio as exp(difference <= 0)
    inputs = list(make_inputs(1, 40, 2, 8, seed=3))
    inputs[1] = inputs[1].clone()
    inputs[1][:, 10:13] = 5.0
    inputs[1][:, 30, :, :3] = 9.0
    grad_y = torch.randn(1, 40, 2, 8, dtype=torch.float64)
    grad_final = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    expected = _autograd_gradients(inputs, grad_y, grad_final)
    got = split_backward.split_backward_reference(*inputs, grad_y, grad_final, 16)
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all() and relative_l2(g, e) < 1e-8


def _pass2_inputs(B, T, H, N, chunk, dtype, seed, strong_decay=0.0, with_state=False, strong_columns=None):
    r, w, k, v, a, b, state = make_inputs(B, T, H, N, dtype=torch.float32, seed=seed)
    if strong_decay:
        w = w.clone()
        w[:, 3:6, :, slice(strong_columns)] = strong_decay
    generator = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(B, T, H, N, generator=generator)
    grad_final = torch.randn(B, H, N, N, generator=generator)
    inputs = [x.to(dtype) for x in (r, w, k, v, a, b)]
    grad_y = grad_y.to(dtype)
    _, _, removal, states = split_backward.forward_states_reference(*inputs, state, chunk)
    grad_b_dot, _, future_grads, _ = split_backward.state_gradients_reference(
        *inputs[:3], *inputs[4:], grad_y, grad_final, chunk)
    args = inputs + [grad_y, removal.float(), grad_b_dot.float(), states.float(), future_grads.float()]
    return (args, state, grad_final) if with_state else args


triton = pytest.importorskip("triton")


@pytest.mark.parametrize("B,T,H,N,chunk", [(1, 37, 2, 16, 16), (2, 70, 1, 32, 32), (1, 20, 1, 16, 64), (1, 40, 1, 64, 32)])
@pytest.mark.parametrize("path", ["factored", "stepped"])
def test_triton_pass_equals_the_pytorch_pass(B, T, H, N, chunk, path):
    args = _pass2_inputs(B, T, H, N, chunk, torch.float32, seed=T)
    expected = split_backward.chunk_gradients_torch(*(x.double() for x in args), chunk)
    got = split_backward.chunk_gradients_triton(*args, chunk, max_log_decay=60.0 if path == "factored" else -1.0)
    for name, g, e in zip(("r", "w", "k", "a", "b"), got, expected):
        assert g.dtype == torch.float32 and relative_l2(g, e) < 2e-6, name


@pytest.mark.parametrize("decay_input", [3.0, 30.0])
def test_triton_pass_steps_through_chunks_where_decay_vanishes(decay_input):
    # exp(w) = 20 (decay 2e-9) and exp(30) (decay exactly 0 in float32) on three steps: against
    # autograd through the float64 reference (the PyTorch pass's decay gradient, from the scaling
    # identity, has only absolute accuracy at such steps). Only the first of the chunk's two
    # 16-column blocks has them: the stacked kernel must leave (mark) the whole chunk, and the
    # stepped kernel take every column of it.
    args, state, grad_final = _pass2_inputs(1, 40, 1, 32, 16, torch.float32, seed=5, strong_decay=decay_input,
                                            with_state=True, strong_columns=10)
    got = split_backward.chunk_gradients_triton(*args, 16)
    leaves = [x.double().requires_grad_() for x in args[:6]]
    expected = _autograd_gradients_of(leaves, state.double(), args[6].double(), grad_final.double())
    for name, g, e in zip(("r", "w", "k", "a", "b"), got, [expected[i] for i in (0, 1, 2, 4, 5)]):
        assert torch.isfinite(g).all() and relative_l2(g, e) < 1e-5, name


def test_triton_pass_bf16_inputs_and_outputs():
    args = _pass2_inputs(1, 33, 1, 16, 16, torch.bfloat16, seed=9)
    expected = split_backward.chunk_gradients_torch(*(x.double() for x in args), 16)
    got = split_backward.chunk_gradients_triton(*args, 16)
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16 and relative_l2(g, e) < 8e-3


def test_triton_pass_rejects_bad_saved_tensors():
    args = _pass2_inputs(1, 20, 1, 16, 16, torch.float32, seed=2)
    with pytest.raises(ValueError, match="states must be float32"):
        split_backward.chunk_gradients_triton(*args[:9], args[9][:, :, :-1], args[10], 16)
    with pytest.raises(ValueError, match="future_grads must be float32"):
        split_backward.chunk_gradients_triton(*args[:10], args[10].double(), 16)
    with pytest.raises(ValueError, match="powers of two"):
        split_backward.chunk_gradients_triton(*args, 24)


def test_triton_resources_tool_reports_a_build():
    # tools/triton_resources.py compiles for sm_90 without a GPU (in its own process: triton must be
    # imported without the interpreter) and reports ptxas's registers and spills
    import os
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "triton_resources.py"
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(tool), "--kernel", "stepped_kernel", "--head-size", "16",
                          "--chunk", "16", "--warps", "4"], capture_output=True, text=True, env=environment,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stepped_kernel N=16 chunk=16 columns=16 warps=4 stages=3" in run.stdout and "registers" in run.stdout


def test_split_chunk_length_must_span_whole_segments(monkeypatch):
    from heron.ops.wkv7 import cuda as wkv7_cuda

    assert [wkv7_cuda.split_checkpoint_stride(n) for n in (16, 32, 64, 128)] == [2, 2, 2, 8]
    assert wkv7_cuda.split_checkpoint_stride(128, torch.float32) == 4
    for bad in (16, 40):  # one segment: indistinguishable from the sequential scheme; not a multiple
        monkeypatch.setattr(wkv7_cuda, "SPLIT_CHUNK_LENGTH", bad)
        with pytest.raises(ValueError, match="SPLIT_CHUNK_LENGTH"):
            wkv7_cuda.split_checkpoint_stride(64)


def test_backward_scheme_setting(monkeypatch):
    # "auto" takes the split backward for 16-bit inputs at every head size (where it was measured
    # faster; float32 needs exact products), and a misspelt setting is an error rather than a
    # silent fallback
    from heron.ops.wkv7 import cuda as wkv7_cuda

    monkeypatch.setattr(wkv7_cuda, "BACKWARD", "auto")
    assert all(wkv7_cuda.uses_split_backward((2, 512, 4, n)) == wkv7_cuda.split_backward.triton_available()
               for n in (16, 32, 64, 128))
    assert wkv7_cuda.uses_split_backward((2, 512, 4, 32), torch.float16) == wkv7_cuda.split_backward.triton_available()
    assert not wkv7_cuda.uses_split_backward((2, 512, 4, 64), torch.float32)
    assert not wkv7_cuda.uses_split_backward((1, 2**20, 32, 64))  # T * H * N = 2**31: past int32 offsets
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", "split")
    assert wkv7_cuda.uses_split_backward((2, 512, 4, 16))
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", "sequential")
    assert not wkv7_cuda.uses_split_backward((2, 512, 4, 128))
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", "splt")
    with pytest.raises(ValueError, match="BACKWARD must be"):
        wkv7_cuda.uses_split_backward((2, 512, 4, 64))

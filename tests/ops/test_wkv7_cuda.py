"""WKV7 CUDA kernels vs the float64 reference (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from heron.ops.wkv7 import wkv7, wkv7_reference
from heron.ops.wkv7 import cuda as wkv7_cuda
from heron.ops.wkv7 import split_backward

from .wkv7_inputs import make_inputs, relative_l2

pytestmark = pytest.mark.gpu

TOLERANCES = {  # (outputs and final state, every gradient)
    torch.bfloat16: (3e-3, 5e-3),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-3, 2e-3),
}
NAMES = ("y", "state", "dr", "dw", "dk", "dv", "da", "db", "dstate0")


def _errors(B, T, H, N, dtype, seed):
    device = "cuda"
    inputs = make_inputs(B, T, H, N, dtype=torch.float64, device=device, seed=seed)
    leaves = [x.to(dtype).requires_grad_() for x in inputs[:6]]
    leaves.append(inputs[6].float().requires_grad_())
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    grad_y = torch.randn(B, T, H, N, generator=generator, device=device, dtype=torch.float64)
    grad_state = torch.randn(B, H, N, N, generator=generator, device=device, dtype=torch.float64)

    y, final_state = wkv7(*leaves[:6], leaves[6], return_state=True, backend="cuda")
    assert y.dtype == dtype and final_state.dtype == torch.float32
    grads = torch.autograd.grad(
        (y.float() * grad_y.float()).sum() + (final_state * grad_state.float()).sum(), leaves
    )
    # The reference sees exactly the rounded inputs the kernel saw.
    reference_leaves = [x.detach().double().requires_grad_() for x in leaves]
    y_ref, state_ref = wkv7_reference(*reference_leaves)
    grads_ref = torch.autograd.grad(
        (y_ref * grad_y).sum() + (state_ref * grad_state).sum(), reference_leaves
    )
    values = [relative_l2(y, y_ref), relative_l2(final_state, state_ref)]
    values += [relative_l2(g, g_ref) for g, g_ref in zip(grads, grads_ref)]
    return dict(zip(NAMES, values))


@pytest.fixture(params=[(1, "sequential"), (2, "sequential"), (4, "sequential"), (1, "split"), (2, "split"),
                        (4, "split")],
                ids=["rows1", "rows2", "rows4", "split-rows1", "split-rows2", "split-rows4"])
def forward_rows(request, monkeypatch):
    """Every kernel layout (one, two or four state rows per lane group in the forward and pass 1; one
    or two columns in the sequential backward), both backward schemes."""
    rows, scheme = request.param
    monkeypatch.setattr(wkv7_cuda, "FORWARD_ROWS_PER_THREAD", rows)
    monkeypatch.setattr(wkv7_cuda, "BACKWARD_COLUMNS_PER_THREAD", min(rows, 2))
    monkeypatch.setattr(wkv7_cuda, "STATE_GRADIENT_ROWS_PER_THREAD", rows)
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", scheme)
    return rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("N,T", [(16, 1024), (32, 777), (64, 256), (64, 1000), (128, 512)])
def test_cuda_matches_float64_reference(N, T, dtype, forward_rows):
    errors = _errors(2, T, 4, N, dtype, seed=N + T)
    output_tolerance, grad_tolerance = TOLERANCES[dtype]
    print(f"N={N} T={T} {dtype}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    assert errors["y"] < output_tolerance and errors["state"] < output_tolerance, errors
    assert all(errors[name] < grad_tolerance for name in NAMES[2:]), errors


@pytest.mark.parametrize("N", [32, 64])
def test_cuda_float16_inputs(N):
    errors = _errors(2, 300, 4, N, torch.float16, seed=5)
    output_tolerance, grad_tolerance = TOLERANCES[torch.float16]
    print(f"N={N} T=300 torch.float16: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    assert errors["y"] < output_tolerance and errors["state"] < output_tolerance, errors
    assert all(errors[name] < grad_tolerance for name in NAMES[2:]), errors


def test_segment_length_matches_the_kernels():
    extension = wkv7_cuda.load()
    for head_size in wkv7_cuda.SUPPORTED_HEAD_SIZES:
        assert extension.segment_length(head_size) == wkv7_cuda.segment_length(head_size)


@pytest.mark.parametrize("T", [1, 2, 15, 17])
def test_cuda_short_sequences_and_chaining(T, forward_rows):
    B, H, N = 5, 3, 64
    inputs = [x.float() for x in make_inputs(B, 2 * T, H, N, device="cuda", seed=T)]
    y_ref, s_ref = wkv7_reference(*[x.double() for x in inputs])
    first = [x[:, :T] for x in inputs[:6]]
    second = [x[:, T:] for x in inputs[:6]]
    y1, s1 = wkv7(*first, inputs[6], return_state=True)
    y2, s2 = wkv7(*second, s1, return_state=True)
    assert relative_l2(torch.cat([y1, y2], 1), y_ref) < 1e-5
    assert relative_l2(s2, s_ref) < 1e-5


@pytest.mark.parametrize("scheme", ["sequential", "split"])
def test_inputs_off_16_byte_alignment(scheme, monkeypatch):
    # The forward and pass 1 read the step vectors in 16-byte pieces; contiguous views that start
    # one element into a buffer must give the same numbers as aligned copies.
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", scheme)
    B, T, H, N = 2, 50, 2, 64
    inputs = make_inputs(B, T, H, N, device="cuda", seed=12)

    def shifted(x):
        buffer = torch.empty(x.numel() + 1, dtype=torch.bfloat16, device="cuda")
        view = buffer[1:].view(x.shape)
        view.copy_(x)
        return view

    odd = [shifted(x).requires_grad_() for x in inputs[:6]]
    even = [x.detach().clone().requires_grad_() for x in odd]
    assert odd[0].data_ptr() % 16 and odd[0].is_contiguous()
    grad_y = torch.randn(B, T, H, N, device="cuda", dtype=torch.bfloat16)
    y_odd, y_even = (wkv7(*xs, backend="cuda") for xs in (odd, even))
    assert torch.equal(y_odd, y_even)
    for g_odd, g_even in zip(torch.autograd.grad(y_odd, odd, grad_y), torch.autograd.grad(y_even, even, grad_y)):
        assert torch.equal(g_odd, g_even)


def test_zero_decay_and_no_state():
    B, T, H, N = 2, 40, 2, 32
    inputs = [x.float().requires_grad_() for x in make_inputs(B, T, H, N, device="cuda", seed=7)[:6]]
    with torch.no_grad():
        inputs[1][:, ::3] = 30.0  # decay exactly 0 on every third step
    y, s = wkv7(*inputs, return_state=True, backend="cuda")
    grads = torch.autograd.grad(y.square().sum() + s.sum(), inputs)
    reference = [x.detach().double().requires_grad_() for x in inputs]
    y_ref, s_ref = wkv7_reference(*reference)
    grads_ref = torch.autograd.grad(y_ref.square().sum() + s_ref.sum(), reference)
    assert relative_l2(y, y_ref) < 1e-4 and relative_l2(s, s_ref) < 1e-4
    for g, g_ref in zip(grads, grads_ref):
        assert torch.isfinite(g).all() and relative_l2(g, g_ref) < 1e-4


def test_unsupported_head_size_is_rejected_and_auto_falls_back():
    inputs = [x.float() for x in make_inputs(1, 20, 1, 24, device="cuda", seed=8)]
    with pytest.raises(ValueError, match="head sizes"):
        wkv7(*inputs[:6], backend="cuda")
    y = wkv7(*inputs[:6], inputs[6])  # auto -> chunked PyTorch on the GPU
    y_ref, _ = wkv7_reference(*[x.double() for x in inputs])
    assert relative_l2(y, y_ref) < 1e-4


@pytest.mark.parametrize("scheme", ["sequential", "split"])
def test_cuda_op_under_torch_compile(scheme, monkeypatch):
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", scheme)
    inputs = [x.to(torch.bfloat16).requires_grad_() for x in make_inputs(2, 64, 2, 64, device="cuda", seed=9)[:6]]

    def loss(*xs):
        return wkv7(*xs).float().square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager = torch.autograd.grad(loss(*inputs), inputs)
    traced = torch.autograd.grad(compiled(*inputs), inputs)
    for g, g_ref in zip(traced, eager):
        assert relative_l2(g, g_ref) < 1e-6


def _backward_with(inputs, grad_y, columns, max_log_growth):
    """The kernels' gradients of (r, w, k, v, a, b, state) with a chosen backward rule."""
    y, final_state, removal, checkpoints = wkv7_cuda.cuda_forward(*inputs, True, 2, 1)
    return wkv7_cuda.cuda_backward(*inputs[:6], removal, checkpoints, grad_y, None, columns, max_log_growth)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("N,T", [(16, 300), (32, 200), (64, 333), (128, 100)])
def test_stepping_back_and_recomputing_agree(N, T, dtype):
    # Both backward rules against the float64 reference on the same rounded inputs: stepping
    # back through every segment (bound far above any segment's growth) and never (bound 0).
    B, H = 2, 3
    raw = make_inputs(B, T, H, N, dtype=torch.float64, device="cuda", seed=N * T)
    inputs = [x.to(dtype).contiguous() for x in raw[:6]] + [raw[6].float().contiguous()]
    grad_y = torch.randn(B, T, H, N, device="cuda", dtype=torch.float64).to(dtype)
    reference_leaves = [x.double().requires_grad_() for x in inputs]
    y_ref, _ = wkv7_reference(*reference_leaves)
    grads_ref = torch.autograd.grad((y_ref * grad_y.double()).sum(), reference_leaves)
    tolerance = TOLERANCES[dtype][1]
    for columns in (1, 2):
        for bound in (1e30, 0.0):
            grads = _backward_with(inputs, grad_y, columns, bound)
            errors = [relative_l2(g, g_ref) for g, g_ref in zip(grads, grads_ref)]
            print(f"N={N} T={T} {dtype} columns={columns} bound={bound}: " + " ".join(f"{e:.2e}" for e in errors))
            assert all(e < tolerance for e in errors), (columns, bound, errors)


@pytest.mark.parametrize("scheme", ["split", "sequential"])
def test_strong_decay_segments_fall_back_to_recomputing(scheme, monkeypatch):
    # Segments whose decay nearly vanishes (exp(w) = 20 on some steps) would amplify rounding
    # errors by e**20 per step if the backward divided by the decay; the default rule must
    # recompute those segments and step back through the others, and stay exact in fp32. The
    # split backward's chunks with such steps take the Triton kernel's per-pair path.
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", scheme)
    B, T, H, N = 2, 160, 2, 64
    inputs = [x.float().requires_grad_() for x in make_inputs(B, T, H, N, device="cuda", seed=11)[:6]]
    with torch.no_grad():
        inputs[1][:, 16:32] = 3.0  # the whole second segment
        inputs[1][:, 70:72, :, :5] = 3.0  # two steps of five columns in the fifth
    y, s = wkv7(*inputs, return_state=True, backend="cuda")
    grads = torch.autograd.grad(y.square().sum() + s.sum(), inputs)
    reference = [x.detach().double().requires_grad_() for x in inputs]
    y_ref, s_ref = wkv7_reference(*reference)
    grads_ref = torch.autograd.grad(y_ref.square().sum() + s_ref.sum(), reference)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.isfinite(g).all() and relative_l2(g, g_ref) < 1e-4


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("N,T", [(16, 100), (32, 77), (64, 200), (128, 70)])
def test_split_backward_passes_match_their_references(N, T, rows):
    # Each stage of the split backward on its own, float32, against the step-by-step references of
    # heron.ops.wkv7.split_backward fed the same saved tensors, for every lane layout of the forward
    # and pass 1.
    B, H = 2, 3
    raw = make_inputs(B, T, H, N, dtype=torch.float64, device="cuda", seed=N + 3 * T)
    r, w, k, v, a, b = (x.float().contiguous() for x in raw[:6])
    # decay e^-20 per step on a few steps of three columns in two heads
    w[:, 20:22, 0, :3] = 3.0
    w[:, 40:43, 1, :3] = 3.0
    state = raw[6].float().contiguous()
    grad_y = torch.randn(B, T, H, N, device="cuda")
    grad_final = torch.randn(B, H, N, N, device="cuda")
    stride = wkv7_cuda.split_checkpoint_stride(N, r.dtype)
    chunk = stride * wkv7_cuda.segment_length(N)

    def double(*xs):
        return [x.double() for x in xs]

    _, _, removal, checkpoints = wkv7_cuda.cuda_forward(r, w, k, v, a, b, state, True, rows, stride)
    _, _, removal_ref, states_ref = split_backward.forward_states_reference(*double(r, w, k, v, a, b, state), chunk)
    assert relative_l2(removal, removal_ref) < 1e-5 and relative_l2(checkpoints, states_ref) < 1e-5
    pass1 = wkv7_cuda.cuda_state_gradients(r, w, k, a, b, grad_y, grad_final, rows, stride)
    pass1_ref = split_backward.state_gradients_reference(*double(r, w, k, a, b, grad_y, grad_final), chunk)
    for got, want in zip(pass1, pass1_ref):
        assert relative_l2(got, want) < 1e-5
    pass2_ref = split_backward.chunk_gradients_torch(
        *double(r, w, k, v, a, b, grad_y, removal, pass1[0], checkpoints, pass1[2]), chunk)
    pass2 = wkv7_cuda.chunk_gradients(r, w, k, v, a, b, grad_y, removal, pass1[0], checkpoints, pass1[2], chunk, 0)
    for got, want in zip(pass2, pass2_ref):
        assert relative_l2(got, want) < 1e-5


@pytest.mark.parametrize("scheme", ["sequential", "split"])
@pytest.mark.parametrize("used", ["y", "state"])
def test_gradients_when_one_output_is_unused(scheme, used, monkeypatch):
    # An output the loss does not use reaches the backward as None (autograd no longer fills zeros
    # for it, nor for the saved tensors the forward returns alongside): the gradients of both
    # schemes still match the reference, with y alone or the final state alone in the loss.
    monkeypatch.setattr(wkv7_cuda, "BACKWARD", scheme)
    inputs = make_inputs(2, 100, 2, 64, dtype=torch.float64, device="cuda", seed=31)
    leaves = [x.to(torch.bfloat16).requires_grad_() for x in inputs[:6]] + [inputs[6].float().requires_grad_()]
    reference = [x.detach().double().requires_grad_() for x in leaves]

    def loss(outputs):
        y, state = outputs
        return y.float().square().sum() if used == "y" else (state * state.detach().sign()).sum()

    grads = torch.autograd.grad(loss(wkv7(*leaves[:6], leaves[6], return_state=True, backend="cuda")), leaves,
                                allow_unused=True)
    expected = torch.autograd.grad(loss(wkv7_reference(*reference)), reference, allow_unused=True)
    for name, g, e in zip(NAMES[2:], grads, expected):
        if e is None:  # r reaches only y
            assert name == "dr" and used == "state" and (g is None or not g.any()), name
        else:
            assert relative_l2(g, e) < TOLERANCES[torch.bfloat16][1], name

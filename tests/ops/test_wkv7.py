"""WKV7 on CPU: chunked path vs the float64 reference, state chaining, step path, dispatch,
validation, fla converters and torch.compile."""

from __future__ import annotations


import pytest
import torch

from heron.ops.wkv7 import (
    fla_log_decay_to_w,
    state_from_fla,
    state_to_fla,
    w_to_fla_log_decay,
    wkv7,
    wkv7_chunked,
    wkv7_reference,
    wkv7_step,
)

from .wkv7_inputs import make_inputs, relative_l2

TOLERANCE = 1e-4


def _reference_with_grads(inputs, grad_y, grad_state):
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    y, final_state = wkv7_reference(*leaves)
    grads = torch.autograd.grad((y * grad_y).sum() + (final_state * grad_state).sum(), leaves)
    return y, final_state, grads


def _check_against_reference(B, T, H, N, *, seed=0, fn=None, inputs=None):
    inputs = inputs if inputs is not None else make_inputs(B, T, H, N, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_y = torch.randn(B, T, H, N, generator=generator, dtype=torch.float64)
    grad_state = torch.randn(B, H, N, N, generator=generator, dtype=torch.float64)

    # The fp32 run sees exactly the (already rounded) inputs the reference sees.
    leaves = [x.float().requires_grad_() for x in inputs]
    rounded = [x.detach().double() for x in leaves]
    y_ref, state_ref, grads_ref = _reference_with_grads(rounded, grad_y, grad_state)
    fn = fn or (lambda *xs: wkv7(*xs[:6], state=xs[6], return_state=True, backend="chunked"))
    y, final_state = fn(*leaves)
    assert y.dtype == torch.float32 and final_state.dtype == torch.float32
    grads = torch.autograd.grad(
        (y * grad_y.float()).sum() + (final_state * grad_state.float()).sum(), leaves
    )
    errors = {"y": relative_l2(y, y_ref), "state": relative_l2(final_state, state_ref)}
    for name, g, g_ref in zip(("r", "w", "k", "v", "a", "b", "state0"), grads, grads_ref):
        errors["d" + name] = relative_l2(g, g_ref)
    # Written so that a NaN error fails (NaN < TOLERANCE is False).
    assert all(error < TOLERANCE for error in errors.values()), errors
    return errors


@pytest.mark.parametrize("T", [1, 16, 37, 65])
@pytest.mark.parametrize("N", [16, 32, 64, 128])
def test_chunked_float32_matches_float64_reference(T, N):
    _check_against_reference(2, T, 2, N, seed=T * 1000 + N)


@pytest.mark.parametrize("shape", [(1, 5, 1, 8), (3, 29, 2, 24), (2, 50, 3, 7)])
def test_chunked_accepts_any_head_size(shape):
    _check_against_reference(*shape, seed=sum(shape))


@pytest.mark.parametrize("chunk_length", [1, 5, 16, 32, 64])
def test_chunk_length_does_not_change_the_result(chunk_length):
    fn = lambda *xs: wkv7_chunked(*xs, chunk_length=chunk_length)  # noqa: E731
    _check_against_reference(2, 70, 2, 16, seed=chunk_length, fn=fn)


def test_strong_decay_is_exact_and_finite():
    """Decays down to ~exp(-20) per step: the cumulative log-decay of a chunk reaches -300,
    which would overflow a factored exp(-g): the automatic choice and the forced pairwise form
    must both be exact and finite."""
    B, T, H, N = 2, 40, 2, 16
    r, w, k, v, a, b, state = make_inputs(B, T, H, N, seed=3)
    generator = torch.Generator().manual_seed(4)
    w = torch.rand(B, T, H, N, generator=generator, dtype=torch.float64) * 3.0
    # (A NaN anywhere fails the tolerance check, since NaN < tolerance is False.)
    _check_against_reference(B, T, H, N, inputs=(r, w, k, v, a, b, state))
    forced = lambda *xs: wkv7_chunked(*xs, force_pairwise=True)  # noqa: E731
    _check_against_reference(B, T, H, N, inputs=(r, w, k, v, a, b, state), fn=forced)


@pytest.mark.parametrize("a_lr", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("chunk_length", [16, 32])
def test_aligned_kk_directions_stay_exact(a_lr, chunk_length):
    """The same kk at every step with (almost) no decay: the within-chunk triangular system is
    then as ill-conditioned as it gets (a Neumann-series inverse loses everything here)."""
    B, T, H, N = 2, 64, 2, 16
    r, _, k, v, _, _, state = make_inputs(B, T, H, N, seed=21)
    generator = torch.Generator().manual_seed(22)
    kk = torch.nn.functional.normalize(torch.randn(B, 1, H, N, generator=generator, dtype=torch.float64), dim=-1)
    kk = kk.expand(B, T, H, N).contiguous()
    w = torch.full((B, T, H, N), -10.0, dtype=torch.float64)
    fn = lambda *xs: wkv7_chunked(*xs, chunk_length=chunk_length)  # noqa: E731
    _check_against_reference(B, T, H, N, inputs=(r, w, k, v, -kk, kk * a_lr, state), fn=fn)


def test_pairwise_and_factored_forms_agree_on_mild_decay():
    inputs = [x.float() for x in make_inputs(2, 48, 2, 32, seed=5)]
    y_factored, s_factored = wkv7_chunked(*inputs)
    y_pairwise, s_pairwise = wkv7_chunked(*inputs, force_pairwise=True)
    assert relative_l2(y_factored, y_pairwise) < 1e-5
    assert relative_l2(s_factored, s_pairwise) < 1e-5


def test_zero_decay_gives_finite_outputs_and_gradients():
    B, T, H, N = 1, 33, 1, 16
    inputs = [x.float().requires_grad_() for x in make_inputs(B, T, H, N, seed=6)]
    with torch.no_grad():
        inputs[1].fill_(30.0)  # decay = exp(-exp(30)) == 0 in float32
    y, state = wkv7(*inputs[:6], state=inputs[6], return_state=True, backend="chunked")
    (y.sum() + state.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert all(torch.isfinite(x.grad).all() for x in inputs)
    y_ref, state_ref = wkv7_reference(*[x.detach().double() for x in inputs])
    assert relative_l2(y, y_ref) < TOLERANCE and relative_l2(state, state_ref) < TOLERANCE


@pytest.mark.parametrize("split", [1, 16, 23, 47])
def test_state_chaining_equals_one_run(split):
    B, T, H, N = 2, 48, 2, 16
    r, w, k, v, a, b, state = (x.float() for x in make_inputs(B, T, H, N, seed=split))
    y_full, s_full = wkv7(r, w, k, v, a, b, state, return_state=True, backend="chunked")
    first = [x[:, :split] for x in (r, w, k, v, a, b)]
    second = [x[:, split:] for x in (r, w, k, v, a, b)]
    y1, s1 = wkv7(*first, state, return_state=True, backend="chunked")
    y2, s2 = wkv7(*second, s1, return_state=True, backend="auto")
    assert relative_l2(torch.cat([y1, y2], dim=1), y_full) < 1e-5
    assert relative_l2(s2, s_full) < 1e-5


def test_state_chaining_gradients_reach_the_first_half():
    B, T, H, N = 1, 40, 2, 16
    leaves = [x.float().requires_grad_() for x in make_inputs(B, T, H, N, seed=11)]
    y_full, _ = wkv7(*leaves[:6], leaves[6], return_state=True, backend="chunked")
    full_grads = torch.autograd.grad(y_full.square().sum(), leaves)
    y1, s1 = wkv7(*[x[:, :17] for x in leaves[:6]], leaves[6], return_state=True, backend="chunked")
    y2 = wkv7(*[x[:, 17:] for x in leaves[:6]], s1, backend="chunked")
    split_grads = torch.autograd.grad(y1.square().sum() + y2.square().sum(), leaves)
    for g_full, g_split in zip(full_grads, split_grads):
        assert relative_l2(g_split, g_full) < 1e-5


@pytest.mark.parametrize("B", [1, 3, 17])
def test_single_step_matches_reference(B):
    H, N = 2, 16
    r, w, k, v, a, b, state = make_inputs(B, 1, H, N, seed=B)
    y_ref, s_ref = wkv7_reference(r, w, k, v, a, b, state)
    y, s = wkv7_step(r[:, 0], w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], state)
    assert relative_l2(y, y_ref[:, 0]) < 1e-12 and relative_l2(s, s_ref) < 1e-12
    # RNN mode through the public entry point, float32, with a float32 state.
    inputs = [x.float() for x in (r, w, k, v, a, b)]
    y32, s32 = wkv7(*inputs, state.float(), return_state=True)
    assert s32.dtype == torch.float32
    assert relative_l2(y32, y_ref) < 1e-5 and relative_l2(s32, s_ref) < 1e-5


def test_single_step_output_dtype_and_validation():
    B, H, N = 2, 3, 4
    r, w, k, v, a, b, state = make_inputs(B, 1, H, N, seed=9)
    inputs = [x[:, 0].bfloat16() for x in (r, w, k, v, a, b)]
    y, new_state = wkv7_step(*inputs, state.float())
    assert y.dtype == torch.bfloat16 and new_state.dtype == torch.float32  # y in r's dtype, as documented
    with pytest.raises(ValueError, match=r"state must be \[B, H, N, N\]"):
        wkv7_step(*inputs, state.float()[0])  # [H, N, N] used to broadcast over the batch
    with pytest.raises(TypeError, match="state must be a floating-point tensor"):
        wkv7_step(*inputs, state.long())
    with pytest.raises(ValueError, match="k must have r's shape"):
        wkv7_step(inputs[0], inputs[1], inputs[2][:1], *inputs[3:], state.float())


@pytest.mark.parametrize("shape", [(0, 6, 2, 4), (1, 6, 0, 4), (1, 6, 2, 0), (1, 0, 2, 4)])
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_empty_dimensions_give_empty_outputs(shape, backend):
    B, T, H, N = shape
    inputs = [torch.randn(shape) for _ in range(6)]
    y, final_state = wkv7(*inputs, return_state=True, backend=backend)
    assert y.shape == (B, T, H, N) and final_state.shape == (B, H, N, N)


def test_short_sequences_and_step_gradients():
    _check_against_reference(3, 3, 2, 16, seed=9, fn=lambda *xs: wkv7(*xs[:6], xs[6], True))


def test_generation_loop_equals_prefill():
    B, T, H, N = 2, 24, 2, 16
    r, w, k, v, a, b, state = (x.float() for x in make_inputs(B, T, H, N, seed=12))
    y_prefill, s_prefill = wkv7(r, w, k, v, a, b, state, return_state=True)
    outputs = []
    current = state
    for t in range(T):
        y_t, current = wkv7(*[x[:, t : t + 1] for x in (r, w, k, v, a, b)], current, True)
        outputs.append(y_t)
    assert relative_l2(torch.cat(outputs, dim=1), y_prefill) < 1e-5
    assert relative_l2(current, s_prefill) < 1e-5


def test_dtypes_of_outputs():
    r, w, k, v, a, b, _ = make_inputs(1, 20, 1, 16, seed=13)
    y64, s64 = wkv7(r, w, k, v, a, b, return_state=True)
    assert y64.dtype == torch.float64 and s64.dtype == torch.float64
    bf = [x.to(torch.bfloat16) for x in (r, w, k, v, a, b)]
    y16, s16 = wkv7(*bf, return_state=True)
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert isinstance(wkv7(*bf), torch.Tensor)
    empty = [x[:, :0] for x in (r, w, k, v, a, b)]
    y0, s0 = wkv7(*empty, return_state=True)
    assert y0.shape == (1, 0, 1, 16) and torch.equal(s0, torch.zeros_like(s0))


def test_backends_agree():
    inputs = [x.float() for x in make_inputs(2, 21, 2, 16, seed=14)]
    results = {
        name: wkv7(*inputs[:6], inputs[6], return_state=True, backend=name)
        for name in ("auto", "reference", "chunked")
    }
    for name, (y, s) in results.items():
        assert relative_l2(y, results["reference"][0]) < 1e-5, name
        assert relative_l2(s, results["reference"][1]) < 1e-5, name


@pytest.mark.parametrize("backend", ["auto", "chunked", "reference"])
@pytest.mark.parametrize("T", [3, 40])
def test_autocast_keeps_float32_arithmetic(backend, T):
    # Under autocast the model hands bfloat16 inputs over; the matrix products inside must stay
    # float32 (the chunked path's in-place baddbmm_ used to refuse autocast's bfloat16 operands).
    inputs = [x.float().to(torch.bfloat16).requires_grad_() for x in make_inputs(2, T, 2, 16, seed=21)[:6]]
    y, s = wkv7(*inputs, return_state=True, backend=backend)
    grads = torch.autograd.grad(y.float().sum() + s.sum(), inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto, s_auto = wkv7(*inputs, return_state=True, backend=backend)
    grads_auto = torch.autograd.grad(y_auto.float().sum() + s_auto.sum(), inputs)  # backward outside, as usual
    assert y_auto.dtype == torch.bfloat16 and s_auto.dtype == torch.float32
    assert torch.equal(y_auto, y) and torch.equal(s_auto, s)
    for g_auto, g in zip(grads_auto, grads):
        assert g_auto.shape == g.shape and torch.equal(g_auto, g)


def test_validation_errors():
    r, w, k, v, a, b, state = (x.float() for x in make_inputs(2, 8, 2, 16, seed=15))
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        wkv7(r, 1.0, k, v, a, b)
    with pytest.raises(ValueError, match="r must be 4-D"):
        wkv7(r[0], w[0], k[0], v[0], a[0], b[0])
    with pytest.raises(ValueError, match="k has shape"):
        wkv7(r, w, k[:, :4], v, a, b)
    with pytest.raises(TypeError, match="v has dtype"):
        wkv7(r, w, k, v.double(), a, b)
    with pytest.raises(TypeError, match="floating point"):
        wkv7(*(x.long() for x in (r, w, k, v, a, b)))
    with pytest.raises(ValueError, match="state has shape"):
        wkv7(r, w, k, v, a, b, state[:, :1])
    with pytest.raises(TypeError, match="state must be"):
        wkv7(r, w, k, v, a, b, "zeros")
    with pytest.raises(ValueError, match="backend must be one of"):
        wkv7(r, w, k, v, a, b, backend="triton")
    with pytest.raises(ValueError, match="CUDA backend needs CUDA tensors"):
        wkv7(r, w, k, v, a, b, backend="cuda")
    with pytest.raises(TypeError, match="return_state"):
        wkv7(r, w, k, v, a, b, None, "yes")


def _fla_convention_recurrence(r, log_decay, k, v, a, b, state_kv):
    """fla's formulation written independently: S [N_k, N_v],
    S_t = diag(exp(log_decay_t)) S + b_t (a_t^T S) + k_t v_t^T, o_t = S_t^T r_t."""
    S = state_kv
    outputs = []
    for t in range(r.shape[1]):
        decay = log_decay[:, t].exp()
        removal = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = decay[..., None] * S + b[:, t, ..., None] * removal[:, :, None] + k[:, t, ..., None] * v[:, t, :, None]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, r[:, t]))
    return torch.stack(outputs, dim=1), S


def test_fla_converters():
    r, w, k, v, a, b, state = make_inputs(2, 19, 2, 8, seed=16)
    log_decay = w_to_fla_log_decay(w)
    assert torch.allclose(fla_log_decay_to_w(log_decay), w)
    assert torch.equal(state_from_fla(state_to_fla(state)), state)
    y_fla, s_fla = _fla_convention_recurrence(r, log_decay, k, v, a, b, state_to_fla(state))
    y, s = wkv7(r, w, k, v, a, b, state, return_state=True)
    assert relative_l2(y, y_fla) < 1e-12
    assert relative_l2(state_from_fla(s_fla), s) < 1e-12


def test_torch_compile_traces_through_the_op():
    B, T, H, N = 2, 20, 2, 16
    leaves = [x.float().requires_grad_() for x in make_inputs(B, T, H, N, seed=17)]

    def model(r, w, k, v, a, b, state):
        y, final_state = wkv7(r, w, k, v, a, b, state, return_state=True)
        return y.tanh().sum() + final_state.square().sum()

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(model(*leaves), leaves)
    compiled_grads = torch.autograd.grad(compiled(*leaves), leaves)
    for g_eager, g_compiled in zip(eager_grads, compiled_grads):
        assert relative_l2(g_compiled, g_eager) < 1e-5


try:
    from hypothesis import given, settings, strategies as st
except ImportError:  # hypothesis is optional; the property test is skipped without it
    given = None


if given is not None:

    @settings(max_examples=12, deadline=None)
    @given(
        B=st.integers(1, 2),
        T=st.integers(1, 40),
        H=st.integers(1, 2),
        N=st.integers(1, 12),
        chunk_length=st.integers(1, 24),
        seed=st.integers(0, 2**16),
    )
    def test_chunked_random_shapes_property(B, T, H, N, chunk_length, seed):
        fn = lambda *xs: wkv7_chunked(*xs, chunk_length=chunk_length)  # noqa: E731
        _check_against_reference(B, T, H, N, seed=seed, fn=fn)

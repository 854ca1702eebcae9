"""RWKV8: config, GPT mode vs RNN mode, State (copy, move, select, save/load, official list)."""

from __future__ import annotations

import pytest
import torch

from heron.models.rwkv8 import RWKV8, RWKV8Config, State, default_lora_rank
from heron.models.init import init_task_recipe


def small_config(**overrides) -> RWKV8Config:
    values = dict(n_layer=3, n_embd=32, vocab_size=19, head_size=8, dim_ffn=48, lora_rank_decay=4,
                  lora_rank_iclr=5, lora_rank_value=6, lora_rank_gate=7)
    values.update(overrides)
    return RWKV8Config(**values)


def random_model(config: RWKV8Config, seed: int = 0, dtype=torch.float64, scale: float = 0.2) -> RWKV8:
    """Module values plus noise on every parameter, so no path of the model is trivially zero."""
    torch.manual_seed(seed)
    model = init_task_recipe(RWKV8(config)).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=torch.float64).to(dtype))
    return model


def relative_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_rnn(model, tokens, state=None):
    logits = []
    for t in range(tokens.shape[1]):
        step_logits, state = model.step(tokens[:, t], state)
        logits.append(step_logits)
    return torch.stack(logits, 1), state


def assert_states_close(first: State, second: State, tolerance: float):
    assert len(first) == len(second)
    for a, b in zip(first.blocks, second.blocks):
        for x, y in ((a.att.x_prev, b.att.x_prev), (a.att.wkv, b.att.wkv), (a.ffn.x_prev, b.ffn.x_prev)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert relative_l2(x, y) <= tolerance


# config ------------------------------------------------------------------------------------------


def test_config_defaults_follow_spec():
    config = RWKV8Config(n_layer=12, n_embd=768, vocab_size=65536)
    assert config.dim_ffn == 4 * 768 and config.head_size == 64 and config.n_head == 12
    # the official L12-D768 ranks
    assert (config.lora_rank_decay, config.lora_rank_iclr, config.lora_rank_value, config.lora_rank_gate) == (64, 64, 32, 128)
    assert default_lora_rank(128, 2.5) == 32
    assert RWKV8Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(n_embd=30), "multiple of head_size"),
    (dict(n_layer=0), "n_layer"),
    (dict(rosa="qkv2"), "rosa"),
    (dict(dim_ffn=0), "dim_ffn"),
    (dict(deep_embed=False, deep_embed_on_cpu=True), "deep_embed_on_cpu"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(rosa_estimator="bogus"), "RWKV8Config.rosa_estimator"),  # checked without ROSA blocks too
    (dict(rosa_tau=float("inf")), "RWKV8Config.rosa_tau"),
    (dict(rosa_tau=0.0), "RWKV8Config.rosa_tau"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


@pytest.mark.parametrize("name", ["deep_embed", "deep_embed_on_cpu", "ln0", "head_bias", "layer0_value_lora"])
def test_config_switches_must_be_bools(name):
    with pytest.raises(TypeError, match=f"RWKV8Config.{name} must be a bool"):
        small_config(**{name: "no"})


def test_return_state_must_be_a_bool():
    model = RWKV8(small_config())
    tokens = torch.zeros(1, 3, dtype=torch.int64)
    for bad in ("no", 1, None, model.zero_state(1)):
        with pytest.raises(TypeError, match="return_state must be a bool"):
            model(tokens, return_state=bad)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown RWKV8Config fields"):
        RWKV8Config.from_dict(dict(n_layer=1, n_embd=8, vocab_size=4, head_size=8, n_heads=3))


def test_key_names_of_both_layouts():
    keys = set(RWKV8(small_config(n_layer=2)).state_dict())
    assert "blocks.0.ln0.weight" in keys and "blocks.1.ln0.weight" not in keys
    assert "blocks.0.att.v0" not in keys and "blocks.1.att.v0" in keys
    assert "blocks.1.ffn.enn.weight" in keys and "head.bias" not in keys
    task_keys = set(RWKV8(small_config(n_layer=2, ln0=False, deep_embed=False, head_bias=True,
                                       layer0_value_lora=True)).state_dict())
    assert "blocks.0.ln0.weight" not in task_keys and "blocks.0.att.v0" in task_keys
    assert "head.bias" in task_keys and not any("enn" in k for k in task_keys)


# GPT mode vs RNN mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(), dict(ln0=False, deep_embed=False, head_bias=True, layer0_value_lora=True)])
def test_gpt_and_rnn_modes_agree_in_float64(overrides):
    config = small_config(**overrides)
    model = random_model(config, seed=1)
    tokens = torch.randint(0, config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gpt_logits, gpt_state = model(tokens, return_state=True)
        rnn_logits, rnn_state = run_rnn(model, tokens)
    assert gpt_logits.shape == (2, 13, config.vocab_size) and gpt_logits.dtype == torch.float64
    assert rnn_state.blocks[0].att.wkv.dtype == torch.float64
    assert relative_l2(rnn_logits, gpt_logits) <= 1e-9
    assert_states_close(rnn_state, gpt_state, 1e-9)
    assert model(tokens).shape == gpt_logits.shape  # return_state=False returns the logits only


def test_prefill_in_chunks_equals_whole_and_batches_are_independent():
    config = small_config()
    model = random_model(config, seed=3)
    tokens = torch.randint(0, config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole, whole_state = model(tokens, return_state=True)
        first, state = model(tokens[:, :6], return_state=True)
        second, state = model(tokens[:, 6:], state, return_state=True)
        single = model(tokens[1:2])
    assert relative_l2(torch.cat([first, second], 1), whole) <= 1e-12
    assert_states_close(state, whole_state, 1e-12)
    assert relative_l2(single, whole[1:2]) <= 1e-12


def test_float32_model_keeps_float32_state_and_matches_float64():
    config = small_config()
    model64 = random_model(config, seed=5)
    model32 = random_model(config, seed=5, dtype=torch.float32)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    tokens = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        logits32, state32 = model32(tokens, return_state=True)
        logits64 = model64(tokens)
    assert state32.blocks[0].att.wkv.dtype == torch.float32
    assert relative_l2(logits32, logits64) <= 1e-5


def test_training_gradients_reach_every_parameter():
    config = small_config(n_layer=2)
    model = random_model(config, seed=6, dtype=torch.float32)
    tokens = torch.randint(0, config.vocab_size, (2, 8))
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), tokens.roll(-1, 1).reshape(-1)).backward()
    for name, param in model.named_parameters():
        if name.startswith("blocks.0.att.v"):
            continue  # not present in block 0
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_deep_embed_on_cpu_at_model_level():
    config = small_config(deep_embed_on_cpu=True)
    model = random_model(config, seed=7)
    reference = random_model(small_config(), seed=7)
    tokens = torch.randint(0, config.vocab_size, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), rtol=0, atol=0)
    model.to("meta")
    assert all(block.ffn.enn.weight.device.type == "cpu" for block in model.blocks)
    assert model.head.weight.device.type == "meta"


@pytest.mark.gpu
def test_deep_embed_on_cpu_with_model_on_gpu():
    config = small_config(deep_embed_on_cpu=True)
    offloaded = random_model(config, seed=14, dtype=torch.float32).to("cuda")
    resident = random_model(small_config(), seed=14, dtype=torch.float32).to("cuda")
    assert all(block.ffn.enn.weight.device.type == "cpu" for block in offloaded.blocks)
    assert all(block.ffn.enn.weight.device.type == "cuda" for block in resident.blocks)
    tokens = torch.randint(0, config.vocab_size, (2, 16), device="cuda")
    torch.testing.assert_close(offloaded(tokens), resident(tokens), rtol=1e-5, atol=1e-5)
    offloaded(tokens).square().mean().backward()
    resident(tokens).square().mean().backward()
    for a, b in zip(offloaded.blocks, resident.blocks):
        assert a.ffn.enn.weight.grad.device.type == "cpu"
        torch.testing.assert_close(a.ffn.enn.weight.grad, b.ffn.enn.weight.grad.cpu(), rtol=1e-4, atol=1e-6)
    logits, state = offloaded.step(tokens[:, 0])
    assert logits.device.type == "cuda" and state.device.type == "cuda"


# State -------------------------------------------------------------------------------------------


def test_state_copy_is_independent_and_branches_agree():
    config = small_config()
    model = random_model(config, seed=8)
    tokens = torch.randint(0, config.vocab_size, (2, 7))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
        branch = state.copy()
        logits_a, _ = model.step(tokens[:, 0], state)
        logits_b, _ = model.step(tokens[:, 0], branch)
        branch.blocks[0].att.wkv.add_(1.0)
    torch.testing.assert_close(logits_a, logits_b, rtol=0, atol=0)
    assert not torch.equal(branch.blocks[0].att.wkv, state.blocks[0].att.wkv)


def test_state_select_reorders_batch():
    config = small_config()
    model = random_model(config, seed=9)
    tokens = torch.randint(0, config.vocab_size, (3, 6))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
        picked = state.select(torch.tensor([2, 0]))
        logits, _ = model.step(tokens[[2, 0], 0], picked)
        full, _ = model.step(tokens[:, 0], state)
    torch.testing.assert_close(logits, full[[2, 0]], rtol=1e-12, atol=1e-12)
    # a boolean mask keeps the rows where it is true; floats are refused, not truncated
    by_mask = state.select(torch.tensor([True, False, True]))
    by_list = state.select([0, 2])
    assert by_mask.batch_size == 2
    assert_states_close(by_mask, by_list, 0.0)
    assert state.select([]).batch_size == 0
    with pytest.raises(TypeError, match="batch_index must hold integers"):
        state.select(torch.tensor([1.7]))  # was truncated to row 1
    with pytest.raises(ValueError, match="one entry per row"):
        state.select([True, False])
    with pytest.raises(ValueError, match=r"batch_index must lie in \[0, 3\)"):
        state.select([3])


def test_state_to_dtype_and_zero_state():
    config = small_config()
    model = random_model(config, seed=10)
    tokens = torch.randint(0, config.vocab_size, (2, 4))
    with torch.no_grad():
        explicit = model(tokens, model.zero_state(2))
        implicit = model(tokens)
    torch.testing.assert_close(explicit, implicit, rtol=0, atol=0)
    state = model.zero_state(2).to(dtype=torch.float16)
    assert state.blocks[0].att.x_prev.dtype == torch.float16 and state.blocks[0].att.wkv.dtype == torch.float32


def test_state_save_load_round_trip(tmp_path):
    config = small_config()
    model = random_model(config, seed=11)
    tokens = torch.randint(0, config.vocab_size, (2, 5))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
        state.save(tmp_path / "state.pt")
        loaded = State.load(tmp_path / "state.pt")
        assert_states_close(loaded, state, 0.0)
        torch.testing.assert_close(model.step(tokens[:, 0], loaded)[0], model.step(tokens[:, 0], state)[0],
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        State.from_state_dict({"blocks": [{"att_x_prev": torch.zeros(1, 4)}]})


@pytest.mark.parametrize("rosa", [None, "qkv1"])
def test_prefill_state_owns_its_storage(tmp_path, rosa):
    """The x_prev entries of a state are the last position of the prefill's activations: as views
    they kept the whole [B, T, C] tensors alive, and saved files grew with the prompt length."""
    config = small_config(rosa=rosa)
    model = random_model(config, seed=12)
    sizes = []
    for length in (1, 300):
        with torch.no_grad():
            _, state = model(torch.randint(0, config.vocab_size, (2, length)), return_state=True)
        for block in state.blocks:
            shifts = [block.att.x_prev, block.ffn.x_prev] + ([block.rosa.x_prev] if block.rosa is not None else [])
            for x_prev in shifts:
                assert x_prev.untyped_storage().nbytes() == x_prev.numel() * x_prev.element_size()
        state.save(tmp_path / f"state{length}.pt")
        sizes.append((tmp_path / f"state{length}.pt").stat().st_size)
    if rosa is None:  # (the ROSA automata are saved as their histories, which grow with the prompt)
        assert sizes[1] < sizes[0] + 4096  # one [2, 300, 32] float64 view alone would add 153,600 bytes


def test_official_flat_list_round_trip():
    config = small_config()
    model = random_model(config, seed=12)
    tokens = torch.randint(0, config.vocab_size, (2, 5))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
    flat = state.to_official(batch_index=1)
    assert len(flat) == 3 * config.n_layer
    assert flat[0].shape == (32,) and flat[1].shape == (4, 8, 8) and flat[2].shape == (32,)
    rebuilt = State.from_official(flat)
    assert_states_close(rebuilt, state.select([1]), 0.0)
    with pytest.raises(ValueError, match="batch_index is required"):
        state.to_official()
    with pytest.raises(ValueError, match="3 \\* n_layer"):
        State.from_official(flat[:4])
    with pytest.raises(ValueError, match="att_kv"):
        State.from_official([flat[0], torch.zeros(4, 8, 7), flat[2]])


def test_bad_inputs_raise_clear_errors():
    config = small_config()
    model = RWKV8(config)
    with pytest.raises(ValueError, match="tokens must be an integer tensor \\[B, T\\]"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="tokens must lie in \\[0, 19\\)"):
        model(torch.tensor([[0, 19]]))
    with pytest.raises(ValueError, match="tokens must lie in"):
        model.step(torch.tensor([-1]))
    with pytest.raises(ValueError, match="token_ids must be an integer tensor \\[B\\]"):
        model.step(torch.zeros(1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch size"):
        model(torch.zeros(2, 3, dtype=torch.int64), model.zero_state(3))
    with pytest.raises(ValueError, match="n_layer"):
        model(torch.zeros(1, 3, dtype=torch.int64), State(model.zero_state(1).blocks[:1]))
    with pytest.raises(TypeError, match="State or None"):
        model(torch.zeros(1, 3, dtype=torch.int64), [])
    with pytest.raises(ValueError, match="tokens are on meta"):
        model(torch.zeros(1, 3, dtype=torch.int64, device="meta"))
    with pytest.raises(TypeError, match="RWKV8Config"):
        RWKV8({"n_layer": 1})


def test_small_integer_token_dtypes_give_the_int64_results():
    config = small_config(deep_embed=True)
    model = random_model(config, seed=5)
    tokens = torch.randint(0, config.vocab_size, (2, 6))
    with torch.no_grad():
        expected, expected_step = model(tokens), model.step(tokens[:, 0])[0]
        for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
            torch.testing.assert_close(model(tokens.to(dtype)), expected, rtol=0, atol=0)
            torch.testing.assert_close(model.step(tokens[:, 0].to(dtype))[0], expected_step, rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile_gpt_mode_matches_eager():
    """One graph (fullgraph), same logits and same gradients as eager mode."""
    config = small_config(n_layer=2)
    model = random_model(config, seed=13, dtype=torch.float32)
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled_logits = compiled(tokens)
    torch.testing.assert_close(compiled_logits, model(tokens), rtol=1e-5, atol=1e-5)
    compiled_logits.square().mean().backward()
    compiled_grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    model(tokens).square().mean().backward()
    for name, param in model.named_parameters():
        scale = param.grad.abs().max().clamp_min(1e-12)
        assert ((compiled_grads[name] - param.grad).abs().max() / scale) <= 1e-4, name

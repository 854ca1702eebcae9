"""RWKV-8 with a ROSA-QKV block beside every time-mix (spec/RWKV8.md §4): GPT mode vs RNN mode,
the state with its online automata, and the official task checkpoints loading unchanged."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest
import torch

from heron.models.rwkv8 import RWKV8, RWKV8Config, State

from .test_rwkv8 import assert_states_close, random_model, relative_l2, run_rnn, small_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("heron.layers.rosa") is None, reason="heron.layers.rosa (ROSAQKV) not built yet"
)


def rosa_config(kind: str, **overrides) -> RWKV8Config:
    return small_config(rosa=kind, **overrides)


def rosa_bit_disagreement(first: State, second: State, bits: int) -> float:
    """Share of ROSA input bits (thresholded q, k, v of every block) that differ between two states."""
    differing = total = 0
    for a, b in zip(first.blocks, second.blocks):
        for x, y in zip(a.rosa.automaton.history(), b.rosa.automaton.history()):
            assert x.shape == y.shape
            flipped = x ^ y
            differing += sum(int(((flipped >> bit) & 1).sum()) for bit in range(bits))
            total += x.numel() * bits
    return differing / total


def gpt_and_rnn(model, tokens, more):
    with torch.no_grad():
        gpt_logits, gpt_state = model(tokens, return_state=True)
        rnn_logits, rnn_state = run_rnn(model, tokens)
        gpt_more, gpt_after = model(more, gpt_state.copy(), return_state=True)
        rnn_more, rnn_after = run_rnn(model, more, rnn_state.copy())
    return (gpt_logits, gpt_state, gpt_more, gpt_after), (rnn_logits, rnn_state, rnn_more, rnn_after)


@pytest.mark.parametrize("kind", ["qkv1", "qkv4"])
def test_gpt_and_rnn_modes_agree_in_float64(kind):
    """Logits and every state tensor within 1e-9, identical ROSA input bits, and the automata
    carried by both states continue identically."""
    config = rosa_config(kind)
    model = random_model(config, seed=21)
    generator = torch.Generator().manual_seed(22)
    tokens = torch.randint(0, config.vocab_size, (2, 14), generator=generator)
    more = torch.randint(0, config.vocab_size, (2, 4), generator=generator)
    gpt, rnn = gpt_and_rnn(model, tokens, more)
    keys = set(model.state_dict())
    assert "blocks.1.ln3.weight" in keys and any(k.startswith("blocks.1.rosa.") for k in keys)
    assert gpt[0].dtype == torch.float64 and rnn[1].blocks[0].att.wkv.dtype == torch.float64
    assert relative_l2(rnn[0], gpt[0]) <= 1e-9
    for gpt_state, rnn_state in ((gpt[1], rnn[1]), (gpt[3], rnn[3])):
        assert_states_close(rnn_state, gpt_state, 1e-9)
        for a, b in zip(gpt_state.blocks, rnn_state.blocks):
            assert relative_l2(b.rosa.x_prev, a.rosa.x_prev) <= 1e-9
        assert rosa_bit_disagreement(gpt_state, rnn_state, config.rosa_bits) == 0.0
    assert gpt[3].blocks[0].rosa.automaton.length == tokens.shape[1] + more.shape[1]
    assert relative_l2(rnn[2], gpt[2]) <= 1e-9


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_share_of_rosa_bits_that_differ_between_modes(dtype):
    """On GPU the two modes round differently, so a pre-threshold value near 0 may flip a ROSA
    bit; report the share (the spec asks for the figure) and bound it loosely."""
    config = rosa_config("qkv1", n_layer=2, n_embd=64, head_size=16)
    model = random_model(config, seed=25, dtype=torch.float32).to("cuda", dtype)
    generator = torch.Generator().manual_seed(26)
    tokens = torch.randint(0, config.vocab_size, (4, 64), generator=generator).cuda()
    with torch.no_grad():
        _, gpt_state = model(tokens, return_state=True)
        _, rnn_state = run_rnn(model, tokens)
    share = rosa_bit_disagreement(gpt_state, rnn_state, 1)
    print(f"ROSA input bits differing between GPT and RNN mode on {torch.cuda.get_device_name()} "
          f"({dtype}): {share:.3%}")
    assert share < 0.02


def test_rosa_changes_the_output():
    """The ROSA block is wired in: zeroing its output projection changes the logits."""
    model = random_model(rosa_config("qkv1"), seed=23)
    tokens = torch.randint(0, 19, (1, 10))
    with torch.no_grad():
        before = model(tokens)
        for block in model.blocks:
            block.rosa.o.weight.zero_()
            block.rosa.o.bias.zero_()
        after = model(tokens)
    assert relative_l2(after, before) > 1e-3


def test_rosa_state_copy_select_and_save(tmp_path):
    config = rosa_config("qkv1")
    model = random_model(config, seed=24)
    tokens = torch.randint(0, config.vocab_size, (3, 9))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
        expected, _ = model.step(tokens[:, 0], state.copy())
        model.step(tokens[:, 1], state.copy())  # another branch must not disturb the original
        again, _ = model.step(tokens[:, 0], state.copy())
        torch.testing.assert_close(again, expected, rtol=0, atol=0)
        picked, _ = model.step(tokens[[2, 0], 0], state.select([2, 0]))
        torch.testing.assert_close(picked, expected[[2, 0]], rtol=1e-12, atol=1e-12)
        state.save(tmp_path / "state.pt")
        loaded = State.load(tmp_path / "state.pt")
        restored, _ = model.step(tokens[:, 0], loaded)
        torch.testing.assert_close(restored, expected, rtol=0, atol=0)
        # documented: the automata advance in place (the tensors of the state do not)
        wkv_before = state.blocks[0].att.wkv.clone()
        model.step(tokens[:, 0], state)
        assert state.blocks[0].rosa.automaton.length == tokens.shape[1] + 1
        torch.testing.assert_close(state.blocks[0].att.wkv, wkv_before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ROSA"):
        state.to_official(batch_index=0)
    with pytest.raises(ValueError, match="ROSA block states"):
        model(tokens, State.zeros(small_config(), 3))


def _task_to_rwkv8(state_dict):
    """The documented key mapping of the task layout (spec §6) onto RWKV8 keys."""
    top = {"e.": "emb.", "lno.": "ln_out.", "o.": "head."}
    block = {"a": "ln1", "b": "ln2", "c": "ln3"}
    out = {}
    for key, value in state_dict.items():
        if match := re.match(r"^ln(\d+)([abc])\.(.+)$", key):
            out[f"blocks.{int(match[1]) - 1}.{block[match[2]]}.{match[3]}"] = value
        elif match := re.match(r"^(rwkv|rosa|ffn)(\d+)\.(.+)$", key):
            module = {"rwkv": "att", "rosa": "rosa", "ffn": "ffn"}[match[1]]
            out[f"blocks.{int(match[2]) - 1}.{module}.{match[3]}"] = value
        else:
            prefix = next(p for p in top if key.startswith(p))
            out[top[prefix] + key[len(prefix):]] = value
    return out


def test_official_task_checkpoint_loads_unchanged_and_predicts(shared):
    official = torch.load(shared / "checkpoints" / "251105_reverse_L2.pth", map_location="cpu", weights_only=True)
    config = RWKV8Config(n_layer=2, n_embd=32, vocab_size=12, head_size=16, lora_rank_decay=8, lora_rank_iclr=8,
                         lora_rank_value=8, lora_rank_gate=8, rosa="qkv1", deep_embed=False, ln0=False,
                         head_bias=True, layer0_value_lora=True, dim_ffn=128)
    model = RWKV8(config)
    model.load_state_dict(_task_to_rwkv8(official), strict=True)
    golden = torch.load(shared / "golden" / "golden_reverse60_dev.pt", map_location="cpu", weights_only=True)
    src = golden["src"][:8, :128].long()
    with torch.no_grad():
        logits = model(src)
    assert relative_l2(logits, golden["logits_first64"][:8]) <= 1e-4
    agreement = (logits.argmax(-1) == golden["pred"][:8].long()).double().mean().item()
    assert agreement >= 0.999


# ------------------------------------------------------------------------------------------
# deep models: the estimator's gain compounds over the layers unless rosa_max_gain bounds it


def _lm_gradient_norm(n_layer: int, max_gain) -> float:
    """Total gradient norm of one LM-recipe step of a ROSA-QKV 1-bit model (window estimator,
    the official tau 1e-3): what the trainer's clip sees."""
    import torch.nn.functional as F

    from heron.models.init import init_lm_recipe

    torch.manual_seed(0)
    model = init_lm_recipe(RWKV8(RWKV8Config(n_layer=n_layer, n_embd=32, vocab_size=64, head_size=16,
                                             rosa="qkv1", rosa_estimator="window", deep_embed=False,
                                             rosa_max_gain=max_gain)))
    tokens = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 64), tokens[:, 1:].reshape(-1)).backward()
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))


def test_unbounded_estimator_gradient_compounds_with_depth_and_max_gain_stops_it():
    # Measured: 2.3e6 / 4.7e8 / 1.1e14 at 2 / 4 / 8 layers unbounded; 521 / 388 / 294 with the bound.
    # At 12 layers (the issue-9 benchmark) the unbounded norm reaches ~1e19 and overflows float32.
    free = {n: _lm_gradient_norm(n, None) for n in (2, 8)}
    bounded = {n: _lm_gradient_norm(n, 1.0) for n in (2, 8)}
    assert free[8] > 1e4 * free[2] > 1e9
    assert bounded[8] < 2 * bounded[2] < 1e4
    assert math.isfinite(bounded[8])


def test_rosa_max_gain_reaches_every_block_and_is_validated():
    model = RWKV8(rosa_config("qkv1", rosa_estimator="window", rosa_max_gain=0.5))
    assert all(block.rosa.rosa_qkv.config.max_gain == 0.5 for block in model.blocks)
    assert "max_gain=0.5" in repr(model.blocks[0].rosa.rosa_qkv)
    assert RWKV8(rosa_config("qkv1")).blocks[0].rosa.rosa_qkv.config.max_gain is None  # the spec's default
    for bad in (0.0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="rosa_max_gain"):
            rosa_config("qkv1", rosa_max_gain=bad)

"""The pure ROSA LM (spec/RWKV8.md §4): official layout, GPT mode == RNN mode, a from-spec
reference forward, loading official files, training."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from heron.ops.rosa.reference import rosa_qkv_oracle

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("heron.layers.rosa") is None, reason="heron.layers.rosa (ROSAQKV) not built yet"
)


def _random_model(bits: int, n_layer: int = 2, n_embd: int = 16, vocab: int = 11, seed: int = 0):
    from heron.models.rosa_lm import ROSALM, ROSALMConfig

    torch.manual_seed(seed)
    model = ROSALM(ROSALMConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab, bits=bits)).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # the official initial values zero the channel-mix output and x_q/x_k/x_v: randomise
            # everything so each path (token shifts, ffn, both signs of e) is exercised
            parameter.copy_(torch.randn_like(parameter) * (0.3 if parameter.dim() > 1 else 1.0))
    return model


def _reference_forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """spec §4 and ROSA.md §3 written out with the brute-force ROSA oracle (float64)."""
    bits = model.config.bits

    def shift(x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

    def rosa_block(block, x):
        delta = shift(x) - x
        q = block.q(x + delta * block.x_q.reshape(-1))
        k = block.k(x + delta * block.x_k.reshape(-1))
        v = block.v(x + delta * block.x_v.reshape(-1))
        B, T, C = q.shape
        emb = block.rosa_qkv.emb.reshape(-1)
        out = torch.zeros_like(q)
        weights = 1 << torch.arange(bits)
        for b in range(B):
            for group in range(C // bits):
                channels = slice(group * bits, (group + 1) * bits)
                symbols = [((t[b, :, channels] > 0).long() * weights).sum(-1).tolist() for t in (q, k, v)]
                result = rosa_qkv_oracle(*symbols)
                for t, y in enumerate(result):
                    if y < 0 and bits == 4:
                        continue  # 4-bit: no match gives 0 on all four channels
                    symbol = max(y, 0)  # 1-bit: no match reads as symbol 0, i.e. -e
                    signs = torch.tensor([1.0 if (symbol >> m) & 1 else -1.0 for m in range(bits)], dtype=q.dtype)
                    out[b, t, channels] = signs * emb[channels]
        return block.o(out)

    def ffn(block, x):
        delta = shift(x) - x
        hidden = torch.relu(block.key(x + delta * block.x_k.reshape(-1))) ** 2
        return block.value(hidden)

    x = model.emb(tokens)
    for layer, block in enumerate(model.blocks):
        if layer == 0:
            x = block.ln0(x)
        x = x + rosa_block(block.rosa, block.ln3(x))
        x = x + ffn(block.ffn, block.ln2(x))
    return model.head(model.ln_out(x))


def test_official_keys():
    model = _random_model(1, n_layer=3)
    keys = set(model.state_dict())
    expected = {"emb.weight", "ln_out.weight", "ln_out.bias", "head.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"}
    for layer in range(3):
        prefix = f"blocks.{layer}."
        expected |= {prefix + n for n in ("ln2.weight", "ln2.bias", "ln3.weight", "ln3.bias", "ffn.x_k",
                                           "ffn.key.weight", "ffn.value.weight", "rosa.x_q", "rosa.x_k",
                                           "rosa.x_v", "rosa.rosa_qkv.emb")}
        expected |= {prefix + f"rosa.{m}.{p}" for m in "qkvo" for p in ("weight", "bias")}
    assert keys == expected


@pytest.mark.parametrize("bits", [1, 4])
def test_matches_reference_forward(bits):
    model = _random_model(bits, n_embd=8)
    tokens = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
        reference = _reference_forward(model, tokens)
    assert ours.shape == (2, 13, 11)
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bits", [1, 4])
def test_gpt_mode_equals_rnn_mode_float64(bits):
    model = _random_model(bits)
    tokens = torch.randint(0, 11, (3, 40), generator=torch.Generator().manual_seed(bits))
    with torch.no_grad():
        full, full_state = model(tokens, return_state=True)
        state = None
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
        stepped = torch.stack(steps, dim=1)
        # GPT mode in two chunks, the second continuing the first's state
        first, middle = model(tokens[:, :17], return_state=True)
        second = model(tokens[:, 17:], state=middle)
    assert stepped.dtype == torch.float64
    assert (stepped - full).abs().max().item() < 1e-9
    assert (torch.cat([first, second], dim=1) - full).abs().max().item() < 1e-9
    for block_full, block_step in zip(full_state.blocks, state.blocks):
        assert (block_full.ffn.x_prev - block_step.ffn.x_prev).abs().max().item() < 1e-9
    # a copy branches: continuing the original and the copy with the same tokens agrees
    branch = state.copy()
    continuation = tokens[:, :6].flip(0)
    with torch.no_grad():
        from_original = model(continuation, state=state)
        from_branch = model(continuation, state=branch)
        from_scratch = model(torch.cat([tokens, continuation], dim=1))[:, -6:]
    assert torch.equal(from_original, from_branch)
    assert (from_original - from_scratch).abs().max().item() < 1e-9


def test_state_select_reorders_batch():
    model = _random_model(1)
    tokens = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = model(tokens, return_state=True)
        picked = state.select(torch.tensor([2, 0]))
        logits, _ = model.step(torch.tensor([4, 5]), picked)
        _, reference_state = model(tokens[[2, 0]], return_state=True)
        reference, _ = model.step(torch.tensor([4, 5]), reference_state)
    assert (logits - reference).abs().max().item() < 1e-12
    masked = state.select(torch.tensor([False, True, True]))
    assert masked.batch_size == 2
    with pytest.raises(ValueError, match="batch_index must lie in"):
        state.select([3])
    with pytest.raises(TypeError, match="batch_index must hold integers"):
        state.select([0.5])


def test_load_official_layout(tmp_path):
    from heron.models.loading import load, official_state_dict, read_official

    model = _random_model(4, n_embd=8).float()
    official = official_state_dict(model)
    assert official["blocks.0.rosa.x_q"].shape == (1, 1, 8)
    # the official block creates ln0 in every block; later blocks' ln0 is never read
    official["blocks.1.ln0.weight"] = torch.ones(8)
    official["blocks.1.ln0.bias"] = torch.zeros(8)
    path = tmp_path / "rwkv-rosa4bit-test.pth"
    torch.save(official, path)
    loaded = load(path)
    assert loaded.config.bits == 4 and loaded.config.n_layer == 2 and loaded.config.dim_ffn == 32
    assert load(path, rosa_bits=1).config.bits == 1
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    ours = tmp_path / "lm.safetensors"
    from heron.models.loading import convert

    convert(path, ours)
    with pytest.raises(ValueError, match="4bit"):  # the name is all that tells load() the width
        convert(ours, tmp_path / "back.pth", to="official")
    back = read_official(convert(ours, tmp_path / "back-4bit.pth", to="official"))
    assert set(back) == set(official) and all(torch.equal(back[k], official[k]) for k in official)


def test_trains_with_cheap_estimator():
    from heron.models.rosa_lm import ROSALM, ROSALMConfig

    torch.manual_seed(0)
    model = ROSALM(ROSALMConfig(n_layer=2, n_embd=16, vocab_size=11, bits=1))
    assert model.config.rosa_estimator == "window"  # the cheap estimator is the LM default
    tokens = torch.randint(0, 11, (4, 33), generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # the estimator reaches the q/k/v projections through the thresholds
    assert model.blocks[0].rosa.q.weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0]


def test_bad_input():
    from heron.models.rosa_lm import ROSALMConfig

    model = _random_model(1)
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="token_ids"):
        model.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="state"):
        model(torch.zeros(2, 3, dtype=torch.long), state=[1, 2])
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"tokens must lie in \[0, {vocab}\)"):  # not an IndexError from nn.Embedding
        model(torch.tensor([[0, vocab]]))
    with pytest.raises(ValueError, match="tokens must lie in"):
        model.step(torch.tensor([-1]))
    with pytest.raises(ValueError, match="bits"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5, bits=3)
    with pytest.raises(ValueError, match="multiple of bits"):
        ROSALMConfig(n_layer=1, n_embd=6, vocab_size=5, bits=4)
    with pytest.raises(ValueError, match="n_layer"):
        ROSALMConfig(n_layer=0, n_embd=8, vocab_size=5)
    with pytest.raises(ValueError, match="ROSALMConfig.rosa_estimator"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5, rosa_estimator="bogus")
    with pytest.raises(ValueError, match="ROSALMConfig.rosa_tau"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=5, rosa_tau=float("inf"))
    with pytest.raises(TypeError, match="return_state must be a bool"):
        model(torch.zeros(2, 3, dtype=torch.long), return_state="no")
    tokens = torch.randint(0, vocab, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens.to(torch.uint8)), model(tokens), rtol=0, atol=0)



def test_rosa_max_gain_reaches_every_block_and_is_validated():
    from heron.models.rosa_lm import ROSALM, ROSALMConfig

    model = ROSALM(ROSALMConfig(n_layer=2, n_embd=8, vocab_size=11, rosa_max_gain=0.5))
    assert all(block.rosa.rosa_qkv.config.max_gain == 0.5 for block in model.blocks)
    assert ROSALMConfig(n_layer=1, n_embd=8, vocab_size=11).rosa_max_gain is None  # the spec's default
    with pytest.raises(ValueError, match="rosa_max_gain"):
        ROSALMConfig(n_layer=1, n_embd=8, vocab_size=11, rosa_max_gain=-1.0)

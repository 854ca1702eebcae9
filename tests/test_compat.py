"""The described interface (heron.compat) runs the description's usage snippets unchanged but
for the import path, on the random rc00 model of golden_rc00.pt."""

from __future__ import annotations

import inspect
import types

import pytest
import torch

from heron import ROSA_1bit_LAYER, ROSA_LM, RWKV_x070
from heron.compat import official_environment
from heron.layers.rosa import ROSABits

ENV_NAMES = ("RWKV_HEAD_SIZE", "RWKV_CUDA_ON", "RWKV_JIT_ON", "RWKV_MY_TESTING")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def golden(shared):
    return torch.load(shared / "golden" / "golden_rc00.pt", weights_only=True)


@pytest.fixture()
def args(golden, tmp_path):
    path = tmp_path / "rc00_random"
    torch.save(golden["weights"], str(path) + ".pth")
    config = golden["config"]
    return types.SimpleNamespace(
        n_layer=config["n_layer"], n_embd=config["n_embd"], vocab_size=config["vocab_size"],
        head_size=config["head_size"], MODEL_NAME=str(path), device="cpu",
    )


def test_forward_seq_and_forward_one_match_the_official_fp64_logits(golden, args, clean_env):
    model = RWKV_x070(args)
    tokens = golden["tokens"].tolist()
    reference = golden["fp64_rnn_logits"]

    # GPT mode, the description's call
    output, state = model.forward_seq(tokens, None, full_output=True)
    assert output.shape == reference.shape
    assert rel_l2(output, reference) < 5e-5

    # RNN mode, one token at a time
    state = None
    rows = []
    for token in tokens:
        output, state = model.forward_one(token, state)
        rows.append(output)
    assert rel_l2(torch.stack(rows), reference) < 5e-5
    assert isinstance(state, list) and len(state) == 3 * args.n_layer

    # forward() dispatches on the length of idx; GPT then RNN continues the same state
    _, state = model.forward(tokens, None)
    more = []
    for token in golden["more_tokens"].tolist():
        output, state = model.forward([token], state)
        more.append(output)
    assert rel_l2(torch.stack(more), golden["fp64_more_logits"]) < 5e-5


def test_environment_variables_are_optional_defaults_and_conflicts_are_refused(args, clean_env):
    clean_env.setenv("RWKV_HEAD_SIZE", "64")
    clean_env.setenv("RWKV_CUDA_ON", "0")
    clean_env.setenv("RWKV_JIT_ON", "0")
    clean_env.setenv("RWKV_MY_TESTING", "x070")
    RWKV_x070(args)  # agreeing values are accepted

    no_head = types.SimpleNamespace(**{k: v for k, v in vars(args).items() if k != "head_size"})
    assert RWKV_x070(no_head).model.config.head_size == 64  # taken from RWKV_HEAD_SIZE

    clean_env.setenv("RWKV_HEAD_SIZE", "32")
    with pytest.raises(ValueError, match="RWKV_HEAD_SIZE"):
        RWKV_x070(args)
    clean_env.setenv("RWKV_HEAD_SIZE", "64")

    clean_env.setenv("RWKV_CUDA_ON", "1")
    with pytest.raises(ValueError, match="RWKV_CUDA_ON"):
        RWKV_x070(args)  # args.device="cpu" conflicts (and on CPU machines no GPU is visible)
    clean_env.setenv("RWKV_CUDA_ON", "yes")
    with pytest.raises(ValueError, match="RWKV_CUDA_ON"):
        official_environment()
    clean_env.setenv("RWKV_CUDA_ON", "0")

    clean_env.setenv("RWKV_MY_TESTING", "x060")
    with pytest.raises(ValueError, match="RWKV_MY_TESTING"):
        official_environment()


def test_args_that_disagree_with_the_checkpoint_are_refused(args, clean_env):
    args.n_layer = 3
    with pytest.raises(ValueError, match="n_layer=3"):
        RWKV_x070(args)


def test_rosa_1bit_layer_equals_rosabits_flip(clean_env):
    torch.manual_seed(0)
    layer = ROSA_1bit_LAYER(16, tau=1e-3).double()
    reference = ROSABits(16, bits=1, estimator="flip", tau=1e-3).double()
    with torch.no_grad():
        layer.emb0.uniform_(-1, 1)
        layer.emb1.uniform_(-1, 1)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    out1, out2 = layer(x1), reference(x2)
    upstream = torch.randn_like(out1)
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    assert torch.equal(out1, out2)
    assert torch.allclose(x1.grad, x2.grad, rtol=0, atol=1e-12)
    assert torch.allclose(layer.emb1.grad, reference.emb1.grad, rtol=0, atol=1e-12)


def test_rosa_lm_defaults_and_forward(clean_env):
    model = ROSA_LM(n_layer=2, n_embd=32, vocab_size=50)
    assert model.config.bits == 1 and model.config.n_layer == 2
    logits = model(torch.randint(0, 50, (2, 9)))
    assert logits.shape == (2, 9, 50)
    defaults = inspect.signature(ROSA_LM).parameters
    assert (defaults["n_layer"].default, defaults["n_embd"].default) == (12, 768)

"""RWKV8.overlap_rosa: each ROSA block on a second CUDA stream beside its time-mix
(heron.layers.side_stream). The same numbers as the one-stream model; a plain call on the CPU."""

import copy

import pytest
import torch

from heron.layers.side_stream import join_side_stream, launch_on_side_stream
from heron.models.init import init_lm_recipe, perturb_zeroed_outputs_
from heron.models.rwkv8 import RWKV8, RWKV8Config
from heron.train.config import TrainConfig
from heron.train.distributed import DistributedContext, parallelize


def _model(rosa="qkv1", dtype=torch.float64, **extra) -> RWKV8:
    config = dict(n_layer=2, n_embd=64, vocab_size=97, head_size=16, rosa=rosa, deep_embed=True,
                  rosa_estimator="value", rosa_qk_init="tied", rosa_max_gain=1.0, rosa_tau=0.1, **extra)
    torch.manual_seed(0)
    model = RWKV8(RWKV8Config(**config))
    perturb_zeroed_outputs_(init_lm_recipe(model))
    return model.to(dtype=dtype)


def _logits_and_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    return logits.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _assert_same(expected, got, rtol):
    torch.testing.assert_close(got[0], expected[0], rtol=rtol, atol=0)
    for name, grad in expected[1].items():
        scale = grad.abs().max().clamp_min(1e-30)
        error = ((got[1][name] - grad).abs().max() / scale).item()
        assert error <= rtol, f"{name}: off by {error:.2e} with the ROSA blocks overlapped"


def test_overlap_is_a_plain_call_on_the_cpu():
    serial = _model()
    overlapped = copy.deepcopy(serial).overlap_rosa()
    assert all(block.rosa_overlap for block in overlapped.blocks)
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    _assert_same(_logits_and_grads(serial, tokens), _logits_and_grads(overlapped, tokens), rtol=0.0)
    # an execution setting: the state dict does not change
    assert list(overlapped.state_dict()) == list(serial.state_dict())
    assert overlapped.overlap_rosa(False) is overlapped and not overlapped.blocks[0].rosa_overlap


def test_side_stream_helpers_on_cpu_tensors():
    module = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    out = launch_on_side_stream(module, x)
    assert torch.equal(out, module(x))
    assert join_side_stream(out) is out


def test_overlap_options_are_checked():
    with pytest.raises(TypeError, match="overlap_rosa: enabled must be a bool"):
        _model().overlap_rosa("yes")
    with pytest.raises(ValueError, match="rosa_overlap must be true or false"):
        TrainConfig(task="counting", rosa_overlap="yes")
    plain = _model(rosa=None)
    with pytest.raises(ValueError, match="rosa_overlap: RWKV8 has no ROSA block"):
        parallelize(plain, _Root(plain), DistributedContext(), torch.device("cpu"), rosa_overlap=True)


class _Root(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.mark.gpu
@pytest.mark.parametrize("rosa", ["qkv1", "qkv4"])
def test_overlapped_rosa_blocks_give_the_same_numbers_on_gpu(rosa):
    # eager GPT mode, float64 (no threshold bit can flip between the two runs' arithmetic): the
    # ROSA blocks on the side stream, their gradients crossing back to the main stream
    serial = _model(rosa=rosa).cuda()
    overlapped = copy.deepcopy(serial).overlap_rosa()
    tokens = torch.randint(0, 97, (4, 300), generator=torch.Generator().manual_seed(2)).cuda()
    expected = _logits_and_grads(serial, tokens)
    for _ in range(2):  # the second run reuses memory the first one freed across the streams
        got = _logits_and_grads(overlapped, tokens)
    _assert_same(expected, got, rtol=1e-9)


def test_overlap_is_refused_under_fsdp():
    model = _model()
    with pytest.raises(ValueError, match="rosa_overlap cannot be combined with parallel = 'fsdp'"):
        parallelize(model, _Root(model), DistributedContext(rank=0, world_size=2), torch.device("cpu"),
                    parallel="fsdp", rosa_overlap=True)

"""The CUDA ROSA kernel gives the C++ CPU path's outputs exactly (skips without a CUDA device)."""

import pytest
import torch

from heron.ops.rosa import native_cuda, rosa, rosa_qkv

pytestmark = pytest.mark.gpu


def mixed_streams(batch: int, length: int, channels: int, alphabet: int, seed: int) -> torch.Tensor:
    """[B, T, S] streams: random, constant, periodic and almost-periodic channels side by side."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, alphabet, (batch, length, channels), generator=generator)
    x[:, :, 1::4] = x[:, :1, 1::4]  # constant
    period = torch.arange(length).remainder(3).reshape(1, length, 1)
    x[:, :, 2::4] = period.expand(batch, length, x[:, :, 2::4].shape[2]).remainder(alphabet)
    x[:, :, 3::4] = x[:, :, 2::4][:, :, : x[:, :, 3::4].shape[2]]
    if length > 10:
        x[:, length // 2, 3::4] = alphabet - 1  # one break in the period
    return x


@pytest.mark.parametrize("alphabet", [2, 3, 16, 17, 65536, 2**31 - 1])
@pytest.mark.parametrize("length", [0, 1, 2, 37, 500])
def test_cuda_equals_cpu(alphabet, length):
    x = mixed_streams(3, length, 40, alphabet, seed=length + alphabet % 1000)
    expected = rosa(x, backend="cpu")
    assert torch.equal(rosa(x.cuda(), backend="cuda").cpu(), expected)
    generator = torch.Generator().manual_seed(1)
    q = torch.randint(0, alphabet, x.shape, generator=generator)
    v = torch.randint(0, alphabet, x.shape, generator=generator)
    expected_qkv = rosa_qkv(q, x, v, backend="cpu")
    got = rosa_qkv(q.cuda(), x.cuda(), v.cuda(), backend="cuda").cpu()
    assert torch.equal(got, expected_qkv)


def test_cuda_shapes_and_long_streams():
    generator = torch.Generator().manual_seed(2)
    for shape in [(300,), (5, 300), (2, 4096, 64)]:
        x = torch.randint(0, 2, shape, generator=generator)
        assert torch.equal(rosa(x.cuda()).cpu(), rosa(x, backend="cpu"))
    zeros = torch.zeros(2, 20000, 8, dtype=torch.int64)
    assert torch.equal(rosa(zeros.cuda()).cpu(), rosa(zeros, backend="cpu"))


def test_cuda_chunked_launches():
    # A workspace limit below the full size runs the streams in several chunks.
    x = mixed_streams(2, 300, 33, 2, seed=3).cuda()
    ext = native_cuda()
    stream = torch.cuda.current_stream().cuda_stream
    one_launch = ext.forward(x, x, x, 2, 32, 1 << 30, stream)
    chunked = ext.forward(x, x, x, 2, 32, 200_000, stream)  # a few streams per chunk
    assert torch.equal(one_launch, chunked)
    assert torch.equal(one_launch.cpu(), rosa(x.cpu(), backend="cpu"))


@pytest.mark.parametrize("budget", [0, 1, 20])
def test_cuda_paths_equal_cpu(budget):
    # budget 0: the two-phase algorithm only; 1: fallback midway; 20: the default chain walk.
    ext = native_cuda()
    stream = torch.cuda.current_stream().cuda_stream
    for alphabet, sigma in ((2, 2), (16, 16), (1000, 0)):
        x = mixed_streams(2, 700, 48, alphabet, seed=alphabet)
        q = torch.randint(0, alphabet, x.shape, generator=torch.Generator().manual_seed(4))
        expected_token = rosa(x, backend="cpu")
        expected_qkv = rosa_qkv(q, x, x, backend="cpu")
        xc, qc = x.cuda(), q.cuda()
        assert torch.equal(ext.forward(xc, xc, xc, sigma, 32, 1 << 30, stream, budget).cpu(), expected_token)
        assert torch.equal(ext.forward(qc, xc, xc, sigma, 32, 1 << 30, stream, budget).cpu(), expected_qkv)


def test_cuda_mixed_devices_raise():
    x = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="one device"):
        rosa_qkv(x.cuda(), x, x.cuda())

"""The CUDA ROSA kernels give the C++ CPU path's outputs exactly (skips without a CUDA device).

Two engines: the grouping kernel (one block per stream, default for streams that fit) and the
automaton kernel (one thread per stream; `grouping_work_per_element=0` runs it alone, and it takes
the streams the grouping kernel hands over)."""

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
    one_launch = ext.forward(x, x, x, 2, 32, 1 << 30, stream, grouping_work_per_element=0)
    chunked = ext.forward(x, x, x, 2, 32, 200_000, stream, grouping_work_per_element=0)  # a few streams per chunk
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
        for grouping in (0, 32):  # the automaton alone; behind the grouping kernel's hand-over
            token = ext.forward(xc, xc, xc, sigma, 32, 1 << 30, stream, budget, grouping)
            qkv = ext.forward(qc, xc, xc, sigma, 32, 1 << 30, stream, budget, grouping)
            assert torch.equal(token.cpu(), expected_token)
            assert torch.equal(qkv.cpu(), expected_qkv)


def test_cuda_mixed_devices_raise():
    x = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="one device"):
        rosa_qkv(x.cuda(), x, x.cuda())


def grouping_forward(q, k, v, work_per_element, workspace_limit=1 << 30):
    """The CUDA engine with the grouping kernel's work budget set (q is k: token mode)."""
    ext = native_cuda()
    sigma = int(k.max()) + 1 if k.numel() else 1
    sigma = sigma if sigma <= ext.dense_max_sigma else 0
    return ext.forward(q, k, v, sigma, 32, workspace_limit, torch.cuda.current_stream().cuda_stream,
                       20, work_per_element)


@pytest.mark.parametrize("alphabet", [1, 2, 3, 16, 17, 255, 256])
@pytest.mark.parametrize("length", [1, 2, 37, 500, 4096])
def test_grouping_kernel_equals_cpu(alphabet, length):
    # Work budgets: 1 hands every stream to the automaton at its first level; 32 is the default
    # (constant and periodic channels go over); 1 << 40 keeps every stream in the grouping kernel.
    x = mixed_streams(2, length, 24, alphabet, seed=length * 7 + alphabet)
    generator = torch.Generator().manual_seed(alphabet)
    q = torch.randint(0, alphabet, x.shape, generator=generator)
    v = torch.randint(0, 1 << 20, x.shape, generator=generator)
    q_repeat = x.clone()  # queries from the keys' own history: long matches
    q_large = q.clone()
    q_large[:, :, ::3] += 300  # symbols the kernel cannot store: those streams go to the automaton
    expected = {
        "qkv-large": rosa_qkv(q_large, x, v, backend="cpu"),
        "token": rosa(x, backend="cpu"),
        "qkv": rosa_qkv(q, x, v, backend="cpu"),
        "qkv-repeat": rosa_qkv(q_repeat, x, v, backend="cpu"),
    }
    xc, qc, vc, rc = x.cuda(), q.cuda(), v.cuda(), q_repeat.cuda()
    for budget in (1, 32, 1 << 40):
        assert torch.equal(grouping_forward(q_large.cuda(), xc, vc, budget).cpu(), expected["qkv-large"]), budget
        assert torch.equal(grouping_forward(xc, xc, xc, budget).cpu(), expected["token"]), budget
        assert torch.equal(grouping_forward(qc, xc, vc, budget).cpu(), expected["qkv"]), budget
        assert torch.equal(grouping_forward(rc, xc, vc, budget).cpu(), expected["qkv-repeat"]), budget


def test_grouping_kernel_size_limits_and_long_repeats():
    generator = torch.Generator().manual_seed(5)
    # The largest streams the kernel takes (token T = 16384, QKV T = 8192) and one past them.
    for length, qkv in ((16384, False), (8192, True), (8193, True), (16385, False)):
        x = torch.randint(0, 2, (1, length, 3), generator=generator)
        q = torch.randint(0, 2, x.shape, generator=generator) if qkv else x
        xc, qc = x.cuda(), q.cuda()
        got = grouping_forward(qc, xc, xc, 32).cpu()
        assert torch.equal(got, rosa_qkv(q, x, x, backend="cpu")), (length, qkv)
    # A random segment shown twice (the copy pattern: matches hundreds of symbols long), and
    # positions as values (the value estimator's retrieval).
    segment = torch.randint(0, 16, (1, 700, 4), generator=generator)
    x = torch.cat([segment, torch.randint(0, 16, (1, 50, 4), generator=generator), segment], dim=1)
    positions = torch.arange(x.shape[1]).reshape(1, -1, 1).expand_as(x).contiguous()
    xc, pc = x.cuda(), positions.cuda()
    for budget in (32, 1 << 40):
        assert torch.equal(grouping_forward(xc, xc, pc, budget).cpu(), rosa_qkv(x, x, positions, backend="cpu"))
        assert torch.equal(grouping_forward(xc, xc, xc, budget).cpu(), rosa(x, backend="cpu"))


def test_grouping_kernel_constant_streams():
    # Constant q and k are answered in closed form: equal constants, unequal ones, any symbol size.
    length = 300
    v = torch.randint(0, 1000, (2, length, 3), generator=torch.Generator().manual_seed(6))
    for query_symbol, key_symbol in ((0, 0), (1, 0), (7, 7), (1000, 1000), (1000, 3)):
        q = torch.full((2, length, 3), query_symbol, dtype=torch.int64)
        k = torch.full((2, length, 3), key_symbol, dtype=torch.int64)
        expected = rosa_qkv(q, k, v, backend="cpu")
        assert torch.equal(grouping_forward(q.cuda(), k.cuda(), v.cuda(), 32).cpu(), expected)
        assert torch.equal(grouping_forward(k.cuda(), k.cuda(), k.cuda(), 32).cpu(), rosa(k, backend="cpu"))


def few_run_streams(batch: int, length: int, channels: int, alphabet: int, seed: int) -> torch.Tensor:
    """[B, T, S] streams made of few runs of equal symbols: a random number of runs on both sides
    of the runs branch's limit (64), with random sizes, sizes repeating in a short pattern (long
    chains of equal runs in the backward common-length table) and a single long run."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.empty(batch, length, channels, dtype=torch.int64)
    for row in range(batch):
        for channel in range(channels):
            runs = int(torch.randint(1, min(length, 72) + 1, (1,), generator=generator))
            if channel % 3 == 1:  # sizes repeating with period 2 or 3 over the whole stream
                pattern = torch.randint(1, 6, (int(torch.randint(2, 4, (1,), generator=generator)),), generator=generator)
                sizes = pattern.repeat(length // int(pattern.sum()) + 1)
            else:
                cuts = torch.randperm(length - 1, generator=generator)[: runs - 1] + 1
                bounds = torch.cat([torch.zeros(1, dtype=torch.int64), cuts.sort().values, torch.tensor([length])])
                sizes = bounds.diff()
            symbols = torch.randint(0, alphabet, (sizes.numel(),), generator=generator)
            if alphabet > 1:  # adjacent runs differ
                for index in range(1, symbols.numel()):
                    while symbols[index] == symbols[index - 1]:
                        symbols[index] = torch.randint(0, alphabet, (1,), generator=generator)
            x[row, :, channel] = symbols.repeat_interleave(sizes)[:length]
    return x


@pytest.mark.parametrize("alphabet", [2, 3, 16])
@pytest.mark.parametrize("length", [5, 37, 129, 512, 4096])
def test_grouping_kernel_runs_branch_equals_cpu(alphabet, length):
    # Token streams with at most 64 runs are answered from their runs; those just above go
    # through the grouping. Values distinct per position show which key position answered.
    x = few_run_streams(2, length, 24, alphabet, seed=length * 5 + alphabet)
    v = torch.randint(0, 1 << 20, x.shape, generator=torch.Generator().manual_seed(length))
    xc, vc = x.cuda(), v.cuda()
    expected = rosa_qkv(x, x, v, backend="cpu")
    for budget in (1, 32, 1 << 40):
        assert torch.equal(grouping_forward(xc, xc, vc, budget).cpu(), expected), budget
    assert torch.equal(grouping_forward(xc, xc, xc, 32).cpu(), rosa(x, backend="cpu"))


def test_default_engine_uses_grouping_and_matches_cpu():
    # The public functions with the module's defaults, alphabets on both sides of the grouping
    # kernel's symbol limit.
    for alphabet in (2, 16, 255, 256, 65536):
        x = mixed_streams(3, 300, 16, alphabet, seed=alphabet)
        assert torch.equal(rosa(x.cuda()).cpu(), rosa(x, backend="cpu")), alphabet

"""ROSA engine: the oracle, the Python automaton and the C++ CPU path agree (spec/ROSA.md §1-2, §6)."""

import random
import sys
import time

import pytest
import torch

import heron.ops.rosa  # noqa: F401  (the module; `heron.ops.rosa` the attribute is the function)

from heron.ops.rosa import (
    SYMBOL_LIMIT,
    native_cpu,
    pack_bits,
    rosa,
    rosa_automaton,
    rosa_grouping,
    rosa_oracle,
    rosa_qkv,
    rosa_qkv_automaton,
    rosa_qkv_grouping,
    rosa_runs,
    rosa_qkv_oracle,
    unpack_bits,
)

rosa_module = sys.modules["heron.ops.rosa"]
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALPHABETS = [2, 3, 16, 65536]
KINDS = ["random", "constant", "periodic", "almost_periodic"]
PROPERTY_SETTINGS = settings(
    max_examples=1200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def long_tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def draw_stream(draw, length: int, alphabet: int, kind: str) -> list[int]:
    symbol = st.integers(0, alphabet - 1)
    if kind == "random":
        return draw(st.lists(symbol, min_size=length, max_size=length))
    if kind == "constant":
        return [draw(symbol)] * length
    period = draw(st.integers(1, 8))
    pattern = draw(st.lists(symbol, min_size=period, max_size=period))
    values = (pattern * (length // period + 1))[:length]
    if kind == "almost_periodic" and length > 0:
        edits = draw(st.lists(st.tuples(st.integers(0, length - 1), symbol), min_size=1, max_size=3))
        for position, value in edits:
            values[position] = value
    return values


@st.composite
def token_streams(draw):
    length = draw(st.integers(0, 64))
    return draw_stream(draw, length, draw(st.sampled_from(ALPHABETS)), draw(st.sampled_from(KINDS)))


@st.composite
def qkv_streams(draw):
    length = draw(st.integers(0, 64))
    streams = [
        draw_stream(draw, length, draw(st.sampled_from(ALPHABETS)), draw(st.sampled_from(KINDS)))
        for _ in range(3)
    ]
    if draw(st.booleans()):  # queries drawn from the keys' own history: long matches
        streams[0] = list(streams[1])
    return streams


def engine_outputs(q: list[int], k: list[int], v: list[int]) -> dict[str, list[int]]:
    """The C++ engine's outputs through each of its paths: the chain-walking pass with the default
    budget, with a budget so small that streams fall back to the two-phase algorithm midway, and
    the two-phase algorithm alone; each with the matcher (q, k separate buffers) and, when q == k,
    in token mode (one buffer)."""
    ext = native_cpu()
    key = long_tensor(k).reshape(1, -1, 1)
    value = long_tensor(v).reshape(1, -1, 1)
    query = long_tensor(q).reshape(1, -1, 1)
    sigma = rosa_module._dense_sigma(key, ext.dense_max_sigma)
    results = {}
    for budget_name, budget in (("default", None), ("tiny", 1), ("two-phase", 0)):
        extra = () if budget is None else (budget,)
        results[f"qkv/{budget_name}"] = ext.forward(query, key, value, sigma, *extra).reshape(-1).tolist()
        if q == k:
            results[f"token/{budget_name}"] = ext.forward(key, key, value, sigma, *extra).reshape(-1).tolist()
    if q == k == v:  # one buffer three times: 1-bit streams try the sorting path first
        results["token/one-buffer"] = ext.forward(key, key, key, sigma).reshape(-1).tolist()
        results["token/one-buffer-engine"] = ext.forward(key, key, key, sigma, token_bits=False).reshape(-1).tolist()
    return results


def assert_all_paths(q, k, v, expected):
    for path, output in engine_outputs(q, k, v).items():
        assert output == expected, path


def test_spec_example_every_backend():
    x = long_tensor([0, 1, 0, 1, 1, 0, 1])
    expected = [-1, -1, 1, 0, 1, 1, 1]
    assert rosa_oracle(x.tolist()) == expected
    for backend in ("auto", "cpu", "python"):
        assert rosa(x, backend=backend).tolist() == expected


@PROPERTY_SETTINGS
@given(token_streams())
def test_token_rosa_matches_oracle(x):
    expected = rosa_oracle(x)
    assert rosa_automaton(x) == expected
    assert rosa_grouping(x) == expected  # the GPU kernel's algorithm
    assert rosa_runs(x) == expected  # the planned algorithm for nearly constant streams
    assert rosa(long_tensor(x), backend="cpu").tolist() == expected
    assert_all_paths(x, x, x, expected)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.lists(st.tuples(st.integers(0, 2), st.integers(1, 40)), min_size=1, max_size=8))
def test_runs_algorithm_on_nearly_constant_streams(alphabet, runs):
    # few long runs (the deep layers' channels), with positions as values (the retrieval)
    x = [symbol % alphabet for symbol, size in runs for _ in range(size)]
    positions = list(range(len(x)))
    assert rosa_runs(x) == rosa_oracle(x)
    assert rosa_runs(x, positions) == rosa_qkv_oracle(x, x, positions)


@PROPERTY_SETTINGS
@given(qkv_streams())
def test_qkv_rosa_matches_oracle(streams):
    q, k, v = streams
    expected = rosa_qkv_oracle(q, k, v)
    assert rosa_qkv_automaton(q, k, v) == expected
    assert rosa_qkv_grouping(q, k, v) == expected  # the GPU kernel's algorithm
    assert rosa_qkv(long_tensor(q), long_tensor(k), long_tensor(v), backend="cpu").tolist() == expected
    assert_all_paths(q, k, v, expected)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(0, SYMBOL_LIMIT - 1), min_size=1, max_size=6),
    st.lists(st.integers(0, 5), min_size=0, max_size=48),
    st.lists(st.integers(0, 5), min_size=0, max_size=48),
)
def test_large_symbols_use_the_hashed_path(palette, key_picks, query_picks):
    # Symbols up to 2**31 - 1 (hashed transitions); queries may use symbols no key has.
    length = min(len(key_picks), len(query_picks))
    k = [palette[i % len(palette)] for i in key_picks[:length]]
    q = [palette[i % len(palette)] if i < 5 else SYMBOL_LIMIT - 1 - i for i in query_picks[:length]]
    v = list(reversed(k))
    expected = rosa_qkv_oracle(q, k, v)
    assert rosa_qkv(long_tensor(q), long_tensor(k), long_tensor(v), backend="cpu").tolist() == expected
    assert_all_paths(q, k, v, expected)
    assert_all_paths(k, k, v, rosa_qkv_oracle(k, k, v))


def random_stream(rng: random.Random, length: int, alphabet: int, kind: str) -> list[int]:
    if kind == "random":
        return [rng.randrange(alphabet) for _ in range(length)]
    if kind == "constant":
        return [rng.randrange(alphabet)] * length
    period = rng.randint(1, 8)
    pattern = [rng.randrange(alphabet) for _ in range(period)]
    values = (pattern * (length // period + 1))[:length]
    if kind == "almost_periodic":
        for _ in range(rng.randint(1, 3)):
            values[rng.randrange(length)] = rng.randrange(alphabet)
    return values


@pytest.mark.parametrize("alphabet", [2, 3, 16, 17, 65536])
def test_batched_streams_match_automaton_and_oracle(alphabet):
    # Thousands of streams in one [B, T] call: every row must equal its own single-stream answer.
    # Alphabets 16 and 17 straddle the dense/hashed transition switch.
    rng = random.Random(alphabet)
    length, batch = 48, 600
    rows = [random_stream(rng, length, alphabet, KINDS[i % 4]) for i in range(batch)]
    queries = [random_stream(rng, length, alphabet, KINDS[(i + 1) % 4]) for i in range(batch)]
    values = [random_stream(rng, length, alphabet, "random") for _ in range(batch)]
    token_out = rosa(long_tensor(rows), backend="cpu").tolist()
    qkv_out = rosa_qkv(long_tensor(queries), long_tensor(rows), long_tensor(values), backend="cpu").tolist()
    ext = native_cpu()
    keys = long_tensor(rows).unsqueeze(-1)
    sigma = rosa_module._dense_sigma(keys, ext.dense_max_sigma)
    for budget in (0, 1):  # the two-phase algorithm from the start, and after a fallback midway
        engine = ext.forward(keys, keys, keys, sigma, budget, token_bits=False)
        assert engine.squeeze(-1).tolist() == token_out
        other = ext.forward(long_tensor(queries).unsqueeze(-1), keys, long_tensor(values).unsqueeze(-1),
                            sigma, budget)
        assert other.squeeze(-1).tolist() == qkv_out
    for i in range(batch):
        assert token_out[i] == rosa_automaton(rows[i])
        assert qkv_out[i] == rosa_qkv_automaton(queries[i], rows[i], values[i])
    for i in range(0, batch, 20):
        assert token_out[i] == rosa_oracle(rows[i])
        assert qkv_out[i] == rosa_qkv_oracle(queries[i], rows[i], values[i])


def one_bit_streams(rng: random.Random, length: int) -> list[list[int]]:
    """Random, all-zero, all-one, periodic and almost periodic 1-bit streams; the last ones also
    with a long random prefix, so the sorting path meets its long-match cap midway."""
    period_streams = []
    for period in (1, 2, 3, 5, 7, 31, 32, 33):
        pattern = [rng.randrange(2) for _ in range(period)]
        stream = (pattern * (length // period + 1))[:length]
        period_streams.append(stream)
        almost = list(stream)
        for _ in range(3):
            if length:
                almost[rng.randrange(length)] ^= 1
        period_streams.append(almost)
        prefix = [rng.randrange(2) for _ in range(length // 2)]
        period_streams.append((prefix + stream)[:length])
    sparse = [int(rng.random() < 0.05) for _ in range(length)]
    return [[rng.randrange(2) for _ in range(length)] for _ in range(6)] + [
        [0] * length, [1] * length, sparse, *period_streams]


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 500, 4096])
def test_one_bit_token_sorting_path_matches_automaton(length):
    # rosa_token_bits.h: token ROSA of 1-bit streams by sorting positions on their last 32
    # symbols; it must equal the automaton wherever it answers, and hand the rest to the engine.
    rng = random.Random(length)
    streams = one_bit_streams(rng, length)
    expected = [rosa_automaton(stream) for stream in streams]
    ext = native_cpu()
    batch = long_tensor(streams)  # [B, T]
    assert rosa(batch, backend="cpu").tolist() == expected
    keys = batch.unsqueeze(-1)
    assert ext.forward(keys, keys, keys, 2).squeeze(-1).tolist() == expected
    assert ext.forward(keys, keys, keys, 2, token_bits=False).squeeze(-1).tolist() == expected
    # [B, T, S]: channel streams interleaved in time
    channels = 3
    layout = long_tensor(streams[: 2 * channels]).reshape(2, channels, length).permute(0, 2, 1).contiguous()
    out = rosa(layout, backend="cpu")
    for b in range(2):
        for s in range(channels):
            assert out[b, :, s].tolist() == expected[b * channels + s]
    if length <= 500:
        for stream, answer in zip(streams[:8], expected[:8]):
            assert rosa_oracle(stream) == answer


def test_one_bit_token_sorting_path_random_batch():
    # Many random 1-bit streams at T = 4096: about one in 200-300 has a match of 31+ symbols and
    # goes to the engine; every row must equal the engine alone and the automaton.
    generator = torch.Generator().manual_seed(4096)
    x = torch.randint(0, 2, (512, 4096), generator=generator)
    out = rosa(x, backend="cpu")
    keys = x.unsqueeze(-1)
    assert torch.equal(out, native_cpu().forward(keys, keys, keys, 2, token_bits=False).squeeze(-1))
    for row in range(0, 512, 64):
        assert out[row].tolist() == rosa_automaton(x[row].tolist())


def test_shapes_channels_and_layouts():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 40, 5), generator=generator)
    out = rosa(x, backend="cpu")
    assert out.shape == x.shape and out.dtype == torch.int64
    for b in range(2):
        for s in range(5):
            stream = x[b, :, s]
            assert out[b, :, s].tolist() == rosa_oracle(stream.tolist())
            assert rosa(stream, backend="cpu").tolist() == out[b, :, s].tolist()
    assert rosa(x[:, :, 1], backend="cpu").tolist() == out[:, :, 1].tolist()  # [B, T], non-contiguous
    assert torch.equal(rosa(x, backend="python"), out)
    assert torch.equal(rosa(x.to(torch.int32), backend="cpu"), out)
    q, k, v = (torch.randint(0, 4, (3, 33, 2), generator=generator) for _ in range(3))
    assert torch.equal(rosa_qkv(q, k, v, backend="cpu"), rosa_qkv(q, k, v, backend="python"))


def test_empty_and_tiny_inputs():
    for shape in [(0,), (3, 0), (2, 0, 4), (0, 5), (0, 5, 3), (1,), (2, 1, 3)]:
        x = torch.zeros(shape, dtype=torch.int64)
        out = rosa(x, backend="cpu")
        assert out.shape == x.shape and out.dtype == torch.int64
        assert torch.equal(out, rosa(x, backend="python"))
    assert rosa(long_tensor([5, 5]), backend="cpu").tolist() == [-1, 5]


def test_bad_inputs_raise_named_errors():
    x = long_tensor([0, 1, 1])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        rosa([0, 1, 1])
    with pytest.raises(TypeError, match="q must hold integer symbols"):
        rosa(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="q must hold integer symbols"):
        rosa(torch.tensor([True, False]))
    with pytest.raises(TypeError, match="k must hold integer symbols"):
        rosa_qkv(x, x.float(), x)
    with pytest.raises(ValueError, match="v must hold non-negative symbols"):
        rosa_qkv(x, x, long_tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="q must hold symbols below 2\\*\\*31"):
        rosa_qkv(long_tensor([0, 2**31, 2]), x, x)
    with pytest.raises(ValueError, match="same shape"):
        rosa_qkv(x, long_tensor([0, 1]), long_tensor([0, 1]))
    with pytest.raises(ValueError, match="q must have shape"):
        rosa(torch.zeros(1, 2, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend must be one of"):
        rosa(x, backend="gpu")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        rosa(x, backend="cuda")


def test_tensors_off_the_cpu_and_cuda_are_named():
    # A meta tensor has no symbols to read: named before any value is read back (which used to
    # fail with "Cannot copy out of meta tensor"), empty or not
    x = torch.zeros(0, dtype=torch.int64)
    for length in (0, 3):
        meta = torch.zeros(length, dtype=torch.int64, device="meta")
        with pytest.raises(ValueError, match="v must be on the CPU or a CUDA device, got meta"):
            rosa_qkv(x if length == 0 else long_tensor([0, 1, 1]), x if length == 0 else long_tensor([0, 1, 1]), meta)


def pack_bits_loop(x: torch.Tensor, bits: int) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    groups = x.shape[-1] // bits
    out = torch.zeros(flat.shape[0], groups, dtype=torch.int64)
    for row in range(flat.shape[0]):
        for group in range(groups):
            out[row, group] = sum(
                int(flat[row, bits * group + m] > 0) << m for m in range(bits)
            )
    return out.reshape(*x.shape[:-1], groups)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bits_matches_loop_and_round_trips(bits):
    generator = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 5, 3 * bits, generator=generator)
    x[0, 0, 0] = 0.0  # exactly zero is bit 0
    packed = pack_bits(x, bits)
    assert packed.dtype == torch.int64 and packed.shape == (2, 5, 3)
    assert torch.equal(packed, pack_bits_loop(x, bits))
    assert packed.min() >= 0 and packed.max() < 2**bits
    assert torch.equal(unpack_bits(packed, bits), (x > 0).long())
    symbols = torch.randint(0, 2**bits, (4, 6), generator=generator)
    assert torch.equal(pack_bits(unpack_bits(symbols, bits).float() - 0.5, bits), symbols)


def test_pack_bits_bad_inputs():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        pack_bits(x, 0)
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        pack_bits(x, 9)
    with pytest.raises(TypeError, match="bits must be an int"):
        pack_bits(x, 2.0)
    with pytest.raises(ValueError, match="not divisible by bits=3"):
        pack_bits(x, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pack_bits([1.0, 2.0], 1)
    with pytest.raises(ValueError, match="symbols must lie in \\[0, 16\\)"):
        unpack_bits(long_tensor([3, 16]), 4)
    with pytest.raises(ValueError, match="symbols must lie in"):
        unpack_bits(long_tensor([-1]), 4)
    with pytest.raises(TypeError, match="symbols must be an integer tensor"):
        unpack_bits(torch.tensor([1.0]), 4)


def best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_worst_case_streams_stay_near_linear():
    # The chain-walking automaton is ~T/2 times slower per token on a constant stream than on a
    # random one (thousands of times at this T); an O(T log T) engine stays within a small factor.
    # The bound is loose so that a busy machine cannot fail it, and tight enough to catch O(T^2).
    length = 1 << 17
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(0, 2, (1, length), generator=generator)
    zeros = torch.zeros(1, length, dtype=torch.int64)
    periodic = torch.arange(length).remainder(3).reshape(1, length)
    rosa(zeros[:, :64], backend="cpu")  # build / load outside the timing
    random_time = best_time(lambda: rosa(random_bits, backend="cpu"))
    for stream in (zeros, periodic):
        assert best_time(lambda: rosa(stream, backend="cpu")) < 6 * random_time

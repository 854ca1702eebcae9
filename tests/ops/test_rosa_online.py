"""OnlineROSA (incremental QKV ROSA) equals rosa_qkv on the same history (spec/ROSA.md §5)."""

import copy
import random
import time

import pytest
import torch

from heron.ops.rosa import OnlineROSA, rosa_qkv, rosa_qkv_oracle

BACKENDS = ["cpu", "python"]


def random_streams(rng: random.Random, num_streams: int, length: int) -> torch.Tensor:
    """Mixed kinds per stream: random over alphabets 2/3/16/65536, constant, periodic, almost periodic."""
    rows = []
    for stream in range(num_streams):
        kind = stream % 5
        alphabet = [2, 3, 16, 65536, 2][stream % 5]
        if kind == 1:
            row = [rng.randrange(alphabet)] * length
        elif kind in (2, 4):
            period = rng.randint(1, 5)
            pattern = [rng.randrange(alphabet) for _ in range(period)]
            row = (pattern * (length // period + 1))[:length]
            if kind == 4 and length:
                row[rng.randrange(length)] = rng.randrange(alphabet)
        else:
            row = [rng.randrange(alphabet) for _ in range(length)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64).reshape(num_streams, length)


def make_history(seed: int, num_streams: int, length: int):
    rng = random.Random(seed)
    q = random_streams(rng, num_streams, length)
    k = random_streams(rng, num_streams, length)
    v = random_streams(rng, num_streams, length)
    # Some streams query their own keys (token ROSA): long matches and frequent clones.
    q[::2] = k[::2]
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
def test_push_and_extend_equal_whole_sequence(backend):
    q, k, v = make_history(0, num_streams=10, length=60)
    expected = rosa_qkv(q, k, v, backend="cpu")
    for stream in range(0, 10, 3):
        assert expected[stream].tolist() == rosa_qkv_oracle(
            q[stream].tolist(), k[stream].tolist(), v[stream].tolist()
        )
    stepped = OnlineROSA(10, backend=backend)
    outputs = [stepped.push(q[:, t], k[:, t], v[:, t]) for t in range(60)]
    assert torch.equal(torch.stack(outputs, dim=1), expected)
    assert stepped.length == 60 and stepped.num_streams == 10

    chunked = OnlineROSA(10, backend=backend)
    rng = random.Random(1)
    start, pieces = 0, []
    while start < 60:
        stop = min(60, start + rng.randint(0, 9))  # chunks of 0..9 steps, empty ones included
        pieces.append(chunked.extend(q[:, start:stop], k[:, start:stop], v[:, start:stop]))
        start = stop
    assert torch.equal(torch.cat(pieces, dim=1), expected)


def test_long_streams_match_whole_sequence():
    q, k, v = make_history(2, num_streams=20, length=700)
    online = OnlineROSA(20, backend="cpu")
    first = online.extend(q[:, :350], k[:, :350], v[:, :350])
    second = online.extend(q[:, 350:], k[:, 350:], v[:, 350:])
    assert torch.equal(torch.cat([first, second], dim=1), rosa_qkv(q, k, v, backend="cpu"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_branches_independently(backend):
    q, k, v = make_history(3, num_streams=6, length=50)
    q2, k2, v2 = make_history(4, num_streams=6, length=20)
    trunk = OnlineROSA(6, backend=backend)
    trunk.extend(q[:, :30], k[:, :30], v[:, :30])
    branch = trunk.copy()
    tail_trunk = trunk.extend(q[:, 30:], k[:, 30:], v[:, 30:])
    tail_branch = branch.extend(q2, k2, v2)
    assert torch.equal(tail_trunk, rosa_qkv(q, k, v)[:, 30:])
    joined = [torch.cat([a[:, :30], b], dim=1) for a, b in ((q, q2), (k, k2), (v, v2))]
    assert torch.equal(tail_branch, rosa_qkv(*joined)[:, 30:])
    assert trunk.length == 50 and branch.length == 50


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_reorders_and_repeats_streams(backend):
    q, k, v = make_history(5, num_streams=5, length=40)
    online = OnlineROSA(5, backend=backend)
    online.extend(q[:, :25], k[:, :25], v[:, :25])
    index = torch.tensor([4, 0, 0, 2])
    chosen = online.select(index)
    assert chosen.num_streams == 4 and chosen.length == 25
    tail = chosen.extend(q[index, 25:], k[index, 25:], v[index, 25:])
    assert torch.equal(tail, rosa_qkv(q[index], k[index], v[index])[:, 25:])
    # The original is untouched by the selection's pushes.
    assert torch.equal(online.extend(q[:, 25:], k[:, 25:], v[:, 25:]), rosa_qkv(q, k, v)[:, 25:])
    empty = online.select(torch.zeros(0, dtype=torch.int64))
    assert empty.num_streams == 0 and empty.length == 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip(backend, tmp_path):
    q, k, v = make_history(6, num_streams=4, length=45)
    online = OnlineROSA(4, backend=backend)
    online.extend(q[:, :30], k[:, :30], v[:, :30])
    state = online.state_dict()
    assert torch.equal(state["q"], q[:, :30]) and torch.equal(state["v"], v[:, :30])
    path = tmp_path / "online.pt"
    torch.save(state, path)
    restored = OnlineROSA.from_state_dict(torch.load(path, weights_only=True), backend=backend)
    assert restored.length == 30 and restored.num_streams == 4
    tail = restored.extend(q[:, 30:], k[:, 30:], v[:, 30:])
    assert torch.equal(tail, rosa_qkv(q, k, v)[:, 30:])
    # Across backends too: a Python state continues in C++ and vice versa.
    other = "python" if backend == "cpu" else "cpu"
    assert torch.equal(OnlineROSA.from_state_dict(state, backend=other).extend(
        q[:, 30:], k[:, 30:], v[:, 30:]), tail)


def test_branching_after_the_switch_to_the_link_cut_tree():
    # Constant and periodic streams exhaust the chain-walking budget within a few hundred steps
    # and continue on the link-cut tree; copies, selections and restored states must follow.
    length = 420
    base = torch.arange(length)
    k = torch.stack([torch.zeros(length, dtype=torch.int64), base.remainder(3), base.remainder(7),
                     torch.randint(0, 2, (length,), generator=torch.Generator().manual_seed(8))])
    k[2, 200] = 5  # almost periodic
    q = k.clone()
    q[1] = base.remainder(2)
    v = torch.randint(0, 4, k.shape, generator=torch.Generator().manual_seed(9))
    expected = rosa_qkv(q, k, v)
    online = OnlineROSA(4, backend="cpu")
    assert torch.equal(online.extend(q[:, :300], k[:, :300], v[:, :300]), expected[:, :300])
    branch = online.copy()
    chosen = online.select(torch.tensor([3, 0, 0]))
    restored = OnlineROSA.from_state_dict(online.state_dict())
    assert torch.equal(online.extend(q[:, 300:], k[:, 300:], v[:, 300:]), expected[:, 300:])
    assert torch.equal(branch.extend(q[:, 300:], k[:, 300:], v[:, 300:]), expected[:, 300:])
    assert torch.equal(restored.extend(q[:, 300:], k[:, 300:], v[:, 300:]), expected[:, 300:])
    index = torch.tensor([3, 0, 0])
    assert torch.equal(chosen.extend(q[index, 300:], k[index, 300:], v[index, 300:]),
                       expected[index, 300:])


def test_zero_streams_and_zero_steps():
    online = OnlineROSA(0)
    out = online.extend(torch.zeros(0, 5, dtype=torch.int64), torch.zeros(0, 5, dtype=torch.int64),
                        torch.zeros(0, 5, dtype=torch.int64))
    assert out.shape == (0, 5) and online.length == 5
    online = OnlineROSA(3)
    assert online.extend(*(torch.zeros(3, 0, dtype=torch.int64),) * 3).shape == (3, 0)
    assert online.state_dict()["q"].shape == (3, 0)


def test_bad_inputs_raise_named_errors():
    online = OnlineROSA(3)
    ok = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="num_streams must be an int"):
        OnlineROSA(2.0)
    with pytest.raises(ValueError, match="num_streams must be >= 0"):
        OnlineROSA(-1)
    with pytest.raises(ValueError, match="backend must be one of"):
        OnlineROSA(2, backend="cuda")
    with pytest.raises(TypeError, match="q must hold integer symbols"):
        online.push(ok.float(), ok, ok)
    with pytest.raises(ValueError, match="k must have shape \\[S\\] with S = num_streams = 3"):
        online.push(ok, torch.zeros(4, dtype=torch.int64), ok)
    with pytest.raises(ValueError, match="v must hold non-negative symbols"):
        online.push(ok, ok, ok - 1)
    with pytest.raises(ValueError, match="q must have shape \\[S, T\\]"):
        online.extend(ok, ok, ok)
    with pytest.raises(ValueError, match="same shape"):
        online.extend(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64),
                      torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="stream_index must lie in \\[0, 3\\)"):
        online.select(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="stream_index must be an integer tensor"):
        online.select(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="missing the keys"):
        OnlineROSA.from_state_dict({"num_streams": 3})
    assert online.length == 0  # nothing was pushed by the failed calls


def test_constant_stream_steps_stay_cheap():
    # The official per-step chain update makes a constant stream quadratic; the link-cut tree
    # keeps it within a small factor of a random stream (loose bound, robust to a busy machine).
    length = 40000
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(0, 2, (1, length), generator=generator)
    zeros = torch.zeros(1, length, dtype=torch.int64)

    def run(x):
        start = time.perf_counter()
        OnlineROSA(1, backend="cpu").extend(x, x, x)
        return time.perf_counter() - start

    OnlineROSA(1, backend="cpu")  # build / load outside the timing
    random_time = min(run(random_bits) for _ in range(3))
    assert min(run(zeros) for _ in range(3)) < 8 * random_time


def test_threads_sharing_one_object_are_serialised():
    """The C++ bank releases the GIL: two threads extending one object used to corrupt it (abort)."""
    import threading

    online = OnlineROSA(8)
    generator = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, 2, (8, 20000), generator=generator) for _ in range(4)]
    outputs = {}

    def work(i):
        outputs[i] = online.extend(chunks[i], chunks[i], chunks[i])
        online.copy()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert online.length == 4 * 20000
    q, k, v = online.history()
    # whatever order the threads ran in, the result is that of one stream of the four chunks
    replay = OnlineROSA(8, backend="cpu").extend(q, k, v)
    order = [i for start in range(0, 4 * 20000, 20000) for i in range(4)
             if torch.equal(q[:, start:start + 20000], chunks[i])]
    assert sorted(order) == [0, 1, 2, 3]
    torch.testing.assert_close(torch.cat([outputs[i] for i in order], dim=1), replay, rtol=0, atol=0)
    assert copy.deepcopy(online).length == online.length

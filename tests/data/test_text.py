import json

import numpy as np
import pytest
import torch

from heron.data import text as text_module
from heron.data.text import (
    RepeatAugmentation,
    TextSource,
    demo_corpus_documents,
    demo_corpus_tokens,
    load_token_file,
    most_frequent_tokens,
    read_binidx,
    tokenize_documents,
    write_binidx,
)
from heron.data.tokenizers import get_tokenizer


@pytest.fixture
def corpus_files(tmp_path):
    txt = tmp_path / "story.txt"
    txt.write_text("Once upon a time there was a heron. " * 20, encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": "first document ü"}), "",
                                json.dumps("second document as a bare string"),
                                json.dumps({"text": "third", "meta": 1})]) + "\n", encoding="utf-8")
    return txt, jsonl


def test_documents_end_with_separators(corpus_files):
    _, jsonl = corpus_files
    world = get_tokenizer("world")
    tokens = tokenize_documents(text_module.iter_documents(jsonl), world)
    separators = np.flatnonzero(tokens == 0)
    assert len(separators) == 3 and separators[-1] == len(tokens) - 1
    pieces = np.split(tokens, separators + 1)[:-1]
    assert [world.decode(piece[:-1].tolist()) for piece in pieces] == [
        "first document ü", "second document as a bare string", "third"]


@pytest.mark.parametrize("tokenizer", ["world", "bytes"])
def test_cache_is_reused_and_keyed_by_content(tmp_path, corpus_files, tokenizer):
    txt, _ = corpus_files
    cache = tmp_path / "cache"
    first = load_token_file(txt, tokenizer, cache)
    assert isinstance(first, np.memmap)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1
    again = load_token_file(txt, tokenizer, cache)
    assert np.array_equal(first, again) and sorted(cache.glob("*.npy")) == files
    txt.write_text("changed content", encoding="utf-8")
    changed = load_token_file(txt, tokenizer, cache)
    assert len(list(cache.glob("*.npy"))) == 2
    assert get_tokenizer(tokenizer).decode(changed.tolist()) == "changed content"


def test_damaged_cache_entry_is_rebuilt(tmp_path, corpus_files):
    txt, _ = corpus_files
    cache = tmp_path / "cache"
    reference = np.array(load_token_file(txt, "bytes", cache))
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"garbage")
    assert np.array_equal(load_token_file(txt, "bytes", cache), reference)


def test_batches_are_windows_and_deterministic(tmp_path, corpus_files):
    source = TextSource.from_files(list(corpus_files), seq_len=16, tokenizer="world", cache_dir=tmp_path)
    assert source.vocab_size == 65536
    inputs, targets = source.batch(8, torch.Generator().manual_seed(5))
    assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # every row is a window of the stream
    stream = torch.from_numpy(source.tokens.astype(np.int64))
    for row in range(8):
        windows = stream.unfold(0, 17, 1)
        assert (windows == torch.cat([inputs[row], targets[row, -1:]])).all(dim=1).any()
    again = source.batch(8, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)
    # resuming from a saved generator state continues the same sequence
    generator = torch.Generator().manual_seed(11)
    source.batch(4, generator)
    saved = generator.get_state()
    expected = source.batch(4, generator)
    resumed = torch.Generator()
    resumed.set_state(saved)
    assert torch.equal(source.batch(4, resumed)[0], expected[0])


def test_binidx_round_trip(tmp_path):
    documents = [[5, 6, 7, 0], [9, 0], list(range(1, 40)) + [0]]
    prefix = write_binidx(tmp_path / "data", documents, dtype=np.uint16)
    stream = read_binidx(prefix)
    assert stream.dtype == np.uint16
    assert stream.tolist() == [token for document in documents for token in document]
    for spelled in (prefix, prefix.with_suffix(".bin"), prefix.with_suffix(".idx")):
        assert np.array_equal(load_token_file(spelled), stream)
    source = TextSource.from_files([prefix.with_suffix(".bin")], seq_len=8, tokenizer="world")
    assert source.num_tokens == len(stream)


def test_binidx_prefixes_with_dots_name_their_own_files(tmp_path):
    """PREFIX.bin / PREFIX.idx are appended to the prefix: with_suffix replaced its last dotted
    part, so my.data.v2 read my.data.bin (another file, when one existed)."""
    write_binidx(tmp_path / "my.data", [[9, 9, 9]], dtype=np.uint16)  # the file the bug would read
    prefix = write_binidx(tmp_path / "my.data.v2", [[1, 2, 3, 0]], dtype=np.uint16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.data.bin", "my.data.idx", "my.data.v2.bin",
                                                          "my.data.v2.idx"]
    for spelled in (prefix, tmp_path / "my.data.v2.bin", tmp_path / "my.data.v2.idx"):
        assert load_token_file(spelled).tolist() == [1, 2, 3, 0]


def test_binidx_index_claiming_too_many_sequences_is_named(tmp_path):
    import struct

    prefix = write_binidx(tmp_path / "data", [[1, 2, 3]], dtype=np.uint16)
    index = tmp_path / "data.idx"
    raw = bytearray(index.read_bytes())
    raw[18:26] = struct.pack("<Q", 10**6)
    index.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"data.idx declares 1000000 sequences but is too short"):
        read_binidx(prefix)


def test_jsonl_encoding_errors_name_file_and_line(tmp_path):
    from heron.data.text import iter_documents

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2 is not valid UTF-8"):
        list(iter_documents(broken))
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"text": "\\ud800"}\n')
    with pytest.raises(ValueError, match=r"surrogate.jsonl:1: the text is not valid Unicode"):
        list(iter_documents(surrogate))


def test_binidx_validation(tmp_path):
    prefix = write_binidx(tmp_path / "data", [[1, 2, 3]], dtype=np.uint16)
    with prefix.with_suffix(".bin").open("ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(ValueError, match="index describes"):
        read_binidx(prefix)
    prefix.with_suffix(".idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(ValueError, match="magic"):
        read_binidx(prefix)
    with pytest.raises(FileNotFoundError):
        read_binidx(tmp_path / "missing")
    with pytest.raises(ValueError, match="do not fit"):
        write_binidx(tmp_path / "big", [[70000]], dtype=np.uint16)


def test_token_ids_beyond_the_tokenizer_are_rejected(tmp_path):
    prefix = write_binidx(tmp_path / "data", [[1, 2, 300, 0] * 10], dtype=np.uint16)
    with pytest.raises(ValueError, match="beyond"):
        TextSource.from_files(prefix, seq_len=4, tokenizer="bytes")


def test_holdout_cuts_at_a_document_boundary():
    documents = [[1 + (i % 7)] * 30 + [0] for i in range(20)]
    source = TextSource(np.concatenate([np.array(d, dtype=np.uint16) for d in documents]), 8, 257)
    train, validation = source.holdout(0.2)
    assert train.num_tokens + validation.num_tokens == source.num_tokens
    assert train.tokens[-1] == 0
    assert validation.num_tokens == pytest.approx(0.2 * source.num_tokens, abs=31)


def test_sequential_batches_cover_the_stream():
    source = TextSource(np.arange(1, 42, dtype=np.uint16), 5, 64)
    batches = list(source.sequential_batches(3))
    inputs = torch.cat([b[0] for b in batches])
    assert inputs[:, 0].tolist() == list(range(1, 37, 5))
    assert sum(len(b[0]) for b in source.sequential_batches(3, max_batches=1)) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        TextSource(np.arange(10), 0, 16)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        TextSource(np.arange(10), 10, 16)
    with pytest.raises(ValueError, match="tokens"):
        TextSource(np.zeros((2, 5), dtype=np.int64), 2, 16)
    source = TextSource(np.arange(10), 4, 16)
    with pytest.raises(TypeError, match="generator"):
        source.batch(2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        source.batch(0, torch.Generator())
    with pytest.raises(ValueError, match="unsupported extension"):
        list(text_module.iter_documents("file.csv"))
    with pytest.raises(FileNotFoundError):
        load_token_file("/nonexistent/file.txt")


def test_bad_jsonl_lines_name_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        tokenize_documents(text_module.iter_documents(path), "bytes")
    path.write_text('{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        tokenize_documents(text_module.iter_documents(path), "bytes")


def test_most_frequent_tokens():
    tokens = np.array([0, 0, 0, 0, 5, 5, 5, 3, 3, 9, 9, 1], dtype=np.uint16)
    assert most_frequent_tokens(tokens, 4).tolist() == [5, 3, 9, 1]  # 0 excluded, ties by id
    assert most_frequent_tokens(tokens, 2, exclude=()).tolist() == [0, 5]
    with pytest.raises(ValueError, match="distinct"):
        most_frequent_tokens(tokens, 5)


# ---------------------------------------------------------------------------------------------
# the demo corpus

def _demo_available() -> bool:
    try:
        text_module._demo_corpus_root()
        return True
    except (FileNotFoundError, ValueError):
        return False


needs_demo = pytest.mark.skipif(not _demo_available(),
                                reason=f"demo corpus needs {text_module.DEMO_CORPUS_PACKAGE}=={text_module.DEMO_CORPUS_VERSION}")


@needs_demo
def test_demo_corpus_split_and_hash():
    everything = demo_corpus_documents("all")
    train = demo_corpus_documents("train")
    validation = demo_corpus_documents("validation")
    assert len(train) + len(validation) == len(everything) == 258
    assert len(validation) == 25
    assert validation == everything[9::10]
    assert train == [document for index, document in enumerate(everything) if index % 10 != 9]
    assert sum(map(len, everything)) == 10_205_376


@needs_demo
def test_demo_corpus_hash_is_checked(monkeypatch):
    files = text_module._demo_corpus_files()
    tampered = list(files)
    tampered[3] = (tampered[3][0], tampered[3][1] + b"# edited\n")
    monkeypatch.setattr(text_module, "_demo_corpus_files", lambda: tampered)
    with pytest.raises(ValueError, match="content hash"):
        demo_corpus_documents("train")


@needs_demo
def test_demo_corpus_validation_tokens(tmp_path):
    tokens = demo_corpus_tokens("validation", "world", cache_dir=tmp_path)
    assert len(tokens) == 234_578  # pins corpus, split and tokenizer together
    assert int((tokens == 0).sum()) == 25 and tokens[-1] == 0
    world = get_tokenizer("world")
    first_end = int(np.flatnonzero(tokens == 0)[0])
    assert world.decode_bytes(tokens[:first_end].tolist()) == demo_corpus_documents("validation")[0]
    pool = most_frequent_tokens(tokens, 1000)
    assert pool.numel() == 1000 and 0 not in pool.tolist()
    source = TextSource.demo("validation", seq_len=32, cache_dir=tmp_path)
    assert source.num_tokens == len(tokens)


def test_demo_split_name_is_checked():
    with pytest.raises(ValueError, match="split"):
        demo_corpus_documents("test")


# ----------------------------------------------------------------------------------------------
# repeat augmentation


def _distinct_stream(size=20_000):
    """A stream without any repeated token: any repeat inside a window was written by the augmentation."""
    return np.arange(1, size + 1, dtype=np.int64)


def _repeated_span(row: np.ndarray):
    """(first, second, length) of the repeated run in a row whose tokens are otherwise distinct."""
    positions: dict[int, int] = {}
    pairs = []
    for index, token in enumerate(row.tolist()):
        if token in positions:
            pairs.append((positions[token], index))
        else:
            positions[token] = index
    return pairs


def test_repeat_augmentation_shapes_targets_and_copies():
    source = TextSource(_distinct_stream(), 64, 30_000,
                        repeats=RepeatAugmentation(repeat_prob=1.0, repeat_min=8, repeat_max=32, repeat_random=0.0))
    inputs, targets = source.batch(16, torch.Generator().manual_seed(3))
    assert inputs.shape == targets.shape == (16, 64) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    rows = torch.cat([inputs, targets[:, -1:]], dim=1).numpy()
    for row in rows:
        pairs = _repeated_span(row)
        # exactly one run of repeated positions: (s + i, s + L + g + i) for i < L, 8 <= L <= 32
        assert 8 <= len(pairs) <= 32
        offsets = {second - first for first, second in pairs}
        assert len(offsets) == 1
        firsts = [first for first, _ in pairs]
        assert firsts == list(range(firsts[0], firsts[0] + len(pairs)))
        (offset,) = offsets
        assert len(pairs) <= offset <= len(pairs) + 32  # the gap is at most repeat_gap


def test_repeat_placements_are_honest():
    stream = _distinct_stream()
    augmentation = RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_max=40, repeat_random=0.5, repeat_gap=5)
    rows = np.stack([stream[i * 100:i * 100 + 33] for i in range(64)]).copy()
    original = rows.copy()
    placements = augmentation.apply(rows, stream, torch.Generator().manual_seed(0))
    assert [p["row"] for p in placements] == list(range(64))
    kinds = {(p["gap"] == 0, p["random"]) for p in placements}
    assert kinds == {(True, 0), (True, 1), (False, 0), (False, 1)}  # both gap kinds, both span kinds
    for p in placements:
        row, start, length, gap = rows[p["row"]], p["start"], p["length"], p["gap"]
        assert 4 <= length <= 16 and 0 <= gap <= 5  # 16 = (32 + 1) // 2 bounds repeat_max
        assert start + 2 * length + gap <= 33
        first = row[start:start + length]
        assert np.array_equal(first, row[start + length + gap:start + 2 * length + gap])
        # everything outside the two copies is the row's own text
        outside = np.ones(33, dtype=bool)
        outside[start:start + length] = outside[start + length + gap:start + 2 * length + gap] = False
        assert np.array_equal(row[outside], original[p["row"]][outside])
        if p["random"]:
            assert not np.array_equal(first, original[p["row"]][start:start + length])
        else:
            assert np.array_equal(first, original[p["row"]][start:start + length])


def test_repeat_augmentation_is_deterministic_and_seeded():
    source = TextSource(_distinct_stream(), 64, 30_000, repeats=RepeatAugmentation(repeat_prob=0.5))
    first = source.batch(32, torch.Generator().manual_seed(7))
    again = source.batch(32, torch.Generator().manual_seed(7))
    other = source.batch(32, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    # about repeat_prob of the rows are augmented (32 rows: 16 expected; 4..28 is far outside noise)
    augmented = sum(bool(_repeated_span(torch.cat([i, t[-1:]]).numpy())) for i, t in zip(*first))
    assert 4 <= augmented <= 28


def test_repeat_prob_zero_gives_the_plain_batches():
    plain = TextSource(_distinct_stream(), 64, 30_000)
    off = plain.with_repeats(RepeatAugmentation(repeat_prob=0.0, repeat_min=8))
    assert off.repeats is None
    generator_plain, generator_off = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(3):  # also the generator advances the same way
        a, b = plain.batch(8, generator_plain), off.batch(8, generator_off)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_repeat_augmentation_leaves_validation_alone():
    stream = _distinct_stream(5_000)
    augmented = TextSource(stream, 32, 30_000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_min=4))
    plain = TextSource(stream, 32, 30_000)
    for (a_in, a_out), (b_in, b_out) in zip(augmented.sequential_batches(8), plain.sequential_batches(8)):
        assert torch.equal(a_in, b_in) and torch.equal(a_out, b_out)
    train, validation = augmented.holdout(0.2)
    assert train.repeats is augmented.repeats and validation.repeats is None


@pytest.mark.parametrize("values, message", [
    ({"repeat_prob": 1.5}, "repeat_prob: expected a number in \\[0, 1\\]"),
    ({"repeat_prob": True}, "repeat_prob"),
    ({"repeat_prob": "half"}, "repeat_prob"),
    ({"repeat_min": 1}, "repeat_min: expected an int >= 2"),
    ({"repeat_min": 8.0}, "repeat_min"),
    ({"repeat_min": 20, "repeat_max": 10}, "repeat_max: expected an int >= repeat_min = 20"),
    ({"repeat_random": -0.1}, "repeat_random: expected a number in \\[0, 1\\]"),
    ({"repeat_gap": -1}, "repeat_gap: expected an int >= 0"),
    ({"repeat_pool": -1}, "repeat_pool: expected an int >= 0"),
    ({"repeat_uniform": 1.5}, "repeat_uniform: expected a number in \\[0, 1\\]"),
    ({"repeat_uniform": True}, "repeat_uniform"),
    ({"repeat_pool": 2.0}, "repeat_pool: expected an int >= 0"),
    ({"repeat_pool": True}, "repeat_pool: expected an int >= 0"),
])
def test_bad_repeat_options(values, message):
    with pytest.raises(ValueError, match=message):
        RepeatAugmentation(**values)


def test_repeat_min_must_fit_twice():
    with pytest.raises(ValueError, match="repeat_min: 17 tokens do not fit twice .* at most 16"):
        TextSource(np.arange(100), 32, 128, repeats=RepeatAugmentation(repeat_prob=0.5, repeat_min=17))
    # an augmentation that is off does not restrict seq_len
    assert TextSource(np.arange(100), 8, 128, repeats=RepeatAugmentation(repeat_min=16)).repeats is None
    with pytest.raises(TypeError, match="repeats"):
        TextSource(np.arange(100), 32, 128, repeats={"repeat_prob": 0.5})


# repeat_pool: random spans uniform over the most frequent training tokens

POOL_TOKENS = (3, 7, 11, 20, 42, 55, 60, 99)


def _pooled_stream():
    """POOL_TOKENS with 1000, 1100, ... occurrences, 2000 other ids once each and end-of-text (0)
    most often of all: the 8 most frequent non-end-of-text tokens are POOL_TOKENS, by far."""
    parts = [np.full(1000 + 100 * rank, token) for rank, token in enumerate(POOL_TOKENS)]
    parts += [np.arange(200, 2200), np.zeros(20_000, dtype=np.int64)]
    return np.random.default_rng(0).permutation(np.concatenate(parts)).astype(np.int64)


def test_repeat_pool_draws_from_the_most_frequent_training_tokens():
    stream = _pooled_stream()
    augmentation = RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_max=40, repeat_random=1.0,
                                      repeat_gap=5, repeat_pool=len(POOL_TOKENS))
    pool = augmentation.pool_tokens(stream)
    assert sorted(pool.tolist()) == sorted(POOL_TOKENS)
    assert augmentation.pool_tokens(stream) is pool  # ranked once per stream
    # rows of ids outside the stream: every pool token in a row was written by the augmentation
    rows = 10_000 + np.arange(64 * 33).reshape(64, 33)
    placements = augmentation.apply(rows, stream, torch.Generator().manual_seed(0))
    assert len(placements) == 64 and all(p["random"] for p in placements)
    seen = set()
    for p in placements:
        row, start, length, gap = rows[p["row"]], p["start"], p["length"], p["gap"]
        first = row[start:start + length]
        assert set(first.tolist()) <= set(POOL_TOKENS)
        assert np.array_equal(first, row[start + length + gap:start + 2 * length + gap])
        seen.update(first.tolist())
    assert seen == set(POOL_TOKENS)  # uniform draws reach the whole pool, not only its most frequent
    other = _distinct_stream(100)  # another stream gets its own pool (all ties: the smallest ids)
    assert augmentation.pool_tokens(other).tolist() == list(range(1, 9)) == most_frequent_tokens(other, 8).tolist()


def _assert_same_batches_and_draws(first: TextSource, second: TextSource, seed: int) -> None:
    """Three batches of each from equal generators are equal, and the generators end equal."""
    generators = [torch.Generator().manual_seed(seed) for _ in range(2)]
    for _ in range(3):
        a, b = first.batch(16, generators[0]), second.batch(16, generators[1])
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


def test_repeat_pool_zero_is_the_augmentation_without_it():
    stream = np.random.default_rng(0).integers(0, 300, 5_000)
    unset = TextSource(stream, 64, 30_000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_count=2))
    zero = unset.with_repeats(RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_count=2, repeat_pool=0))
    _assert_same_batches_and_draws(unset, zero, seed=5)


def test_repeat_uniform_draws_the_whole_vocabulary():
    # spans uniform over ids 1 .. V-1, tokens the stream never holds among them; the copy follows
    stream = np.random.default_rng(1).integers(1, 50, 20_000)  # only ids 1..49
    vocab = 5_000
    augmentation = RepeatAugmentation(repeat_prob=1.0, repeat_min=8, repeat_max=40, repeat_random=1.0,
                                      repeat_uniform=1.0, repeat_count=2)
    source = TextSource(stream, 128, vocab, repeats=augmentation)
    rows = source.tokens[np.arange(16)[:, None] * 100 + np.arange(129)[None, :]].astype(np.int64)
    placements = augmentation.apply(rows, stream, torch.Generator().manual_seed(2), vocab_size=vocab)
    assert len(placements) == 32 and all(p["random"] == 2 for p in placements)
    unseen = 0
    for p in placements:
        row = rows[p["row"]]
        first = row[p["start"]:p["start"] + p["length"]]
        second = row[p["start"] + p["length"] + p["gap"]:p["start"] + 2 * p["length"] + p["gap"]]
        assert np.array_equal(first, second)
        assert first.min() >= 1 and first.max() < vocab
        unseen += int((first >= 50).sum())
    assert unseen > 0.9 * sum(p["length"] for p in placements)  # 49 of 4999 ids are the stream's
    # through TextSource.batch (which passes its vocabulary), deterministic for a seed
    a, b = source.batch(8, torch.Generator().manual_seed(4)), source.batch(8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and int(a[0].max()) >= 50


def test_repeat_uniform_mixes_and_zero_draws_nothing_extra():
    stream = np.random.default_rng(2).integers(1, 50, 20_000)
    mixed = RepeatAugmentation(repeat_prob=1.0, repeat_min=8, repeat_max=20, repeat_random=1.0, repeat_uniform=0.5,
                               repeat_count=3)
    rows = np.tile(stream[:129], (64, 1)).astype(np.int64)
    kinds = [p["random"] for p in mixed.apply(rows, stream, torch.Generator().manual_seed(3), vocab_size=1000)]
    assert 0.3 < kinds.count(2) / len(kinds) < 0.7 and set(kinds) == {1, 2}
    with pytest.raises(ValueError, match="vocab_size"):
        mixed.apply(rows.copy(), stream, torch.Generator().manual_seed(3))
    unset = TextSource(stream, 64, 30_000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_min=4))
    zero = unset.with_repeats(RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_uniform=0.0))
    _assert_same_batches_and_draws(unset, zero, seed=6)


def test_repeat_pool_is_deterministic_and_draws_as_much_as_without_it():
    stream = _pooled_stream()
    source = TextSource(stream, 64, 30_000, repeats=RepeatAugmentation(repeat_prob=0.5, repeat_min=4, repeat_pool=8))
    generators = [torch.Generator().manual_seed(9) for _ in range(2)]
    for _ in range(3):
        first, again = source.batch(16, generators[0]), source.batch(16, generators[1])
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(source.batch(16, torch.Generator().manual_seed(10))[0], first[0])
    unigram = source.with_repeats(RepeatAugmentation(repeat_prob=0.5, repeat_min=4))
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    source.batch(16, a), unigram.batch(16, b)
    assert torch.equal(a.get_state(), b.get_state())


def test_repeat_pool_larger_than_the_stream_vocabulary():
    stream = _pooled_stream()  # 8 + 2000 distinct tokens besides end-of-text
    augmentation = RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_pool=2009)
    rows = stream[:64].reshape(2, 32).copy()
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    with pytest.raises(ValueError, match="repeat_pool: the training stream has only 2008 distinct tokens"):
        augmentation.apply(rows, stream, generator)
    assert np.array_equal(rows, stream[:64].reshape(2, 32)) and torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="repeat_pool: .* 2008 distinct tokens"):  # when the source is built
        TextSource(stream, 31, 30_000, repeats=augmentation)
    # no random spans, no pool to fill
    TextSource(stream, 31, 30_000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_random=0.0,
                                                               repeat_pool=2009)).batch(4, generator)


# repeat_count: several non-overlapping spans per augmented row

def _single_span_reference(augmentation, rows, stream, generator):
    """The single-span augmentation as it was before repeat_count existed (the reference that
    repeat_count = 1 must reproduce draw for draw)."""
    batch, width = rows.shape
    longest = min(augmentation.repeat_max, width // 2)
    draws = torch.rand((batch, 6), generator=generator, dtype=torch.float64).numpy()
    random_positions = torch.randint(0, stream.size, (batch, longest), generator=generator).numpy()
    for row in range(batch):
        augment, length_draw, immediate_draw, gap_draw, start_draw, random_draw = draws[row]
        if augment >= augmentation.repeat_prob:
            continue
        length = augmentation.repeat_min + int(length_draw * (longest - augmentation.repeat_min + 1))
        room = width - 2 * length
        max_gap = min(augmentation.repeat_gap, room)
        gap = 0 if immediate_draw < 0.5 or max_gap == 0 else 1 + int(gap_draw * max_gap)
        start = int(start_draw * (room - gap + 1))
        if random_draw < augmentation.repeat_random:
            rows[row, start:start + length] = stream[random_positions[row, :length]]
        rows[row, start + length + gap:start + 2 * length + gap] = rows[row, start:start + length]


@pytest.mark.parametrize("seq_len, repeat_prob", [(32, 1.0), (64, 0.5), (128, 1.0)])
def test_repeat_count_one_is_the_single_span_augmentation(seq_len, repeat_prob):
    stream = np.random.default_rng(0).integers(0, 300, 5_000)
    augmentation = RepeatAugmentation(repeat_prob=repeat_prob, repeat_min=4, repeat_gap=7)
    assert augmentation.repeat_count == 1 and augmentation == RepeatAugmentation(
        repeat_prob=repeat_prob, repeat_min=4, repeat_gap=7, repeat_count=1)
    rows = stream[np.arange(16)[:, None] * 97 + np.arange(seq_len + 1)[None, :]].copy()
    reference = rows.copy()
    generator, reference_generator = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    placements = augmentation.apply(rows, stream, generator)
    _single_span_reference(augmentation, reference, stream, reference_generator)
    assert np.array_equal(rows, reference)
    assert torch.equal(generator.get_state(), reference_generator.get_state())  # same number of draws
    assert all(p["segment"] == 0 for p in placements)


def test_repeat_count_writes_one_span_per_segment():
    stream = _distinct_stream()
    augmentation = RepeatAugmentation(repeat_prob=1.0, repeat_min=4, repeat_max=40, repeat_random=0.5,
                                      repeat_gap=5, repeat_count=3)
    width = 65  # segments [0, 21), [21, 43), [43, 65): spans of 4..10 tokens
    assert augmentation.segments(width - 1) == [(0, 21), (21, 43), (43, 65)]
    assert augmentation.longest_span(width - 1) == 11
    rows = np.stack([stream[i * 100:i * 100 + width] for i in range(32)]).copy()
    original = rows.copy()
    placements = augmentation.apply(rows, stream, torch.Generator().manual_seed(1))
    assert len(placements) == 3 * 32
    assert [(p["row"], p["segment"]) for p in placements] == [(r, s) for r in range(32) for s in range(3)]
    assert {(p["gap"] == 0, p["random"]) for p in placements} == {(True, 0), (True, 1), (False, 0), (False, 1)}
    for row in range(32):
        spans = [p for p in placements if p["row"] == row]
        outside = np.ones(width, dtype=bool)
        for p, (begin, end) in zip(spans, augmentation.segments(width - 1)):
            start, length, gap = p["start"], p["length"], p["gap"]
            assert 4 <= length <= min(40, (end - begin) // 2) and 0 <= gap <= 5
            assert begin <= start and start + 2 * length + gap <= end  # inside its segment: no overlap
            first = rows[row, start:start + length]
            assert np.array_equal(first, rows[row, start + length + gap:start + 2 * length + gap])
            assert np.array_equal(first, original[row, start:start + length]) == (not p["random"])
            outside[start:start + length] = outside[start + length + gap:start + 2 * length + gap] = False
        assert np.array_equal(rows[row, outside], original[row, outside])
        # the only repeats in the row are the three written spans (the stream has none of its own)
        assert len(_repeated_span(rows[row])) == sum(p["length"] for p in spans)


def test_repeat_count_is_deterministic_and_leaves_validation_alone():
    stream = _distinct_stream(5_000)
    augmentation = RepeatAugmentation(repeat_prob=0.5, repeat_min=4, repeat_count=4)
    source = TextSource(stream, 64, 30_000, repeats=augmentation)
    generators = [torch.Generator().manual_seed(9) for _ in range(2)]
    for _ in range(3):
        first, again = source.batch(16, generators[0]), source.batch(16, generators[1])
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # a fixed number of draws per batch: the generator state after a batch does not depend on the data
    other = TextSource(stream[::-1].copy(), 64, 30_000, repeats=augmentation)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    source.batch(16, a), other.batch(16, b)
    assert torch.equal(a.get_state(), b.get_state())
    plain = TextSource(stream, 64, 30_000)
    for (a_in, a_out), (b_in, b_out) in zip(source.sequential_batches(8), plain.sequential_batches(8)):
        assert torch.equal(a_in, b_in) and torch.equal(a_out, b_out)
    train, validation = source.holdout(0.2)
    assert train.repeats.repeat_count == 4 and validation.repeats is None


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_bad_repeat_count(value):
    with pytest.raises(ValueError, match="repeat_count: expected an int >= 1"):
        RepeatAugmentation(repeat_count=value)


def test_repeat_count_must_leave_room_for_repeat_min():
    # 129 tokens in 3 segments of 43: spans of 16..21 fit; 5 segments of 25 do not hold 16 twice
    TextSource(np.arange(1000), 128, 2000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_count=3))
    with pytest.raises(ValueError, match="repeat_min: 16 tokens do not fit twice in each of repeat_count = 5 "
                                         ".* at most 12 or repeat_count to at most 4"):
        TextSource(np.arange(1000), 128, 2000, repeats=RepeatAugmentation(repeat_prob=1.0, repeat_count=5))
    # an augmentation that is off does not restrict seq_len
    assert TextSource(np.arange(1000), 128, 2000, repeats=RepeatAugmentation(repeat_count=50)).repeats is None

import hashlib
import random
import shutil

import pytest
import torch

from heron.data import tokenizers as tk
from heron.data.tokenizers import (
    ByteTokenizer,
    StreamDecoder,
    WorldTokenizer,
    get_tokenizer,
    greedy_longest_match_reference,
    load_world_vocabulary,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return get_tokenizer("world")


def test_bundled_vocabulary_is_the_rwkv_file(world):
    raw = tk.WORLD_VOCAB_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == tk.WORLD_VOCAB_SHA256
    assert len(world.id_to_token) == 65529
    assert min(world.id_to_token) == 1 and max(world.id_to_token) == 65529
    assert world.vocab_size == 65536
    # ids 1..256 are the single bytes in order, the convention the byte tokenizer shares
    assert all(world.id_to_token[byte + 1] == bytes([byte]) for byte in range(256))


def test_damaged_vocabulary_is_rejected(tmp_path, monkeypatch):
    damaged = tmp_path / "rwkv_vocab_v20230424.txt"
    shutil.copy(tk.WORLD_VOCAB_FILE, damaged)
    with damaged.open("ab") as handle:
        handle.write(b"65530 'xyz' 3\n")
    monkeypatch.setattr(tk, "WORLD_VOCAB_FILE", damaged)
    with pytest.raises(ValueError, match="sha256"):
        load_world_vocabulary()


def test_custom_vocabulary_needs_every_byte(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("1 'a' 1\n2 'ab' 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="single-byte"):
        WorldTokenizer(path)


def test_known_encodings(world):
    assert world.encode("") == []
    # "Hello" is one World token, and round trips
    hello = world.encode("Hello")
    assert len(hello) == 1 and world.decode(hello) == "Hello"
    text = "The quick brown fox jumps over the lazy dog. 你好，世界！ Привет 🙂"
    ids = world.encode(text)
    assert world.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_world_round_trips_random_utf8(world, text):
    ids = world.encode(text)
    assert all(1 <= token <= 65529 for token in ids)
    assert world.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_world_round_trips_random_bytes(world, data):
    assert world.decode_bytes(world.encode_bytes(data)) == data


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=120) | st.binary(max_size=120))
def test_world_is_greedy_longest_match(world, value):
    data = value.encode("utf-8") if isinstance(value, str) else value
    expected = greedy_longest_match_reference(data, world.token_to_id, world.max_token_length)
    assert world.encode_bytes(data) == expected


def test_greedy_rule_on_adversarial_inputs(world):
    # long runs (the vocabulary has runs of spaces, '#', '-' up to 128 bytes), prefixes of
    # long tokens cut short, and mixtures of both
    rng = random.Random(0)
    cases = [b" " * n for n in (1, 2, 127, 128, 129, 300)]
    cases += [b"#" * 81, b"-" * 79, b"\n\n\n\n" * 10, b"\xff\xfe" * 20, b"\x00" * 50]
    long_tokens = sorted(world.id_to_token.values(), key=len)[-200:]
    for _ in range(100):
        pieces = [rng.choice(long_tokens)[: rng.randint(1, 40)] for _ in range(rng.randint(1, 6))]
        cases.append(b"".join(pieces))
    for data in cases:
        expected = greedy_longest_match_reference(data, world.token_to_id, world.max_token_length)
        assert world.encode_bytes(data) == expected, data


def test_agrees_with_the_rwkv_package(world):
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    import os
    import rwkv

    reference = rwkv_tokenizer.TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    rng = random.Random(1)
    samples = [tk.__doc__.encode(), open(tk.__file__, "rb").read()]
    samples += [bytes(rng.randrange(256) for _ in range(300)) for _ in range(5)]
    samples += ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x400, 0x500), rng.randrange(0x4E00, 0x4F00)]))
                        for _ in range(300)).encode() for _ in range(5)]
    for data in samples:
        assert world.encode_bytes(data) == reference.encodeBytes(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_byte_tokenizer_round_trips(data):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode_bytes(data)
    assert ids == [byte + 1 for byte in data]
    assert tokenizer.decode_bytes(ids) == data


def test_byte_ids_agree_with_world_single_bytes(world):
    tokenizer = get_tokenizer("bytes")
    assert tokenizer.vocab_size == 257
    for byte in range(256):
        assert tokenizer.token_bytes(byte + 1) == world.token_bytes(byte + 1)


def test_end_of_text_decodes_to_nothing(world):
    ids = world.encode("ab") + [0] + world.encode("cd")
    assert world.decode(ids) == "abcd"
    assert ByteTokenizer().decode([0, 98, 0]) == "a"


def test_decode_accepts_tensors(world):
    ids = world.encode("tensor input")
    assert world.decode(torch.tensor(ids)) == "tensor input"


@pytest.mark.parametrize("name", ["world", "bytes"])
def test_bad_input_raises_clear_errors(name):
    tokenizer = get_tokenizer(name)
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(b"bytes")
    with pytest.raises(TypeError, match="data"):
        tokenizer.encode_bytes("text")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([1, tokenizer.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([-1])
    with pytest.raises(TypeError, match="ids"):
        tokenizer.decode([1.5])
    with pytest.raises(TypeError, match="dtype"):
        tokenizer.decode(torch.tensor([1.0, 2.0]))


def test_world_ids_beyond_the_file_are_rejected(world):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        world.decode([65530])


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("gpt2")


def test_stream_decoder_holds_split_characters(world):
    text = "naïve 你好 🙂 end"
    data = text.encode("utf-8")
    # byte-level ids split every multi-byte character across tokens
    decoder = StreamDecoder(get_tokenizer("bytes"))
    pieces = [decoder.feed(byte + 1) for byte in data]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)
    decoder = StreamDecoder(world)
    assert "".join(decoder.feed(token) for token in world.encode(text)) + decoder.flush() == text

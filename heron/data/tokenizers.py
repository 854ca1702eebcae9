"""Tokenizers: byte level and the RWKV "World" vocabulary.

Both share one convention, the one RWKV models are trained with: id 0 is end-of-text /
document separator and never stands for text; every other id stands for a non-empty byte
string. Because ids 1..256 of the World vocabulary are the 256 single bytes in order
(``id = byte + 1``), the byte tokenizer uses exactly those ids, so a byte-level model and a
World model agree on what ids 1..256 mean.

The World tokenizer is greedy longest-match over bytes: at each position it takes the longest
vocabulary entry that is a prefix of the remaining input. Every single byte is in the
vocabulary, so any byte string (not only valid UTF-8) encodes, and decoding the ids gives the
input back exactly. The vocabulary file ``rwkv_vocab_v20230424.txt`` is bundled beside this
module (provenance and hash in ``rwkv_vocab_v20230424.PROVENANCE.txt``); its sha256 is checked
every time it is loaded.
"""

from __future__ import annotations

import ast
import codecs
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "END_OF_TEXT",
    "ByteTokenizer",
    "WorldTokenizer",
    "StreamDecoder",
    "get_tokenizer",
    "load_world_vocabulary",
    "greedy_longest_match_reference",
    "TOKENIZER_NAMES",
]

END_OF_TEXT = 0

WORLD_VOCAB_FILE = Path(__file__).with_name("rwkv_vocab_v20230424.txt")
WORLD_VOCAB_SHA256 = "8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008"
WORLD_VOCAB_ENTRIES = 65529
# RWKV World models have a 65536-row embedding; ids 65530..65535 are never produced.
WORLD_EMBEDDING_ROWS = 65536

TOKENIZER_NAMES = ("world", "bytes")


def _check_ids(ids, vocab_size: int) -> list[int]:
    """Validate a sequence of token ids (list, tuple or 1-D integer tensor/array)."""
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        dtype = str(getattr(ids, "dtype", ""))
        if "float" in dtype or "complex" in dtype or "bool" in dtype:
            raise TypeError(f"ids: expected integer token ids, got dtype {dtype}")
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"ids: expected a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids: expected a sequence of int token ids, got {type(ids).__name__}")
    checked = []
    for position, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"ids[{position}]: expected int, got {type(token).__name__}")
        if token < 0 or token >= vocab_size:
            raise ValueError(f"ids[{position}] = {token} is outside the vocabulary [0, {vocab_size})")
        checked.append(token)
    return checked


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__} (use encode_bytes for bytes)")
    return text


def _check_bytes(data) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"data: expected bytes, got {type(data).__name__} (use encode for str)")
    return data


class ByteTokenizer:
    """One token per byte: ``id = byte + 1``; id 0 is end-of-text. ``vocab_size = 257``."""

    name = "bytes"
    vocab_size = 257
    end_of_text = END_OF_TEXT

    @property
    def fingerprint(self) -> str:
        return "bytes-v1"

    def encode_bytes(self, data: bytes) -> list[int]:
        data = _check_bytes(data)
        return [byte + 1 for byte in data]

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(_check_text(text).encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        (token_id,) = _check_ids([token_id], self.vocab_size)
        return b"" if token_id == END_OF_TEXT else bytes([token_id - 1])

    def decode_bytes(self, ids) -> bytes:
        return bytes(token - 1 for token in _check_ids(ids, self.vocab_size) if token != END_OF_TEXT)

    def decode(self, ids, errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _parse_vocabulary_line(line: str, line_number: int) -> tuple[int, bytes]:
    first_space, last_space = line.find(" "), line.rfind(" ")
    if first_space <= 0 or last_space <= first_space:
        raise ValueError(f"vocabulary line {line_number}: expected '<id> <literal> <length>', got {line!r}")
    token_id = int(line[:first_space])
    literal = ast.literal_eval(line[first_space + 1:last_space])
    token = literal.encode("utf-8") if isinstance(literal, str) else literal
    if not isinstance(token, bytes) or len(token) != int(line[last_space + 1:]):
        raise ValueError(f"vocabulary line {line_number}: token length does not match its declared length")
    return token_id, token


def load_world_vocabulary(path: str | Path | None = None, *, check_hash: bool = True) -> dict[int, bytes]:
    """Read an RWKV vocabulary file into ``{id: token bytes}``.

    The bundled ``rwkv_vocab_v20230424.txt`` is used when ``path`` is None, and its sha256 is
    checked (a corrupted or edited copy raises ``ValueError`` instead of silently tokenizing
    differently from every other machine).
    """
    vocab_path = WORLD_VOCAB_FILE if path is None else Path(path)
    raw = vocab_path.read_bytes()
    if check_hash and path is None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != WORLD_VOCAB_SHA256:
            raise ValueError(
                f"vocabulary file {vocab_path} has sha256 {digest}, expected {WORLD_VOCAB_SHA256}: "
                "the bundled copy is damaged; reinstall heron"
            )
    vocabulary: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for line_number, line in enumerate(raw.decode("utf-8").split("\n"), start=1):
        if not line:
            continue
        token_id, token = _parse_vocabulary_line(line, line_number)
        if token_id <= 0:
            raise ValueError(f"vocabulary line {line_number}: id {token_id} must be >= 1 (0 is end-of-text)")
        if token_id in vocabulary or token in seen:
            raise ValueError(f"vocabulary line {line_number}: duplicate id or token {token!r}")
        if not token:
            raise ValueError(f"vocabulary line {line_number}: empty token")
        vocabulary[token_id] = token
        seen[token] = token_id
    return vocabulary


def greedy_longest_match_reference(data: bytes, token_to_id: dict[bytes, int], max_token_length: int) -> list[int]:
    """The rule the World tokenizer implements, written plainly: at every position take the
    longest vocabulary entry that is a prefix of the rest of the input. Slow (tries every
    length); used by the tests as the oracle for the trie."""
    ids = []
    position = 0
    while position < len(data):
        for length in range(min(max_token_length, len(data) - position), 0, -1):
            token_id = token_to_id.get(data[position:position + length])
            if token_id is not None:
                ids.append(token_id)
                position += length
                break
        else:
            raise ValueError(f"data: byte {data[position]:#04x} at offset {position} is not in the vocabulary")
    return ids


class WorldTokenizer:
    """Greedy longest-match tokenizer over the RWKV World vocabulary (ids 1..65529, 0 = end-of-text).

    The vocabulary is stored as a byte trie made of nested dicts: each node maps the next byte to
    ``(token id or 0, child node)``. Encoding walks the trie from each position and remembers the
    last node that ends a token, which is exactly greedy longest-match.
    """

    name = "world"
    end_of_text = END_OF_TEXT

    def __init__(self, vocab_path: str | Path | None = None):
        self.id_to_token = load_world_vocabulary(vocab_path)
        self.token_to_id = {token: token_id for token_id, token in self.id_to_token.items()}
        self.max_token_length = max(len(token) for token in self.id_to_token.values())
        # keep the models' embedding size for the official vocabulary; a custom file gets max id + 1
        self.vocab_size = max(WORLD_EMBEDDING_ROWS, max(self.id_to_token) + 1) if vocab_path is None \
            else max(self.id_to_token) + 1
        self._fingerprint = hashlib.sha256(
            b"".join(token_id.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token
                     for token_id, token in sorted(self.id_to_token.items()))
        ).hexdigest()[:16]
        self._root: dict = {}
        for token, token_id in self.token_to_id.items():
            node = self._root
            for byte in token[:-1]:
                entry = node.get(byte)
                if entry is None:
                    entry = node[byte] = [0, {}]
                node = entry[1]
            entry = node.get(token[-1])
            if entry is None:
                node[token[-1]] = [token_id, {}]
            else:
                entry[0] = token_id
        missing = [byte for byte in range(256) if byte not in self._root or not self._root[byte][0]]
        if missing:
            raise ValueError(f"vocab_path: the vocabulary lacks single-byte tokens for {len(missing)} bytes, "
                             "so some inputs could not be encoded")

    @property
    def fingerprint(self) -> str:
        """Identifies the vocabulary (for tokenized-data cache keys)."""
        return f"world-{self._fingerprint}"

    def encode_bytes(self, data: bytes) -> list[int]:
        data = _check_bytes(data)
        root = self._root
        ids = []
        append = ids.append
        length = len(data)
        position = 0
        while position < length:
            token_id, node = root[data[position]]
            end = position + 1
            scan = end
            # walk on while the trie continues; remember the last node that ends a token
            while scan < length:
                entry = node.get(data[scan])
                if entry is None:
                    break
                scan += 1
                if entry[0]:
                    token_id, end = entry[0], scan
                node = entry[1]
            append(token_id)
            position = end
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(_check_text(text).encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        (token_id,) = _check_ids([token_id], self.vocab_size)
        return self._token_bytes_unchecked(token_id)

    def _token_bytes_unchecked(self, token_id: int) -> bytes:
        if token_id == END_OF_TEXT:
            return b""
        token = self.id_to_token.get(token_id)
        if token is None:
            raise ValueError(f"ids: token id {token_id} is not in the vocabulary (ids 1..{max(self.id_to_token)})")
        return token

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self._token_bytes_unchecked(token) for token in _check_ids(ids, self.vocab_size))

    def decode(self, ids, errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return f"WorldTokenizer({len(self.id_to_token)} entries)"


class StreamDecoder:
    """Turns token ids into text as they arrive, holding back incomplete UTF-8 sequences
    (a multi-byte character is often split across tokens)."""

    def __init__(self, tokenizer, errors: str = "replace"):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def feed(self, token_ids: int | Iterable[int]) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        return self._decoder.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


@functools.lru_cache(maxsize=4)
def get_tokenizer(name: str = "world"):
    """``"world"`` (RWKV World, 65536 ids) or ``"bytes"`` (257 ids). Cached: the World trie takes
    about a second to build."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a tokenizer name (str), got {type(name).__name__}")
    if name == "world":
        return WorldTokenizer()
    if name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"name: unknown tokenizer {name!r}; expected one of {TOKENIZER_NAMES}")


"""Text data for language-model training: a batch source over token streams.

Sources of text:
- ``.txt`` files (one document each) and ``.jsonl`` files (one document per line: a JSON object
  with a ``"text"`` string, or a bare JSON string), tokenized once and cached as a ``.npy`` memmap;
- the official RWKV / Megatron ``binidx`` format (``PREFIX.bin`` + ``PREFIX.idx``), already token
  ids, read in place through ``numpy.memmap``;
- the offline demo corpus (``demo_corpus_documents``), identical on every machine.

Documents are concatenated, each followed by the end-of-text id 0, so a model learns where a
document ends and a window crossing a boundary sees the separator. ``TextSource.batch`` draws
random windows with the trainer's ``torch.Generator`` only (the data contract of docs/design.md),
so a saved generator state resumes the exact batch sequence.

Optional *repeat augmentation* (``RepeatAugmentation``, off by default; the ``repeat_*`` options
of ``heron train text``): some training rows get one span written a second time later in the
row, so that the loss on the second copy rewards copying (issue 7: plain text repeats too little
for a small model to learn to copy from it). Validation batches are never augmented.

The demo corpus is the Python source (code and its English documentation strings) of the pinned
PyPI package ``music21==10.5.1`` (BSD-3-Clause), an optional dependency of the project
(``heron[music]``). Its bundled musical corpus (``music21/corpus/``) is left out — the music
task uses it — and so are the two test modules that are MusicXML dumps
(``musicxml/testPrimitive.py``, ``musicxml/testFiles.py``), as are empty files: 258 files,
10,205,376 bytes. Each file, in sorted order of its path inside the package, is one document;
every tenth (indices 9, 19, ...: 25 files, 907,053 bytes) is the validation split, the rest the
training split. The files' content hash is checked on
every load, so the corpus cannot silently differ between machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from heron.data.tokenizers import END_OF_TEXT, get_tokenizer

__all__ = [
    "TextSource",
    "RepeatAugmentation",
    "tokenize_documents",
    "iter_documents",
    "load_token_file",
    "read_binidx",
    "write_binidx",
    "demo_corpus_documents",
    "demo_corpus_tokens",
    "most_frequent_tokens",
    "DEMO_CORPUS_PACKAGE",
    "DEMO_CORPUS_VERSION",
    "DEMO_CORPUS_SHA256",
    "default_cache_dir",
]

DEMO_CORPUS_PACKAGE = "music21"
DEMO_CORPUS_VERSION = "10.5.1"
DEMO_CORPUS_EXCLUDED = ("corpus/", "musicxml/testPrimitive.py", "musicxml/testFiles.py")
DEMO_CORPUS_VALIDATION_EVERY = 10
# sha256 over (relative path, NUL, length, NUL, content) of every selected file in sorted order
DEMO_CORPUS_SHA256 = "92fbef8c204d0500f50cb12f9b141625c846dafeac517402c17e00fab5563e12"

_CACHE_FORMAT = "heron-text-cache-v1"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/heron/tokens`` (``~/.cache/heron/tokens``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heron" / "tokens"


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _resolve_tokenizer(tokenizer):
    if isinstance(tokenizer, str):
        return get_tokenizer(tokenizer)
    for attribute in ("encode_bytes", "vocab_size", "fingerprint"):
        if not hasattr(tokenizer, attribute):
            raise TypeError(f"tokenizer: expected a tokenizer name or object with .{attribute}, "
                            f"got {type(tokenizer).__name__}")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# documents

def iter_documents(path: str | Path) -> Iterable[bytes]:
    """The documents of one ``.txt`` (the whole file) or ``.jsonl`` file (one per line), as UTF-8 bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield path.read_bytes()
    elif suffix == ".jsonl":
        with path.open("rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"data: {path}:{line_number} is not valid JSON ({exc.msg})") from None
                except UnicodeDecodeError as exc:
                    raise ValueError(f"data: {path}:{line_number} is not valid UTF-8 ({exc.reason})") from None
                if isinstance(record, dict):
                    record = record.get("text")
                if not isinstance(record, str):
                    raise ValueError(f"data: {path}:{line_number}: expected an object with a \"text\" string "
                                     "or a JSON string")
                try:
                    yield record.encode("utf-8")
                except UnicodeEncodeError as exc:  # a lone surrogate escaped in the JSON ("\ud800")
                    raise ValueError(f"data: {path}:{line_number}: the text is not valid Unicode ({exc.reason})") from None
    else:
        raise ValueError(f"data: {path} has an unsupported extension {path.suffix!r}; "
                         "expected .txt, .jsonl or a binidx prefix (.bin/.idx)")


def tokenize_documents(documents: Iterable[bytes | str], tokenizer="world") -> np.ndarray:
    """Concatenate the tokenized documents, each followed by end-of-text (id 0)."""
    tokenizer = _resolve_tokenizer(tokenizer)
    pieces = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            document = document.encode("utf-8")
        elif not isinstance(document, (bytes, bytearray)):
            raise TypeError(f"documents[{index}]: expected str or bytes, got {type(document).__name__}")
        pieces.append(np.asarray(tokenizer.encode_bytes(bytes(document)) + [END_OF_TEXT],
                                 dtype=_token_dtype(tokenizer.vocab_size)))
    if not pieces:
        return np.zeros(0, dtype=_token_dtype(tokenizer.vocab_size))
    return np.concatenate(pieces)


# ----------------------------------------------------------------------------------------------
# binidx (Megatron MMapIndexedDataset, as used by RWKV-LM)

_BINIDX_MAGIC = b"MMIDIDX\x00\x00"
_BINIDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                  6: np.float64, 7: np.float64, 8: np.uint16}
_BINIDX_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
                 np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.uint16): 8}


def fingerprint(tokens: np.ndarray, sample: int = 1 << 20) -> str:
    """A cheap identity of a token stream for resume checks: its length and a sha256 of its first
    and last ``sample`` tokens and of ``sample`` tokens spread evenly over it (a changed, shortened
    or swapped file changes it; reading a sample keeps a start on a large memmap fast)."""
    tokens = np.asarray(tokens)
    digest = hashlib.sha256(f"{tokens.size}|{tokens.dtype}".encode())
    stride = max(1, tokens.size // sample)
    for part in (tokens[:sample], tokens[-sample:], tokens[::stride][:sample]):
        digest.update(np.ascontiguousarray(part).astype(np.int64).tobytes())
    return f"{tokens.size} tokens, sha256 {digest.hexdigest()[:16]}"


def _binidx_prefix(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".bin", ".idx") else path


def _binidx_file(prefix: Path, extension: str) -> Path:
    """``PREFIX.bin`` / ``PREFIX.idx``: appended, since ``with_suffix`` would replace a dotted
    part of the prefix (``my.data.v2`` -> ``my.data.bin``, another file)."""
    return prefix.with_name(prefix.name + extension)


def binidx_exists(path: str | Path) -> bool:
    """Whether ``path`` names a binidx pair (``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx``)."""
    prefix = _binidx_prefix(path)
    return _binidx_file(prefix, ".bin").is_file() and _binidx_file(prefix, ".idx").is_file()


def read_binidx(path: str | Path) -> np.ndarray:
    """Token stream of a binidx pair (``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx``) as a read-only
    memmap of the ``.bin`` file; the ``.idx`` header is validated against it. The official
    converter already ends every document with token 0, so nothing is inserted."""
    prefix = _binidx_prefix(path)
    index_path, data_path = _binidx_file(prefix, ".idx"), _binidx_file(prefix, ".bin")
    for required in (index_path, data_path):
        if not required.exists():
            raise FileNotFoundError(f"data: binidx file {required} not found")
    with index_path.open("rb") as handle:
        header = handle.read(9 + 8 + 1 + 8 + 8)
    if len(header) < 34 or header[:9] != _BINIDX_MAGIC:
        raise ValueError(f"data: {index_path} is not a binidx index (bad magic)")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise ValueError(f"data: {index_path} has binidx version {version}; only version 1 is supported")
    dtype_code = header[17]
    if dtype_code not in _BINIDX_DTYPES or _BINIDX_DTYPES[dtype_code] == np.float64:
        raise ValueError(f"data: {index_path} declares dtype code {dtype_code}; expected an integer dtype")
    dtype = np.dtype(_BINIDX_DTYPES[dtype_code])
    sequence_count, _document_count = struct.unpack("<QQ", header[18:34])
    if 34 + 4 * sequence_count > index_path.stat().st_size:
        raise ValueError(f"data: {index_path} declares {sequence_count} sequences but is too short to hold their "
                         "sizes (a truncated or damaged index)")
    sizes = np.memmap(index_path, dtype=np.int32, mode="r", offset=34, shape=(sequence_count,)) \
        if sequence_count else np.zeros(0, dtype=np.int32)
    total = int(sizes.sum(dtype=np.int64))
    data_bytes = data_path.stat().st_size
    if data_bytes != total * dtype.itemsize:
        raise ValueError(f"data: {data_path} holds {data_bytes} bytes but its index describes "
                         f"{total} tokens of {dtype.itemsize} bytes")
    if total == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(data_path, dtype=dtype, mode="r")


def write_binidx(path: str | Path, documents: Sequence[Sequence[int]], dtype=np.uint16) -> Path:
    """Write token documents as a binidx pair (what RWKV-LM's converter produces: each
    document is stored as given — append the end-of-text 0 yourself if you want it)."""
    prefix = _binidx_prefix(path)
    dtype = np.dtype(dtype)
    if dtype not in _BINIDX_CODES:
        raise ValueError(f"dtype: expected one of {sorted(str(d) for d in _BINIDX_CODES)}, got {dtype}")
    arrays = [np.asarray(document, dtype=np.int64) for document in documents]
    info = np.iinfo(dtype)
    for index, array in enumerate(arrays):
        if array.ndim != 1:
            raise ValueError(f"documents[{index}]: expected a 1-D sequence of token ids")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"documents[{index}]: token ids do not fit in {dtype}")
    sizes = np.asarray([array.size for array in arrays], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes.astype(np.int64) * dtype.itemsize)[:-1]]).astype(np.int64) \
        if len(arrays) else np.zeros(0, dtype=np.int64)
    document_index = np.arange(len(arrays) + 1, dtype=np.int64)
    with _binidx_file(prefix, ".bin").open("wb") as handle:
        for array in arrays:
            handle.write(array.astype(dtype).tobytes())
    with _binidx_file(prefix, ".idx").open("wb") as handle:
        handle.write(_BINIDX_MAGIC)
        handle.write(struct.pack("<Q", 1))
        handle.write(struct.pack("<B", _BINIDX_CODES[dtype]))
        handle.write(struct.pack("<Q", len(arrays)))
        handle.write(struct.pack("<Q", len(document_index)))
        handle.write(sizes.tobytes())
        handle.write(pointers.tobytes())
        handle.write(document_index.tobytes())
    return prefix


# ----------------------------------------------------------------------------------------------
# the tokenized cache

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_save(array: np.ndarray, destination: Path) -> None:
    """Write-then-rename, so parallel ranks tokenizing the same data never read a half file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the cache is shared by the user's runs
        os.replace(temporary, destination)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _cached(key: str, produce, cache_dir: Path | None) -> np.ndarray:
    cache_path = (default_cache_dir() if cache_dir is None else Path(cache_dir)) / f"{key}.npy"
    if cache_path.exists():
        try:
            return np.load(cache_path, mmap_mode="r")
        except (ValueError, OSError):
            pass  # a damaged cache entry is rebuilt below
    _atomic_save(produce(), cache_path)
    return np.load(cache_path, mmap_mode="r")


def load_token_file(path: str | Path, tokenizer="world", cache_dir: str | Path | None = None) -> np.ndarray:
    """Token stream of one data file: binidx is read in place; ``.txt``/``.jsonl`` are tokenized
    once into a cached memmap keyed by the file's content hash and the tokenizer."""
    path = Path(path)
    prefix = _binidx_prefix(path)
    if path.suffix in (".bin", ".idx") or (not path.exists() and _binidx_file(prefix, ".idx").exists()):
        return read_binidx(prefix)
    if not path.exists():
        raise FileNotFoundError(f"data: {path} not found")
    tokenizer = _resolve_tokenizer(tokenizer)
    key = hashlib.sha256(
        f"{_CACHE_FORMAT}|{tokenizer.fingerprint}|{path.suffix.lower()}|{_file_sha256(path)}".encode()
    ).hexdigest()[:32]
    return _cached(key, lambda: tokenize_documents(iter_documents(path), tokenizer), cache_dir)


# ----------------------------------------------------------------------------------------------
# the demo corpus

def _demo_corpus_root() -> Path:
    try:
        from importlib import metadata
        version = metadata.version(DEMO_CORPUS_PACKAGE)
    except Exception:
        version = None
    if version is None:
        raise FileNotFoundError(
            f"the demo corpus is read from the pinned package {DEMO_CORPUS_PACKAGE}=={DEMO_CORPUS_VERSION}, "
            f"which is not installed: pip install 'heron[music]' (or {DEMO_CORPUS_PACKAGE}=={DEMO_CORPUS_VERSION})")
    if version != DEMO_CORPUS_VERSION:
        raise ValueError(f"the demo corpus needs {DEMO_CORPUS_PACKAGE}=={DEMO_CORPUS_VERSION}, found {version}: "
                         "other versions ship different text")
    import importlib.util
    spec = importlib.util.find_spec(DEMO_CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {DEMO_CORPUS_PACKAGE} has no source folder")
    return Path(list(spec.submodule_search_locations)[0])


def _demo_corpus_files() -> list[tuple[str, bytes]]:
    root = _demo_corpus_root()
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if any(relative.startswith(excluded) for excluded in DEMO_CORPUS_EXCLUDED):
            continue
        content = path.read_bytes()
        if content.strip():  # empty __init__.py files carry no text
            files.append((relative, content))
    files.sort(key=lambda item: item[0])
    return files


def _demo_corpus_digest(files: Sequence[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for relative, content in files:
        digest.update(relative.encode("utf-8") + b"\x00" + str(len(content)).encode() + b"\x00")
        digest.update(content)
    return digest.hexdigest()


def demo_corpus_documents(split: str = "train") -> list[bytes]:
    """Documents of the demo corpus split ``"train"``, ``"validation"`` or ``"all"``, after
    checking the corpus' content hash."""
    if split not in ("train", "validation", "all"):
        raise ValueError(f"split: expected 'train', 'validation' or 'all', got {split!r}")
    files = _demo_corpus_files()
    digest = _demo_corpus_digest(files)
    if digest != DEMO_CORPUS_SHA256:
        raise ValueError(f"demo corpus content hash {digest} differs from the expected {DEMO_CORPUS_SHA256}: "
                         f"the installed {DEMO_CORPUS_PACKAGE} files were modified")
    every = DEMO_CORPUS_VALIDATION_EVERY
    return [content for index, (_, content) in enumerate(files)
            if split == "all" or (split == "validation") == (index % every == every - 1)]


def demo_corpus_tokens(split: str = "train", tokenizer="world", cache_dir: str | Path | None = None) -> np.ndarray:
    """The demo corpus split tokenized (cached like any text file)."""
    tokenizer = _resolve_tokenizer(tokenizer)
    if split not in ("train", "validation", "all"):
        raise ValueError(f"split: expected 'train', 'validation' or 'all', got {split!r}")
    documents = demo_corpus_documents(split)  # checks the hash every time
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{tokenizer.fingerprint}|demo|{DEMO_CORPUS_SHA256}|{split}".encode()
                         ).hexdigest()[:32]
    return _cached(key, lambda: tokenize_documents(documents, tokenizer), cache_dir)


def most_frequent_tokens(tokens, count: int = 1000, exclude: Iterable[int] = (END_OF_TEXT,)) -> torch.Tensor:
    """The ``count`` most frequent ids of a token stream (ties broken by smaller id), most
    frequent first; ids in ``exclude`` (end-of-text by default) are left out."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    array = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens: expected a 1-D integer token stream, got shape {array.shape} dtype {array.dtype}")
    counts = np.bincount(array.astype(np.int64)) if array.size else np.zeros(0, dtype=np.int64)
    for excluded in exclude:
        if 0 <= excluded < counts.size:
            counts[excluded] = 0
    present = int((counts > 0).sum())
    if present < count:
        raise ValueError(f"count: the stream has only {present} distinct (non-excluded) tokens, asked for {count}")
    order = np.lexsort((np.arange(counts.size), -counts))[:count]
    return torch.from_numpy(order.astype(np.int64))



# ----------------------------------------------------------------------------------------------
# repeat augmentation

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RepeatAugmentation:
    """Write a span of a training row a second time later in the same row.

    With probability ``repeat_prob`` per row (a window of the corpus, ``seq_len + 1`` tokens
    before the split into inputs and targets, so targets stay the inputs shifted by one):

    - a span length ``L`` uniform in ``[repeat_min, min(repeat_max, (seq_len + 1) // 2)]``;
    - a gap ``g``: 0 (the copy follows its first occurrence at once, as in the copy test of
      ``heron generate --copy-eval``) with probability 1/2, otherwise uniform in
      ``[1, repeat_gap]`` (bounded by the room the row leaves); the gap keeps the row's text;
    - a start ``s`` uniform over the places where ``2 L + g`` tokens fit;
    - with probability ``repeat_random`` the first occurrence ``row[s : s + L]`` is replaced by
      ``L`` tokens drawn independently from the stream's own token distribution (random positions
      of the training stream), otherwise it stays the row's text;
    - ``row[s + L + g : s + 2 L + g] = row[s : s + L]``.

    Why both kinds of span: a repeated *text* span can partly be predicted by a language model
    without looking back, so it rewards copying only where the text is surprising; a span of
    independent random tokens can be predicted after its first few tokens by copying alone, which
    is exactly what the copy test asks (64 random tokens, then the first 8 again as a cue). Random
    tokens come from the corpus's unigram distribution rather than from a fixed pool, so the
    augmentation does not use the test's pool (the 1000 most frequent *validation* tokens), and
    the model sees the frequent tokens it meets in text in random order too.

    ``repeat_count`` (default 1) spans per augmented row: the row is split into ``repeat_count``
    equal consecutive segments (``row[i W // n : (i + 1) W // n]`` for ``W = seq_len + 1``) and
    the steps above are applied inside each segment, with the segment in place of the row (so
    ``L <= min(repeat_max, segment // 2)`` and the gap is bounded by the segment's room); the spans
    never overlap. Whether a row is augmented is one draw per row (all its spans or none).
    ``repeat_min`` must fit twice in the shortest segment (``W // repeat_count`` tokens), else
    :meth:`check_seq_len` raises a ``ValueError`` (no silent clamping); ``repeat_count = 1`` is
    the single span above, draw for draw.

    ``repeat_pool = N`` (default 0: the unigram draws above) draws each token of a random span
    uniformly from the ``N`` most frequent tokens of the training stream instead (ranked once per
    stream by :func:`most_frequent_tokens`: end-of-text excluded, ties by smaller id), matching the
    copy test's prompts (uniform over its 1000 most frequent tokens) without using the validation
    split; a stream with fewer than ``N`` distinct tokens is a ``ValueError``. Measured, it does
    not help: models trained so (seventh session, docs/benchmarks/copy.md) copied the training
    spans but 1-4% of the test's, whose prompts hold tokens outside the training pool (688 of the
    two splits' 1000 most frequent tokens are shared); the copying learnt on pool tokens did not
    carry over. Keep the default unless the pool covers every token the model must copy.

    ``repeat_uniform = p`` (default 0) draws a random span, with probability ``p``, uniformly from
    the whole vocabulary (ids ``1 .. vocab_size - 1``, the ``vocab_size`` passed to :meth:`apply`)
    instead. Why: a token that never occurs in the training text never appears in a unigram span
    either, its output is never trained, and a model cannot copy it. The copy test's pool (the
    validation split's 1000 most frequent tokens) holds 4 tokens that the demo corpus's training
    split never contains and 9 more seen 1-4 times; 44 of the test's 200 trials decode one of the
    4 (docs/benchmarks/copy.md, seventh session). Uniform draws teach every token's copy without
    looking at the validation data. ``repeat_uniform = 0`` draws nothing extra: the batches of
    earlier versions, draw for draw.

    All draws come from the batch generator, a fixed number per batch, so a batch is a function of
    the generator state; ``repeat_prob = 0`` draws nothing and leaves every batch unchanged.
    """

    repeat_prob: float = 0.0
    repeat_min: int = 16
    repeat_max: int = 128
    repeat_random: float = 0.5
    repeat_gap: int = 32
    repeat_count: int = 1
    repeat_pool: int = 0
    repeat_uniform: float = 0.0
    # (stream, its pool) of the last stream seen: ranking a stream of tens of millions of tokens
    # costs far more than a batch, so it is done once per stream. Holding the stream keeps its id
    # from being reused by another array while the entry lives.
    _pool_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_number(self.repeat_prob) or not 0.0 <= self.repeat_prob <= 1.0:
            raise ValueError(f"repeat_prob: expected a number in [0, 1], got {self.repeat_prob!r}")
        if not _is_int(self.repeat_min) or self.repeat_min < 2:
            raise ValueError(f"repeat_min: expected an int >= 2 (span length in tokens), got {self.repeat_min!r}")
        if not _is_int(self.repeat_max) or self.repeat_max < self.repeat_min:
            raise ValueError(f"repeat_max: expected an int >= repeat_min = {self.repeat_min}, "
                             f"got {self.repeat_max!r}")
        if not _is_number(self.repeat_random) or not 0.0 <= self.repeat_random <= 1.0:
            raise ValueError(f"repeat_random: expected a number in [0, 1], got {self.repeat_random!r}")
        if not _is_int(self.repeat_gap) or self.repeat_gap < 0:
            raise ValueError(f"repeat_gap: expected an int >= 0 (tokens), got {self.repeat_gap!r}")
        if not _is_int(self.repeat_count) or self.repeat_count < 1:
            raise ValueError(f"repeat_count: expected an int >= 1 (repeated spans per augmented row), "
                             f"got {self.repeat_count!r}")
        if not _is_number(self.repeat_uniform) or not 0.0 <= self.repeat_uniform <= 1.0:
            raise ValueError(f"repeat_uniform: expected a number in [0, 1] (share of random spans drawn uniformly "
                             f"from the whole vocabulary), got {self.repeat_uniform!r}")
        if not _is_int(self.repeat_pool) or self.repeat_pool < 0:
            raise ValueError(f"repeat_pool: expected an int >= 0 (most frequent training tokens the random spans "
                             f"draw from uniformly; 0: the stream's own distribution), got {self.repeat_pool!r}")

    @property
    def enabled(self) -> bool:
        return self.repeat_prob > 0

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        """``(begin, end)`` of the ``repeat_count`` consecutive segments of a row of ``seq_len + 1``
        tokens, one repeated span in each."""
        width, count = seq_len + 1, self.repeat_count
        return [(index * width // count, (index + 1) * width // count) for index in range(count)]

    def longest_span(self, seq_len: int) -> int:
        """The longest span that fits twice in a segment (the whole row of ``seq_len + 1`` tokens
        when ``repeat_count`` is 1)."""
        return min(self.repeat_max, max(end - begin for begin, end in self.segments(seq_len)) // 2)

    def check_seq_len(self, seq_len: int) -> None:
        width = seq_len + 1
        shortest = width // self.repeat_count
        if self.repeat_min > shortest // 2:
            if self.repeat_count == 1:
                raise ValueError(f"repeat_min: {self.repeat_min} tokens do not fit twice in a row of seq_len + 1 = "
                                 f"{width} tokens; lower repeat_min to at most {width // 2}")
            most = width // (2 * self.repeat_min)
            count_hint = (f" or repeat_count to at most {most}" if most >= 1 else
                          f"; repeat_min = {self.repeat_min} does not fit twice even in the whole row")
            raise ValueError(f"repeat_min: {self.repeat_min} tokens do not fit twice in each of repeat_count = "
                             f"{self.repeat_count} segments of a row of seq_len + 1 = {width} tokens (the shortest "
                             f"has {shortest}); lower repeat_min to at most {shortest // 2}" + count_hint)

    def pool_tokens(self, stream: np.ndarray) -> np.ndarray:
        """The ``repeat_pool`` most frequent tokens of ``stream`` (the random spans' tokens when
        ``repeat_pool > 0``), ranked once per stream object."""
        key = (id(stream), stream.size)
        cached = self._pool_cache.get(key)
        if cached is not None:
            return cached[1]
        try:
            pool = most_frequent_tokens(stream, self.repeat_pool).numpy()
        except ValueError:
            counts = np.bincount(np.asarray(stream).astype(np.int64))
            if 0 <= END_OF_TEXT < counts.size:
                counts[END_OF_TEXT] = 0
            distinct = int((counts > 0).sum())
            if distinct >= self.repeat_pool:
                raise
            raise ValueError(f"repeat_pool: the training stream has only {distinct} distinct tokens (end-of-text "
                             f"excluded), fewer than repeat_pool = {self.repeat_pool}; lower repeat_pool to at most "
                             f"{distinct}") from None
        self._pool_cache.clear()  # one entry: the cache must not keep every stream it has seen alive
        self._pool_cache[key] = (stream, pool)
        return pool

    def apply(self, rows: np.ndarray, stream: np.ndarray, generator: torch.Generator,
              vocab_size: int | None = None) -> list[dict[str, int]]:
        """Augment ``rows`` (``[B, seq_len + 1]`` token windows) in place; ``stream`` is the token
        stream the random spans are drawn from, ``vocab_size`` the vocabulary of the uniform
        draws (needed when ``repeat_uniform > 0``). Returns where each repeat went (one dict per
        span written: ``row``, ``segment``, ``start`` (in the row), ``length``, ``gap``,
        ``random`` (0: text, 1: the stream's tokens or the pool, 2: uniform over the vocabulary);
        ``repeat_count`` of them per augmented row), for tests and checks."""
        if not self.enabled:
            return []
        uniform = self.repeat_uniform > 0 and self.repeat_random > 0
        if uniform and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2):
            raise ValueError(f"vocab_size: repeat_uniform > 0 needs the vocabulary size (an int >= 2), "
                             f"got {vocab_size!r}")
        batch, width = rows.shape
        self.check_seq_len(width - 1)
        segments = self.segments(width - 1)
        longest = self.longest_span(width - 1)
        count = self.repeat_count
        # ranked before any draw or write, so a stream too poor for the pool leaves rows and generator alone
        pool = self.pool_tokens(stream) if self.repeat_pool and self.repeat_random > 0 else None
        # A fixed number of draws per batch whatever the outcome, so the generator advances the
        # same way for every batch of this shape. With repeat_count = 1 these are the draws of the
        # single-span augmentation, in the same order ([B, 1, 6] and [B, 6] hold the same stream).
        draws = torch.rand((batch, count, 6), generator=generator, dtype=torch.float64).numpy()
        # repeat_pool > 0 draws indices into the pool instead of stream positions: same shape, same count
        random_positions = torch.randint(0, self.repeat_pool or stream.size, (batch, count, longest),
                                         generator=generator).numpy()
        random_source = stream if pool is None else pool
        if uniform:  # drawn only then, so repeat_uniform = 0 leaves the earlier draws untouched
            uniform_draws = torch.rand((batch, count), generator=generator, dtype=torch.float64).numpy()
            uniform_tokens = torch.randint(1, vocab_size, (batch, count, longest), generator=generator).numpy()
        placements = []
        for row in range(batch):
            if draws[row, 0, 0] >= self.repeat_prob:  # one draw per row decides all its spans
                continue
            for index, (begin, end) in enumerate(segments):
                _, length_draw, immediate_draw, gap_draw, start_draw, random_draw = draws[row, index]
                seg_width = end - begin
                seg_longest = min(self.repeat_max, seg_width // 2)
                length = self.repeat_min + int(length_draw * (seg_longest - self.repeat_min + 1))
                room = seg_width - 2 * length  # tokens of the segment outside the two copies
                max_gap = min(self.repeat_gap, room)
                gap = 0 if immediate_draw < 0.5 or max_gap == 0 else 1 + int(gap_draw * max_gap)
                start = begin + int(start_draw * (room - gap + 1))
                use_random = bool(random_draw < self.repeat_random)
                use_uniform = use_random and uniform and bool(uniform_draws[row, index] < self.repeat_uniform)
                if use_uniform:
                    rows[row, start:start + length] = uniform_tokens[row, index, :length]
                elif use_random:
                    rows[row, start:start + length] = random_source[random_positions[row, index, :length]]
                copy_start = start + length + gap
                rows[row, copy_start:copy_start + length] = rows[row, start:start + length]
                placements.append({"row": row, "segment": index, "start": start, "length": length, "gap": gap,
                                   "random": 2 if use_uniform else int(use_random)})
        return placements


# ----------------------------------------------------------------------------------------------
# the batch source

class TextSource:
    """Random ``seq_len``-token windows of a token stream: ``batch()`` returns inputs
    ``tokens[s : s+T]`` and targets ``tokens[s+1 : s+T+1]`` for starts ``s`` drawn uniformly
    with the given generator. Every position is scored (the end-of-text id is a target too).

    ``repeats`` (a :class:`RepeatAugmentation`) augments the rows of ``batch()`` only;
    ``sequential_batches()`` (the validation loss) always reads the plain stream."""

    def __init__(self, tokens, seq_len: int, vocab_size: int, name: str = "text",
                 repeats: RepeatAugmentation | None = None):
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size: expected an int >= 2, got {vocab_size!r}")
        array = tokens.numpy() if isinstance(tokens, torch.Tensor) else tokens
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"tokens: expected a 1-D integer token stream, got shape {array.shape} dtype {array.dtype}")
        if array.size < seq_len + 1:
            raise ValueError(f"tokens: the stream has {array.size} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        if repeats is not None:
            if not isinstance(repeats, RepeatAugmentation):
                raise TypeError(f"repeats: expected a RepeatAugmentation or None, got {type(repeats).__name__}")
            if repeats.enabled:  # an idle augmentation must not restrict seq_len
                repeats.check_seq_len(seq_len)
                if repeats.repeat_pool and repeats.repeat_random > 0:
                    repeats.pool_tokens(array)  # a pool the stream cannot fill fails here, not at the first batch
        self.tokens = array
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.name = name
        self.repeats = repeats if repeats is not None and repeats.enabled else None

    def with_repeats(self, repeats: RepeatAugmentation | None) -> TextSource:
        """The same stream with ``repeats`` applied to ``batch()`` (None: plain windows)."""
        return TextSource(self.tokens, self.seq_len, self.vocab_size, self.name, repeats=repeats)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    @property
    def num_windows(self) -> int:
        return self.num_tokens - self.seq_len

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        starts = torch.randint(0, self.num_windows, (batch_size,), generator=generator).numpy()
        rows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)[None, :]].astype(np.int64)
        if self.repeats is not None:
            # on the whole window, before the split, so targets stay the inputs shifted by one
            self.repeats.apply(rows, self.tokens, generator, vocab_size=self.vocab_size)
        rows = torch.from_numpy(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def sequential_batches(self, batch_size: int, max_batches: int | None = None):
        """Non-overlapping windows in order (for a deterministic validation loss)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        starts = np.arange(0, self.num_windows, self.seq_len)
        for batch_number, first in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and batch_number >= max_batches:
                return
            chunk = starts[first:first + batch_size]
            rows = torch.from_numpy(self.tokens[chunk[:, None] + np.arange(self.seq_len + 1)[None, :]].astype(np.int64))
            yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def holdout(self, fraction: float) -> tuple["TextSource", "TextSource"]:
        """Split into (train, validation) with the last ``fraction`` of the stream held out,
        cut just after an end-of-text when one is near, so documents are not shared. The
        repeat augmentation, if any, stays with the training part only."""
        if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction: expected a float in (0, 1), got {fraction!r}")
        cut = int(round(self.num_tokens * (1.0 - fraction)))
        separators = np.flatnonzero(self.tokens[:cut] == END_OF_TEXT)
        if separators.size and cut - separators[-1] <= max(self.seq_len, self.num_tokens // 100):
            cut = int(separators[-1]) + 1
        if cut < self.seq_len + 1 or self.num_tokens - cut < self.seq_len + 1:
            raise ValueError(
                f"data: {self.num_tokens} tokens are too few to hold out {fraction:g} of them for validation with "
                f"seq_len {self.seq_len}: each side needs at least seq_len + 1 = {self.seq_len + 1} tokens "
                f"(give more data, a shorter seq_len, or another validation_fraction)")
        return (TextSource(self.tokens[:cut], self.seq_len, self.vocab_size, self.name + ":train", self.repeats),
                TextSource(self.tokens[cut:], self.seq_len, self.vocab_size, self.name + ":validation"))

    @classmethod
    def from_files(cls, paths: Sequence[str | Path] | str | Path, seq_len: int, tokenizer="world",
                   cache_dir: str | Path | None = None) -> "TextSource":
        """Concatenation of ``.txt`` / ``.jsonl`` / binidx files (each tokenized and cached once)."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = list(paths)
        if not paths:
            raise ValueError("paths: expected at least one data file")
        tokenizer = _resolve_tokenizer(tokenizer)
        streams = [load_token_file(path, tokenizer, cache_dir) for path in paths]
        for path, stream in zip(paths, streams):
            if stream.size and int(stream.max()) >= tokenizer.vocab_size:
                raise ValueError(f"data: {path} holds token id {int(stream.max())}, beyond the "
                                 f"{tokenizer.name} vocabulary of {tokenizer.vocab_size}")
        tokens = streams[0] if len(streams) == 1 else np.concatenate(streams)
        return cls(tokens, seq_len, tokenizer.vocab_size, name=",".join(Path(p).name for p in paths))

    @classmethod
    def demo(cls, split: str = "train", seq_len: int = 512, tokenizer="world",
             cache_dir: str | Path | None = None) -> "TextSource":
        tokenizer = _resolve_tokenizer(tokenizer)
        return cls(demo_corpus_tokens(split, tokenizer, cache_dir), seq_len, tokenizer.vocab_size,
                   name=f"demo:{split}")

    def __repr__(self) -> str:
        return (f"TextSource({self.name!r}, {self.num_tokens} tokens, seq_len={self.seq_len}, "
                f"vocab_size={self.vocab_size}" + (f", repeats={self.repeats}" if self.repeats else "") + ")")

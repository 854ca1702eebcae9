"""Folk-tune corpora in ABC notation, shipped inside ``music21``; an ABC-aware tokenizer; batches.

Pipeline (all deterministic, no download):

1. :func:`extract_tunes` reads the ``.abc`` files of the four folk collections of the installed
   music21 (Essen folksongs, O'Neill's 1850, Aird's Airs, Ryan's Mammoth) as text and splits them
   at ``X:`` lines. Parsing 13,000 tunes with music21 takes many minutes; text splitting takes ~1 s.
2. :func:`normalise_tune` keeps the headers that define the music (``M``, ``L``, ``K``; ``T`` as
   metadata) in canonical spellings (``C`` -> ``4/4``, ``E Minor`` -> ``Em``, an explicit ``L``),
   drops bibliographic noise (``N``, ``O``, ``Z``, ``B`` ...), comments, text annotations in quotes
   and ``!...!`` decorations, and rejects tunes it cannot represent faithfully (several voices,
   unreadable key or meter, non-ASCII music). Tunes are then deduplicated on their normalised text.
3. The split into train / validation is by tune: a tune goes to validation when the SHA-256 of its
   normalised text falls in the first ``validation_permille`` of 1000 buckets, so the split does not
   depend on corpus order and a tune can never sit in both halves.
4. :class:`ABCTokenizer` cuts text into musical pieces (notes with accidentals and octave marks,
   durations, bar lines with repeats and volta numbers, broken rhythm, tuplets, chord and grace
   brackets, whole header lines); pieces outside the vocabulary fall back to single characters, so
   every ASCII text round-trips exactly. The vocabulary is built from the training split only.
5. :class:`MusicBatchSource` is the trainer's batch source (docs/design.md): random windows over the
   concatenated token stream of the split, each tune preceded by the separator token ``<tune>``.

The extraction is cached as JSON keyed by the music21 version and :data:`NORMALISER_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

# The corpus contents (and so the dataset) depend on the music21 release; the project pins this one.
MUSIC21_PINNED_VERSION = "10.5.1"
COLLECTIONS = ("essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth")
# Bump whenever normalisation changes, so stale caches are never reused.
NORMALISER_VERSION = 2
DEFAULT_VALIDATION_PERMILLE = 50
SEPARATOR = "<tune>"

# --------------------------------------------------------------------------------------------
# headers


_MODE_SUFFIX = {
    "": "", "maj": "", "major": "", "ion": "", "ionian": "",
    "m": "m", "min": "m", "minor": "m", "aeo": "m", "aeolian": "m",
    "dor": "dor", "dorian": "dor",
    "phr": "phr", "phrygian": "phr",
    "lyd": "lyd", "lydian": "lyd",
    "mix": "mix", "mixolydian": "mix",
    "loc": "loc", "locrian": "loc",
}
_KEY_PATTERN = re.compile(r"^([A-Ga-g])([#b]?)\s*([A-Za-z]*)$")
_METER_PATTERN = re.compile(r"^(\d+)/(\d+)$")
_POWERS_OF_TWO = {1, 2, 4, 8, 16, 32, 64}


def normalise_key(value: str) -> str:
    """Canonical ABC key: tonic + mode suffix (``""`` major, ``m``, ``dor``, ``phr``, ``lyd``,
    ``mix``, ``loc``). ``"E Minor"`` -> ``"Em"``, ``"A Mixolydian"`` -> ``"Amix"``, ``"G"`` -> ``"G"``."""
    if not isinstance(value, str):
        raise TypeError(f"key must be a str such as 'G', 'Em' or 'Ador', got {type(value).__name__}")
    text = value.split("%", 1)[0].strip()
    match = _KEY_PATTERN.match(text)
    mode = match.group(3).lower() if match else None
    if match is None or mode not in _MODE_SUFFIX:
        raise ValueError(
            f"key must be a tonic A-G with optional # or b and an optional mode "
            f"(m, min, dor, phr, lyd, mix, loc, maj), e.g. 'G', 'Em', 'Bb', 'Ador'; got {value!r}"
        )
    return match.group(1).upper() + match.group(2) + _MODE_SUFFIX[mode]


def normalise_meter(value: str) -> str:
    """Canonical meter: ``"N/D"`` with D a power of two, ``"C"`` -> ``"4/4"``, ``"C|"`` -> ``"2/2"``,
    ``"none"`` (free meter) kept."""
    if not isinstance(value, str):
        raise TypeError(f"meter must be a str such as '6/8', 'C' or 'none', got {type(value).__name__}")
    text = value.split("%", 1)[0].replace(" ", "")
    if text == "C":
        return "4/4"
    if text == "C|":
        return "2/2"
    if text.lower() == "none":
        return "none"
    match = _METER_PATTERN.match(text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) not in _POWERS_OF_TWO:
        raise ValueError(
            "meter must be 'N/D' with N >= 1 and D a power of two (e.g. '6/8', '3/4'), "
            f"'C', 'C|' or 'none'; got {value!r}"
        )
    return f"{int(match.group(1))}/{int(match.group(2))}"


def normalise_unit_length(value: str) -> str:
    """Canonical unit note length ``"1/D"`` (or ``"N/D"``) with D a power of two."""
    if not isinstance(value, str):
        raise TypeError(f"unit_length must be a str such as '1/8', got {type(value).__name__}")
    text = value.split("%", 1)[0].replace(" ", "")
    match = _METER_PATTERN.match(text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) not in _POWERS_OF_TWO:
        raise ValueError(f"unit_length must be '1/D' with D a power of two (e.g. '1/8'); got {value!r}")
    return f"{int(match.group(1))}/{int(match.group(2))}"


def meter_fraction(meter: str) -> Fraction | None:
    """Length of one bar in whole notes (``"6/8"`` -> 3/4); ``None`` for free meter."""
    meter = normalise_meter(meter)
    if meter == "none":
        return None
    numerator, denominator = meter.split("/")
    return Fraction(int(numerator), int(denominator))


def default_unit_length(meter: str) -> str:
    """The ABC standard's default ``L``: 1/16 when the meter is below 3/4, else 1/8."""
    bar = meter_fraction(meter)
    return "1/16" if bar is not None and bar < Fraction(3, 4) else "1/8"


def header_text(meter: str, unit_length: str, key: str, *, number: int = 1, title: str | None = None) -> str:
    """The canonical header block: ``X``, optional ``T``, ``M``, ``L``, ``K`` (always last)."""
    lines = [f"X:{number}"]
    if title:
        lines.append(f"T:{title}")
    lines += [f"M:{meter}", f"L:{unit_length}", f"K:{key}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# tunes


@dataclass(frozen=True)
class Tune:
    """One normalised tune. ``body`` holds the music lines, each ending in a newline."""

    collection: str
    source: str  # "<file relative to the corpus folder>#<X number>"
    title: str
    meter: str
    unit_length: str
    key: str
    body: str

    @property
    def text(self) -> str:
        """The normalised ABC text the model sees (no title: it is not music)."""
        return header_text(self.meter, self.unit_length, self.key) + self.body

    def abc(self, number: int = 1) -> str:
        """A complete ABC file for this tune, with its title."""
        return header_text(self.meter, self.unit_length, self.key, number=number, title=self.title) + self.body


class TuneRejected(ValueError):
    """Raised by :func:`normalise_tune` for a tune that cannot be represented faithfully;
    ``reason`` is a short category (for the extraction report), the message adds the detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_HEADER_LINE = re.compile(r"^([A-Za-z]):(.*)$")
_FIELD_LINE = re.compile(r"^([A-Za-z]):(?![|:])(.*)$")  # in the music, "B:|" is a note and a repeat
_QUOTED = re.compile(r'"[^"\n]*"')
_LONG_DECORATION = re.compile(r"![^!\n]*!")
_INLINE_FIELD = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")


def _strip_comment(line: str) -> str:
    # '%' starts a comment except when escaped as '\%'
    match = re.search(r"(?<!\\)%", line)
    return line[: match.start()] if match else line


_FIELD_NORMALISERS = {"M": normalise_meter, "L": normalise_unit_length, "K": normalise_key}


def _normalise_inline_field(match: re.Match) -> str:
    name, value = match.group(1), match.group(2)
    if name == "V":
        raise TuneRejected("several voices")
    if name in _FIELD_NORMALISERS:
        return f"[{name}:{_FIELD_NORMALISERS[name](value)}]"
    return ""  # parts, tempo, remarks: not music


def _is_printable_ascii(text: str) -> bool:
    return all(32 <= ord(character) < 127 for character in text)


def normalise_tune(raw: str, *, collection: str = "", source: str = "") -> Tune:
    """Normalise the text of one tune (from its ``X:`` line to the next). Raises
    :class:`TuneRejected` (a ``ValueError``) with the reason when the tune cannot be kept."""
    if not isinstance(raw, str):
        raise TypeError(f"raw must be the str text of one ABC tune, got {type(raw).__name__}")
    headers: dict[str, str] = {}
    body_lines: list[str] = []
    in_body = False
    for raw_line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _strip_comment(raw_line).rstrip()
        if not in_body:
            if raw_line.startswith("%"):
                continue
            match = _HEADER_LINE.match(line.strip())
            if match is None:
                if line.strip():
                    raise TuneRejected("music before the K: header", repr(line.strip()[:40]))
                continue
            name, value = match.group(1), match.group(2).strip()
            if name == "V":
                raise TuneRejected("several voices")
            if name == "T" and "T" in headers:
                continue  # keep the first title only
            headers.setdefault(name, value)
            if name == "K":
                in_body = True
            continue
        if raw_line.lstrip().startswith("%"):
            continue  # comment lines (and %% directives) are not blank lines: the tune goes on
        if not raw_line.strip():
            if body_lines:
                break  # a blank line ends the tune
            continue
        if not line.strip():
            continue
        match = _FIELD_LINE.match(line)
        if match is not None:
            name, value = match.group(1), match.group(2)
            if name == "V":
                raise TuneRejected("several voices")
            if name in _FIELD_NORMALISERS:
                try:
                    body_lines.append(f"{name}:{_FIELD_NORMALISERS[name](value)}")
                except ValueError as exc:
                    raise TuneRejected(f"unreadable {name}: field in the music", str(exc)) from None
            continue  # parts, lyrics, notes, tempo changes: not music
        line = _QUOTED.sub("", line)
        line = _LONG_DECORATION.sub("", line)
        try:
            line = _INLINE_FIELD.sub(_normalise_inline_field, line)
        except TuneRejected:
            raise  # several voices
        except ValueError as exc:
            raise TuneRejected("unreadable inline field", str(exc)) from None
        line = line.replace("`", "")  # Aird's engraving spacers, no musical meaning
        line = re.sub(r"[ \t]+", " ", line).strip()
        if not line:
            continue
        if not _is_printable_ascii(line):
            raise TuneRejected("characters outside printable ASCII in the music")
        body_lines.append(line)
    if "K" not in headers:
        raise TuneRejected("no K: header")
    music_lines = [body_line for body_line in body_lines if not _FIELD_LINE.match(body_line)]
    if not re.search(r"[A-Ga-g]", "".join(music_lines)):
        raise TuneRejected("no notes")
    try:
        key = normalise_key(headers["K"])
    except ValueError as exc:
        raise TuneRejected("unreadable key", str(exc)) from None
    try:
        meter = normalise_meter(headers.get("M", "none"))
    except ValueError as exc:
        raise TuneRejected("unreadable meter", str(exc)) from None
    try:
        unit_length = normalise_unit_length(headers["L"]) if "L" in headers else default_unit_length(meter)
    except ValueError as exc:
        raise TuneRejected("unreadable unit length", str(exc)) from None
    title = headers.get("T", "").strip()
    if not title.isascii():
        title = title.encode("ascii", "ignore").decode()
    return Tune(collection, source, title, meter, unit_length, key, "\n".join(body_lines) + "\n")


def corpus_root() -> Path:
    """The installed music21 corpus folder."""
    import music21

    return Path(music21.__file__).resolve().parent / "corpus"


def music21_version() -> str:
    import music21

    return music21.__version__


def split_abc_file(text: str) -> list[tuple[int, str]]:
    """Split the text of an ``.abc`` file at its ``X:`` lines: ``[(x_number, tune_text), ...]``.
    Text before the first ``X:`` (file header, comments) is dropped."""
    tunes: list[tuple[int, str]] = []
    starts = [m.start() for m in re.finditer(r"(?m)^X:", text)]
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(text)
        chunk = text[start:end]
        number_match = re.match(r"X:\s*(\d+)", chunk)
        tunes.append((int(number_match.group(1)) if number_match else -1, chunk))
    return tunes


@dataclass
class ExtractionReport:
    files: int = 0
    tunes_read: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def extract_tunes(root: Path | str | None = None,
                  collections: Sequence[str] = COLLECTIONS) -> tuple[list[Tune], ExtractionReport]:
    """Read, normalise and deduplicate the tunes of ``collections`` under ``root`` (default: the
    installed music21 corpus). Order: collection, then file name, then position in the file."""
    root = corpus_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: corpus folder {root} does not exist")
    report = ExtractionReport()
    tunes: list[Tune] = []
    seen: set[str] = set()
    for collection in collections:
        folder = root / collection
        if not folder.is_dir():
            raise FileNotFoundError(f"collections: {collection!r} not found under {root}")
        for path in sorted(folder.rglob("*.abc")):
            report.files += 1
            text = path.read_bytes().decode("utf-8", errors="replace")
            relative = path.relative_to(root).as_posix()
            for number, chunk in split_abc_file(text):
                report.tunes_read += 1
                try:
                    tune = normalise_tune(chunk, collection=collection, source=f"{relative}#{number}")
                except TuneRejected as exc:
                    reason = exc.reason
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
                    continue
                if tune.text in seen:
                    report.duplicates += 1
                    continue
                seen.add(tune.text)
                tunes.append(tune)
    report.kept = len(tunes)
    return tunes, report


def is_validation(text: str, validation_permille: int = DEFAULT_VALIDATION_PERMILLE) -> bool:
    """Whether a tune with this normalised text belongs to the validation split."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < validation_permille


@dataclass
class MusicDataset:
    train: list[Tune]
    validation: list[Tune]
    report: ExtractionReport
    music21_version: str
    validation_permille: int

    def split(self, name: str) -> list[Tune]:
        if name == "train":
            return self.train
        if name in ("validation", "val", "valid"):
            return self.validation
        raise ValueError(f"split must be 'train' or 'validation', got {name!r}")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heron" / "music"


def _cache_path(cache_dir: Path) -> Path:
    return cache_dir / f"abc-tunes-music21-{music21_version()}-norm{NORMALISER_VERSION}.json"


def load_dataset(
    *,
    cache_dir: Path | str | None = None,
    validation_permille: int = DEFAULT_VALIDATION_PERMILLE,
    rebuild: bool = False,
    use_cache: bool = True,
    root: Path | str | None = None,
    collections: Sequence[str] = COLLECTIONS,
) -> MusicDataset:
    """The deduplicated tunes split into train and validation. The extraction of the installed
    corpus is cached in ``cache_dir`` (default ``$XDG_CACHE_HOME/heron/music``) unless
    ``use_cache`` is false; ``rebuild`` extracts again and rewrites the cache. A custom ``root``
    or ``collections`` is never cached."""
    if not isinstance(validation_permille, int) or isinstance(validation_permille, bool) \
            or not 0 < validation_permille < 1000:
        raise ValueError(f"validation_permille must be an int in 1..999, got {validation_permille!r}")
    version = music21_version()
    use_cache = use_cache and root is None and tuple(collections) == COLLECTIONS
    cache_file = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    tunes: list[Tune] | None = None
    report = ExtractionReport()
    if cache_file is not None and cache_file.exists() and not rebuild:
        try:
            payload = json.loads(cache_file.read_text())
            tunes = [Tune(**item) for item in payload["tunes"]]
            report = ExtractionReport(**payload["report"])
        except (ValueError, KeyError, TypeError):
            tunes = None  # a damaged cache is rebuilt
    if tunes is None:
        tunes, report = extract_tunes(root, collections)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_suffix(f".tmp{os.getpid()}")
            temporary.write_text(json.dumps({"tunes": [asdict(t) for t in tunes], "report": asdict(report)}))
            temporary.replace(cache_file)
    if not tunes:
        raise ValueError(f"corpus: no usable ABC tunes found in {collections} (root {root or corpus_root()})")
    train = [t for t in tunes if not is_validation(t.text, validation_permille)]
    validation = [t for t in tunes if is_validation(t.text, validation_permille)]
    if not train or not validation:
        raise ValueError(
            f"corpus: {len(tunes)} tunes give an empty {'train' if not train else 'validation'} split; "
            "use more tunes or another validation_permille"
        )
    return MusicDataset(train, validation, report, version, validation_permille)


# --------------------------------------------------------------------------------------------
# tokenizer

# Alternatives are tried in order at each position; the last one takes any single character, so
# the pieces always cover the text contiguously.
_PIECE_PATTERN = re.compile(
    r"""
    (?P<header>^[A-Za-z]:(?![|:])[^\n]*\n)                                   # whole header/field line
  | (?P<field>\[[A-Za-z]:[^\]\n]*\])                                 # inline field [K:G]
  | (?P<bar>(?:\[\||:*\|[|\]]?:*|::+)(?:[1-9](?:[,-][1-9])*)?        # bar lines, repeats, voltas
           |\[[1-9](?:[,-][1-9])*)
  | (?P<note>(?:\^\^|\^|__|_|=)?[A-Ga-g][,']*)                       # pitch with accidental, octave
  | (?P<rest>[zxZX])
  | (?P<duration>\d+/+\d*|\d+|/+\d*)
  | (?P<broken>[<>]{1,3})
  | (?P<tuplet>\(\d(?::\d*){0,2})
  | (?P<decoration>![^!\n]*!)
  | (?P<space>[ ]+)
  | (?P<other>.|\n)
    """,
    re.VERBOSE | re.MULTILINE | re.DOTALL,
)
_BASE_CHARACTERS = ["\n"] + [chr(code) for code in range(32, 127)]


def abc_pieces(text: str) -> list[str]:
    """Cut ABC text into musical pieces; ``"".join(abc_pieces(t)) == t`` always."""
    return [match.group(0) for match in _PIECE_PATTERN.finditer(text)]


def abc_pieces_with_kind(text: str) -> list[tuple[str, str]]:
    """Like :func:`abc_pieces`, with the kind of each piece (``note``, ``bar``, ``duration`` ...)."""
    return [(match.lastgroup or "other", match.group(0)) for match in _PIECE_PATTERN.finditer(text)]


class ABCTokenizer:
    """ABC-aware tokenizer. Id 0 is the tune separator ``<tune>``; ids 1..96 are the newline and the
    printable ASCII characters (the fallback that makes every ASCII text round-trip); the rest are
    multi-character pieces seen at least ``min_count`` times in the texts it was built from."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[0] != SEPARATOR:
            raise ValueError(f"tokens must start with the separator {SEPARATOR!r}")
        missing = [c for c in _BASE_CHARACTERS if c not in tokens]
        if missing:
            raise ValueError(f"tokens must contain every printable ASCII character and newline; missing {missing[:5]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must be unique")
        self.tokens = tokens
        self.token_to_id = {token: index for index, token in enumerate(tokens)}
        self.separator_id = 0

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2) -> "ABCTokenizer":
        """Vocabulary from ``texts``: separator, base characters, then multi-character pieces by
        descending count (ties alphabetical), so the same texts always give the same ids."""
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(piece for piece in abc_pieces(text) if len(piece) > 1)
        pieces = sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))
        return cls([SEPARATOR] + _BASE_CHARACTERS + pieces)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        lookup = self.token_to_id
        for piece in abc_pieces(text):
            token_id = lookup.get(piece)
            if token_id is not None:
                ids.append(token_id)
                continue
            for character in piece:
                character_id = lookup.get(character)
                if character_id is None:
                    raise ValueError(
                        f"text: character {character!r} is outside the tokenizer's alphabet "
                        "(printable ASCII and newline)"
                    )
                ids.append(character_id)
        return ids

    def decode(self, ids: Iterable[int], *, keep_separator: bool = False) -> str:
        parts = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(self.tokens):
                raise ValueError(f"ids: {token_id} is outside the vocabulary of {len(self.tokens)} tokens")
            if token_id == self.separator_id and not keep_separator:
                continue
            parts.append(self.tokens[token_id])
        return "".join(parts)

    def has_piece(self, piece: str) -> bool:
        return piece in self.token_to_id

    def to_dict(self) -> dict:
        return {"kind": "heron-abc-tokenizer", "version": 1, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, payload: dict) -> "ABCTokenizer":
        if not isinstance(payload, dict) or payload.get("kind") != "heron-abc-tokenizer":
            raise ValueError("payload is not a Heron ABC tokenizer (missing kind 'heron-abc-tokenizer')")
        return cls(payload["tokens"])

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path | str) -> "ABCTokenizer":
        """Read a tokenizer written by :meth:`save`. A missing file is a ``FileNotFoundError``,
        anything else that is not such a file a ``ValueError``; both name the file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (expected a Heron ABC tokenizer JSON, e.g. the "
                                    "tokenizer.json a `heron train abc` run writes)")
        if not path.is_file():
            raise ValueError(f"{path}: not a file (expected a Heron ABC tokenizer JSON)")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a Heron ABC tokenizer JSON (not JSON: {exc})") from None
        try:
            return cls.from_dict(payload)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not a Heron ABC tokenizer JSON ({exc})") from None


def build_tokenizer(dataset: MusicDataset, min_count: int = 2) -> ABCTokenizer:
    return ABCTokenizer.build((tune.text for tune in dataset.train), min_count=min_count)


# --------------------------------------------------------------------------------------------
# batches


def token_stream(tunes: Sequence[Tune], tokenizer: ABCTokenizer) -> torch.Tensor:
    """``<tune> tune_1 <tune> tune_2 ... <tune>`` as one int64 tensor."""
    ids: list[int] = []
    for tune in tunes:
        ids.append(tokenizer.separator_id)
        ids.extend(tokenizer.encode(tune.text))
    ids.append(tokenizer.separator_id)
    return torch.tensor(ids, dtype=torch.int64)


class MusicBatchSource:
    """Batch source of the data contract for the ``abc`` training task.

    ``batch`` draws ``batch_size`` windows of ``seq_len + 1`` tokens at uniformly random offsets of
    the concatenated split (tunes in corpus order, separated by ``<tune>``); inputs are the first
    ``seq_len`` tokens, targets the next ones, every position scored. A window may span several
    tunes: the separator tells the model where one ends, and the model learns to start a tune from
    ``<tune>``, which is how generation prompts it. :meth:`evaluation_batches` instead gives every
    tune of the split exactly once, from its start, for bits per token that do not depend on
    ``seq_len``.
    """

    def __init__(
        self,
        split: str = "train",
        seq_len: int = 512,
        *,
        dataset: MusicDataset | None = None,
        tokenizer: ABCTokenizer | None = None,
        cache_dir: Path | str | None = None,
        min_count: int = 2,
    ):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        self.dataset = dataset if dataset is not None else load_dataset(cache_dir=cache_dir)
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(self.dataset, min_count)
        self.split = split
        self.tunes = self.dataset.split(split)
        self.seq_len = seq_len
        self.vocab_size = self.tokenizer.vocab_size
        self.stream = token_stream(self.tunes, self.tokenizer)
        if self.stream.numel() < seq_len + 1:
            raise ValueError(
                f"seq_len: the {split} split has only {self.stream.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        high = self.stream.numel() - self.seq_len  # offsets 0 .. high-1 leave room for the target
        offsets = torch.randint(0, high, (batch_size,), generator=generator)
        index = offsets[:, None] + torch.arange(self.seq_len + 1)[None, :]
        windows = self.stream[index]
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def evaluation_batches(self, batch_size: int = 16, max_len: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every tune as ``<tune> tokens <tune>``: inputs all but the last token, targets all but the
        first, right-padded with target -100 (input 0), tunes sorted by length so batches pack
        tightly. Tunes longer than ``max_len`` tokens (default: no limit) are cut to ``max_len``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        rows = [[self.tokenizer.separator_id] + self.tokenizer.encode(t.text) + [self.tokenizer.separator_id] for t in self.tunes]
        if max_len is not None:
            rows = [row[: max_len + 1] for row in rows]
        rows.sort(key=len)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(row) for row in chunk) - 1
            inputs = torch.zeros(len(chunk), width, dtype=torch.int64)
            targets = torch.full((len(chunk), width), -100, dtype=torch.int64)
            for row_index, row in enumerate(chunk):
                tensor = torch.tensor(row, dtype=torch.int64)
                inputs[row_index, : len(row) - 1] = tensor[:-1]
                targets[row_index, : len(row) - 1] = tensor[1:]
            yield inputs, targets


def make_batch_sources(seq_len: int = 512, *, cache_dir: Path | str | None = None,
                       min_count: int = 2) -> tuple[MusicBatchSource, MusicBatchSource]:
    """Train and validation sources sharing one dataset and the train-built tokenizer."""
    dataset = load_dataset(cache_dir=cache_dir)
    tokenizer = build_tokenizer(dataset, min_count)
    return (
        MusicBatchSource("train", seq_len, dataset=dataset, tokenizer=tokenizer),
        MusicBatchSource("validation", seq_len, dataset=dataset, tokenizer=tokenizer),
    )

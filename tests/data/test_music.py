"""The ABC folk-tune dataset: extraction, normalisation, split, tokenizer, batch source."""

from __future__ import annotations

import random
import string

import pytest
import torch

from heron.data import music
from heron.data.music import (
    ABCTokenizer,
    COLLECTIONS,
    MusicBatchSource,
    TuneRejected,
    abc_pieces,
    build_tokenizer,
    extract_tunes,
    is_validation,
    load_dataset,
    normalise_key,
    normalise_meter,
    normalise_tune,
    normalise_unit_length,
    token_stream,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(cache_dir=tmp_path_factory.mktemp("music-cache"))


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return build_tokenizer(dataset)


def test_music21_version_is_the_pinned_one():
    # The dataset (and the checkpoints' vocabulary) depend on the corpus of this release.
    assert music.music21_version() == music.MUSIC21_PINNED_VERSION


@pytest.mark.parametrize("raw, expected", [
    ("G", "G"), (" G ", "G"), ("Gm", "Gm"), ("E Minor", "Em"), ("EMin", "Em"), ("Amin", "Am"),
    ("A Mixolydian", "Amix"), ("Dmix", "Dmix"), ("ADor", "Ador"), ("G Lydian", "Glyd"), ("Bphr", "Bphr"),
    ("D Major", "D"), ("F#m", "F#m"), ("Bb", "Bb"), ("A aeolian", "Am"), ("C ionian", "C"),
    ("G % Aird has two sharps", "G"), ("g", "G"),
])
def test_normalise_key(raw, expected):
    assert normalise_key(raw) == expected


@pytest.mark.parametrize("raw", ["H", "Hp", "Es", "Bn", "Dmixm", "", "G major minor", "X#"])
def test_normalise_key_rejects(raw):
    with pytest.raises(ValueError, match="key"):
        normalise_key(raw)


@pytest.mark.parametrize("raw, expected", [
    ("6/8", "6/8"), (" 3/4", "3/4"), ("C", "4/4"), ("C|", "2/2"), ("none", "none"), ("9/8 % Aird", "9/8"),
    ("06/08", "6/8"),
])
def test_normalise_meter(raw, expected):
    assert normalise_meter(raw) == expected


@pytest.mark.parametrize("raw", ["FREI 4/4", "2/2]", "7/7", "0/4", "3", "", "6/8/8"])
def test_normalise_meter_rejects(raw):
    with pytest.raises(ValueError, match="meter"):
        normalise_meter(raw)


def test_normalise_unit_length_and_type_errors():
    assert normalise_unit_length(" 1/16") == "1/16"
    with pytest.raises(ValueError, match="unit_length"):
        normalise_unit_length("1/6")
    with pytest.raises(TypeError, match="key"):
        normalise_key(3)
    with pytest.raises(TypeError, match="meter"):
        normalise_meter(None)


RAW_TUNE = """X: 12
T:The First Title
T:Another title
N: "collected by somebody"
Z: transcriber, somebody@example.org
M:C|
R:reel
B: Some Book
K: E Minor % a comment
P:A
"_mf"B2 !trill!cd   e2`fg|[P:B] "Segno"a4 [M:C] g4 |
% a comment line
w: some lyrics
[K:A Dorian] A2 B2 :|

X: 13
T:next
"""


def test_normalise_tune_exact():
    tune = normalise_tune(RAW_TUNE, collection="c", source="s#12")
    assert tune.title == "The First Title"
    assert (tune.meter, tune.unit_length, tune.key) == ("2/2", "1/8", "Em")
    assert tune.body == "B2 cd e2fg| a4 [M:4/4] g4 |\n[K:Ador] A2 B2 :|\n"
    assert tune.text == "X:1\nM:2/2\nL:1/8\nK:Em\n" + tune.body
    assert tune.abc(number=3).startswith("X:3\nT:The First Title\nM:2/2\n")


def test_normalise_tune_default_unit_length_follows_the_abc_rule():
    assert normalise_tune("X:1\nM:2/4\nK:G\nABcd|\n").unit_length == "1/16"
    assert normalise_tune("X:1\nM:3/4\nK:G\nABcd|\n").unit_length == "1/8"


@pytest.mark.parametrize("raw, reason", [
    ("X:1\nM:2/4\nV:1\nK:G\nAB|\n", "voices"),
    ("X:1\nM:2/4\nK:G\n[V:1] AB|\n", "voices"),
    ("X:1\nM:2/4\nL:1/8\nAB|\n", "K:"),
    ("X:1\nM:2/4\nK:H\nAB|\n", "key"),
    ("X:1\nM:FREI 4/4\nK:G\nAB|\n", "meter"),
    ("X:1\nM:2/4\nK:G\n|: z4 :|\n", "no notes"),
    ("X:1\nM:2/4\nK:G\nAB|c\u00e9|\n", "printable ASCII"),
    ("X:1\nM:2/4\nK:G\nAB|c\x0cd|\n", "printable ASCII"),
    ("X:1\nM:2/4\nK:G\nAB|[M:7/3] cd|\n", "inline field"),
    ("X:1\nM:2/4\nK:G\nAB|cd|\nK:Hp\nAB|\n", "K: field"),
])
def test_normalise_tune_rejects(raw, reason):
    with pytest.raises(TuneRejected, match=reason):
        normalise_tune(raw)


def test_extraction_is_deterministic_and_cached(dataset, tmp_path):
    # `dataset` was extracted afresh into its own cache; extract again without any cache
    uncached = load_dataset(cache_dir=tmp_path / "unused", use_cache=False)
    assert uncached.train == dataset.train and uncached.validation == dataset.validation
    assert uncached.report.kept == len(dataset.train) + len(dataset.validation)
    assert not (tmp_path / "unused").exists()
    # a cache written and read back gives the same dataset; its name carries the music21 version
    written = load_dataset(cache_dir=tmp_path)
    read_back = load_dataset(cache_dir=tmp_path)
    assert written.train == read_back.train == dataset.train
    assert written.validation == read_back.validation == dataset.validation
    (cache_file,) = tmp_path.iterdir()
    assert music.music21_version() in cache_file.name


def test_every_collection_contributes(dataset):
    tunes = dataset.train + dataset.validation
    counts = {name: sum(t.collection == name for t in tunes) for name in COLLECTIONS}
    # music21 10.5.1 ships about 8,500 / 2,000 / 1,200 / 1,050 tunes; a few are rejected or duplicates
    assert counts["essenFolksong"] > 8300 and counts["oneills1850"] > 1950
    assert counts["airdsAirs"] > 1100 and counts["ryansMammoth"] > 1000


def test_split_is_by_tune_disjoint_and_stable(dataset):
    train_texts = [t.text for t in dataset.train]
    validation_texts = [t.text for t in dataset.validation]
    assert len(set(train_texts)) == len(train_texts)  # deduplicated
    assert not set(train_texts) & set(validation_texts)
    assert all(is_validation(text) for text in validation_texts)
    assert not any(is_validation(text) for text in train_texts[::50])
    share = len(validation_texts) / (len(train_texts) + len(validation_texts))
    assert 0.03 < share < 0.07  # 50 permille by hash


def test_pieces_of_hand_made_abc():
    text = "X:1\nM:6/8\nL:1/8\nK:G\n|:G2A B>c d|[1 (3efg [CEG]2 {ag}f/e/ :|2 z2 ^F,,- F ||\n"
    assert abc_pieces(text) == [
        "X:1\n", "M:6/8\n", "L:1/8\n", "K:G\n", "|:", "G", "2", "A", " ", "B", ">", "c", " ", "d", "|",
        "[1", " ", "(3", "e", "f", "g", " ", "[", "C", "E", "G", "]", "2", " ", "{", "a", "g", "}", "f",
        "/", "e", "/", " ", ":|2", " ", "z", "2", " ", "^F,,", "-", " ", "F", " ", "||", "\n",
    ]


def test_tokenizer_round_trips_every_tune_of_the_corpus(dataset, tokenizer):
    for tune in dataset.train + dataset.validation:
        ids = tokenizer.encode(tune.text)
        assert tokenizer.decode(ids) == tune.text, tune.source


def test_tokenizer_round_trips_the_raw_corpus_text(tokenizer):
    # not only the normalised tunes: every raw tune of the four collections written in the
    # tokenizer's alphabet (printable ASCII and newline; others have tabs, CR or non-ASCII
    # titles), headers, comments and annotations included, round-trips
    alphabet = set(string.printable) - set("\t\r\x0b\x0c")
    root = music.corpus_root()
    checked = 0
    for collection in COLLECTIONS:
        for path in sorted((root / collection).rglob("*.abc")):
            for _, chunk in music.split_abc_file(path.read_bytes().decode("utf-8", errors="replace")):
                if set(chunk) <= alphabet:
                    assert tokenizer.decode(tokenizer.encode(chunk)) == chunk, path.name
                    checked += 1
                else:
                    with pytest.raises(ValueError, match="alphabet"):
                        tokenizer.encode(chunk)
    assert checked > 10000


def test_tokenizer_is_musical_and_deterministic(dataset, tokenizer):
    again = ABCTokenizer.build(t.text for t in dataset.train)
    assert again.tokens == tokenizer.tokens
    for piece in ("K:G\n", "M:6/8\n", "L:1/8\n", "^f", "_B", "c'", "B,", "|:", ":|", "|1", ":|2", "(3", "/2", "3/2"):
        assert tokenizer.has_piece(piece), piece
    # header lines are one token each; multi-character pieces shorten the corpus
    tune = dataset.validation[0]
    header = tune.text[: len(tune.text) - len(tune.body)]
    assert len(tokenizer.encode(header)) == 4
    characters = sum(len(t.text) for t in dataset.validation)
    tokens = sum(len(tokenizer.encode(t.text)) for t in dataset.validation)
    assert tokens < 0.92 * characters
    # the vocabulary comes from the training split only
    from_validation = ABCTokenizer.build(t.text for t in dataset.validation)
    assert from_validation.tokens != tokenizer.tokens


def test_tokenizer_round_trips_random_and_adversarial_ascii(tokenizer):
    rng = random.Random(0)
    abc_characters = "ABCDEFGabcdefgzxZ^_=,'/|:[]{}()<>-!\"%0123456789 \nKLMX"
    alphabet = string.printable.replace("\t", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    for trial in range(300):
        pool = abc_characters if trial % 2 else alphabet
        text = "".join(rng.choice(pool) for _ in range(rng.randrange(0, 80)))
        if trial % 3 == 0:
            text = "K:G\n" + text  # a header line at the start
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_rejects_bad_input(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="alphabet"):
        tokenizer.encode("A\u00e9B")
    with pytest.raises(ValueError, match="alphabet"):
        tokenizer.encode("A\tB")
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(b"AB")
    with pytest.raises(ValueError, match="ids"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="separator"):
        ABCTokenizer(["A", "B"])
    with pytest.raises(ValueError, match="min_count"):
        ABCTokenizer.build(["AB"], min_count=0)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    assert ABCTokenizer.load(path).tokens == tokenizer.tokens
    assert tokenizer.decode([0, tokenizer.encode("A")[0]], keep_separator=True) == "<tune>A"


def test_batch_source_windows(dataset, tokenizer):
    source = MusicBatchSource("train", 64, dataset=dataset, tokenizer=tokenizer)
    assert source.vocab_size == tokenizer.vocab_size and source.seq_len == 64
    inputs, targets = source.batch(8, torch.Generator().manual_seed(1))
    assert inputs.shape == targets.shape == (8, 64) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert 0 <= int(inputs.min()) and int(inputs.max()) < tokenizer.vocab_size
    again_inputs, _ = source.batch(8, torch.Generator().manual_seed(1))
    assert torch.equal(inputs, again_inputs)
    # each window is a slice of the stream of separated tunes
    row = torch.cat([inputs[0], targets[0, -1:]])
    starts = torch.nonzero(source.stream[:-64] == row[0]).flatten()
    assert any(torch.equal(source.stream[start : start + 65], row) for start in starts.tolist())
    assert source.stream[0] == tokenizer.separator_id == source.stream[-1]
    assert int((source.stream == tokenizer.separator_id).sum()) == len(dataset.train) + 1


def test_batch_source_bad_options(dataset, tokenizer):
    source = MusicBatchSource("validation", 16, dataset=dataset, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        source.batch(0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        source.batch(2, 5)
    with pytest.raises(ValueError, match="seq_len"):
        MusicBatchSource("train", 0, dataset=dataset, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="split"):
        MusicBatchSource("test", 16, dataset=dataset, tokenizer=tokenizer)


def test_evaluation_batches_score_every_token_once(dataset, tokenizer):
    source = MusicBatchSource("validation", 16, dataset=dataset, tokenizer=tokenizer)
    scored = 0
    for inputs, targets in source.evaluation_batches(batch_size=64):
        mask = targets != -100
        scored += int(mask.sum())
        assert torch.equal(inputs[:, 1:][mask[:, 1:]], targets[:, :-1][mask[:, 1:]])
        assert bool((inputs[:, 0] == tokenizer.separator_id).all())
    expected = sum(len(tokenizer.encode(t.text)) + 1 for t in dataset.validation)
    assert scored == expected


def _write_corpus(root, collection, text):
    folder = root / collection
    folder.mkdir(parents=True)
    (folder / "tunes.abc").write_text(text)


def test_empty_corpus_gives_clear_errors(tmp_path):
    _write_corpus(tmp_path, "empty", "% nothing but a comment\n")
    with pytest.raises(ValueError, match="no usable ABC tunes"):
        load_dataset(root=tmp_path, collections=("empty",))
    with pytest.raises(FileNotFoundError, match="collections"):
        extract_tunes(tmp_path, ("missing",))
    with pytest.raises(FileNotFoundError, match="root"):
        extract_tunes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="validation_permille"):
        load_dataset(root=tmp_path, collections=("empty",), validation_permille=0)


def test_small_custom_corpus(tmp_path):
    tunes = "".join(f"X:{i}\nT:t{i}\nM:3/4\nL:1/8\nK:D\n{'ABcdef' [i % 6]}2 d2 e2|f6|]\n\n" for i in range(1, 7))
    _write_corpus(tmp_path, "mine", tunes)
    extracted, report = extract_tunes(tmp_path, ("mine",))
    assert len(extracted) == 6 and report.tunes_read == 6 and report.duplicates == 0
    # one tune cannot be split into two non-empty halves
    _write_corpus(tmp_path / "one", "mine", "X:1\nM:3/4\nK:D\nA2 d2 e2|f6|]\n")
    with pytest.raises(ValueError, match="split"):
        load_dataset(root=tmp_path / "one", collections=("mine",))


def test_token_stream_layout(tokenizer):
    tune = normalise_tune("X:1\nM:3/4\nL:1/8\nK:D\nA2 d2 e2|f6|]\n")
    stream = token_stream([tune, tune], tokenizer).tolist()
    body = tokenizer.encode(tune.text)
    assert stream == [0] + body + [0] + body + [0]


def test_key_error_examples_are_keys_generation_accepts(tokenizer):
    """The examples the key error gives must be keys a user can pass to `music generate`."""
    import re

    with pytest.raises(ValueError) as error:
        normalise_key("H")
    examples = re.findall(r"'([^']+)'", str(error.value).split("e.g.", 1)[1].split(";", 1)[0])
    assert len(examples) >= 3
    for example in examples:
        assert tokenizer.has_piece(f"K:{normalise_key(example)}\n"), example


def test_tokenizer_load_names_the_file(tokenizer, tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such file"):
        ABCTokenizer.load(missing)
    with pytest.raises(ValueError, match=f"{tmp_path}: not a file"):
        ABCTokenizer.load(tmp_path)
    cases = {"notes.md": "# heading\n", "other.json": '{"kind": "x"}', "tokens.json": '{"kind": "heron-abc-tokenizer"}',
             "short.json": '{"kind": "heron-abc-tokenizer", "tokens": ["<tune>", "A"]}', "bytes.json": b"\xff\xfe"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=f"{path}: not a Heron ABC tokenizer JSON"):
            ABCTokenizer.load(path)

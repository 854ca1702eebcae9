"""Prompts, generation with tiny models, rendering (.abc/.mid/.png), evaluation and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from heron.data.music import MusicBatchSource, MusicDataset, build_tokenizer, load_dataset
from heron.music.analysis import meter_check
from heron.music.evaluate import evaluate_music, validation_bits_per_token, validation_prompts
from heron.music.generate import TunePrompt, generate_tunes, known_keys, known_meters, make_prompt
from heron.music.render import parse_abc, parses, write_tune


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("music-cache")


@pytest.fixture(scope="module")
def dataset(cache_dir):
    return load_dataset(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return build_tokenizer(dataset)


class ReplayModel(nn.Module):
    """Predicts a fixed token sequence, one token per step, whatever it is fed (state = position).
    Stands in for a trained model: its tunes are real corpus tunes, so they must parse."""

    def __init__(self, sequence: list[int], vocab_size: int):
        super().__init__()
        self.register_buffer("sequence", torch.tensor(sequence, dtype=torch.int64))
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(()))

    def _logits(self, positions: torch.Tensor) -> torch.Tensor:
        index = positions.clamp(max=self.sequence.numel() - 1)
        return 50.0 * nn.functional.one_hot(self.sequence[index], self.vocab_size).float()

    def forward(self, tokens, state=None, return_state=False):
        batch = tokens.shape[0]
        start = torch.zeros(batch, dtype=torch.int64) if state is None else state
        logits = torch.zeros(batch, tokens.shape[1], self.vocab_size)
        logits[:, -1] = self._logits(start)
        return (logits, start + 1) if return_state else logits

    def step(self, token_ids, state=None):
        position = torch.zeros(token_ids.shape[0], dtype=torch.int64) if state is None else state
        return self._logits(position), position + 1


class TinyRecurrentLM(nn.Module):
    """A small GRU language model with the repository's model interface."""

    def __init__(self, vocab_size: int, hidden: int = 16, seed: int = 0, output_size: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, output_size or vocab_size)

    def forward(self, tokens, state=None, return_state=False):
        output, state = self.rnn(self.embedding(tokens), state)
        logits = self.head(output)
        return (logits, state) if return_state else logits

    def step(self, token_ids, state=None):
        logits, state = self.forward(token_ids[:, None], state, return_state=True)
        return logits[:, 0], state


class UniformModel(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, tokens, state=None, return_state=False):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        return (logits, state) if return_state else logits


def _replay_model_for(tune, tokenizer):
    body_ids = tokenizer.encode(tune.body)
    return ReplayModel(body_ids + [tokenizer.separator_id], tokenizer.vocab_size)


def _first_tune(dataset, meter, key):
    return next(t for t in dataset.validation if t.meter == meter and t.key == key)


def test_make_prompt_accepts_known_and_rejects_unknown_options(tokenizer):
    prompt = make_prompt(tokenizer, key="G", meter="6/8")
    assert prompt == TunePrompt("G", "6/8", "1/8")
    assert prompt.header == "X:1\nM:6/8\nL:1/8\nK:G\n"
    assert make_prompt(tokenizer, key="E minor", meter="C|").key == "Em"
    assert make_prompt(tokenizer, key="D", meter="2/4").unit_length == "1/16"
    assert {"G", "D", "Em", "Ador"} <= set(known_keys(tokenizer))
    assert {"6/8", "3/4", "2/4", "4/4"} <= set(known_meters(tokenizer))
    with pytest.raises(ValueError, match="key must be a tonic"):
        make_prompt(tokenizer, key="H", meter="6/8")
    with pytest.raises(ValueError, match="unknown key 'G#dor'"):
        make_prompt(tokenizer, key="G#dor", meter="6/8")
    with pytest.raises(ValueError, match="meter must be"):
        make_prompt(tokenizer, key="G", meter="6/7")
    with pytest.raises(ValueError, match="unknown meter '11/8'"):
        make_prompt(tokenizer, key="G", meter="11/8")
    with pytest.raises(ValueError, match="unknown unit length"):
        make_prompt(tokenizer, key="G", meter="6/8", unit_length="1/64")
    with pytest.raises(TypeError, match="tokenizer"):
        make_prompt("vocab", key="G", meter="6/8")


def test_generation_writes_parseable_abc_midi_and_png(dataset, tokenizer, tmp_path):
    tune = _first_tune(dataset, "6/8", "G")
    model = _replay_model_for(tune, tokenizer)
    prompt = make_prompt(tokenizer, key="G", meter="6/8", unit_length=tune.unit_length)
    (generated,) = generate_tunes(model, tokenizer, [prompt], seed=3)
    assert generated.finished and generated.body == tune.body
    assert generated.abc() == tune.text
    rendered = write_tune(generated.abc(number=1, title="replayed"), tmp_path, "tune_01")
    assert rendered.parsed, rendered.error
    assert parses(rendered.abc.read_text())
    assert rendered.midi.read_bytes()[:4] == b"MThd"
    assert rendered.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parsed = parse_abc(rendered.abc.read_text())
    assert len(parsed.notes) >= 10


def test_unparseable_tune_writes_only_abc(tmp_path):
    rendered = write_tune("X:1\nM:6/8\nL:1/8\nK:G\n|: :|\n", tmp_path, "empty")
    assert not rendered.parsed and rendered.midi is None and rendered.png is None
    assert rendered.abc.exists() and "no notes" in rendered.error


def test_text_with_a_second_tune_header(tmp_path):
    # an undertrained model may start a new tune (`X:`) without the separator: music21 then reads
    # an Opus, whose MIDI export writes `stem-1.mid`, ... instead of `stem.mid`
    two = "X:1\nM:6/8\nL:1/8\nK:G\nGAB cde|dcB A3|\nX:2\nK:A\nc2 d2|\n"
    assert not parses(two)
    rendered = write_tune(two, tmp_path / "two", "two")
    assert not rendered.parsed and "2 tunes" in rendered.error
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["two.abc"]
    # the same number again: music21 reads one tune (an Opus of one score)
    same = "X:1\nM:6/8\nL:1/8\nK:G\nGAB cde|dcB A3|\nX:1\nK:A\nc2 d2|\n"
    rendered = write_tune(same, tmp_path / "same", "same")
    assert rendered.parsed and rendered.midi == tmp_path / "same" / "same.mid"
    assert sorted(path.name for path in (tmp_path / "same").iterdir()) == ["same.abc", "same.mid", "same.png"]


def test_generation_stops_at_the_token_limit_on_a_bar_line(dataset, tokenizer):
    tune = _first_tune(dataset, "6/8", "G")
    never_ending = ReplayModel(tokenizer.encode(tune.body * 5), tokenizer.vocab_size)
    prompt = make_prompt(tokenizer, key="G", meter="6/8", unit_length=tune.unit_length)
    (generated,) = generate_tunes(never_ending, tokenizer, [prompt], max_tokens=37)
    assert not generated.finished and generated.tokens <= 37
    assert generated.body.rstrip("\n").endswith(("|", "||", "|]", ":|", "::", "|:"))
    assert tune.body.startswith(generated.body.rstrip("\n"))


def test_generation_is_seeded_and_batched_consistently(tokenizer):
    model = TinyRecurrentLM(tokenizer.vocab_size)
    prompts = [make_prompt(tokenizer, key="G", meter="6/8"), make_prompt(tokenizer, key="D", meter="3/4")] * 2
    first = generate_tunes(model, tokenizer, prompts, seed=5, max_tokens=30)
    again = generate_tunes(model, tokenizer, prompts, seed=5, max_tokens=30, batch_size=1)
    other = generate_tunes(model, tokenizer, prompts, seed=6, max_tokens=30)
    assert [t.body for t in first] == [t.body for t in again]
    assert [t.body for t in first] != [t.body for t in other]
    assert [t.prompt for t in first] == prompts


def test_generation_rejects_bad_arguments(tokenizer):
    prompt = make_prompt(tokenizer, key="G", meter="6/8")
    with pytest.raises(ValueError, match="vocabulary has 10 tokens"):
        generate_tunes(TinyRecurrentLM(tokenizer.vocab_size, output_size=10), tokenizer, [prompt], max_tokens=5)
    with_config = TinyRecurrentLM(10)
    with_config.config = type("Config", (), {"vocab_size": 10})()
    with pytest.raises(ValueError, match="vocabulary has 10 tokens"):
        generate_tunes(with_config, tokenizer, [prompt], max_tokens=5)
    with pytest.raises(ValueError, match="prompts"):
        generate_tunes(TinyRecurrentLM(tokenizer.vocab_size), tokenizer, [], max_tokens=5)
    with pytest.raises(ValueError, match="max_tokens"):
        generate_tunes(TinyRecurrentLM(tokenizer.vocab_size), tokenizer, [prompt], max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate_tunes(TinyRecurrentLM(tokenizer.vocab_size), tokenizer, [prompt], top_p=0.0)


def test_validation_bits_per_token(dataset, tokenizer):
    small = MusicDataset(dataset.train, dataset.validation[:24], dataset.report, dataset.music21_version, 50)
    source = MusicBatchSource("validation", 8, dataset=small, tokenizer=tokenizer)
    # a uniform model costs exactly log2(V) bits per token
    assert validation_bits_per_token(UniformModel(tokenizer.vocab_size), source) == pytest.approx(math.log2(tokenizer.vocab_size))
    # batching and padding do not change the figure: compare with one tune at a time
    model = TinyRecurrentLM(tokenizer.vocab_size)
    batched = validation_bits_per_token(model, source, batch_size=7)
    nats = tokens = 0.0
    for tune in small.validation:
        ids = torch.tensor([[0] + tokenizer.encode(tune.text) + [0]])
        with torch.no_grad():
            logits = model(ids[:, :-1])
        nats += float(nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
    assert batched == pytest.approx(nats / tokens / math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="vocabulary"):
        validation_bits_per_token(UniformModel(7), source)


def test_validation_prompts_follow_the_validation_headers(dataset, tokenizer):
    prompts = validation_prompts(dataset, tokenizer, 40, seed=1)
    assert len(prompts) == 40 and prompts == validation_prompts(dataset, tokenizer, 40, seed=1)
    headers = {(t.key, t.meter, t.unit_length) for t in dataset.validation}
    assert all((p.key, p.meter, p.unit_length) in headers for p in prompts)
    with pytest.raises(ValueError, match="n must be"):
        validation_prompts(dataset, tokenizer, 0)


def test_evaluate_music_reports_and_writes(dataset, tokenizer, tmp_path):
    tune = _first_tune(dataset, "6/8", "G")
    model = _replay_model_for(tune, tokenizer)
    result = evaluate_music(model, tokenizer, dataset, n=3, seed=0, out_dir=tmp_path, compute_bits=False)
    assert result.generated == 3 and result.generated_finished == 3
    assert result.generated_parse_share == 1.0
    # the replayed body under each prompt's header (prompts follow the validation headers)
    expected_texts = [prompt.header + tune.body for prompt in validation_prompts(dataset, tokenizer, 3, seed=0)]
    expected = meter_check(expected_texts)
    assert result.generated_meter_bars == expected.counted
    assert result.generated_meter_share == pytest.approx(expected.share, nan_ok=True)
    assert result.validation_meter_share == pytest.approx(meter_check(t.text for t in dataset.validation).share)
    assert 0.8 < result.validation_meter_share < 1.0 and result.validation_parse_share > 0.6
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["generated"] == 3 and "meter_share_ratio" in written
    assert sorted(p.name for p in (tmp_path / "tunes").iterdir())[:3] == ["tune_001.abc", "tune_001.mid", "tune_001.png"]


# --------------------------------------------------------------------------------------------
# command line


def _run_cli(argv):
    from heron.cli import main

    return main(argv)


def test_cli_generate_writes_files(dataset, tokenizer, cache_dir, tmp_path, monkeypatch, capsys):
    import heron.commands.music as command

    tune = _first_tune(dataset, "6/8", "G")
    monkeypatch.setattr(command, "_load_model", lambda path, device: _replay_model_for(tune, tokenizer))
    out = tmp_path / "tunes"
    code = _run_cli(["music", "generate", "--checkpoint", str(tmp_path / "model.safetensors"), "--key", "G",
                     "--meter", "6/8", "--unit-length", tune.unit_length, "--n", "2", "--out", str(out),
                     "--device", "cpu", "--cache-dir", str(cache_dir)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"tune_0{i}.{ext}" for i in (1, 2) for ext in ("abc", "mid", "png")]
    assert "2/2 tunes parse" in capsys.readouterr().out
    assert (out / "tune_02.abc").read_text().startswith("X:2\nT:Heron tune 2 (G, 6/8, seed 0)\nM:6/8\n")


@pytest.mark.parametrize("option, value, message", [
    ("--key", "H#", "key must be a tonic"),
    ("--key", "G#dor", "unknown key"),
    ("--meter", "5/7", "meter must be"),
    ("--meter", "13/8", "unknown meter"),
    ("--temperature", "-1", "--temperature: expected a finite number >= 0"),
    ("--top-p", "1.5", "--top-p: expected a number in (0, 1]"),
])
def test_cli_generate_bad_options(option, value, message, cache_dir, tmp_path, capsys):
    argv = ["music", "generate", "--checkpoint", str(tmp_path / "none.safetensors"), "--key", "G", "--meter", "6/8",
            "--out", str(tmp_path / "out"), "--device", "cpu", "--cache-dir", str(cache_dir),
            "--temperature", "1.0", "--top-p", "0.95"]
    argv[argv.index(option) + 1] = value
    assert _run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_data_summary(cache_dir, tmp_path, capsys):
    assert _run_cli(["music", "data", "--cache-dir", str(cache_dir), "--tokenizer-out", str(tmp_path / "t.json"),
                     "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "validation:" in out and "vocabulary:" in out and (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------------------------
# bad input is refused before the corpus, the tokenizer or the model are loaded


def _no_model(path, device):
    raise AssertionError("the model must not be loaded for bad input")


@pytest.mark.parametrize("action", [["generate", "--key", "G"], ["eval", "--no-bits"]])
def test_cli_out_that_is_a_file_is_refused_up_front(action, cache_dir, tmp_path, monkeypatch, capsys):
    import heron.commands.music as command

    monkeypatch.setattr(command, "_load_model", _no_model)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me\n")
    for out, message in ((taken, f"--out {taken}: is a file, expected a folder"),
                         (taken / "tunes", f"--out {taken / 'tunes'}: {taken} is a file, not a folder")):
        argv = ["music", *action, "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(out),
                "--device", "cpu", "--cache-dir", str(cache_dir)]
        assert _run_cli(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert taken.read_text() == "keep me\n"


@pytest.mark.parametrize("action", [["generate", "--out", "OUT"], ["eval"]])
@pytest.mark.parametrize("device", ["banana", "cuda:x", "gpu"])
def test_cli_malformed_device(action, device, cache_dir, tmp_path, monkeypatch, capsys):
    import heron.commands.music as command

    monkeypatch.setattr(command, "_load_model", _no_model)
    action = [str(tmp_path / "out") if part == "OUT" else part for part in action]
    argv = ["music", *action, "--checkpoint", str(tmp_path / "m.safetensors"), "--device", device,
            "--cache-dir", str(cache_dir)]
    assert _run_cli(argv) == 2
    assert f"heron music: error: --device: expected auto, cpu, cuda or cuda:N, got '{device}'" in capsys.readouterr().err


def test_cli_bad_tokenizer_file_is_named(cache_dir, tmp_path, monkeypatch, capsys):
    import heron.commands.music as command

    monkeypatch.setattr(command, "_load_model", _no_model)
    not_json = tmp_path / "README.md"
    not_json.write_text("# not a tokenizer\n")
    other_json = tmp_path / "other.json"
    other_json.write_text('{"kind": "something else"}')
    cases = [
        (not_json, f"--tokenizer {not_json}: not a Heron ABC tokenizer JSON (not JSON"),
        (other_json, f"--tokenizer {other_json}: not a Heron ABC tokenizer JSON"),
        (tmp_path / "missing.json", f"--tokenizer {tmp_path / 'missing.json'}: no such file"),
        (tmp_path, f"--tokenizer {tmp_path}: not a file"),
    ]
    for path, message in cases:
        for action in (["generate", "--out", str(tmp_path / "out")], ["eval", "--no-bits"]):
            argv = ["music", *action, "--checkpoint", str(tmp_path / "m.safetensors"), "--tokenizer", str(path),
                    "--device", "cpu", "--cache-dir", str(cache_dir)]
            assert _run_cli(argv) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, err


def test_cli_data_show_must_not_be_negative(cache_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(["music", "data", "--cache-dir", str(cache_dir), "--show", "-2"])
    assert exit_info.value.code == 2
    assert "argument --show: expected an integer >= 0, got '-2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run_cli(["music", "generate", "--checkpoint", "m", "--out", "o", "--n", "two"])
    assert "argument --n: expected an integer >= 1, got 'two'" in capsys.readouterr().err


def test_known_meters_are_in_musical_order(tokenizer):
    meters = known_meters(tokenizer)
    assert meters[-1] == "none"
    numeric = [tuple(int(part) for part in meter.split("/")) for meter in meters[:-1]]
    assert numeric == sorted(numeric, key=lambda nd: (nd[1], nd[0]))
    assert meters.index("2/4") < meters.index("12/8") and meters.index("9/8") < meters.index("12/8")
    with pytest.raises(ValueError, match="unknown meter '13/8'; the training tunes use 2/1, 3/1"):
        make_prompt(tokenizer, key="G", meter="13/8")


def test_token_count_is_taken_after_the_cut(dataset, tokenizer):
    tune = _first_tune(dataset, "6/8", "G")
    never_ending = ReplayModel(tokenizer.encode(tune.body * 5), tokenizer.vocab_size)
    prompt = make_prompt(tokenizer, key="G", meter="6/8", unit_length=tune.unit_length)
    for limit in (37, 61):
        (generated,) = generate_tunes(never_ending, tokenizer, [prompt], max_tokens=limit)
        kept = generated.body.rstrip("\n")
        assert generated.cut_at_bar and not generated.finished
        assert generated.tokens == len(tokenizer.encode(kept)) <= limit
        assert tokenizer.encode(tune.body * 5)[: generated.tokens] == tokenizer.encode(kept)


def test_unfinished_tune_without_a_bar_line_is_kept_whole(tokenizer):
    notes = tokenizer.encode("GABc")
    (generated,) = generate_tunes(ReplayModel(notes, tokenizer.vocab_size), tokenizer,
                                  [make_prompt(tokenizer, key="G", meter="6/8")], max_tokens=3)
    assert not generated.finished and not generated.cut_at_bar
    assert generated.tokens == 3 and generated.body == tokenizer.decode(notes[:3]) + "\n"


def test_cli_summary_reports_the_cut(dataset, tokenizer, cache_dir, tmp_path, monkeypatch, capsys):
    import heron.commands.music as command

    tune = _first_tune(dataset, "6/8", "G")
    model = ReplayModel(tokenizer.encode(tune.body * 5), tokenizer.vocab_size)
    monkeypatch.setattr(command, "_load_model", lambda path, device: model)
    argv = ["music", "generate", "--checkpoint", str(tmp_path / "m.safetensors"), "--key", "G", "--meter", "6/8",
            "--unit-length", tune.unit_length, "--n", "1", "--max-tokens", "37", "--out", str(tmp_path / "t"),
            "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert _run_cli(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    kept = len(tokenizer.encode((tmp_path / "t" / "tune_01.abc").read_text().split("K:G\n", 1)[1].rstrip("\n")))
    assert f": {kept} tokens, stopped at --max-tokens, cut back to its last bar line" in line and kept < 37

"""Whatever music examples are committed must be usable: every .abc parses with music21."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.music.render import parses

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "music"


def test_every_committed_abc_file_parses():
    files = sorted(EXAMPLES.rglob("*.abc"))
    if not files:
        pytest.skip("no sample tunes committed under examples/music yet")
    failing = [str(path.relative_to(EXAMPLES)) for path in files if not parses(path.read_text())]
    assert not failing, f"music21 cannot parse {failing}"


def test_make_examples_suggests_a_resume_command_that_works(tmp_path, monkeypatch):
    """The hint for an unfinished run must be a `heron train` command line the CLI accepts."""
    import importlib.util
    import shlex

    import heron.data.music
    from heron.cli import build_parser

    monkeypatch.setattr(heron.data.music, "load_dataset", lambda **kwargs: None)
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = tmp_path / "abc-rosa"
    run.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--rosa", str(run), "--rwkv7", str(tmp_path / "abc-rwkv7"), "--device", "cpu"])
    message = str(exit_info.value)
    command = shlex.split(message.split("`")[1])
    assert command[:2] == ["heron", "train"]
    args = build_parser("train").parse_args(command[1:])
    assert args.task == "abc" and args.resume == "" and args.out == str(run)

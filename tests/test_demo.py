"""`heron demo` (the README's first command; its full run is exercised by tests/test_docs.py)."""

from heron.cli import main


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"someone's run")
    assert main(["demo", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "no earlier demo run wrote it" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"someone's run"
    (tmp_path / "checkpoint.pt").unlink()
    (tmp_path / "notes.txt").write_text("mine")  # any file: the demo takes only new or empty folders
    assert main(["demo", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert not (tmp_path / "heron-demo.txt").exists()


def test_demo_replaces_only_its_own_files(tmp_path, capsys):
    """A second run in a demo folder replaces the first run's files; anything the user added stays
    (an earlier version removed the whole folder)."""
    out = tmp_path / "demo"
    tiny = ["demo", "--out", str(out), "--steps", "1", "--digits", "2", "--batch-size", "4", "--eval-samples", "1",
            "--no-progress"]
    assert main(tiny) == 0
    (out / "mine").mkdir()
    (out / "mine" / "notes.txt").write_text("keep me")
    (out / "eval.csv").write_text("stale")
    assert main(tiny) == 0
    assert (out / "mine" / "notes.txt").read_text() == "keep me"
    assert (out / "eval.csv").read_text() != "stale" and (out / "model.safetensors").is_file()


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--digits", "61"]) == 2
    assert "--digits" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "new"), "--device", "banana"]) == 2
    assert "--device" in capsys.readouterr().err and not (tmp_path / "new").exists()

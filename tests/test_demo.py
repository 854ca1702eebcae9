"""`heron demo` (the README's first command; its full run is exercised by tests/test_docs.py)."""

from heron.cli import main


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"someone's run")
    assert main(["demo", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"someone's run"


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--digits", "61"]) == 2
    assert "--digits" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err

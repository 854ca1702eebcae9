"""``heron train`` on the command line: option precedence, --resume, errors."""

import json

from heron.cli import main
from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.train import synthetic  # registers the synthetic task

QUIET = ["--no-progress", "--no-tensorboard", "--device", "cpu"]


def test_config_file_then_command_line_override(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('steps = 4\nlr = 0.02\nbatch_size = 4\n[model_config]\nwidth = 12\n')
    out = tmp_path / "run"
    assert main(["train", synthetic.NAME, "--config", str(config), "--steps", "3", "--out", str(out), *QUIET]) == 0
    saved = load_checkpoint(out / CHECKPOINT_NAME)["config"]
    assert saved["steps"] == 3 and saved["lr"] == 0.02 and saved["batch_size"] == 4  # CLI > file > task defaults
    assert saved["model_config"] == {"width": 12} and saved["lr_final"] == synthetic.TASK.defaults["lr_final"]


def test_resume_continues_from_the_out_directory(tmp_path):
    out = tmp_path / "run"
    assert main(["train", synthetic.NAME, "--steps", "6", "--time-limit", "1e-9", "--out", str(out), *QUIET]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 1
    # no options needed beyond where the run lives: the checkpoint's configuration (time limit
    # included: one slice of the run per invocation) is the base
    assert main(["train", synthetic.NAME, "--resume", "--out", str(out), *QUIET]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 2
    assert main(["train", synthetic.NAME, "--resume", "--out", str(out), "--time-limit", "0", *QUIET]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 6
    rows = (out / "train.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_from_an_explicit_checkpoint_path(tmp_path):
    out = tmp_path / "run"
    main(["train", synthetic.NAME, "--steps", "5", "--time-limit", "1e-9", "--out", str(out), *QUIET])
    assert main(["train", synthetic.NAME, "--resume", str(out / CHECKPOINT_NAME), "--time-limit", "0", *QUIET]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5


def test_resume_from_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", synthetic.NAME, "--steps", "5", "--time-limit", "1e-9", "--out", str(out), *QUIET])
    assert main(["train", synthetic.NAME, "--resume", str(out), "--time-limit", "0", *QUIET]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5
    capsys.readouterr()
    assert main(["train", "counting", "--resume", str(out), *QUIET]) == 2
    assert f"is a checkpoint of task '{synthetic.NAME}', not 'counting'" in capsys.readouterr().err


def test_os_errors_and_unknown_options_are_one_line_errors(tmp_path, capsys):
    import pytest

    existing_file = tmp_path / "file"
    existing_file.write_text("")
    assert main(["train", synthetic.NAME, "--steps", "1", "--out", str(existing_file), *QUIET]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["train", synthetic.NAME, "--no-such-option"])
    assert exit_info.value.code == 2
    assert "heron train: error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", synthetic.NAME, "--steps", "2", "--out", str(out), *QUIET])
    capsys.readouterr()
    assert main(["train", synthetic.NAME, "--resume", "--out", str(out), "--lr", "0.5", *QUIET]) == 2
    assert "changed: lr: 0.01 -> 0.5" in capsys.readouterr().err
    assert main(["train", "no-such-task", *QUIET]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["train", synthetic.NAME, "--model-config", "width", "--out", str(tmp_path / "x"), *QUIET]) == 2
    assert "--model-config expects KEY=VALUE" in capsys.readouterr().err
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"task": "reverse"}))
    assert main(["train", synthetic.NAME, "--config", str(bad), *QUIET]) == 2
    assert "is for task 'reverse'" in capsys.readouterr().err
    (out / CHECKPOINT_NAME).write_bytes(b"HERON-CHECKPOINT 1 00 5\nabc")
    assert main(["train", synthetic.NAME, "--resume", "--out", str(out), *QUIET]) == 2
    assert "truncated" in capsys.readouterr().err


def test_execution_options_on_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "reverse", "--steps", "1", "--batch-size", "4", "--task-option", "max_digits=3",
                 "--eval-samples", "1", "--model-config", "rosa=null", "--parallel", "fsdp",
                 "--grad-checkpointing", "--no-compile", "--ce-chunk", "16", "--out", str(out), *QUIET]) == 0
    saved = load_checkpoint(out / CHECKPOINT_NAME)["config"]
    assert (saved["parallel"], saved["grad_checkpointing"], saved["compile"], saved["ce_chunk"]) == ("fsdp", True, False, 16)

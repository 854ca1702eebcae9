import pytest
import torch

from heron.cli import main
from heron.models import loading as load_module
from heron.models import rwkv8


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    """A tiny byte-level RWKV-8 saved in heron's own format."""
    torch.manual_seed(0)
    model = rwkv8.RWKV8(rwkv8.RWKV8Config(n_layer=1, n_embd=32, vocab_size=257, head_size=16))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    load_module.save(model, path)
    return path


def test_generate_prints_prompt_and_continuation(byte_checkpoint, capsys):
    argv = ["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "heron", "--max-tokens", "12",
            "--temperature", "0.7", "--top-k", "20", "--seed", "3", "--no-stop"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("heron") and len(first.encode("utf-8", "surrogatepass")) > len("heron")
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # same seed, same text


def test_stream_matches_batch_output(byte_checkpoint, capsys):
    common = ["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "abc", "--max-tokens", "10",
              "--temperature", "0", "--no-echo", "--no-stop"]
    assert main(common) == 0
    batch = capsys.readouterr().out
    assert main(common + ["--stream", "--timing"]) == 0
    captured = capsys.readouterr()
    assert captured.out == batch
    assert "tokens/s" in captured.err


def test_full_recompute_gives_the_same_text(byte_checkpoint, capsys):
    common = ["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "xyz", "--max-tokens", "8",
              "--temperature", "0", "--no-stop"]
    assert main(common) == 0
    incremental = capsys.readouterr().out
    assert main(common + ["--full-recompute"]) == 0
    assert capsys.readouterr().out == incremental


def test_several_samples(byte_checkpoint, capsys):
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "a", "--max-tokens", "5",
                 "--num-samples", "3", "--seed", "1", "--no-stop"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 3


def test_copy_eval_command(byte_checkpoint, tmp_path, capsys):
    data = tmp_path / "pool.txt"
    data.write_text("the quick brown fox jumps over the lazy dog " * 10, encoding="utf-8")
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--copy-eval", "--copy-data", str(data),
                 "--copy-trials", "4", "--copy-length", "12", "--copy-cue", "3", "--copy-pool", "10"]) == 0
    out = capsys.readouterr().out
    assert "copy ability" in out and "4 x 9 tokens" in out
    record_path = tmp_path / "results" / "copy.json"
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--copy-eval", "--copy-data", str(data),
                 "--copy-trials", "4", "--copy-length", "12", "--copy-cue", "3", "--copy-pool", "10",
                 "--copy-json", str(record_path)]) == 0
    import json
    record = json.loads(record_path.read_text())
    assert record["trials"] == 4 and record["length"] == 12 and record["cue"] == 3 and record["pool"] == 10
    assert len(record["per_trial_accuracy"]) == 4
    assert record["token_accuracy"] == sum(record["per_trial_accuracy"]) / 4
    assert record["parameters"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--max-tokens", "-1"], "--max-tokens"),
    (["--stream", "--num-samples", "2"], "--stream"),
    (["--tokenizer", "world"], "--tokenizer world"),
    (["--top-p", "0"], "top_p"),
])
def test_bad_arguments_exit_with_a_message(byte_checkpoint, capsys, extra, message):
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "a"] + extra) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "none.safetensors"), "--prompt", "a"]) == 2
    assert "not found" in capsys.readouterr().err


def test_prompt_ids_with_an_official_task_checkpoint(shared, capsys):
    """The official 251105 reversal model continues "1234567," with the reversed digits and '#'."""
    checkpoint = shared / "checkpoints" / "251105_reverse_L2.pth"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt-ids", "1 2 3 4 5 6 7 10",
                 "--temperature", "0", "--max-tokens", "10", "--stop-token", "11"]) == 0
    assert capsys.readouterr().out.strip() == "1 2 3 4 5 6 7 10 | 7 6 5 4 3 2 1 [11]"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt-ids", "9,0,8,10", "--temperature", "0",
                 "--max-tokens", "4", "--stop-token", "11", "--stream", "--no-echo"]) == 0
    assert capsys.readouterr().out.strip() == "8 0 9 [11]"


def test_prompt_ids_are_validated(byte_checkpoint, capsys):
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt-ids", "1 x"]) == 2
    assert "--prompt-ids" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt-ids", "1 2", "--prompt", "a"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt-ids", "1 999"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# bad input is refused by name, before the model is loaded


@pytest.mark.parametrize("device, message", [
    ("banana", "--device: expected auto, cpu, cuda or cuda:N, got 'banana'"),
    ("cuda:x", "--device: expected auto, cpu, cuda or cuda:N"),
    ("", "--device: expected"),
])
@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a"],
    ["eval", "reverse", "--digits", "2"],
])
def test_malformed_device_is_one_line_error(command, device, message, tmp_path, capsys):
    # the checkpoint does not exist: the device must be refused before anything is loaded
    argv = command[:1] + command[1:] + ["--checkpoint", str(tmp_path / "none.pth"), "--device", device]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith(f"heron {command[0]}: error:")


def test_resolve_device():
    from heron.commands import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("banana", "cuda:", "cuda:-1", "mps:0", "cpu,cuda", None, 0):
        with pytest.raises(ValueError, match="--where: expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad, "--where")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0", "cuda:3"):
            with pytest.raises(ValueError, match=f"--device {name}: CUDA is not available"):
                resolve_device(name)
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_prompt_file_must_be_a_readable_utf8_file(byte_checkpoint, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(byte_checkpoint), "--max-tokens", "2"]
    assert main(base + ["--prompt-file", str(tmp_path)]) == 2
    assert f"--prompt-file {tmp_path}: not a regular file" in capsys.readouterr().err
    assert main(base + ["--prompt-file", str(tmp_path / "missing.txt")]) == 2
    assert "--prompt-file" in capsys.readouterr().err
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    assert main(base + ["--prompt-file", str(latin)]) == 2
    assert f"--prompt-file {latin}: not UTF-8" in capsys.readouterr().err
    good = tmp_path / "prompt.txt"
    good.write_text("héron", encoding="utf-8")
    assert main(base + ["--prompt-file", str(good), "--no-stop"]) == 0
    assert capsys.readouterr().out.startswith("héron")


def test_stop_token_must_be_in_the_vocabulary(byte_checkpoint, shared, capsys):
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "a", "--stop-token", "300"]) == 2
    assert "--stop-token 300: outside the model's vocabulary [0, 257)" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(byte_checkpoint), "--prompt", "a", "--stop-token", "-1"]) == 2
    assert "--stop-token: expected a token id >= 0, got -1" in capsys.readouterr().err
    checkpoint = shared / "checkpoints" / "251105_reverse_L2.pth"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt-ids", "1 2", "--stop-token", "50"]) == 2
    assert "--stop-token 50: outside the model's vocabulary [0, 12)" in capsys.readouterr().err


def test_copy_pool_default_adapts_and_an_explicit_one_is_checked(byte_checkpoint, tmp_path, capsys):
    data = tmp_path / "pool.txt"
    data.write_text("abcdefghij" * 20, encoding="utf-8")
    base = ["generate", "--checkpoint", str(byte_checkpoint), "--copy-eval", "--copy-data", str(data),
            "--copy-trials", "2", "--copy-length", "8", "--copy-cue", "2"]
    record_path = tmp_path / "copy.json"
    assert main(base + ["--copy-json", str(record_path)]) == 0
    captured = capsys.readouterr()
    assert "pool = 10 most frequent bytes tokens" in captured.out
    assert "only 10 distinct bytes tokens, so the pool is all 10" in captured.err
    import json
    assert json.loads(record_path.read_text())["pool"] == 10
    assert main(base + ["--copy-pool", "1000"]) == 2
    err = capsys.readouterr().err
    assert f"--copy-pool 1000: {data} has only 10 distinct bytes tokens" in err and err.count("\n") == 1
    assert main(base + ["--copy-pool", "4"]) == 0
    captured = capsys.readouterr()
    assert "pool = 4 most frequent" in captured.out and "note:" not in captured.err


def test_copy_json_that_cannot_be_written_is_refused_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target, message in ((tmp_path, "is a folder"), (blocker / "copy.json", "is a file, not a folder")):
        assert main(["generate", "--checkpoint", str(tmp_path / "none.pth"), "--copy-eval",
                     "--copy-json", str(target)]) == 2
        assert message in capsys.readouterr().err


def test_eval_refuses_a_non_positive_batch_size(tmp_path, capsys):
    # 0 used to fall back to the default silently, while -1 was an error
    for bad in ("0", "-1"):
        assert main(["eval", "reverse", "--digits", "2", "--checkpoint", str(tmp_path / "none.pth"),
                     "--batch-size", bad]) == 2
        assert "--batch-size must be >= 1" in capsys.readouterr().err

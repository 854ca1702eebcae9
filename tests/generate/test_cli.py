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

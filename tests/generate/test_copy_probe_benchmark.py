"""benchmarks/copy_probe.py: its synthetic rows (segments from a token pool after a noise prefix)
and a CPU smoke run of the pool comparison."""

import importlib.util
import json

import torch

from tests.benchmark_runner import REPO, run_benchmark

_spec = importlib.util.spec_from_file_location("copy_probe", REPO / "benchmarks" / "copy_probe.py")
copy_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(copy_probe)


def test_pool_rows_repeat_a_pool_segment_after_whole_vocabulary_noise():
    generator = torch.Generator().manual_seed(3)
    inputs, targets, mask = copy_probe.copy_batch(64, 96, 50, 4, 12, generator, span_pool=10, noise_max=8)
    rows = torch.cat([inputs, targets[:, -1:]], dim=1)
    assert torch.equal(rows[:, 1:], targets)
    saw_noise_outside_pool = False
    for row, row_mask in zip(rows, mask):
        start = int(torch.nonzero(row_mask)[0]) + 1  # first copied position of the row
        # the copied targets repeat the token one segment earlier, and the segment is from the pool
        copied = torch.nonzero(row_mask).flatten() + 1
        length = next(n for n in range(4, 13) if torch.equal(row[copied], row[copied - n]))
        offset = start - length
        assert 0 <= offset <= 8
        assert int(row[offset:].max()) < 10
        saw_noise_outside_pool |= bool((row[:offset] >= 10).any())
    assert saw_noise_outside_pool


def test_default_rows_are_the_plain_repeats():
    # without a pool or noise: the earlier batches, draw for draw
    generator = torch.Generator().manual_seed(4)
    inputs, targets, mask = copy_probe.copy_batch(8, 40, 30, 3, 7, generator)
    again = torch.Generator().manual_seed(4)
    lengths = torch.randint(3, 8, (8,), generator=again)
    tokens = torch.randint(0, 30, (8, 41), generator=again)
    position = torch.arange(41)
    rows = tokens.gather(1, position.unsqueeze(0) % lengths.unsqueeze(1))
    assert torch.equal(inputs, rows[:, :-1]) and torch.equal(targets, rows[:, 1:])
    assert torch.equal(mask, position[1:].unsqueeze(0) >= lengths.unsqueeze(1))


def test_probe_scores_prompts_inside_and_outside_the_pool(tmp_path):
    out = tmp_path / "probe.json"
    result = run_benchmark("copy_probe.py", "--models", "rwkv8", "--qk-init", "tied", "--bits", "4",
                           "--estimator", "value", "--vocab", "32", "--span-pool", "16", "--noise-max", "4",
                           "--steps", "2", "--seq-len", "32", "--seg-max", "12", "--trials", "4",
                           "--copy-length", "8", "--extra-cues", "", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads(out.read_text())["results"][0]
    for key in ("copy_token_accuracy", "copy_token_accuracy_in_pool", "copy_token_accuracy_out_of_pool"):
        assert 0.0 <= final[key] <= 1.0
    assert "from outside it" in result.stdout
    bad = run_benchmark("copy_probe.py", "--span-pool", "32", "--vocab", "32")
    assert bad.returncode != 0 and "--span-pool" in bad.stderr


def test_unseen_ids_occur_only_in_uniform_segments():
    vocab, unseen = 40, 8
    plain = copy_probe.copy_batch(128, 64, vocab, 4, 12, torch.Generator().manual_seed(5), noise_max=6, unseen=unseen)
    assert int(torch.cat([plain[0], plain[1]], dim=1).max()) < vocab - unseen
    inputs, targets, mask = copy_probe.copy_batch(128, 64, vocab, 4, 12, torch.Generator().manual_seed(5),
                                                  noise_max=6, unseen=unseen, uniform_share=1.0)
    rows = torch.cat([inputs, targets[:, -1:]], dim=1)
    # every unseen id sits inside the repeated segment (a copied target or the segment's first copy)
    for row, row_mask in zip(rows, mask):
        start = int(torch.nonzero(row_mask)[0]) + 1
        copied = torch.nonzero(row_mask).flatten() + 1
        length = next(n for n in range(4, 13) if torch.equal(row[copied], row[copied - n]))
        assert bool((row[:start - length] < vocab - unseen).all())
    assert int(rows.max()) >= vocab - unseen  # and with a whole-vocabulary draw some do occur
    # the uniform draws come last: lengths, offsets and noise match the run without them
    assert torch.equal(mask, plain[2])


def test_probe_splits_the_copy_test_by_unseen_ids(tmp_path):
    out = tmp_path / "probe.json"
    result = run_benchmark("copy_probe.py", "--models", "rwkv8", "--qk-init", "tied", "--bits", "4",
                           "--estimator", "value", "--vocab", "32", "--unseen", "8", "--uniform-share", "0.5",
                           "--noise-max", "4", "--steps", "2", "--seq-len", "32", "--seg-max", "12", "--trials", "4",
                           "--copy-length", "8", "--extra-cues", "", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads(out.read_text())["results"][0]
    for key in ("copy_token_accuracy_seen_only", "copy_token_accuracy_unseen_only", "tf_unseen_acc", "tf_seen_acc"):
        assert 0.0 <= final[key] <= 1.0
    assert final["copy_trials_with_unseen"] + final["copy_trials_without_unseen"] == 4
    bad = run_benchmark("copy_probe.py", "--uniform-share", "1.5")
    assert bad.returncode != 0 and "--uniform-share" in bad.stderr

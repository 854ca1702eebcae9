"""benchmarks/train_step.py --tiny: every code path of the throughput benchmark on CPU."""

import json

from tests.benchmark_runner import run_benchmark


def _run(*options, timeout=300):
    return run_benchmark("train_step.py", *options, timeout=timeout)


def test_tiny_throughput_run(tmp_path):
    out = tmp_path / "tiny.json"
    result = _run("--tiny", "--steps", "2", "--warmup", "1", "--configs", "rwkv7,rwkv8", "--chunked-ce", "32",
                  "--grad-checkpointing", "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["config"] for r in rows] == ["rwkv7", "rwkv8"]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0 and "rest" in row["breakdown_ms"]
        assert row["breakdown_ms"]["wkv"] > 0  # the WKV calls are found in the profile
    assert "target >= 150.0k tokens/s" in result.stdout and "MFU =" in result.stdout


def test_help_explains_itself():
    result = _run("--help")
    assert result.returncode == 0
    for text in ("rwkv8-rosa", "--loss-curve", "--parallel", "989 TFLOP/s", "--tiny", "--time-budget", "--model",
                 "--eager-rosa"):
        assert text in result.stdout
    assert "--compile-rosa" not in result.stdout  # compiling the ROSA ops is the default since the ninth session


def test_eager_rosa_needs_compile():
    result = _run("--tiny", "--eager-rosa")
    assert result.returncode == 2 and "--eager-rosa: only with --compile" in result.stderr


def test_tiny_loss_curve(tmp_path):
    csv = tmp_path / "curve.csv"
    result = _run("--tiny", "--loss-curve", "2", "--batch", "4", "--csv", str(csv))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = csv.read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def test_tiny_run_prints_each_configuration_as_it_finishes_and_keeps_its_json(tmp_path):
    """A run stopped by a time limit must keep the configurations finished before it: every row
    is printed (and the JSON rewritten) as soon as it exists, with progress lines before it."""
    out = tmp_path / "tiny.json"
    result = _run("--tiny", "--steps", "2", "--warmup", "1", "--no-breakdown", "--configs", "rwkv7,rwkv8",
                  "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.startswith("rwkv7 ") and "tokens/s" in line)
    second_progress = next(i for i, line in enumerate(lines) if line.startswith("[rwkv8 ctx 64]"))
    assert first_row < second_progress  # rwkv7's figures before rwkv8 starts
    assert any(line.startswith("[rwkv7 ctx 64] warm-up step 1/1") for line in lines)
    assert any(line.startswith("[rwkv7 ctx 64] timed step 2/2") for line in lines)
    rows = json.loads(out.read_text())["results"]
    assert [r["timed_steps"] for r in rows] == [2, 2] and all(len(r["losses"]) == 3 for r in rows)


def test_time_budget_bounds_a_configuration(tmp_path):
    out = tmp_path / "budget.json"
    result = _run("--tiny", "--steps", "100000", "--warmup", "1", "--no-breakdown", "--configs", "rwkv7",
                  "--time-budget", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert 1 <= row["timed_steps"] < 100000 and "--time-budget 1 s reached" in result.stdout


def test_deep_rosa_configuration_trains_and_the_unbounded_one_is_flagged(tmp_path):
    """Issue 9: at 12 layers the unbounded ROSA estimator's gradient norm reaches ~1e19, the clip
    leaves nothing to train and the loss stays at its initial value; the benchmark's ROSA rows
    bound the gain (rosa_max_gain=1) and learn their repeated batches."""
    out = tmp_path / "deep.json"
    result = _run("--tiny", "--steps", "6", "--warmup", "3", "--no-breakdown", "--model", "n_layer=12",
                  "--configs", "rwkv8-rosa,rwkv8-rosa-unbounded", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    bounded, unbounded = json.loads(out.read_text())["results"]
    assert bounded["model"]["rosa_max_gain"] == 1.0 and bounded["grad_norm_max"] < 1e4
    assert bounded["loss_batch0_last"] < bounded["loss_batch0_first"] - 0.1  # it learns batch 0
    assert unbounded["grad_norm_max"] > 1e12 or unbounded["nonfinite_grad_norm_steps"] > 0
    assert "WARNING: gradient norm non-finite or huge" in result.stdout


def test_fresh_batches_and_the_profile_options(tmp_path):
    out = tmp_path / "fresh.json"
    result = _run("--tiny", "--steps", "2", "--warmup", "1", "--configs", "rwkv8-rosa1-value", "--fresh-batches",
                  "--profile-top", "3", "--rosa-grouping-work", "0", "--rosa-overlap", "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    row = json.loads(out.read_text())["results"][0]
    assert row["fresh_batches"] and row["loss_batch0_first"] is None and row["tokens_per_s"] > 0
    assert row["rosa_overlap"] and "ROSA overlapped" in result.stdout  # a plain call on the CPU
    assert len(set(row["losses"])) == 3  # three different batches
    assert "a fresh random batch every step" in result.stdout and "ROSA grouping work per element 0" in result.stdout
    assert "top 3 ops by self CPU time per step" in result.stdout
    assert "training loss on batch 0" not in result.stdout

"""benchmarks/rosa_layer_streams.py on the CPU: records a tiny model's ROSA engine calls and times
them per budget, with the same outputs for every budget; non-ROSA configurations are refused."""

import json

from tests.benchmark_runner import run_benchmark


def test_tiny_cpu_run(tmp_path):
    out = tmp_path / "streams.json"
    result = run_benchmark("rosa_layer_streams.py", "--tiny", "--device", "cpu", "--batch", "2", "--ctx", "32",
                           "--train-steps", "1", "--repeats", "1", "--budgets", "0", "32",
                           "--configs", "rwkv8-rosa1-value", "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["budget"] for row in rows] == [0, 32]
    assert all(row["same_outputs"] and row["ms_per_pass"] > 0 for row in rows)
    assert "2 engine calls" in result.stdout  # one per layer of the tiny model (value estimator: retrieval only)


def test_configurations_without_rosa_are_refused():
    result = run_benchmark("rosa_layer_streams.py", "--tiny", "--device", "cpu", "--configs", "rwkv7")
    assert result.returncode != 0 and "not ROSA configurations" in result.stderr

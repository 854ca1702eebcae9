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


def test_match_lengths_agree_with_brute_force():
    import importlib.util
    import sys
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "rosa_layer_streams.py"
    spec = importlib.util.spec_from_file_location("rosa_layer_streams", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 2, (2, 40, 3), generator=generator)
    k = torch.cat([q[:, :20], torch.randint(0, 2, (2, 20, 3), generator=generator)], dim=1)
    got = module.match_lengths(q, k)
    for b in range(2):
        for s in range(3):
            qs, ks = q[b, :, s].tolist(), k[b, :, s].tolist()
            for i in range(40):
                best = 0
                for j in range(i):  # keys before the query; the match ends at j
                    length = 0
                    while length <= j and qs[i - length] == ks[j - length]:
                        length += 1
                    best = max(best, length)
                assert got[b, s, i] == best, (b, s, i)

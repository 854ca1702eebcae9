"""benchmarks/rosa_forward.py on the CPU: its token, QKV and periodic rows and its option checks."""

import json

from tests.benchmark_runner import run_benchmark


def _run(*options, timeout=300):
    return run_benchmark("rosa_forward.py", *options, timeout=timeout)


def test_quick_cpu_rows(tmp_path):
    out = tmp_path / "rosa.json"
    kinds = ["random 1-bit", "all-zero", "QKV periodic 1-bit (period 5)"]
    result = _run("--quick", "--lengths", "128", "--qkv", "--kinds", *kinds, "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["kind"] for row in rows] == kinds
    for row in rows:
        assert row["T"] == 128 and row["engine_stream_tokens_per_s"] > 0
        assert row["python_tokens_per_s"] > 0 and row["ratio_vs_python"] > 0  # T = 128: not skipped
    assert "all-zero time per token / random 1-bit time per token" in result.stdout


def test_unknown_kind_is_refused():
    result = _run("--quick", "--lengths", "128", "--kinds", "random 2-bit")
    assert result.returncode != 0
    assert "--kinds: unknown ['random 2-bit']" in result.stderr + result.stdout

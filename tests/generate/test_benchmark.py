import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("heron_generate_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trapezoid_total_interpolates_linearly(bench):
    points = [(10, 1.0), (20, 3.0)]
    # per-token time rises linearly from 1.0 at length 10 to 3.0 at length 20
    assert bench.trapezoid_total(points, 10, 20) == pytest.approx(sum(1.0 + 0.2 * (n - 10) for n in range(10, 21)))
    assert bench.trapezoid_total([(5, 2.0)], 5, 9) == pytest.approx(10.0)


@pytest.mark.parametrize("model", ["rosa", "rwkv8-rosa"])
def test_benchmark_runs_at_a_tiny_shape(bench, tmp_path, capsys, model):
    out = tmp_path / "result.json"
    code = bench.main(["--model", model, "--layers", "1", "--width", "64", "--vocab", "50", "--prompt", "6",
                       "--tokens", "5", "--batch", "1", "3", "--check", "3", "--json", str(out), "--no-warmup"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("x |") == 2
    results = json.loads(out.read_text())["results"]
    assert [r["batch"] for r in results] == [1, 3]
    assert all(r["full_recompute_s"] > 0 and r["incremental_tokens_per_s"] > 0 for r in results)


def test_full_exact_mode(bench, tmp_path):
    code = bench.main(["--model", "rosa", "--layers", "1", "--width", "32", "--vocab", "40", "--prompt", "4",
                       "--tokens", "4", "--batch", "2", "--full-exact", "--no-warmup"])
    assert code == 0


def _args(bench, *extra):
    return bench.parse_args(["--layers", "12", "--width", "768", *extra])


def test_incremental_steps_are_bounded_by_the_push_budget(bench):
    args = _args(bench)
    streams = 12 * 768  # issue shape: one automaton per 1-bit channel and layer
    assert bench.incremental_steps(args, 1, streams) == 1024           # batch 1: every step measured
    assert bench.incremental_steps(args, 64, streams) == 2 ** 26 // (64 * streams) == 113
    assert bench.incremental_steps(args, 64, 0) == 1024                 # no automata (RWKV-8 alone)
    assert bench.incremental_steps(args, 10 ** 6, streams) == bench.MIN_INCREMENTAL_STEPS
    assert bench.incremental_steps(_args(bench, "--incremental-tokens", "7"), 64, streams) == 7
    assert bench.incremental_steps(_args(bench, "--incremental-tokens", "5000"), 64, streams) == 1024


def test_automaton_streams_count_rosa_channels(bench):
    from heron.models.rosa_lm import ROSALM, ROSALMConfig

    model = ROSALM(ROSALMConfig(n_layer=3, n_embd=16, vocab_size=20, bits=4))
    assert bench.automaton_streams(model) == 3 * 16 // 4


def test_extrapolated_incremental_decode_and_summary(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = bench.main(["--model", "rosa", "--layers", "1", "--width", "32", "--vocab", "40", "--prompt", "5",
                       "--tokens", "8", "--batch", "1", "2", "--incremental-tokens", "3", "--check", "5",
                       "--json", str(out), "--no-warmup", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("x |") == 2
    assert "batch 2: incremental" in printed and "3 of 8 decode steps measured, the rest extrapolated" in printed
    results = json.loads(out.read_text())["results"]
    for result in results:
        assert result["incremental_measured_tokens"] == 3 and result["checked_tokens"] == 3
        assert result["automaton_streams_per_row"] == 32
        assert result["automaton_pushes_measured"] == result["batch"] * 32 * 3
        # all 8 tokens are charged: the 5 not generated at the later measured steps' mean duration
        step = result["incremental_extrapolated_step_s"]
        assert 0 < step <= result["incremental_decode_measured_s"]
        assert result["incremental_decode_s"] == pytest.approx(result["incremental_decode_measured_s"] + 5 * step)
        assert len(result["incremental_step_ms_by_quarter"]) == 4
        assert result["incremental_tokens_per_s"] == pytest.approx(
            result["batch"] * 8 / (result["incremental_prefill_s"] + result["incremental_decode_s"]))
        assert [length for length, _ in result["full_recompute_points"]] == [5, 8, 12]
        assert "extrapolated" in result["incremental_kind"]


def test_batch_that_does_not_fit_in_memory_is_skipped(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "host_memory_available", lambda: 1 << 20)   # 1 MiB free
    out = tmp_path / "result.json"
    code = bench.main(["--model", "rosa", "--layers", "1", "--width", "32", "--vocab", "40", "--prompt", "4",
                       "--tokens", "4", "--batch", "1", "64", "--json", str(out), "--no-warmup", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("x |") == 1 and "| 64 | skipped: the online automata need" in printed
    data = json.loads(out.read_text())
    assert [r["batch"] for r in data["results"]] == [1]
    assert data["skipped"][0]["batch"] == 64 and "host memory" in data["skipped"][0]["reason"]

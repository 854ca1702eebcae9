"""tools/copy_pool_coverage.py on the demo corpus and the sixth session's recorded copy evaluation."""

import importlib.util

from tests.benchmark_runner import REPO

_spec = importlib.util.spec_from_file_location("copy_pool_coverage", REPO / "tools" / "copy_pool_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


def test_coverage_splits_the_recorded_trials_by_unseen_tokens(capsys):
    recorded = REPO / "docs/benchmarks/data/2026-11-28-h100-session6/copy/copy-copy-rwkv8.json"
    coverage.main(["--results", str(recorded)])
    out = capsys.readouterr().out
    # the corpus split leaves 4 of the pool's tokens out of training; 44 of the 200 trials decode one
    assert "seen fewer than   1 times in training: 4" in out
    assert "44 of 200 trials decode one" in out
    assert "0.8222 overall; 156 trials without an unseen token 0.9472" in out

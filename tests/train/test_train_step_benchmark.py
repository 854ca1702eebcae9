"""benchmarks/train_step.py --tiny: every code path of the throughput benchmark on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*options, timeout=300):
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), *options], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)


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
    for text in ("rwkv8-rosa", "--loss-curve", "--parallel", "989 TFLOP/s", "--tiny"):
        assert text in result.stdout


def test_tiny_loss_curve(tmp_path):
    csv = tmp_path / "curve.csv"
    result = _run("--tiny", "--loss-curve", "2", "--batch", "4", "--csv", str(csv))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = csv.read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]

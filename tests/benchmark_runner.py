"""Run a script of benchmarks/ in a subprocess on one CPU thread, as the benchmark smoke tests do."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *options: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *options], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)

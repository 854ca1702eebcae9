"""tools/compile_grad_check.py runs and compares (CPU, the aot_eager back end: fast)."""

import subprocess
import sys

from tests.benchmark_runner import REPO


def _run_tool(*options: str) -> list[str]:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "compile_grad_check.py"), "--device", "cpu",
                             "--backend", "aot_eager", *options],
                            cwd=REPO, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout.splitlines()


def test_compile_grad_check_tool_on_cpu():
    lines = [line for line in _run_tool("--rosa", "qkv1", "--show", "3") if "compiled call" in line]
    assert len(lines) == 2  # two calls of the compiled model
    assert all("grads " in line and "logits" in line for line in lines)


def test_compile_grad_check_layer_trace_on_cpu():
    # one ROSA-QKV block alone, printing what the value estimator's op receives in both backwards
    lines = _run_tool("--layer", "--trace", "--patch", "grad-clone")
    received = [line for line in lines if "bound_gain: grad_out" in line]
    assert len(received) == 2 and received[0] == received[1]  # eager and compiled got the same gradient
    assert any(line.startswith("graphs ") and "'unique_graphs': 1" in line for line in lines)


def test_torch_function_to_repro_runs():
    # the repro of the torch 2.11 bug: passes on the torch CI runs (2.13), exit 1 where the bug is
    result = subprocess.run([sys.executable, str(REPO / "tools" / "torch_function_to_repro.py")], cwd=REPO,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.startswith(f"torch {__import__('torch').__version__}:"), result.stderr[-2000:]
    assert result.returncode == (0 if "equal" in result.stdout.split(": ")[-1] else 1)

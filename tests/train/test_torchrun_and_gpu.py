"""The real command under ``torchrun`` (slow: starts three Python processes), a GPU smoke run,
and the curve plot."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY_REVERSE = ["--steps", "3", "--batch-size", "8", "--grad-accum", "2", "--task-option", "max_digits=4",
                "--eval-samples", "1", "--no-progress", "--no-tensorboard", "--device", "cpu"]


def _run(command, **env):
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _run([sys.executable, "-m", "heron", "train", "reverse", *TINY_REVERSE, "--out", str(tmp_path / "one")])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
          "-m", "heron", "train", "reverse", *TINY_REVERSE, "--out", str(tmp_path / "two")])
    one = load_checkpoint(tmp_path / "one" / CHECKPOINT_NAME)
    two = load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)
    assert two["world_size"] == 2 and two["step"] == one["step"] == 3
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_reverse_on_gpu_with_bf16_autocast(tmp_path):
    from heron.train.config import TrainConfig
    from heron.train.tasks import get_task
    from heron.train.trainer import train

    config = TrainConfig.from_dict({**get_task("reverse").defaults, "task": "reverse", "out": str(tmp_path),
                                    "device": "cuda", "steps": 20, "batch_size": 64, "eval_every": 10,
                                    "progress": False, "tensorboard": False, "log_every": 5,
                                    "model_config": {"rosa_estimator": "window"},
                                    "task_options": {"max_digits": 10}})
    result = train(config)
    assert result.finished and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    assert "cuda" in load_checkpoint(tmp_path / CHECKPOINT_NAME)["rng"]


def test_plot_a_run(tmp_path):
    from heron.train.plot import plot_run
    from heron.train.trainer import train
    from tests.train import synthetic

    train(synthetic.config(tmp_path, steps=6, eval_every=3))
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="train.csv does not exist"):
        plot_run(tmp_path / "nowhere")

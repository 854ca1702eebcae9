"""Two gloo processes (the environment torchrun would set) == one process, same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from heron.train.trainer import train
from tests.train import synthetic

STEPS = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str, grad_accum: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from pathlib import Path

    train(synthetic.config(Path(out), steps=STEPS, batch_size=8, grad_accum=grad_accum, eval_every=2, ckpt_every=2))


def test_two_gloo_processes_match_one(tmp_path):
    # 8 rows = 2 accumulation micro-steps x 2 ranks x 2 rows: both splits at once.
    grad_accum = 2
    single = train(synthetic.config(tmp_path / "single", steps=STEPS, batch_size=8))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), grad_accum), nprocs=2, join=True)
    one = load_checkpoint(tmp_path / "single" / CHECKPOINT_NAME)
    two = load_checkpoint(tmp_path / "ddp" / CHECKPOINT_NAME)
    assert two["step"] == STEPS and two["world_size"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-5, atol=1e-6)
    # rank 0 alone writes the logs: one row per step, with the same losses
    rows = (tmp_path / "ddp" / "train.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert losses == pytest.approx(single.losses, rel=1e-5)
    assert len((tmp_path / "ddp" / "eval.csv").read_text().splitlines()) == 1 + 3  # steps 2, 4 and the end


def test_uneven_shards_are_refused():
    from heron.train.distributed import DistributedContext

    with pytest.raises(ValueError, match="divisible by grad_accum \\* world size"):
        DistributedContext(rank=0, world_size=3).shard(8)
    assert DistributedContext(rank=1, world_size=2).shard(8) == slice(4, 8)

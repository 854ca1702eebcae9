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


# --- find_unused_parameters: only where a parameter can really be left out of the graph ---------

RWKV7_TINY = dict(n_layer=2, n_embd=32, vocab_size=16, head_size=16, rosa=None, deep_embed=False)


def test_which_models_may_leave_parameters_unused():
    from heron.models.rosa_lm import ROSALM, ROSALMConfig
    from heron.models.rwkv8 import RWKV8, RWKV8Config
    from heron.models.toys import CountingToy
    from heron.train.distributed import may_leave_parameters_unused
    from heron.train.losses import LossModel

    rwkv7 = RWKV8(RWKV8Config(**RWKV7_TINY))
    assert not may_leave_parameters_unused(rwkv7)
    assert not may_leave_parameters_unused(LossModel(rwkv7, 16, "test"))  # what the trainer wraps
    assert not may_leave_parameters_unused(RWKV8(RWKV8Config(**dict(RWKV7_TINY, deep_embed=True, rosa="qkv1"))))
    assert not may_leave_parameters_unused(ROSALM(ROSALMConfig(n_layer=1, n_embd=16, vocab_size=16)))
    assert not may_leave_parameters_unused(CountingToy())
    # the official task layout: block 0 keeps v0 v1 v2, which it never reads
    task_layout = RWKV8(RWKV8Config(**dict(RWKV7_TINY, layer0_value_lora=True, ln0=False, head_bias=True)))
    assert may_leave_parameters_unused(task_layout)
    assert may_leave_parameters_unused(LossModel(task_layout, 16, "test"))
    for name in ("v0", "v1", "v2"):  # frozen, they are no DDP parameters
        getattr(task_layout.blocks[0].att, name).requires_grad_(False)
    assert not may_leave_parameters_unused(task_layout)
    # a model heron does not know: cannot tell, keep the safe setting
    assert may_leave_parameters_unused(synthetic.TinyGRU(7))


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import json
    from pathlib import Path

    import torch.distributed as dist

    from heron.models.rwkv8 import RWKV8, RWKV8Config
    from heron.train.distributed import DistributedContext, wrap_model
    from heron.train.losses import LossModel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=rank)
    generator = torch.Generator().manual_seed(rank)
    results = {}

    def steps(name: str, values: dict, force=None) -> None:
        torch.manual_seed(0)
        model = RWKV8(RWKV8Config(**values))
        root = wrap_model(LossModel(model, 16, "test"), context, torch.device("cpu"), find_unused_parameters=force)
        try:
            for _ in range(2):
                x = torch.randint(0, 16, (2, 8), generator=generator)
                root(x, x).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[name] = {"find_unused": root.find_unused_parameters, "ok": True,
                             "with_grad": len(grads), "parameters": len(list(model.parameters())),
                             "grad_sum": float(sum(g.double().sum() for g in grads.values()))}
        except RuntimeError as error:
            results[name] = {"find_unused": root.find_unused_parameters, "ok": False, "error": str(error)[:200]}

    steps("rwkv7", RWKV7_TINY)
    task = dict(RWKV7_TINY, layer0_value_lora=True, ln0=False, head_bias=True)
    steps("task_layout", task)
    steps("task_layout_forced_off", task, force=False)  # why the option is needed there
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_finds_unused_parameters_only_when_needed(tmp_path):
    import json

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for results in ranks:
        # RWKV-7: no graph search, every parameter gets its (all-reduced) gradient
        assert results["rwkv7"]["find_unused"] is False and results["rwkv7"]["ok"]
        assert results["rwkv7"]["with_grad"] == results["rwkv7"]["parameters"]
        # the task layout needs the search (its block-0 v0 v1 v2 never get a gradient) ...
        assert results["task_layout"]["find_unused"] is True and results["task_layout"]["ok"]
        assert results["task_layout"]["with_grad"] == results["task_layout"]["parameters"] - 3
        # ... and DDP without it stops at the next step
        assert results["task_layout_forced_off"]["ok"] is False
        assert "finished reduction" in results["task_layout_forced_off"]["error"]
    # the gradients were averaged over the ranks (different data on each)
    for name in ("rwkv7", "task_layout"):
        assert ranks[0][name]["grad_sum"] == pytest.approx(ranks[1][name]["grad_sum"], rel=1e-6)

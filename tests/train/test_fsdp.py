"""FSDP2 (``parallel = "fsdp"``): two gloo processes == one process with the same global batch,
checkpoints gathered on rank 0, resume (also across DDP <-> FSDP), and the other execution
options (activation checkpointing, chunked cross-entropy) leave the trajectory unchanged."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from heron.train.config import TrainConfig
from heron.train.tasks import get_task
from heron.train.trainer import train

STEPS = 4
# RWKV-8 with DeepEmbed (the enn tables are sharded with the blocks), no ROSA (no native build).
MODEL = {"rosa": None, "deep_embed": True, "n_layer": 2, "n_embd": 32, "head_size": 16}


def _config(out, **overrides) -> TrainConfig:
    values = {**get_task("reverse").defaults, "task": "reverse", "out": str(out), "device": "cpu",
              "steps": STEPS, "batch_size": 8, "grad_accum": 2, "eval_every": 2, "eval_samples": 1,
              "log_every": 1, "progress": False, "tensorboard": False, "model_config": dict(MODEL),
              "task_options": {"max_digits": 4}, **overrides}
    return TrainConfig.from_dict(values)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, runs: list) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    # one process group for all the runs (the trainer joins it and leaves it open)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for out, overrides, resume in runs:
        result = train(_config(Path(out), **overrides), resume=resume)
        if rank == 0:
            Path(out, f"result-{result.step}.txt").write_text(f"{result.finished} {result.model_file}")
    dist.destroy_process_group()


def _spawn(runs) -> None:
    mp.spawn(_worker, args=(2, _free_port(), runs), nprocs=2, join=True)


def _assert_same_model(a, b, rtol=1e-4, atol=1e-6):
    assert set(a) == set(b)
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    single = train(_config(tmp_path / "single"))
    fsdp, split = tmp_path / "fsdp", tmp_path / "split"
    _spawn([
        (str(fsdp), {"parallel": "fsdp", "clip": 1.0}, None),
        # a time-limited FSDP slice (stops after step 1, exports the model), resumed under FSDP
        (str(split), {"parallel": "fsdp", "time_limit": 1e-9}, None),
        (str(split), {"parallel": "fsdp"}, str(split / CHECKPOINT_NAME)),
    ])
    one = load_checkpoint(tmp_path / "single" / CHECKPOINT_NAME)
    two = load_checkpoint(fsdp / CHECKPOINT_NAME)
    assert two["world_size"] == 2 and two["step"] == STEPS and two["config"]["parallel"] == "fsdp"
    # full state dicts, keyed like the unwrapped model
    assert any(".ffn.enn.weight" in key for key in two["model"])
    _assert_same_model(one["model"], two["model"])
    # the optimiser state is gathered too (by parameter name) and matches the single run's
    names = [name for name, _ in single_model_names(one)]
    state = two["optimizer"]["state"]
    # (block 0's v0 v1 v2 are unused by the model: no gradient, no state)
    assert set(state) == {names[index] for index in one["optimizer"]["state"]}
    for index, value in one["optimizer"]["state"].items():
        torch.testing.assert_close(state[names[index]]["exp_avg"], value["exp_avg"], rtol=1e-3, atol=1e-7)
    losses = [float(row.split(",")[1]) for row in (fsdp / "train.csv").read_text().splitlines()[1:]]
    assert losses == pytest.approx(single.losses, rel=1e-5)
    assert (fsdp / "model.safetensors").is_file()
    # the evaluation ran on the gathered model: same metrics as the single run
    assert (fsdp / "eval.csv").read_text() .splitlines()[-1].split(",")[1:] == \
        (tmp_path / "single" / "eval.csv").read_text().splitlines()[-1].split(",")[1:]
    # time-limited slice + resume == uninterrupted
    assert (split / "result-1.txt").read_text().startswith("False")
    assert (split / "result-4.txt").read_text().startswith("True")
    _assert_same_model(one["model"], load_checkpoint(split / CHECKPOINT_NAME)["model"])


def single_model_names(payload):
    """(name, shape) of the parameters in the optimiser's order (the model's registration order)."""
    from heron.models.rwkv8 import RWKV8, RWKV8Config

    model = RWKV8(RWKV8Config(**{k: v for k, v in payload["model_config"].items() if k != "class"}))
    return [(name, p.shape) for name, p in model.named_parameters()]


def test_resume_an_fsdp_checkpoint_with_ddp_and_back(tmp_path):
    """Checkpoints of either mode resume in the other (full state dicts; the optimiser state
    is converted between parameter indices and names)."""
    single = tmp_path / "single"
    train(_config(single))
    runs = tmp_path / "mixed"
    _spawn([
        (str(runs), {"parallel": "fsdp", "time_limit": 1e-9}, None),
        (str(runs), {"parallel": "ddp", "time_limit": 1e-9}, str(runs / CHECKPOINT_NAME)),
        (str(runs), {"parallel": "fsdp"}, str(runs / CHECKPOINT_NAME)),
    ])
    payload = load_checkpoint(runs / CHECKPOINT_NAME)
    assert payload["step"] == STEPS
    _assert_same_model(load_checkpoint(single / CHECKPOINT_NAME)["model"], payload["model"])


def test_grad_checkpointing_and_chunked_ce_keep_the_trajectory(tmp_path):
    plain = train(_config(tmp_path / "plain"))
    options = train(_config(tmp_path / "options", grad_checkpointing=True, ce_chunk=5))
    assert options.losses == pytest.approx(plain.losses, rel=1e-6)
    _assert_same_model(load_checkpoint(tmp_path / "plain" / CHECKPOINT_NAME)["model"],
                       load_checkpoint(tmp_path / "options" / CHECKPOINT_NAME)["model"], rtol=1e-5, atol=1e-7)


def test_execution_option_errors(tmp_path):
    with pytest.raises(ValueError, match="parallel must be one of"):
        _config(tmp_path, parallel="zero3")
    with pytest.raises(ValueError, match="grad_checkpointing must be true or false"):
        _config(tmp_path, grad_checkpointing="yes")
    with pytest.raises(ValueError, match="ce_chunk must be a non-negative integer"):
        _config(tmp_path, ce_chunk=-1)
    from tests.train import synthetic

    with pytest.raises(ValueError, match="grad_checkpointing needs a model with a .blocks list"):
        train(synthetic.config(tmp_path / "gru", grad_checkpointing=True))
    with pytest.raises(ValueError, match="ce_chunk needs a model with features"):
        train(synthetic.config(tmp_path / "gru2", ce_chunk=16))


@pytest.mark.slow
def test_compile_keeps_the_trajectory(tmp_path):
    plain = train(_config(tmp_path / "plain", steps=2, eval_every=0))
    compiled = train(_config(tmp_path / "compiled", steps=2, eval_every=0, compile=True))
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-4)

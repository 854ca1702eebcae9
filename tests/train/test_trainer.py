import contextlib
import dataclasses
import os
import signal

import pytest
import torch

from heron.train import tasks
from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from heron.train.trainer import train
from tests.train import synthetic


def _parameters(path):
    return load_checkpoint(path)["model"]


def test_a_few_steps_learn_and_write_everything(tmp_path):
    result = train(synthetic.config(tmp_path, steps=40, eval_every=20, ckpt_every=10, lr=3e-2))
    assert result.finished and result.step == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) < sum(result.losses[:5])  # the loss falls
    assert set(result.metrics) == {"eval_loss", "eval_bits_per_token", "next_token_accuracy"}
    names = {p.name for p in tmp_path.iterdir()}
    assert {"checkpoint.pt", "checkpoint.pt.prev", "train.csv", "eval.csv", "model.pt"} <= names
    rows = (tmp_path / "train.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr") and len(rows) == 41
    assert [line.split(",")[0] for line in (tmp_path / "eval.csv").read_text().splitlines()[1:]] == ["20", "40"]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 40


class _InterruptAfter:
    """Wraps a batch source and delivers a real SIGINT to this process at its n-th batch."""

    def __init__(self, source, calls: int) -> None:
        self.source, self.calls = source, calls
        self.vocab_size, self.seq_len = source.vocab_size, source.seq_len

    def batch(self, batch_size, generator):
        self.calls -= 1
        if self.calls == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return self.source.batch(batch_size, generator)


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    steps = 12
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run as a background job
    reference = train(synthetic.config(tmp_path / "straight", steps=steps, grad_accum=2))

    def interrupted_build(config):
        setup = synthetic.TASK.build(config)
        setup.sources.stages[0] = (0, _InterruptAfter(setup.sources.stages[0][1], 5))
        return setup

    # Same task name (it is part of the configuration a resume checks), interrupting source.
    monkeypatch.setitem(tasks._REGISTRY, synthetic.NAME, dataclasses.replace(synthetic.TASK, build=interrupted_build))
    first = train(synthetic.config(tmp_path / "split", steps=steps, grad_accum=2))
    monkeypatch.undo()
    assert not first.finished and first.stopped_by == "signal" and first.step == 5
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
    second = train(synthetic.config(tmp_path / "split", steps=steps, grad_accum=2),
                   resume=tmp_path / "split" / CHECKPOINT_NAME)
    assert second.finished and second.step == steps
    assert first.losses + second.losses == reference.losses  # bit-for-bit
    straight = _parameters(tmp_path / "straight" / CHECKPOINT_NAME)
    resumed = _parameters(tmp_path / "split" / CHECKPOINT_NAME)
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    # the CSV describes one continuous trajectory
    steps_logged = [int(line.split(",")[0]) for line in (tmp_path / "split" / "train.csv").read_text().splitlines()[1:]]
    assert steps_logged == list(range(1, steps + 1))


def test_time_limit_stops_and_resume_finishes(tmp_path):
    first = train(synthetic.config(tmp_path, steps=6, time_limit=1e-9))
    assert not first.finished and first.stopped_by == "time limit" and first.step == 1
    # a time-limited slice leaves a loadable model beside the checkpoint
    assert first.model_file == tmp_path / "model.pt" and first.model_file.is_file()
    second = train(synthetic.config(tmp_path, steps=6), resume=tmp_path / CHECKPOINT_NAME)
    assert second.finished and second.step == 6
    reference = train(synthetic.config(tmp_path / "ref", steps=6))
    assert first.losses + second.losses == reference.losses


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = train(synthetic.config(tmp_path / "one", steps=4, batch_size=8, grad_accum=1))
    four = train(synthetic.config(tmp_path / "four", steps=4, batch_size=8, grad_accum=4))
    assert one.losses == pytest.approx(four.losses, rel=1e-5)
    a, b = _parameters(tmp_path / "one" / CHECKPOINT_NAME), _parameters(tmp_path / "four" / CHECKPOINT_NAME)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_with_changed_config_names_the_fields(tmp_path):
    train(synthetic.config(tmp_path, steps=3))
    with pytest.raises(ValueError, match=r"changed: lr: 0.01 -> 0.02; steps: 3 -> 5"):
        train(synthetic.config(tmp_path, steps=5, lr=2e-2), resume=tmp_path / CHECKPOINT_NAME)
    # operational fields may change
    result = train(synthetic.config(tmp_path, steps=3, log_every=2, out=str(tmp_path)), resume=tmp_path / CHECKPOINT_NAME)
    assert result.finished


def test_checkpoint_from_another_model_config(tmp_path):
    train(synthetic.config(tmp_path / "a", steps=2, model_config={"width": 16}))
    with pytest.raises(ValueError, match=r"another model configuration: .*width: 16 -> 24"):
        train(synthetic.config(tmp_path / "a", steps=2, model_config={"width": 24}),
              resume=tmp_path / "a" / CHECKPOINT_NAME)


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    train(synthetic.config(tmp_path, steps=2))
    with pytest.raises(ValueError, match="already holds a training checkpoint"):
        train(synthetic.config(tmp_path, steps=2))


def test_corrupt_checkpoint_on_resume(tmp_path):
    train(synthetic.config(tmp_path, steps=2, ckpt_every=1))
    path = tmp_path / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[-300] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt .*previous checkpoint is intact"):
        train(synthetic.config(tmp_path, steps=2), resume=path)
    assert load_checkpoint(tmp_path / "checkpoint.pt.prev")["step"] == 1


def test_out_of_range_tokens_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"input token 99 is out of range \[0, 7\)"):
        train(synthetic.config(tmp_path, task_options={"bad_token": 99}))
    with pytest.raises(ValueError, match=r"input token -3 is out of range"):
        train(synthetic.config(tmp_path / "b", task_options={"bad_token": -3}))


def test_unknown_task():
    from heron.train.config import TrainConfig

    with pytest.raises(ValueError, match="unknown task 'nope'; known tasks: .*reverse"):
        train(TrainConfig(task="nope"))


def test_lm_recipe_groups():
    from heron.train.config import TrainConfig
    from heron.train.trainer import build_optimizer

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.att = torch.nn.Module()
            self.att.w0 = torch.nn.Parameter(torch.zeros(1, 1, 4))
            self.att.key = torch.nn.Linear(4, 4, bias=False)
            self.ln = torch.nn.LayerNorm(4)

    model = Block()
    optimizer = build_optimizer(model, TrainConfig(task="x", recipe="lm", weight_decay=0.1))
    groups = {tuple(id(p) for p in g["params"]): g for g in optimizer.param_groups}
    assert groups[(id(model.att.key.weight),)]["weight_decay"] == 0.1
    assert groups[(id(model.att.w0),)]["lr_scale"] == 2.0 and groups[(id(model.att.w0),)]["weight_decay"] == 0.0
    assert groups[(id(model.ln.weight), id(model.ln.bias))]["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["eps"] == 1e-18
    official = build_optimizer(model, TrainConfig(task="x"))
    assert len(official.param_groups) == 1 and official.defaults["weight_decay"] == 0.01


def test_progress_without_tqdm_prints_the_logged_rows(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError, as on a bare image
    result = train(synthetic.config(tmp_path, steps=4, log_every=2, progress=True))
    assert result.finished
    err = capsys.readouterr().err
    assert "step 2/4: loss" in err and "step 4/4: loss" in err


def test_fp64_and_bf16_dtypes(tmp_path):
    result = train(synthetic.config(tmp_path / "fp64", steps=2, dtype="fp64"))
    state = load_checkpoint(result.checkpoint)["model"]
    assert all(value.dtype == torch.float64 for value in state.values())
    bf16 = train(synthetic.config(tmp_path / "bf16", steps=2, dtype="bf16"))  # CPU autocast
    fp32 = train(synthetic.config(tmp_path / "fp32", steps=2))
    assert bf16.losses != fp32.losses and bf16.losses == pytest.approx(fp32.losses, rel=0.05)
    assert all(value.dtype == torch.float32 for value in load_checkpoint(bf16.checkpoint)["model"].values())


def test_model_state_mismatch_names_keys_and_shapes():
    from heron.train.trainer import _load_model_state

    model = synthetic.TinyGRU(7, width=16)
    other = synthetic.TinyGRU(7, width=24).state_dict()
    other["extra.weight"] = torch.zeros(1)
    del other["head.bias"]
    with pytest.raises(ValueError, match=r"another model configuration: missing keys \['head.bias'\]; "
                                         r"unexpected keys \['extra.weight'\]; shape mismatches emb.weight: \(7, 24\) vs \(7, 16\)"):
        _load_model_state(model, other, "checkpoint x")


def _eval_rows(path):
    header, *rows = (path / "eval.csv").read_text().splitlines()
    names = header.split(",")
    return [dict(zip(names, map(float, row.split(",")))) for row in rows]


def test_keep_best_writes_the_best_evaluation_and_survives_resume(tmp_path):
    import json

    from heron.train.trainer import lower_is_better

    assert lower_is_better("eval_loss") and lower_is_better("eval_bits_per_token")
    assert not lower_is_better("next_token_accuracy")
    # On this schedule the accuracy peaks before the last evaluation (a maximised metric).
    first = train(synthetic.config(tmp_path, steps=30, eval_every=5, lr=3e-2, keep_best="next_token_accuracy"))
    assert first.finished
    rows = _eval_rows(tmp_path)
    best_row = max(rows, key=lambda row: row["next_token_accuracy"])  # the first of equals
    kept = json.loads((tmp_path / "best" / "best.json").read_text())
    assert kept == {"metric": "next_token_accuracy", "value": pytest.approx(best_row["next_token_accuracy"]),
                    "step": int(best_row["step"])}
    assert (tmp_path / "best" / "model.pt").is_file()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["best"]["step"] == kept["step"]
    # Resuming the finished run evaluates its last step again: the saved best, not a fresh
    # start, is the bar that evaluation must beat, so OUT/best keeps the earlier step.
    assert kept["step"] != 30, "the schedule should make an earlier evaluation the best"
    again = train(synthetic.config(tmp_path, steps=30, eval_every=5, lr=3e-2, keep_best="next_token_accuracy"),
                  resume=tmp_path / CHECKPOINT_NAME)
    assert again.finished
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == kept["step"]


def test_keep_best_names_the_metrics_when_unknown(tmp_path):
    with pytest.raises(ValueError, match=r"keep_best: .* no metric 'accuracy'; its metrics are \['eval_bits_per_token', 'eval_loss', 'next_token_accuracy'\]"):
        train(synthetic.config(tmp_path, steps=2, keep_best="accuracy"))
    assert not (tmp_path / "train.csv").exists()  # refused before the first step, not after the run


def test_every_task_declares_the_metrics_it_reports(tmp_path):
    """--keep-best is checked against TaskSetup.metrics before training: they must be what
    evaluate() returns."""
    from heron.train.config import TrainConfig

    for name, options in [("counting", {}), ("reverse", {"max_digits": 2}), ("arith", {"max_digits": 2})]:
        config = TrainConfig(task=name, steps=1, batch_size=4, out=str(tmp_path / name), eval_samples=1,
                             task_options=options)
        setup = tasks.get_task(name).build(config)
        with torch.no_grad():
            metrics = setup.evaluate(setup.model.eval(), torch.device("cpu"), contextlib.nullcontext)
        assert set(metrics) == set(setup.metrics), name


class _InterruptInFinalEvaluation:
    def __init__(self, evaluate, steps):
        self.evaluate, self.steps, self.calls = evaluate, steps, 0

    def __call__(self, model, device, autocast):
        self.calls += 1
        os.kill(os.getpid(), signal.SIGINT)  # during the final evaluation (eval_every = 0)
        return self.evaluate(model, device, autocast)


def test_ctrl_c_during_the_final_evaluation_still_writes_checkpoint_and_model(tmp_path, monkeypatch):
    def build(config):
        setup = synthetic.TASK.build(config)
        return dataclasses.replace(setup, evaluate=_InterruptInFinalEvaluation(setup.evaluate, config.steps))

    monkeypatch.setitem(tasks._REGISTRY, synthetic.NAME, dataclasses.replace(synthetic.TASK, build=build))
    result = train(synthetic.config(tmp_path, steps=3))
    assert result.finished and result.metrics
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 3 and (tmp_path / "model.pt").is_file()


def test_log_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="log_every"):
        synthetic.config(tmp_path, steps=2, log_every=0)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    train(synthetic.config(tmp_path, steps=4, eval_every=2, ckpt_every=1))
    evaluations = (tmp_path / "eval.csv").read_text()
    previous = (tmp_path / "checkpoint.pt.prev").read_bytes()
    again = train(synthetic.config(tmp_path, steps=4, eval_every=2, ckpt_every=1), resume=tmp_path / CHECKPOINT_NAME)
    assert again.finished and again.step == 4 and again.losses == []
    assert (tmp_path / "eval.csv").read_text() == evaluations  # no second row for step 4
    assert (tmp_path / "checkpoint.pt.prev").read_bytes() == previous  # the real previous checkpoint kept


def test_a_fresh_run_refuses_a_folder_with_only_a_previous_checkpoint(tmp_path):
    train(synthetic.config(tmp_path, steps=2, ckpt_every=1))
    (tmp_path / CHECKPOINT_NAME).unlink()  # the crash window between the rotation and the rename
    with pytest.raises(ValueError, match="already holds a training checkpoint"):
        train(synthetic.config(tmp_path, steps=2))


def test_a_fresh_run_replaces_logs_left_without_a_checkpoint(tmp_path):
    # a run killed before its first checkpoint leaves CSVs, maybe with other metric columns
    (tmp_path / "eval.csv").write_text("step,copy_exact_share,eval_loss\n2,0,1\n")
    (tmp_path / "train.csv").write_text("step,loss\n1,9\n2,9\n")
    result = train(synthetic.config(tmp_path, steps=2))
    assert result.finished
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,eval_bits_per_token,eval_loss,next_token_accuracy" and len(rows) == 2
    assert [line.split(",")[0] for line in (tmp_path / "train.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_a_failing_final_evaluation_keeps_the_checkpoint_and_model(tmp_path, monkeypatch):
    def build(config):
        setup = synthetic.TASK.build(config)

        def broken(model, device, autocast):
            raise ValueError("evaluation scored no tokens")

        return dataclasses.replace(setup, evaluate=broken)

    monkeypatch.setitem(tasks._REGISTRY, synthetic.NAME, dataclasses.replace(synthetic.TASK, build=build))
    with pytest.raises(ValueError, match="scored no tokens"):
        train(synthetic.config(tmp_path, steps=3))
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 3 and (tmp_path / "model.pt").is_file()


def test_a_batch_that_processes_cannot_share_is_refused_before_anything_is_written(tmp_path):
    from heron.train.distributed import DistributedContext
    from heron.train.trainer import _train

    config = synthetic.config(tmp_path / "run", steps=2, batch_size=3)
    two_processes = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="cannot be split evenly over 2 processes"):
        _train(config, synthetic.TASK, torch.device("cpu"), two_processes, None)
    assert not (tmp_path / "run").exists()

"""The training loop: one readable function, in the spirit of nanoGPT's ``train.py``.

``train(config, resume=...)`` builds the task (data, model, metric), the optimiser and the
schedule, then runs ``config.steps`` optimiser steps. Each step draws the whole global batch
from one seeded ``torch.Generator`` and splits it into gradient-accumulation micro-batches and
per-rank shards; the loss is the sum of token losses divided by the number of scored tokens in
the *global* batch, so the gradient is the same whatever the accumulation and the process
count (up to the order of float additions).

A checkpoint holds everything the trajectory depends on — model, optimiser, step, the torch
CPU/CUDA RNG states and the data generator — so ``--resume`` continues bit-for-bit. Ctrl-C
(SIGINT) or SIGTERM, and the ``time_limit``, stop the run at the next step boundary and write a
checkpoint and the model file; a second Ctrl-C aborts at once.

Execution options (``parallel``, ``grad_checkpointing``, ``compile``, ``rosa_overlap``, ``ce_chunk``) change how a
step runs, not what it computes: see :func:`heron.train.distributed.parallelize` and
:mod:`heron.train.losses`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from heron.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, previous_path, save_checkpoint
from heron.train.config import TrainConfig, trajectory_differences
from heron.train.distributed import DistributedContext, parallelize, resolve_device, setup_distributed
from heron.train.grad_health import GradNormMonitor
from heron.train.logging import RunLogger
from heron.train.losses import LossModel
from heron.train.schedule import apply_learning_rate, learning_rate
from heron.train.tasks import TaskSetup, get_task

CHECKPOINT_FORMAT = "heron-train"


@dataclass
class TrainResult:
    step: int  # optimiser steps completed
    finished: bool  # reached config.steps (False: stopped by Ctrl-C/SIGTERM or time limit)
    loss: float  # mean training loss of the last logged interval
    metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    checkpoint: Path | None = None
    model_file: Path | None = None
    losses: list[float] = field(default_factory=list)  # per-step training loss of this invocation
    stopped_by: str | None = None  # "signal" or "time limit" when not finished


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the next step boundary,
    a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast on GPU by default (``dtype = auto``), none on CPU or for fp32/fp64."""
    use_bf16 = config.dtype == "bf16" or (config.dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _check_tokens(inputs: torch.Tensor, targets: torch.Tensor, vocab_size: int, task: str) -> None:
    """Out-of-range ids would index past the embedding (a crash on CPU, garbage or a device
    assert on GPU): reject them with the offending value before the model runs."""
    if inputs.dtype != torch.long or targets.dtype != torch.long:
        raise TypeError(f"task {task!r}: batches must be int64, got inputs {inputs.dtype}, targets {targets.dtype}")
    if inputs.shape != targets.shape or inputs.dim() != 2:
        raise ValueError(
            f"task {task!r}: inputs and targets must both be [B, T], got {tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    low, high = int(inputs.min()), int(inputs.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"task {task!r}: input token {bad} is out of range [0, {vocab_size})")
    scored = targets[targets != -100]
    if scored.numel() and (int(scored.min()) < 0 or int(scored.max()) >= vocab_size):
        bad = int(scored.min()) if int(scored.min()) < 0 else int(scored.max())
        raise ValueError(f"task {task!r}: target token {bad} is out of range [0, {vocab_size}) (or -100 = unscored)")


def _rng_state(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        details = []
        if missing:
            details.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            details.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if reshaped:
            details.append(
                "shape mismatches " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped[:8])
            )
        raise ValueError(f"{source} was saved from another model configuration: " + "; ".join(details))
    model.load_state_dict(state)


def _read_resume_checkpoint(path: Path, config: TrainConfig, setup: TaskSetup) -> dict[str, Any]:
    payload = load_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint (format {payload.get('format')!r})")
    if payload["model_config"] != setup.model_identity:
        changes = trajectory_differences({"model": payload["model_config"]}, {"model": setup.model_identity})
        raise ValueError(f"checkpoint {path} is from another model configuration: " + "; ".join(changes))
    saved_data = payload.get("data")
    if saved_data is not None and setup.data_identity is not None and saved_data != setup.data_identity:
        changed = [f"{part}: {saved_data.get(part)} -> {setup.data_identity.get(part)}"
                   for part in sorted(set(saved_data) | set(setup.data_identity))
                   if saved_data.get(part) != setup.data_identity.get(part)]
        raise ValueError(f"--resume: the training data changed since checkpoint {path} ({'; '.join(changed)}); "
                         "resume with the original files, or start a new run in a fresh --out directory")
    changes = trajectory_differences(payload["config"], config.to_dict())
    if changes:
        raise ValueError(
            f"--resume with a changed configuration (checkpoint {path}); changed: " + "; ".join(changes)
            + ". Resume with the original options, or start a new run in a fresh --out directory"
        )
    return payload


def train(config: TrainConfig, *, resume: str | Path | None = None) -> TrainResult:
    """Run (or continue, with ``resume`` = a checkpoint path) the training that ``config`` describes."""
    task = get_task(config.task)
    device = resolve_device(config.device)
    context = setup_distributed(device)
    try:
        return _train(config, task, device, context, resume)
    finally:
        context.close()


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW for either official recipe (spec §5): ``official`` (the small task scripts) is plain
    ``torch.optim.AdamW`` with weight decay on every parameter, betas (0.9, 0.999), eps 1e-8;
    ``lm`` (RWKV-7 ``train_temp``) uses the model package's parameter groups (decay on matrices
    only, ``att.w0`` at twice the rate via ``lr_scale``), betas (0.9, 0.99), eps 1e-18."""
    if config.recipe == "official":
        parameters = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    from heron.models.init import make_lm_optimizer

    return make_lm_optimizer(model, config.lr, config.weight_decay)


_LOWER_IS_BETTER = ("loss", "bits", "error", "perplexity")


def lower_is_better(metric: str) -> bool:
    """Direction of ``--keep-best``: loss-like metric names are minimised, the others maximised."""
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def _train(config, task, device: torch.device, context: DistributedContext, resume) -> TrainResult:
    out = Path(config.out)
    # before the model is built or a file written (the first step would find it otherwise)
    context.shard(config.batch_size // config.grad_accum)
    if resume is None and ((out / CHECKPOINT_NAME).exists() or previous_path(out / CHECKPOINT_NAME).exists()):
        raise ValueError(
            f"{out} already holds a training checkpoint: continue it with --resume, or choose a fresh --out"
        )
    # The model's initial values come from the global torch RNG, the batches from their own
    # generator, so changing the model does not change the data and vice versa.
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    setup = task.build(config)
    if config.keep_best and setup.export is None:
        raise ValueError(f"keep_best: task {config.task!r} writes no model file, so there is no best model to keep")
    if config.keep_best and setup.metrics and config.keep_best not in setup.metrics:
        raise ValueError(f"keep_best: the {config.task} task reports no metric {config.keep_best!r}; "
                         f"its metrics are {sorted(setup.metrics)}")
    # fp64 trains the whole model in double precision (reference runs, gradient checks); the
    # other dtypes keep fp32 parameters and differ only in autocast.
    dtype = torch.float64 if config.dtype == "fp64" else None
    fsdp = config.parallel == "fsdp" and context.enabled
    # FSDP: rank 0 keeps an unsharded copy (moved to the meta device: no memory) to gather the
    # weights into for evaluation and export.
    template = copy.deepcopy(setup.model).to(dtype=dtype) if fsdp and context.is_main else None
    model = setup.model.to(device, dtype=dtype)
    start_step, elapsed_before, tokens_seen = 0, 0.0, 0
    best: dict[str, Any] | None = None  # {"metric", "value", "step"} of the model in OUT/best
    payload = None
    if resume is not None:
        payload = _read_resume_checkpoint(Path(resume), config, setup)
        _load_model_state(model, payload["model"], f"checkpoint {resume}")
    parallel = parallelize(model, LossModel(model, setup.vocab_size, config.task, config.ce_chunk), context,
                           device, parallel=config.parallel, grad_checkpointing=config.grad_checkpointing,
                           compile=config.compile, rosa_overlap=config.rosa_overlap, template=template)
    # Built after sharding: FSDP replaces the parameters by sharded ones.
    optimizer = build_optimizer(model, config)
    if payload is not None:
        parallel.load_optimizer_state(optimizer, payload["optimizer"])
        _restore_rng(payload["rng"], device, generator)
        start_step = int(payload["step"])
        elapsed_before = float(payload.get("elapsed_s", 0.0))
        tokens_seen = int(payload.get("tokens", 0))
        saved_best = payload.get("best")
        if saved_best is not None and saved_best.get("metric") == config.keep_best:
            best = dict(saved_best)
        del payload
    trained_model = parallel.root
    autocast = _autocast(config, device)
    logger = RunLogger(out, enabled=context.is_main, total_steps=config.steps, start_step=start_step,
                       progress=config.progress, tensorboard=config.tensorboard)
    if context.is_main:
        parameters = sum(p.numel() for p in model.parameters())
        logger.message(
            f"heron train {config.task}: {parameters:,} parameters, {config.steps} steps of "
            f"{config.batch_size} samples on {device} x {context.world_size}"
            + (f" ({parallel.mode})" if context.enabled else "")
            + (f", resuming at step {start_step}" if start_step else "")
        )
        if config.warmup >= config.steps:
            logger.message(f"warning: warmup ({config.warmup} steps) >= steps ({config.steps}): the learning rate "
                           f"only rises, to {config.lr * config.steps / config.warmup:.3g} at the last step "
                           f"(lr {config.lr:g}), and never decays to lr_final (set --warmup below --steps)")

    def checkpoint(step: int, elapsed: float) -> Path | None:
        """Write the checkpoint (call on every rank: FSDP gathers the state; rank 0 writes)."""
        model_state = parallel.model_state()
        optimizer_state = parallel.optimizer_state(optimizer)
        if not context.is_main:
            return None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model_config": setup.model_identity,
            "data": setup.data_identity,
            "model": model_state,
            "optimizer": optimizer_state,
            "step": step,
            "rng": _rng_state(device, generator),
            "elapsed_s": elapsed,
            "tokens": tokens_seen,
            "world_size": context.world_size,
            "best": best,
        }
        return save_checkpoint(payload, out / CHECKPOINT_NAME)

    def keep_if_best(plain: torch.nn.Module, step: int, metrics: dict[str, float]) -> None:
        """Rank 0: write the model to OUT/best when ``config.keep_best`` improved."""
        nonlocal best
        name = config.keep_best
        if name not in metrics:
            raise ValueError(f"keep_best: the {config.task} task reports no metric {name!r}; "
                             f"its metrics are {sorted(metrics)}")
        value = float(metrics[name])
        if best is not None and math.isfinite(best["value"]):
            improved = value < best["value"] if lower_is_better(name) else value > best["value"]
            if not improved:
                return
        elif not math.isfinite(value):
            return
        best_dir = out / "best"
        best_dir.mkdir(parents=True, exist_ok=True)
        setup.export(plain, best_dir)
        best = {"metric": name, "value": value, "step": step}
        (best_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
        logger.message(f"step {step}: best {name} so far ({value:.6g}); model written to {best_dir}")

    def evaluate(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        plain = parallel.plain_model(device)  # FSDP: the gathered weights (a collective)
        if context.is_main:
            plain.eval()
            # Evaluation draws from its own fixed seeds; fork the global RNG so that a model
            # using it in its forward pass cannot shift the training trajectory.
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                metrics = setup.evaluate(plain, device, autocast)
            plain.train()
            logger.log_eval(step, metrics)
            if config.keep_best:
                keep_if_best(plain, step, metrics)
        del plain
        parallel.release()
        context.barrier()
        return metrics

    def export() -> Path | None:
        """Write the task's model file (call on every rank; rank 0 writes)."""
        if setup.export is None:
            return None
        plain = parallel.plain_model(torch.device("cpu") if parallel.mode == "fsdp" else device)
        path = setup.export(plain, out) if context.is_main else None
        del plain
        parallel.release()
        return path

    micro_rows = config.batch_size // config.grad_accum
    parameters = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.clip if config.clip > 0 else math.inf
    losses: list[float] = []
    # Per-step losses stay on the device until they are logged: reading one back every step
    # would stall the GPU queue of a small, launch-bound model.
    pending: list[torch.Tensor] = []
    interval_tokens = 0
    last_logged_loss = float("nan")
    metrics: dict[str, float] = {}
    saved: Path | None = None
    started = time.perf_counter()
    interval_started = started
    step = start_step
    lr = config.lr
    grad_norm = torch.zeros(())
    # non-finite or huge clip norms stop training silently (heron.train.grad_health): say so
    norm_monitor = GradNormMonitor(max_norm)

    def log_interval() -> float:
        """Log the steps since the last row (a collective under DDP: call on every rank)."""
        nonlocal pending, interval_tokens, interval_started, last_logged_loss
        if not pending:
            return last_logged_loss
        values = context.sum(torch.stack(pending)).tolist()
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            raise FloatingPointError(f"training loss became {bad} by step {step}; lower --lr or set --clip")
        losses.extend(values)
        now = time.perf_counter()
        last_logged_loss = sum(values) / len(values)
        logger.log_train(step, {
            "loss": last_logged_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_seen,
            "tokens_per_s": interval_tokens / max(now - interval_started, 1e-9),
            "elapsed_s": elapsed_before + now - started,
        })
        pending, interval_tokens, interval_started = [], 0, now
        warning = norm_monitor.report()  # the norm is global (after DDP's reduction): same on every rank
        if warning is not None:
            logger.message(f"warning at step {step}: {warning}")
        return last_logged_loss

    model.train()
    with _StopRequest() as stop:
        while step < config.steps:
            lr = learning_rate(step, steps=config.steps, lr=config.lr, lr_final=config.lr_final, warmup=config.warmup)
            apply_learning_rate(optimizer, lr)
            source = setup.sources.at(step)
            inputs, targets = source.batch(config.batch_size, generator)
            _check_tokens(inputs, targets, setup.vocab_size, config.task)
            scored_tokens = max(int((targets != -100).sum()), 1)
            step_loss = torch.zeros((), device=device, dtype=torch.float64)
            for micro in range(config.grad_accum):
                rows = slice(micro * micro_rows, (micro + 1) * micro_rows)
                shard = context.shard(micro_rows)
                x = inputs[rows][shard].to(device, non_blocking=True)
                y = targets[rows][shard].to(device, non_blocking=True)
                last_micro = micro == config.grad_accum - 1
                sync = contextlib.nullcontext() if last_micro else parallel.no_sync()
                with sync:
                    with autocast():
                        loss_sum = trained_model(x, y)  # the summed token losses of this shard
                    # DDP and FSDP average gradients over ranks; scaling by the world size turns that
                    # average into the sum over the global batch.
                    (loss_sum * (context.world_size / scored_tokens)).backward()
                step_loss += loss_sum.detach().double()
            grad_norm = parallel.clip_grad_norm(parameters, max_norm)
            norm_monitor.update(grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += inputs.numel()
            pending.append(step_loss / scored_tokens)  # this rank's share; log_interval sums ranks
            interval_tokens += inputs.numel()
            logger.advance()
            if step % config.log_every == 0 or step == config.steps:
                log_interval()
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                metrics = evaluate(step)
            elapsed = elapsed_before + time.perf_counter() - started
            out_of_time = config.time_limit > 0 and time.perf_counter() - started >= 60 * config.time_limit
            if context.any_flag(stop.requested or out_of_time, device) and step < config.steps:
                recent = log_interval()
                saved = checkpoint(step, elapsed)
                # a stopped run leaves a loadable model beside the checkpoint
                model_file = export()
                context.barrier()  # every rank returns once the files are written
                reason = "signal" if stop.requested else "time limit"
                logger.close(f"stopped at step {step} ({reason}); checkpoint {saved}: continue with --resume"
                             + (f"; model saved to {model_file}" if model_file else ""))
                return TrainResult(step, False, recent, metrics, saved, model_file, losses, reason)
            if config.ckpt_every and step % config.ckpt_every == 0 and step < config.steps:
                saved = checkpoint(step, elapsed)
        # Still under the signal handler (a Ctrl-C waits for the end; a second one aborts). The
        # checkpoint and the model file come before the final evaluation, so an evaluation that
        # fails (a bad evaluation option, a metric that cannot be logged) loses nothing.
        log_interval()
        if step > start_step:
            saved = checkpoint(step, elapsed_before + time.perf_counter() - started)
        else:  # resuming a finished run: no second evaluation row, and the checkpoints stay as they are
            saved = Path(resume)
        model_file = export()
        if step > start_step:
            metrics = evaluate(step)
        context.barrier()
    if math.isnan(last_logged_loss):
        summary = f"done: step {step} (the run had already finished; no new steps)"
    else:
        summary = f"done: step {step}, loss {last_logged_loss:.4f}"
    if metrics:
        summary += ", " + ", ".join(f"{name} {value:.6g}" for name, value in sorted(metrics.items()))
    logger.close(summary + (f"; model saved to {model_file}" if model_file else ""))
    return TrainResult(step, True, last_logged_loss, metrics, saved, model_file, losses)

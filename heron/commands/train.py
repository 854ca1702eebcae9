"""``heron train TASK [options | --config FILE]``: train a model on one of the registered tasks.

Runs alone or, unchanged, under `torchrun --nproc_per_node=N`. Options on the command line
override the `--config` file, which overrides the task's defaults; with `--resume` the
checkpoint's configuration takes the defaults' place and a changed trajectory option is an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# option -> (TrainConfig field, type, help); None defaults mean "not given on the command line"
_SCALAR_OPTIONS = {
    "--model": ("model", str, "model variant, for tasks that have several (counting: emb, 1bit, 1bit_run, 4bit; text and abc: rwkv8, rosa_lm)"),
    "--steps": ("steps", int, "optimiser steps in the whole run"),
    "--batch-size": ("batch_size", int, "global batch per optimiser step (all processes and micro-steps)"),
    "--grad-accum": ("grad_accum", int, "micro-steps the global batch is split into"),
    "--lr": ("lr", float, "peak learning rate"),
    "--lr-final": ("lr_final", float, "learning rate at the last step (cosine decay)"),
    "--warmup": ("warmup", int, "linear warm-up steps"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--recipe": ("recipe", str, "optimiser/initialisation recipe: official (small tasks) or lm (spec §5)"),
    "--clip": ("clip", float, "max gradient norm (0: no clipping)"),
    "--seed": ("seed", int, "seed of the model initialisation and the batch generator"),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N"),
    "--dtype": ("dtype", str, "auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp64"),
    "--eval-every": ("eval_every", int, "evaluate every N steps (0: at the end only)"),
    "--eval-samples": ("eval_samples", int, "evaluation size (task-specific; 0: task default)"),
    "--ckpt-every": ("ckpt_every", int, "checkpoint every N steps (always at exit)"),
    "--log-every": ("log_every", int, "log a CSV/TensorBoard row every N steps"),
    "--time-limit": ("time_limit", float, "minutes this invocation may train; then it checkpoints and exits"),
    "--out": ("out", str, "run directory (checkpoint, CSV, TensorBoard, final model)"),
    "--keep-best": ("keep_best", str, "evaluation metric (e.g. eval_loss): each evaluation that improves it writes "
                    "the model to OUT/best (lower is better for loss/bits/error/perplexity names)"),
    "--parallel": ("parallel", str, "under torchrun: ddp (replicated model, default) or fsdp (FSDP2: parameters, "
                   "gradients and optimiser state sharded per block)"),
    "--ce-chunk": ("ce_chunk", int, "apply the output head and cross-entropy N positions at a time, so the "
                   "[B, T, vocab] logits never exist whole (large vocabularies; 0: off)"),
}
# boolean options: --flag / --no-flag (None: not given on the command line)
_FLAG_OPTIONS = {
    "grad_checkpointing": "recompute each block's activations in the backward pass (less memory, ~1/3 more compute)",
    "compile": "torch.compile every block",
    "rosa_overlap": "CUDA, RWKV-8 + ROSA: run each ROSA block on a second stream beside its time-mix",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a task (counting, reverse, arith, text, abc)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("task", help="task name (counting, reverse, arith, text, abc)")
    parser.add_argument("--config", metavar="FILE", help="options from a .toml or .json file")
    for option, (_, kind, text) in _SCALAR_OPTIONS.items():
        parser.add_argument(option, type=kind, default=None, help=text)
    parser.add_argument("--model-config", nargs="+", metavar="KEY=VALUE", default=None,
                        help="model configuration overrides (n_layer=2 n_embd=32 rosa=qkv1 rosa_estimator=...)")
    parser.add_argument("--task-option", nargs="+", metavar="KEY=VALUE", default=None,
                        help="task options (reverse: max_digits=60 curriculum=[[0,10],[500,60]] ...)")
    parser.add_argument("--data", nargs="+", metavar="PATH", default=None, help="data files (text task)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue a run: from CHECKPOINT (a file, or a run folder), or from the latest checkpoint in --out")
    for name, text in _FLAG_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                            default=None, help=text)
    # --progress / --tensorboard switch back on what a resumed run saved as off
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default on; --no-progress hides it)")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                        help="TensorBoard logs beside the CSVs (default on; --no-tensorboard: CSV logging only)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)


def command_line_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given explicitly on the command line."""
    from heron.train.config import parse_assignment

    options: dict[str, Any] = {}
    for field_name, _, _ in _SCALAR_OPTIONS.values():
        value = getattr(args, field_name)
        if value is not None:
            options[field_name] = value
    for flag in ("progress", "tensorboard", *_FLAG_OPTIONS):
        if getattr(args, flag) is not None:
            options[flag] = getattr(args, flag)
    if args.model_config:
        options["model_config"] = dict(parse_assignment(item, "--model-config") for item in args.model_config)
    task_options = dict(parse_assignment(item, "--task-option") for item in args.task_option or [])
    if args.data:
        task_options["data"] = list(args.data)
    if task_options:
        options["task_options"] = task_options
    return options


def resolve_config(args: argparse.Namespace):
    """(TrainConfig, checkpoint to resume or None) from the task defaults, file, command line."""
    from heron.train.checkpoint import load_checkpoint, latest_checkpoint
    from heron.train.config import TrainConfig, merge_options, read_config_file
    from heron.train.tasks import get_task

    task = get_task(args.task)
    explicit = command_line_options(args)
    from_file = read_config_file(args.config) if args.config else {}
    if from_file.get("task", args.task) != args.task:
        raise ValueError(f"--config {args.config} is for task {from_file['task']!r}, not {args.task!r}")
    given = merge_options(from_file, explicit)
    if args.resume is None:
        values = merge_options({**task.defaults, "task": args.task}, given)
        return TrainConfig.from_dict(values), None
    out = given.get("out", task.defaults.get("out", TrainConfig.out))
    if args.resume and Path(args.resume).is_dir():  # a run folder: its latest checkpoint
        checkpoint = latest_checkpoint(args.resume)
    else:
        checkpoint = Path(args.resume) if args.resume else latest_checkpoint(out)
    saved = load_checkpoint(checkpoint).get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"{checkpoint} holds no training configuration")
    if saved.get("task", args.task) != args.task:
        raise ValueError(f"{checkpoint} is a checkpoint of task {saved['task']!r}, not {args.task!r}: "
                         f"continue it with `heron train {saved['task']} --resume ...`")
    # Without an explicit --out, the run continues in the checkpoint's own directory.
    base = {**saved, "out": str(checkpoint.parent) if "out" not in given else given["out"]}
    return TrainConfig.from_dict(merge_options(base, {**given, "task": args.task})), checkpoint


def run(args: argparse.Namespace) -> int:
    from heron.train.trainer import train

    config, checkpoint = resolve_config(args)
    result = train(config, resume=checkpoint)
    if result.finished:
        return 0
    return 130 if result.stopped_by == "signal" else 0

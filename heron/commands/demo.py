"""``heron demo``: train a small RWKV-8 + ROSA model to reverse numbers on the CPU, then show it.

The model is the official task-model shape (2 layers, width 32, head size 16, a ROSA-QKV 1-bit
block beside each time-mix: 39,564 parameters). It trains on 1..``--digits``-digit numbers with
the reversal recipe, is scored with the official protocol (spec RWKV8.md §7), and reverses a few
fresh numbers by greedy decoding. The defaults finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import random
import time

import torch


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a small RWKV-8 + ROSA model to reverse numbers (CPU, minutes)",
        description=__doc__,
    )
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps (default 800)")
    parser.add_argument("--digits", type=int, default=10, help="numbers of 1..DIGITS digits (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step (default 64)")
    parser.add_argument("--eval-samples", type=int, default=10,
                        help="numbers per digit count in the final evaluation (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--out", default="runs/demo", help="run folder (model, curves; default runs/demo)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def _check(args) -> None:
    for name in ("steps", "digits", "batch_size", "eval_samples"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.digits > 60:
        raise ValueError(f"--digits must be at most 60 (the reversal task's range), got {args.digits}")
    from heron.commands import resolve_device

    resolve_device(args.device)  # before the banner and the run folder


# What a demo run writes into its folder (the trainer's files; the demo turns TensorBoard off).
DEMO_FILES = ("checkpoint.pt", "checkpoint.pt.prev", "train.csv", "eval.csv", "model.safetensors")
MARKER = "heron-demo.txt"


def _prepare_out(out) -> None:
    """The demo always starts afresh, so it must own its folder: it takes a new or empty one, and
    in a folder an earlier demo run marked it replaces that run's files and nothing else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the demo needs a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(f"--out {out} is not empty and no earlier demo run wrote it; choose a new or "
                             "empty folder (the demo replaces its own earlier run)")
        for name in DEMO_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `heron demo`; the next demo run in this folder replaces its files\n")


@torch.no_grad()
def reverse_greedily(model, number: int, device) -> str:
    """Feed ``digits(number) + ','`` and decode greedily until ``'#'``; returns the digits."""
    from heron.data.digits import decode, encode

    tokens = torch.tensor([encode(f"{number},", "reverse")], device=device)
    logits, state = model(tokens, return_state=True)
    produced = []
    next_token = logits[:, -1].argmax(-1)
    for _ in range(len(str(number)) + 1):
        symbol = decode([int(next_token)], "reverse")
        if symbol == "#":
            break
        produced.append(symbol)
        logits, state = model.step(next_token, state)
        next_token = logits.argmax(-1)
    return "".join(produced)


def run(args) -> int:
    from pathlib import Path

    from heron.models.loading import load
    from heron.train import TrainConfig, train

    _check(args)
    out = Path(args.out)
    _prepare_out(out)
    config = TrainConfig(
        task="reverse",
        steps=args.steps,
        batch_size=args.batch_size,
        lr=3e-3,
        lr_final=1e-5,
        clip=1.0,
        seed=args.seed,
        device=args.device,
        out=str(out),
        eval_every=0,
        eval_samples=args.eval_samples,
        ckpt_every=0,
        log_every=20,
        progress=args.progress,
        tensorboard=False,
        task_options={"max_digits": args.digits, "seq_len": 2 * args.digits + 4},
    )
    print(f"heron demo: RWKV-8 + ROSA-QKV (39,564 parameters) learns to reverse 1-{args.digits} digit "
          f"numbers, {args.steps} steps of {args.batch_size} on {args.device}")
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    accuracy = result.metrics.get("digit_accuracy")
    print(f"\ntrained in {seconds:.0f} s; final loss {result.loss:.4f}")
    if accuracy is not None:
        print(f"honest digit accuracy (official protocol, {args.eval_samples} number(s) per digit count): "
              f"{100 * accuracy:.2f}%")

    model = load(result.model_file).eval()
    rng = random.Random(args.seed + 2024)
    print("\nfresh numbers, reversed by greedy decoding (RNN mode after a GPT-mode prefill):")
    for digits in sorted({1, max(1, args.digits // 2), args.digits}):
        low = 0 if digits == 1 else 10 ** (digits - 1)
        number = rng.randint(low, 10 ** digits - 1)
        answer = reverse_greedily(model, number, torch.device("cpu"))
        mark = "ok" if answer == str(number)[::-1] else "wrong"
        print(f"  {number:>{args.digits}} -> {answer:<{args.digits}}  [{mark}]")
    print(f"\nmodel: {result.model_file}  (evaluate: python3 -m heron eval reverse --checkpoint "
          f"{result.model_file} --digits {args.digits})")
    return 0

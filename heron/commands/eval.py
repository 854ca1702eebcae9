"""``heron eval reverse|arith``: the honest digit accuracy of a checkpoint (spec/RWKV8.md §7).

By default the official evaluation draw: seed 42, 10 numbers per digit count for reversal, one
round of operand shapes per digit count for arithmetic. ``--samples`` sets numbers per digit
count (reversal) or rounds (arithmetic). Prints ``correct/scored = accuracy``; ``--verbose``
adds one line per digit count.
"""

from __future__ import annotations

import argparse
import sys
import time

_TASK_VOCAB = {"reverse": 12, "arith": 13}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="digit accuracy of a checkpoint on the reversal or arithmetic task",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=sorted(_TASK_VOCAB), help="which digit task")
    parser.add_argument("--checkpoint", required=True, help="official .pth or heron .safetensors file")
    parser.add_argument("--digits", type=int, required=True, help="evaluate digit counts 1..DIGITS")
    parser.add_argument("--samples", type=int, default=None,
                        help="numbers per digit count (reverse, default 10) or rounds of operand shapes (arith, default 1)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sampler (default 42, the official draw)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--verbose", action="store_true", help="print the accuracy per digit count")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from heron.commands import resolve_device
    from heron.data import digits
    from heron.models.loading import load

    if args.digits < 1:
        raise ValueError(f"--digits must be >= 1, got {args.digits}")
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    started = time.perf_counter()
    model = load(args.checkpoint, device=device).eval()
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab != _TASK_VOCAB[args.task]:
        raise ValueError(
            f"{args.checkpoint} has vocabulary {vocab}, the {args.task} task needs {_TASK_VOCAB[args.task]}"
        )
    tokens, counts = digits.official_samples(args.task, args.digits, args.samples, args.seed)
    # ROSA runs per stream on the CPU, so moderate CPU batches keep memory flat at no cost.
    batch_size = args.batch_size or (1024 if device.type == "cuda" else 128)
    score, _ = digits.evaluate(model, tokens, args.task, counts, batch_size=batch_size,
                               progress=not args.no_progress and sys.stderr.isatty())
    elapsed = time.perf_counter() - started
    if args.verbose:
        for count, (correct, scored) in score.per_digit.items():
            print(f"  {count:4d} digits: {correct}/{scored} = {100 * correct / scored:.2f}%")
    samples = args.samples or (1 if args.task == "arith" else 10)
    per = f"round{'s' if samples != 1 else ''} of operand shapes" if args.task == "arith" else "per digit count"
    print(f"{args.task} 1-{args.digits} digits, {tokens.shape[0]} samples ({samples} {per}, seed {args.seed}): "
          f"digit accuracy {score} [{elapsed:.1f} s]")
    return 0

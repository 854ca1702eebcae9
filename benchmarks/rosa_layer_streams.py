"""The ROSA engine on the streams a real model gives it, for several grouping work budgets.

Random streams (benchmarks/rosa_forward.py) are the grouping kernel's easy case. Inside an
RWKV-8 + ROSA-QKV model the deeper layers read a residual stream that already holds earlier
layers' ROSA outputs, which are copies of earlier positions, so their symbol streams repeat
themselves: long matches, much more grouping work, and streams handed to the automaton kernel.
This benchmark builds the train-step benchmark's model (benchmarks/train_step.py configurations,
LM recipe initialisation), optionally trains it a few steps on random tokens, records the symbol
tensors every layer's ROSA op passes to the engine during one forward pass, and then times the
engine on exactly those inputs with each ``--budgets`` value of
``heron.ops.rosa.CUDA_GROUPING_WORK_PER_ELEMENT`` (0 = the automaton kernel alone), checking
that every budget gives the same outputs. ``--match-lengths`` also prints each call's mean
longest-match length (the grouping kernel's work per element grows with it; streams averaging
above ~16 exceed the default budget of 32).

    python benchmarks/rosa_layer_streams.py --configs rwkv8-rosa1-value,rwkv8-rosa-value
    python benchmarks/rosa_layer_streams.py --tiny --device cpu --budgets 0 32   # smoke run
    python benchmarks/rosa_layer_streams.py --configs rwkv8-rosa1-value --device cpu --batch 2 \
        --no-deep-embed --train-steps 8 --cycle 4 --match-lengths --no-timing   # why streams slow down
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import heron.ops.rosa  # noqa: E402,F401
# The package `heron.ops` re-exports the function `rosa`, which shadows the submodule attribute.
rosa_ops = sys.modules["heron.ops.rosa"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, TINY  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="rwkv8-rosa1-value,rwkv8-rosa-value",
                        help=f"comma-separated ROSA configurations of benchmarks/train_step.py ({', '.join(CONFIGS)})")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="AdamW steps on random tokens before the streams are recorded (default 0: at init)")
    parser.add_argument("--cycle", type=int, default=0, metavar="N",
                        help="train on N random batches in turn, as benchmarks/train_step.py does with 4 "
                             "(default 0: a fresh batch every step); the streams are recorded on a fresh batch")
    parser.add_argument("--no-deep-embed", action="store_true", help="without the DeepEmbed tables (CPU memory)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 8, 32, 128, 512])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the layers per budget (median)")
    parser.add_argument("--tiny", action="store_true", help="the train-step benchmark's tiny model (CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--match-lengths", action="store_true",
                        help="also print each layer's mean longest-match length (an O(T^2) pass per call; "
                             "the grouping kernel's work grows with it)")
    parser.add_argument("--no-timing", action="store_true", help="skip the budget timings (with --match-lengths)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS or not CONFIGS[c].get("rosa")]
    if unknown:
        parser.error(f"not ROSA configurations of train_step.py: {unknown}")
    if args.batch < 1 or args.ctx < 2 or args.train_steps < 0 or args.repeats < 1 or args.cycle < 0:
        parser.error("--batch >= 1, --ctx >= 2, --train-steps >= 0, --repeats >= 1, --cycle >= 0")
    if any(b < 0 for b in args.budgets):
        parser.error("--budgets must be >= 0")
    return args


def record_layer_inputs(name: str, args, device) -> list[tuple]:
    from heron.models.init import init_lm_recipe, make_lm_optimizer
    from heron.models.rwkv8 import RWKV8, RWKV8Config

    values = dict(CONFIGS[name])
    if args.tiny:
        values.update(TINY)
    if args.no_deep_embed:
        values["deep_embed"] = False
    torch.manual_seed(args.seed)
    model = RWKV8(RWKV8Config(**values))
    init_lm_recipe(model)
    model.to(device)
    generator = torch.Generator().manual_seed(args.seed)
    vocab = values["vocab_size"]

    def batch():
        return torch.randint(0, vocab, (args.batch, args.ctx + 1), generator=generator).to(device)

    use_bf16 = device.type == "cuda"
    if args.train_steps:
        optimizer = make_lm_optimizer(model, 6e-4, 0.1)
        cycled = [batch() for _ in range(args.cycle)]
        for step in range(args.train_steps):
            tokens = cycled[step % args.cycle] if cycled else batch()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    recorded = []
    original = rosa_ops._dispatch

    def recording(q, k, v, largest_key, backend="auto"):
        recorded.append((q.clone(), k.clone() if k is not q else None, v.clone(), largest_key))
        return original(q, k, v, largest_key, backend)

    rosa_ops._dispatch = recording
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            tokens = batch()
            with torch.enable_grad():  # the value estimator's retrieval runs only when training
                model(tokens[:, :-1]).float().mean().backward()
    finally:
        rosa_ops._dispatch = original
    del model
    return recorded


def match_lengths(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Longest match length of every query (0 = none) of ``[B, T, S]`` symbol streams: the
    suffix-match DP ``L[i][j] = (q[i] == k[j]) * (L[i-1][j-1] + 1)`` over keys ``j < i``, one row
    of ``i`` at a time for all streams at once."""
    batch, length, streams = q.shape
    queries = q.permute(0, 2, 1).reshape(-1, length)
    keys = k.permute(0, 2, 1).reshape(-1, length)
    previous = torch.zeros_like(keys, dtype=torch.int32)
    lengths = torch.zeros_like(keys, dtype=torch.int32)
    for i in range(1, length):
        shifted = torch.nn.functional.pad(previous[:, :-1], (1, 0))
        current = (keys == queries[:, i:i + 1]).to(torch.int32) * (shifted + 1)
        current[:, i:] = 0  # keys before the query only
        lengths[:, i] = current.amax(1)
        previous = current
    return lengths.reshape(batch, streams, length)


def time_budget(recorded, budget: int, device, repeats: int):
    saved = rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT
    rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT = budget

    def run_all():
        return [rosa_ops._dispatch(q, q if k is None else k, v, key) for q, k, v, key in recorded]

    try:
        outputs = run_all()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            run_all()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    finally:
        rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT = saved
    times.sort()
    return times[len(times) // 2], outputs


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    rows = []
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ROSA engine on recorded layer streams, {where}, torch {torch.__version__}, "
          f"batch {args.batch} x ctx {args.ctx}, {args.train_steps} training step(s) first"
          + (f" on {args.cycle} batches in turn" if args.cycle and args.train_steps else ""), flush=True)
    for name in args.configs:
        recorded = record_layer_inputs(name, args, device)
        stream_tokens = sum(q.numel() for q, *_ in recorded)
        print(f"[{name}] {len(recorded)} engine calls, {stream_tokens / 1e6:.1f}M stream-tokens per pass", flush=True)
        if args.match_lengths:
            for call, (q, k, _, _) in enumerate(recorded):
                lengths = match_lengths(q, q if k is None else k).float()
                long_share = (lengths.mean(-1) > 16).float().mean().item()
                rows.append(dict(config=name, call=call, mean_match_length=lengths.mean().item(),
                                 streams_mean_over_16=long_share))
                print(f"    call {call:2d}: mean longest match {lengths.mean().item():6.1f}, "
                      f"{long_share:6.1%} of the streams above 16 on average", flush=True)
        if args.no_timing:
            continue
        reference = None
        for budget in args.budgets:
            seconds, outputs = time_budget(recorded, budget, device, args.repeats)
            if reference is None:
                reference = outputs
            same = all(torch.equal(a, b) for a, b in zip(outputs, reference))
            row = dict(config=name, budget=budget, ms_per_pass=seconds * 1e3, ms_per_call=seconds * 1e3 / len(recorded),
                       stream_tokens_per_s=stream_tokens / seconds, same_outputs=same)
            rows.append(row)
            label = "automaton alone" if budget == 0 else f"grouping budget {budget}"
            print(f"    {label:>22}: {seconds * 1e3:8.2f} ms per pass ({row['ms_per_call']:.2f} ms per layer), "
                  f"{row['stream_tokens_per_s']:.3g} stream-tokens/s" + ("" if same else "  OUTPUTS DIFFER"), flush=True)
            if not same:
                print("ERROR: the outputs depend on the budget", file=sys.stderr)
        best = min((r for r in rows if r["config"] == name and "budget" in r), key=lambda r: r["ms_per_pass"])
        print(f"    best: budget {best['budget']} ({best['ms_per_pass']:.2f} ms per pass)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(device=where, torch=torch.__version__, batch=args.batch, ctx=args.ctx,
                                             train_steps=args.train_steps, rows=rows), indent=2))
    return 0 if all(r.get("same_outputs", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

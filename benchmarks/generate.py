"""Generation speed: incremental (online ROSA state) vs. full recompute, tokens/s.

Default shape (issue 7): a 12-layer, 768-wide pure ROSA LM (1-bit, random weights, vocabulary
65536) generating 1024 tokens after a 512-token prompt, at batch 1 and 64.

- incremental: ``heron.generate.generate`` — one GPT-mode prefill of the prompt, then one
  RNN-mode ``step()`` per token (the online automata live in the state). A step pushes one
  symbol into each of ``batch x streams`` online automata, on the CPU whatever the device
  (streams = ROSA channels over all layers: 12 x 768 = 9216 per row at the issue shape), and
  these pushes dominate a large batch: ~1-3 us each (every step visits every automaton, so they
  come from main memory), ~200 B of host memory per stream and token (the 512-token prompt at
  batch 64 alone is ~60 GB). The decode therefore runs at most ``--incremental-pushes``
  automaton pushes (default 2**26: all 1024 steps at batch 1, the first 113 at batch 64 of the
  issue shape); when that is fewer than ``--tokens`` steps, the steps not run are charged at the
  mean duration of the last half of the measured ones (a step's cost is nearly flat in the
  context: the automata are amortised O(log T) per push; the JSON has the step time by quarter
  of the measured steps to check it), and the printout says "extrapolated".
  ``--incremental-tokens N`` sets the number of measured steps instead.
- full recompute: what the official pure-ROSA demo does — the whole context goes through the
  model for every new token. Its cost per token grows linearly with the context, so by default
  it is timed at ``--full-samples`` context lengths spread over ``[prompt, prompt + tokens - 1]``
  and the total is the trapezoid integral of those timings over all ``tokens`` steps (the
  printout says "estimated"); ``--full-exact`` runs every step instead.

Both paths use greedy decoding on the same weights; the first ``--check`` generated tokens of
the two are compared (they must be equal) so the speed-up is between equal computations.

Before each batch the plan is printed to stderr (steps, automaton pushes, estimated memory) and
progress bars (tqdm, stderr) show where a run is; a batch whose automata or full-recompute
logits would not fit in the free memory is skipped with its reason (``--no-memory-check`` runs
it anyway). A summary line per batch closes the output.

Examples:
  python benchmarks/generate.py                                   # issue shape, CPU
  python benchmarks/generate.py --layers 2 --width 128 --prompt 64 --tokens 64 --batch 1 4
  python benchmarks/generate.py --device cuda --batch 1 64 --threads 16 --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heron.generate import generate  # noqa: E402

# Host memory of the online automata per stream and pushed token (suffix automaton of ~2T
# states with hashed edges, link-cut fields and the q/k/v histories; measured 150-230 B on the
# random-weight models' bit streams, vectors grown by doubling), rounded up.
AUTOMATON_BYTES_PER_STREAM_TOKEN = 256
MIN_INCREMENTAL_STEPS = 16


def build_model(args) -> torch.nn.Module:
    if args.model == "rosa":
        try:
            from heron.models import ROSALM, ROSALMConfig
        except ImportError:
            from heron.models.rosa_lm import ROSALM, ROSALMConfig

        config = ROSALMConfig(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, bits=args.bits)
        model = ROSALM(config)
    else:
        from heron.models.rwkv8 import RWKV8, RWKV8Config

        config = RWKV8Config(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, head_size=64,
                             rosa=f"qkv{args.bits}" if args.model == "rwkv8-rosa" else None)
        model = RWKV8(config)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        # random weights of a sensible scale: the default init zeroes some output matrices,
        # which would make every ROSA stream constant and the timing unrepresentative
        for parameter in model.parameters():
            fan_in = parameter.shape[-1] if parameter.dim() >= 2 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in ** 0.5)
    return model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def automaton_streams(model: torch.nn.Module) -> int:
    """Online ROSA automata per batch row (each takes one push per generated token)."""
    try:
        from heron.layers.rosa import ROSAQKV, EmbROSA, ROSABits
    except ImportError:
        return 0
    streams = 0
    for module in model.modules():
        if isinstance(module, (ROSAQKV, ROSABits)):
            streams += module.n_embd // module.bits
        elif isinstance(module, EmbROSA):
            streams += 1
    return streams


def incremental_steps(args, batch: int, streams: int) -> int:
    """Decode steps the incremental path runs for this batch (the rest is extrapolated)."""
    if args.incremental_tokens is not None:
        return min(args.incremental_tokens, args.tokens)
    per_step = batch * streams
    if per_step == 0 or per_step * args.tokens <= args.incremental_pushes:
        return args.tokens
    return min(args.tokens, max(MIN_INCREMENTAL_STEPS, args.incremental_pushes // per_step))


def automaton_bytes(args, batch: int, streams: int, steps: int) -> int:
    """Estimated host memory of the online automata after the prompt and ``steps`` decode steps."""
    return batch * streams * (args.prompt + steps) * AUTOMATON_BYTES_PER_STREAM_TOKEN


def full_recompute_lengths(args) -> list[int]:
    return sorted({round(args.prompt + i * (args.tokens - 1) / max(args.full_samples - 1, 1))
                   for i in range(args.full_samples)})


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_available() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_problem(args, batch: int, streams: int, steps: int) -> str | None:
    """Why this batch would not fit in memory, or None."""
    gb = 2 ** 30
    problems = []
    host = host_memory_available()
    automata = automaton_bytes(args, batch, streams, steps)
    if host is not None and automata > 0.9 * host:
        problems.append(f"the online automata need ~{automata / gb:.0f} GB of host memory "
                        f"({batch} x {streams} streams x {args.prompt + steps} tokens x ~"
                        f"{AUTOMATON_BYTES_PER_STREAM_TOKEN} B), {host / gb:.0f} GB available")
    # full recompute returns logits for every position: [batch, context, vocab]
    longest = args.prompt + args.tokens - 1
    logits = batch * longest * args.vocab * torch.finfo(getattr(torch, args.dtype)).bits // 8
    device = torch.device(args.device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if logits > 0.9 * free:
            problems.append(f"full recompute at context {longest} needs {logits / gb:.0f} GB of logits, "
                            f"{free / gb:.0f} GB of GPU memory free")
    elif host is not None and logits > 0.9 * host:
        problems.append(f"full recompute at context {longest} needs {logits / gb:.0f} GB of logits, "
                        f"{host / gb:.0f} GB available")
    return "; ".join(problems) or None


class _NoBar:
    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def progress(args, total: int, desc: str, unit: str = "tok"):
    if not args.progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"  {desc} ({total} {unit})", file=sys.stderr, flush=True)
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0, dynamic_ncols=True)


class LazyBar:
    """A progress bar over generated tokens (row 0's), opened at the first token so that the
    prefill does not distort its rate; ``times`` holds when row 0 got each token, so their
    differences are the decode steps' durations."""

    def __init__(self, args, total: int, desc: str):
        self.args, self.total, self.desc, self.bar = args, total, desc, None
        self.times: list[float] = []

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]

    def on_token(self, row: int, token: int) -> None:
        if row != 0:
            return
        self.times.append(time.perf_counter())
        if self.bar is None:
            self.bar = progress(self.args, self.total, self.desc)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_full_recompute_step(model, context: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds for one "recompute everything" token at this context length, and its choice."""
    device = context.device
    synchronize(device)
    started = time.perf_counter()
    logits = model(context)[:, -1]
    chosen = logits.argmax(dim=1)
    synchronize(device)
    return time.perf_counter() - started, chosen


def trapezoid_total(points: list[tuple[int, float]], first: int, last: int) -> float:
    """Sum over every context length in [first, last] of the per-token time, linearly
    interpolated between the measured (length, seconds) points."""
    points = sorted(points)
    total = 0.0
    for length in range(first, last + 1):
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if x0 <= length <= x1:
                total += y0 if x1 == x0 else y0 + (y1 - y0) * (length - x0) / (x1 - x0)
                break
        else:
            total += points[0][1] if length < points[0][0] else points[-1][1]
    return total


class SkipBatch(Exception):
    pass


def run_batch(model, args, batch: int, streams: int) -> dict:
    device = torch.device(args.device)
    batch_started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed + batch)
    prompts = torch.randint(1, args.vocab, (batch, args.prompt), generator=generator)
    steps = incremental_steps(args, batch, streams)
    lengths = full_recompute_lengths(args)
    if args.memory_check:
        problem = memory_problem(args, batch, streams, steps)
        if problem:
            raise SkipBatch(problem)
    pushes = batch * streams * steps
    full_plan = ("every step (--full-exact)" if args.full_exact
                 else f"timed at contexts {', '.join(map(str, lengths))}")
    print(f"batch {batch}: incremental = prefill {args.prompt} + {steps} of {args.tokens} decode steps "
          f"({batch} x {streams} automata, {pushes / 1e6:.1f}M pushes, ~"
          f"{automaton_bytes(args, batch, streams, steps) / 2 ** 30:.1f} GB); "
          f"full recompute {full_plan}", file=sys.stderr, flush=True)

    if args.warmup:
        generate(model, prompts[:, : min(16, args.prompt)].to(device), 2, temperature=0.0)

    if args.progress:
        print(f"batch {batch}: incremental prefill of {batch} x {args.prompt} tokens ...", file=sys.stderr, flush=True)
    bar = LazyBar(args, steps, f"batch {batch} incremental decode")   # starts with the first token
    incremental = generate(model, prompts, steps, temperature=0.0, on_token=bar.on_token)
    bar.close()
    # the first token comes from the prefill logits, then each model step gives one token; the
    # steps not run are charged at the mean duration of the last half of the measured ones
    step_seconds = bar.step_seconds()
    later = step_seconds[len(step_seconds) // 2:]
    extrapolated_step = (sum(later) / len(later) if later else
                         incremental.decode_seconds / steps)
    decode_seconds = incremental.decode_seconds + (args.tokens - steps) * extrapolated_step
    quarters = [step_seconds[len(step_seconds) * i // 4: len(step_seconds) * (i + 1) // 4] for i in range(4)]
    step_ms_by_quarter = [1000 * sum(q) / len(q) if q else None for q in quarters]
    incremental_seconds = incremental.prefill_seconds + decode_seconds
    incremental_kind = ("measured" if steps == args.tokens else
                        f"prefill + {steps} of {args.tokens} decode steps measured, the other {args.tokens - steps} "
                        "extrapolated at the mean of the last half of the measured steps")
    generated = batch * args.tokens
    if args.verbose:
        shown = ", ".join("-" if ms is None else f"{ms:.1f}" for ms in step_ms_by_quarter)
        print(f"  incremental, batch {batch}: prefill {incremental.prefill_seconds:.2f} s, decode {steps} tokens "
              f"{incremental.decode_seconds:.2f} s, ms per step by quarter of the measured steps: {shown}",
              file=sys.stderr)

    check = min(args.check, steps)
    first_tokens = torch.tensor([row[:check] for row in incremental.tokens], dtype=torch.int64)
    context = torch.cat([prompts, first_tokens], dim=1).to(device)
    for offset in range(check):
        _, chosen = time_full_recompute_step(model, context[:, : args.prompt + offset])
        if not torch.equal(chosen.cpu(), first_tokens[:, offset]):
            raise SystemExit(f"batch {batch}: full recompute chose {chosen.tolist()} at step {offset}, "
                             f"incremental {first_tokens[:, offset].tolist()} — the paths disagree")

    points = []
    if args.full_exact:
        bar = LazyBar(args, args.tokens, f"batch {batch} full recompute")
        full = generate(model, prompts, args.tokens, temperature=0.0, incremental=False, on_token=bar.on_token)
        bar.close()
        full_seconds = full.decode_seconds
        full_kind = "measured"
        if [row[:steps] for row in full.tokens] != incremental.tokens:
            raise SystemExit(f"batch {batch}: full recompute generated different tokens")
    else:
        filler = torch.randint(1, args.vocab, (batch, args.prompt + args.tokens), generator=generator)
        filler[:, : args.prompt] = prompts
        bar = progress(args, len(lengths) * args.full_repeats, f"batch {batch} full recompute", unit="fwd")
        for length in lengths:
            timings = []
            for _ in range(args.full_repeats):
                timings.append(time_full_recompute_step(model, filler[:, :length].to(device))[0])
                bar.update(1)
            seconds = sorted(timings)[len(timings) // 2]
            points.append((length, seconds))
            if args.verbose:
                print(f"  full recompute, batch {batch}, context {length}: {seconds:.3f} s/token", file=sys.stderr)
        bar.close()
        full_seconds = trapezoid_total(points, args.prompt, args.prompt + args.tokens - 1)
        full_kind = f"estimated from {len(points)} context lengths"
    return {
        "batch": batch,
        "prompt": args.prompt,
        "tokens": args.tokens,
        "incremental_prefill_s": incremental.prefill_seconds,
        "incremental_decode_s": decode_seconds,
        "incremental_tokens_per_s": generated / incremental_seconds,
        "incremental_decode_tokens_per_s": generated / decode_seconds,
        "full_recompute_s": full_seconds,
        "full_recompute_tokens_per_s": generated / full_seconds,
        "full_recompute_kind": full_kind,
        "speedup": full_seconds / incremental_seconds,
        "checked_tokens": check,
        # added with the bounded batch-64 method (issue 7)
        "incremental_kind": incremental_kind,
        "incremental_measured_tokens": steps,
        "incremental_decode_measured_s": incremental.decode_seconds,
        "automaton_streams_per_row": streams,
        "automaton_pushes_measured": pushes,
        "full_recompute_points": [[length, seconds] for length, seconds in points],
        "incremental_extrapolated_step_s": extrapolated_step if steps < args.tokens else None,
        "incremental_step_ms_by_quarter": step_ms_by_quarter,
        "incremental_step_s": step_seconds,
        "wall_s": time.perf_counter() - batch_started,
    }


def summary_line(result: dict) -> str:
    if result["incremental_measured_tokens"] == result["tokens"]:
        incremental = "all decode steps measured"
    else:
        incremental = (f"{result['incremental_measured_tokens']} of {result['tokens']} decode steps measured, "
                       "the rest extrapolated")
    return (f"batch {result['batch']}: incremental {result['incremental_tokens_per_s']:.2f} tok/s ({incremental}), "
            f"full recompute {result['full_recompute_tokens_per_s']:.3g} tok/s ({result['full_recompute_kind']}), "
            f"ratio {result['speedup']:.1f}x [{result['wall_s']:.0f} s]")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["rosa", "rwkv8-rosa", "rwkv8"], default="rosa",
                        help="pure ROSA LM (default), RWKV-8 + ROSA-QKV, or RWKV-8 alone")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--bits", type=int, choices=[1, 4], default=1)
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    parser.add_argument("--tokens", type=int, default=1024, help="generated tokens (default 1024)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--incremental-pushes", type=int, default=2 ** 26,
                        help="largest number of online-automaton pushes (batch x streams x steps) the "
                             "incremental decode runs; fewer steps than --tokens are extrapolated "
                             "(default 2**26: all steps at batch 1, 113 at batch 64 of the issue shape)")
    parser.add_argument("--incremental-tokens", type=int, default=None,
                        help="decode steps the incremental path runs (overrides --incremental-pushes)")
    parser.add_argument("--full-samples", type=int, default=3,
                        help="context lengths at which full recompute is timed (default 3)")
    parser.add_argument("--full-repeats", type=int, default=1,
                        help="timings per context length, the median is used (default 1)")
    parser.add_argument("--full-exact", action="store_true", help="run every full-recompute step (slow)")
    parser.add_argument("--check", type=int, default=2, help="generated tokens compared between the paths")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (the online automata of a step run on these threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars on stderr")
    parser.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                        help="run a batch even when its estimated memory exceeds what is free")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in ("layers", "width", "vocab", "prompt", "tokens", "full_samples", "full_repeats",
                 "incremental_pushes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.incremental_tokens is not None and args.incremental_tokens < 1:
        parser.error("--incremental-tokens must be >= 1")
    if any(batch < 1 for batch in args.batch):
        parser.error("--batch sizes must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    model = build_model(args)
    streams = automaton_streams(model)
    parameters = sum(p.numel() for p in model.parameters())
    header = (f"{args.model} L{args.layers} D{args.width} V{args.vocab} {args.bits}-bit, {parameters / 1e6:.1f}M params, "
              f"{args.dtype} on {device.type} ({card}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
              f"prompt {args.prompt}, generate {args.tokens} greedy")
    print(header)
    print("| batch | incremental tokens/s (decode only) | prefill | full recompute tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    results, skipped = [], []
    for batch in args.batch:
        try:
            result = run_batch(model, args, batch, streams)
        except SkipBatch as reason:
            skipped.append({"batch": batch, "reason": str(reason)})
            print(f"| {batch} | skipped: {reason} (--no-memory-check runs it anyway) | | | |", flush=True)
            continue
        results.append(result)
        extrapolated = "" if result["incremental_measured_tokens"] == args.tokens else \
            f", {result['incremental_measured_tokens']} steps measured"
        print(f"| {batch} | {result['incremental_tokens_per_s']:.1f} ({result['incremental_decode_tokens_per_s']:.1f}"
              f"{extrapolated}) | {1000 * result['incremental_prefill_s']:.0f} ms | "
              f"{result['full_recompute_tokens_per_s']:.2f} ({result['full_recompute_kind']}) | "
              f"{result['speedup']:.1f}x |", flush=True)
    print()
    for result in results:
        print(summary_line(result))
    for entry in skipped:
        print(f"batch {entry['batch']}: skipped ({entry['reason']})")
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        output = {"setup": header, "results": results}
        if skipped:
            output["skipped"] = skipped
        Path(args.json).write_text(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

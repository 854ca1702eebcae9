"""Generation speed: incremental (online ROSA state) vs. full recompute, tokens/s.

Default shape (issue 7): a 12-layer, 768-wide pure ROSA LM (1-bit, random weights, vocabulary
65536) generating 1024 tokens after a 512-token prompt, at batch 1 and 64.

- incremental: ``heron.generate.generate`` — one GPT-mode prefill of the prompt, then one
  RNN-mode ``step()`` per token (the online automata live in the state);
- full recompute: what the official pure-ROSA demo does — the whole context goes through the
  model for every new token. Its cost per token grows linearly with the context, so by default
  it is timed at ``--full-samples`` context lengths spread over ``[prompt, prompt + tokens - 1]``
  and the total is the trapezoid integral of those timings over all ``tokens`` steps (the
  printout says "estimated"); ``--full-exact`` runs every step instead.

Both paths use greedy decoding on the same weights; the first ``--check`` generated tokens of
the two are compared (they must be equal) so the speed-up is between equal computations.

Examples:
  python benchmarks/generate.py                                   # issue shape, CPU
  python benchmarks/generate.py --layers 2 --width 128 --prompt 64 --tokens 64 --batch 1 4
  python benchmarks/generate.py --device cuda --dtype bfloat16 --json results.json
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def run_batch(model, args, batch: int) -> dict:
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed + batch)
    prompts = torch.randint(1, args.vocab, (batch, args.prompt), generator=generator)

    if args.warmup:
        generate(model, prompts[:, : min(16, args.prompt)].to(device), 2, temperature=0.0)

    incremental = generate(model, prompts, args.tokens, temperature=0.0)
    incremental_seconds = incremental.prefill_seconds + incremental.decode_seconds
    generated = batch * args.tokens

    check = min(args.check, args.tokens)
    first_tokens = torch.tensor([row[:check] for row in incremental.tokens], dtype=torch.int64)
    context = torch.cat([prompts, first_tokens], dim=1).to(device)
    for offset in range(check):
        _, chosen = time_full_recompute_step(model, context[:, : args.prompt + offset])
        if not torch.equal(chosen.cpu(), first_tokens[:, offset]):
            raise SystemExit(f"batch {batch}: full recompute chose {chosen.tolist()} at step {offset}, "
                             f"incremental {first_tokens[:, offset].tolist()} — the paths disagree")

    if args.full_exact:
        full = generate(model, prompts, args.tokens, temperature=0.0, incremental=False)
        full_seconds = full.decode_seconds
        full_kind = "measured"
        if full.tokens != incremental.tokens:
            raise SystemExit(f"batch {batch}: full recompute generated different tokens")
    else:
        lengths = sorted({round(args.prompt + i * (args.tokens - 1) / max(args.full_samples - 1, 1))
                          for i in range(args.full_samples)})
        filler = torch.randint(1, args.vocab, (batch, args.prompt + args.tokens), generator=generator)
        filler[:, : args.prompt] = prompts
        points = []
        for length in lengths:
            timings = [time_full_recompute_step(model, filler[:, :length].to(device))[0]
                       for _ in range(args.full_repeats)]
            seconds = sorted(timings)[len(timings) // 2]
            points.append((length, seconds))
            if args.verbose:
                print(f"  full recompute, batch {batch}, context {length}: {seconds:.3f} s/token", file=sys.stderr)
        full_seconds = trapezoid_total(points, args.prompt, args.prompt + args.tokens - 1)
        full_kind = f"estimated from {len(points)} context lengths"
    return {
        "batch": batch,
        "prompt": args.prompt,
        "tokens": args.tokens,
        "incremental_prefill_s": incremental.prefill_seconds,
        "incremental_decode_s": incremental.decode_seconds,
        "incremental_tokens_per_s": generated / incremental_seconds,
        "incremental_decode_tokens_per_s": generated / incremental.decode_seconds,
        "full_recompute_s": full_seconds,
        "full_recompute_tokens_per_s": generated / full_seconds,
        "full_recompute_kind": full_kind,
        "speedup": full_seconds / incremental_seconds,
        "checked_tokens": check,
    }


def main(argv=None) -> int:
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
    parser.add_argument("--full-samples", type=int, default=3,
                        help="context lengths at which full recompute is timed (default 3)")
    parser.add_argument("--full-repeats", type=int, default=1,
                        help="timings per context length, the median is used (default 1)")
    parser.add_argument("--full-exact", action="store_true", help="run every full-recompute step (slow)")
    parser.add_argument("--check", type=int, default=2, help="generated tokens compared between the paths")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in ("layers", "width", "vocab", "prompt", "tokens", "full_samples", "full_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(batch < 1 for batch in args.batch):
        parser.error("--batch sizes must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    model = build_model(args)
    parameters = sum(p.numel() for p in model.parameters())
    header = (f"{args.model} L{args.layers} D{args.width} V{args.vocab} {args.bits}-bit, {parameters / 1e6:.1f}M params, "
              f"{args.dtype} on {device.type} ({card}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
              f"prompt {args.prompt}, generate {args.tokens} greedy")
    print(header)
    print("| batch | incremental tokens/s (decode only) | prefill | full recompute tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    results = []
    for batch in args.batch:
        result = run_batch(model, args, batch)
        results.append(result)
        print(f"| {batch} | {result['incremental_tokens_per_s']:.1f} ({result['incremental_decode_tokens_per_s']:.1f}) "
              f"| {1000 * result['incremental_prefill_s']:.0f} ms | {result['full_recompute_tokens_per_s']:.2f} "
              f"({result['full_recompute_kind']}) | {result['speedup']:.1f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": header, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

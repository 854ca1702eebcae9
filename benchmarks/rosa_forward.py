"""ROSA forward throughput: stream x tokens per second of the engine, with the pure-Python
online suffix automaton (``SuffixAutomatonROSA``, the official reference's structure) measured in
the same run where it finishes in reasonable time.

Streams: random 1-bit, random 4-bit, random tokens (V = 65536) and all-zero, at T = 128, 4096,
65536. CPU figures are meant for one core (``--threads 1``, the default); ``--device cuda`` runs
the GPU engine on the issue's shape (B = 8, S = 1024 channel streams at T = 4096), checks its
output against the C++ CPU path on a slice, and also times the automaton kernel alone (the
grouping kernel switched off) in the same run. ``--qkv`` adds QKV rows (independent random q, k,
v) of the same shapes, the case of the ROSA-QKV layers.

    python benchmarks/rosa_forward.py                 # CPU, one thread
    python benchmarks/rosa_forward.py --quick         # smaller, faster
    python benchmarks/rosa_forward.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from heron.ops.rosa import rosa, rosa_automaton, rosa_qkv, rosa_qkv_automaton  # noqa: E402

# The package `heron.ops` re-exports the function `rosa`, which shadows the submodule attribute.
rosa_ops = sys.modules["heron.ops.rosa"]

KINDS = {"random 1-bit": 2, "random 4-bit": 16, "random token V=65536": 65536, "all-zero": 1,
         "periodic 1-bit (period 5)": 2}
LENGTHS = [128, 4096, 65536]


def make_streams(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    alphabet = KINDS[kind.removeprefix("QKV ")]
    if alphabet == 1:
        return torch.zeros(shape, dtype=torch.int64)
    if "periodic" in kind:  # one random 5-bit pattern per stream, repeated along time (dim 1 or 0)
        time_dim = 1 if len(shape) == 3 else len(shape) - 1
        pattern_shape = list(shape)
        pattern_shape[time_dim] = 5
        pattern = torch.randint(0, alphabet, pattern_shape, generator=generator, dtype=torch.int64)
        repeats = [1] * len(shape)
        repeats[time_dim] = -(-shape[time_dim] // 5)
        return pattern.repeat(*repeats).narrow(time_dim, 0, shape[time_dim]).contiguous()
    return torch.randint(0, alphabet, shape, generator=generator, dtype=torch.int64)


def timed(fn, device: str, min_seconds: float, max_repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times: list[float] = []
    total = 0.0
    while len(times) < max_repeats and (total < min_seconds or len(times) < 3):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    return statistics.median(times)


def python_reference_rate(kind: str, length: int, generator: torch.Generator, budget_tokens: int):
    """Tokens per second of the pure-Python automaton on one stream (None when too slow)."""
    # All-zero streams make the chain-walking automaton quadratic: ~T^2/2 chain steps.
    quadratic = kind.endswith("all-zero") or "periodic" in kind
    work = length * length // 2 if quadratic else length
    if work > budget_tokens:
        return None
    stream = make_streams(kind, (length,), generator).tolist()
    keys = make_streams(kind, (length,), generator).tolist()
    repeats = max(1, min(20, 20000 // length))
    start = time.perf_counter()
    for _ in range(repeats):
        if kind.startswith("QKV "):
            rosa_qkv_automaton(stream, keys, stream)
        else:
            rosa_automaton(stream)
    return repeats * length / (time.perf_counter() - start)


def stream_shape(device: str, length: int, quick: bool) -> tuple[int, ...]:
    if device == "cuda":
        # [B, T, S] channel streams; T = 4096 is the B = 8, S = 1024.
        batch = {128: 64, 4096: 8, 65536: 1}.get(length, max(1, 32768 // length))
        return (batch, length, 1024)
    tokens = 1 << (20 if quick else 22)
    return (max(1, tokens // length), length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: one core)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, shorter runs")
    parser.add_argument("--lengths", type=int, nargs="*", default=LENGTHS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--qkv", action="store_true", help="also QKV rows (independent q, k, v)")
    parser.add_argument("--kinds", nargs="*", help="only these stream kinds (default: all)")
    parser.add_argument("--tune-blocks", action="store_true",
                        help="cuda: also time random 1-bit at B=8, T=4096, S=1024 for several block sizes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    generator = torch.Generator().manual_seed(0)
    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
        card = torch.cuda.get_device_name()
    else:
        card = f"{platform.processor() or platform.machine()}, {args.threads} thread(s)"
    min_seconds = 0.5 if args.quick else 2.0
    python_budget = 3_000_000 if args.quick else 40_000_000
    print(f"# ROSA forward, device {device} ({card}), torch {torch.__version__}")
    automaton_column = f" {'automaton tok/s':>15} {'x automaton':>11}" if device == "cuda" else ""
    print(f"{'kind':<26} {'T':>6} {'shape':>18} {'engine tok/s':>14} {'python tok/s':>13} {'ratio':>8}"
          + automaton_column)
    kinds = list(KINDS) + ([f"QKV {kind}" for kind in KINDS] if args.qkv else [])
    if args.kinds:
        unknown = sorted(set(args.kinds) - set(kinds))
        if unknown:
            raise SystemExit(f"--kinds: unknown {unknown}; choose from {kinds}")
        kinds = [kind for kind in kinds if kind in args.kinds]
    rows = []
    for length in args.lengths:
        shape = stream_shape(device, length, args.quick)
        for kind in kinds:
            x = make_streams(kind, shape, generator).to(device)
            if kind.startswith("QKV "):
                keys = make_streams(kind, shape, generator).to(device)
                run_on = lambda a, b, backend="auto": rosa_qkv(a, b, a, backend=backend)  # noqa: E731
            else:
                keys = x
                run_on = lambda a, b, backend="auto": rosa(a, backend=backend)  # noqa: E731
            run = lambda: run_on(x, keys)  # noqa: E731
            streams = x.numel() // length
            seconds = timed(run, device, min_seconds, max_repeats=20)
            rate = x.numel() / seconds
            reference = python_reference_rate(kind, length, generator, python_budget)
            ratio = rate / reference if reference else None
            row = dict(kind=kind, T=length, shape=list(shape), streams=streams,
                       engine_stream_tokens_per_s=rate, python_tokens_per_s=reference,
                       ratio_vs_python=ratio, seconds_per_call=seconds)
            extra = ""
            if device == "cuda":
                # Check a slice against the C++ CPU path measured in the same run.
                piece, key_piece = (t[:1, :, :64] if t.dim() == 3 else t[:4] for t in (x, keys))
                assert torch.equal(run_on(piece, key_piece).cpu(),
                                   run_on(piece.cpu(), key_piece.cpu(), "cpu")), kind
                full = run()
                default = rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT
                rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT = 0  # the automaton kernel alone
                try:
                    automaton_seconds = timed(run, device, min_seconds, max_repeats=10)
                    assert torch.equal(run(), full), f"{kind}: grouping and automaton kernels differ"
                finally:
                    rosa_ops.CUDA_GROUPING_WORK_PER_ELEMENT = default
                automaton_rate = x.numel() / automaton_seconds
                row.update(automaton_stream_tokens_per_s=automaton_rate)
                extra = f" {automaton_rate:15.3e} {rate / automaton_rate:11.2f}"
            rows.append(row)
            ref_text = f"{reference:13.3e}" if reference else f"{'(skipped)':>13}"
            ratio_text = f"{ratio:8.0f}" if ratio else f"{'-':>8}"
            print(f"{kind:<26} {length:>6} {str(tuple(shape)):>18} {rate:14.3e} {ref_text} {ratio_text}{extra}",
                  flush=True)
    if args.tune_blocks and device == "cuda":
        x = make_streams("random 1-bit", (8, 4096, 1024), generator).to(device)
        default = rosa_ops.CUDA_THREADS_PER_BLOCK
        for threads in (32, 64, 128, 256):
            rosa_ops.CUDA_THREADS_PER_BLOCK = threads
            seconds = timed(lambda: rosa(x), device, min_seconds, max_repeats=10)
            print(f"threads per block {threads:4d}: {x.numel() / seconds:.3e} stream-tokens/s")
            rows.append(dict(kind="random 1-bit (block tuning)", T=4096, shape=[8, 4096, 1024],
                             threads_per_block=threads, engine_stream_tokens_per_s=x.numel() / seconds))
        rosa_ops.CUDA_THREADS_PER_BLOCK = default
    print()
    for length in args.lengths:
        by_kind = {r["kind"]: r for r in rows if r["T"] == length}
        if not {"random 1-bit", "all-zero"} <= set(by_kind):
            continue
        slowdown = by_kind["random 1-bit"]["engine_stream_tokens_per_s"] / by_kind["all-zero"]["engine_stream_tokens_per_s"]
        print(f"T={length}: all-zero time per token / random 1-bit time per token = {slowdown:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(device=device, card=card, torch=torch.__version__,
                                             threads=args.threads, rows=rows), indent=2))


if __name__ == "__main__":
    main()

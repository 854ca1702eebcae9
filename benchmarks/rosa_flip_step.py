"""Time one training step of the official 1-bit counting toy (B=128, T=127 model inputs, C=64,
flip estimator): forward, loss, backward, AdamW step. Prints the median of repeated steps and,
on request, the official pure-Python estimator's time for a few streams (the anchor, scaled).

    python benchmarks/rosa_flip_step.py [--device cpu|cuda] [--repeats 5] [--variant 1bit]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", default="1bit", choices=["emb", "1bit", "1bit_run", "4bit"])
    parser.add_argument("--estimator", default="flip")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--anchor-streams", type=int, default=0,
                        help="also time the naive definition on this many streams and scale to the batch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from heron.data.counting import CountingSource
    from heron.models.toys import CountingToy

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CountingToy(variant=args.variant, n_embd=64, estimator=args.estimator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    source = CountingSource(seq_len=127)
    generator = torch.Generator().manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, cpu_times = [], []
    for repeat in range(args.repeats + 1):
        inputs, targets = source.batch(args.batch, generator)
        inputs, targets = inputs.to(device), targets.to(device)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = model.loss(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if repeat > 0:  # the first step builds the extensions
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"counting toy {args.variant} step (B={args.batch}, T=127, C=64, {args.estimator}) on {name}: "
          f"median {statistics.median(times) * 1e3:.1f} ms over {len(times)} steps "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}); process CPU time per step "
          f"{statistics.median(cpu_times):.2f} s (all threads; independent of other load)")

    if args.anchor_streams:
        from heron.ops.rosa.grad import channel_decode_table, naive_flip_grad_channel

        x = torch.randn(1, 127, args.anchor_streams, dtype=torch.float64)
        table = channel_decode_table(torch.full((args.anchor_streams,), -1e-5, dtype=torch.float64),
                                     torch.full((args.anchor_streams,), 1e-5, dtype=torch.float64), 1, "zero")
        start = time.perf_counter()
        naive_flip_grad_channel(x, table, 1, torch.randn_like(x))
        elapsed = time.perf_counter() - start
        scale = args.batch * 64 / args.anchor_streams
        print(f"naive definition (pure Python automaton): {elapsed:.2f} s for {args.anchor_streams} streams, "
              f"~{elapsed * scale:.0f} s scaled to {args.batch * 64} streams")


if __name__ == "__main__":
    main()

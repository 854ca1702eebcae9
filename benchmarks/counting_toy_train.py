"""Drive the official counting-toy training (spec/RWKV8.md §5, §7) until `heron train counting`
lands: C=64, B=128, sample length 128 (127 model inputs), AdamW defaults (weight decay 0.01),
lr 1e-3 -> 1e-6 cosine over the steps, no warm-up. Writes the per-step loss as CSV and prints
the final loss (mean of the last 20 steps) and next-token accuracy on fresh samples.

    python benchmarks/counting_toy_train.py --variant 1bit --steps 1000 --out runs/toy_1bit.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="1bit", choices=["emb", "1bit", "1bit_run", "4bit"])
    parser.add_argument("--estimator", default="flip", choices=["flip", "window", "value"])
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--out", type=Path, required=True, help="CSV of step, loss, lr, seconds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from heron.data.counting import CountingSource
    from heron.models.toys import CountingToy, evaluate_counting

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = CountingToy(variant=args.variant, n_embd=64, estimator=args.estimator, window=args.window).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps, eta_min=1e-6)
    source = CountingSource(seq_len=127)
    generator = torch.Generator().manual_seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    losses = []
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "lr", "seconds"])
        for step in range(args.steps):
            inputs, targets = source.batch(args.batch, generator)
            loss = model.loss(inputs.to(device), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = schedule.get_last_lr()[0]
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - start
            writer.writerow([step + 1, f"{losses[-1]:.5f}", f"{lr:.3e}", f"{elapsed:.2f}"])
            handle.flush()
            if (step + 1) % 50 == 0 or step == 0:
                print(f"{args.variant} step {step + 1}/{args.steps} loss {losses[-1]:.4f} lr {lr:.2e} {elapsed:.0f}s",
                      flush=True)
            if args.time_limit and elapsed > args.time_limit:
                print(f"time limit reached after {step + 1} steps", flush=True)
                break
    tail = losses[-20:]
    metrics = evaluate_counting(model, num_samples=512, seed=12345)
    print(f"final {args.variant} ({args.estimator}) after {len(losses)} steps: loss(last 20 mean) "
          f"{sum(tail) / len(tail):.4f}, last {losses[-1]:.4f}; eval loss {metrics['loss']:.4f}, "
          f"next-token accuracy {metrics['accuracy']:.4f}; {time.perf_counter() - start:.0f}s on {device}")


if __name__ == "__main__":
    main()

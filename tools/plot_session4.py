"""Figures of the fourth H100 session's training-throughput run (issue 9, 2026-11-27).

    python tools/plot_session4.py [--data DIR] [--out-dir docs/figures]

Reads ``DIR/train_step/`` (default ``docs/benchmarks/data/2026-11-27-h100-session4``):
``one_gpu.json`` (1 GPU), the 2-GPU JSON folded into ``train_step.log`` (after the line
``=== multi_gpu_2.json``), ``multi_gpu.json`` (4 GPUs) and ``loss_w{1,2,4}.csv``; writes
``train_scaling.png`` (tokens/s per configuration on 1x/2x/4x H100) and ``train_loss_gpus.png``
(the three 200-step loss curves with the same global batch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from heron.train.plot import read_rows  # noqa: E402

LABELS = {
    "rwkv7": "RWKV-7",
    "rwkv8": "RWKV-8\n(DeepEmbed)",
    "rwkv8-rosa": "RWKV-8 + ROSA-QKV\n1-bit, window",
    "rwkv8-rosa-value": "RWKV-8 + ROSA-QKV\n4-bit, value, tied",
}


def folded_json(log: Path, name: str) -> dict:
    """The JSON document that tools/gpu_train_step.sh appended to the log after ``=== name``."""
    text = log.read_text(encoding="utf-8")
    start = text.index(f"=== {name}\n") + len(f"=== {name}\n")
    document, _ = json.JSONDecoder().raw_decode(text[start:])
    return document


def by_config(document: dict) -> dict[str, float]:
    return {row["config"]: row["tokens_per_s"] for row in document["results"]}


def plot_scaling(step_dir: Path, png: Path) -> None:
    runs = {
        "1x H100": by_config(json.loads((step_dir / "one_gpu.json").read_text())),
        "2x H100": by_config(folded_json(step_dir / "train_step.log", "multi_gpu_2.json")),
        "4x H100": by_config(json.loads((step_dir / "multi_gpu.json").read_text())),
    }
    configs = list(LABELS)
    width = 0.26
    figure, axes = plt.subplots(figsize=(9, 4.8))
    for i, (gpus, colour) in enumerate(zip(runs, ("tab:blue", "tab:orange", "tab:green"))):
        xs = [c + (i - 1) * width for c in range(len(configs))]
        values = [runs[gpus].get(config, 0.0) / 1000 for config in configs]
        bars = axes.bar(xs, values, width, label=gpus, color=colour)
        for bar, config in zip(bars, configs):
            value = runs[gpus].get(config)
            if value is None:
                continue
            text = f"{value / 1000:.1f}k"
            if gpus != "1x H100" and config in runs["1x H100"]:
                text += f"\n{value / runs['1x H100'][config]:.2f}x"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                          va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    axes.set_xticks(range(len(configs)))
    axes.set_xticklabels([LABELS[c] for c in configs], fontsize=8)
    axes.set_ylabel("training tokens/s (thousands, all GPUs)")
    axes.set_ylim(0, max(max(r.values()) for r in runs.values()) / 1000 * 1.18)
    axes.set_title("L12-D768, V 65536, ctx 512, batch 16 per GPU, bf16 autocast, eager; DDP on 2/4 GPUs\n"
                   "(factors vs 1x H100; the 1-GPU run shared its host with other jobs)", fontsize=9)
    axes.legend()
    axes.grid(True, axis="y", linewidth=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


def plot_loss(step_dir: Path, png: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for gpus, colour, style in ((1, "tab:blue", "-"), (2, "tab:orange", "--"), (4, "tab:green", ":")):
        rows = read_rows(step_dir / f"loss_w{gpus}.csv")
        if not rows:
            continue
        axes.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, color=colour, linewidth=1.2,
                  label=f"{gpus}x H100 (final {rows[-1]['loss']:.4f})")
    axes.set_yscale("log")
    axes.set_xlabel("optimiser step (global batch 32 x 512 tokens)")
    axes.set_ylabel("training loss (nats/token)")
    axes.set_title("RWKV-7 L6-D512 on the demo corpus, 200 steps, same global batch on 1/2/4 GPUs", fontsize=9)
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs/benchmarks/data/2026-11-27-h100-session4")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs/figures")
    args = parser.parse_args(argv)
    step_dir = args.data / "train_step"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_scaling(step_dir, args.out_dir / "train_scaling.png")
    plot_loss(step_dir, args.out_dir / "train_loss_gpus.png")
    print(f"wrote {args.out_dir / 'train_scaling.png'} and {args.out_dir / 'train_loss_gpus.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Plot a run's training curve: ``python -m heron.train.plot RUN_DIR [--png FILE]``.

Reads ``train.csv`` (loss per logged step) and, when present, ``eval.csv`` (the task's metrics),
and draws the loss on a log scale with every evaluation metric on a second axis.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def _read(path: Path) -> dict[str, list[float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {name: [float(row[name]) for row in rows] for name in rows[0]}


def plot_run(run_dir: str | Path, png: str | Path | None = None, title: str | None = None) -> Path:
    """Write the curve of the run in ``run_dir`` to ``png`` (default ``run_dir/curve.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    train_csv = run_dir / "train.csv"
    if not train_csv.is_file():
        raise FileNotFoundError(f"{train_csv} does not exist: is {run_dir} a heron train run directory?")
    train = _read(train_csv)
    if not train:
        raise ValueError(f"{train_csv} has no logged steps yet")
    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    loss_axis.plot(train["step"], train["loss"], color="tab:blue", linewidth=1, label="training loss")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (nats per scored token)")
    handles, labels = loss_axis.get_legend_handles_labels()
    eval_csv = run_dir / "eval.csv"
    evaluation = _read(eval_csv) if eval_csv.is_file() else {}
    if evaluation:
        metric_axis = loss_axis.twinx()
        for name, values in evaluation.items():
            if name != "step":
                metric_axis.plot(evaluation["step"], values, marker="o", markersize=3, linewidth=1, label=name)
        metric_axis.set_ylabel("evaluation")
        more_handles, more_labels = metric_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_axis.legend(handles, labels, loc="center right", fontsize=8)
    loss_axis.set_title(title or f"heron train: {run_dir.name}")
    loss_axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    png = Path(png) if png is not None else run_dir / "curve.png"
    figure.savefig(png, dpi=120)
    plt.close(figure)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heron.train.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a heron train --out directory")
    parser.add_argument("--png", default=None, help="output file (default RUN_DIR/curve.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.png, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Plot a run's training curve: ``python -m heron.train.plot RUN_DIR [--png FILE]``.

Reads ``train.csv`` (loss per logged step) and, when present, ``eval.csv`` (the task's metrics),
and draws the loss on a log scale with every evaluation metric on a second axis.
:func:`plot_runs` compares several language-model runs in bits per token.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's CSV as floats (empty cells left out); ``[]`` when the file is absent.
    A row that does not parse (the last line of a CSV a run is still writing) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
            except (TypeError, ValueError):
                continue
    return rows


def elapsed_at(train: list[dict], step: float) -> float | None:
    """Seconds of training at ``step``, interpolated between the logged training rows around it
    (evaluation rows carry steps only, and an evaluation need not fall on a logged step); ``None``
    outside the logged steps."""
    logged = sorted((row["step"], row["elapsed_s"]) for row in train if "step" in row and "elapsed_s" in row)
    for (step_before, before), (step_after, after) in zip(logged, logged[1:]):
        if step_before <= step <= step_after:
            share = (step - step_before) / (step_after - step_before) if step_after > step_before else 0.0
            return before + share * (after - before)
    return logged[0][1] if len(logged) == 1 and logged[0][0] == step else None


def plot_runs(runs: dict[str, Path], png: str | Path, title: str) -> Path:
    """Training loss and validation ``eval_bits_per_token`` of several runs (``{label: run_dir}``),
    in bits per token, against optimiser steps (left) and seconds of training (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    by_step, by_time = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    colours = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple")
    key = "eval_bits_per_token"
    for (name, run), colour in zip(runs.items(), colours):
        train, evaluation = read_rows(Path(run) / "train.csv"), read_rows(Path(run) / "eval.csv")
        if train:
            bits = [row["loss"] / math.log(2) for row in train]
            by_step.plot([row["step"] for row in train], bits, color=colour, alpha=0.3, linewidth=0.8,
                         label=f"{name} train")
            by_time.plot([row["elapsed_s"] for row in train], bits, color=colour, alpha=0.3, linewidth=0.8,
                         label=f"{name} train")
        evaluation = [row for row in evaluation if key in row]
        if evaluation:
            by_step.plot([row["step"] for row in evaluation], [row[key] for row in evaluation], "o-",
                         color=colour, label=f"{name} validation")
            points = [(seconds, row[key]) for row in evaluation
                      if (seconds := elapsed_at(train, row["step"])) is not None]
            if points:
                by_time.plot(*zip(*points), "o-", color=colour, label=f"{name} validation")
    for axes, label in ((by_step, "optimiser step"), (by_time, "seconds of training")):
        axes.set_xlabel(label)
        axes.set_ylabel("bits per token")
        axes.grid(True, linewidth=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png)
    return Path(png)


def plot_run(run_dir: str | Path, png: str | Path | None = None, title: str | None = None) -> Path:
    """Write the curve of the run in ``run_dir`` to ``png`` (default ``run_dir/curve.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    train_csv = run_dir / "train.csv"
    if not train_csv.is_file():
        raise FileNotFoundError(f"{train_csv} does not exist: is {run_dir} a heron train run directory?")
    train = [row for row in read_rows(train_csv) if "step" in row and "loss" in row]
    if not train:
        raise ValueError(f"{train_csv} has no logged steps yet")
    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    loss_axis.plot([row["step"] for row in train], [row["loss"] for row in train], color="tab:blue",
                   linewidth=1, label="training loss")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (nats per scored token)")
    handles, labels = loss_axis.get_legend_handles_labels()
    evaluation = [row for row in read_rows(run_dir / "eval.csv") if "step" in row]
    if evaluation:
        metric_axis = loss_axis.twinx()
        names = list(dict.fromkeys(name for row in evaluation for name in row if name != "step"))
        for name in names:
            points = [(row["step"], row[name]) for row in evaluation if name in row]
            metric_axis.plot(*zip(*points), marker="o", markersize=3, linewidth=1, label=name)
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
    try:
        print(plot_run(args.run_dir, args.png, args.title))
    except (ValueError, OSError) as exc:  # the message says what is missing; no traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

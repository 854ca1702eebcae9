"""Run logging: CSV files, TensorBoard and a tqdm progress bar (rank 0 only).

``train.csv`` gets one row per logged step (loss, learning rate, gradient norm, throughput),
``eval.csv`` one row per evaluation with the task's metrics. On ``--resume`` rows written after
the checkpoint's step (by a run that crashed before its next checkpoint) are dropped, so the
files always describe the trajectory that the checkpoint continues.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s")


def _truncate_csv(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body if row and int(row[0]) <= last_step]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)


class RunLogger:
    def __init__(self, out: Path, *, enabled: bool, total_steps: int, start_step: int,
                 progress: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.train_path = out / "train.csv"
        self.eval_path = out / "eval.csv"
        self.bar = None
        self.writer = None
        self.eval_fields: list[str] | None = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        for path in (self.train_path, self.eval_path):
            if start_step == 0:
                # a fresh run: logs left by a run that died before its first checkpoint are not
                # this run's (their metric columns may even differ)
                path.unlink(missing_ok=True)
            else:
                _truncate_csv(path, start_step)
        if self.eval_path.is_file():
            with open(self.eval_path, newline="", encoding="utf-8") as handle:
                self.eval_fields = next(csv.reader(handle), None)
        if not self.train_path.is_file():
            with open(self.train_path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(TRAIN_FIELDS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional ([logging] extra)
                print("tensorboard is not installed: logging to CSV only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1)
        self.total_steps = total_steps
        self.print_rows = False
        if progress:
            try:
                from tqdm import tqdm
            except ImportError:  # a bare GPU image may lack tqdm: print the logged rows instead
                self.print_rows = True
            else:
                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                                file=sys.stderr)

    def log_train(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = [step] + [values[name] for name in TRAIN_FIELDS[1:]]
        with open(self.train_path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(row)
        if self.writer is not None:
            for name in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.writer.add_scalar(f"train/{name}", values[name], step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_s']:.3g}",
                                 lr=f"{values['lr']:.2e}", refresh=False)
        elif self.print_rows:
            self.message(f"step {step}/{self.total_steps}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                         f"{values['tokens_per_s']:.3g} tokens/s, {values['elapsed_s']:.0f} s")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        names = sorted(metrics)
        if self.eval_fields is None:
            self.eval_fields = ["step", *names]
            with open(self.eval_path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self.eval_fields)
        elif self.eval_fields[1:] != names:
            raise ValueError(
                f"evaluation metrics changed from {self.eval_fields[1:]} to {names}; "
                f"use a fresh --out directory"
            )
        with open(self.eval_path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([step, *(metrics[name] for name in names)])
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval/{name}", value, step)
        self.message(f"step {step}: " + ", ".join(f"{name} {value:.6g}" for name, value in sorted(metrics.items())))

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self, final_message: str | None = None) -> None:
        """Close the progress bar, then print ``final_message`` under it (a message written while
        the bar is open lands above the bar's last state, or on its line when stderr is a pipe)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if final_message is not None:
            self.message(final_message)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

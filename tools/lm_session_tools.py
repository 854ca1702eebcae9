"""Helpers of tools/gpu_lm_session.sh (run with PYTHONPATH at the repository; no installed package needed).

    python3 tools/lm_session_tools.py steps PROBE_DIR BUDGET_SECONDS [--safety 0.85] [--min 50]
            [--max-passes P --tokens-per-step N]
        steps for a cosine schedule that fits BUDGET_SECONDS, from a probe run's train.csv; with
        --max-passes at most P passes over the demo corpus's training split at N tokens per step
    python3 tools/lm_session_tools.py export RUN_DIR
        write RUN_DIR/model.safetensors (+ tokenizer.json for abc) from RUN_DIR/checkpoint.pt where
        it is missing (runs from before the trainer exported on every stop; today a run stopped by
        its time limit or a signal exports one itself)
    python3 tools/lm_session_tools.py params NAME=TASK:ARGS...
        parameter counts of models (not used by the session; for sizing)
    python3 tools/lm_session_tools.py report --out DIR NAME=RUN_DIR[,COPY_JSON] ...
        copy-ability table (results.md/json), combined curves.png and the runs' CSVs for issue 7
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def cmd_steps(args) -> int:
    from heron.train.plot import read_rows

    rows = read_rows(Path(args.probe) / "train.csv")
    if len(rows) < 3:
        print(f"probe {args.probe}: fewer than 3 logged rows", file=sys.stderr)
        return 1
    # skip the first logged row: it holds the extension build / warm-up of the first steps
    first, last = rows[1], rows[-1]
    seconds_per_step = (last["elapsed_s"] - first["elapsed_s"]) / max(last["step"] - first["step"], 1)
    steps = int(args.budget * args.safety / max(seconds_per_step, 1e-6))
    steps = max(args.min, steps // args.round * args.round if steps >= 2 * args.round else steps)
    if args.max:
        steps = min(steps, args.max)
    if args.max_passes:
        if args.tokens_per_step < 1:
            print("steps: --max-passes needs --tokens-per-step", file=sys.stderr)
            return 1
        from heron.data.text import demo_corpus_tokens

        corpus_tokens = int(demo_corpus_tokens("train").size)
        by_passes = int(args.max_passes * corpus_tokens / args.tokens_per_step)
        if by_passes < steps:
            print(f"steps: {steps} -> {by_passes} ({args.max_passes} passes over {corpus_tokens:,} training tokens "
                  f"at {args.tokens_per_step:,} per step)", file=sys.stderr)
            steps = max(by_passes, 1)
    print(f"{steps} {seconds_per_step:.4f}")
    return 0


def cmd_export(args) -> int:
    run = Path(args.run)
    if (run / "model.safetensors").is_file():
        print(f"{run}/model.safetensors exists")
        return 0
    from heron.train.checkpoint import load_checkpoint
    from heron.train.config import TrainConfig
    from heron.train.tasks import get_task

    payload = load_checkpoint(run / "checkpoint.pt")
    config = TrainConfig.from_dict(payload["config"])
    setup = get_task(config.task).build(config)
    setup.model.load_state_dict(payload["model"])
    path = setup.export(setup.model, run)
    (run / "EXPORTED_FROM_CHECKPOINT").write_text(
        f"exported from checkpoint.pt at step {payload['step']} of {config.steps} (time limit reached)\n")
    print(f"exported {path} from checkpoint.pt (step {payload['step']} of {config.steps})")
    return 0


def cmd_report(args) -> int:
    from heron.train.plot import plot_runs, read_rows

    out = Path(args.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    runs: dict[str, Path] = {}
    table = []
    for item in args.runs:
        name, _, rest = item.partition("=")
        run, _, copy_json = rest.partition(",")
        run = Path(run)
        runs[name] = run
        slug = run.name
        train, evaluation = read_rows(run / "train.csv"), read_rows(run / "eval.csv")
        for csv_name in ("train.csv", "eval.csv"):
            if (run / csv_name).is_file():
                shutil.copyfile(run / csv_name, out / "curves" / f"{slug}-{csv_name}")
        copy = json.loads(Path(copy_json).read_text()) if copy_json and Path(copy_json).is_file() else None
        config = {}
        log = run / "session.log"
        parameters = None
        if (run / "session-plan.json").is_file():
            config = json.loads((run / "session-plan.json").read_text())
        if log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                if " parameters, " in line and "heron train" in line:
                    try:
                        parameters = int(line.split(": ", 1)[1].split(" parameters")[0].replace(",", ""))
                    except (IndexError, ValueError):
                        pass
        last_eval = evaluation[-1] if evaluation else {}
        best_eval = min(evaluation, key=lambda row: row.get("eval_bits_per_token", float("inf"))) if evaluation else {}
        table.append({
            "name": name, "run": str(run),
            "parameters": copy["parameters"] if copy else parameters,
            "steps": int(train[-1]["step"]) if train else None,
            "planned_steps": config.get("steps"),
            "training_seconds": train[-1]["elapsed_s"] if train else None,
            "final_train_loss": train[-1]["loss"] if train else None,
            "validation_bits_per_token": last_eval.get("eval_bits_per_token"),
            "validation_next_token_accuracy": last_eval.get("next_token_accuracy"),
            "best_validation_bits_per_token": best_eval.get("eval_bits_per_token"),
            "best_validation_step": int(best_eval["step"]) if "step" in best_eval else None,
            "tokens": int(train[-1]["tokens"]) if train and "tokens" in train[-1] else None,
            "exported_from_checkpoint": (run / "EXPORTED_FROM_CHECKPOINT").is_file(),
            "copy_token_accuracy": copy["token_accuracy"] if copy else None,
            "copy_exact_share": copy["exact_share"] if copy else None,
            "copy_trials": copy["trials"] if copy else None,
            # heron train text --task-option copy_trials=N: the copy metric at every evaluation
            "copy_during_training": [(int(row["step"]), row["copy_token_accuracy"]) for row in evaluation
                                     if row.get("copy_token_accuracy") is not None],
            "seconds_per_step_probe": config.get("seconds_per_step"),
            "command": config.get("command"),
        })
    plot_runs(runs, out / "curves.png", args.title)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    summary = {"date": date, "device": args.device, "models": table}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = [f"# {args.title} ({date}, {args.device})", "",
             ("| model | parameters | steps (planned) | tokens | training s | val bits/token, final | best (step) "
              "| copy token accuracy | exact trials |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        best = (f"{fmt(r['best_validation_bits_per_token'], '.4f')} ({fmt(r['best_validation_step'], 'd')})"
                if r["best_validation_bits_per_token"] is not None else "n/a")
        lines.append(f"| {r['name']} | {fmt(r['parameters'], ',')} | {fmt(r['steps'], 'd')} ({fmt(r['planned_steps'], 'd')})"
                     f"{' stopped by time limit' if r['exported_from_checkpoint'] else ''} | {fmt(r['tokens'], ',')} | "
                     f"{fmt(r['training_seconds'], '.0f')} | "
                     f"{fmt(r['validation_bits_per_token'], '.4f')} | {best} | {fmt(r['copy_token_accuracy'], '.2%')} | "
                     f"{fmt(r['copy_exact_share'], '.1%')} |")
    lines.append("")
    for r in table:
        if r["copy_token_accuracy"] is not None and "ROSA" in r["name"]:
            verdict = "PASS" if r["copy_token_accuracy"] >= 0.95 else "FAIL"
            lines.append(f"- {verdict}: {r['name']} copy token accuracy >= 95% ({r['copy_token_accuracy']:.2%}, "
                         f"{r['copy_trials']} trials)")
    for r in table:
        if r["copy_during_training"]:
            points = ", ".join(f"{step}: {accuracy:.1%}" for step, accuracy in r["copy_during_training"])
            lines.append(f"- {r['name']}, copy token accuracy at the evaluations (step: accuracy, their own "
                         f"trials): {points}")
    lines += ["", "![curves](curves.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("steps")
    steps.add_argument("probe")
    steps.add_argument("budget", type=float)
    steps.add_argument("--safety", type=float, default=0.85)
    steps.add_argument("--min", type=int, default=20)
    steps.add_argument("--max", type=int, default=0)
    steps.add_argument("--round", type=int, default=50)
    steps.add_argument("--max-passes", type=float, default=0.0,
                       help="cap: at most this many passes over the demo corpus's training split (0: none)")
    steps.add_argument("--tokens-per-step", type=int, default=0, help="batch x seq_len, for --max-passes")
    steps.set_defaults(func=cmd_steps)
    export = sub.add_parser("export")
    export.add_argument("run")
    export.set_defaults(func=cmd_export)
    report = sub.add_parser("report")
    report.add_argument("--out", required=True)
    report.add_argument("--title", default="Copy ability (issue 7): LMs on the demo corpus")
    report.add_argument("--device", default="")
    report.add_argument("runs", nargs="+")
    report.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Turn two finished `heron train abc` runs into the committed music examples.

    PYTHONPATH=$PWD python3 examples/music/make_examples.py \
        --rosa runs/abc-rosa --rwkv7 runs/abc-rwkv7 --out examples/music

Reads each run's `model.safetensors`, `tokenizer.json`, `train.csv` and `eval.csv` and writes
into `--out`:

- `results.json` and `results.md`: per model the parameter count, training steps and time,
  validation bits per token, and `heron music eval` on `--n-eval` generated tunes (parse share,
  meter check against the validation tunes, 2-bar repetition), with the issue's criteria;
- `curves.png` (training loss and validation bits per token of both models against steps, and
  against wall-clock seconds) and the two runs' CSV files under `curves/`;
- `samples/`: `--samples` tunes of the ROSA model (`.abc`, `.mid`, `.png`) for the keys and
  meters of `--prompts`; tunes music21 cannot parse are not kept, and `results.json` says how
  many were generated to keep that many;
- `checkpoint/`: the ROSA model and its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rosa", required=True, type=Path, help="run folder of examples/music/config.toml")
    parser.add_argument("--rwkv7", required=True, type=Path, help="run folder of examples/music/config_rwkv7.json")
    parser.add_argument("--out", default=Path("examples/music"), type=Path)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompts", default="G:6/8,D:2/4,A:3/4,G:4/4,D:6/8,Em:6/8,Ador:4/4,G:2/2",
                        help="comma-separated KEY:METER pairs, used in turn for the samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=1024, help="tokens per generated tune at most")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="bits per token on 32 tunes only (smoke tests)")
    args = parser.parse_args(argv)

    import torch

    from heron.data.music import ABCTokenizer, load_dataset
    from heron.models.loading import load
    from heron.music.evaluate import evaluate_music
    from heron.music.generate import generate_tunes, make_prompt
    from heron.music.render import write_tune
    from heron.train.plot import plot_runs, read_rows

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dataset = load_dataset()
    runs = {"RWKV-8 + ROSA": args.rosa, "RWKV-7 only": args.rwkv7}
    for run in runs.values():
        if not (run / "model.safetensors").is_file():
            # the trainer exports the model when the schedule ends and when a run stops early
            # (time limit, Ctrl-C); without it the run is still going or was killed
            raise SystemExit(
                f"{run}: no model.safetensors, so the run has not finished or stopped cleanly; "
                f"continue it with `heron train abc --resume --out {run}`."
            )
    results: dict[str, dict] = {}
    for name, run in runs.items():
        tokenizer = ABCTokenizer.load(run / "tokenizer.json")
        model = load(run / "model.safetensors", device=device)
        train = read_rows(run / "train.csv")
        started = time.perf_counter()
        evaluation = evaluate_music(model, tokenizer, dataset, n=args.n_eval, seed=args.seed, device=device,
                                    max_tokens=args.max_tokens,
                                    out_dir=run / "music-eval", bits_max_tunes=32 if args.quick else None)
        results[name] = {
            "run": str(run),
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": int(train[-1]["step"]) if train else None,
            "training_seconds": train[-1]["elapsed_s"] if train else None,
            "evaluation_seconds": time.perf_counter() - started,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
            **evaluation.to_dict(),
        }
    rosa, rwkv7 = results["RWKV-8 + ROSA"], results["RWKV-7 only"]
    criteria = {
        "parse share >= 0.9 (ROSA model)": rosa["generated_parse_share"] >= 0.9,
        "meter share ratio >= 0.9 (ROSA model)": (rosa["meter_share_ratio"] or 0) >= 0.9,
        "ROSA validation bits < RWKV-7 validation bits": rosa["validation_bits_per_token"] < rwkv7["validation_bits_per_token"],
        "training <= 10 minutes each": all((r["training_seconds"] or 0) <= 600 for r in results.values()),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves").mkdir(exist_ok=True)
    for name, run in (("rosa", args.rosa), ("rwkv7", args.rwkv7)):
        for table in ("train.csv", "eval.csv"):
            if (run / table).is_file():
                shutil.copyfile(run / table, args.out / "curves" / f"{name}-{table}")
    plot_runs(runs, args.out / "curves.png", "ABC folk tunes: RWKV-8 + ROSA vs RWKV-7 only (equal parameters)")

    # samples of the ROSA model: keep the first `--samples` tunes that music21 parses
    tokenizer = ABCTokenizer.load(args.rosa / "tokenizer.json")
    model = load(args.rosa / "model.safetensors", device=device)
    pairs = [pair.split(":", 1) for pair in args.prompts.split(",")]
    samples_dir = args.out / "samples"
    if samples_dir.exists():
        shutil.rmtree(samples_dir)
    kept = attempts = 0
    seed = args.seed
    while kept < args.samples and attempts < 8 * args.samples:
        key, meter = pairs[kept % len(pairs)]
        prompt = make_prompt(tokenizer, key=key, meter=meter)
        (tune,) = generate_tunes(model, tokenizer, [prompt], seed=seed, device=device, max_tokens=args.max_tokens)
        seed += 1
        attempts += 1
        title = f"Heron sample {kept + 1} ({prompt.key}, {prompt.meter}, seed {seed - 1})"
        stem = f"sample_{kept + 1:02d}"
        rendered = write_tune(tune.abc(number=kept + 1, title=title), samples_dir, stem, title=title)
        if rendered.parsed:
            kept += 1
        else:
            rendered.abc.unlink()
    checkpoint_dir = args.out / "checkpoint"
    checkpoint_dir.mkdir(exist_ok=True)
    shutil.copyfile(args.rosa / "model.safetensors", checkpoint_dir / "model.safetensors")
    shutil.copyfile(args.rosa / "tokenizer.json", checkpoint_dir / "tokenizer.json")

    summary = {"models": results, "criteria": criteria, "samples": {"kept": kept, "generated": attempts},
               "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [
        ("parameters", "parameters", "{:,}"), ("steps", "steps", "{}"), ("training seconds", "training_seconds", "{:.0f}"),
        ("validation bits/token", "validation_bits_per_token", "{:.4f}"),
        ("generated tunes parsing", "generated_parse_share", "{:.3f}"),
        ("meter check, generated", "generated_meter_share", "{:.3f}"),
        ("meter check, validation", "validation_meter_share", "{:.3f}"),
        ("meter share ratio", "meter_share_ratio", "{:.3f}"),
        ("2-bar repetition, generated", "generated_repetition_share", "{:.3f}"),
        ("2-bar repetition, validation", "validation_repetition_share", "{:.3f}"),
    ]
    lines = [f"# Music results ({summary['date']}, {rosa['device']}{', QUICK' if args.quick else ''})", "",
             "| | RWKV-8 + ROSA | RWKV-7 only |", "|---|---|---|"]
    for label, key, fmt in rows:
        cells = [fmt.format(r[key]) if r[key] is not None else "n/a" for r in (rosa, rwkv7)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in criteria.items()),
              f"- samples: {kept} kept of {attempts} generated (only tunes music21 parses are kept)", "",
              "![curves](curves.png)", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

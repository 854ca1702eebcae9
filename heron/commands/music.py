"""``heron music``: generate folk tunes, evaluate a music model, inspect the ABC dataset.

    heron music generate --checkpoint runs/abc/model.safetensors --key G --meter 6/8 --n 8 --out tunes/
    heron music eval --checkpoint runs/abc/model.safetensors --n 64 --out eval/
    heron music data [--rebuild] [--show 2]

The tokenizer is rebuilt from the dataset (deterministic for the pinned music21), unless a
``tokenizer.json`` lies beside the checkpoint or ``--tokenizer`` names one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heron.commands import check_output_path

__all__ = ["add_parser"]


def _int_at_least(minimum: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return convert


_positive_int = _int_at_least(1)
# a negative --show would slice from the end ([:-2]) and print almost the whole split
_non_negative_int = _int_at_least(0)


def _check_out_dir(name: str | None) -> None:
    if name is not None:
        check_output_path(name, "--out", folder=True)


def _load_model(path: str, device):
    """The model of a checkpoint file (any layout ``heron.models.load`` reads)."""
    from heron.models.loading import load

    return load(path, device=device)


def _saved_tokenizer(checkpoint: str, tokenizer_path: str | None):
    """The tokenizer of --tokenizer, else the ``tokenizer.json`` beside the checkpoint, else None."""
    from heron.data.music import ABCTokenizer

    if tokenizer_path:
        try:
            return ABCTokenizer.load(tokenizer_path)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"--tokenizer {exc}") from None
    beside = Path(checkpoint).with_name("tokenizer.json")
    if beside.is_file():
        return ABCTokenizer.load(beside)
    return None


def _check_sampling(args) -> None:
    """Bad --temperature / --top-p fail before the corpus and the model are loaded."""
    from heron.generate.sampling import SamplingOptions

    try:
        SamplingOptions(temperature=args.temperature, top_p=args.top_p)
    except ValueError as exc:
        raise ValueError(f"--{str(exc).replace('_', '-')}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model file (heron safetensors or official .pth)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer JSON (default: beside the checkpoint, else rebuilt from the corpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-tokens", type=_positive_int, default=1024, help="tokens per tune at most")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--cache-dir", default=None, help="where the extracted corpus is cached")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _generate(args) -> int:
    from heron.commands import resolve_device
    from heron.data.music import build_tokenizer, load_dataset
    from heron.music.generate import generate_tunes, make_prompt
    from heron.music.render import write_tune

    _check_sampling(args)
    device = resolve_device(args.device)
    _check_out_dir(args.out)
    tokenizer = _saved_tokenizer(args.checkpoint, args.tokenizer)
    if tokenizer is None:
        tokenizer = build_tokenizer(load_dataset(cache_dir=args.cache_dir))
    prompt = make_prompt(tokenizer, key=args.key, meter=args.meter, unit_length=args.unit_length)  # validated before loading
    model = _load_model(args.checkpoint, device)
    tunes = generate_tunes(
        model, tokenizer, [prompt] * args.n, seed=args.seed, temperature=args.temperature,
        top_p=args.top_p, max_tokens=args.max_tokens, device=device,
    )
    out = Path(args.out)
    parsed = 0
    for index, tune in enumerate(tunes, start=1):
        title = f"Heron tune {index} ({prompt.key}, {prompt.meter}, seed {args.seed})"
        rendered = write_tune(tune.abc(number=index, title=title), out, f"tune_{index:02d}", title=title)
        parsed += rendered.parsed
        status = ("ok" if not rendered.error else rendered.error) if rendered.parsed else f"not parsed ({rendered.error})"
        ending = "ended" if tune.finished else (
            "stopped at --max-tokens, cut back to its last bar line" if tune.cut_at_bar
            else "stopped at --max-tokens, no bar line to cut back to")
        print(f"{rendered.abc}: {tune.tokens} tokens, {ending}, {status}")
    print(f"{parsed}/{len(tunes)} tunes parse with music21; files in {out}")
    return 0


def _evaluate(args) -> int:
    from heron.commands import resolve_device
    from heron.data.music import build_tokenizer, load_dataset
    from heron.music.evaluate import evaluate_music

    _check_sampling(args)
    device = resolve_device(args.device)
    _check_out_dir(args.out)
    tokenizer = _saved_tokenizer(args.checkpoint, args.tokenizer)
    dataset = load_dataset(cache_dir=args.cache_dir)
    if tokenizer is None:
        tokenizer = build_tokenizer(dataset)
    model = _load_model(args.checkpoint, device)
    result = evaluate_music(
        model, tokenizer, dataset, n=args.n, seed=args.seed, temperature=args.temperature, top_p=args.top_p,
        max_tokens=args.max_tokens, device=device, out_dir=args.out, compute_bits=not args.no_bits,
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _data(args) -> int:
    from heron.data.music import build_tokenizer, load_dataset, token_stream
    from heron.music.analysis import meter_check_of_bars, read_bars, repetition_statistic

    dataset = load_dataset(cache_dir=args.cache_dir, rebuild=args.rebuild)
    tokenizer = build_tokenizer(dataset)
    report = dataset.report
    print(f"music21 {dataset.music21_version}: {report.files} files, {report.tunes_read} tunes read, "
          f"{report.kept} kept, {report.duplicates} duplicates dropped, rejected {report.rejected}")
    for name in ("train", "validation"):
        tunes = dataset.split(name)
        tokens = token_stream(tunes, tokenizer).numel()
        line = f"{name}: {len(tunes)} tunes, {tokens} tokens"
        if name == "validation" or args.train_stats:  # reading 12,000 tunes' bars takes ~20 s
            bars = [read_bars(t.text) for t in tunes]
            meter = meter_check_of_bars(bars)
            repetition = repetition_statistic(bars)
            line += (f", meter check {meter.share:.4f} of {meter.counted} bars, "
                     f"2-bar repetition {repetition.share:.4f} of {repetition.phrases} phrases")
        print(line)
    print(f"vocabulary: {tokenizer.vocab_size} tokens")
    if args.tokenizer_out:
        tokenizer.save(args.tokenizer_out)
        print(f"tokenizer written to {args.tokenizer_out}")
    for tune in dataset.validation[: args.show]:
        print(f"\n% {tune.source} ({tune.title})\n{tune.text}")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("music", help="generate and evaluate folk tunes in ABC notation")
    actions = parser.add_subparsers(dest="music_command", metavar="ACTION", required=True)

    generate = actions.add_parser("generate", help="write N tunes (.abc, .mid, .png) for a key and meter")
    _common(generate)
    generate.add_argument("--key", default="G", help="e.g. G, D, Em, Ador (must occur in the training tunes)")
    generate.add_argument("--meter", default="6/8", help="e.g. 6/8, 3/4, 2/4, 4/4, C, C|")
    generate.add_argument("--unit-length", default=None, help="L: field, default from the meter (ABC rule)")
    generate.add_argument("--n", type=_positive_int, default=8, help="number of tunes")
    generate.add_argument("--out", required=True, help="output folder")
    generate.set_defaults(func=_generate)

    evaluate = actions.add_parser("eval", help="validation bits/token; parse, meter and repetition statistics")
    _common(evaluate)
    evaluate.add_argument("--n", type=_positive_int, default=64, help="number of tunes to generate")
    evaluate.add_argument("--out", default=None, help="folder for eval.json and the generated tunes")
    evaluate.add_argument("--no-bits", action="store_true", help="skip validation bits per token")
    evaluate.set_defaults(func=_evaluate)

    data = actions.add_parser("data", help="build (or rebuild) and summarise the ABC dataset")
    data.add_argument("--rebuild", action="store_true", help="ignore the cache and extract again")
    data.add_argument("--show", type=_non_negative_int, default=0, help="print this many validation tunes (default 0)")
    data.add_argument("--train-stats", action="store_true", help="also the meter and repetition figures of the training split")
    data.add_argument("--tokenizer-out", default=None, help="write the tokenizer JSON here")
    data.add_argument("--cache-dir", default=None)
    data.add_argument("--debug", action="store_true")
    data.set_defaults(func=_data)

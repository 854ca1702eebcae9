"""`heron convert SOURCE DEST`: convert checkpoints between the official layouts and ours.

`--to heron` (default) writes our safetensors format (config JSON in its metadata) from any
official checkpoint or heron file; `--to official` writes the model's natural official layout
as a `.pth` state dict (`task` for the task models, `rc00` for RWKV-8 LMs, `rosa_lm` for
the pure ROSA LM, `counting` for the counting toys); `--to task|rc00|rosa_lm|counting` forces one.
A 4-bit ROSA model's official file needs `4bit` in its name: official files do not record the
bit width, and loading reads it from the name.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert checkpoints between the official layouts and heron safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="official .pth or heron .safetensors file")
    parser.add_argument("destination", help="file to write")
    parser.add_argument("--to", default="heron", choices=["heron", "official", "task", "rc00", "rosa_lm", "counting"],
                        help="output format (default heron)")
    parser.add_argument("--rosa-bits", type=int, choices=[1, 4], default=None,
                        help="ROSA-QKV bit width of an official file (shapes cannot tell; default from the name, else 1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from heron.models.loading import convert, load

    written = convert(args.source, args.destination, to=args.to, rosa_bits=args.rosa_bits)
    model = load(written, rosa_bits=args.rosa_bits)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {written} ({args.to}): {type(model).__name__}, {parameters:,} parameters, config {model.config}")
    return 0

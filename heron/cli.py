"""The ``heron`` command line: ``python -m heron SUBCOMMAND ...``.

Each subcommand lives in ``heron/commands/<name>.py`` and exposes ``add_parser(subparsers)``
(which registers its arguments and sets ``func``); they are imported lazily so that
``heron --help`` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module under heron.commands
COMMANDS = {
    "demo": "demo",
    "train": "train",
    "eval": "eval",
    "generate": "generate",
    "music": "music",
    "convert": "convert",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heron",
        description="RWKV-8 \"Heron\" with ROSA: train, evaluate and generate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(_subparsers=subparsers)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"(run `heron {name} --help`)")
            continue
        try:
            module = importlib.import_module(f"heron.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("heron.commands"):
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help()
        return 0 if not argv else 2
    if unknown:  # reported by the subcommand's parser, whose usage line is the one that helps
        args._subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if getattr(args, "debug", False):
            raise
        print(f"heron {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a bad argument or file raises: one line and exit 2 (``--debug`` shows the traceback).
    OSError covers files that exist where a folder is wanted and the like."""
    errors: list[type[BaseException]] = [ValueError, TypeError, OSError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"  # not "[Errno 21] ..."
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())

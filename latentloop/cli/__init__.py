"""The `latentloop` command. Each module in this package that defines `register(subparsers)`
adds one subcommand; heavy imports happen inside the command, so `--help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

EPILOG = """examples:
  latentloop demo                             # the bundled model thinking longer, in a minute
  latentloop info huginn-0125                 # parameters, FLOPs and depth per iteration count
  latentloop generate default "73BACbb6baa9Bbb7b=" --steps 32
  latentloop <command> --help                 # every command documents its options
"""


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep hand-written examples as they are and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentloop",
        description="Recurrent-depth language models: run, train, evaluate and inspect them.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"latentloop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

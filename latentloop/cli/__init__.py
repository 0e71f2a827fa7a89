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
    except (ValueError, OSError, FloatingPointError) as err:  # bad input, files, disks: one line, no traceback
        print(f"latentloop {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(err: BaseException) -> str:
    """The error's message on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def check_out_dir(path: str, flag: str = "--out") -> None:
    """An output directory that is an existing file is named before any work is done."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path} is a file; pass a directory (it is created if missing)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so no directory can be made under it")
            break


def check_device(name: str | None, flag: str = "--device") -> str:
    """A torch device string that exists on this machine; None = cuda if available, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available on this machine; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name}: only cpu, cuda and mps devices are supported")
    return name

"""`latentloop info MODEL`: configuration, parameters by part, and cost per iteration count."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """Show a model's configuration, its parameters by part, and for several iteration
counts the materialized parameters, forward FLOPs per token and effective depth.
MODEL is a preset name, a checkpoint directory, 'default' or a hub id. Nothing is allocated:
the counts come from the meta device.

examples:
  latentloop info huginn-0125
  latentloop info small --steps 1 8 32
  latentloop info path/to/checkpoint --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("info", help="parameters, FLOPs and depth of a model", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("model", help="preset name, checkpoint directory, 'default' or hub id")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64], help="iteration counts")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def resolve_config(model: str):
    from ..checkpoint import load_config
    from ..config import PRESETS

    return PRESETS[model] if model in PRESETS else load_config(model)


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.1f}{unit}"
    return str(int(n))


def run(args: argparse.Namespace) -> int:
    from ..accounting import count_parameters, depth_table

    if any(r < 1 for r in args.steps):
        raise ValueError(f"--steps must all be >= 1, got {args.steps}")
    config = resolve_config(args.model)
    params = count_parameters(config)
    table = depth_table(config, tuple(args.steps))
    if args.json:
        print(json.dumps({"config": config.to_dict(), "parameters": params.as_dict(), "depth": table}, indent=2))
        return 0
    print(f"model: {args.model}")
    for key, value in config.to_dict().items():
        print(f"  {key:<22}{value}")
    print("\nparameters")
    for part, n in params.as_dict().items():
        note = " (tied to embedding)" if part == "head" and config.tie_embeddings else ""
        print(f"  {part:<12}{n:>16,}  {human(n):>8}{note}")
    print(f"\n  {'iterations':>10}  {'materialized params':>20}  {'FLOPs/token':>12}  {'effective depth':>15}")
    for row in table:
        print(f"  {row['num_steps']:>10}  {human(row['materialized_parameters']):>20}  "
              f"{human(row['flops_per_token']):>12}  {row['effective_depth']:>15}")
    return 0

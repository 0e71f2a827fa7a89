"""`latentloop train RECIPE`: pretrain (or continue) a recurrent-depth model from a recipe file."""

from __future__ import annotations

import argparse

DESCRIPTION = """Train a recurrent-depth model from a recipe (TOML or YAML): model preset and overrides,
data, depth sampling, optimizer, schedule, precision, checkpoints and logging. Every key can be
overridden with --set. The recipe is checked completely before training starts.
Writes OUT/metrics.jsonl, OUT/checkpoints/step-NNNNNN/ (each loadable with load_model) and the
final model in OUT/model. Runs data parallel under torchrun (DDP, or FSDP2 with
--set train.distributed=fsdp).

examples:
  latentloop train recipes/tiny-cpu.toml
  latentloop train recipes/stories-small.toml --set train.steps=200 --set optim.lr=2e-3
  latentloop train recipes/stories-small.toml --out runs/stories --resume     # continue a killed run
  latentloop train recipes/tiny-cpu.toml --set objective.fixed_depth=1        # non-recurrent baseline
  torchrun --nproc-per-node 2 -m latentloop train recipes/tiny-cpu.toml      # data parallel
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("train", help="train a model from a recipe", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("recipe", help="recipe file (.toml, .yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. optim.lr=3e-4 or device=cuda (repeatable)")
    p.add_argument("--out", help="run directory (default: the recipe's `out`)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.recipe import load_recipe
    from ..train.trainer import train

    recipe = load_recipe(args.recipe, args.overrides)
    summary = train(recipe, out=args.out, resume=args.resume, progress=not args.no_progress)
    print(f"final model: {summary['model_dir']}")
    return 0

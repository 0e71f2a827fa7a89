"""`latentloop finetune MODEL CHAT.jsonl`: continue training a checkpoint on conversations."""

from __future__ import annotations

import argparse

DESCRIPTION = """Fine-tune a checkpoint (a directory, 'default' or a hub id such as huginn-0125) on chat
JSONL, one `{"messages": [{"role": ..., "content": ...}, ...]}` per line, rendered in huginn's chat
format with the loss on assistant tokens only, under the same randomized-depth objective as
pretraining. --lora trains low-rank adapters through peft (pip install 'latentloop[lora]') and
writes merged weights. Any recipe key can be set with --set; --recipe starts from a recipe file.

examples:
  latentloop finetune path/to/model chats.jsonl --out runs/ft --steps 200 --lr 1e-4
  latentloop finetune path/to/model chats.jsonl --out runs/ft --lora --set lora.rank=16
  latentloop finetune path/to/model chats.jsonl --out runs/ft --set objective.mean_recurrence=8 \\
      --set data.block_size=512 --set train.precision=bf16
"""


STEPS, LR = 100, 1e-4


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on chat JSONL", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("model", help="checkpoint directory, 'default' or hub id (needs a tokenizer.json)")
    p.add_argument("data", help="chat JSONL with a 'messages' list per line")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--recipe", help="recipe file to start from (its model and data are replaced)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (wins over --recipe's train.steps); default: the recipe's, else {STEPS}")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (wins over --recipe's optim.lr); default: the recipe's, else {LR}")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only (needs peft)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..train.recipe import load_recipe, read_file
    from ..train.trainer import train
    from . import check_out_dir

    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no chat data file {args.data} (data.path: JSONL with a 'messages' list per line)")
    check_out_dir(args.out)
    base = read_file(args.recipe) if args.recipe else {}
    for section in ("train", "optim", "schedule"):
        if not isinstance(base.setdefault(section, {}), dict):
            raise ValueError(f"{args.recipe}: [{section}] must be a table of settings")
    # flags given on the command line win over the recipe; the recipe wins over the defaults
    if args.steps is not None:
        base["train"]["steps"] = args.steps
    if args.lr is not None:
        base["optim"]["lr"] = args.lr
    base["train"].setdefault("steps", STEPS)
    base["optim"].setdefault("lr", LR)
    steps = base["train"]["steps"]
    if isinstance(steps, int) and not isinstance(steps, bool):
        base["schedule"].setdefault("warmup_steps", max(1, steps // 20))
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    base["model"] = {**base.get("model", {}), "init_from": model}
    base["data"] = {**base.get("data", {}), "source": "chat", "path": str(Path(args.data).resolve())}
    if args.lora:
        base.setdefault("lora", {})["enabled"] = True
    recipe = load_recipe(None, args.overrides, base=base)
    summary = train(recipe, out=args.out, resume=args.resume, progress=not args.no_progress)
    print(f"final model: {summary['model_dir']}")
    return 0

"""`latentloop data prepare`: text sources -> packed token shards for `latentloop train`."""

from __future__ import annotations

import argparse

DESCRIPTION = """Tokenize text sources into packed shards of block_size + 1 token ids (uint16 when the
vocabulary fits, else uint32), documents separated by <|end_text|>, every Nth block held out for
validation, one mixture weight per source. Sources are PATH[:WEIGHT[:NAME]] with PATH a .txt
(documents split on <|endoftext|>), .jsonl (--text-field) or .parquet file. Resumable: run the same
command again after an interruption and finished shards are kept. The tokenizer is copied into OUT.

examples:
  latentloop data prepare ../shared/data/tinystories-sample/tinystories_sample.txt \\
      --tokenizer tok --out data/stories --block-size 256
  latentloop data prepare stories.txt:3 shakespeare.txt:1:plays --tokenizer tok --out data/mix --block-size 512
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("data", help="prepare token shards for training", description=DESCRIPTION,
                       formatter_class=Formatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("prepare", help="tokenize text into packed shards", description=DESCRIPTION,
                           formatter_class=Formatter)
    t.add_argument("sources", nargs="+", help="PATH[:WEIGHT[:NAME]]")
    t.add_argument("--tokenizer", required=True, help="tokenizer.json or a directory holding one")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--block-size", type=int, default=256, help="tokens per training row (+1 stored)")
    t.add_argument("--val-every", type=int, default=20, help="hold out every Nth block for validation")
    t.add_argument("--dtype", choices=["uint16", "uint32"], help="token dtype (default: smallest that fits)")
    t.add_argument("--text-field", default="text", help="field holding the text in JSONL/parquet")
    t.add_argument("--docs-per-shard", type=int, default=2000, help="documents per shard (the resume unit)")
    t.set_defaults(func=run)


def parse_source(spec: str, text_field: str):
    from ..train.data import TextSource

    parts = spec.split(":")
    for n_meta in (2, 1):
        if len(parts) > n_meta:
            try:
                weight = float(parts[-n_meta])
            except ValueError:
                continue
            name = parts[-1] if n_meta == 2 else ""
            return TextSource(":".join(parts[:-n_meta]), weight=weight, name=name, text_field=text_field)
    return TextSource(spec, text_field=text_field)


def run(args: argparse.Namespace) -> int:
    from ..tokenizer import load_tokenizer
    from ..train.data import prepare_shards
    from . import check_out_dir

    if args.block_size < 1 or args.val_every < 2:
        raise ValueError(f"--block-size must be >= 1 and --val-every >= 2, got {args.block_size} and {args.val_every}")
    if args.docs_per_shard < 1:
        raise ValueError(f"--docs-per-shard must be >= 1, got {args.docs_per_shard}")
    check_out_dir(args.out)
    sources = [parse_source(s, args.text_field) for s in args.sources]
    for source in sources:
        if not source.path.is_file():
            raise FileNotFoundError(f"no such data source: {source.path}")
        if source.weight < 0:
            raise ValueError(f"{source.path}: mixture weight must be >= 0, got {source.weight}")
    tokenizer = load_tokenizer(args.tokenizer)
    meta = prepare_shards(sources, tokenizer, args.out, args.block_size, args.val_every, args.dtype,
                          args.docs_per_shard)
    for name, info in meta["sources"].items():
        rows = {split: sum(n for _, n in info["files"][split]) for split in ("train", "val")}
        print(f"{name}: {rows['train']} train / {rows['val']} val blocks of {meta['block_size'] + 1} tokens "
              f"(weight {info['weight']})")
    print(f"wrote {args.out} ({meta['dtype']}, vocabulary {meta['vocab_size']})")
    return 0

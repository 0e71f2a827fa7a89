"""`latentloop tokenizer train`: a byte-level BPE with huginn's special tokens, from text files."""

from __future__ import annotations

import argparse

DESCRIPTION = """Train a byte-level BPE tokenizer (digits split into single digits, huginn's special
tokens <|begin_text|> <|end_text|> <|begin_header|> <|end_header|> <|end_turn|> <|pad|>) with the
`tokenizers` library and save OUT/tokenizer.json. Inputs are .txt (documents split on
<|endoftext|>), .jsonl (a text field) or .parquet files.

examples:
  latentloop tokenizer train ../shared/data/tinystories-sample/tinystories_sample.txt --vocab-size 4096 --out tok
  latentloop tokenizer train a.txt b.jsonl --text-field body --vocab-size 8192 --out tok
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("tokenizer", help="train a BPE tokenizer", description=DESCRIPTION,
                       formatter_class=Formatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="train a byte-level BPE and save tokenizer.json",
                           description=DESCRIPTION, formatter_class=Formatter)
    t.add_argument("files", nargs="+", help="text sources (.txt, .jsonl, .parquet)")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including special tokens")
    t.add_argument("--out", required=True, help="directory for tokenizer.json")
    t.add_argument("--text-field", default="text", help="field holding the text in JSONL/parquet")
    t.add_argument("--min-frequency", type=int, default=2, help="merges need at least this many occurrences")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from itertools import chain

    from ..tokenizer import train_bpe
    from ..train.data import TextSource
    from . import check_out_dir

    sources = [TextSource(path, text_field=args.text_field) for path in args.files]
    for source in sources:
        if not source.path.is_file():
            raise FileNotFoundError(f"no such text file: {source.path}")
    if args.min_frequency < 1:
        raise ValueError(f"--min-frequency must be >= 1, got {args.min_frequency}")
    check_out_dir(args.out)
    if not any(doc.strip() for s in sources for doc in s.documents()):
        raise ValueError(f"no text to train on in {', '.join(args.files)} "
                         "(the files are empty or hold only whitespace)")
    texts = chain.from_iterable(s.documents() for s in sources)
    tokenizer = train_bpe(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency, show_progress=True)
    path = tokenizer.save(args.out)
    print(f"wrote {path} (vocabulary {tokenizer.vocab_size})")
    return 0

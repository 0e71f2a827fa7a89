"""Shared pieces of the training tests: real-text shards, a micro model recipe, a TOML writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
STORIES = SHARED / "data" / "tinystories-sample" / "tinystories_sample.txt"


def make_shards(directory: Path, block_size: int = 32, chars: int = 60_000, vocab_size: int = 300) -> Path:
    """Tiny Shakespeare (a prefix), a small BPE, shards of block_size + 1 tokens."""
    from latentloop.tokenizer import train_bpe
    from latentloop.train.data import TextSource, prepare_shards

    text = SHAKESPEARE.read_text()[:chars]
    source = directory / "plays.txt"
    source.write_text(text)
    tokenizer = train_bpe(text.split("\n\n"), vocab_size=vocab_size)
    prepare_shards([TextSource(source)], tokenizer, directory / "shards", block_size, val_every=10, progress=False)
    return directory / "shards"


def micro_recipe(data_path: Path | None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A ~30k-parameter model on CPU: steps take milliseconds."""
    recipe = {
        "seed": 0,
        "device": "cpu",
        "model": {"preset": "tiny", "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300,
                  "context_length": 64, "n_prelude": 1, "n_core": 2, "n_coda": 1, "mean_recurrence": 4,
                  "mean_backprop_depth": 2},
        "data": {"path": str(data_path) if data_path else None, "batch_size": 8, "val_batches": 2},
        "optim": {"lr": 3e-3},
        "train": {"steps": 20, "peak_flops": 1e9, "val_every": 10, "log_every": 1, "val_depths": [1, 4, 32]},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values) if isinstance(values, dict) else recipe.update({name: values})
    if recipe["data"]["path"] is None:
        del recipe["data"]["path"]
    return recipe


def write_toml(path: Path, recipe: dict[str, Any]) -> Path:
    """Enough TOML for recipes: scalars and lists at the top, then one table per section."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for section, values in recipe.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]

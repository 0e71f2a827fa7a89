"""Loss and perplexity at a list of depths on token shards or a text file.

The data becomes windows of up to `seq_len + 1` tokens: the rows of a `latentloop data prepare`
directory (its validation split by default, exactly what training validates on), or consecutive
slices of a token file / text that overlap by one token, so every token after the first is
predicted once. Each batch runs `model.forward_depths` once: the prelude is computed a single
time and the recurrence is read out as it passes each requested depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..fsutil import read_text
from ..model import RecurrentDepthLM
from ..tokenizer import Tokenizer
from ..train.data import META_FILE, ShardData, shard_dtype

TOKEN_SUFFIXES = (".bin", ".npy")
TEXT_SUFFIXES = (".txt", ".md", ".text")


def load_tokens(path: str | Path, vocab_size: int, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """A 1-D LongTensor of token ids from a `.bin` file (uint16 when the vocabulary fits, else uint32,
    as `data prepare` writes), a `.npy` array, or a text file encoded with `tokenizer`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such token file or text file: {path}")
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r").reshape(-1)
    elif path.suffix == ".bin":
        array = np.memmap(path, dtype=shard_dtype(vocab_size), mode="r")
    elif path.suffix in TEXT_SUFFIXES:
        if tokenizer is None:
            raise ValueError(f"{path} is text: it needs the model's tokenizer (tokenizer.json beside the weights)")
        try:
            array = np.asarray(tokenizer.encode(read_text(path)), dtype=np.int64)
        except ValueError as err:  # characters a character-level tokenizer cannot spell: name them
            raise ValueError(f"{path}: {err}; this text does not fit the model") from None
    else:
        raise ValueError(
            f"unknown data file format {path.suffix!r} for {path}: pass a `data prepare` directory, token ids "
            f"({', '.join(TOKEN_SUFFIXES)}) or a text file ({', '.join(TEXT_SUFFIXES)})"
        )
    tokens = torch.from_numpy(np.asarray(array, dtype=np.int64))
    if tokens.numel() < 2:
        raise ValueError(f"{path} holds {tokens.numel()} token(s); perplexity needs at least 2")
    return tokens


def windows(tokens: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Consecutive slices of up to `seq_len + 1` tokens that overlap by one token."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return [tokens[i:i + seq_len + 1] for i in range(0, tokens.numel() - 1, seq_len)]


def load_windows(
    path: str | Path, vocab_size: int, seq_len: int, tokenizer: Tokenizer | None = None, split: str = "val"
) -> list[torch.Tensor]:
    """Evaluation windows from a shard directory (its rows of `split`) or a token/text file."""
    path = Path(path)
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {META_FILE}: pass a `latentloop data prepare` directory, "
                                    "a token file or a text file")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = ShardData(path)
        arrays = data.val if split == "val" else data.train
        result = [torch.from_numpy(np.asarray(row, dtype=np.int64)) for source in arrays for a in source for row in a]
        if not result:
            raise ValueError(f"{path} has no {split} rows")
    else:
        result = windows(load_tokens(path, vocab_size, tokenizer), seq_len)
    largest = max(int(w.max()) for w in result)
    if largest >= vocab_size:
        raise ValueError(f"{path} holds token id {largest} but the model's vocabulary has {vocab_size} entries; "
                         "was it tokenized for another model?")
    return result


@torch.no_grad()
def perplexity_at_depths(
    model: RecurrentDepthLM,
    chunks: Sequence[torch.Tensor],
    depths: Sequence[int],
    batch_size: int = 8,
    limit: int | None = None,
    init_scale: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, dict[str, float]]:
    """{depth: {"loss", "perplexity", "tokens"}}: mean next-token cross-entropy over all windows.

    Each window of n tokens predicts its last n - 1; `limit` caps the number of windows (quick runs).
    `init_scale=0` starts the recurrence from zeros, which makes the numbers exact; 1.0 uses the random
    start of training (seeded by `seed`).
    """
    chunks = list(chunks)[:limit]
    longest = max(c.numel() for c in chunks) - 1
    if longest > model.config.context_length:
        raise ValueError(f"windows of {longest} inputs exceed the model's context length {model.config.context_length}")
    by_length: dict[int, list[torch.Tensor]] = {}
    for chunk in chunks:
        by_length.setdefault(chunk.numel(), []).append(chunk)
    batches = [group[i:i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]

    generator = torch.Generator(model.device).manual_seed(seed)
    total = {d: 0.0 for d in depths}
    count = 0
    for batch in tqdm(batches, desc="perplexity", disable=not progress, unit="batch"):
        block = torch.stack(batch).to(model.device)
        outputs = model.forward_depths(block[:, :-1], list(depths), init_scale=init_scale,
                                       labels=block[:, 1:], generator=generator)
        n = block[:, 1:].numel()
        for depth in depths:
            total[depth] += float(outputs[depth].loss) * n
        count += n
    return {
        d: {"loss": total[d] / count, "perplexity": math.exp(total[d] / count), "tokens": count} for d in depths
    }

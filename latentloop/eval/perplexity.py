"""Loss and perplexity at a list of depths on a token stream (token shards or a text file).

Windows of `seq_len + 1` tokens step by `seq_len`, so every token after the first is predicted
exactly once. Each batch runs `model.forward_depths` once: the prelude is computed a single time
and the recurrence is read out as it passes each requested depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..model import RecurrentDepthLM
from ..tokenizer import Tokenizer

SHARD_SUFFIXES = (".bin", ".npy")
TEXT_SUFFIXES = (".txt", ".md", ".text")


def shard_dtype(vocab_size: int) -> np.dtype:
    """Raw `.bin` shards hold uint16 when every id fits, uint32 otherwise (the training data format)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def load_tokens(path: str | Path, vocab_size: int, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """A 1-D LongTensor of token ids from a `.bin`/`.npy` shard, a directory of shards, or a text file."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.suffix in SHARD_SUFFIXES)
        if not shards:
            raise FileNotFoundError(f"{path} holds no token shards ({', '.join(SHARD_SUFFIXES)} files)")
        return torch.cat([load_tokens(p, vocab_size) for p in shards])
    if not path.is_file():
        raise FileNotFoundError(f"no such token shard or text file: {path}")
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r").reshape(-1)
    elif path.suffix == ".bin":
        array = np.memmap(path, dtype=shard_dtype(vocab_size), mode="r")
    elif path.suffix in TEXT_SUFFIXES:
        if tokenizer is None:
            raise ValueError(f"{path} is text: it needs the model's tokenizer (tokenizer.json beside the weights)")
        array = np.asarray(tokenizer.encode(path.read_text(encoding="utf-8")), dtype=np.int64)
    else:
        raise ValueError(
            f"unknown data file format {path.suffix!r} for {path}: pass token shards "
            f"({', '.join(SHARD_SUFFIXES)}) or a text file ({', '.join(TEXT_SUFFIXES)})"
        )
    tokens = torch.from_numpy(np.asarray(array, dtype=np.int64))
    if tokens.numel() < 2:
        raise ValueError(f"{path} holds {tokens.numel()} token(s); perplexity needs at least 2")
    if int(tokens.max()) >= vocab_size:
        raise ValueError(
            f"{path} holds token id {int(tokens.max())} but the model's vocabulary has {vocab_size} entries; "
            "was it tokenized for another model?"
        )
    return tokens


def windows(tokens: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Consecutive slices of up to `seq_len + 1` tokens that overlap by one token."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return [tokens[i:i + seq_len + 1] for i in range(0, tokens.numel() - 1, seq_len)]


@torch.no_grad()
def perplexity_at_depths(
    model: RecurrentDepthLM,
    tokens: torch.Tensor,
    depths: Sequence[int],
    seq_len: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    init_scale: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, dict[str, float]]:
    """{depth: {"loss", "perplexity", "tokens"}}: mean next-token cross-entropy over the stream.

    `limit` caps the number of windows (quick runs). `init_scale=0` starts the recurrence from
    zeros, which makes the numbers exact; 1.0 uses the random start of training (seeded by `seed`).
    """
    seq_len = seq_len or model.config.context_length
    if seq_len > model.config.context_length:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context length {model.config.context_length}")
    chunks = windows(tokens, seq_len)[:limit]
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

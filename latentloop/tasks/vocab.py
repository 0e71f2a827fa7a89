"""A character-level tokenizer for a task's alphabet, saved as a standard `tokenizer.json`."""

from __future__ import annotations

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..tokenizer import BOS, EOS, PAD, Tokenizer

SPECIALS = (BOS, EOS, PAD)


def char_tokenizer(alphabet: str) -> Tokenizer:
    """One token per character of `alphabet` after huginn's begin/end/pad specials (ids 0, 1, 2)."""
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} repeats a character")
    vocab = {token: i for i, token in enumerate([*SPECIALS, *alphabet])}
    backend = Backend(models.WordLevel(vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIALS))
    return Tokenizer(backend)

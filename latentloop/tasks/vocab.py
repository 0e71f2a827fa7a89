"""A character-level tokenizer for a task's alphabet, saved as a standard `tokenizer.json`."""

from __future__ import annotations

from tokenizers import Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from ..tokenizer import BOS, EOS, PAD, Tokenizer

SPECIALS = (BOS, EOS, PAD)


def char_tokenizer(alphabet: str) -> Tokenizer:
    """One token per character of `alphabet` after huginn's begin/end/pad specials (ids 0, 1, 2); a
    prompt encoded with the template (`encode_prompt`) starts with `<|begin_text|>`, as in training."""
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} repeats a character")
    vocab = {token: i for i, token in enumerate([*SPECIALS, *alphabet])}
    backend = Backend(models.WordLevel(vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIALS))
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return Tokenizer(backend)

"""latentloop's `tokenizer.json` as a transformers tokenizer: huginn's special tokens and chat format named,
so `AutoTokenizer`, `pipeline("text-generation")` and lm-eval's `hf` model read a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..tokenizer import ASSISTANT_ROLE, BEGIN_HEADER, BOS, END_HEADER, END_TURN, EOS, PAD, load_tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}" + BEGIN_HEADER
    + "{{ '" + ASSISTANT_ROLE + "' if message['role'] == 'assistant' else message['role'] }}" + END_HEADER
    + "\n\n{{ message['content'] }}" + END_TURN + "{% endfor %}"
    + "{% if add_generation_prompt %}" + BEGIN_HEADER + ASSISTANT_ROLE + END_HEADER + "\n\n{% endif %}"
)


def hf_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a checkpoint (a directory, 'default', a hub id) for transformers: bos/eos/pad set
    to huginn's tokens where the vocabulary has them, left padding (batched generation), and huginn's
    chat template when the vocabulary has its header tokens."""
    tok = load_tokenizer(name_or_path)
    specials = {role: token for role, token in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD))
                if tok.token_to_id(token) is not None}
    chat = all(tok.token_to_id(t) is not None for t in (BOS, BEGIN_HEADER, END_HEADER, END_TURN))
    return PreTrainedTokenizerFast(tokenizer_object=tok.backend, padding_side="left",
                                   chat_template=CHAT_TEMPLATE if chat else None, **specials)


def save_hf_tokenizer(name_or_path: str | Path, directory: str | Path | None = None) -> None:
    """Write transformers' tokenizer files (tokenizer_config.json beside tokenizer.json) into `directory`
    (default: the checkpoint's own), so that `AutoTokenizer.from_pretrained(directory)` knows the specials."""
    hf_tokenizer(name_or_path).save_pretrained(str(directory if directory is not None else name_or_path))

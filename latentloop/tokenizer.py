"""Tokenizers: load `tokenizer.json` (HF tokenizers), huginn's chat format, and byte-level BPE training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from .fsutil import atomic_write_text

BOS, EOS = "<|begin_text|>", "<|end_text|>"
BEGIN_HEADER, END_HEADER, END_TURN, PAD = "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, BEGIN_HEADER, END_HEADER, END_TURN, PAD)
ASSISTANT_ROLE = "Huginn"  # huginn's chat template names the assistant this
TOKENIZER_FILE = "tokenizer.json"
MAX_SHOWN = 20  # unknown characters (and vocabulary entries) an error message lists


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` that knows huginn's special tokens and chat format."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            return cls(Backend.from_file(str(path)))
        except Exception as err:  # the tokenizers library raises a bare Exception with serde's message
            from .fsutil import read_json

            read_json(path, "tokenizer")  # bad UTF-8 or JSON: named with its line
            raise ValueError(f"{path} is not a valid tokenizer file ({str(err).splitlines()[0]}); "
                             "make one with `latentloop tokenizer train`") from None

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} has no {TOKENIZER_FILE}; text prompts need a tokenizer: pass token ids instead "
                f"(`latentloop generate {directory} --ids 1,2,3`; in Python a list of ids to `latentloop.generate`), "
                f"or put a {TOKENIZER_FILE} beside the weights (`latentloop tokenizer train` makes one)"
            )
        return cls.from_file(path)

    # --- ids ------------------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(BOS)

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(EOS)

    @property
    def pad_id(self) -> int | None:
        return self.token_to_id(PAD)

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a generation (the reference stops on begin_text, end_text and end_turn)."""
        ids = (self.token_to_id(t) for t in (BOS, EOS, END_TURN))
        return [i for i in ids if i is not None]

    # --- unknown characters ---------------------------------------------------------------------
    @property
    def unk_token(self) -> str | None:
        """The token that stands for text the vocabulary cannot spell (None: every text is spelled).
        Byte-level BPE (`train_bpe`, huginn's tokenizer) has none: a character it never saw is encoded
        as its UTF-8 bytes. A character-level task tokenizer (`tasks.vocab.char_tokenizer`) maps
        unknown characters to `<|pad|>`, which `encode` refuses (see `unknown_characters`)."""
        return getattr(self.backend.model, "unk_token", None) or None

    def alphabet(self) -> list[str]:
        """The vocabulary's ordinary (non-special) tokens, by id."""
        specials = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        vocab = self.backend.get_vocab(with_added_tokens=False)
        return [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in specials]

    def _unknown(self, text: str, encoding) -> list[str]:
        unk = self.unk_token
        unk_id = self.token_to_id(unk) if unk is not None else None
        if unk_id is None or unk_id not in encoding.ids:
            return []
        found: dict[str, None] = {}
        for i, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if i == unk_id and text[start:end] != unk:
                found.setdefault(text[start:end], None)
        return list(found)

    def unknown_characters(self, text: str) -> list[str]:
        """The pieces of `text` (characters, for a character-level tokenizer) that the vocabulary does
        not hold, in order of first appearance; [] for a byte-level BPE, which spells any text."""
        return self._unknown(text, self.backend.encode(text, add_special_tokens=False))

    def _check_known(self, text: str, encoding) -> None:
        unknown = self._unknown(text, encoding)
        if not unknown:
            return
        alphabet = self.alphabet()
        if all(len(t) == 1 for t in alphabet):  # character-level: name characters, not pieces
            unknown = list(dict.fromkeys(c for piece in unknown for c in piece if c not in alphabet))
            what, known = "character(s)", f"its alphabet is the {len(alphabet)} characters {''.join(alphabet)!r}"
        else:
            shown = ", ".join(map(repr, alphabet[:MAX_SHOWN]))
            what, known = "piece(s)", f"its vocabulary holds {len(alphabet)} tokens ({shown}, ...)"
        listed = " ".join(repr(c) for c in unknown[:MAX_SHOWN])
        more = f" and {len(unknown) - MAX_SHOWN} more" if len(unknown) > MAX_SHOWN else ""
        added = self.backend.get_added_tokens_decoder()
        specials = ", ".join(added[i].content for i in sorted(added))
        raise ValueError(
            f"the model's tokenizer does not know {len(unknown)} {what} of the text: {listed}{more} "
            f"(they would silently become {self.unk_token}); {known}, plus the special tokens {specials}"
        )

    # --- text -----------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; a ValueError names any character the vocabulary cannot spell."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        self._check_known(text, encoding)
        ids = encoding.ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"this tokenizer has no {BOS} token to prepend")
            ids = [self.bos_id, *ids]
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt as the tokenizer's own template frames it (HF's default `add_special_tokens=True`):
        task tokenizers prepend `<|begin_text|>`, as in training. A text that already opens with it
        (a chat prompt) does not get a second one."""
        encoding = self.backend.encode(text, add_special_tokens=True)
        self._check_known(text, encoding)
        ids = encoding.ids
        if len(ids) > 1 and ids[0] == ids[1] == self.bos_id:
            ids = ids[1:]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """huginn's chat format: bos once, then `<|begin_header|>ROLE<|end_header|>\\n\\nTEXT<|end_turn|>`."""
        parts = [BOS]
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"chat message {i} must be a dict with 'role' and 'content', got {message!r}")
            role = ASSISTANT_ROLE if message["role"] == "assistant" else message["role"]
            parts.append(f"{BEGIN_HEADER}{role}{END_HEADER}\n\n{message['content']}{END_TURN}")
        if add_generation_prompt:
            parts.append(f"{BEGIN_HEADER}{ASSISTANT_ROLE}{END_HEADER}\n\n")
        return "".join(parts)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.backend.to_str(pretty=False))
        return path


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint: a directory, 'default', a hub id, or a tokenizer.json file."""
    path = Path(name_or_path)
    if path.is_file():
        return Tokenizer.from_file(path)
    from .checkpoint import resolve_model_dir

    return Tokenizer.from_dir(resolve_model_dir(name_or_path))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Byte-level BPE with every digit its own token (as huginn's tokenizer does)."""
    specials = list(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs >= {256 + len(specials)}")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)

"""Tokenizer loading, huginn's chat format and BPE training."""

from __future__ import annotations

import pytest

from latentloop.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["The cat sat on the mat in 1234 days.", "Numbers like 98765 are split into digits."] * 50
    return train_bpe(texts, vocab_size=300)


def test_round_trip_and_digits(tokenizer):
    text = "The cat counted 40213 mats."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    digit_pieces = [tokenizer.decode([i]) for i in tokenizer.encode("40213")]
    assert digit_pieces == ["4", "0", "2", "1", "3"]
    assert tokenizer.encode(text, add_bos=True)[0] == tokenizer.bos_id


def test_special_tokens_and_stops(tokenizer):
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    assert None not in ids and len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.stop_ids == [tokenizer.token_to_id(t) for t in ("<|begin_text|>", "<|end_text|>", "<|end_turn|>")]


def test_chat_format(tokenizer):
    prompt = tokenizer.chat_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                    {"role": "user", "content": "2+2?"}])
    assert prompt == (
        "<|begin_text|><|begin_header|>user<|end_header|>\n\nHi<|end_turn|>"
        "<|begin_header|>Huginn<|end_header|>\n\nYo<|end_turn|>"
        "<|begin_header|>user<|end_header|>\n\n2+2?<|end_turn|>"
        "<|begin_header|>Huginn<|end_header|>\n\n"
    )
    ids = tokenizer.encode(prompt)
    assert ids[0] == tokenizer.bos_id and ids.count(tokenizer.token_to_id("<|end_turn|>")) == 3
    with pytest.raises(ValueError, match="chat message 0 must be a dict"):
        tokenizer.chat_prompt([("user", "hi")])


def test_save_and_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode("The cat 12") == tokenizer.encode("The cat 12")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "nowhere")


def test_vocab_too_small():
    with pytest.raises(ValueError, match="too small"):
        train_bpe(["abc"], vocab_size=100)


def test_unknown_characters_of_a_character_tokenizer_are_a_clear_error():
    """The bundled model's character-level tokenizer refuses what it cannot spell (it used to turn
    every unknown character into <|pad|> silently), naming the characters and its alphabet."""
    tok = load_tokenizer("default")
    assert tok.unk_token == "<|pad|>"
    assert tok.unknown_characters("73BACbb6baa9Bbb7b=") == []
    assert tok.encode_prompt("73BACbb6baa9Bbb7b=")[0] == tok.bos_id  # known text: as before
    assert tok.encode("<|pad|>1") == [tok.pad_id, tok.token_to_id("1")]  # a special token, typed, is known
    assert tok.unknown_characters("What is 2+2?") == ["W", "t", " ", "s", "+", "?"]
    with pytest.raises(ValueError) as caught:
        tok.encode_prompt("What is 2+2?")
    message = str(caught.value)
    for char in ("'W'", "' '", "'t'", "'s'", "'+'", "'?'"):
        assert char in message
    assert "6 character(s)" in message and "'0123456789abcdefghi=ABCDEFGHI'" in message
    assert "<|pad|>" in message
    with pytest.raises(ValueError, match="does not know"):
        tok.encode("\n")  # a piece the split leaves whole is named by its characters too
    long = "".join(chr(c) for c in range(0x100, 0x140))
    with pytest.raises(ValueError, match=r"64 character\(s\).* and 44 more"):
        tok.encode(long)


def test_byte_level_bpe_spells_any_text(tokenizer):
    """Byte-level BPE has no unknown token: an unseen character is encoded as its UTF-8 bytes."""
    assert tokenizer.unk_token is None
    text = "naïve café ☕ 😀 Ωmega"
    assert tokenizer.unknown_characters(text) == []
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode("😀")) == 4  # four bytes, four tokens: never merged in training

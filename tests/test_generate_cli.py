"""`latentloop generate` and `latentloop chat` end to end on a tiny saved model with a tokenizer."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from latentloop import load_model
from latentloop.cli import main
from latentloop.cli.generate import add_generation_options, generation_options, unescape
from latentloop.generate import generate
from latentloop.tokenizer import Tokenizer


def test_generate_streams_the_greedy_answer_and_reports_stats(tiny_model_dir, capsys):
    args = [str(tiny_model_dir), "ROMEO:", "--steps", "2", "--init-scale", "0", "--max-new-tokens", "6"]
    assert main(["generate", *args]) == 0
    out, err = capsys.readouterr()
    expected = generate(load_model(tiny_model_dir), "ROMEO:", Tokenizer.from_dir(tiny_model_dir), num_steps=2,
                        init_scale=0.0, max_new_tokens=6)
    assert out == expected.text + "\n"
    assert "2.0 iterations/token" in err and "tokens/s" in err


def test_generate_options_reach_the_engine(tiny_model_dir, capsys):
    common = [str(tiny_model_dir), "ROMEO:", "--steps", "8", "--init-scale", "0", "--max-new-tokens", "5"]
    assert main(["generate", *common, "--exit", "latent-diff:0.5", "--min-steps", "3", "--kv-budget", "2"]) == 0
    err = capsys.readouterr().err
    mean = float(err.split(" tokens, ")[1].split(" iterations")[0])
    assert 3 <= mean < 8
    assert main(["generate", *common, "--draft-steps", "2", "--lookahead", "3"]) == 0
    assert "of drafts accepted" in capsys.readouterr().err
    assert main(["generate", *common, "--temperature", "0.8", "--top-p", "0.9", "--seed", "1", "--warm-start"]) == 0
    capsys.readouterr()
    text = generate(load_model(tiny_model_dir), "ROMEO:", Tokenizer.from_dir(tiny_model_dir), num_steps=8,
                    init_scale=0.0, max_new_tokens=5).text
    needle = text[len(text) // 2]
    assert main(["generate", *common, "--stop", needle]) == 0
    assert capsys.readouterr().out == text[: text.index(needle)] + "\n"
    assert unescape(r"\n\n") == "\n\n" and unescape(r"a\tb") == "a\tb"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--exit", "often"], "unknown exit criterion"),
        (["--steps", "0"], "num_steps must be an integer >= 1"),
        (["--kv-budget", "0"], "kv_budget must be a positive"),
        (["--top-k", "5"], "only apply when sampling"),
        (["--min-steps", "4"], "add --exit"),
        (["--prompt-exit"], "--prompt-exit applies the exit criterion to the prompt's tokens: add --exit"),
    ],
)
def test_generate_bad_flags_are_clear_errors(tiny_model_dir, capsys, flags, message):
    assert main(["generate", str(tiny_model_dir), "hi", "--max-new-tokens", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentloop generate: error:") and message in err


def test_model_directory_without_tokenizer_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    load_model(tiny_model_dir).save_pretrained(str(bare))
    assert main(["generate", str(bare), "hi"]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer.json" in err and f"latentloop generate {bare} --ids 1,2,3" in err


def test_generate_ids_in_ids_out_without_a_tokenizer(tiny_model_dir, tmp_path, capsys):
    """What the no-tokenizer message tells the user to do works: --ids continues token ids."""
    bare = tmp_path / "bare"
    model = load_model(tiny_model_dir)
    model.save_pretrained(str(bare))
    assert main(["generate", str(bare), "--ids", "5, 17,42", "--steps", "2", "--init-scale", "0",
                 "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    expected = generate(model, [5, 17, 42], num_steps=2, init_scale=0.0, max_new_tokens=4).tokens[0]
    assert out == ",".join(map(str, expected)) + "\n" and len(expected) == 4
    assert "2.0 iterations/token" in err
    # with a tokenizer, --ids still prints ids (and the tokenizer's stop ids end the generation)
    assert main(["generate", str(tiny_model_dir), "--ids", "5,17,42", "--steps", "2", "--init-scale", "0",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip().replace(",", "").isdigit()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to continue"),
        (["hi", "--ids", "1,2"], "not both"),
        (["--ids", "1,x"], "comma-separated token ids"),
        (["--ids", "1,-2"], "comma-separated token ids"),
        (["--ids", "1,2", "--stop", "."], "--stop matches text"),
    ],
)
def test_generate_ids_bad_input(tiny_model_dir, tmp_path, capsys, argv, message):
    bare = tmp_path / "bare"
    load_model(tiny_model_dir).save_pretrained(str(bare))
    assert main(["generate", str(bare), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentloop generate: error:") and message in err


def test_unknown_characters_are_named_not_padded(capsys):
    """`generate default "What is 2+2?"` printed 3333... (every unknown character became <|pad|>)."""
    assert main(["generate", "default", "What is 2+2?"]) == 2
    err = capsys.readouterr().err
    assert "does not know 6 character(s)" in err and "'0123456789abcdefghi=ABCDEFGHI'" in err


def test_chat_refuses_a_model_that_is_not_a_chat_model(capsys):
    """The bundled pointers model would answer the chat template wrongly: it is refused, with a pointer."""
    assert main(["chat", "default"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentloop chat: error: default is not a chat model")
    assert "<|begin_header|>" in err and "latentloop generate default" in err and "huginn-0125" in err


def test_chat_reads_piped_messages(tiny_model_dir):
    """Two turns through a real pipe: two streamed answers, each followed by its statistics line."""
    command = [sys.executable, "-m", "latentloop", "chat", str(tiny_model_dir), "--steps", "2", "--init-scale", "0",
               "--max-new-tokens", "4", "--system", "Be brief."]
    done = subprocess.run(command, input="Hello there\n/reset\nWho art thou?\n", capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("iterations/token") == 2
    tok = Tokenizer.from_dir(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    second = generate(load_model(tiny_model_dir), tok.chat_prompt(messages), tok, num_steps=2, init_scale=0.0,
                      max_new_tokens=4)
    assert done.stdout.endswith(second.text + "\n")


def test_compile_flag_reaches_generate():
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    assert generation_options(parser.parse_args(["--compile"]), 8)["compile"] is True
    assert generation_options(parser.parse_args([]), 8)["compile"] is False

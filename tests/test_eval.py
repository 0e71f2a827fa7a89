"""Loss/perplexity vs depth and continuation scoring against the model's own numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentloop import RecurrentDepthLM, get_preset
from latentloop.cli import main
from latentloop.eval import load_tokens, load_windows, perplexity_at_depths, score_continuations, windows
from latentloop.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model() -> RecurrentDepthLM:
    m = RecurrentDepthLM(get_preset("tiny").replace(vocab_size=320))
    m.init_weights(torch.Generator().manual_seed(0))
    return m.eval()


def test_perplexity_equals_model_loss(model):
    tokens = torch.randint(0, 320, (101,), generator=torch.Generator().manual_seed(0))
    depths = [1, 3, 6]
    result = perplexity_at_depths(model, windows(tokens, 16), depths, batch_size=3, progress=False)
    for r in depths:
        total, count = 0.0, 0
        for start in range(0, 100, 16):  # every token after the first predicted once
            window = tokens[start:start + 17][None]
            with torch.no_grad():
                loss = model(window[:, :-1], num_steps=r, init_scale=0.0, labels=window[:, 1:]).loss
            total += float(loss) * (window.shape[1] - 1)
            count += window.shape[1] - 1
        assert result[r]["tokens"] == count == 100
        assert result[r]["loss"] == pytest.approx(total / count, abs=1e-5)
        assert result[r]["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # one window: exactly the model's loss at depth r on the same tokens
    one = perplexity_at_depths(model, [tokens[:33]], [4], progress=False)[4]["loss"]
    with torch.no_grad():
        assert one == pytest.approx(float(model(tokens[None, :32], num_steps=4, init_scale=0.0,
                                                labels=tokens[None, 1:33]).loss), abs=1e-6)


def test_perplexity_limit_and_random_start(model):
    tokens = torch.randint(0, 320, (200,), generator=torch.Generator().manual_seed(1))
    chunks = windows(tokens, 10)
    limited = perplexity_at_depths(model, chunks, [2], limit=3, progress=False)
    assert limited[2]["tokens"] == 30
    a = perplexity_at_depths(model, chunks, [2], init_scale=1.0, seed=5, progress=False)
    b = perplexity_at_depths(model, chunks, [2], init_scale=1.0, seed=5, progress=False)
    c = perplexity_at_depths(model, chunks, [2], init_scale=1.0, seed=6, progress=False)
    assert a == b and a[2]["loss"] != c[2]["loss"]
    with pytest.raises(ValueError, match="exceed the model's context length"):
        perplexity_at_depths(model, windows(tokens, 150), [1], progress=False)


def test_load_tokens_formats(tmp_path, tiny_model_dir):
    ids = np.array([5, 9, 300, 1, 7], dtype=np.uint16)
    ids.tofile(tmp_path / "a.bin")
    np.save(tmp_path / "b.npy", ids.astype(np.int32))
    assert load_tokens(tmp_path / "a.bin", 320).tolist() == ids.tolist()
    assert load_tokens(tmp_path / "b.npy", 320).tolist() == ids.tolist()
    tok = load_tokenizer(tiny_model_dir)
    (tmp_path / "t.txt").write_text("Now is the winter of our discontent")
    assert load_tokens(tmp_path / "t.txt", 320, tok).tolist() == tok.encode("Now is the winter of our discontent")
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        load_tokens(tmp_path / "t.txt", 320)
    with pytest.raises(ValueError, match="vocabulary has 256"):
        load_windows(tmp_path / "a.bin", 256, seq_len=4)
    with pytest.raises(FileNotFoundError, match="has no meta.json"):
        load_windows(tmp_path, 320, seq_len=4)
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown data file format '.parquet'"):
        load_tokens(tmp_path / "x.parquet", 320)


def test_perplexity_on_prepared_shards_is_the_validation_loss(model, tiny_model_dir, tmp_path):
    """A `data prepare` directory: each held-out row is one window, as training validation reads it."""
    from latentloop.train.data import ShardData, TextSource, prepare_shards

    text = (Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text()
    (tmp_path / "plays.txt").write_text(text[:6_000])
    prepare_shards([TextSource(tmp_path / "plays.txt")], load_tokenizer(tiny_model_dir), tmp_path / "data",
                   block_size=32, val_every=4, progress=False)
    rows = load_windows(tmp_path / "data", 320, seq_len=999)
    inputs, labels = zip(*ShardData(tmp_path / "data").validation(batches=10_000, batch_size=1), strict=True)
    assert len(rows) == len(inputs) and all(r.numel() == 33 for r in rows)
    with torch.no_grad():
        expected = float(model(torch.cat(inputs), num_steps=3, init_scale=0.0, labels=torch.cat(labels)).loss)
    assert perplexity_at_depths(model, rows, [3], progress=False)[3]["loss"] == pytest.approx(expected, abs=1e-5)
    assert len(load_windows(tmp_path / "data", 320, seq_len=999, split="train")) > len(rows)


def test_scores_match_model_and_padding_is_exact(model):
    g = torch.Generator().manual_seed(2)
    pairs = [(torch.randint(0, 320, (n,), generator=g).tolist(), torch.randint(0, 320, (m,), generator=g).tolist())
             for n, m in [(3, 2), (11, 4), (1, 1), (7, 5), (20, 3)]]
    batched = score_continuations(model, pairs, [2, 5], batch_size=4)
    alone = score_continuations(model, pairs, [2, 5], batch_size=1)
    for r in (2, 5):
        for (context, continuation), got, ref in zip(pairs, batched[r], alone[r], strict=True):
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logp = F.log_softmax(model(ids[:, :-1], num_steps=r, init_scale=0.0).logits[0], -1)
            targets = ids[0, len(context):]
            rows = logp[len(context) - 1:]
            assert got.logprob == pytest.approx(float(rows.gather(-1, targets[:, None]).sum()), abs=1e-4)
            assert got.logprob == pytest.approx(ref.logprob, abs=1e-4)
            assert got.is_greedy == bool((rows.argmax(-1) == targets).all()) == ref.is_greedy
            assert got.num_tokens == len(continuation)


def test_scoring_truncates_long_contexts_from_the_left(model):
    context, continuation = list(range(1, 200)), [7, 8]
    full = score_continuations(model, [(context, continuation)], [3])[3][0]
    cut = score_continuations(model, [(context[-(128 - 1):], continuation)], [3])[3][0]
    assert full.logprob == pytest.approx(cut.logprob, abs=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(model, [([], [1])], [1])


def test_eval_cli_perplexity_writes_json_and_plot(tiny_model_dir, tmp_path):
    text = tmp_path / "val.txt"
    text.write_text("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. " * 8)
    out = tmp_path / "out"
    assert main(["eval", str(tiny_model_dir), "--data", str(text), "--depths", "1", "4", "--seq-len", "32",
                 "--limit", "3", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["perplexity"]["depths"]) == {"1", "4"} and results["perplexity"]["tokens"] == 96
    assert (out / "perplexity_vs_depth.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("argv", "message"), [
    (["--depths", "0", "4"], "--depths must all be >= 1"),
    ([], "nothing to evaluate"),
    (["--data", "missing.bin"], "no such token file"),
])
def test_eval_cli_bad_input(tiny_model_dir, tmp_path, capsys, argv, message):
    argv = [a if a != "missing.bin" else str(tmp_path / a) for a in argv]
    assert main(["eval", str(tiny_model_dir), *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_eval_cli_missing_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--data", "x.txt"]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_eval_text_that_does_not_fit_the_model_names_the_characters(tmp_path, capsys):
    """`eval default --data tinyshakespeare` (once an example in --help) reported perplexity 1e14:
    the pointer model's alphabet has no letters beyond a-i, no space, no punctuation."""
    text = tmp_path / "play.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert main(["eval", "default", "--data", str(text), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{text}: the model's tokenizer does not know" in err and "this text does not fit the model" in err


def test_eval_help_examples_for_the_bundled_model_run(tmp_path, capsys):
    """Every `latentloop eval default ...` example of --help runs and scores (here on 3 problems, at the
    deepest of its depths only, to keep the test short)."""
    import shlex

    from latentloop.cli.eval import DESCRIPTION

    repo = Path(__file__).resolve().parents[1]
    examples = [line.split("#")[0].strip() for line in DESCRIPTION.splitlines()
                if line.strip().startswith("latentloop eval default")]
    assert examples
    for line in examples:
        argv = [str(repo / a) if a.startswith("docs/") else a for a in shlex.split(line)[1:]]
        assert main([*argv, "--limit", "3", "--depths", "32", "--out", str(tmp_path / "o"), "--quiet"]) == 0
        results = json.loads((tmp_path / "o" / "results.json").read_text())
        accuracy = results["tasks"]["pointers-validation"]["depths"]["32"]["accuracy"]
        assert accuracy == 1.0  # the bundled model solves its in-distribution chains at 32 iterations
    capsys.readouterr()

"""Recipes (parsing, overrides, bad recipes failing before training) and `data prepare` (mixture, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import REPO, STORIES, make_shards, micro_recipe, write_toml

from latentloop.cli import main
from latentloop.tokenizer import train_bpe
from latentloop.train.data import ShardData, TextSource, prepare_shards
from latentloop.train.recipe import RecipeError, load_recipe
from latentloop.train.trainer import Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("plays"))


def test_recipe_types_overrides_and_relative_paths(tmp_path):
    path = write_toml(tmp_path / "r.toml", micro_recipe(Path("data/x"), optim={"betas": [0.8, 0.9]}))
    recipe = load_recipe(path, ["optim.lr=2e-4", "device=cuda", "train.val_depths=[1, 2]", "model.hidden_size=48",
                                "objective.fixed_depth=1", "data.mixture.plays=2"])
    assert recipe.optim.lr == 2e-4 and recipe.optim.betas == (0.8, 0.9) and recipe.device == "cuda"
    assert recipe.train.val_depths == [1, 2] and recipe.objective.fixed_depth == 1
    assert recipe.model.overrides["hidden_size"] == 48 and recipe.data.mixture == {"plays": 2.0}
    assert recipe.resolve(recipe.data.path) == tmp_path / "data" / "x"


def test_shipped_recipes_parse():
    for path in sorted((REPO / "recipes").glob("*.toml")):
        load_recipe(path)


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lrr=1", "'optim.lrr'"),
    ("model.hidden_sise=64", "model.hidden_sise"),
    ("train.steps=many", "train.steps"),
    ("optim.name=sgd", "optim.name"),
    ("device=tpu", "device"),
])
def test_bad_keys_and_values_name_the_key(tmp_path, override, key):
    path = write_toml(tmp_path / "r.toml", micro_recipe(Path("missing")))
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        Trainer(load_recipe(path, [override]), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("sections", "key"), [
    ({"data": {"path": "nowhere/shards"}}, "data.path"),
    ({"model": {"vocab_size": 70_000}}, "model.vocab_size"),  # uint16 shards cannot hold it
    ({"model": {"vocab_size": 100}}, "model.vocab_size"),  # smaller than the data's 300
    ({"model": {"context_length": 16}}, "data.block_size"),  # the shards hold 32-token rows
    ({"data": {"block_size": 16}}, "data.block_size"),  # disagrees with the shards
    ({"data": {"batch_size": 6, "grad_accum": 4}}, "data.batch_size"),
])
def test_bad_recipes_fail_before_training(tmp_path, shards, sections, key):
    base = micro_recipe(shards, **sections)
    if sections.get("data", {}).get("path"):
        base["data"]["path"] = str(tmp_path / sections["data"]["path"])
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        Trainer(load_recipe(None, base=base), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_reports_recipe_errors_without_traceback(tmp_path, capsys):
    path = write_toml(tmp_path / "r.toml", micro_recipe(Path("missing")))
    assert main(["train", str(path), "--set", "schedule.warmup=3"]) == 2
    err = capsys.readouterr().err
    assert "latentloop train: error: unknown recipe key 'schedule.warmup'" in err and "Traceback" not in err


def test_task_source_reports_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="no-such-task"):
        Trainer(load_recipe(None, base=micro_recipe(None, data={"source": "task:no-such-task"})), out=tmp_path)


@pytest.fixture(scope="module")
def stories(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("stories")
    docs = STORIES.read_text().split("<|endoftext|>")[:120]
    path = directory / "stories.txt"
    path.write_text("<|endoftext|>".join(docs))
    return path, train_bpe(docs, vocab_size=300)


def test_prepare_resumes_after_an_interruption(tmp_path, stories, monkeypatch):
    path, tokenizer = stories
    prepare_shards([TextSource(path)], tokenizer, tmp_path / "once", 32, docs_per_shard=25, progress=False)

    original = TextSource.documents

    def interrupted(self):
        for i, doc in enumerate(original(self)):
            if i == 60:
                raise KeyboardInterrupt
            yield doc

    monkeypatch.setattr(TextSource, "documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards([TextSource(path)], tokenizer, tmp_path / "twice", 32, docs_per_shard=25, progress=False)
    assert not (tmp_path / "twice" / "meta.json").exists()
    assert json.loads((tmp_path / "twice" / "stories.progress.json").read_text())["docs_done"] == 50
    monkeypatch.setattr(TextSource, "documents", original)
    prepare_shards([TextSource(path)], tokenizer, tmp_path / "twice", 32, docs_per_shard=25, progress=False)

    a, b = ShardData(tmp_path / "once"), ShardData(tmp_path / "twice")
    for split in ("train", "val"):
        rows_a = np.concatenate(getattr(a, split)[0])
        rows_b = np.concatenate(getattr(b, split)[0])
        assert rows_a.dtype == np.uint16 and rows_a.shape[1] == 33
        np.testing.assert_array_equal(rows_a, rows_b)
    eos = tokenizer.eos_id
    all_rows = np.concatenate(a.train[0] + a.val[0])
    assert (all_rows == eos).sum() >= 100  # documents are separated by end-of-text
    assert tokenizer.decode(all_rows[0][:10].tolist()) in path.read_text()


def test_mixture_weights_and_batches_are_a_function_of_the_step(tmp_path, stories):
    path, tokenizer = stories
    plays = tmp_path / "plays.txt"
    plays.write_text((REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text()[:40_000])
    sources = [TextSource(path, weight=3.0, name="stories"), TextSource(plays, weight=1.0, name="plays")]
    prepare_shards(sources, tokenizer, tmp_path / "mix", 32, progress=False)
    data = ShardData(tmp_path / "mix", seed=5)
    plays_rows = {bytes(r) for arr in data.train[data.names.index("plays")] for r in np.asarray(arr)}
    x, y = data.global_batch(3, 4000)
    shares = np.mean([bytes(np.concatenate([row[:1], yrow]).astype(np.uint16)) in plays_rows
                      for row, yrow in zip(x.numpy(), y.numpy(), strict=True)])
    assert abs(shares - 0.25) < 0.03
    x2, _ = data.global_batch(3, 4000)
    assert (x == x2).all() and not (data.global_batch(4, 4000)[0] == x).all()
    assert (x[:, 1:] == y[:, :-1]).all()
    reweighted = ShardData(tmp_path / "mix", seed=5, mixture={"plays": 1.0, "stories": 1.0})
    xr, yr = reweighted.global_batch(3, 4000)
    share = np.mean([bytes(np.concatenate([row[:1], yrow]).astype(np.uint16)) in plays_rows
                     for row, yrow in zip(xr.numpy(), yr.numpy(), strict=True)])
    assert abs(share - 0.5) < 0.04


def test_data_and_tokenizer_cli(tmp_path, stories, capsys):
    path, _ = stories
    assert main(["tokenizer", "train", str(path), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0
    assert main(["data", "prepare", f"{path}:2:tales", "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "shards"), "--block-size", "32"]) == 0
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["sources"]["tales"]["weight"] == 2.0 and meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    assert (tmp_path / "shards" / "tokenizer.json").is_file()
    assert main(["data", "prepare", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no such data source" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not fit uint16"):
        prepare_shards([TextSource(path)], FakeBigTokenizer(), tmp_path / "big", 32, dtype="uint16", progress=False)


class FakeBigTokenizer:
    vocab_size = 70_000
    eos_id = 0

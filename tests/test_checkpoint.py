"""Loading and saving HF-style checkpoint directories, and the errors bad ones raise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentloop import load_model
from latentloop.checkpoint import CheckpointError, load_config

TOL = dict(atol=1e-4, rtol=1e-4)


def copy_checkpoint(conformance_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(conformance_dir / "checkpoint", target)
    target.chmod(0o755)
    for f in target.iterdir():
        f.chmod(0o644)
    return target


def assert_matches_reference(model, cases, **tol):
    out = model(cases["input_ids"], num_steps=4, init_scale=0.0)
    torch.testing.assert_close(out.logits, cases["logits_zero_r4"], **(tol or TOL))
    torch.testing.assert_close(out.latent.float(), cases["latents_zero_r4"], **(tol or TOL))


@pytest.mark.parametrize("max_shard_bytes", [None, 200_000])
def test_round_trip_is_bit_exact(conformance_dir, conformance_cases, tmp_path, max_shard_bytes):
    model = load_model(conformance_dir / "checkpoint")
    model.save_pretrained(str(tmp_path / "copy"), max_shard_bytes=max_shard_bytes)
    if max_shard_bytes:
        index = json.loads((tmp_path / "copy" / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert not (tmp_path / "copy" / "model.safetensors").exists()
    again = load_model(tmp_path / "copy")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.lm_head.weight is again.transformer.wte.weight  # still tied
    assert_matches_reference(again, conformance_cases)
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert saved["model_type"] == "huginn_raven" and saved["n_embd"] == 64
    assert load_config(tmp_path / "copy") == model.config


def test_bfloat16_storage_round_trip(conformance_dir, conformance_cases, tmp_path):
    model = load_model(conformance_dir / "checkpoint", dtype="bfloat16")
    model.save_pretrained(str(tmp_path / "bf16"))
    stored = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    again = load_model(tmp_path / "bf16")
    assert again.dtype == torch.bfloat16
    # bf16 storage rounds weights to 8 significant bits; tolerance stated for float32 compute
    assert_matches_reference(load_model(tmp_path / "bf16", dtype=torch.float32), conformance_cases,
                             atol=0.1, rtol=0.05)


def test_duplicated_lm_head_is_accepted(conformance_dir, conformance_cases, tmp_path):
    target = copy_checkpoint(conformance_dir, tmp_path)
    tensors = load_file(str(target / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    save_file(tensors, str(target / "model.safetensors"))
    assert_matches_reference(load_model(target), conformance_cases)
    tensors["lm_head.weight"] += 1
    save_file(tensors, str(target / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_model(target)


def test_missing_directory():
    with pytest.raises(CheckpointError, match="no such model directory: /nonexistent/model"):
        load_model("/nonexistent/model")


def test_foreign_config(conformance_dir, tmp_path):
    target = copy_checkpoint(conformance_dir, tmp_path)
    (target / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="not a huginn-family config: model_type is 'llama'"):
        load_model(target)


def test_missing_and_unexpected_tensors(conformance_dir, tmp_path):
    target = copy_checkpoint(conformance_dir, tmp_path)
    tensors = load_file(str(target / "model.safetensors"))
    del tensors["transformer.core_block.2.mlp.fc.weight"]
    tensors["transformer.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(target / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    assert "missing tensors: ['transformer.core_block.2.mlp.fc.weight']" in str(err.value)
    assert "unexpected tensors: ['transformer.extra.weight']" in str(err.value)


def test_shape_mismatch_names_both_shapes(conformance_dir, tmp_path):
    target = copy_checkpoint(conformance_dir, tmp_path)
    tensors = load_file(str(target / "model.safetensors"))
    tensors["transformer.adapter.weight"] = torch.zeros(64, 64)
    save_file(tensors, str(target / "model.safetensors"))
    expected = r"transformer.adapter.weight: checkpoint \(64, 64\) vs model \(64, 128\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(target)


def test_directory_without_weights_or_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "huginn_raven"}))
    with pytest.raises(CheckpointError, match="lacks required key"):
        load_model(tmp_path / "empty")


def test_hub_id_without_hub_extra_or_network(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(CheckpointError, match=r"pip install 'latentloop\[hub\]'"):
        load_model("tomg-group-umd/huginn-0125")


def test_interrupted_save_keeps_the_previous_checkpoint(conformance_dir, tmp_path, monkeypatch):
    model = load_model(conformance_dir / "checkpoint")
    target = tmp_path / "model"
    model.save_pretrained(str(target))
    (target / "tokenizer.json").write_text("{}")
    before = (target / "model.safetensors").read_bytes()

    import latentloop.checkpoint as checkpoint

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with torch.no_grad():
        model.transformer.adapter.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(str(target))
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary directory left behind"
    monkeypatch.undo()
    model.save_pretrained(str(target))
    assert (target / "tokenizer.json").read_text() == "{}", "files beside the weights are kept"
    assert torch.equal(load_model(target).transformer.adapter.weight, model.transformer.adapter.weight)


def test_saved_files_get_ordinary_permissions(conformance_dir, tmp_path):
    import os

    load_model(conformance_dir / "checkpoint").save_pretrained(str(tmp_path / "m"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask


# --- untied heads: lm_head.weight stored and loaded on its own ------------------------------------------------------

def untied_original(untied_model_dir: Path):
    from latentloop import RecurrentDepthLM

    model = RecurrentDepthLM(load_config(untied_model_dir))
    model.load_state_dict(torch.load(untied_model_dir.parent / "original.pt"))
    return model.eval()


def test_untied_head_round_trips_through_many_shards(untied_model_dir):
    config = json.loads((untied_model_dir / "config.json").read_text())
    assert config["tie_embeddings"] is False and config["tie_word_embeddings"] is False
    assert config["n_heads"] == 6 and [config[f"n_layers_in_{p}"] for p in ("prelude", "recurrent_block", "coda")] \
        == [1, 3, 1]
    weight_map = json.loads((untied_model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) >= 10 and not (untied_model_dir / "model.safetensors").exists()
    assert weight_map["lm_head.weight"] != weight_map["transformer.wte.weight"]

    original = untied_original(untied_model_dir)
    assert not torch.equal(original.lm_head.weight, original.transformer.wte.weight)
    loaded = load_model(untied_model_dir)
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    assert loaded.state_dict().keys() == original.state_dict().keys()
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, loaded.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    for steps in (1, 3):
        assert torch.equal(loaded(ids, num_steps=steps, init_scale=0.0).logits,
                           original(ids, num_steps=steps, init_scale=0.0).logits)
    # the head is really used: tying it to the embedding would change the logits
    original.lm_head.weight = original.transformer.wte.weight
    assert not torch.allclose(loaded(ids, num_steps=3, init_scale=0.0).logits,
                              original(ids, num_steps=3, init_scale=0.0).logits)
    again = untied_model_dir.parent / "again"
    loaded.save_pretrained(str(again))
    assert load_config(again) == loaded.config
    assert torch.equal(load_model(again).lm_head.weight, loaded.lm_head.weight)


def test_huginn_style_tie_word_embeddings_alone_means_untied(untied_model_dir, tmp_path):
    target = tmp_path / "hf"
    shutil.copytree(untied_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    del config["tie_embeddings"]  # transformers' name only, as a config saved by the reference code can have
    (target / "config.json").write_text(json.dumps(config))
    loaded = load_model(target)
    assert loaded.config.tie_embeddings is False
    assert torch.equal(loaded.lm_head.weight, untied_original(untied_model_dir).lm_head.weight)


def test_tie_flags_that_disagree_are_a_clear_error(untied_model_dir, tmp_path):
    target = tmp_path / "both"
    shutil.copytree(untied_model_dir, target)
    config = json.loads((target / "config.json").read_text()) | {"tie_embeddings": True}
    (target / "config.json").write_text(json.dumps(config))
    expected = "tie_embeddings is true but tie_word_embeddings is false; make them agree"
    with pytest.raises(CheckpointError, match=expected):
        load_model(target)


def test_tied_config_over_a_separate_head_is_still_refused(untied_model_dir, tmp_path):
    """The untied shards with a config that claims a tied head: the stored head (in its own shard) differs
    from the embedding, so loading must refuse rather than drop it."""
    target = tmp_path / "claims-tied"
    shutil.copytree(untied_model_dir, target)
    config = json.loads((target / "config.json").read_text()) | {"tie_embeddings": True}
    del config["tie_word_embeddings"]
    (target / "config.json").write_text(json.dumps(config))
    expected = ("tie_embeddings is true but lm_head.weight differs from transformer.wte.weight; "
                "set tie_embeddings to false in config.json to load separate weights")
    with pytest.raises(CheckpointError, match=expected):
        load_model(target)


def test_untied_config_without_a_stored_head_says_so(conformance_dir, tmp_path):
    target = copy_checkpoint(conformance_dir, tmp_path)
    config = json.loads((target / "config.json").read_text()) | {"tie_embeddings": False}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensors: \['lm_head.weight'\] \(config.json says "
                                              r"tie_embeddings false"):
        load_model(target)


def test_cli_info_and_generate_load_the_untied_model(untied_model_dir, capsys):
    from latentloop import generate
    from latentloop.cli import main
    from latentloop.tokenizer import load_tokenizer

    assert main(["info", str(untied_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["tie_embeddings"] is False and info["config"]["num_heads"] == 6
    config = load_config(untied_model_dir)
    assert info["parameters"]["head"] == config.vocab_size * config.hidden_size
    assert info["parameters"]["total"] == sum(p.numel() for p in untied_original(untied_model_dir).parameters())
    assert main(["info", str(untied_model_dir)]) == 0
    assert "tied to embedding" not in capsys.readouterr().out

    assert main(["generate", str(untied_model_dir), "ROMEO:", "--steps", "3", "--init-scale", "0",
                 "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    expected = generate(untied_original(untied_model_dir), "ROMEO:", load_tokenizer(untied_model_dir), num_steps=3,
                        init_scale=0.0, max_new_tokens=8)
    assert out == expected.text + "\n" and "3.0 iterations/token" in err

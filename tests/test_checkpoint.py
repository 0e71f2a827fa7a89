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

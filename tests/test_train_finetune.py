"""Fine-tuning on chat JSONL: loss on assistant tokens only, from a saved checkpoint, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import latentloop
from latentloop.cli import main
from latentloop.tokenizer import END_TURN, load_tokenizer
from latentloop.train.finetune import ChatData, encode_chat
from latentloop.train.recipe import load_recipe
from latentloop.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def chats(tmp_path) -> Path:
    lines = []
    for i in range(60):
        a, b = i % 7, (i * 3) % 5
        messages = [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"It is {a + b}."}]
        lines.append(json.dumps({"messages": messages}))
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_only_assistant_tokens_are_targets(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."},
                {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Hi."}]
    ids, target = encode_chat(tok, messages)
    assert tok.decode(ids) == tok.chat_prompt(messages, add_generation_prompt=False)
    assert tok.decode([i for i, t in zip(ids, target, strict=True) if t]) == f"Hi there.{END_TURN}Hi.{END_TURN}"


def test_chat_rows_mask_everything_but_answers(tiny_model_dir, chats):
    tok = load_tokenizer(tiny_model_dir)
    data = ChatData(chats, tok, block_size=128)
    x, y = data.global_batch(0, 4)
    assert x.shape == y.shape and x.shape[0] == 4
    for row_y in y:
        answer = tok.decode(row_y[row_y != -100].tolist())
        assert answer.startswith("It is ") and answer.endswith(f".{END_TURN}")
    assert len(data.val) == 3 and len(data.train) == 57


def test_finetune_lowers_assistant_loss_and_saves_a_loadable_model(tiny_model_dir, chats, tmp_path):
    base = {"device": "cpu", "model": {"init_from": str(tiny_model_dir), "mean_recurrence": 3,
                                       "mean_backprop_depth": 2},
            "data": {"source": "chat", "path": str(chats), "batch_size": 8, "val_batches": 1},
            "optim": {"lr": 3e-3}, "train": {"steps": 40, "val_every": 40, "peak_flops": 1e9, "val_depths": [1, 3]}}
    trainer = Trainer(load_recipe(None, base=base), out=tmp_path / "ft", progress=False)
    before = trainer.validate(0)["loss@3"]
    after = trainer.fit()["val"]["loss@3"]
    assert after < before - 1.0
    model = latentloop.load_model(tmp_path / "ft" / "model")
    assert model.config.mean_recurrence == 3
    assert (tmp_path / "ft" / "model" / "tokenizer.json").is_file()


def test_finetune_cli(tiny_model_dir, chats, tmp_path, capsys):
    args = ["finetune", str(tiny_model_dir), str(chats), "--out", str(tmp_path / "cli"), "--steps", "2",
            "--no-progress", "--set", "device=cpu", "--set", "train.peak_flops=1e9", "--set", "train.val_depths=[1]"]
    assert main(args) == 0
    saved = latentloop.load_model(tmp_path / "cli" / "model")
    assert saved.config.vocab_size == load_tokenizer(tiny_model_dir).vocab_size
    assert main(["finetune", str(tiny_model_dir), str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "data.path" in capsys.readouterr().err


def test_lora_trains_only_adapters_and_saves_them_merged(tiny_model_dir, chats, tmp_path):
    """With peft (the `lora` extra): base weights stay frozen, the loss falls, and the saved model is a
    plain checkpoint whose weights are the base plus the merged low-rank updates."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install 'latentloop[lora]' (./setup.sh installs it)")
    base_model = latentloop.load_model(tiny_model_dir)
    recipe = {"device": "cpu", "model": {"init_from": str(tiny_model_dir), "mean_recurrence": 3,
                                         "mean_backprop_depth": 2},
              "data": {"source": "chat", "path": str(chats), "batch_size": 8, "val_batches": 1},
              "optim": {"lr": 1e-2}, "lora": {"enabled": True, "rank": 4},
              "train": {"steps": 30, "val_every": 30, "peak_flops": 1e9, "val_depths": [3]}}
    trainer = Trainer(load_recipe(None, base=recipe), out=tmp_path / "lora", progress=False)
    trainable = {n for n, p in trainer.core.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = trainer.validate(0)["loss@3"]
    after = trainer.fit()["val"]["loss@3"]
    assert after < before - 0.3
    saved = latentloop.load_model(tmp_path / "lora" / "model")  # strict load: no adapter tensors left
    changed = [n for n, p in saved.state_dict().items() if not torch.equal(p, base_model.state_dict()[n])]
    assert changed and all(n.endswith(("Wqkv.weight", "proj.weight", "fc.weight", "adapter.weight")) for n in changed)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_finetuning_an_untied_model_keeps_its_own_head(untied_model_dir, chats, tmp_path, lora):
    """From a checkpoint with tie_embeddings false: a full fine-tune trains the head apart from the embedding,
    a LoRA one leaves it exactly as it was (it carries no adapter); either way the saved model is untied."""
    if lora:
        pytest.importorskip("peft", reason="LoRA needs peft: pip install 'latentloop[lora]' (./setup.sh installs it)")
    base_model = latentloop.load_model(untied_model_dir)
    recipe = {"device": "cpu", "model": {"init_from": str(untied_model_dir)},
              "data": {"source": "chat", "path": str(chats), "batch_size": 4, "val_batches": 1},
              "optim": {"lr": 1e-2}, "lora": {"enabled": lora, "rank": 2},
              "train": {"steps": 3, "val_every": 3, "peak_flops": 1e9, "val_depths": [3]}}
    Trainer(load_recipe(None, base=recipe), out=tmp_path / "ft", progress=False).fit()
    saved = latentloop.load_model(tmp_path / "ft" / "model")
    assert saved.config == base_model.config and saved.config.tie_embeddings is False
    assert json.loads((tmp_path / "ft" / "model" / "config.json").read_text())["tie_word_embeddings"] is False
    assert saved.lm_head.weight is not saved.transformer.wte.weight
    head_change = saved.lm_head.weight - base_model.lm_head.weight
    embedding_change = saved.transformer.wte.weight - base_model.transformer.wte.weight
    if lora:
        assert torch.equal(head_change, torch.zeros_like(head_change))
        assert torch.equal(embedding_change, torch.zeros_like(embedding_change))
    else:
        assert head_change.abs().max() > 1e-4 and not torch.allclose(head_change, embedding_change)

"""End to end: a micro model learns generated data, its saved model reproduces the trainer's validation,
a SIGKILLed run resumes to the same weights, and two torchrun processes follow one process's curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, make_shards, micro_recipe, train_losses, write_toml

import latentloop
from latentloop.compiled import has_cpp_compiler
from latentloop.train.recipe import load_recipe
from latentloop.train.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("plays"))


class MarkovTask:
    """Generated data: each token has two possible successors, so the achievable loss is ln 2."""

    vocab_size = 32

    def __init__(self, length: int = 24) -> None:
        self.length = length
        self.successors = np.random.default_rng(123).integers(0, self.vocab_size, size=(self.vocab_size, 2))

    def batch(self, rng: np.random.Generator, batch_size: int):
        ids = np.zeros((batch_size, self.length + 1), dtype=np.int64)
        ids[:, 0] = rng.integers(0, self.vocab_size, batch_size)
        for t in range(self.length):
            ids[:, t + 1] = self.successors[ids[:, t], rng.integers(0, 2, batch_size)]
        labels = torch.tensor(ids[:, 1:])
        labels[:, :3] = -100  # only some positions are answers
        return torch.tensor(ids[:, :-1]), labels


@pytest.fixture
def fake_tasks(monkeypatch):
    module = types.ModuleType("latentloop.tasks")
    module.get_task = lambda name, **kw: MarkovTask(**kw) if name == "markov" else (_ for _ in ()).throw(
        ValueError(f"unknown task {name!r}"))
    monkeypatch.setitem(sys.modules, "latentloop.tasks", module)
    monkeypatch.setattr(latentloop, "tasks", module, raising=False)


def test_micro_model_learns_a_generated_task_and_its_checkpoint_reproduces_validation(tmp_path, fake_tasks):
    recipe = load_recipe(None, base=micro_recipe(
        None, model={"vocab_size": 32}, data={"source": "task:markov", "task_args": {"length": 24}},
        train={"steps": 240, "val_every": 120, "log_every": 20, "ckpt_every": 120}, schedule={"warmup_steps": 20},
        optim={"lr": 1e-2}))
    trainer = Trainer(recipe, out=tmp_path / "run", progress=False)
    before = trainer.validate(0)
    summary = trainer.fit()
    after = summary["val"]
    assert before["loss@4"] > 3.0  # ~ln 32 at initialization
    assert after["loss@4"] < before["loss@4"] - 1.5  # the ideal is ln 2 = 0.69
    assert after["loss@4"] < 1.6
    assert set(after) >= {"loss@1", "ppl@32", "token_corr_state", "token_corr_final", "state_norm@4",
                          "relative_change_last"}

    model = latentloop.load_model(tmp_path / "run" / "model")
    task_file = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert task_file == {"name": "markov", "args": {"length": 24}}  # what demo and task_from_dir read back
    for depth in (1, 4, 32):
        total, count = 0.0, 0
        for x, y in trainer.plan.val_set:
            logits = model.forward_depths(x, [depth])[depth].logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += int((y != -100).sum())
        assert total / count == pytest.approx(after[f"loss@{depth}"], rel=1e-5)

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [120, 240]
    from latentloop.train.metrics import train_flops_per_token

    cheapest = train_flops_per_token(trainer.config, (0, 1), 24)  # one iteration, all of it backpropagated
    for r in (r for r in records if r["kind"] == "train"):
        assert r["tokens"] == 8 * 24  # batch 8 x the task's 24 positions
        # mfu x peak (1e9 FLOP/s) / tokens per second = model FLOPs per token over the window
        assert r["mfu"] * 1e9 / r["tokens_per_s"] >= cheapest * (1 - 1e-9)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000120", "step-000240"]
    assert latentloop.load_config(tmp_path / "run" / "checkpoints" / "step-000120").vocab_size == 32


def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path, shards):
    base = micro_recipe(shards, train={"steps": 60, "ckpt_every": 10, "val_every": 30, "keep_last": 2},
                        data={"grad_accum": 2}, optim={"weight_decay": 0.1})
    recipe_file = write_toml(tmp_path / "recipe.toml", base)
    train(load_recipe(recipe_file), out=tmp_path / "straight", progress=False)

    command = [sys.executable, "-m", "latentloop", "train", str(recipe_file), "--out", str(tmp_path / "killed"),
               "--no-progress"]
    proc = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "killed" / "checkpoints" / "step-000010" / "trainer_state.pt"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-way

    resumed = subprocess.run([*command, "--resume"], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    again = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "straight")
    kept = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert kept == ["step-000050", "step-000060"]  # keep_last = 2


def test_restarting_without_resume_refuses_to_overwrite(tmp_path, shards):
    recipe = load_recipe(None, base=micro_recipe(shards, train={"steps": 2, "val_every": 2}))
    train(recipe, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="pass --resume"):
        train(recipe, out=tmp_path / "run", progress=False)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_torchrun_processes_follow_the_single_process_curve(tmp_path, shards, strategy):
    base = micro_recipe(shards, train={"steps": 6, "val_every": 6, "distributed": strategy},
                        data={"batch_size": 8, "grad_accum": 2})
    recipe_file = write_toml(tmp_path / "recipe.toml", base)
    train(load_recipe(recipe_file), out=tmp_path / "one", progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "latentloop", "train", str(recipe_file), "--out", str(tmp_path / "two"), "--no-progress"]
    proc = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        raise
    assert proc.returncode == 0, stderr[-3000:]
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_warnings_for_ignored_recurrence_and_collapse(tmp_path, shards, capsys):
    """A fixed-depth-1 baseline never learns to iterate: its depth-32 loss is no better than depth 1."""
    recipe = load_recipe(None, base=micro_recipe(shards, objective={"fixed_depth": 1},
                                                 train={"steps": 30, "val_every": 30, "val_depths": [1, 32]},
                                                 schedule={"warmup_steps": 5}))
    trainer = Trainer(recipe, out=tmp_path / "run", progress=False)
    summary = trainer.fit()
    assert summary["val"]["loss@32"] >= summary["val"]["loss@1"]
    healthy = dict(summary["val"], token_corr_state=0.2, token_corr_final=0.95)
    trainer.log.enabled = True
    trainer._warn(31, healthy, [1, 32])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warnings = [r["message"] for r in records if r["kind"] == "warning" and r["step"] == 30]
    assert any(w.startswith("recurrence ignored") for w in warnings)
    synthetic = [r["message"] for r in records if r["kind"] == "warning" and r["step"] == 31]
    assert synthetic[0].startswith("hidden-state collapse: token_corr_final = 0.950")
    assert not any("token_corr_state" in w for w in synthetic)
    assert "WARNING (step 30): recurrence ignored" in capsys.readouterr().err


@pytest.mark.parametrize("train_options", [
    {"precision": "bf16"},
    pytest.param({"compile": True},
                 marks=pytest.mark.skipif(not has_cpp_compiler(), reason="inductor needs a C++ compiler")),
], ids=["bf16", "compile"])
def test_bf16_autocast_and_compile_follow_the_fp32_eager_curve(tmp_path, shards, train_options):
    """bf16 autocast keeps float32 master weights and tracks the float32 losses loosely; per-block
    torch.compile computes the same steps as eager (to float32 rounding)."""
    recipe = micro_recipe(shards, train={"steps": 8, "val_every": 8, "log_every": 1})
    reference = Trainer(load_recipe(None, base=recipe), out=tmp_path / "fp32", progress=False)
    eager = [reference.train_step(step)["loss"] for step in range(8)]
    recipe["train"].update(train_options)
    trainer = Trainer(load_recipe(None, base=recipe), out=tmp_path / "variant", progress=False)
    losses = [trainer.train_step(step)["loss"] for step in range(8)]
    assert all(p.dtype == torch.float32 for p in trainer.core.parameters())
    tolerance = 5e-2 if train_options.get("precision") == "bf16" else 1e-4
    assert losses == pytest.approx(eager, rel=tolerance)
    assert losses[-1] < losses[0]

"""Nothing lost: saves keep what they did not write, a save killed between its renames is recovered,
one run per directory (a lock), and the edge cases of --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from latentloop import load_model
from latentloop.cli import main
from latentloop.fsutil import LOCK_FILE, DirectoryLock, DirectoryLocked, atomic_directory

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

TASK_RECIPE = """\
seed = 0
device = "cpu"
[model]
hidden_size = 32
num_heads = 2
intermediate_size = 64
vocab_size = 64
context_length = 64
n_prelude = 1
n_core = 1
n_coda = 1
mean_recurrence = 2
mean_backprop_depth = 1
[data]
source = "task:addition"
batch_size = 4
val_batches = 1
[train]
steps = {steps}
peak_flops = 1e9
val_every = {steps}
log_every = 1
val_depths = [1, 2]
ckpt_every = 1
keep_last = 1
"""


def task_recipe(path: Path, steps: int = 2) -> Path:
    path.write_text(TASK_RECIPE.format(steps=steps))
    return path


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- 1. save_pretrained keeps what it did not write --------------------------------------------------------
def test_save_into_a_run_directory_keeps_its_other_contents(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "checkpoints" / "step-000010" / "trainer_state.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "notes").mkdir()
    (run / "notes" / "plan.yaml").write_text("keep: me\n")
    (run / "tokenizer.json").write_text("{}")
    (run / "elsewhere").symlink_to(tmp_path)
    model.save_pretrained(str(run))
    assert (run / "checkpoints" / "step-000010" / "trainer_state.pt").read_bytes() == b"state"
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (run / "notes" / "plan.yaml").read_text() == "keep: me\n"
    assert (run / "tokenizer.json").read_text() == "{}"
    assert (run / "elsewhere").is_symlink()
    assert torch.equal(load_model(run).transformer.wte.weight, model.transformer.wte.weight)
    assert hidden(tmp_path) == [], "no temporary or backup directory left beside the target"


def test_a_new_save_replaces_the_model_files_of_the_old_one(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    target = tmp_path / "m"
    model.save_pretrained(str(target), max_shard_bytes=20_000)
    assert (target / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        model.transformer.adapter.weight.add_(1.0)
    model.save_pretrained(str(target))  # single file now: the old index and shards must go
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_model(target).transformer.adapter.weight, model.transformer.adapter.weight)


def test_save_refuses_a_file_and_follows_a_symlink(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    (tmp_path / "file").write_text("precious")
    with pytest.raises(FileExistsError, match="is a file"):
        model.save_pretrained(str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "precious"
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "README.md").write_text("card")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    model.save_pretrained(str(tmp_path / "link"))
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "README.md").read_text() == "card"
    assert (tmp_path / "real" / "model.safetensors").is_file()
    load_model(tmp_path / "link")


# --- 2. a kill between the renames is recovered; strays are cleaned --------------------------------------
KILL_BETWEEN_RENAMES = """\
import os, signal, sys, torch
import latentloop.fsutil as fsutil
from latentloop import load_model
model = load_model(sys.argv[1])
with torch.no_grad():
    model.transformer.adapter.weight.add_(1.0)
fsutil._between_renames = lambda target: os.kill(os.getpid(), signal.SIGKILL)
model.save_pretrained(sys.argv[2])
"""


def kill_between_renames(source: Path, target: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(source), str(target)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize("recover_with", ["load", "save"])
def test_save_killed_between_its_renames_is_recovered(tiny_model_dir, tmp_path, recover_with):
    target = tmp_path / "model"
    model = load_model(tiny_model_dir)
    model.save_pretrained(str(target))
    (target / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    (target / "metrics.jsonl").write_text("{}\n")
    kill_between_renames(tiny_model_dir, target)
    assert not target.exists(), "the kill landed between the renames: the old copy moved aside, the new not in"
    assert any(".new-" in name for name in hidden(tmp_path)) and any(".old-" in name for name in hidden(tmp_path))

    expected = model.transformer.adapter.weight + 1.0
    if recover_with == "load":  # a loader finishes the committed replacement
        recovered = load_model(target)
    else:  # the next save does, then writes its own
        model.save_pretrained(str(target))
        recovered = load_model(target)
        expected = model.transformer.adapter.weight
    assert torch.equal(recovered.transformer.adapter.weight, expected)
    assert (target / "tokenizer.json").is_file() and (target / "metrics.jsonl").read_text() == "{}\n"
    assert hidden(tmp_path) == [], "strays are cleaned"


def test_strays_of_killed_saves_are_cleaned_and_an_old_backup_is_rolled_back(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    target = tmp_path / "model"
    model.save_pretrained(str(target))
    dead = 2**22 + 12345  # above any pid_max: no such process
    (tmp_path / f".model.tmp-{dead}-abc").mkdir()  # a save killed while writing
    (tmp_path / f".model.tmp-{dead}-abc" / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / ".model.k3j_x9qz.tmp").mkdir()  # what earlier versions left
    (tmp_path / f".config.json.{dead}-zz.tmp").write_text("{")  # a killed atomic file write
    load_model(target)
    assert hidden(tmp_path) == [f".config.json.{dead}-zz.tmp"]  # a file's strays go at its next write
    from latentloop.fsutil import atomic_write_text

    atomic_write_text(tmp_path / "config.json", "{}")
    assert hidden(tmp_path) == []

    # an earlier version killed between its renames: only `.model.old-PID` is left, and it is the model
    os.rename(target, tmp_path / f".model.old-{dead}")
    assert torch.equal(load_model(target).transformer.wte.weight, model.transformer.wte.weight)
    assert hidden(tmp_path) == []


def test_a_failed_block_leaves_the_target_and_no_strays(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("disk on fire")
    assert (target / "a").read_text() == "old" and hidden(tmp_path) == []


def test_checkpoints_listing_recovers_a_step_killed_between_renames(tiny_model_dir, tmp_path):
    from latentloop.train import checkpoints as ckpt

    step = ckpt.checkpoint_dir(tmp_path, 3)
    load_model(tiny_model_dir).save_pretrained(str(step))
    (step / ckpt.STATE_FILE).write_bytes(b"s")
    kill_between_renames(tiny_model_dir, step)
    assert not step.exists()
    assert ckpt.latest_checkpoint(tmp_path) == step and (step / ckpt.STATE_FILE).read_bytes() == b"s"
    assert hidden(step.parent) == []


# --- 3. one run per directory ------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_with_its_pid(tmp_path):
    lock = DirectoryLock(tmp_path, "a test")
    holder = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from latentloop.fsutil import DirectoryLock, DirectoryLocked
            try:
                DirectoryLock({str(tmp_path)!r})
            except DirectoryLocked as err:
                print(err)
        """)], env=ENV, capture_output=True, text=True, timeout=120)
    assert f"in process {os.getpid()}" in holder.stdout, holder.stderr
    lock.release()
    DirectoryLock(tmp_path).release()  # free again


def test_two_trainings_on_one_out_refuse_the_second(tmp_path):
    recipe = task_recipe(tmp_path / "r.toml", steps=100_000)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "latentloop", "train", str(recipe), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not (out / "metrics.jsonl").is_file():
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        lines_before = (out / "metrics.jsonl").read_text().count("\n")
        second = subprocess.run([*command, "--resume"], env=ENV, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2
        assert f"in use by a training run in process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert (out / "metrics.jsonl").read_text().count("\n") >= lines_before  # not truncated by the second
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the killed holder's lock: the directory can be resumed at once
    DirectoryLock(out).release()


def test_lock_in_process_is_a_clear_cli_error(tmp_path, capsys):
    recipe = task_recipe(tmp_path / "r.toml")
    lock = DirectoryLock(tmp_path / "run", "another run")
    try:
        assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"in use by another run in process {os.getpid()}" in err and (tmp_path / "run" / LOCK_FILE).exists()
    assert issubclass(DirectoryLocked, ValueError)


# --- 4. resume edge cases -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    recipe = task_recipe(root / "r.toml", steps=2)
    assert main(["train", str(recipe), "--out", str(root / "run"), "--no-progress"]) == 0
    return recipe, root / "run"


def test_resume_of_a_finished_run_does_not_rewrite_its_checkpoint(finished_run, capsys):
    recipe, run = finished_run
    step = run / "checkpoints" / "step-000002"
    before = (step.stat().st_ino, (step / "model.safetensors").stat().st_mtime_ns)
    summary = (run / "summary.json").read_text()
    assert main(["train", str(recipe), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert (step.stat().st_ino, (step / "model.safetensors").stat().st_mtime_ns) == before
    assert (run / "summary.json").read_text() == summary


def test_resume_refuses_a_missing_or_empty_run_directory(tmp_path, capsys):
    recipe = task_recipe(tmp_path / "r.toml")
    assert main(["train", str(recipe), "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert "no run directory" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"kind": "train", "step": 7}\n')
    assert main(["train", str(recipe), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no complete checkpoint" in capsys.readouterr().err
    assert (tmp_path / "empty" / "metrics.jsonl").read_text() == '{"kind": "train", "step": 7}\n', "not truncated"


def test_resume_drops_a_torn_last_metrics_line_and_names_a_bad_middle_one(finished_run, tmp_path, capsys):
    import shutil

    recipe, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"kind": "train", "step": 3, "lo')  # killed mid-write
    assert main(["train", str(recipe), "--out", str(run), "--resume", "--no-progress",
                 "--set", "train.steps=3", "--set", "train.val_every=3"]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert "dropping the torn last line" in capsys.readouterr().err

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert main(["train", str(recipe), "--out", str(run), "--resume", "--no-progress",
                 "--set", "train.steps=4", "--set", "train.val_every=4"]) == 2
    assert f"{metrics}:2 is not valid JSON" in capsys.readouterr().err


def test_disk_full_while_saving_says_so_and_that_the_last_checkpoint_is_intact(tmp_path, capsys, monkeypatch):
    import errno

    import latentloop.checkpoint as checkpoint

    recipe = task_recipe(tmp_path / "r.toml", steps=3)
    real_save = checkpoint.save_file
    calls = []

    def full_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", args[1])
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_after_one)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the disk is full" in err and "step-000001 is intact" in err and "--resume" in err
    assert hidden(tmp_path / "run" / "checkpoints") == []
    monkeypatch.undo()
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0

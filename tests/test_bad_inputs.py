"""Nothing cryptic: bad inputs across the commands each exit non-zero with one line that names the problem,
and no Python traceback.

Each case builds its bad input in a temporary directory and gives the argv of `latentloop` (run in
process through `latentloop.cli.main`, the same code path as the command) or, for `load_model`, a
library call. `classify` sorts an outcome into clear / traceback / silent / cryptic; the table asserts
"clear" for every case, and with BAD_INPUTS_REPORT=FILE it also appends each outcome to FILE (that
is how the figures before and after the fixes were counted). A few cases also run as real processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentloop.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
BAD_UTF8 = b"good line\nbad \xff\xfe byte\n"

RECIPE = {
    "seed": 0, "device": "cpu",
    "model": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "vocab_size": 64, "context_length": 64,
              "n_prelude": 1, "n_core": 1, "n_coda": 1, "mean_recurrence": 2, "mean_backprop_depth": 1},
    "data": {"source": "task:addition", "batch_size": 4, "val_batches": 1},
    "train": {"steps": 2, "peak_flops": 1e9, "val_every": 2, "log_every": 1, "val_depths": [1, 2]},
}


def toml_value(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


@dataclass
class Ctx:
    tmp: Path
    model_dir: Path  # a tiny model with tokenizer.json (shared, never modified)
    monkeypatch: pytest.MonkeyPatch

    def model(self, name: str = "m") -> Path:
        """A private copy of the tiny model to break."""
        target = self.tmp / name
        shutil.copytree(self.model_dir, target)
        return target

    def config(self, **changes) -> Path:
        directory = self.model()
        config = json.loads((directory / "config.json").read_text())
        config.update(changes)
        (directory / "config.json").write_text(json.dumps(config))
        return directory

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe(self, **sections) -> Path:
        recipe = json.loads(json.dumps(RECIPE))
        for section, values in sections.items():
            recipe.setdefault(section, {}).update(values)
        lines = [f"{k} = {toml_value(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
        for section, values in recipe.items():
            if isinstance(values, dict):
                lines += [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
        return self.file("recipe.toml", "\n".join(lines) + "\n")

    def train(self, *extra: str, **sections) -> list[str]:
        return ["train", str(self.recipe(**sections)), "--out", str(self.tmp / "run"), "--no-progress", *extra]

    def chat(self, *lines: str) -> Path:
        good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        return self.file("chat.jsonl", "\n".join([good, good, *lines]) + "\n")

    def corpus(self) -> Path:
        return self.file("corpus.txt", (REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
                         .read_text()[:3000])


@dataclass
class Case:
    id: str
    surface: str  # the command (or load_model) under test
    build: Callable[[Ctx], list[str] | Callable[[], object]]
    expect: str  # a regex the one-line message must match (re.search): it names the problem


def case(surface: str, id: str, expect: str):
    def register(build):
        CASES.append(Case(id=id, surface=surface, build=build, expect=expect))
        return build
    return register


CASES: list[Case] = []


# --- load_model: files that are not what they claim ------------------------------------------------
def _load(path: Path) -> Callable[[], object]:
    from latentloop import load_model

    return lambda: load_model(path)


def _weights(ctx: Ctx, content: bytes) -> Path:
    directory = ctx.model()
    (directory / "model.safetensors").write_bytes(content)
    return directory


def _truncated(ctx: Ctx) -> Path:
    directory = ctx.model()
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    return directory


def _index(ctx: Ctx, index: str) -> Path:
    directory = ctx.model()
    (directory / "model.safetensors.index.json").write_text(index)
    return directory


def _nan_weights(ctx: Ctx) -> Path:
    directory = ctx.model()
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["transformer.adapter.weight"][0, 0] = float("nan")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


LOAD_CASES = [
    ("truncated-safetensors", _truncated, "model.safetensors is not a readable safetensors file"),
    ("garbage-safetensors", lambda c: _weights(c, os.urandom(4096)), "model.safetensors is not a readable"),
    ("empty-safetensors", lambda c: _weights(c, b""), "model.safetensors is not a readable"),
    ("index-without-weight-map", lambda c: _index(c, '{"metadata": {}}'), "has no 'weight_map'"),
    ("index-not-json", lambda c: _index(c, '{"weight_map": '), "model.safetensors.index.json:1"),
    ("index-a-list", lambda c: _index(c, "[1, 2]"), "has no 'weight_map'"),
    ("config-a-list", lambda c: c.file("m/config.json", "[]").parent if c.model() else None, "JSON object"),
    ("config-not-json", lambda c: c.file("m/config.json", '{"n_embd": 64,').parent if c.model() else None,
     "config.json.* is not valid JSON"),
    ("config-bad-utf8", lambda c: c.file("m/config.json", b'{"a": "\xff"}').parent if c.model() else None,
     "not valid UTF-8"),
    ("config-n_embd-string", lambda c: c.config(n_embd="64"), "n_embd must be an integer"),
    ("config-tie-embeddings-string", lambda c: c.config(tie_embeddings="false"), "tie_embeddings must be true or"),
    ("config-qk-bias-string", lambda c: c.config(qk_bias="yes"), "qk_bias must be true or false"),
    ("config-vocab-float", lambda c: c.config(vocab_size=320.5, padded_vocab_size=320.5), "vocab_size must be an"),
    ("config-rope-base-string", lambda c: c.config(rope_base="big"), "rope_base must be a number"),
    ("config-mean-recurrence-null", lambda c: c.config(mean_recurrence=None), "mean_recurrence must be an integer"),
    ("nan-weights", _nan_weights, "NaN or inf"),
    ("path-is-a-file", lambda c: c.file("weights.bin", b"x"), "is a file"),
    ("missing-directory", lambda c: c.tmp / "nowhere", "no such model directory"),
]
for _id, _build, _expect in LOAD_CASES:
    CASES.append(Case(f"load_model-{_id}", "load_model", lambda c, b=_build: _load(b(c)), _expect))

# --- info -------------------------------------------------------------------------------------------
case("info", "config-a-list", "JSON object")(lambda c: ["info", str(c.file("m/config.json", "[1]").parent)])
case("info", "tie-embeddings-string", "tie_embeddings must be true or false")(
    lambda c: ["info", str(c.config(tie_embeddings="false"))])
case("info", "n_heads-string", "n_heads must be an integer")(lambda c: ["info", str(c.config(n_heads="4"))])
case("info", "steps-zero", "--steps")(lambda c: ["info", "tiny", "--steps", "0"])
case("info", "a-file", "is a file")(lambda c: ["info", str(c.file("notes.txt", "x"))])

# --- generate -----------------------------------------------------------------------------------------
def gen(ctx: Ctx, *flags: str, model: Path | None = None) -> list[str]:
    return ["generate", str(model or ctx.model_dir), "ROMEO:", "--max-new-tokens", "2", "--steps", "2", *flags]


case("generate", "model-is-a-file", "is a file")(lambda c: gen(c, model=c.model_dir / "config.json"))
case("generate", "init-scale-negative", "--init-scale")(lambda c: gen(c, "--init-scale", "-1"))
case("generate", "init-scale-nan", "--init-scale")(lambda c: gen(c, "--init-scale", "nan"))
case("generate", "min-steps-above-steps", "--min-steps 9")(lambda c: gen(c, "--exit", "kl", "--min-steps", "9"))
case("generate", "min-steps-above-max-steps", "min.steps")(
    lambda c: gen(c, "--exit", "kl", "--min-steps", "5", "--max-steps", "3"))
case("generate", "stop-empty", '--stop ""')(lambda c: gen(c, "--stop", ""))
case("generate", "temperature-negative", "--temperature")(lambda c: gen(c, "--temperature", "-1"))
case("generate", "temperature-nan", "temperature")(lambda c: gen(c, "--temperature", "nan"))
case("generate", "repetition-penalty-zero", "repetition.penalty")(lambda c: gen(c, "--repetition-penalty", "0"))
case("generate", "exit-unknown", "unknown exit criterion")(lambda c: gen(c, "--exit", "often"))
case("generate", "exit-threshold-text", "not a number")(lambda c: gen(c, "--exit", "kl:abc"))
case("generate", "exit-threshold-negative", "must be positive")(lambda c: gen(c, "--exit", "kl:-1"))
case("generate", "no-tokenizer", "has no tokenizer.json")(
    lambda c: gen(c, model=(lambda d: (d / "tokenizer.json").unlink() or d)(c.model())))
case("generate", "truncated-weights", "is not a readable safetensors file")(lambda c: gen(c, model=_truncated(c)))
case("generate", "nan-weights", "NaN or inf")(lambda c: gen(c, model=_nan_weights(c)))
case("generate", "invalid-tokenizer", "is not a valid tokenizer file")(
    lambda c: gen(c, model=(lambda d: (d / "tokenizer.json").write_text('{"model": 1}') and d)(c.model())))

# --- train ----------------------------------------------------------------------------------------------
case("train", "recipe-missing", "no recipe at")(lambda c: ["train", str(c.tmp / "nope.toml")])
case("train", "recipe-not-toml", "is not valid TOML")(lambda c: ["train", str(c.file("r.toml", "[optim\nlr = 1"))])
case("train", "recipe-bad-utf8", "not valid UTF-8")(lambda c: ["train", str(c.file("r.toml", b"seed = 0\n#\xff\n"))])
case("train", "lr-nan", "optim.lr must be a finite positive number")(lambda c: c.train(optim={"lr": math.nan}))
case("train", "lr-inf", "optim.lr must be a finite positive number")(lambda c: c.train(optim={"lr": math.inf}))
case("train", "vocab-size-string", "vocab_size must be an integer")(lambda c: c.train(model={"vocab_size": "2048"}))
case("train", "tie-embeddings-string", "tie_embeddings must be true or false")(
    lambda c: c.train(model={"tie_embeddings": "false"}))
case("train", "weight-decay-negative", "optim.weight_decay")(lambda c: c.train(optim={"weight_decay": -0.1}))
case("train", "grad-clip-negative", "optim.grad_clip")(lambda c: c.train(optim={"grad_clip": -1.0}))
case("train", "warmup-cooldown-longer-than-run", "exceed train.steps")(
    lambda c: c.train(schedule={"warmup_steps": 2, "cooldown_steps": 1}))
case("train", "min-lr-ratio-above-one", "schedule.min_lr_ratio")(lambda c: c.train(schedule={"min_lr_ratio": 2.0}))
case("train", "betas-nan", "optim.betas")(lambda c: c.train(optim={"betas": [0.9, math.nan]}))
case("train", "init-scale-negative", "objective.init_scale")(lambda c: c.train(objective={"init_scale": -1.0}))
case("train", "out-is-a-file", "is a file")(
    lambda c: ["train", str(c.recipe()), "--out", str(c.file("run.txt", "x")), "--no-progress"])
case("train", "resume-missing-out", "no run directory")(lambda c: c.train("--resume"))
case("train", "resume-empty-out", "holds no complete checkpoint")(
    lambda c: (c.tmp / "run").mkdir() or c.train("--resume"))
case("train", "set-without-equals", "--set expects key=value")(lambda c: c.train("--set", "optim.lr"))


@case("train", "disk-full", "the disk is full")
def _disk_full(ctx: Ctx) -> list[str]:
    import errno

    import latentloop.checkpoint as checkpoint

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    ctx.monkeypatch.setattr(checkpoint, "save_file", full)
    return ctx.train()


@case("train", "directory-locked", "in use by a test holder in process")
def _locked(ctx: Ctx) -> list[str]:
    from latentloop.fsutil import DirectoryLock

    lock = DirectoryLock(ctx.tmp / "run", "a test holder")
    ctx.monkeypatch.setattr(ctx, "held", lock, raising=False)
    return ctx.train()


# --- data prepare -------------------------------------------------------------------------------------
def prepare(ctx: Ctx, *sources: str, out: Path | None = None, tokenizer: Path | None = None) -> list[str]:
    return ["data", "prepare", *sources, "--tokenizer", str(tokenizer or ctx.model_dir),
            "--out", str(out or ctx.tmp / "shards"), "--block-size", "16"]


case("data prepare", "out-is-a-file", "is a file")(lambda c: prepare(c, str(c.corpus()), out=c.file("o", "x")))
case("data prepare", "source-missing", "no such data source")(lambda c: prepare(c, str(c.tmp / "none.txt")))
case("data prepare", "bad-utf8-txt", "bad.txt:2 is not valid UTF-8")(
    lambda c: prepare(c, str(c.file("bad.txt", BAD_UTF8))))
case("data prepare", "jsonl-line-a-list", "bad.jsonl:2 is a JSON list")(
    lambda c: prepare(c, str(c.file("bad.jsonl", '{"text": "a"}\n[1, 2]\n'))))
case("data prepare", "jsonl-bad-json", "bad.jsonl:2 is not valid JSON")(
    lambda c: prepare(c, str(c.file("bad.jsonl", '{"text": "a"}\n{"text": \n'))))
case("data prepare", "jsonl-bad-utf8", "bad.jsonl:2 is not valid UTF-8")(
    lambda c: prepare(c, str(c.file("bad.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n'))))
case("data prepare", "jsonl-missing-field", "has no field 'text'")(
    lambda c: prepare(c, str(c.file("bad.jsonl", '{"body": "a"}\n'))))
case("data prepare", "block-size-zero", "--block-size")(
    lambda c: [*prepare(c, str(c.corpus()))[:-1], "0"])
case("data prepare", "invalid-tokenizer", "is not a valid tokenizer file")(
    lambda c: prepare(c, str(c.corpus()), tokenizer=c.file("tok/tokenizer.json", '{"model": 1}')))
case("data prepare", "tokenizer-bad-json", "tokenizer.json:1")(
    lambda c: prepare(c, str(c.corpus()), tokenizer=c.file("tok/tokenizer.json", '{"model": ')))
case("data prepare", "docs-per-shard-zero", "--docs-per-shard")(
    lambda c: [*prepare(c, str(c.corpus())), "--docs-per-shard", "0"])
case("data prepare", "negative-weight", "mixture weight")(lambda c: prepare(c, f"{c.corpus()}:-1"))


# --- tokenizer train -------------------------------------------------------------------------------------
def tok(ctx: Ctx, *files: Path, vocab: int = 300, out: Path | None = None) -> list[str]:
    return ["tokenizer", "train", *map(str, files), "--vocab-size", str(vocab), "--out", str(out or ctx.tmp / "tok")]


case("tokenizer train", "empty-corpus", "no text to train on")(lambda c: tok(c, c.file("empty.txt", "")))
case("tokenizer train", "whitespace-corpus", "no text to train on")(lambda c: tok(c, c.file("ws.txt", " \n\n \n")))
case("tokenizer train", "vocab-too-small", "too small")(lambda c: tok(c, c.corpus(), vocab=10))
case("tokenizer train", "out-is-a-file", "is a file")(lambda c: tok(c, c.corpus(), out=c.file("o", "x")))
case("tokenizer train", "bad-utf8", "bad.txt:2 is not valid UTF-8")(lambda c: tok(c, c.file("bad.txt", BAD_UTF8)))
case("tokenizer train", "missing-file", "no such text file")(lambda c: tok(c, c.tmp / "none.txt"))
case("tokenizer train", "min-frequency-zero", "--min-frequency")(
    lambda c: [*tok(c, c.corpus()), "--min-frequency", "0"])


# --- finetune -------------------------------------------------------------------------------------------
def ft(ctx: Ctx, data: Path, *flags: str) -> list[str]:
    return ["finetune", str(ctx.model_dir), str(data), "--out", str(ctx.tmp / "ft"), "--steps", "1", "--no-progress",
            *flags]


case("finetune", "line-a-json-list", "chat.jsonl:3 is a JSON list")(
    lambda c: ft(c, c.chat('[{"role": "user"}]')))
case("finetune", "mistyped-role", "did you mean 'assistant'")(
    lambda c: ft(c, c.chat(json.dumps({"messages": [{"role": "asistant", "content": "x"}]}))))
case("finetune", "bad-json-line", r"chat.jsonl:3 \(chat data\) is not valid JSON")(
    lambda c: ft(c, c.chat('{"messages": [')))
case("finetune", "bad-utf8-line", r"chat.jsonl:3 \(chat data\) is not valid UTF-8")(
    lambda c: ft(c, c.file("chat.jsonl", c.chat().read_bytes() + b'{"messages": "\xff"}\n')))
case("finetune", "message-without-content", "must be an? (dict|object) with 'role' and 'content'")(
    lambda c: ft(c, c.chat(json.dumps({"messages": [{"role": "user"}]}))))
case("finetune", "no-messages-list", "has no 'messages' list")(lambda c: ft(c, c.chat('{"msgs": []}')))
case("finetune", "data-missing", "none.jsonl")(lambda c: ft(c, c.tmp / "none.jsonl"))
case("finetune", "out-is-a-file", "is a file")(
    lambda c: ["finetune", str(c.model_dir), str(c.chat()), "--out", str(c.file("o", "x"))])
case("finetune", "lr-nan", "optim.lr must be a finite positive number")(lambda c: ft(c, c.chat(), "--lr", "nan"))
case("finetune", "steps-zero", "train.steps must be >= 1")(lambda c: ft(c, c.chat(), "--steps", "0"))


# --- eval ------------------------------------------------------------------------------------------------
def ev(ctx: Ctx, *flags: str, data: Path | None = None) -> list[str]:
    return ["eval", str(ctx.model_dir), "--data", str(data or ctx.corpus()), "--depths", "1", "--limit", "1",
            "--quiet", "--out", str(ctx.tmp / "eval"), *flags]


case("eval", "out-is-a-file", "is a file")(lambda c: [*ev(c), "--out", str(c.file("o", "x"))])
case("eval", "device-unavailable", "--device")(
    lambda c: ev(c, "--device", "cuda:99" if torch.cuda.is_available() else "cuda"))
case("eval", "device-nonsense", "is not a torch device")(lambda c: ev(c, "--device", "gpu0"))
case("eval", "seq-len-zero", "--seq-len")(lambda c: ev(c, "--seq-len", "0"))
case("eval", "depths-zero", "--depths")(lambda c: [*ev(c), "--depths", "0"])
case("eval", "nothing-to-evaluate", "nothing to evaluate")(lambda c: ["eval", str(c.model_dir)])
case("eval", "task-missing", "none.jsonl")(
    lambda c: ["eval", str(c.model_dir), "--task", str(c.tmp / "none.jsonl"), "--out", str(c.tmp / "e")])
case("eval", "task-bad-utf8", r"t.jsonl:2 \(task file\) is not valid UTF-8")(
    lambda c: ["eval", str(c.model_dir), "--out", str(c.tmp / "e"),
               "--task", str(c.file("t.jsonl", b'{"prompt": "a", "answer": "b"}\n\xff\n'))])
case("eval", "init-scale-negative", "--init-scale")(lambda c: ev(c, "--init-scale", "-1"))
case("eval", "data-bad-utf8", "bad.txt:2 is not valid UTF-8")(lambda c: ev(c, data=c.file("bad.txt", BAD_UTF8)))


# --- inspect -------------------------------------------------------------------------------------------
def insp(ctx: Ctx, *flags: str, model: Path | None = None) -> list[str]:
    return ["inspect", str(model or ctx.model_dir), "ROMEO:", "--steps", "4", "--samples", "2",
            "--out", str(ctx.tmp / "insp"), "--device", "cpu", *flags]


case("inspect", "samples-beyond-memory", "--samples 1000000000")(lambda c: insp(c, "--samples", "1000000000"))
case("inspect", "out-is-a-file", "is a file")(lambda c: [*insp(c), "--out", str(c.file("o", "x"))])
case("inspect", "device-nonsense", "is not a torch device")(lambda c: [*insp(c), "--device", "gpu0"])
case("inspect", "init-scale-nan", "--init-scale")(lambda c: insp(c, "--init-scale", "nan"))
case("inspect", "steps-too-few", "--steps must be >= 4")(lambda c: [*insp(c), "--steps", "2"])
case("inspect", "samples-one", "--samples must be >= 2")(lambda c: [*insp(c), "--samples", "1"])
case("inspect", "empty-text", "the text is empty")(lambda c: ["inspect", str(c.model_dir), "", "--out", str(c.tmp)])
case("inspect", "model-is-a-file", "is a file")(lambda c: insp(c, model=c.model_dir / "config.json"))


# --- running and classifying ---------------------------------------------------------------------------
def visible_lines(err: str) -> list[str]:
    """The non-blank lines a terminal shows (a progress bar redrawn with \\r and cleared leaves nothing)."""
    return [shown for line in err.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]


def classify(rc: int | None, err: str, expect: str, escaped: BaseException | None) -> str:
    """clear: non-zero with one line naming the problem; traceback: an exception reached the user;
    silent: accepted (exit 0); cryptic: non-zero, but the message does not name the problem."""
    if escaped is not None or "Traceback" in err:
        return "traceback"
    if rc == 0:
        return "silent"
    lines = [line for line in visible_lines(err) if not line.startswith("note:")]
    return "clear" if len(lines) == 1 and re.search(expect, lines[0]) else "cryptic"


def run_case(c: Case, ctx: Ctx, capsys: pytest.CaptureFixture) -> tuple[str, str]:
    built = c.build(ctx)
    capsys.readouterr()
    rc, escaped = None, None
    try:
        if callable(built):  # a library call: a clear error is a ValueError/OSError with a one-line message
            built()
            rc = 0
        else:
            rc = main(built)
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    except (ValueError, OSError) as err:
        if not callable(built):
            escaped = err
        rc = 2
        print(f"load_model: error: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 (what the user would see as a traceback)
        escaped = err
    err = capsys.readouterr().err
    held = getattr(ctx, "held", None)
    if held is not None:
        held.release()
    outcome = classify(rc, err, c.expect, escaped)
    detail = f"{type(escaped).__name__}: {escaped}" if escaped is not None else err.strip()[-500:]
    report = os.environ.get("BAD_INPUTS_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"id": f"{c.surface}:{c.id}", "outcome": outcome, "detail": detail[:300]}) + "\n")
    return outcome, detail


def test_the_table_is_wide_enough():
    assert len(CASES) >= 60
    assert {c.surface for c in CASES} == {"load_model", "info", "generate", "train", "data prepare",
                                         "tokenizer train", "finetune", "eval", "inspect"}
    assert len({(c.surface, c.id) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[f"{c.surface.replace(' ', '-')}:{c.id}" for c in CASES])
def test_bad_input_gets_one_clear_line(c, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    outcome, detail = run_case(c, Ctx(tmp_path, tiny_model_dir, monkeypatch), capsys)
    assert outcome == "clear", f"{outcome}: {detail}"


@pytest.mark.parametrize(("name", "argv"), [
    ("generate-init-scale-nan", lambda c: gen(c, "--init-scale", "nan")),
    ("generate-truncated-weights", lambda c: gen(c, model=_truncated(c))),
    ("train-lr-nan", lambda c: c.train(optim={"lr": math.nan})),
    ("data-prepare-bad-utf8", lambda c: prepare(c, str(c.file("bad.txt", BAD_UTF8)))),
])
def test_real_processes_print_no_traceback(name, argv, tiny_model_dir, tmp_path, monkeypatch):
    command = argv(Ctx(tmp_path, tiny_model_dir, monkeypatch))
    proc = subprocess.run([sys.executable, "-m", "latentloop", *command], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    lines = visible_lines(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"latentloop {command[0]}"), proc.stderr


# --- what used to be silently wrong and is now honoured --------------------------------------------------
def test_finetune_flags_win_over_the_recipe(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "ft.toml"
    recipe.write_text('device = "cpu"\n[train]\nsteps = 50\npeak_flops = 1e9\nval_every = 50\nlog_every = 1\n'
                      'val_depths = [1]\n[optim]\nlr = 1e-3\n[data]\nbatch_size = 2\nval_batches = 1\n')
    ctx = Ctx(tmp_path, tiny_model_dir, None)
    assert main(["finetune", str(tiny_model_dir), str(ctx.chat(*[ctx.chat().read_text().splitlines()[0]] * 30)),
                 "--recipe", str(recipe), "--out", str(tmp_path / "ft"), "--steps", "1", "--lr", "1e-9",
                 "--no-progress"]) == 0
    ran = json.loads((tmp_path / "ft" / "recipe.json").read_text())
    assert ran["train"]["steps"] == 1 and ran["optim"]["lr"] == 1e-9
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1]
    assert max(r["lr"] for r in records if r["kind"] == "train") <= 1e-9
    capsys.readouterr()


def test_greedy_cli_runs_repeat_despite_the_random_initial_latent(tiny_model_dir, capsys):
    argv = ["generate", str(tiny_model_dir), "ROMEO:", "--steps", "2", "--max-new-tokens", "8"]  # init-scale 1
    outputs = []
    for _ in range(2):
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert main([*argv, "--seed", "0"]) == 0 and capsys.readouterr().out == outputs[0]


def test_inspect_memory_estimate_grows_with_samples():
    from latentloop.analysis.inspect import estimate_bytes
    from latentloop.config import get_preset

    huginn = get_preset("huginn-0125")
    small, large = (estimate_bytes(huginn, 16, 32, n)["path_independence"] for n in (8, 100_000))
    assert large == small * 12_500 and large > 2**40  # 100000 samples of 65536-token logits: terabytes

"""The bundled reasoning model ships inside the package and thinks better with more iterations."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from latentloop import load_model
from latentloop.tasks import task_from_dir
from latentloop.tasks.base import IGNORE
from latentloop.tasks.evaluate import depth_accuracy, depth_correct, partial_hits

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"config.json", "model.safetensors", "tokenizer.json", "task.json", "MODEL_CARD.md"}


@pytest.fixture(scope="module")
def installed_default(tmp_path_factory) -> Path:
    """Build the wheel, check the model is in it, and extract the package: the copy a user installs."""
    build = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(build), str(ROOT)], check=True, timeout=120)
    wheel = next(build.glob("latentloop-*.whl"))
    site = build / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for part in ("default", "baseline"):
            for name in SHIPPED - {"MODEL_CARD.md"} | ({"MODEL_CARD.md"} if part == "default" else set()):
                assert f"latentloop/assets/{part}/{name}" in names
        archive.extractall(site)
    assert sum(f.stat().st_size for f in (site / "latentloop/assets").rglob("*") if f.is_file()) < 20e6
    return site / "latentloop" / "assets" / "default"


def test_bundled_model_loads_from_the_installed_package(installed_default):
    model = load_model(installed_default)
    assert model.config.n_prelude == 1 and model.config.n_core == 1 and model.config.n_coda == 1
    assert model.config.vocab_size == task_from_dir(installed_default).vocab_size
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 5e6


def test_thinking_longer_answers_better(installed_default):
    model = load_model(installed_default).eval()
    task = task_from_dir(installed_default)
    problems = task.problems("validation", 48, seed=123)
    accuracy = depth_accuracy(model, task, problems, [1, 32])
    assert accuracy[32] >= 0.85
    assert accuracy[32] - accuracy[1] >= 0.4
    harder = depth_accuracy(model, task, task.problems("test", 48), [32, 64])
    assert harder[64] - harder[32] >= 0.4  # deeper than any trained chain: more iterations still help
    baseline = load_model(installed_default.parent / "baseline").float().eval()
    assert accuracy[32] - depth_accuracy(baseline, task, problems, [1])[1] >= 0.15  # same size, no recurrence


def test_partial_hits_agree_with_exact_answers():
    """At the answer's positions the partial-label sweep scores what exact match scores; at the other
    labelled positions more iterations resolve more of the chains."""
    model, task = load_model("default").eval(), task_from_dir("default")
    problems = task.problems("validation", 16, seed=5)
    hits = partial_hits(model, task, problems, [4, 32])
    correct = depth_correct(model, task, problems, [4, 32])
    _, answer_labels = task.encode(problems)
    _, all_labels = task.encode(problems, partial_labels=True)
    answer, labelled = answer_labels != IGNORE, all_labels != IGNORE
    for depth in (4, 32):
        assert torch.equal((hits[depth] | ~answer).all(-1), correct[depth])
    assert hits[32][labelled].float().mean() > hits[4][labelled].float().mean()


def test_default_resolves_to_the_bundled_model():
    from latentloop.checkpoint import resolve_model_dir

    assert resolve_model_dir("default") == ROOT / "latentloop" / "assets" / "default"
    assert task_from_dir("default").name == "pointers"  # names resolve like load_model's


def test_text_prompts_are_framed_as_in_training(installed_default):
    """A text prompt gets the tokenizer's <|begin_text|>, as every training sequence had, so the
    bundled model answers it like the task's own token ids."""
    from latentloop import generate
    from latentloop.tokenizer import load_tokenizer

    model, tok = load_model(installed_default).eval(), load_tokenizer(installed_default)
    task = task_from_dir(installed_default)
    problems = task.problems("validation", 8, seed=3)
    assert all(tok.encode_prompt(p.prompt) == task.prompt_ids(p) for p in problems)
    assert tok.encode_prompt(tok.decode(task.prompt_ids(problems[0]))) == task.prompt_ids(problems[0])  # one bos
    out = generate(model, [p.prompt for p in problems], tok, num_steps=32, init_scale=0.0, max_new_tokens=3)
    assert [text.removesuffix("<|end_text|>") for text in out.texts] == [p.answer for p in problems]

"""Every ```python block of README.md, docs/*.md and the model cards runs, so the examples cannot drift.

Blocks run in a fresh namespace inside a temporary directory, top to bottom. Placeholder model names
(`CKPT`, `path/to/huginn-0125`, `runs/stories-small/model`) are replaced by tiny saved models;
`default` is the real bundled model. A block that cannot run here says so on the line before it:
`<!-- docs-test: skip: REASON -->`. Beyond running, a line `expr  # [a, b, c] dtype` has its shape
checked (integers exactly, names by rank) and its type (`float32`, `numpy`); some blocks have
further checks below (the inspection example must compute what `latentloop inspect` does).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "latentloop" / "assets").glob("*/MODEL_CARD.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>.+?)\s*-->")
LOADS = re.compile(r"""(?:load_model|load_tokenizer)\(\s*["']([^"']+)["']|path=["']([^"']+)["']""")
SHAPE_COMMENT = re.compile(r"^(?P<expr>[\w.\[\]]+)\s+#\s*\[(?P<dims>[\w\s,]+)\](?P<rest>.*)$")


def python_blocks() -> list[tuple[str, int, str, str | None]]:
    """(file relative to the repo, line of the fence, code, skip reason or None) for each block."""
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                start, body = i + 1, []
                i += 1
                while lines[i].strip() != "```":
                    body.append(lines[i])
                    i += 1
                before = next((line for line in reversed(lines[: start - 1]) if line.strip()), "")
                skip = SKIP.search(before)
                blocks.append((str(path.relative_to(REPO)), start, "\n".join(body) + "\n",
                               skip.group("reason") if skip else None))
            i += 1
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_python_examples_and_skips_give_reasons():
    assert len(BLOCKS) >= 4
    files = {file for file, *_ in BLOCKS}
    assert {"README.md", "docs/generation.md", "docs/evaluation.md"} <= files
    for file, line, _, reason in BLOCKS:
        assert reason is None or len(reason) > 10, f"{file}:{line}: say why the block cannot run"


@pytest.fixture(scope="module")
def huginn_shaped_dir(tmp_path_factory) -> Path:
    """A tiny model with huginn's vocabulary size (65536), so README's ids and shapes hold."""
    from latentloop import RecurrentDepthLM, get_preset

    directory = tmp_path_factory.mktemp("huginn-shaped")
    model = RecurrentDepthLM(get_preset("tiny").replace(vocab_size=65536))
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(str(directory))
    return directory


def check_shape_comments(code: str, namespace: dict, where: str) -> None:
    for line in code.splitlines():
        match = SHAPE_COMMENT.match(line.strip())
        if not match:
            continue
        value = eval(match["expr"], namespace)  # noqa: S307 - our own docs
        dims = [d.strip() for d in match["dims"].split(",")]
        shape = tuple(value.shape)
        assert len(shape) == len(dims), f"{where}: {match['expr']} has shape {shape}, the docs say [{match['dims']}]"
        for size, dim in zip(shape, dims, strict=True):
            assert not dim.isdigit() or size == int(dim), f"{where}: {match['expr']} has shape {shape}"
        rest = match["rest"].split()
        if rest[:1] == ["numpy"]:
            assert isinstance(value, np.ndarray), f"{where}: {match['expr']} is a {type(value)}, not numpy"
        elif rest[:1] and rest[0] in ("float32", "bfloat16", "float16"):
            assert value.dtype == getattr(torch, rest[0]), f"{where}: {match['expr']} is {value.dtype}"


def check_generation(namespace: dict, stdout: str, tmp_path: Path) -> None:
    # the comment on the print line: the bundled model answers 5, two tokens (5 and the end) at 32 iterations
    assert stdout.splitlines()[0].startswith("5 [32, 32] ")
    assert namespace["out"].text == "5"


def check_inspection(namespace: dict, stdout: str, tmp_path: Path) -> None:
    """The Python example computes what `latentloop inspect` computes on the same model and text."""
    from latentloop.cli import main

    checkpoint = namespace["CHECKPOINT"]
    assert main(["inspect", checkpoint, "12 + 7 =", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    ours = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [t["id"] for t in cli["tokens"]] == list(namespace["ids"])
    for key in ("id", "text", "label", "exit_step"):
        assert [t[key] for t in ours["tokens"]] == [t[key] for t in cli["tokens"]], key
    np.testing.assert_allclose([t["latent_spread"] for t in ours["tokens"]],
                               [t["latent_spread"] for t in cli["tokens"]], rtol=1e-5)


CHECKS = {  # (file, first code line) -> extra check
    ("docs/generation.md", "import latentloop"): check_generation,
    ("docs/evaluation.md", "from latentloop import load_model"): check_inspection,
}


@pytest.mark.parametrize(("file", "line", "code", "skip"), BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS])
def test_docs_python_example_runs(file, line, code, skip, tiny_model_dir, huginn_shaped_dir, tmp_path,
                                  monkeypatch):
    if skip:
        pytest.skip(f"{file}:{line}: {skip}")
    placeholders = {"CKPT": tiny_model_dir, "path/to/huginn-0125": huginn_shaped_dir,
                    "runs/stories-small/model": tiny_model_dir}
    for found in LOADS.findall(code):
        name = next(n for n in found if n)
        assert name == "default" or name in placeholders, (
            f"{file}:{line} loads {name!r}: add a stand-in to the placeholders of this test, or mark the "
            "block with <!-- docs-test: skip: REASON -->")
    for name, directory in placeholders.items():
        code = code.replace(f'"{name}"', repr(str(directory)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__", "CHECKPOINT": str(tiny_model_dir)}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, f"{file}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
    where = f"{file}:{line}"
    check_shape_comments(code, namespace, where)
    first = next(c for c in code.splitlines() if c.strip())
    if (file, first) in CHECKS:
        CHECKS[(file, first)](namespace, stdout.getvalue(), tmp_path)

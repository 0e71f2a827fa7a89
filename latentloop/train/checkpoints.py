"""Training checkpoints: `OUT/checkpoints/step-NNNNNN/` is an HF model directory (`load_model` reads it)
with `trainer_state.pt` beside the weights (optimizer, step, RNG, data position).

A checkpoint counts only once `trainer_state.pt` exists; it is written last and atomically, so a run
killed while saving leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_write_bytes, recover_directory

STATE_FILE = "trainer_state.pt"
PATTERN = re.compile(r"step-(\d{6,})$")
LEFTOVER = re.compile(r"\.(step-\d{6,})\.")  # what a killed save leaves beside step-NNNNNN (see fsutil)


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    for name in sorted({m.group(1) for m in map(LEFTOVER.match, (p.name for p in root.iterdir())) if m}):
        recover_directory(root / name)  # a save killed between renames: finish or roll it back, drop strays
    found = []
    for path in root.iterdir():
        match = PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def write_state(directory: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(directory / STATE_FILE, buffer.getvalue())


def read_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)


def prune(out: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and incomplete older leftovers."""
    found = list_checkpoints(out)
    for _, path in found[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    newest = found[-1][0] if found else -1
    root = out / "checkpoints"
    for path in root.iterdir() if root.is_dir() else ():
        match = PATTERN.match(path.name)
        if match and int(match.group(1)) < newest and not (path / STATE_FILE).is_file():
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

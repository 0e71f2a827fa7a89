"""Shared test fixtures: the conformance checkpoint beside the repo, and a tiny saved model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "fixtures" / "huginn-conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    assert (CONFORMANCE / "checkpoint" / "config.json").is_file(), f"conformance fixture missing at {CONFORMANCE}"
    return CONFORMANCE


@pytest.fixture(scope="session")
def conformance_cases(conformance_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(conformance_dir / "cases.safetensors"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialized 'tiny' model with a small BPE tokenizer, saved in the HF format."""
    from latentloop import RecurrentDepthLM, get_preset
    from latentloop.tokenizer import train_bpe

    directory = tmp_path_factory.mktemp("tiny-model")
    text = (SHARED / "data" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
    tokenizer = train_bpe(text.split("\n\n"), vocab_size=320)
    model = RecurrentDepthLM(get_preset("tiny").replace(vocab_size=tokenizer.vocab_size))
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(str(directory))
    tokenizer.save(directory)
    return directory

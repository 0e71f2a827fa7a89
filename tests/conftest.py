"""Shared test fixtures: the conformance checkpoint beside the repo, a tiny saved model, and an untied one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "fixtures" / "huginn-conformance"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`) each worker takes its share of the cores, and so do the processes the
    tests start: N workers with OpenMP pools as wide as the machine spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def untied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with its own head (tie_embeddings false), shaped unlike the shared fixture (6 heads of 8,
    1-3-1 layers), every tensor random (norms and biases too), saved in shards of at most 20 kB (the head,
    the embedding and the blocks land in separate files) with tiny_model_dir's tokenizer beside it.
    original.pt, beside the directory, holds the exact weights a load must give back."""
    from latentloop import ModelConfig, RecurrentDepthLM
    from latentloop.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    config = ModelConfig(hidden_size=48, num_heads=6, intermediate_size=96, vocab_size=tokenizer.vocab_size,
                         context_length=64, n_prelude=1, n_core=3, n_coda=1, mean_recurrence=3,
                         mean_backprop_depth=2, tie_embeddings=False)
    model = RecurrentDepthLM(config)
    generator = torch.Generator().manual_seed(7)
    model.init_weights(generator)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    directory = tmp_path_factory.mktemp("untied") / "model"
    model.save_pretrained(str(directory), max_shard_bytes=20_000)
    tokenizer.save(directory)
    torch.save(model.state_dict(), directory.parent / "original.pt")
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the modules that ask (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models gain nothing from a second one, which on a busy 2-core machine costs many times the work
    in synchronisation, and runs stay bitwise comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

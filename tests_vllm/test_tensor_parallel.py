"""Tensor parallel 2 on vLLM's CPU backend: heads, SwiGLU width and vocabulary split over two ranks."""

from __future__ import annotations

import os

from conftest import CHECKPOINT, latentloop_greedy, start_engine, vllm_greedy
from test_offline import BATCH


def test_two_ranks_give_the_same_tokens(monkeypatch) -> None:
    # vLLM binds each CPU rank's threads to a NUMA node of its own; a one-node machine binds them by hand,
    # a core (or half of the cores) per rank
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(
        ",".join(map(str, part)) for part in (cores[:half], cores[half:] or cores[:half])))
    llm = start_engine(CHECKPOINT, tensor_parallel_size=2, num_steps=8)
    assert vllm_greedy(llm, BATCH, 12) == latentloop_greedy(CHECKPOINT, BATCH, 12, num_steps=8)

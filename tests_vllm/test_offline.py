"""vLLM offline greedy decoding with the plugin equals the reference's tokens and latentloop's, per setting."""

from __future__ import annotations

import pytest
import torch
from conftest import CHECKPOINT, FIXTURE, latentloop_greedy, start_engine, vllm_greedy
from safetensors.torch import load_file

CASES = load_file(str(FIXTURE / "cases.safetensors"))
PROMPT = CASES["greedy_prompt"][0].tolist()
# prompts of several lengths, decoded in one batch: rows join and finish together in vLLM's scheduler
BATCH = [PROMPT, CASES["input_ids"][0].tolist(), CASES["input_ids"][1, :5].tolist(), [7, 200, 13]]


@pytest.mark.parametrize("steps", [2, 8])
def test_greedy_equals_the_reference_at_a_fixed_depth(steps: int) -> None:
    llm = start_engine(CHECKPOINT, num_steps=steps)
    expected = CASES[f"greedy_r{steps}"][0].tolist()
    assert vllm_greedy(llm, [PROMPT], 10) == [expected]
    assert vllm_greedy(llm, BATCH, 12) == latentloop_greedy(CHECKPOINT, BATCH, 12, num_steps=steps)


def test_kv_budget_equals_latentloop_ring() -> None:
    llm = start_engine(CHECKPOINT, num_steps=8, kv_budget=2)
    assert vllm_greedy(llm, BATCH, 12) == latentloop_greedy(CHECKPOINT, BATCH, 12, num_steps=8, kv_budget=2)


def test_untied_head_and_kernel_sized_heads(tmp_path) -> None:
    """A random model of another shape: untied head, 1-3-1 layers, heads of 32 features (no padding), and
    a one-slot ring whose tokens differ from the full cache's (on the fixture every budget gives the same)."""
    import latentloop

    config = latentloop.ModelConfig(hidden_size=64, num_heads=2, intermediate_size=96, vocab_size=320,
                                    context_length=96, n_prelude=1, n_core=3, n_coda=1, tie_embeddings=False)
    model = latentloop.RecurrentDepthLM(config)
    model.init_weights(torch.Generator().manual_seed(3))
    model.save_pretrained(str(tmp_path), max_shard_bytes=64_000)  # several shards and an index
    llm = start_engine(tmp_path, num_steps=5, kv_budget=1)
    prompts = [[1, 2, 3, 4, 5, 6], [300, 17], list(range(40, 70))]
    ring = latentloop_greedy(tmp_path, prompts, 16, num_steps=5, kv_budget=1)
    assert vllm_greedy(llm, prompts, 16) == ring
    assert ring != latentloop_greedy(tmp_path, prompts, 16, num_steps=5)

"""The vLLM plugin's tests: they run in the vLLM environment (`./setup.sh --vllm`, then
`.venv-vllm/bin/python -m pytest -q -n auto tests_vllm`) and skip elsewhere, naming that command.

vLLM's engine takes ~35 s to start on 2 CPU cores: a test starts one engine per setting it checks, and `-n auto`
starts them side by side (most of a start is single-threaded: 184 s for the lot on 2 cores, 259 s one by one).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "huginn-conformance"
CHECKPOINT = FIXTURE / "checkpoint"


def pytest_collection_modifyitems(config, items) -> None:
    if importlib.util.find_spec("vllm") is None:
        skip = pytest.mark.skip(reason="vLLM is not installed here; run `./setup.sh --vllm`, then "
                                       "`.venv-vllm/bin/python -m pytest -q -n auto tests_vllm`")
        for item in items:
            item.add_marker(skip)


# What a small model needs from vLLM's CPU backend: an explicit KV cache size (its default reserves 92 % of
# the machine's memory), no graph capture, and the prompt recomputed rather than read from a prefix cache.
ENGINE_ARGS = dict(dtype="float32", kv_cache_memory_bytes=1 << 28, enforce_eager=True, skip_tokenizer_init=True,
                   enable_prefix_caching=False, max_num_seqs=16)


def start_engine(model_dir: Path | str, tensor_parallel_size: int = 1, **overrides):
    """A `vllm.LLM` on `model_dir` with the plugin's settings (`num_steps`, `kv_budget`, ...) as hf_overrides;
    several tensor-parallel ranks run as processes of vLLM's multiprocessing executor."""
    from vllm import LLM

    parallel = {} if tensor_parallel_size == 1 else dict(tensor_parallel_size=tensor_parallel_size,
                                                         distributed_executor_backend="mp")
    return LLM(model=str(model_dir), hf_overrides=overrides, **parallel, **ENGINE_ARGS)


def vllm_greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts, all submitted at once (vLLM batches them)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def latentloop_greedy(model_dir: Path | str, prompts: list[list[int]], max_tokens: int, **options) -> list[list[int]]:
    """The same continuations from latentloop's own engine, from the zero initial state."""
    import latentloop

    model = latentloop.load_model(model_dir)
    result = latentloop.generate(model, prompts, max_new_tokens=max_tokens, init_scale=0.0, stop_ids=[], **options)
    return result.tokens

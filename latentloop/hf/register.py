"""Registration with transformers' Auto classes, so huginn directories load without remote code."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from ..config import HF_MODEL_TYPE
from .config import HuginnConfig
from .modeling import RavenForCausalLM


def register() -> None:
    """Map model_type "huginn_raven" to `HuginnConfig` and `RavenForCausalLM`. A config's `auto_map` (the
    reference's remote code) is then not needed: with `trust_remote_code=False` (the default)
    transformers uses the registered classes."""
    AutoConfig.register(HF_MODEL_TYPE, HuginnConfig, exist_ok=True)
    AutoModelForCausalLM.register(HuginnConfig, RavenForCausalLM, exist_ok=True)

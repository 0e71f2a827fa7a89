"""latentloop: recurrent-depth language models (huginn-0125 and family)."""

from .checkpoint import load_config, load_model
from .config import PRESETS, ModelConfig, get_preset
from .generate import GenerationResult, generate, stream
from .model import ModelOutput, RecurrentDepthLM

__all__ = ["PRESETS", "GenerationResult", "ModelConfig", "ModelOutput", "RecurrentDepthLM", "generate", "get_preset",
           "load_config", "load_model", "stream"]
__version__ = "0.1.0"

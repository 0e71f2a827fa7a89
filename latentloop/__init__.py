"""latentloop: recurrent-depth language models (huginn-0125 and family)."""

from .checkpoint import load_config, load_model
from .config import PRESETS, ModelConfig, get_preset
from .model import ModelOutput, RecurrentDepthLM

__all__ = ["PRESETS", "ModelConfig", "ModelOutput", "RecurrentDepthLM", "get_preset", "load_config", "load_model"]
__version__ = "0.1.0"

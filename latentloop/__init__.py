"""latentloop: recurrent-depth language models (huginn-0125 and family).

The names below load on first use (PEP 562), so `import latentloop` and `latentloop --help` do not
pay for importing torch until something needs it."""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "load_config": "checkpoint", "load_model": "checkpoint",
    "PRESETS": "config", "ModelConfig": "config", "get_preset": "config",
    "GenerationResult": "generate", "generate": "generate", "stream": "generate",
    "ModelOutput": "model", "RecurrentDepthLM": "model",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Importing the submodule `latentloop.generate` must not replace the function `latentloop.generate`
    (the import system binds each loaded submodule as an attribute of its package)."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

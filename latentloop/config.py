"""Model configuration: a typed dataclass, named presets, and the HF `config.json` mapping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

HF_MODEL_TYPE = "huginn_raven"
HF_ARCHITECTURE = "RavenForCausalLM"


class ConfigError(ValueError):
    """A model configuration that cannot describe a valid recurrent-depth model."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a recurrent-depth model: prelude -> core x r -> coda, with sandwich blocks."""

    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 704
    vocab_size: int = 4096
    context_length: int = 1024
    n_prelude: int = 2
    n_core: int = 4
    n_coda: int = 2
    rope_base: float = 50000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qk_bias: bool = True
    mean_recurrence: int = 32
    mean_backprop_depth: int = 8

    def __post_init__(self) -> None:
        wrong = [f"{f.name} must be {_KIND_NAMES[f.type]}, got {getattr(self, f.name)!r}"
                 for f in fields(self) if not _is_kind(getattr(self, f.name), f.type)]
        if wrong:
            raise ConfigError("invalid ModelConfig: " + "; ".join(wrong))
        problems = []
        for name in ("hidden_size", "num_heads", "intermediate_size", "vocab_size", "context_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "choose num_heads dividing hidden_size"
            )
        elif self.num_heads >= 1 and (self.hidden_size // self.num_heads) % 2:
            problems.append(
                f"head dimension {self.hidden_size // self.num_heads} is odd; rotary embeddings rotate "
                "feature pairs, so hidden_size / num_heads must be even"
            )
        if self.n_core < 1:
            problems.append("n_core (layers in the recurrent core) must be at least 1")
        if self.n_prelude < 0 or self.n_coda < 0:
            problems.append("n_prelude and n_coda must be >= 0")
        if self.mean_recurrence < 1 or self.mean_backprop_depth < 1:
            problems.append("mean_recurrence and mean_backprop_depth must be >= 1")
        if self.rope_base <= 0 or self.norm_eps <= 0:
            problems.append("rope_base and norm_eps must be positive")
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def n_layers(self) -> int:
        """Distinct blocks (the parameter count's view of depth)."""
        return self.n_prelude + self.n_core + self.n_coda

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    @property
    def init_std(self) -> float:
        """Std of the 'takase' init used for weights and the random initial latent."""
        return math.sqrt(2.0 / (5.0 * self.hidden_size))

    def effective_depth(self, num_steps: int) -> int:
        """Layers a token passes through at `num_steps` iterations (132 for huginn at 32)."""
        return self.n_prelude + self.n_core * num_steps + self.n_coda

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {sorted(unknown)}; known: {field_names()}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- HF config.json -------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The keys of the published huginn `config.json` (readable by its reference code)."""
        expected_depth = self.n_prelude + self.n_coda + self.n_core * self.mean_recurrence
        return {
            "architectures": [HF_ARCHITECTURE],
            "model_type": HF_MODEL_TYPE,
            "n_embd": self.hidden_size,
            "n_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "head_dim": self.head_dim,
            "n_layers": self.n_layers,
            "n_layers_in_prelude": self.n_prelude,
            "n_layers_in_recurrent_block": self.n_core,
            "n_layers_in_coda": self.n_coda,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "padded_vocab_size": self.vocab_size,
            "block_size": self.context_length,
            "rope_base": self.rope_base,
            "norm_eps": self.norm_eps,
            "tie_embeddings": self.tie_embeddings,
            **({} if self.tie_embeddings else {"tie_word_embeddings": False}),  # as huginn's own configs write it
            "qk_bias": self.qk_bias,
            "bias": False,
            "mean_recurrence": self.mean_recurrence,
            "mean_backprop_depth": self.mean_backprop_depth,
            "effective_expected_depth": expected_depth,
            "sampling_scheme": "poisson-lognormal-filling",
            "state_init": "like-init",
            "injection_type": "linear",
            "block_class_name": "SandwichBlock",
            "mlp_class_name": "GatedMLP",
            "nonlin_name": "SiLU",
            "norm_class_name": "RMSNorm_llama",
            "init_strategy": "takase",
            "init_values": {
                "std": self.init_std,
                "embedding": self.init_std,
                "out_proj": self.init_std / math.sqrt(2 * expected_depth),
                "embed_scale": self.embed_scale,
            },
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(hf, dict):
            raise ConfigError(f"{source} must hold a JSON object of settings, got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type != HF_MODEL_TYPE:
            raise ConfigError(
                f"{source} is not a huginn-family config: model_type is {model_type!r}, "
                f"expected {HF_MODEL_TYPE!r}"
            )
        if hf.get("injection_type", "linear") != "linear":
            raise ConfigError(f"{source}: injection_type {hf['injection_type']!r} is not supported (only 'linear')")
        if hf.get("bias", False):
            raise ConfigError(f"{source}: bias=true is not part of the huginn architecture")
        required = ("n_embd", "n_heads", "intermediate_size", "vocab_size", "block_size",
                    "n_layers_in_prelude", "n_layers_in_recurrent_block", "n_layers_in_coda")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ConfigError(f"{source} lacks required key(s): {missing}")
        keys = {  # ModelConfig field: (config.json key, default)
            "hidden_size": ("n_embd", None), "num_heads": ("n_heads", None),
            "intermediate_size": ("intermediate_size", None),
            "vocab_size": ("padded_vocab_size" if "padded_vocab_size" in hf else "vocab_size", None),
            "context_length": ("block_size", None), "n_prelude": ("n_layers_in_prelude", None),
            "n_core": ("n_layers_in_recurrent_block", None), "n_coda": ("n_layers_in_coda", None),
            "rope_base": ("rope_base", 50000.0), "norm_eps": ("norm_eps", 1e-6),
            "qk_bias": ("qk_bias", True),
            "mean_recurrence": ("mean_recurrence", 32), "mean_backprop_depth": ("mean_backprop_depth", 8),
        }
        kinds = {f.name: f.type for f in fields(cls)}
        values, wrong = {}, []
        for name, (key, default) in keys.items():
            value = hf.get(key, default)
            if kinds[name] == "float" and _is_kind(value, "int"):
                value = float(value)
            if not _is_kind(value, kinds[name]):  # e.g. "tie_embeddings": "false", "n_embd": "256"
                wrong.append(f"{key} must be {_KIND_NAMES[kinds[name]]}, got {value!r}")
            values[name] = value
        if wrong:
            raise ConfigError(f"{source}: " + "; ".join(wrong))
        values["tie_embeddings"] = _tie_embeddings(hf, source)
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        from .fsutil import read_json

        path = Path(path)
        try:
            data = read_json(path)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return cls.from_hf_dict(data, source=str(path))


_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _is_kind(value: Any, kind: str) -> bool:
    """`fields()` types are strings here (from __future__ annotations): 'int', 'float' or 'bool'."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tie_embeddings(hf: dict[str, Any], source: str) -> bool:
    """Whether the head is the embedding: `tie_embeddings`, or the transformers name `tie_word_embeddings`
    (huginn's configs carry it when false); both absent means tied, both present must agree."""
    given = {key: hf[key] for key in ("tie_embeddings", "tie_word_embeddings") if key in hf}
    for key, value in given.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false (got {value!r})")
    if len(set(given.values())) > 1:
        raise ConfigError(
            f"{source}: tie_embeddings is {str(given['tie_embeddings']).lower()} but tie_word_embeddings is "
            f"{str(given['tie_word_embeddings']).lower()}; make them agree (false when lm_head.weight is stored "
            "separately from transformer.wte.weight)"
        )
    return next(iter(given.values()), True)


def field_names() -> list[str]:
    return [f.name for f in fields(ModelConfig)]


PRESETS: dict[str, ModelConfig] = {
    # The published 3.5B model (spec section 1).
    "huginn-0125": ModelConfig(
        hidden_size=5280, num_heads=55, intermediate_size=17920, vocab_size=65536, context_length=4096,
        n_prelude=2, n_core=4, n_coda=2, mean_recurrence=32, mean_backprop_depth=8,
    ),
    # The shape of the conformance fixture: unit tests.
    "tiny": ModelConfig(
        hidden_size=64, num_heads=4, intermediate_size=160, vocab_size=256, context_length=128,
        n_prelude=2, n_core=4, n_coda=2, mean_recurrence=8, mean_backprop_depth=4,
    ),
    # ~7.6M parameters: CPU training and decoding benchmarks.
    "small": ModelConfig(
        hidden_size=256, num_heads=4, intermediate_size=704, vocab_size=4096, context_length=1024,
        n_prelude=2, n_core=4, n_coda=2, mean_recurrence=16, mean_backprop_depth=8,
    ),
    # ~18M parameters: the "10M+" CPU training preset.
    "medium": ModelConfig(
        hidden_size=384, num_heads=6, intermediate_size=1056, vocab_size=8192, context_length=1024,
        n_prelude=2, n_core=4, n_coda=2, mean_recurrence=32, mean_backprop_depth=8,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

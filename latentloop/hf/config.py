"""`HuginnConfig`: huginn-0125's `config.json` as a transformers config (model_type `huginn_raven`).

The fields are the published keys, so a huginn directory loads as it is and a saved one stays
readable by `latentloop.load_model` (and by the reference code). Keys transformers does not know
(`auto_map`, `init_values`, ...) are kept as attributes and written back on save. Three fields are
ours: the defaults of `forward`/`generate` for `num_steps`, `init_scale` and `kv_budget`, which
also lets lm-eval's `--model_args ...,num_steps=8` reach the model (from_pretrained sets them).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from ..config import HF_MODEL_TYPE, ConfigError, ModelConfig

# huginn's tokenizer: <|begin_text|>, <|end_text|>, <|end_turn|> end a generation; <|pad|> pads.
HUGINN_BOS, HUGINN_PAD = 65504, 65509
HUGINN_STOP_IDS = [65505, 65508, 65504]


class HuginnConfig(PreTrainedConfig):
    """The recurrent-depth model's shape plus the test-time defaults (`num_steps`, `init_scale`, `kv_budget`)."""

    model_type = HF_MODEL_TYPE
    # the generic names that vLLM and other transformers-based tools read
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_heads", "max_position_embeddings": "block_size"}

    n_embd: int = 5280
    n_heads: int = 55
    n_layers: int = 8
    n_layers_in_prelude: int = 2
    n_layers_in_recurrent_block: int = 4
    n_layers_in_coda: int = 2
    intermediate_size: int = 17920
    vocab_size: int = 65536
    padded_vocab_size: int | None = None
    block_size: int = 4096
    rope_base: float = 50000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    tie_word_embeddings: bool | None = None
    qk_bias: bool = True
    bias: bool = False
    injection_type: str = "linear"
    mean_recurrence: int = 32
    mean_backprop_depth: int = 8
    num_steps: int | None = None  # core iterations per forward; None: mean_recurrence
    init_scale: float = 1.0  # std scale of the random initial latent; 0 starts from zeros (deterministic)
    kv_budget: int | None = None  # core iterations a cache keeps per layer (a ring); None: all
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = self.tie_embeddings
        if self.padded_vocab_size is None:
            self.padded_vocab_size = self.vocab_size
        if self.padded_vocab_size > HUGINN_PAD and self.bos_token_id is None and self.eos_token_id is None:
            # huginn's vocabulary: its special ids, so generate stops where the reference does
            self.bos_token_id, self.eos_token_id = HUGINN_BOS, list(HUGINN_STOP_IDS)
            self.pad_token_id = HUGINN_PAD if self.pad_token_id is None else self.pad_token_id
        super().__post_init__(**kwargs)
        self.to_model_config()  # a shape that cannot be built is named now, not at the first forward

    @property
    def num_hidden_layers(self) -> int:
        """Distinct blocks (what transformers' generic code reads as depth)."""
        return self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda

    def to_model_config(self) -> ModelConfig:
        """The latentloop `ModelConfig` these keys describe (the same mapping `latentloop.load_model` uses)."""
        keys = {k: getattr(self, k) for k in (
            "n_embd", "n_heads", "n_layers_in_prelude", "n_layers_in_recurrent_block", "n_layers_in_coda",
            "intermediate_size", "vocab_size", "padded_vocab_size", "block_size", "rope_base", "norm_eps",
            "tie_embeddings", "tie_word_embeddings", "qk_bias", "bias", "injection_type", "mean_recurrence",
            "mean_backprop_depth")}
        try:
            return ModelConfig.from_hf_dict({"model_type": HF_MODEL_TYPE, **keys}, source="HuginnConfig")
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> HuginnConfig:
        """The transformers config of a latentloop model (the keys `latentloop.save_model` writes)."""
        keys = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")}
        return cls(**keys, **kwargs)

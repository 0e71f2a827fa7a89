"""`RavenForCausalLM`: latentloop's `RecurrentDepthLM` as a transformers causal LM (no remote code).

The class holds the recurrent-depth model's own modules (`transformer`, `lm_head`) under the
published tensor names, so huginn checkpoints load with `from_pretrained` and `save_pretrained`
writes the format `latentloop.load_model` reads. The forward pass is the latentloop model's own
(`embed`, `recur`, `decode`), so logits are the same to the bit; `latentloop_model` is that model,
sharing every parameter, for the whole latentloop feature set (early exit, speculative decoding,
warm start, analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..model import Attention, NumSteps, RecurrentDepthLM, RMSNorm, pair_swap_matrix
from .cache import RecurrentCache
from .config import HuginnConfig


@dataclass
class RecurrentCausalLMOutput(CausalLMOutputWithPast):
    """transformers' causal-LM output plus the latent (ln_f of the final state) and that state."""

    latent: Tensor | None = None
    state: Tensor | None = None


class RavenForCausalLM(PreTrainedModel, GenerationMixin):
    """huginn-0125 and family for transformers: `forward(..., num_steps, init_scale)`, `generate(..., num_steps=32)`.

    `labels` follow transformers' convention (aligned with `input_ids`, shifted inside, -100 ignored),
    so Trainer and PEFT work unchanged. Decoding uses `RecurrentCache` (K/V per layer and iteration).
    """

    config_class = HuginnConfig
    config: HuginnConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^freqs_cis$"]  # the published RoPE table; recomputed in float32
    _no_split_modules = ["SandwichBlock"]
    supports_gradient_checkpointing = True

    def __init__(self, config: HuginnConfig, model: RecurrentDepthLM | None = None) -> None:
        super().__init__(config)
        inner = model if model is not None else RecurrentDepthLM(config.to_model_config())
        self.transformer, self.lm_head = inner.transformer, inner.lm_head
        # Not a submodule: its modules are this model's own (no second copy in state_dict or .to()).
        object.__setattr__(self, "_latentloop", inner)
        self._out_projections = {id(block.attn.proj) for block in self._blocks()} | {
            id(block.mlp.proj) for block in self._blocks()}
        self.post_init()

    @classmethod
    def from_latentloop(cls, model: RecurrentDepthLM) -> RavenForCausalLM:
        """A loaded latentloop model as a transformers model, sharing its parameters (nothing is copied)."""
        with init.no_init_weights():
            return cls(HuginnConfig.from_model_config(model.config), model)

    @property
    def latentloop_model(self) -> RecurrentDepthLM:
        """The latentloop model these weights belong to: `latentloop.generate(hf_model.latentloop_model, ...)`."""
        return self._latentloop

    def _blocks(self) -> list[nn.Module]:
        t = self.transformer
        return [*t.prelude, *t.core_block, *t.coda]

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None,
                                    every_n_layers: int = 1) -> None:
        """`activation_checkpointing_enable()`: latentloop's per-iteration checkpointing (huginn's scheme: one
        recomputed unit per core iteration, memory flat in depth), not transformers' per-layer one."""
        self.gradient_checkpointing = enable  # what `is_activation_checkpointing` looks for
        self._latentloop.checkpoint_iterations = enable

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = self._latentloop.lm_head = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """huginn's 'takase' init (spec section 3): what a model built from a config starts from."""
        mc = self._latentloop.config
        std = mc.init_std
        if isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, Attention):
            init.copy_(module.pair_swap, pair_swap_matrix(module.head_dim))  # a buffer no checkpoint holds
            if module.qk_bias is not None:
                init.zeros_(module.qk_bias)
        elif isinstance(module, nn.Linear | nn.Embedding):
            if id(module) in self._out_projections:
                std = std / (2 * mc.effective_depth(mc.mean_recurrence)) ** 0.5
            init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        num_steps: NumSteps = None,
        init_scale: float | None = None,
        kv_budget: int | None = None,
        initial_state: Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> RecurrentCausalLMOutput:
        """Logits of `input_ids` [B, S] after `num_steps` core iterations (default `config.num_steps`, else
        `mean_recurrence`) from a random initial latent of scale `init_scale` (0: zeros) or `initial_state`.

        `attention_mask` [B, past + S] marks real tokens (left padding is handled: pads are never
        attended to and positions count real tokens only). `cache`/`past_key_values` is a
        `RecurrentCache` (created when `use_cache`; `kv_budget` bounds its core slots)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("RavenForCausalLM takes input_ids, not inputs_embeds (the prelude starts from the "
                             "scaled embedding of ids)")
        model, config = self._latentloop, self.config
        steps = num_steps if num_steps is not None else config.num_steps
        scale = config.init_scale if init_scale is None else init_scale
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = config.use_cache and labels is None
        batch, length = input_ids.shape
        call = None
        if use_cache or cache is not None:
            cache = self._recurrent_cache(cache, kv_budget if kv_budget is not None else config.kv_budget)
            call = cache.view(length, attention_mask, batch, input_ids.device)
            if position_ids is None:
                position_ids = _positions(attention_mask, cache.length, length, input_ids.device)
        ctx = model.context(length, attention_mask if call is None else None, position_ids, cache=call)
        e = model.embed(input_ids, ctx)
        if initial_state is not None:
            if initial_state.shape != e.shape:
                raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}, expected {tuple(e.shape)}")
            x = initial_state.to(e.dtype)
        else:
            x = model.initial_state(e, scale)
        x = model.recur(x, e, ctx, steps)
        latent, logits = model.decode(x, ctx)
        if call is not None:
            call.commit()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1],
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        return RecurrentCausalLMOutput(loss=loss, logits=logits, cache=cache if use_cache else None,
                                       latent=latent, state=x)

    def _recurrent_cache(self, cache: Cache | None, kv_budget: int | None) -> RecurrentCache:
        """The cache to decode with: the given one, or a new one in place of `generate`'s empty default."""
        if isinstance(cache, RecurrentCache):
            return cache
        if cache is None or cache.get_seq_length() == 0:
            return RecurrentCache(self._latentloop.config, kv_budget)
        raise ValueError(f"RavenForCausalLM needs a RecurrentCache (K/V per layer and iteration), got a filled "
                         f"{type(cache).__name__}; pass cache=latentloop.hf.RecurrentCache(...) or none")


def _positions(attention_mask: Tensor | None, past: int, length: int, device: torch.device) -> Tensor:
    """Rotary positions of the new tokens: real tokens counted from 0 in each row (left padding skipped)."""
    if attention_mask is None:
        return torch.arange(past, past + length, device=device)[None]
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]

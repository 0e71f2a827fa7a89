"""`RecurrentCache`: a transformers `Cache` that keeps K/V per (layer, iteration), as huginn needs.

Prelude and coda layers have one slot each; core layer j has one slot per iteration, or a ring of
`kv_budget` slots (iteration i uses slot i mod k). A new token at iteration i attends to the past
tokens' K/V of the same core layer at that slot. When a later call runs more iterations than an
earlier one, the slot of an iteration some past tokens never ran is first filled with the slot
below it, so those tokens are read at the latest iteration they computed (spec section 4).

Each slot is a transformers `DynamicLayer`, so the generic cache operations of `generate` (beam
reordering, batch selection, cropping for assisted decoding) work unchanged. The model calls
`RecurrentCache.view(...)` once per forward; the view is latentloop's `KVStore` (`attend`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from ..config import ModelConfig


class SlotLayer(DynamicLayer):
    """The K/V of one (layer, iteration slot) [B, H, L, D]: appended once per forward, then
    overwritten in place of the same positions (a ring slot is written by several iterations)."""

    def write(self, key: Tensor, value: Tensor, past: int) -> tuple[Tensor, Tensor]:
        if self.get_seq_length() <= past:
            return self.update(key, value)
        end = past + key.shape[-2]
        self.keys = torch.cat([self.keys[..., :past, :], key, self.keys[..., end:, :]], dim=-2)
        self.values = torch.cat([self.values[..., :past, :], value, self.values[..., end:, :]], dim=-2)
        return self.keys, self.values

    def extend_from(self, below: SlotLayer, length: int) -> None:
        """Positions this slot lacks up to `length`, from the slot of the iteration below."""
        have = self.get_seq_length()
        if have < length:
            self.update(below.keys[..., have:length, :], below.values[..., have:length, :])


class RecurrentCache(Cache):
    """K/V of every (layer, iteration slot) for every past position; `kv_budget` bounds the core slots."""

    def __init__(self, config: ModelConfig, kv_budget: int | None = None) -> None:
        if kv_budget is not None and (not isinstance(kv_budget, int) or kv_budget < 1):
            raise ValueError(f"kv_budget must be a positive number of iterations (or None for all); got {kv_budget!r}")
        super().__init__(layers=[])
        self.config, self.kv_budget = config, kv_budget
        self.core_begin, self.coda_begin = config.n_prelude, config.n_prelude + config.n_core
        self.index: dict[tuple[int, int], int] = {}  # (global layer, slot) -> position in self.layers
        self.length = 0  # positions committed by finished forwards

    def slot(self, layer: int, step: int) -> int:
        if not self.core_begin <= layer < self.coda_begin:
            return 0
        return step if self.kv_budget is None else step % self.kv_budget

    def layer(self, layer: int, slot: int) -> SlotLayer:
        if (layer, slot) not in self.index:
            self.index[(layer, slot)] = len(self.layers)
            self.layers.append(SlotLayer())
        return self.layers[self.index[(layer, slot)]]

    def view(self, new_tokens: int, attention_mask: Tensor | None, batch: int, device: torch.device) -> CacheCall:
        """One forward of `new_tokens` positions; `attention_mask` [B, past + new] (1 = token) or None."""
        if attention_mask is not None and attention_mask.shape[-1] != self.length + new_tokens:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds "
                             f"{self.length} and {new_tokens} are new; pass the mask of past and new tokens")
        return CacheCall(self, new_tokens, attention_mask, batch, device)

    # --- transformers' Cache interface: the committed length, not a layer's (slots differ mid-forward) ---
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (transformers 5 passes a negative count: rejected
        candidates of assisted decoding; 0 keeps everything)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes minus the number of positions to forget, got {tokens_to_remove}")
        keep = max(self.length + tokens_to_remove, 0)
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[..., :keep, :], layer.values[..., :keep, :]
        self.length = keep

    def reset(self) -> None:
        self.layers, self.index, self.length = [], {}, 0


class CacheCall:
    """One forward's access to the cache: the mask over past and new positions, and `attend`."""

    def __init__(self, cache: RecurrentCache, new_tokens: int, attention_mask: Tensor | None, batch: int,
                 device: torch.device) -> None:
        self.cache, self.past = cache, cache.length
        total = self.past + new_tokens
        query = torch.arange(self.past, total, device=device)[:, None]
        key = torch.arange(total, device=device)[None, :]
        allowed = (key <= query)[None]  # [1, S, L]
        if attention_mask is not None:  # padding is never attended to, but a pad attends to itself
            allowed = (allowed & attention_mask.bool()[:, None, :]) | (key == query)[None]
        self.mask = allowed.expand(batch, -1, -1).unsqueeze(1)  # [B, 1, S, L]
        self.finish = total

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cache = self.cache
        slot = cache.slot(layer, step)
        target = cache.layer(layer, slot)
        if slot > 0 and target.get_seq_length() < self.past:  # past tokens that never ran this iteration
            target.extend_from(cache.layer(layer, slot - 1), self.past)
        keys, values = target.write(k, v, self.past)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)

    def commit(self) -> None:
        self.cache.length = self.finish

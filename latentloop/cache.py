"""A preallocated KV cache for recurrent-depth decoding.

Every prelude and coda layer has one slot; every core layer has one slot per iteration, or a ring of
`kv_budget` slots (iteration i uses slot i mod k). Columns are token positions of the (left-padded)
batch; `valid` marks real tokens, so pads are never attended and rotary positions skip them.

Adaptive exits leave later iterations of a token unwritten. `commit` fills those ring slots with the
token's last computed iteration, so a later token at iteration i reads, for each past token, the
latest iteration that token computed (spec section 4). The per-token work is a fixed number of
tensor ops, independent of the sequence length.

Every (layer, slot) has its own K and V tensors [B, H, L, D]: a compiled decode step (`step_slots`)
then takes and updates them in place as plain inputs, not as views of one shared tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig


class KVCache:
    """K/V of every (layer, iteration slot) for every position: the model calls `attend`."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_length: int,
        num_steps: int,
        kv_budget: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if kv_budget is not None and (not isinstance(kv_budget, int) or kv_budget < 1):
            raise ValueError(f"kv_budget must be a positive number of iterations (or None for all); got {kv_budget!r}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if max_length > config.context_length:
            raise ValueError(
                f"prompt plus new tokens need {max_length} positions but the model's context length is "
                f"{config.context_length}; shorten the prompt or lower max_new_tokens"
            )
        self.config = config
        self.core_slots = num_steps if kv_budget is None else min(kv_budget, num_steps)
        self.core_begin, self.coda_begin = config.n_prelude, config.n_prelude + config.n_core
        n_layers = self.coda_begin + config.n_coda
        shape = (batch_size, config.num_heads, max_length, config.head_dim)
        slots = [self.core_slots if self.core_begin <= i < self.coda_begin else 1 for i in range(n_layers)]
        self.keys = [[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)] for n in slots]
        self.values = [[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)] for n in slots]
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.iterations = torch.zeros(batch_size, max_length, dtype=torch.int32, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0  # columns holding committed tokens
        self.active: Tensor | None = None  # rows allowed to write (the rest exited early); None = all
        self.padded = False
        self._end = 0
        self._mask: Tensor | None = None
        # What step_slots hands a compiled step, refreshed in place once per new token (the same tensors
        # every call: compiled graphs see inputs they already know): 0 or -inf per column, the new column.
        self.step_bias = torch.zeros(batch_size, 1, 1, max_length, dtype=dtype, device=device)
        self.step_column = torch.zeros(1, dtype=torch.long, device=device)
        self._bias, self._columns = self.step_bias, self.step_column  # those of the open columns
        self._slots_stale = True

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V tensors (the part that grows with iterations and length)."""
        return sum(t.numel() * t.element_size() for ring in self.keys + self.values for t in ring)

    def slot(self, layer: int, step: int) -> tuple[Tensor, Tensor]:
        """K and V [B, H, L, D] of global block `layer` at iteration `step` (core layers: a ring)."""
        index = step % self.core_slots if self.core_begin <= layer < self.coda_begin else 0
        return self.keys[layer][index], self.values[layer][index]

    def begin(self, valid: Tensor | None, new_tokens: int) -> Tensor:
        """Open columns [length, length + new_tokens) for one forward; returns their positions [B, S]."""
        start, end = self.length, self.length + new_tokens
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} requested")
        batch = self.valid.shape[0]
        if valid is None:
            valid = torch.ones(batch, new_tokens, dtype=torch.bool, device=self.valid.device)
        else:
            self.padded = self.padded or not bool(valid.all())
        self.valid[:, start:end] = valid
        positions = self.next_position[:, None] + (valid.long().cumsum(-1) - 1).clamp(min=0)
        self.next_position += valid.sum(-1)
        self._end = end
        self._mask = self._attention_mask(start, end) if (self.padded or new_tokens > 1) else None
        self._slots_stale = True
        return positions

    def _attention_mask(self, start: int, end: int) -> Tensor:
        """[B, 1, S, end] bool: causal over real tokens; a pad attends only to itself (no empty rows)."""
        query = torch.arange(start, end, device=self.valid.device)[:, None]
        key = torch.arange(end, device=self.valid.device)[None, :]
        allowed = (key <= query) & self.valid[:, None, :end]
        return (allowed | (key == query)).unsqueeze(1)

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Write this call's K/V into the layer's slot, then attend over every column so far."""
        keys, values = self.slot(layer, step)
        start, end = self._end - q.shape[2], self._end
        if self.active is None:
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
        else:  # rows that already exited keep the K/V of their last iteration
            keep = self.active[:, None, None, None]
            keys[:, :, start:end] = torch.where(keep, k, keys[:, :, start:end])
            values[:, :, start:end] = torch.where(keep, v, values[:, :, start:end])
        return F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=self._mask)

    def commit(self, iterations: Tensor | int, provisional: bool = False) -> None:
        """Close the open columns; `iterations` [B] (or one int) is how many iterations each row ran.
        `provisional` columns (speculative drafts) are rewound before any token reads an iteration they
        skipped, so those slots are left unfilled (the fill costs about what the draft's own forward does)."""
        start, end = self.length, self._end
        counts = torch.as_tensor(iterations, device=self.valid.device).expand(self.valid.shape[0])
        self.iterations[:, start:end] = counts[:, None]
        if not provisional and (isinstance(iterations, Tensor) or iterations < self.core_slots):
            self._fill_unwritten(start, end, counts)
        self.length = end

    def _fill_unwritten(self, start: int, end: int, iterations: Tensor) -> None:
        """Ring slots a row never wrote (it exited early) get that row's last computed iteration."""
        slots = torch.arange(self.core_slots, device=iterations.device)[:, None]
        source = torch.minimum(slots, (iterations.to(slots.device) - 1)[None, :])  # [slots, B]
        for ring in self.keys[self.core_begin : self.coda_begin] + self.values[self.core_begin : self.coda_begin]:
            window = torch.stack([t[:, :, start:end] for t in ring])  # [slots, B, H, S, D]
            window = window.gather(0, source.view(self.core_slots, -1, 1, 1, 1).expand_as(window))
            for t, filled in zip(ring, window, strict=True):
                t[:, :, start:end] = filled

    def rewind(self, length: int) -> None:
        """Forget columns from `length` on (rejected speculative drafts)."""
        self.length = self._end = length
        self.next_position = self.valid[:, :length].sum(-1)

    def step_slots(self, first_layer: int, n_layers: int, step: int) -> StepSlots:
        """K/V of layers [first_layer, first_layer + n_layers) at iteration `step` for the columns opened
        by `begin`: what a compiled step takes."""
        if self._slots_stale:
            self._refresh_slots()
        slots = [self.slot(layer, step) for layer in range(first_layer, first_layer + n_layers)]
        return StepSlots([k for k, _ in slots], [v for _, v in slots], self._columns, self._bias, first_layer,
                         self.active)

    def _refresh_slots(self) -> None:
        """Bias and columns of the open columns; for one new token, the persistent tensors, in place."""
        start, end = self.length, self._end
        if end - start == 1:
            column = torch.arange(self.max_length, device=self.valid.device)
            hidden = ~self.valid | (column >= end)  # pads and columns not written yet
            self.step_bias.zero_().masked_fill_(hidden[:, None, None, :], float("-inf"))
            self.step_column.fill_(start)
            self._bias, self._columns = self.step_bias, self.step_column
        else:  # many tokens (a prompt, speculative drafts): causal over real tokens, as in `attend`
            allowed = torch.zeros(self.valid.shape[0], 1, end - start, self.max_length, dtype=torch.bool,
                                  device=self.valid.device)
            allowed[..., :end] = self._mask
            self._bias = torch.zeros(allowed.shape, dtype=self.step_bias.dtype, device=allowed.device)
            self._bias.masked_fill_(~allowed, float("-inf"))
            self._columns = torch.arange(start, end, device=self.valid.device)
        self._slots_stale = False


@dataclass
class StepSlots:
    """A KV store holding only tensors (no Python positions), so that one compiled graph serves every
    token and iteration: the new tokens' K/V go to the columns `columns`, and attention runs over every
    column with `bias` hiding pads, later tokens and columns not written yet."""

    keys: list[Tensor]  # [B, H, L, D] per layer, from first_layer on
    values: list[Tensor]
    columns: Tensor  # [S]
    bias: Tensor  # [B, 1, S, L]: 0, or -inf where hidden
    first_layer: int
    active: Tensor | None = None  # [B] rows that may write (the rest exited early)

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        keys, values = self.keys[layer - self.first_layer], self.values[layer - self.first_layer]
        if self.active is not None:
            keep = self.active[:, None, None, None]
            k = torch.where(keep, k, keys.index_select(2, self.columns))
            v = torch.where(keep, v, values.index_select(2, self.columns))
        keys.index_copy_(2, self.columns, k)
        values.index_copy_(2, self.columns, v)
        if q.shape[2] > 1:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.bias)
        # one token, q [B, H, 1, D]: products and sums, which inductor fuses into one pass over K and one over V
        scores = (q * keys).sum(-1).unsqueeze(-2) * q.shape[-1] ** -0.5 + self.bias  # [B, H, 1, L]
        probs = torch.softmax(scores.float(), dim=-1).type_as(q)
        return (probs.transpose(-1, -2) * values).sum(-2, keepdim=True)

"""A KV cache addressed by row: the running batch's slots for recurrent-depth decoding.

The cache has `rows` row slots (the batch's capacity) and `max_length` positions per row, plus one
scratch column. Every row has a length of its own: a request's K/V sit at positions 0.. of its row, so rows
join and leave the batch independently and nothing is ever padded. A freed row is reused by the next
request as it is: positions past its length are never read.

Every prelude and coda layer has one slot; every core layer has one slot per iteration, or a ring of
`kv_budget` slots (iteration i uses slot i mod k). Adaptive exits leave later iterations of a token
unwritten: `commit` fills those slots with the token's last computed iteration, so a later token at
iteration i reads, for each past token, the latest iteration that token computed (spec section 4).

One attention function (`attend_rows`) serves eager and compiled decoding: it writes a call's K/V at
each row's positions and attends over that row's columns. Rows that take part in a call without
writing (exited early, or padding of a compiled batch) write to the scratch column instead, which no
query ever sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig


def attend_rows(
    keys: Tensor, values: Tensor, rows: Tensor, writes: Tensor, bias: Tensor, q: Tensor, k: Tensor, v: Tensor,
) -> Tensor:
    """Store k, v [B, H, S, D] at columns `writes` [B, S] of `rows` [B] in keys/values [R, H, L + 1, D],
    then attend from q over the first W columns of those rows; `bias` [B, 1, S, W] is 0 where a query
    may look and -inf elsewhere."""
    at = rows.unsqueeze(1)  # [B, 1] against writes [B, S]
    keys[at, :, writes] = k.transpose(1, 2)
    values[at, :, writes] = v.transpose(1, 2)
    width = bias.shape[-1]
    past_k, past_v = keys[:, :, :width].index_select(0, rows), values[:, :, :width].index_select(0, rows)
    if q.shape[2] > 1 or not torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, past_k, past_v, attn_mask=bias)
    # compiled, one token: products and sums, which inductor fuses with the row gather into one pass over K and V
    scores = (q * past_k).sum(-1).unsqueeze(-2) * q.shape[-1] ** -0.5 + bias  # [B, H, 1, W]
    probs = torch.softmax(scores.float(), dim=-1).type_as(q)
    return (probs.transpose(-1, -2) * past_v).sum(-2, keepdim=True)


@dataclass
class Slots:
    """The K/V tensors of a run of layers, plus the rows of them a call uses at its iteration and its
    positions: only tensors, so that one compiled graph serves every token, iteration and row set."""

    keys: list[Tensor]  # [slots * R, H, L + 1, D] per layer, from first_layer on (`KVCache.layer_keys`)
    values: list[Tensor]
    rows: Tensor  # [B]: a row's slot at this iteration (core layers: row + slot * R)
    writes: Tensor  # [B, S] the columns this call's K/V go to
    bias: Tensor  # [B, 1, S, W]: the columns in use
    first_layer: int

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        i = layer - self.first_layer
        return attend_rows(self.keys[i], self.values[i], self.rows, self.writes, self.bias, q, k, v)


class CacheView:
    """One forward's view of the cache: which rows take part, where their new tokens go, the mask.
    The model calls `attend`; compiled graphs take `slots(...)`. Core layers' K/V are read and written at
    the call's iteration, or, in a view `at_steps`, at each row's own iteration (rows pondering tokens
    they started at different times)."""

    def __init__(self, cache: KVCache, rows: Tensor, positions: Tensor, in_use: int) -> None:
        self.cache, self.rows, self.positions, self.writes = cache, rows, positions, positions
        # attention reads the `in_use` columns (the longest row's), at least 2: compiled graphs are dynamic
        # in the width only above 1 (dynamo specializes sizes 0 and 1), and a 1-token prompt's first decode reads one
        width = max(in_use, min(2, cache.max_length + 1))
        column = torch.arange(width, device=positions.device)
        hidden = column[None, None, :] > positions[:, :, None]  # [B, S, W]: later tokens, unwritten columns
        self.bias = torch.zeros(hidden.shape, dtype=cache.dtype, device=positions.device).masked_fill_(
            hidden, float("-inf")).unsqueeze(1)
        self.own_core_rows: Tensor | None = None  # [B]: each row's core rows at its own iteration (`at_steps`)
        self._core_rows: dict[int, Tensor] = {}

    def core_rows(self, step: int) -> Tensor:
        """Rows of the core layers' K/V tensors [slots * R, ...] this call uses at iteration `step`."""
        if self.own_core_rows is not None:
            return self.own_core_rows
        slot = step % self.cache.core_slots
        if slot not in self._core_rows:
            self._core_rows[slot] = self.cache.stacked_row(self.rows, slot) if slot else self.rows
        return self._core_rows[slot]

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        rows = self.core_rows(step) if self.cache.is_core(layer) else self.rows
        return attend_rows(self.cache.layer_keys[layer], self.cache.layer_values[layer], rows, self.writes,
                           self.bias, q, k, v)

    def _copy(self, **changes) -> CacheView:
        view = object.__new__(CacheView)
        view.__dict__ |= self.__dict__ | {"_core_rows": {}} | changes
        return view

    def subset(self, index: Tensor, writes: Tensor | None = None) -> CacheView:
        """The view of the batch entries `index` (compaction); `writes` [len(index)] bool: False entries
        write to the scratch column."""
        own = self.own_core_rows
        view = self._copy(rows=self.rows[index], positions=self.positions[index], bias=self.bias[index],
                          writes=self.writes[index], own_core_rows=None if own is None else own[index])
        if writes is not None:
            view.writes = torch.where(writes[:, None], view.writes, self.cache.max_length)
        return view

    def at_steps(self, steps: list[int]) -> CacheView:
        """This view with row i at core iteration steps[i], whatever the iteration a call names."""
        steps = torch.tensor(steps, device=self.rows.device)
        return self._copy(own_core_rows=self.cache.stacked_row(self.rows, steps))

    def slots(self, first_layer: int, n_layers: int, step: int) -> Slots:
        cache, layers = self.cache, range(first_layer, first_layer + n_layers)
        rows = self.core_rows(step) if cache.is_core(first_layer) else self.rows
        return Slots([cache.layer_keys[i] for i in layers], [cache.layer_values[i] for i in layers], rows,
                     self.writes, self.bias, first_layer)


class KVCache:
    """K/V of every (layer, iteration slot) for every row slot and position."""

    def __init__(
        self,
        config: ModelConfig,
        rows: int,
        max_length: int,
        num_steps: int,
        kv_budget: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_cache_settings(config, rows, max_length, num_steps, kv_budget)
        self.config, self.dtype, self.num_steps = config, dtype, num_steps
        self.core_slots = core_slots(num_steps, kv_budget)
        self.core_begin, self.coda_begin = config.n_prelude, config.n_prelude + config.n_core
        n_layers = self.coda_begin + config.n_coda
        shape = (rows, config.num_heads, max_length + 1, config.head_dim)  # the last column is scratch
        slots = [self.core_slots if self.is_core(i) else 1 for i in range(n_layers)]
        # One tensor per layer, its iteration slots stacked by row: slot s of row r is row s * rows + r, so one
        # call can read and write each row at an iteration of its own. `keys[layer][s]` is slot s's [R, ...].
        self.layer_keys = [torch.zeros((n * rows, *shape[1:]), dtype=dtype, device=device) for n in slots]
        self.layer_values = [torch.zeros((n * rows, *shape[1:]), dtype=dtype, device=device) for n in slots]
        self.keys = [list(t.unflatten(0, (n, rows)).unbind(0)) for t, n in zip(self.layer_keys, slots, strict=True)]
        self.values = [list(t.unflatten(0, (n, rows)).unbind(0)) for t, n in zip(self.layer_values, slots, strict=True)]
        self.lengths = [0] * rows  # positions holding committed tokens, per row
        self.depths = [num_steps] * rows  # the most iterations a token of the row may run (see `allocate`)
        self.max_length, self.device = max_length, self.layer_keys[0].device
        self._free = list(range(rows - 1, -1, -1))  # popped from the end: row 0 first

    @classmethod
    def for_memory(
        cls, config: ModelConfig, max_cache_bytes: int, max_length: int, num_steps: int,
        kv_budget: int | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
        max_rows: int | None = None,
    ) -> KVCache:
        """As many rows as `max_cache_bytes` holds, at most `max_rows`."""
        per_row = bytes_per_token(config, num_steps, kv_budget, dtype) * (max_length + 1)  # + the scratch column
        rows = max_cache_bytes // per_row
        if rows < 1:
            raise ValueError(f"a cache budget of {max_cache_bytes / 2**20:.1f} MiB is too small for one row of "
                             f"{max_length} positions ({per_row / 2**20:.1f} MiB): raise max_cache_bytes, "
                             "shorten max_length or set a kv_budget")
        return cls(config, min(rows, max_rows or rows), max_length, num_steps, kv_budget, dtype, device)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def free_rows(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V tensors (the part that grows with iterations and length)."""
        return sum(t.numel() * t.element_size() for t in self.layer_keys + self.layer_values)

    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self.config, self.num_steps, None if self.core_slots == self.num_steps
                               else self.core_slots, self.dtype)

    def allocate(self, depth: int | None = None) -> int:
        """A free row, its length reset to 0 (what it held stays, unread). `depth`: the most iterations a
        token of the row will run (default the cache's num_steps); slots past it are never read, so an
        early exit fills only the slots below it (`commit` refuses a row that ran deeper)."""
        if depth is not None and not 1 <= depth <= self.num_steps:
            raise ValueError(f"a row's depth must lie in [1, {self.num_steps}] (the cache's num_steps), got {depth}")
        if not self._free:
            raise RuntimeError("no free row in the KV cache; release one first")
        row = self._free.pop()
        self.lengths[row], self.depths[row] = 0, depth or self.num_steps
        return row

    def release(self, row: int) -> None:
        if row in self._free or not 0 <= row < self.rows:
            raise ValueError(f"row {row} is not in use")
        self._free.append(row)

    def is_core(self, layer: int) -> bool:
        return self.core_begin <= layer < self.coda_begin

    def stacked_row(self, row: int | Tensor, step: int | Tensor) -> int | Tensor:
        """Where a core layer's tensor holds `row` (int or Tensor) at iteration `step`: slot s of row r is its
        row s * rows + r (a ring of `kv_budget` slots: s = step mod k)."""
        return step % self.core_slots * self.rows + row

    def slot(self, layer: int, step: int) -> tuple[Tensor, Tensor]:
        """K and V [R, H, L, D] of global block `layer` at iteration `step` (core layers: a ring)."""
        index = step % self.core_slots if self.is_core(layer) else 0
        return self.keys[layer][index], self.values[layer][index]

    def view(self, rows: list[int], new_tokens: int | list[int]) -> CacheView:
        """Open positions after each row's length for one forward: `new_tokens` for every row, or a count
        per row (rows with fewer than the call's width are padded on the right; the padding writes to the
        scratch column and is never read)."""
        counts = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(rows)
        ends = [self.lengths[r] + n for r, n in zip(rows, counts, strict=True)]
        if max(ends) > self.max_length:
            raise ValueError(f"a KV cache row holds {self.max_length} positions; {max(ends)} requested")
        device = self.device
        starts = torch.tensor([self.lengths[r] for r in rows], device=device)
        columns = torch.arange(max(counts), device=device)
        real = columns < torch.tensor(counts, device=device)[:, None]
        positions = starts[:, None] + torch.minimum(columns, torch.tensor(counts, device=device)[:, None] - 1)
        view = CacheView(self, torch.tensor(rows, device=device), positions, max(ends))
        if not bool(real.all()):
            view.writes = torch.where(real, positions, self.max_length)
        return view

    def commit(self, rows: list[int], new_tokens: int | list[int], iterations: list[int],
               provisional: bool = False) -> None:
        """Close the positions a forward opened; `iterations[i]` is how many iterations row i ran.
        `provisional` tokens (speculative drafts) are rewound before any token reads an iteration they
        skipped, so those slots are left unfilled (the fill costs about what the draft's own forward does)."""
        counts = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(rows)
        for row, count in zip(rows, iterations, strict=True):
            if count > self.depths[row]:  # it read slots that early exits of the row's tokens left unfilled
                raise ValueError(f"row {row} ran {count} iterations but was allocated for {self.depths[row]} "
                                 "(KVCache.allocate's depth): allocate it for the deepest token it will run")
        short: dict[int, list[tuple[int, int, int, int]]] = {}  # by tokens written
        for row, n, count in zip(rows, counts, iterations, strict=True):
            start = self.lengths[row]
            read = min(self.core_slots, self.depths[row])  # the slots a later token of the row may read
            if count < read:
                short.setdefault(n, []).append((row, start, count, read))
            self.lengths[row] = start + n
        if not provisional:
            for n, group in short.items():
                self._fill_unwritten(group, n)

    def _fill_unwritten(self, short: list[tuple[int, int, int, int]], new_tokens: int) -> None:
        """Slots a row never wrote (it exited early) but may read get that row's last computed iteration:
        (row, start, iterations run, slots read) per row. Slot j of row r is row j * rows + r of a layer's
        tensor, so each core layer's K and V are filled by one gather and one scatter."""
        targets, sources, starts, rows = [], [], [], self.rows
        for row, start, count, read in short:  # slots count..read-1 (all below core_slots) get slot count-1
            targets += range(self.stacked_row(row, count), self.stacked_row(row, read - 1) + 1, rows)
            sources += [self.stacked_row(row, count - 1)] * (read - count)
            starts += [start] * (read - count)
        device = self.device
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(new_tokens, device=device)
        to = torch.tensor(targets, device=device)[:, None].expand_as(positions)
        source = torch.tensor(sources, device=device)[:, None].expand_as(positions)
        core = slice(self.core_begin, self.coda_begin)
        for t in self.layer_keys[core] + self.layer_values[core]:
            t[to, :, positions] = t[source, :, positions]

    def rewind(self, row: int, length: int) -> None:
        """Forget a row's positions from `length` on (rejected speculative drafts)."""
        self.lengths[row] = min(self.lengths[row], length)


def core_slots(num_steps: int, kv_budget: int | None) -> int:
    return num_steps if kv_budget is None else min(kv_budget, num_steps)


def bytes_per_token(config: ModelConfig, num_steps: int, kv_budget: int | None = None,
                    dtype: torch.dtype = torch.float32) -> int:
    """K and V bytes one position of one row takes, over every layer and iteration slot."""
    slots = config.n_prelude + config.n_coda + config.n_core * core_slots(num_steps, kv_budget)
    return 2 * slots * config.num_heads * config.head_dim * torch.empty(0, dtype=dtype).element_size()


def check_cache_settings(config: ModelConfig, rows: int, max_length: int, num_steps: int,
                         kv_budget: int | None) -> None:
    if kv_budget is not None and (not isinstance(kv_budget, int) or kv_budget < 1):
        raise ValueError(f"kv_budget must be a positive number of iterations (or None for all); got {kv_budget!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if rows < 1:
        raise ValueError(f"the cache needs at least one row, got {rows}")
    if max_length > config.context_length:
        raise ValueError(
            f"prompt plus new tokens need {max_length} positions but the model's context length is "
            f"{config.context_length}; shorten the prompt or lower max_new_tokens"
        )

"""The KV cache: cached decoding equals recomputation, padded rows equal rows alone, the ring budget and
early exits read exactly the iterations the definition names, and memory is what it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentloop import load_model
from latentloop.cache import KVCache
from latentloop.exits import KL
from latentloop.generate import Engine


@pytest.fixture(scope="module")
def model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


def sequence(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_steps", [1, 3, 8])
def test_cached_decoding_equals_recomputation(model, num_steps):
    ids = sequence(14)
    with torch.no_grad():
        full = model(ids, num_steps=num_steps, init_scale=0.0).logits
    engine = Engine(model, KVCache(model.config, 1, 14, num_steps), init_scale=0.0)
    logits = [engine.forward(ids[:, :6], num_steps).logits]
    logits += [engine.forward(ids[:, i : i + 1], num_steps).logits for i in range(6, 14)]
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-4, rtol=1e-4)


def test_rows_of_different_lengths_equal_rows_alone(model):
    """Each row holds its own prompt at its own positions (nothing padded); decoding them together
    gives what each gives alone."""
    rows = [sequence(9, 1)[0], sequence(4, 2)[0], sequence(6, 3)[0]]
    follow = sequence(15, 4).view(3, 5)  # the same 5 continuation tokens per row, fed one at a time
    engine = Engine(model, KVCache(model.config, 3, 9 + 5, 4), init_scale=0.0)
    prompt_logits = [engine.forward(r[None], 4, rows=[b]).logits[0, -1:] for b, r in enumerate(rows)]
    batch = [torch.stack(prompt_logits)]
    batch += [engine.forward(follow[:, i : i + 1], 4).logits for i in range(5)]
    batch = torch.cat(batch, 1)
    for b, row in enumerate(rows):
        with torch.no_grad():
            alone = model(torch.cat([row, follow[b]])[None], num_steps=4, init_scale=0.0).logits
        torch.testing.assert_close(batch[b], alone[0, len(row) - 1 :], atol=1e-4, rtol=1e-4)


class DefinitionCache:
    """The spec's rule written out plainly: every (token, layer, iteration) K/V kept in a dict; a core
    read at iteration i takes, per past token, the latest iteration j it computed with j = i (mod budget),
    or its last iteration when it computed none such (it exited early)."""

    def __init__(self, config, budget: int | None = None) -> None:
        self.config, self.budget, self.store, self.computed = config, budget, {}, []
        self.length = 0

    def view(self, rows, new_tokens):  # one row: the view is the cache itself
        (self.new,) = new_tokens
        self.positions = torch.arange(self.length, self.length + self.new)[None]
        return self

    def attend(self, layer, step, q, k, v):
        core = self.config.n_prelude <= layer < self.config.n_prelude + self.config.n_core
        for s in range(self.new):
            self.store[self.length + s, layer, step if core else 0] = (k[:, :, s], v[:, :, s])
        keys, values = [], []
        for t in range(self.length + self.new):
            done = self.computed[t] if t < self.length else step + 1
            if not core:
                j = 0
            else:
                ring = [j for j in range(done) if self.budget is None or j % self.budget == step % self.budget]
                ring = [j for j in ring if self.budget is not None or j == step]
                j = max(ring) if ring else done - 1
            keys.append(self.store[t, layer, j][0])
            values.append(self.store[t, layer, j][1])
        keys, values = torch.stack(keys, 2), torch.stack(values, 2)
        n = keys.shape[2]
        mask = torch.ones(self.new, n, dtype=torch.bool).tril(n - self.new)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def commit(self, rows, new_tokens, iterations, provisional=False):  # it keeps every iteration: nothing to fill
        self.computed += [int(iterations[0])] * self.new
        self.length += self.new


@pytest.mark.parametrize("budget", [1, 2, 3, None])
def test_budget_and_early_exit_read_the_defined_iterations(model, budget):
    """kv_budget ring plus early exits (KL with a loose threshold) against the plain definition; the
    prompt runs 4 iterations, new tokens up to 6, so later iterations also read the prompt's last one."""
    ids = sequence(10, 5)
    exit = KL(0.05, min_steps=2, max_steps=6)
    runs = []
    for cache in (KVCache(model.config, 1, 10, 6, kv_budget=budget), DefinitionCache(model.config, budget)):
        engine = Engine(model, cache, init_scale=0.0)
        outs = [engine.forward(ids[:, :4], 4)]
        outs += [engine.forward(ids[:, i : i + 1], 6, exit=exit) for i in range(4, 10)]
        runs.append(outs)
    used = [int(o.iterations) for o in runs[0][1:]]
    assert min(used) < 6 and max(used) > 4, f"iterations {used} do not exercise early exits beyond the prompt"
    assert used == [int(o.iterations) for o in runs[1][1:]]
    for ours, definition in zip(runs[0], runs[1], strict=True):
        torch.testing.assert_close(ours.logits, definition.logits, atol=1e-4, rtol=1e-4)


def test_a_row_allocated_shallower_fills_only_the_slots_it_reads(model):
    """A row allocated for depth 6 in a 10-iteration cache decodes as one allocated for all 10 (its tokens
    exit early, so fills happen), leaves slots 6.. untouched, and refuses to run a token deeper."""
    ids = sequence(8, 7)
    exit = KL(0.05, min_steps=2, max_steps=6)
    runs = []
    for depth in (None, 6):
        cache = KVCache(model.config, 1, 9, 10)  # a position to spare for the refused token
        row = cache.allocate(depth)
        engine = Engine(model, cache, init_scale=0.0)
        outs = [engine.forward(ids[:, :3], 6, rows=[row])]
        outs += [engine.forward(ids[:, i : i + 1], 6, rows=[row], exit=exit) for i in range(3, 8)]
        runs.append((cache, outs))
    used = [int(o.iterations) for o in runs[1][1][1:]]
    assert min(used) < 6, f"iterations {used}: no early exit, nothing to fill"
    for full, shallow in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(shallow.logits, full.logits, atol=1e-5, rtol=1e-5)
    deep_slot = runs[1][0].keys[model.config.n_prelude][6]  # iteration slot 6 of the first core layer
    assert deep_slot.abs().sum() == 0 and runs[0][0].keys[model.config.n_prelude][6].abs().sum() > 0
    shallow = runs[1][0]
    with pytest.raises(ValueError, match="allocated for 6"):
        Engine(model, shallow, init_scale=0.0).forward(ids[:, :1], 8, rows=[0])
    with pytest.raises(ValueError, match=r"depth must lie in \[1, 10\]"):
        KVCache(model.config, 2, 8, 10).allocate(11)


def test_budget_one_is_the_hand_checked_rule(model):
    """kv_budget=1 at 2 iterations: the second token's iteration-0 read sees the first token's iteration 1."""
    ids = sequence(2, 6)
    engine = Engine(model, KVCache(model.config, 1, 2, 2, kv_budget=1), init_scale=0.0)
    engine.forward(ids[:, :1], 2)
    reads = {}
    cache = engine.cache
    open_view = cache.view

    def spied_view(*args, **kwargs):
        view = open_view(*args, **kwargs)
        original = view.attend

        def spy(layer, step, q, k, v):
            keys = cache.slot(layer, step)[0][:1, :, 0].clone()  # token 0's K before this call writes
            reads.setdefault((layer, step), keys)
            return original(layer, step, q, k, v)

        view.attend = spy
        return view

    stored = {}
    first = Engine(model, KVCache(model.config, 1, 1, 2), init_scale=0.0)
    first.forward(ids[:, :1], 2)
    for step in range(2):
        stored[step] = first.cache.slot(model.config.n_prelude, step)[0][:1, :, 0]
    cache.view = spied_view
    engine.forward(ids[:, 1:2], 2)
    core0 = model.config.n_prelude
    torch.testing.assert_close(reads[core0, 0], stored[1])  # iteration 0 reads token 0's LAST iteration
    assert not torch.allclose(stored[0], stored[1])


def test_provisional_tokens_leave_skipped_iterations_unfilled(model):
    """A token run at 2 of 4 iterations fills slots 2-3 with its iteration 1, unless it is provisional
    (a speculative draft, rewound before anything reads those slots)."""
    core0 = model.config.n_prelude
    for provisional in (False, True):
        engine = Engine(model, KVCache(model.config, 1, 4, 4), init_scale=0.0)
        engine.forward(sequence(1, 7), 2, provisional=provisional)
        last, skipped = (engine.cache.slot(core0, step)[0][:, :, 0] for step in (1, 3))
        if provisional:
            assert not skipped.any()
        else:
            torch.testing.assert_close(skipped, last)
            assert last.any()


def test_memory_is_reported_and_scales():
    from latentloop.config import ModelConfig

    config = ModelConfig(hidden_size=64, num_heads=4, intermediate_size=96, vocab_size=64, context_length=64)
    per_slot = 2 * 2 * 64 * 33 * 4  # K and V, 2 rows, hidden 64, 32 positions + the scratch column, float32
    full = KVCache(config, 2, 32, 32)
    assert full.nbytes == (2 + 2 + 4 * 32) * per_slot
    assert KVCache(config, 2, 32, 16).nbytes == (2 + 2 + 4 * 16) * per_slot
    shared = KVCache(config, 2, 32, 32, kv_budget=1)
    assert shared.nbytes == (2 + 2 + 4) * per_slot
    assert shared.nbytes <= full.nbytes / 16
    assert KVCache(config, 2, 32, 32, kv_budget=4, dtype=torch.bfloat16).nbytes == (2 + 2 + 16) * per_slot // 2
    assert full.bytes_per_token == (2 + 2 + 4 * 32) * 2 * 64 * 4 and shared.bytes_per_token == (2 + 2 + 4) * 2 * 64 * 4
    sized = KVCache.for_memory(config, 10 * full.bytes_per_token * 33 + 1000, 32, 32)  # 10 rows and a bit
    assert sized.rows == 10 and sized.nbytes <= 10 * full.bytes_per_token * 33 + 1000


def test_cache_rejects_bad_budget_and_length(model):
    with pytest.raises(ValueError, match="kv_budget must be a positive"):
        KVCache(model.config, 1, 8, 4, kv_budget=0)
    with pytest.raises(ValueError, match="context length"):
        KVCache(model.config, 1, model.config.context_length + 1, 4)
    with pytest.raises(ValueError, match="too small for one row.*raise max_cache_bytes"):
        KVCache.for_memory(model.config, 1000, 64, 4)

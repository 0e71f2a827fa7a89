"""torch.compile'd decoding: prelude, one core iteration and coda, each one graph for one new token.

Eager decoding of a small model spends much of its time launching ~80 tiny ops per block. Here each
piece of the model is compiled once (inductor, C++ wrapper) for one new token per row. The KV cache
reaches the graphs as `cache.StepSlots`, tensors only and dynamic in the length, so one graph serves
every token and every iteration without recompiling. The pieces have the model's own signatures
(`embed`, `core_step`, `decode`), so `generate.Engine` calls either. Prefill and speculative
verification (many tokens per row) stay eager.
"""

from __future__ import annotations

import shutil
import weakref

import torch
from torch import Tensor, nn

from .cache import KVCache, StepSlots
from .model import Context, RecurrentDepthLM

OPTIONS = {"cpp_wrapper": True}  # kernels called from C++, not Python: ~10 us less per op on CPU
_BUILT: weakref.WeakKeyDictionary[RecurrentDepthLM, CompiledSteps] = weakref.WeakKeyDictionary()


def has_cpp_compiler() -> bool:
    """Inductor builds CPU kernels with a C++ compiler; without one, torch.compile fails on CPU."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def compiled_steps(model: RecurrentDepthLM) -> CompiledSteps:
    """The model's compiled pieces, built once per model and reused by later calls (while it lives)."""
    if model.device.type == "cpu" and not has_cpp_compiler():
        raise RuntimeError("compile=True needs a C++ compiler for torch.compile on CPU (install g++), "
                           "or drop compile=True to decode eagerly")
    if model not in _BUILT:
        _BUILT[model] = CompiledSteps(model)
    return _BUILT[model]


def column_major_weights(model: RecurrentDepthLM) -> None:
    """Store each projection's weight transposed in memory (same values; strides (1, out)). F.linear
    then streams W^T row by row, which CPU matrix-vector kernels read 1.2-1.5x faster at batch 1.
    The tied embedding keeps its rows contiguous for lookups; checkpoints are saved contiguous."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight is not model.transformer.wte.weight:
                module.weight.data = module.weight.data.t().contiguous().t()


class CompiledSteps:
    """`embed`, `core_step` and `decode` of a model for one new token per row, each a compiled graph."""

    def __init__(self, model: RecurrentDepthLM) -> None:
        self.model = weakref.proxy(model)  # the registry's key: a strong reference would keep it alive
        c = model.config
        self.layers = {"prelude": (0, c.n_prelude), "core": (c.n_prelude, c.n_core),
                       "coda": (c.n_prelude + c.n_core, c.n_coda)}
        if model.device.type == "cpu":
            column_major_weights(model)
        self._embed = torch.compile(self._embed_graph, options=OPTIONS)
        self._core = torch.compile(self._core_graph, options=OPTIONS)
        self._decode = torch.compile(self._decode_graph, options=OPTIONS)

    def _embed_graph(self, ids: Tensor, rope: Tensor, slots: StepSlots) -> Tensor:
        return self.model.embed(ids, Context(rope=rope, cache=slots))

    def _core_graph(self, x: Tensor, e: Tensor, rope: Tensor, slots: StepSlots) -> Tensor:
        return self.model.core_step(x, e, Context(rope=rope, cache=slots), 0)

    def _decode_graph(self, x: Tensor, rope: Tensor, slots: StepSlots) -> tuple[Tensor, Tensor]:
        return self.model.decode(x, Context(rope=rope, cache=slots))

    def embed(self, ids: Tensor, ctx: Context) -> Tensor:
        return self._embed(ids, ctx.rope, self._slots(ctx, "prelude", 0))

    def core_step(self, x: Tensor, e: Tensor, ctx: Context, step: int) -> Tensor:
        return self._core(x, e, ctx.rope, self._slots(ctx, "core", step))

    def decode(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        return self._decode(x, ctx.rope, self._slots(ctx, "coda", 0))

    def _slots(self, ctx: Context, part: str, step: int) -> StepSlots:
        if not isinstance(ctx.cache, KVCache):
            raise TypeError("compiled decoding runs against a KVCache")
        slots = ctx.cache.step_slots(*self.layers[part], step)
        for tensor in (*slots.keys, *slots.values):  # one graph for every cache length
            torch._dynamo.mark_dynamic(tensor, 2)
        torch._dynamo.mark_dynamic(slots.bias, 3)
        return slots

"""torch.compile'd decoding: prelude, core iterations and coda, each one graph.

Eager decoding of a small model spends much of its time launching ~80 tiny ops per block. Here each
piece of the model is compiled (inductor, C++ wrapper) for one new token per row: dynamo builds a graph
for the first batch size it meets and, at the next, one dynamic in the batch size that serves every
size above 1 (a batch of 1 keeps a graph of its own), so the engine never pads its batches. The KV cache
reaches the graphs as `cache.Slots`, tensors only and dynamic in its rows and the columns in use, so one
graph serves every token, iteration and row set without recompiling. The pieces have the model's own
signatures (`embed`, `core_step`, `recur`, `decode`), so `engine.Engine` calls either; at a fixed depth
one graph runs `iterations_per_call` iterations (a call costs ~0.1-0.15 ms outside its kernels). Prompts
and speculative drafts (many tokens per row) go through graphs of their own, dynamic in their length,
up to `EAGER_TOKENS` new tokens a forward; wider ones run eagerly, where MKL's GEMMs win.

At batch 1 on CPU, every projection is a matrix-vector product, bound by how fast the weights stream
in; with a few rows (speculative verification) it is a tiny GEMM, which MKL runs far below the cores'
throughput. On CPU the weights are therefore frozen into the graphs: inductor then packs each
weight into blocks once and generates its own GEMM kernel for the exact shapes (1.4x the streaming
rate of `_matvec_in_row_groups` at hidden 1024; 4x MKL for 5 rows at hidden 256). The cost is a
packed copy of the weights per graph and per use in it, so frozen graphs run one iteration each,
each model compiles its own graphs, and a change to the weights rebuilds them. Models too large
for those copies keep their weights as graph inputs and the row-group matrix-vector lowering
instead: MKL's kernel, and inductor's own dot-product loop, read one weight row at a time and reach
about half of what the cores can stream; `_matvec_in_row_groups` reads four row blocks side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch._inductor.compile_fx import compile_fx
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .cache import CacheView, KVCache, Slots
from .model import Context, RecurrentDepthLM

OPTIONS = {"cpp_wrapper": True}  # kernels called from C++, not Python: ~10 us less per op on CPU
# Weights as constants, GEMMs from inductor's C++ template ("CPP": no autotuning; ATen where it does not apply).
FROZEN_OPTIONS = OPTIONS | {"freezing": True, "max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP"}
FROZEN_COPIES = 8  # packed copies of the weights that frozen graphs may hold (one per graph kind), within half the RAM
MAX_GRAPHS = 1024  # graphs per piece (dynamo's default limit of 8 would fall back to eager silently)
ITERATIONS_PER_CALL = 4  # core iterations per graph with weights as inputs (1 -> 4: ~15 % faster at hidden 256)
# A forward of at least this many new tokens (rows x tokens: prompts, wide verifications) runs eagerly when the
# graphs are frozen: MKL's GEMMs then beat the frozen graphs' own (one thread, depth 32: 16 prompts of 40 tokens
# 1.31x, one of 40 1.14x at hidden 256 and 1.16x at hidden 1024), while below it the graphs win (one of 24 tokens:
# compiled 1.18x; one of 4: 2.6x).
EAGER_TOKENS = 32
_BUILT: weakref.WeakKeyDictionary[RecurrentDepthLM, CompiledSteps] = weakref.WeakKeyDictionary()


def has_cpp_compiler() -> bool:
    """Inductor builds CPU kernels with a C++ compiler; without one, torch.compile fails on CPU."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def compiled_steps(model: RecurrentDepthLM) -> CompiledSteps:
    """The model's compiled pieces, built once per model and reused by later calls (while it lives)."""
    if model.device.type == "cpu" and not has_cpp_compiler():
        raise RuntimeError("compile=True needs a C++ compiler for torch.compile on CPU (install g++), "
                           "or drop compile=True to decode eagerly")
    built = _BUILT.get(model)
    if built is None or built.stale():
        _BUILT[model] = built = CompiledSteps(model)
    return built


def _weights_state(model: RecurrentDepthLM) -> tuple:
    """Where each weight lives and how often it was changed in place: what frozen graphs copied."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


def _freezable(model: RecurrentDepthLM) -> bool:
    """Freeze the weights into CPU graphs when FROZEN_COPIES packed copies fit in half the machine's RAM."""
    if model.device.type != "cpu":
        return False
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    return FROZEN_COPIES * weight_bytes <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


ROW_GROUPS = 4  # weight streams read side by side in a matrix-vector product (2: 1.4x, 4: 1.7x, 8: no better)


def _matvec_in_row_groups(a: Tensor, b: Tensor) -> Tensor:
    """`aten.mm` of one row a [1, K] by b = W^T [K, N] on CPU, as ROW_GROUPS dot-product reductions over
    row blocks of W, which inductor fuses into one loop: several memory streams per thread instead of
    one. Other shapes and devices keep the default lowering (GEMM libraries win there)."""
    w = b.t()  # [N, K]: an nn.Linear weight, rows contiguous
    rows = w.shape[0] // ROW_GROUPS
    if a.device.type != "cpu" or not statically_known_true(a.size(0) == 1) or rows * ROW_GROUPS != w.shape[0]:
        return NotImplemented
    blocks = [(a * w[g * rows : (g + 1) * rows]).sum(-1) for g in range(ROW_GROUPS)]  # each [rows]
    return torch.cat(blocks).unsqueeze(0)


def _backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
    """Inductor with the C++ wrapper and the row-group matrix-vector lowering."""
    decompositions = select_decomp_table() | {torch.ops.aten.mm.default: _matvec_in_row_groups}
    return compile_fx(graph, example_inputs, config_patches=OPTIONS, decompositions=decompositions)


def _frozen_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
    """Inductor with the C++ wrapper, the weights frozen in and its own GEMM kernels."""
    return compile_fx(graph, example_inputs, config_patches=FROZEN_OPTIONS)


def _copy_of(function: Callable) -> Callable:
    """The same function with a code object of its own."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)


def _tensor_kind(t: Tensor) -> tuple:
    """What dynamo's guards check of a static-shape input tensor."""
    return t.shape, t.stride(), t.dtype, t.device, t.is_inference(), t.requires_grad


# The graphs. The model is an argument (not captured) so that the registry holds it weakly.
def _embed_graph(model: RecurrentDepthLM, ids: Tensor, rope: Tensor, slots: Slots) -> Tensor:
    return model.embed(ids, Context(rope=rope, cache=slots))


def _core_graph(model: RecurrentDepthLM, x: Tensor, e: Tensor, rope: Tensor, slots: list[Slots]) -> Tensor:
    for step_slots in slots:  # one iteration per entry, each with its own cache slots
        x = model.core_step(x, e, Context(rope=rope, cache=step_slots), 0)
    return x


def _decode_graph(model: RecurrentDepthLM, x: Tensor, rope: Tensor, slots: Slots) -> tuple[Tensor, Tensor]:
    return model.decode(x, Context(rope=rope, cache=slots))


class CompiledSteps:
    """`embed`, `core_step`, `recur` and `decode` of a model, each a compiled graph."""

    def __init__(self, model: RecurrentDepthLM) -> None:
        self._model = weakref.ref(model)  # the registry's key: a strong reference would keep it alive
        c = model.config
        self.layers = {"prelude": (0, c.n_prelude), "core": (c.n_prelude, c.n_core),
                       "coda": (c.n_prelude + c.n_core, c.n_coda)}
        self._caches: weakref.WeakSet[KVCache] = weakref.WeakSet()  # caches whose lengths are marked dynamic
        self._known: set[tuple] = set()  # kinds of call whose graph exists (see `_run`)
        self._in_tracing = False
        self.frozen = _freezable(model)
        self._weights = _weights_state(model) if self.frozen else ()
        self.iterations_per_call = 1 if self.frozen else ITERATIONS_PER_CALL
        graphs = (_embed_graph, _core_graph, _decode_graph)
        if self.frozen:  # graphs with frozen weights are this model's alone: own code objects, own dynamo caches
            graphs = tuple(map(_copy_of, graphs))
        backend = _frozen_backend if self.frozen else _backend
        self._embed, self._core, self._decode = (torch.compile(f, backend=backend, fullgraph=True) for f in graphs)
        # Many new tokens per row (prompts, speculative drafts): the same pieces as their own code objects,
        # since dynamo keeps one cache per code object and the one-token calls skip most guards.
        self._many = {part: torch.compile(_copy_of(f), backend=backend, fullgraph=True)
                      for part, f in zip(("prelude", "core", "coda"), graphs, strict=True)}

    def stale(self) -> bool:
        """Whether the model's weights changed (in place or replaced) since its graphs froze them."""
        model = self._model()
        return self.frozen and model is not None and _weights_state(model) != self._weights

    def embed(self, ids: Tensor, ctx: Context) -> Tensor:
        return self._run(self._embed, "prelude", ctx, range(1), ids)

    def core_step(self, x: Tensor, e: Tensor, ctx: Context, step: int) -> Tensor:
        return self._run(self._core, "core", ctx, range(step, step + 1), x, e)

    def recur(self, x: Tensor, e: Tensor, ctx: Context, num_steps: int) -> Tensor:
        """`num_steps` iterations (the model's `recur` without gradients), `iterations_per_call` per graph."""
        per_call = self.iterations_per_call
        with self._tracing() if x.shape[1] > 1 else contextlib.nullcontext():  # many tokens: set up once, not per call
            for start in range(0, num_steps, per_call):
                x = self._run(self._core, "core", ctx, range(start, min(start + per_call, num_steps)), x, e)
        return x

    def decode(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        return self._run(self._decode, "coda", ctx, range(1), x)

    def _run(self, graph: Callable, part: str, ctx: Context, steps: range, *inputs: Tensor) -> Any:
        """Call a graph for iterations `steps`. The first call of each kind (piece and iterations per
        call; inputs' shapes, strides, dtypes; exited rows or not) goes
        through dynamo's guards, which compile a graph for it (whole: fullgraph, and never refused for
        having too many) or pick one compiled earlier, maybe for another model of its shapes.
        Later calls of a kind already seen are what those guards passed, so they skip evaluating all
        but the guards that tell the graphs apart (~130 us less a call). Wide forwards (`EAGER_TOKENS`) run
        the model's own eager pieces instead."""
        if self.frozen and inputs[0].shape[1] > 1 and inputs[0].shape[0] * inputs[0].shape[1] >= EAGER_TOKENS:
            return self._eager(part, ctx, steps, *inputs)
        slots = [self._slots(ctx, part, step) for step in steps]
        # A token picked from the verifier's row is a view (the row's stride, an offset); such views once
        # tripped the skip-guard stance (test_compiled, bundled model): a fresh copy is like every token.
        inputs = tuple(t if t.storage_offset() == 0 else t.clone(memory_format=torch.contiguous_format)
                       for t in inputs)
        args = (self._model(), *inputs, ctx.rope, slots if part == "core" else slots[0])
        if inputs[0].shape[1] > 1:  # once per prompt or draft: guards are cheap next to the work
            with self._tracing():
                return self._many[part](*args)
        keys = slots[0].keys[0]  # a one-row cache is a graph of its own: dynamo specializes sizes of 1
        kind = (part, len(slots), *map(_tensor_kind, (*inputs, ctx.rope)), keys.dtype,
                keys.is_inference(), keys.shape[0] == 1)
        if kind in self._known:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return graph(*args)
        with self._tracing():
            out = graph(*args)
        self._known.add(kind)
        return out

    def _eager(self, part: str, ctx: Context, steps: range, *inputs: Tensor) -> Any:
        """What a graph of `part` computes, by the model's eager pieces."""
        model = self._model()
        if part == "prelude":
            return model.embed(inputs[0], ctx)
        if part == "coda":
            return model.decode(inputs[0], ctx)
        x, e = inputs
        for step in steps:
            x = model.core_step(x, e, ctx, step)
        return x

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        """Settings that dynamo reads while it traces: never refuse a graph for there being many; lift
        the weights into the graph as constants when frozen. Setting them costs ~35 us, so nested uses
        keep the outer one's."""
        if self._in_tracing:
            yield
            return
        with torch._dynamo.config.patch(recompile_limit=MAX_GRAPHS), torch._inductor.config.patch(freezing=self.frozen):
            self._in_tracing = True
            try:
                yield
            finally:
                self._in_tracing = False

    def _slots(self, ctx: Context, part: str, step: int) -> Slots:
        view = ctx.cache
        if not isinstance(view, CacheView):
            raise TypeError("compiled decoding runs against a KVCache")
        cache = view.cache
        if cache not in self._caches:  # one graph for every row count and length: marked once, the tensors persist
            for tensor in cache.layer_keys + cache.layer_values:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)  # may be 1 row: dynamic where dynamo allows it
                torch._dynamo.mark_dynamic(tensor, 2)
            self._caches.add(cache)
        slots = view.slots(*self.layers[part], step)
        torch._dynamo.mark_dynamic(slots.bias, 3)  # built per forward, as long as the cache
        return slots

"""Compiled decoding (`compile=True`) computes what eager decoding computes: the same logits token by
token in a padded batch and a KV ring, the reference generator's tokens, the same early exits, and
the same speculative output. Slow: each model compiles its own frozen graphs (~50 s each on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from latentloop import compiled, load_model
from latentloop.cache import KVCache
from latentloop.exits import KL
from latentloop.generate import Engine, generate
from latentloop.tokenizer import load_tokenizer

pytestmark = pytest.mark.skipif(not compiled.has_cpp_compiler(), reason="inductor needs a C++ compiler")
# Tests that share a model's graphs run on one worker (`--dist loadgroup`, set in pyproject.toml): they compile
# once, and the frozen and the weights-as-inputs graphs compile side by side on two workers.
FROZEN = pytest.mark.xdist_group("compiled-frozen")
AS_INPUTS = pytest.mark.xdist_group("compiled-weights-as-inputs")
BOTH_WAYS = pytest.mark.parametrize("frozen", [pytest.param(True, id="frozen", marks=FROZEN),
                                               pytest.param(False, id="weights-as-inputs", marks=AS_INPUTS)])


@pytest.fixture(scope="module")
def models(conformance_dir):
    """Two loads of the conformance checkpoint: one decodes eagerly, the other compiled."""
    return load_model(conformance_dir / "checkpoint"), load_model(conformance_dir / "checkpoint")


@FROZEN
@pytest.mark.parametrize("num_steps, kv_budget", [(3, None), (5, 2)])
def test_compiled_steps_equal_eager_steps_for_rows_of_different_lengths(models, num_steps, kv_budget):
    eager, compiled = models
    rows = [torch.arange(3, 12), torch.arange(40, 44), torch.arange(60, 66)]  # 3 rows: padded to 4 when compiled
    follow = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name, model, compile in (("eager", eager, False), ("compiled", compiled, True)):
        engine = Engine(model, KVCache(model.config, 3, 15, num_steps, kv_budget), init_scale=0.0, compile=compile)
        outs = [torch.stack([engine.forward(r[None], num_steps, rows=[b]).logits[0, -1:] for b, r in enumerate(rows)])]
        outs += [engine.forward(follow[:, i : i + 1], num_steps).logits for i in range(6)]
        logits[name] = torch.cat(outs, 1)
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-4, rtol=1e-4)


@FROZEN
def test_wide_prompts_run_eagerly_and_narrow_ones_through_the_prompt_graphs(models, monkeypatch):
    """A compiled forward of EAGER_TOKENS new tokens or more (rows x tokens) runs the model's eager pieces,
    bit-equal to eager decoding; a narrower one goes through the prompt graphs."""
    eager, model = models
    steps = compiled.compiled_steps(model)
    assert steps.frozen
    called: list[str] = []

    def spy(part, graph):
        return lambda *args: called.append(part) or graph(*args)

    monkeypatch.setattr(steps, "_many", {part: spy(part, graph) for part, graph in steps._many.items()})
    wide = torch.randint(0, 256, (2, compiled.EAGER_TOKENS // 2), generator=torch.Generator().manual_seed(1))
    for ids, through_graphs in ((wide, False), (wide[:1, :5], True)):
        called.clear()
        logits = {}
        for name, m, compile in (("eager", eager, False), ("compiled", model, True)):
            engine = Engine(m, KVCache(m.config, 2, ids.shape[1] + 1, 3), init_scale=0.0, compile=compile)
            logits[name] = engine.forward(ids, 3).logits
        assert sorted(set(called)) == (["coda", "core", "prelude"] if through_graphs else [])
        if through_graphs:
            torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(logits["compiled"], logits["eager"])


@pytest.fixture(scope="module")
def unfrozen(conformance_dir):
    """A third load of the conformance checkpoint, compiled with its weights as graph inputs."""
    return load_model(conformance_dir / "checkpoint")


def compiled_model(frozen: bool, models, unfrozen, monkeypatch):
    """The conformance model, compiled one of two ways: weights frozen into the graphs (CPU models that
    fit), or weights as graph inputs with the row-group matrix-vector lowering (models too large)."""
    model = models[1] if frozen else unfrozen
    monkeypatch.setattr(compiled, "FROZEN_COPIES", compiled.FROZEN_COPIES if frozen else 2**60)
    assert compiled.compiled_steps(model).frozen is frozen
    return model


REFERENCE_RUN = dict(num_steps=8, init_scale=0.0, max_new_tokens=10)  # the fixture's greedy_r8 case


@BOTH_WAYS
def test_compiled_greedy_matches_the_reference_generator(models, unfrozen, conformance_cases, frozen, monkeypatch):
    model = compiled_model(frozen, models, unfrozen, monkeypatch)
    result = generate(model, conformance_cases["greedy_prompt"], compile=True, **REFERENCE_RUN)
    assert result.tokens == conformance_cases["greedy_r8"].tolist()


@FROZEN
def test_compiled_early_exit_and_speculation_match_eager(models):
    eager, compiled = models
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42]]
    options = dict(num_steps=6, init_scale=0.0, max_new_tokens=8, stop_ids=[],
                   exit=KL(0.05, min_steps=2, max_steps=6))
    plain, fast = generate(eager, prompts, **options), generate(compiled, prompts, compile=True, **options)
    assert fast.tokens == plain.tokens and fast.iterations == plain.iterations
    assert min(n for row in plain.iterations for n in row) < 6  # the exit fired, per row
    options = dict(num_steps=8, init_scale=0.0, max_new_tokens=10, stop_ids=[])
    speculative = generate(compiled, prompts, compile=True, draft_steps=2, lookahead=3, **options)
    assert speculative.tokens == generate(eager, prompts, **options).tokens


def test_row_group_matvec_equals_the_matrix_product():
    from latentloop.compiled import ROW_GROUPS, _matvec_in_row_groups

    weight = torch.randn(12 * ROW_GROUPS, 40, generator=torch.Generator().manual_seed(0))
    row = torch.randn(1, 40, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_matvec_in_row_groups(row, weight.t()), row @ weight.t())
    assert _matvec_in_row_groups(row.expand(2, 40), weight.t()) is NotImplemented  # batches keep the GEMM
    assert _matvec_in_row_groups(row, weight[:-1].t()) is NotImplemented  # rows not divisible into groups


def test_compiled_rotation_multiplies_by_the_swap_and_stays_exact():
    """Compiled on CPU the rotation's pair swap is a product with a swap matrix (frozen in, as the engine's
    graphs freeze it): the rotated values must equal eager's bit for bit, and the flip must be gone."""
    from latentloop.model import apply_rope, pair_swap_matrix

    class Rotate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("pair_swap", pair_swap_matrix(64))

        def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
            return apply_rope(x, rope, self.pair_swap)

    generator = torch.Generator().manual_seed(0)
    x, rope = torch.randn(3, 5, 2, 4, 64, generator=generator) * 1e3, torch.randn(3, 5, 1, 64, 2, generator=generator)
    graphs = []

    def keep(graph, inputs):
        graphs.append(graph)
        return compiled._frozen_backend(graph, inputs)

    with torch.inference_mode(), torch._inductor.config.patch(freezing=True):
        rotated = torch.compile(Rotate(), backend=keep, fullgraph=True)(x, rope)
    assert torch.equal(rotated, apply_rope(x, rope))
    ops = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert any("matmul" in op for op in ops) and not any("flip" in op for op in ops)


@BOTH_WAYS
def test_compiled_models_of_one_shape_use_each_models_current_weights(models, unfrozen, conformance_cases, frozen,
                                                                      monkeypatch):
    """Two models of one shape, compiled in turn, each decode with their own weights (graphs of their own
    when frozen, shared graphs otherwise); and a model whose weights change in place afterwards decodes
    with the new ones (frozen graphs are rebuilt). The run is the reference test's, so the conformance
    model's graphs exist already."""
    from latentloop import RecurrentDepthLM

    model = compiled_model(frozen, models, unfrozen, monkeypatch)
    twin = RecurrentDepthLM(models[1].config)  # same shapes, other weights
    twin.init_weights(torch.Generator().manual_seed(1))
    prompt = conformance_cases["greedy_prompt"]
    expected = {id(m): generate(m, prompt, **REFERENCE_RUN).tokens for m in (models[0], twin)}
    assert expected[id(models[0])] != expected[id(twin)]
    for decoder, weights_of in ((model, models[0]), (twin, twin), (model, models[0]), (twin, twin)):
        assert generate(decoder, prompt, compile=True, **REFERENCE_RUN).tokens == expected[id(weights_of)]
    built = compiled.compiled_steps(twin)
    twin.load_state_dict(models[0].state_dict())  # copies in place: same tensors, new values
    if frozen:  # a rebuild compiles every graph again (~40 s): that it happens is what is checked
        rebuilt = compiled.compiled_steps(twin)
        assert built.stale() and rebuilt is not built and not rebuilt.stale()
    else:
        assert generate(twin, prompt, compile=True, **REFERENCE_RUN).tokens == expected[id(models[0])]


def test_compiled_speculation_on_the_bundled_model_matches_plain_greedy():
    """Drafts the verifier accepts in part and in full, round after round: the tokens fed back are
    picked from the verifier's rows at varying offsets, and every such call reuses a known graph."""
    model = load_model("default").eval()
    prompt = [load_tokenizer("default").encode_prompt("73BACbb6baa9Bbb7b=")]  # short: 64 new tokens fit
    options = dict(num_steps=32, init_scale=0.0, max_new_tokens=64, stop_ids=[])
    plain = generate(model, prompt, **options)
    speculative = generate(model, prompt, compile=True, draft_steps=4, lookahead=4, **options)
    assert speculative.tokens == plain.tokens
    assert 0 < speculative.accepted < speculative.drafted

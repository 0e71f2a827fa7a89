"""The parallel (diffusion-forcing) sampler: its degenerate setting is plain decoding, it is deterministic
per seed, rows of a batch give what they give alone, stops and limits hold, the cache holds exactly the
committed tokens, and bad settings get clear errors."""

from __future__ import annotations

import pytest

from latentloop import generate, load_model
from latentloop.cache import KVCache
from latentloop.engine import Engine, Scheduler
from latentloop.parallel import Parallel
from latentloop.request import Request
from latentloop.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


PROMPTS = [list(range(5, 14)), [40, 41, 42], [7, 200, 3, 3, 90, 11]]


def test_one_position_fixed_freezing_no_noise_no_mixing_is_plain_decoding(model):
    options = dict(num_steps=8, init_scale=0.0, max_new_tokens=10)
    plain = generate(model, PROMPTS, kv_budget=1, **options)
    parallel = generate(model, PROMPTS, sampler="parallel", inner_steps=4, freeze="fixed", embed_ema=0.0,
                        max_wavefront=1, **options)
    assert parallel.tokens == plain.tokens and parallel.iterations == plain.iterations


@pytest.mark.parametrize("freeze", ["prefix", "rightmost", "fixed"])
def test_rows_equal_themselves_alone_and_runs_repeat_per_seed(model, freeze):
    options = dict(num_steps=8, max_new_tokens=9, sampler="parallel", inner_steps=2, freeze=freeze, noise=0.5,
                   do_sample=True, temperature=1.2, seed=3)
    batch = generate(model, PROMPTS, **options)
    assert batch.tokens == [generate(model, [p], **options).tokens[0] for p in PROMPTS]
    assert generate(model, PROMPTS, **options).tokens == batch.tokens
    assert generate(model, PROMPTS, **(options | {"seed": 4})).tokens != batch.tokens
    assert all(len(t) == 9 for t in batch.tokens) and all(n % 2 == 0 for row in batch.iterations for n in row)


def test_the_cache_holds_exactly_the_committed_tokens_after_every_step(model):
    scheduler = Scheduler(Engine(model, KVCache(model.config, 2, 40, 8, kv_budget=1)))
    requests = [scheduler.submit(Request(p, max_new_tokens=12, num_steps=8, init_scale=0.0,
                                         parallel=Parallel(inner_steps=2, epsilon=0.2))) for p in PROMPTS[:2]]
    widths = set()
    while not scheduler.idle:
        scheduler.step()
        for r in requests:
            if not r.finished:
                committed = len(r.prompt) - 1 + len(r.tokens)  # the newest token is the wavefront's input
                assert scheduler.engine.cache.lengths[r.row] == committed
                widths.add(len(r.wavefront.tokens))
    assert max(widths) > 1 and all(len(r.tokens) == 12 and r.finish_reason == "length" for r in requests)
    for r in requests:  # the history the wavefront picture is drawn from adds up
        history = r.wavefront.history
        assert sum(c for _, _, c in history) == 12 and [b for b, _, _ in history][-1] < 12
        assert all(later >= earlier for (earlier, _, _), (later, _, _) in zip(history, history[1:], strict=False))


def test_stop_ids_and_strings_end_a_row_and_depth_is_saved_on_the_bundled_model():
    bundled, tokenizer = load_model("default").eval(), load_tokenizer("default")
    prompts = ["73BACbb6baa9Bbb7b=", "5aB3c1=", "91Ab4cC="]
    options = dict(num_steps=32, init_scale=0.0, max_new_tokens=8)
    plain = generate(bundled, prompts, tokenizer, **options)
    parallel = generate(bundled, prompts, tokenizer, sampler="parallel", **options)
    assert parallel.texts == plain.texts and parallel.finish_reasons == ["stop"] * 3  # the answer, then end of text
    assert max(n for row in parallel.iterations for n in row) < 32  # positions settle before the cap
    by_string = generate(bundled, prompts[0], tokenizer, sampler="parallel", stop_ids=[], stop=["<|end_text|>6"],
                         **options)  # without the stop id the model goes on: 5<|end_text|>6<|end_text|>6...
    assert by_string.texts == plain.texts[:1] and by_string.finish_reasons == ["stop"]
    assert len(by_string.tokens[0]) < options["max_new_tokens"]


@pytest.mark.parametrize("options, words", [
    (dict(inner_steps=0), "inner_steps must be an integer >= 1"),
    (dict(epsilon=0.0), "epsilon must be > 0"),
    (dict(max_wavefront=0), "max_wavefront must be an integer >= 1"),
    (dict(freeze="never"), "freeze must be one of prefix, rightmost, fixed"),
    (dict(embed_ema=1.0), "embed_ema (eta) must lie in [0, 1)"),
    (dict(draft_steps=2), "drop draft_steps, exit and warm_start"),
    (dict(exit="kl:5e-4"), "drop draft_steps, exit and warm_start"),
    (dict(kv_budget=4), "run it on a cache with kv_budget=1"),
    (dict(num_steps=2, inner_steps=4), "must be >= inner_steps (4)"),
    (dict(repetition_penalty=1.3), "applies no repetition_penalty"),
])
def test_bad_parallel_settings_are_clear_errors(model, options, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        generate(model, PROMPTS[0], sampler="parallel", max_new_tokens=2, **options)


def test_parallel_settings_without_the_parallel_sampler_are_refused(model):
    with pytest.raises(ValueError, match="settings of the parallel sampler only; add sampler='parallel'"):
        generate(model, PROMPTS[0], inner_steps=2)
    with pytest.raises(ValueError, match="sampler must be 'plain' or 'parallel'"):
        generate(model, PROMPTS[0], sampler="diffusion")

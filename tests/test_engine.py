"""The continuous-batching engine: a request gives the same tokens alone or in any batch, rows are reused,
chunked prefill equals prefill at once, compaction computes only the rows still thinking, bad requests
get clear errors."""

from __future__ import annotations

import pytest
import torch

from latentloop import load_model
from latentloop.cache import KVCache
from latentloop.engine import Engine, Scheduler
from latentloop.exits import KL
from latentloop.request import Request
from latentloop.sampling import Sampler


@pytest.fixture(scope="module")
def model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


def scheduler(model, rows: int, max_length: int = 48, num_steps: int = 16, **engine) -> Scheduler:
    return Scheduler(Engine(model, KVCache(model.config, rows, max_length, num_steps), **engine))


def twelve_requests() -> list[dict]:
    """Different prompt lengths, depths, exits, seeds (noise and sampling) and token limits."""
    g = torch.Generator().manual_seed(0)
    specs = []
    for i in range(12):
        prompt = torch.randint(0, 256, (1 + 3 * i % 13,), generator=g).tolist()
        spec = dict(prompt=prompt, max_new_tokens=3 + i % 5, num_steps=[2, 4, 8, 16][i % 4], init_scale=0.0)
        if i % 3 == 1:
            spec["exit"] = KL(0.05, min_steps=2)
        if i % 4 == 2:
            spec |= dict(init_scale=1.0, seed=100 + i)
        if i % 5 == 3:
            spec |= dict(sampler=Sampler(do_sample=True, temperature=1.3), seed=200 + i)
        if i % 6 == 5:
            spec["warm_start"] = True
        specs.append(spec)
    return specs


def alone(model, spec: dict) -> Request:
    s = scheduler(model, 1)
    request = s.submit(Request(**spec))
    s.run()
    return request


def test_requests_give_the_same_tokens_alone_and_in_a_running_batch(model):
    """12 requests through 4 rows, submitted over several steps: rows are reused as requests finish,
    and every request's tokens and iterations are those it gets alone."""
    specs = twelve_requests()
    s = scheduler(model, 4)
    requests, rows_used, step = [], [], 0
    while len(requests) < len(specs) or not s.idle:
        if len(requests) < len(specs) and step % 2 == 0:  # two new requests every other step
            requests += [s.submit(Request(**spec)) for spec in specs[len(requests) : len(requests) + 2]]
        s.step()
        rows_used += [r.row for r in s.running]
        step += 1
    assert max(rows_used) == 3 and len(rows_used) > 12  # 4 rows served 12 requests
    iterations = [n for r in requests for n in r.iterations]
    assert min(iterations) < 16 and any(r.exit is not None and min(r.iterations) < r.num_steps for r in requests)
    for spec, request in zip(specs, requests, strict=True):
        single = alone(model, spec)
        assert request.tokens == single.tokens, spec
        assert request.iterations == single.iterations, spec
        assert len(request.tokens) == spec["max_new_tokens"]


def test_a_reused_row_does_not_leak_what_it_held(model):
    s = scheduler(model, 1)
    first = s.submit(Request([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12], max_new_tokens=20, num_steps=8, init_scale=0.0))
    s.run()
    second = s.submit(Request([1, 2, 3], max_new_tokens=6, num_steps=8, init_scale=0.0))
    s.run()
    assert first.row == second.row == 0
    fresh = alone(model, dict(prompt=[1, 2, 3], max_new_tokens=6, num_steps=8, init_scale=0.0))
    assert second.tokens == fresh.tokens


def test_chunked_prefill_equals_prefill_at_once(model):
    prompt = torch.randint(0, 256, (1, 23), generator=torch.Generator().manual_seed(3))
    whole = Engine(model, KVCache(model.config, 1, 24, 6), init_scale=0.0)
    chunked = Engine(model, KVCache(model.config, 1, 24, 6), init_scale=0.0)
    at_once = whole.forward(prompt, 6).logits
    pieces = torch.cat([chunked.forward(prompt[:, i : i + 5], 6).logits for i in range(0, 23, 5)], 1)
    torch.testing.assert_close(pieces, at_once, atol=1e-5, rtol=1e-5)
    token = torch.tensor([[17]])
    torch.testing.assert_close(chunked.forward(token, 6).logits, whole.forward(token, 6).logits, atol=1e-5, rtol=1e-5)
    # through the scheduler: 4 tokens a step while another request keeps decoding
    s = Scheduler(Engine(model, KVCache(model.config, 2, 40, 6)), prefill_chunk=4)
    long = s.submit(Request(prompt[0].tolist(), max_new_tokens=5, num_steps=6, init_scale=0.0))
    busy = s.submit(Request([1, 2], max_new_tokens=8, num_steps=6, init_scale=0.0))
    s.step()
    assert long.prefilled == 4 and len(busy.tokens) == 1  # the short one decodes while the long one prefills
    s.run()
    assert long.tokens == alone(model, dict(prompt=prompt[0].tolist(), max_new_tokens=5, num_steps=6,
                                            init_scale=0.0)).tokens


def test_compaction_computes_only_the_rows_still_thinking(model):
    depths = [2, 4, 8, 16]
    outputs = {}
    for compaction in (True, False):
        s = scheduler(model, 4, compaction=compaction)
        requests = [s.submit(Request([5, 6, 7], max_new_tokens=4, num_steps=d, init_scale=0.0)) for d in depths]
        s.run()
        outputs[compaction] = ([r.tokens for r in requests], s.engine.core_rows)
    assert outputs[True][0] == outputs[False][0]
    # row-iterations: the 4 prompts prefilled together, each to its depth, then 4 decode steps of the 4 rows
    assert outputs[True][1] == 5 * sum(depths)
    assert outputs[False][1] == 5 * len(depths) * max(depths)
    exits = [KL(1e9, min_steps=1), KL(1e9, min_steps=3), None]  # an absurd threshold exits at min_steps
    s = scheduler(model, 3)
    for criterion in exits:
        s.submit(Request([5, 6, 7], max_new_tokens=1, num_steps=8, exit=criterion, init_scale=0.0))
    before = s.engine.core_rows
    s.run()
    assert s.engine.core_rows - before == 3 * 8 + (1 + 3 + 8)


def test_a_shallow_row_turns_out_tokens_while_a_deep_row_ponders_one(model):
    """Rows ponder at their own iterations: a depth-2 row gives all 8 of its tokens during the 16
    iterations a depth-16 row spends on its one, and each gives the tokens it gives alone."""
    s = scheduler(model, 2)
    arrivals = []
    specs = [dict(prompt=[5, 6, 7], max_new_tokens=8, num_steps=2, init_scale=0.0),
             dict(prompt=[9, 4], max_new_tokens=1, num_steps=16, init_scale=0.0)]
    shallow, deep = (s.submit(Request(**spec, on_tokens=lambda r, new: arrivals.extend([r.num_steps] * len(new))))
                     for spec in specs)
    s.run()
    assert arrivals == [2] * 8 + [16]
    # row-iterations: one prefill forward per prompt at its depth, then only what each token needed
    assert s.engine.core_rows == (2 + 16) + (8 * 2 + 16)
    assert s.stats.decode_steps == 8  # the deep row's token came with the shallow row's last
    for spec, request in ((specs[0], shallow), (specs[1], deep)):
        assert request.tokens == alone(model, spec).tokens and request.iterations == [spec["num_steps"]] * len(
            request.tokens)


def test_bad_requests_get_clear_errors(model):
    s = scheduler(model, 2, max_length=16, num_steps=8)
    with pytest.raises(ValueError, match="need 17 positions, but a cache row holds 16"):
        s.submit(Request(list(range(10)), max_new_tokens=7, num_steps=4))
    context = model.config.context_length
    wide = scheduler(model, 1, max_length=context, num_steps=8)
    with pytest.raises(ValueError, match="the model context holds"):
        wide.submit(Request(list(range(10)), max_new_tokens=context, num_steps=4))
    with pytest.raises(ValueError, match="num_steps 9 is above this engine's maximum of 8"):
        s.submit(Request([1, 2], max_new_tokens=2, num_steps=9))
    with pytest.raises(ValueError, match="num_steps 12 is above"):
        s.submit(Request([1, 2], max_new_tokens=2, num_steps=4, exit=KL(1e-3, max_steps=12)))
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        Request([1, 2], num_steps=-1)
    with pytest.raises(ValueError, match="vocabulary"):
        s.submit(Request([1, 256]))
    with pytest.raises(ValueError, match="too small for one row"):
        KVCache.for_memory(model.config, 2**16, 64, 8)
    with pytest.raises(ValueError, match="prefill_chunk must be a positive"):
        Scheduler(s.engine, prefill_chunk=0)


def test_cancel_frees_the_row(model):
    s = scheduler(model, 1)
    got = []
    request = s.submit(Request([1, 2, 3], max_new_tokens=30, num_steps=4, on_tokens=lambda r, t: got.append(t)))
    s.step()
    s.step()
    s.cancel(request)
    assert request.finish_reason == "cancelled" and got[-1] == [] and s.engine.cache.free_rows == 1
    nxt = s.submit(Request([4, 5], max_new_tokens=2, num_steps=4, init_scale=0.0))
    s.run()
    assert len(nxt.tokens) == 2 and nxt.finish_reason == "length"


@pytest.mark.parametrize("field, value, words", [
    ("init_scale", -1.0, "init_scale must be a finite number >= 0"),
    ("init_scale", float("nan"), "init_scale must be a finite number >= 0"),
    ("stop", "", "a stop string is empty"),
    ("prompt_exit", True, "prompt_exit=True applies the exit criterion to the prompt's tokens; give exit"),
])
def test_a_request_refuses_a_bad_init_scale_or_an_empty_stop(field, value, words):
    with pytest.raises(ValueError, match=words):
        Request(prompt=[1, 2], **{field: value})


def test_prompt_exit_decides_the_depth_of_every_prompt_token(model):
    """With prompt_exit, an exit every iteration meets runs each token, the prompt's too, one iteration:
    exactly a depth-1 run. Without it the prompt keeps its full depth and the answer differs; a moderate
    criterion in a batch gives what it gives alone."""
    prompt = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(3)).tolist()
    base = dict(prompt=prompt, max_new_tokens=6, init_scale=0.0)
    depth_one = alone(model, dict(base, num_steps=1))
    everywhere = alone(model, dict(base, num_steps=8, exit=KL(1e9), prompt_exit=True))
    answer_only = alone(model, dict(base, num_steps=8, exit=KL(1e9)))
    assert everywhere.tokens == depth_one.tokens and everywhere.iterations == [1] * 6
    assert answer_only.tokens != everywhere.tokens
    s = scheduler(model, 2)
    moderate = dict(base, num_steps=8, exit=KL(0.05, min_steps=2), prompt_exit=True)
    shallow = dict(base, num_steps=4)
    batched = [s.submit(Request(**moderate)), s.submit(Request(**shallow))]
    s.run()
    assert [r.tokens for r in batched] == [alone(model, moderate).tokens, alone(model, shallow).tokens]


def test_prompts_prefill_in_forwards_of_similar_lengths(model):
    """Prompts that arrive together share prefill forwards only with prompts of about their length (the
    padding stays within PADDING_SLACK of the real tokens), and each request still gives its tokens alone."""
    from latentloop.engine import PADDING_SLACK, similar_lengths

    assert similar_lengths([39, 8, 37, 9, 38, 2]) == [[0, 4, 2], [3, 1], [5]]
    assert similar_lengths([5, 5, 5]) == [[0, 1, 2]] and similar_lengths([]) == []
    g = torch.Generator().manual_seed(3)
    specs = [dict(prompt=torch.randint(0, 256, (n + 1,), generator=g).tolist(), max_new_tokens=3, num_steps=4,
                  init_scale=0.0) for n in (39, 8, 37, 9, 38, 2)]
    s = scheduler(model, 6)
    prefills = []
    forward = s.engine.forward

    def recording(ids, *args, **kwargs):
        if kwargs.get("lengths") is not None:
            prefills.append((ids.shape, sum(kwargs["lengths"])))
        return forward(ids, *args, **kwargs)

    s.engine.forward = recording
    requests = [s.submit(Request(**spec)) for spec in specs]
    s.run()
    assert [shape for shape, _ in prefills] == [(3, 39), (2, 9), (1, 2)]
    assert all(shape.numel() <= (1 + PADDING_SLACK) * real for shape, real in prefills)
    for request, spec in zip(requests, specs, strict=True):
        assert request.tokens == alone(model, spec).tokens

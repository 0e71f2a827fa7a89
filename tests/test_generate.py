"""The decode loop: conformance with the reference generator, batches, sampling, stopping, streaming,
warm start, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from latentloop import load_model
from latentloop.generate import GenerationResult, generate, prepare_prompt, stream
from latentloop.sampling import Sampler
from latentloop.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir), Tokenizer.from_dir(tiny_model_dir)


@pytest.mark.parametrize("num_steps", [2, 8])
def test_greedy_matches_reference_generator(model, conformance_cases, num_steps):
    prompt = conformance_cases["greedy_prompt"]
    result = generate(model, prompt, num_steps=num_steps, init_scale=0.0, max_new_tokens=10)
    assert result.tokens == conformance_cases[f"greedy_r{num_steps}"].tolist()
    assert result.iterations == [[num_steps] * 10]
    assert result.finish_reasons == ["length"] and result.tokens_per_second > 0


def test_padded_batch_rows_generate_what_they_generate_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [200]]
    cases = [(4, {}), (4, {"kv_budget": 2}), (16, {"exit": "kl:1e-2"}), (4, {"warm_start": True})]
    for steps, options in cases:
        batch = generate(model, prompts, num_steps=steps, init_scale=0.0, max_new_tokens=8, **options)
        alone = [generate(model, p, num_steps=steps, init_scale=0.0, max_new_tokens=8, **options) for p in prompts]
        assert batch.tokens == [a.tokens[0] for a in alone], options
        assert batch.iterations == [a.iterations[0] for a in alone], options


def test_prompt_forms_pad_on_the_left():
    ids, mask = prepare_prompt([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    ids, mask = prepare_prompt(torch.tensor([7, 8]))
    assert ids.tolist() == [[7, 8]] and bool(mask.all())


def test_sampling_is_seeded_and_filters_work(model):
    options = dict(num_steps=4, init_scale=1.0, max_new_tokens=12, do_sample=True, temperature=1.5)
    first = generate(model, [1, 2, 3], seed=7, **options)
    assert first.tokens == generate(model, [1, 2, 3], seed=7, **options).tokens
    assert first.tokens != generate(model, [1, 2, 3], seed=8, **options).tokens
    greedy = generate(model, [1, 2, 3], num_steps=4, init_scale=0.0, max_new_tokens=12)
    top1 = generate(model, [1, 2, 3], num_steps=4, init_scale=0.0, max_new_tokens=12, do_sample=True, top_k=1, seed=1)
    assert top1.tokens == greedy.tokens


def test_sampler_filters_and_penalty():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    sampler = Sampler(do_sample=True, top_k=2)
    assert torch.isinf(sampler.filter(logits)[0, 2:]).all() and not torch.isinf(sampler.filter(logits)[0, :2]).any()
    kept = Sampler(do_sample=True, top_p=0.7).filter(logits)[0]  # p = .64, .24, ...: the top two reach 0.7
    assert torch.isfinite(kept[:2]).all() and torch.isinf(kept[2:]).all()
    kept = Sampler(do_sample=True, min_p=0.3).filter(logits)[0]  # keeps p >= 0.3 * 0.64
    assert torch.isfinite(kept[:2]).all() and torch.isinf(kept[2:]).all()
    seen = torch.tensor([[True, False, False, True]])
    penalized = Sampler(repetition_penalty=2.0).penalize(logits, seen)
    assert penalized.tolist() == [[1.0, 1.0, 0.0, -2.0]]
    draws = Sampler(do_sample=True, top_k=2)(logits.expand(500, 4), generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Sampler(temperature=0)


def test_repetition_penalty_changes_greedy_output(model):
    plain = generate(model, [1, 2, 3], num_steps=8, init_scale=0.0, max_new_tokens=10)
    assert len(set(plain.tokens[0])) < 10  # this model repeats itself ...
    penalized = generate(model, [1, 2, 3], num_steps=8, init_scale=0.0, max_new_tokens=10, repetition_penalty=5.0)
    assert len(set(penalized.tokens[0])) > len(set(plain.tokens[0]))  # ... less so with the penalty


def test_stop_ids_and_max_new_tokens(model):
    full = generate(model, [5, 6, 7], num_steps=4, init_scale=0.0, max_new_tokens=8).tokens[0]
    stopped = generate(model, [5, 6, 7], num_steps=4, init_scale=0.0, max_new_tokens=8, stop_ids=[full[3]])
    cut = full.index(full[3])
    assert stopped.tokens[0] == full[: cut + 1] and stopped.finish_reasons == ["stop"]


def test_rates_count_the_prompt_forward_once():
    result = GenerationResult(tokens=[[1, 2, 3], [4, 5, 6]], iterations=[[4] * 3] * 2, texts=None,
                              finish_reasons=["length"] * 2, prompt_tokens=8, prefill_seconds=2.0,
                              total_seconds=3.0, cache_bytes=0)
    assert result.tokens_per_second == 2.0  # 6 tokens in 3 s
    assert result.decode_tokens_per_second == 4.0  # 4 tokens after the prompt's forward, in 1 s
    assert "2.0 tokens/s (4.0 after the prompt)" in result.summary()


def test_text_stop_strings_and_streaming(tiny):
    model, tok = tiny
    prompt = "ROMEO: What light"
    result = generate(model, prompt, tok, num_steps=2, init_scale=0.0, max_new_tokens=20, stop_ids=[])
    assert result.text == tok.decode(result.tokens[0])
    pieces = list(stream(model, prompt, tok, num_steps=2, init_scale=0.0, max_new_tokens=20, stop_ids=[]))
    assert "".join(pieces) == result.text and len(pieces) > 1
    needle = result.text[len(result.text) // 2 : len(result.text) // 2 + 2]
    cut = generate(model, prompt, tok, num_steps=2, init_scale=0.0, max_new_tokens=20, stop=needle, stop_ids=[])
    assert cut.text == result.text[: result.text.index(needle)] and cut.finish_reasons == ["stop"]
    streamed = stream(model, prompt, tok, num_steps=2, init_scale=0.0, max_new_tokens=20, stop=needle, stop_ids=[])
    assert "".join(streamed) == cut.text and streamed.result.text == cut.text


def test_warm_start_starts_from_the_previous_latent(model):
    cold = generate(model, [1, 2, 3, 4], num_steps=3, init_scale=0.0, max_new_tokens=6)
    warm = generate(model, [1, 2, 3, 4], num_steps=3, init_scale=0.0, max_new_tokens=6, warm_start=True)
    assert warm.tokens[0][0] == cold.tokens[0][0]  # the first token comes from the same prefill
    assert warm.tokens != cold.tokens  # a 3-iteration model is far from its fixed point: the start matters


def test_bad_input_errors(model, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="longer than|context length"):
        generate(model, list(range(model.config.context_length)), num_steps=2)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        generate(model, [1, 2], num_steps=0)
    with pytest.raises(ValueError, match="unknown exit criterion"):
        generate(model, [1, 2], exit="sometimes")
    with pytest.raises(ValueError, match="kv_budget must be a positive"):
        generate(model, [1, 2], kv_budget=0)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        generate(model, "hello")
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [])
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, [1, 999])
    with pytest.raises(ValueError, match="unknown generation option.* stop_token_ids; the options are: .*stop_ids"):
        generate(model, [1, 2], stop_token_ids=[0])
    model_only = tmp_path / "no-tokenizer"
    load_model(tiny_model_dir).save_pretrained(str(model_only))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_dir(model_only)

"""Self-speculative decoding: greedy output identical to plain greedy at the verifier's depth."""

from __future__ import annotations

import pytest
import torch

from latentloop import load_model
from latentloop.generate import generate

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [200, 3]]


@pytest.fixture(scope="module")
def model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


@pytest.mark.parametrize(("num_steps", "draft_steps", "lookahead"), [(4, 1, 3), (8, 6, 2)])
def test_speculative_greedy_equals_plain_greedy(model, num_steps, draft_steps, lookahead):
    options = dict(num_steps=num_steps, init_scale=0.0, max_new_tokens=10)
    alone = []
    for prompt in PROMPTS:
        plain = generate(model, prompt, **options)
        fast = generate(model, prompt, draft_steps=draft_steps, lookahead=lookahead, **options)
        assert fast.tokens == plain.tokens, (prompt, num_steps, draft_steps)
        assert fast.acceptance_rate is not None and 0.0 <= fast.acceptance_rate <= 1.0
        alone.append(plain.tokens[0])
    batch = generate(model, PROMPTS, draft_steps=draft_steps, lookahead=lookahead, **options)
    assert batch.tokens == alone


def test_drafts_close_to_the_verifier_are_accepted(model):
    """Drafting at nearly the verifier's depth must accept most drafts (and the statistics say so)."""
    result = generate(model, PROMPTS[0], num_steps=8, init_scale=0.0, max_new_tokens=24, draft_steps=7, lookahead=4)
    assert result.acceptance_rate > 0.5
    assert result.drafted % 4 == 0 and result.accepted <= result.drafted


def test_speculative_rejects_what_it_cannot_keep_exact(model):
    unsupported = [{"kv_budget": 2}, {"warm_start": True}, {"exit": "kl"}, {"do_sample": True},
                   {"repetition_penalty": 1.2}]
    for bad in unsupported:
        with pytest.raises(ValueError, match="speculative decoding"):
            generate(model, [1, 2, 3], num_steps=4, draft_steps=2, **bad)
    with pytest.raises(ValueError, match="draft_steps must be between 1 and num_steps"):
        generate(model, [1, 2, 3], num_steps=4, draft_steps=5)
    with pytest.raises(ValueError, match="lookahead must be >= 1"):
        generate(model, torch.tensor([[1, 2, 3]]), num_steps=4, draft_steps=2, lookahead=0)

"""The randomized-depth objective: sampler statistics, determinism, and truncated backpropagation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentloop import RecurrentDepthLM, get_preset
from latentloop.train.objective import DepthObjective, sample_depth, split_depth
from latentloop.train.schedule import lr_factor


def exact_depth_pmf(mean: int, max_depth: int = 400) -> np.ndarray:
    """P(r = n + 1) = E_rate[Poisson(n; rate)], rate ~ LogNormal(ln(mean) - 1/8, 1/2), by quadrature."""
    z = np.linspace(-9, 9, 8001)
    w = np.exp(-z * z / 2)
    w /= w.sum()
    log_rate = math.log(mean) - 0.125 + 0.5 * z
    n = np.arange(max_depth)
    log_fact = np.array([math.lgamma(k + 1) for k in n])
    log_p = n[:, None] * log_rate[None, :] - np.exp(log_rate)[None, :] - log_fact[:, None]
    return np.concatenate([[0.0], (np.exp(log_p) * w[None, :]).sum(1)])  # index = r


def test_depth_sampler_matches_spec_statistics():
    draws = np.array([sample_depth(32, seed=0, step=s) for s in range(30_000)])
    pmf = exact_depth_pmf(32)
    assert abs(draws.mean() - 33.0) < 0.35  # spec: mean ~33 (sd ~18, 30k draws: se ~0.1)
    assert abs(np.median(draws) - 29) <= 1  # spec: median ~29
    exact_mode = int(pmf.argmax())
    assert 22 <= exact_mode <= 25  # spec: mode ~24
    hist = np.bincount(draws, minlength=len(pmf))[: len(pmf)] / len(draws)
    smooth = np.convolve(hist, np.ones(7) / 7, mode="same")  # the pmf is flat at the top: smooth the counts
    assert abs(int(smooth.argmax()) - exact_mode) <= 3
    assert np.abs(np.cumsum(hist) - np.cumsum(pmf)).max() < 0.015  # Kolmogorov distance to the exact law
    assert draws.min() >= 1


def test_depth_is_a_function_of_seed_and_step():
    assert [sample_depth(32, 7, s) for s in range(50)] == [sample_depth(32, 7, s) for s in range(50)]
    assert [sample_depth(32, 7, s) for s in range(50)] != [sample_depth(32, 8, s) for s in range(50)]
    objective = DepthObjective(mean_recurrence=32, backprop_depth=8, seed=7)
    assert objective.depth(12) == sample_depth(32, 7, 12)
    assert DepthObjective(32, 8, fixed_depth=1).num_steps(5) == (0, 1)


@pytest.mark.parametrize(("total", "k", "expected"), [(20, 8, (12, 8)), (5, 8, (0, 5)), (8, 8, (0, 8)), (1, 8, (0, 1))])
def test_split_depth(total, k, expected):
    assert split_depth(total, k) == expected


def tiny_model() -> RecurrentDepthLM:
    config = get_preset("tiny").replace(hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=50,
                                        context_length=16, n_prelude=1, n_core=2, n_coda=1)
    model = RecurrentDepthLM(config)
    model.init_weights(torch.Generator().manual_seed(0))
    return model.double()


def grads_by_hand(model, ids, labels, x0, total, detach_after):
    """Run all `total` iterations with autograd on, detaching the state after iteration `detach_after`."""
    model.zero_grad()
    ctx = model.context(ids.shape[1])
    e = model.embed(ids, ctx)
    x = x0
    for step in range(total):
        x = model.core_step(x, e, ctx, step)
        if step + 1 == detach_after:
            x = x.detach()
    _, logits = model.decode(x, ctx)
    F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("total", "k"), [(7, 3), (2, 3)])
def test_truncated_backprop_matches_hand_detached_state(total, k):
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 12), generator=g)
    labels = torch.randint(0, 50, (2, 12), generator=g)
    x0 = torch.randn(2, 12, 32, generator=g, dtype=torch.float64)
    model.zero_grad()
    out = model(ids, num_steps=DepthObjective(4, k, fixed_depth=total).num_steps(0), initial_state=x0, labels=labels)
    out.loss.backward()
    trained = {n: p.grad.clone() for n, p in model.named_parameters()}
    no_grad_steps = max(total - k, 0)
    reference = grads_by_hand(model, ids, labels, x0, total, detach_after=no_grad_steps)
    for name in trained:
        torch.testing.assert_close(trained[name], reference[name], rtol=1e-9, atol=1e-12, msg=name)
    core = "transformer.core_block.0.mlp.fc.weight"
    if no_grad_steps:  # the check can fail: full backprop and a different k give other core gradients
        full = grads_by_hand(model, ids, labels, x0, total, detach_after=-1)
        wrong_k = grads_by_hand(model, ids, labels, x0, total, detach_after=no_grad_steps - 1)
        assert (full[core] - trained[core]).abs().max() > 1e-6
        assert (wrong_k[core] - trained[core]).abs().max() > 1e-6
    assert trained["transformer.prelude.0.attn.Wqkv.weight"].abs().sum() > 0  # the prelude learns through e


def test_schedules():
    constant = [lr_factor(s, 100, "constant", warmup_steps=10, cooldown_steps=20, min_lr_ratio=0.1)
                for s in range(100)]
    assert constant[0] == pytest.approx(0.1) and constant[9] == pytest.approx(1.0)
    assert constant[10:80] == [1.0] * 70
    assert constant[80] == pytest.approx(1 - 0.9 / 20) and constant[99] == pytest.approx(0.1)
    cosine = [lr_factor(s, 100, "cosine", warmup_steps=10, min_lr_ratio=0.0) for s in range(101)]
    assert cosine[10] == pytest.approx(1.0) and cosine[55] == pytest.approx(0.5) and cosine[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:], strict=False))

"""HuginnAdam against a hand-computed example, step by step; weight-decay groups; the AdamW choice."""

from __future__ import annotations

import math

import pytest
import torch

from latentloop import RecurrentDepthLM, get_preset
from latentloop.train.optim import HuginnAdam, build_optimizer, param_groups, set_lr

GRADS = [[0.01, -0.02, 0.0], [1.0, 0.5, 0.0], [-0.3, 0.1, 0.2]]  # step 2 trips the update clip


def hand_steps(p, lr, peak, wd, b1, b2):
    """The spec's update written out per element with math.* only."""
    m = v = None
    history = []
    for g in GRADS:
        if m is None:
            m, v = list(g), [x * x for x in g]
        else:
            m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
            v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        ratios = [gi / math.sqrt(vi) if vi > 0 else 0.0 for gi, vi in zip(g, v, strict=True)]
        clip = max(1.0, math.sqrt(sum(r * r for r in ratios) / len(ratios)))
        p = [pi * (1 - wd * lr / peak) for pi in p]
        p = [pi - lr * math.atan2(mi, math.sqrt(vi)) / clip for pi, mi, vi in zip(p, m, v, strict=True)]
        history.append((p, clip))
    return history


def test_huginn_adam_matches_hand_computation():
    p0 = [1.0, -2.0, 0.5]
    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = HuginnAdam([param], lr=0.2, betas=(0.9, 0.95), weight_decay=0.1)
    set_lr(opt, 0.2, 0.5)  # the schedule is at half the peak: decay is scaled by lr / peak = 0.5
    expected = hand_steps(p0, lr=0.1, peak=0.2, wd=0.1, b1=0.9, b2=0.95)
    assert expected[1][1] > 1.5  # the example exercises update clipping
    for grad, (want, _) in zip(GRADS, expected, strict=True):
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(param.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_first_step_is_sign_like_without_epsilon():
    """Moments start at the first gradient: the first update is lr * atan2(g, |g|) = lr * pi/4 * sign(g)."""
    param = torch.nn.Parameter(torch.tensor([3.0, -1e-30, 0.0]))
    opt = HuginnAdam([param], lr=1.0, update_clip=False)
    param.grad = torch.tensor([1e-20, 5.0, 0.0])
    opt.step()
    torch.testing.assert_close(param.detach(), torch.tensor([3 - math.pi / 4, -math.pi / 4, 0.0]))


def test_no_weight_decay_on_norms_biases_and_qk_bias():
    model = RecurrentDepthLM(get_preset("tiny"))
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert "transformer.core_block.0.attn.qk_bias" in kept and "transformer.ln_f.weight" in kept
    assert all("norm" in n or "ln_f" in n or "qk_bias" in n for n in kept)
    assert "transformer.core_block.0.attn.Wqkv.weight" in decayed and "transformer.wte.weight" in decayed


def test_adamw_choice_and_unknown_name():
    model = RecurrentDepthLM(get_preset("tiny"))
    opt = build_optimizer(model, "adamw", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)

"""Early exit: every criterion stops early on a converging model, never before min_steps, and at exactly
the iteration its rule names (recomputed here from an uncached depth sweep)."""

from __future__ import annotations

import math

import pytest
import torch

from latentloop import RecurrentDepthLM, get_preset
from latentloop.exits import KL, ArgmaxStability, Entropy, LatentDiff, Watch, parse_exit, start_states
from latentloop.generate import generate

PROMPT = [[3, 1, 4, 1, 5, 9, 2, 6]]
SPECS = ["kl", "entropy", "latent-diff", "argmax-stability"]


@pytest.fixture(scope="module")
def converging():
    """A tiny model whose state enters each iteration damped, so the latent settles quickly."""
    model = RecurrentDepthLM(get_preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.transformer.adapter.weight[:, : model.config.hidden_size] *= 0.1
    return model.eval()


@pytest.mark.parametrize("spec", SPECS)
def test_each_criterion_stops_early_and_respects_min_steps(converging, spec):
    free = generate(converging, PROMPT, num_steps=32, init_scale=0.0, max_new_tokens=6, exit=spec)
    decoded = free.iterations[0]  # the first token too: the prompt's last token is decoded under the exit
    assert max(decoded) < 32, f"{spec} never exited early: {decoded}"
    floor = parse_exit(spec, min_steps=12)
    held = generate(converging, PROMPT, num_steps=32, init_scale=0.0, max_new_tokens=6, exit=floor)
    assert all(12 <= n < 32 for n in held.iterations[0]), held.iterations
    capped = parse_exit(spec, max_steps=2)
    assert all(n <= 2 for n in generate(converging, PROMPT, num_steps=32, init_scale=0.0, max_new_tokens=4,
                                        exit=capped).iterations[0])


def rule_holds(spec: str, outputs: dict, depth: int, vocab: int, threshold: float) -> bool:
    """The criterion between iterations depth-1 and depth, from the uncached sweep (last position)."""
    logp = {d: torch.log_softmax(o.logits[0, -1], -1) for d, o in outputs.items()}
    logp[0] = torch.full((vocab,), -math.log(vocab))
    if spec == "kl":
        return float((logp[depth - 1].exp() * (logp[depth - 1] - logp[depth])).sum()) < threshold
    if spec == "entropy":
        h = {d: float(-(lp.exp() * lp).sum()) for d, lp in logp.items()}
        return abs(h[depth] - h[depth - 1]) < threshold
    if spec == "latent-diff":
        states = {d: o.state[0, -1] for d, o in outputs.items()} | {0: torch.zeros(outputs[1].state.shape[-1])}
        return float((states[depth] - states[depth - 1]).norm() / states[depth].norm()) < threshold
    top = [None] + [int(outputs[d].logits[0, -1].argmax()) for d in range(1, depth + 1)]
    return depth > threshold and len(set(top[depth - int(threshold) :])) == 1


@pytest.mark.parametrize("spec", SPECS)
def test_exit_iteration_matches_the_rule(converging, spec):
    """The first new token comes from the prompt's last token, decoded under the exit; its past (the rest
    of the prompt) ran at full depth, so an uncached sweep over the prompt reproduces each iteration."""
    criterion = parse_exit(spec, min_steps=2)
    result = generate(converging, PROMPT, num_steps=32, init_scale=0.0, max_new_tokens=1, exit=criterion)
    ids = torch.tensor(PROMPT)
    outputs = converging.forward_depths(ids, list(range(1, 33)), init_scale=0.0)
    vocab = converging.config.vocab_size
    expected = next(d for d in range(2, 33) if rule_holds(spec, outputs, d, vocab, criterion.threshold))
    assert result.iterations[0][0] == expected


def settling(rows: int, steps: int, vocab: int = 11, hidden: int = 8) -> tuple[list, list]:
    """States [rows, 1, h] and logits [rows, 1, V] over `steps` iterations whose changes shrink by half each
    time (row r at its own pace), so that every criterion fires at some iteration of some rows."""
    generator = torch.Generator().manual_seed(0)
    x, logits = torch.randn(rows, 1, hidden, generator=generator), torch.randn(rows, 1, vocab, generator=generator)
    pace = torch.linspace(0.3, 0.7, rows)[:, None, None]
    xs, ls = [], []
    for t in range(steps):
        x = x + pace**t * torch.randn(rows, 1, hidden, generator=generator)
        logits = logits + 3 * pace**t * torch.randn(rows, 1, vocab, generator=generator)
        xs.append(x)
        ls.append(logits)
    return xs, ls


def test_a_watch_over_mixed_rows_gives_each_row_its_own_verdicts():
    """Rows of four criteria and several thresholds, starting at different iterations and leaving early,
    compared by one Watch, converge exactly when each row compared alone does."""
    specs = ["kl:1e-2", "entropy:1e-2", "latent-diff:0.05", "argmax-stability:2", "kl:1e-3", "kl:5e-2"]
    criteria = [parse_exit(s) for s in specs]
    rows, steps, vocab, late = len(specs), 12, 11, 3  # rows 3.. start `late` iterations after rows 0..2
    xs, ls = settling(rows, steps, vocab)  # row i's k-th iteration: xs[k][i], ls[k][i]
    x0 = torch.zeros(rows, 1, 8)

    alone = []
    for i, c in enumerate(criteria):
        watch = Watch([c], start_states([c], x0[i : i + 1], vocab), vocab)
        alone.append([watch.observe(xs[k][i : i + 1], ls[k][i : i + 1])[0] for k in range(steps)])

    together: list[list[bool]] = [[] for _ in range(rows)]
    first = Watch(criteria[:3], start_states(criteria[:3], x0[:3], vocab), vocab)
    for k in range(late):
        for i, flag in enumerate(first.observe(xs[k][:3], ls[k][:3])):
            together[i].append(flag)
    states = first.states() + start_states(criteria[3:], x0[3:], vocab)  # rows join: states carried over
    watch, members = Watch(criteria, states, vocab), list(range(rows))
    for n in range(steps - late):
        if n == 4:  # rows 1 and 4 are done: the others go on without them
            members = [0, 2, 3, 5]
            watch.keep([0, 2, 3, 5])
        k = [late + n if i < 3 else n for i in members]  # each row at its own iteration
        flags = watch.observe(torch.stack([xs[j][i] for i, j in zip(members, k, strict=True)]),
                              torch.stack([ls[j][i] for i, j in zip(members, k, strict=True)]))
        for i, flag in zip(members, flags, strict=True):
            together[i].append(flag)
    for i in range(rows):
        assert together[i] == alone[i][: len(together[i])], (specs[i], together[i], alone[i])
    assert len(together[0]) == steps and len(together[4]) == 4
    # none converges at its first iteration; each converges later, but the one that left after 4
    assert not any(flags[0] for flags in together) and [any(flags) for flags in together] == [True] * 4 + [False, True]


def test_parse_exit_specs_and_errors():
    assert isinstance(parse_exit("kl"), KL) and parse_exit("kl").threshold == 5e-4
    assert parse_exit("kl:1e-3").threshold == 1e-3
    assert isinstance(parse_exit("entropy:0.01"), Entropy)
    assert isinstance(parse_exit("latent-diff"), LatentDiff) and parse_exit("latent-diff").threshold == 0.03
    assert parse_exit("argmax-stability:3").threshold == 3
    assert isinstance(parse_exit("argmax-stability"), ArgmaxStability)
    assert parse_exit(None) is None and parse_exit("none") is None
    assert parse_exit("kl", min_steps=4, max_steps=9).min_steps == 4
    with pytest.raises(ValueError, match="unknown exit criterion 'cosine'"):
        parse_exit("cosine")
    with pytest.raises(ValueError, match="not a number"):
        parse_exit("kl:small")
    with pytest.raises(ValueError, match="must be an integer"):
        parse_exit("argmax-stability:2.5")
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        parse_exit("kl", min_steps=8, max_steps=4)
    with pytest.raises(ValueError, match="must be positive"):
        KL(-1.0)

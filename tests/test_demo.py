"""`latentloop demo` runs end to end on a small sample, prints its figures and writes its plot."""

import json

import pytest

from latentloop.cli import main
from latentloop.cli.demo import DEPTHS, SPLITS


def test_demo_json_end_to_end(tmp_path, capsys):
    """The figures on 6 problems per split equal those recomputed another way (a plain forward pass per
    depth, instead of the demo's one-pass sweep over all depths), the cached generation figures agree with
    them, and they show what the bundled model must: more iterations answer better, beyond the
    non-recurrent baseline; early exit keeps the answers with fewer iterations, and an exit after one
    iteration everywhere scores what depth 1 scores."""
    import torch

    from latentloop import load_model
    from latentloop.tasks import task_from_dir
    from latentloop.tasks.base import IGNORE

    assert main(["demo", "--limit", "6", "--out", str(tmp_path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    plot = tmp_path / "accuracy_vs_iterations.png"
    assert figures["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "figures.json").read_text()) == figures

    model, baseline, task = load_model("default"), load_model("baseline"), task_from_dir("default")
    problems = {label: task.problems(split, 6, seed=0) for split, label in SPLITS.items()}

    @torch.no_grad()
    def correct(net, split, depth):  # greedy decoding is right iff every answer position's argmax is
        ids, labels = task.encode(problems[split])
        predicted = net(ids, num_steps=depth, init_scale=0.0).logits.argmax(-1)
        return ((predicted == labels) | (labels == IGNORE)).all(-1)

    acc = {split: {int(d): a for d, a in figures["accuracy"][split].items()} for split in problems}
    hits = {}
    for split in problems:
        assert sorted(acc[split]) == DEPTHS
        for d in DEPTHS:
            hits[split, d] = correct(model, split, d)
            assert acc[split][d] == pytest.approx(hits[split, d].float().mean().item()), (split, d)
        assert figures["baseline"][split] == pytest.approx(correct(baseline, split, 1).float().mean().item())
    inside, harder = acc["in-distribution"], acc["harder"]
    assert inside[16] == inside[32] == inside[64] == 1.0 and inside[1] <= 0.5  # thinking longer turns it right
    assert harder[64] == 1.0 and harder[64] > harder[32] > harder[16]  # deeper chains need more iterations
    assert figures["baseline"]["in-distribution"] < inside[32]  # same size without recurrence: worse

    gen = figures["generation"]  # cached greedy decoding, a third code path, answers as teacher forcing says
    assert gen["fixed_32"] == {"accuracy": inside[32], "mean_iterations": 32, "scored_mean_iterations": 32}
    assert gen["kv_budget"]["accuracy"] == inside[32]  # 4 iterations of K/V per layer suffice on this task
    assert gen["exit"]["scored_mean_iterations"] < 24 and gen["exit"]["accuracy"] >= inside[8]  # early, still good
    controls = gen["controls"]  # every token, the prompt's too, after one iteration; every token through a 1-slot ring
    assert controls["exit"]["criterion"] == "kl:1e9" and controls["exit"]["scored_mean_iterations"] == 1
    assert controls["exit"]["accuracy"] == inside[1] < inside[32]  # one iteration everywhere is depth 1: it bites
    assert controls["kv_budget"]["budget"] == 1 and controls["kv_budget"]["scored_mean_iterations"] == 32

    example = figures["example"]
    index = next(i for i, p in enumerate(problems["in-distribution"]) if p.prompt == example["prompt"])
    assert example["answer"] == problems["in-distribution"][index].answer == example["by_iterations"]["32"]
    assert example["by_iterations"]["1"] != example["answer"]  # the problem shown is one that iterating fixes
    for d in DEPTHS:  # its generated answer at each depth is right exactly when teacher forcing says so
        assert (example["by_iterations"][str(d)] == example["answer"]) == bool(hits["in-distribution", d][index])


def test_demo_table_names_the_plot(tmp_path, capsys):
    assert main(["demo", "--limit", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "in-distribution" in out and "baseline" in out and "kv budget 4" in out
    assert f"plot written to {tmp_path / 'accuracy_vs_iterations.png'}" in out


def test_demo_rejects_a_model_without_a_task(tmp_path, capsys):
    from latentloop import ModelConfig, RecurrentDepthLM

    RecurrentDepthLM(ModelConfig(hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=32,
                                 context_length=32, n_prelude=1, n_core=1, n_coda=1)).save_pretrained(str(tmp_path))
    assert main(["demo", "--model", str(tmp_path), "--limit", "2", "--out", str(tmp_path / "o")]) == 2
    assert "task.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--limit"])

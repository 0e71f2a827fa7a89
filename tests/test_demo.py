"""`latentloop demo` runs end to end on a small sample, prints its figures and writes its plot."""

import json

import pytest

from latentloop.cli import main


def test_demo_json_end_to_end(tmp_path, capsys):
    assert main(["demo", "--limit", "6", "--out", str(tmp_path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    plot = tmp_path / "accuracy_vs_iterations.png"
    assert figures["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "figures.json").read_text()) == figures
    for split in ("in-distribution", "harder"):
        assert sorted(int(d) for d in figures["accuracy"][split]) == [1, 2, 4, 8, 16, 32, 64]
        assert all(0 <= a <= 1 for a in figures["accuracy"][split].values())
        assert 0 <= figures["baseline"][split] <= 1
    gen = figures["generation"]
    assert gen["fixed_32"]["mean_iterations"] == 32
    assert 1 <= gen["exit"]["mean_iterations"] <= 32 and 0 <= gen["kv_budget"]["accuracy"] <= 1
    example = figures["example"]
    assert example["by_iterations"]["32"] == example["answer"]


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

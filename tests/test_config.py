"""ModelConfig validation, presets, HF config.json mapping, accounting and `latentloop info`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from latentloop import ModelConfig, get_preset
from latentloop.accounting import count_parameters, depth_table, flops_per_token, materialized_parameters
from latentloop.cli import main
from latentloop.config import PRESETS, ConfigError


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(hidden_size=100, num_heads=3), "not divisible by num_heads"),
        (dict(hidden_size=60, num_heads=4), "head dimension 15 is odd"),
        (dict(n_core=0), "n_core"),
        (dict(vocab_size=0), "vocab_size must be positive"),
        (dict(mean_recurrence=0), "mean_recurrence"),
    ],
)
def test_invalid_configs_explain_themselves(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        get_preset("tiny").replace(hidden=3)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trip(name):
    config = get_preset(name)
    hf = json.loads(json.dumps(config.to_hf_dict()))
    assert ModelConfig.from_hf_dict(hf) == config


def test_reads_the_published_config(conformance_dir):
    config = ModelConfig.from_json_file(conformance_dir / "checkpoint" / "config.json")
    assert config == get_preset("tiny")
    written = config.to_hf_dict()
    original = json.loads((conformance_dir / "checkpoint" / "config.json").read_text())
    for key in ("n_embd", "n_heads", "n_layers", "intermediate_size", "block_size", "mean_recurrence",
                "effective_expected_depth", "model_type", "architectures"):
        assert written[key] == original[key], key
    for key in ("std", "out_proj", "embed_scale"):
        assert written["init_values"][key] == pytest.approx(original["init_values"][key])


def test_huginn_accounting_matches_spec():
    config = get_preset("huginn-0125")
    params = count_parameters(config)
    assert params.total == pytest.approx(3.56e9, rel=0.005)
    assert params.core == pytest.approx(1.58e9, rel=0.005)
    assert params.adapter == pytest.approx(55.8e6, rel=0.005)
    assert params.embedding == pytest.approx(346e6, rel=0.005)
    assert params.core / 4 == pytest.approx(395.4e6, rel=0.001)  # one block
    assert materialized_parameters(config, 32) == pytest.approx(54.3e9, rel=0.005)  # adapter per iteration
    # the paper's 52.6B counts the adapter once: the difference is exactly 31 adapters
    assert materialized_parameters(config, 32) - 31 * params.adapter == pytest.approx(52.6e9, rel=0.005)
    assert config.effective_depth(32) == 132
    # forward FLOPs grow by 2 x (core + adapter) per extra iteration
    assert flops_per_token(config, 2) - flops_per_token(config, 1) == 2 * (params.core + params.adapter)
    rows = depth_table(config, (1, 32))
    assert [r["effective_depth"] for r in rows] == [8, 132]


def test_info_cli_prints_the_figures(capsys):
    assert main(["info", "huginn-0125"]) == 0
    out = capsys.readouterr().out
    assert "3.56B" in out and "1.58B" in out and "54.3B" in out and " 132" in out
    assert "each iteration with its own adapter and core" in out  # the rule, said where the figures are
    for steps in ("1", "4", "8", "16", "32", "64"):
        assert any(line.split()[:1] == [steps] for line in out.splitlines()), steps
    assert main(["info", "small", "--json", "--steps", "1", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["num_steps"] for r in data["depth"]] == [1, 8]
    assert data["parameters"]["total"] == count_parameters(get_preset("small")).total


def test_info_on_a_checkpoint_and_bad_model(conformance_dir, capsys):
    assert main(["info", str(conformance_dir / "checkpoint"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["hidden_size"] == 64
    assert main(["info", "/no/such/dir"]) == 2
    assert "no such directory exists" in capsys.readouterr().err


def test_info_unknown_name_lists_the_presets_and_asks_for_a_directory(capsys):
    assert main(["info", "huginn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentloop info: error: 'huginn' is not a preset")
    assert "huginn-0125, tiny, small, medium" in err and "checkpoint directory holding config.json" in err
    assert len(err.strip().splitlines()) == 1


def test_materialized_parameters_and_flops_follow_one_rule_counted_by_hand():
    """The tiny preset counted by hand: materialized parameters are the unrolled model's (each
    iteration its own adapter and core); FLOPs/token are 2 x the weights a token multiplies with in
    that same unrolled model (embedding lookup excluded, tied head included)."""
    c = get_preset("tiny")
    h, inter, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    assert (h, inter, vocab, c.n_prelude, c.n_core, c.n_coda, c.tie_embeddings) == (64, 160, 256, 2, 4, 2, True)
    block = 3 * h * h + h * h + 2 * h + 2 * h * inter + inter * h + 4 * h  # Wqkv, proj, qk_bias, MLP, 4 norms
    assert block == 47_488
    embedding, adapter, final_norm = vocab * h, 2 * h * h, h
    total = embedding + 2 * block + adapter + 4 * block + 2 * block + final_norm  # head tied: no weights
    assert count_parameters(c).total == total == 404_544
    for r in (1, 2, 8, 32):
        unrolled = embedding + 2 * block + r * (adapter + 4 * block) + 2 * block + final_norm
        assert materialized_parameters(c, r) == unrolled
        multiplied = unrolled - embedding - final_norm + vocab * h  # lookup out, tied head in
        assert flops_per_token(c, r) == 2 * multiplied
        assert flops_per_token(c, r, seq_len=10) == 2 * multiplied + 4 * 10 * h * c.effective_depth(r)


def test_every_command_has_help_with_examples():
    from latentloop.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert "info" in commands
    for name in commands:
        result = subprocess.run([sys.executable, "-m", "latentloop", name, "--help"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "example" in result.stdout.lower(), f"`latentloop {name} --help` shows no examples"

"""Latent-space inspection: trajectories in one pass, the class heuristic, path independence, the report."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from latentloop import RecurrentDepthLM, get_preset, load_model
from latentloop.analysis import (
    classify_trajectory,
    collect_trajectories,
    fit_pca,
    inspect_sequence,
    path_independence,
)
from latentloop.analysis.report import FIGURES, plot_exit_steps, plot_path_independence, token_label, write_report
from latentloop.cli import main


@pytest.fixture(scope="module")
def model() -> RecurrentDepthLM:
    m = RecurrentDepthLM(get_preset("tiny"))
    m.init_weights(torch.Generator().manual_seed(0))
    return m.eval()


def synthetic(kind: str, steps: int = 32, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.normal(size=dim) * 3
    t = np.arange(steps)[:, None]
    u, v = np.eye(dim)[0], np.eye(dim)[1]
    if kind == "constant":
        return base + 1e-5 * rng.normal(size=(steps, dim))
    if kind == "circle":  # period 8: the tail covers two full turns
        return base + 2.0 * (np.cos(2 * np.pi * t / 8) * u + np.sin(2 * np.pi * t / 8) * v)
    return base + 0.3 * t * (u + v) / np.sqrt(2)  # a line


@pytest.mark.parametrize(("kind", "label"), [("constant", "fixed point"), ("circle", "orbit"), ("line", "slider")])
def test_heuristic_labels_synthetic_trajectories(kind, label):
    assert classify_trajectory(synthetic(kind)).label == label


def test_heuristic_thresholds_decide():
    line = synthetic("line")
    result = classify_trajectory(line)
    assert result.straightness == pytest.approx(1.0)
    # a threshold above the line's relative step turns the same trajectory into a fixed point
    assert classify_trajectory(line, fixed_max_step=result.step * 1.01).label == "fixed point"
    # a converging spiral ends as a fixed point even though it turned early on
    t = np.arange(64)[:, None]
    spiral = 5 + np.exp(-t / 4) * np.hstack([np.cos(t), np.sin(t), np.zeros((64, 2))])
    assert classify_trajectory(spiral).label == "fixed point"
    with pytest.raises(ValueError, match="iterations >= 4"):
        classify_trajectory(np.zeros((3, 4)))


def test_trajectories_match_separate_forwards(model):
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    traj = collect_trajectories(model, ids, num_steps=6, init_scale=0.0)
    assert traj.latents.shape == (6, 9, 64) and traj.top_ids.shape == (6, 9)
    for r in (1, 3, 6):
        out = model(ids, num_steps=r, init_scale=0.0)
        np.testing.assert_allclose(traj.latents[r - 1], out.latent[0].detach().numpy(), atol=1e-5)
        assert (traj.top_ids[r - 1] == out.logits[0].argmax(-1).numpy()).all()
    assert np.allclose(traj.distance_to_final()[:, -1], 0)
    assert ((traj.exit_steps >= 1) & (traj.exit_steps <= 6)).all()


def test_exit_step_is_first_small_kl(model):
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(2))
    steps, threshold = 8, 3e-3
    traj = collect_trajectories(model, ids, num_steps=steps, init_scale=0.0, exit_threshold=threshold)
    uniform = torch.full((5, 256), -np.log(256.0))  # p_0
    logp = [uniform] + [torch.log_softmax(model(ids, num_steps=r, init_scale=0.0).logits[0].detach(), -1)
                        for r in range(1, steps + 1)]
    for s in range(5):
        kl = [float((logp[t - 1][s].exp() * (logp[t - 1][s] - logp[t][s])).sum()) for t in range(1, steps + 1)]
        expected = next((t for t in range(1, steps + 1) if kl[t - 1] < threshold), steps)
        assert traj.exit_steps[s] == expected
    assert traj.exit_steps.min() < steps  # the case exercises an early exit


def test_pca_recovers_a_plane():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(200, 2)) @ rng.normal(size=(2, 10)) + 4.0
    pca = fit_pca(plane, 4)
    assert pca.explained_variance_ratio[:2].sum() == pytest.approx(1.0, abs=1e-9)
    restored = pca.transform(plane)[:, :2] @ pca.components[:2] + pca.mean
    np.testing.assert_allclose(restored, plane, atol=1e-8)


def test_path_independence_shrinks_and_agrees_with_forward(model):
    ids = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(3))
    result = path_independence(model, ids, num_steps=24, num_samples=4)
    spread = result.spread_by_step.mean(1)
    assert spread[-1] < 0.25 * spread[0]  # random starts converge toward one another
    # after 2 iterations the starts still disagree: the batched figures, recomputed by hand from one
    # ordinary forward pass per start (the same seeded starts)
    few = path_independence(model, ids, num_steps=2, num_samples=4)
    starts = model.initial_state(torch.zeros(4, 6, model.config.hidden_size), 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [model(ids[None], num_steps=2, initial_state=starts[m:m + 1]) for m in range(4)]
    states = torch.cat([o.state for o in outs]).double()
    centre = states.mean(0)
    np.testing.assert_allclose(few.spread_by_step[-1], ((states - centre).norm(dim=-1).mean(0)
                                                        / centre.norm(dim=-1)).numpy(), rtol=1e-4)
    probs = torch.cat([o.logits for o in outs]).double().softmax(-1)  # [M, S, V]
    kl = (probs * (probs.log() - probs.mean(0).log())).sum(-1).mean(0)
    np.testing.assert_allclose(few.distribution_spread, kl.numpy(), rtol=1e-3)
    top = probs.argmax(-1)  # [M, S]
    agreement = [max((top[:, s] == t).sum().item() for t in top[:, s]) / 4 for s in range(6)]
    np.testing.assert_allclose(few.top1_agreement, agreement)
    assert min(agreement) < 1 and (kl > 1e-3).all()  # a case where the starts do disagree
    assert (result.distribution_spread < 0.01 * kl.numpy()).all() and result.top1_agreement.min() == 1.0
    # identical starts (a tiny scale) leave no spread between them
    same = path_independence(model, ids, num_steps=4, num_samples=3, init_scale=1e-9)
    assert same.latent_spread.max() < 1e-5 and same.top1_agreement.min() == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        path_independence(model, ids, num_steps=4, num_samples=1)


def test_inspect_cli_writes_report_with_all_figures(tiny_model_dir, tmp_path):
    out = tmp_path / "report"
    assert main(["inspect", str(tiny_model_dir), "To be, or not to be", "--steps", "8", "--samples", "3",
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    embedded = dict(re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)' alt='(\w+)'>", html))
    embedded = {name: base64.b64decode(data) for data, name in embedded.items()}
    assert set(embedded) == set(FIGURES)
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert embedded[name] == png.read_bytes()  # the page carries its figures: it opens on its own
    assert "src='" + "convergence.png" not in html and re.findall(r"src='(?!data:)", html) == []
    summary = json.loads((out / "summary.json").read_text())
    data = np.load(out / "data.npz")
    assert data["latents"].shape[:2] == (8, summary["num_tokens"])
    assert sum(summary["class_counts"].values()) == summary["num_tokens"]
    assert {t["label"] for t in summary["tokens"]} <= {"fixed point", "orbit", "slider"}
    assert "<script" not in html and "http" not in html  # self-contained


def test_inspect_matches_python_api(tiny_model_dir):
    from latentloop.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    ids = tok.encode("once more")
    result = inspect_sequence(load_model(tiny_model_dir), ids, num_steps=5, num_samples=2)
    assert result.projected.shape == (5, len(ids), 6) and len(result.classes) == len(ids)


def test_inspect_cli_bad_input(tiny_model_dir, tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "hi", "--out", str(tmp_path / "o")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert main(["inspect", str(tiny_model_dir), "hi", "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--steps must be >= 4" in capsys.readouterr().err
    assert main(["inspect", str(tiny_model_dir), "", "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_token_labels_are_whole(tmp_path):
    """Labels were cut to 12 characters (`<|begin_text`): figures and the HTML show the whole token."""
    from latentloop.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    ids = tok.encode_prompt("73BACbb6=")
    result = inspect_sequence(load_model("default"), ids, num_steps=4, num_samples=2,
                              token_texts=[tok.decode([i]) for i in ids])
    ticks = [t.get_text() for t in plot_exit_steps(result).axes[0].get_xticklabels()]
    assert ticks[0] == "0:<|begin_text|>" and ticks[1] == "1:7"
    write_report(result, tmp_path)
    assert "<code>&lt;|begin_text|&gt;</code>" in (tmp_path / "report.html").read_text()
    assert token_label("<|begin_header|>") == "<|begin_header|>"
    assert token_label("a\nb") == "a\\nb" and token_label(" ") == "' '"  # whitespace made visible
    assert token_label("x" * 40, limit=32) == "x" * 15 + "\u2026" + "x" * 15  # only a freak token is shortened


def panel_pixels(fig, ax, rgb: tuple[int, int, int]) -> int:
    """How many pixels of colour `rgb` the rendered figure has inside the axes `ax`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    box = ax.get_window_extent()
    height = image.shape[0]
    crop = image[int(height - box.y1):int(height - box.y0), int(box.x0):int(box.x1)]
    return int((np.abs(crop - np.array(rgb)).sum(-1) < 30).sum())


def test_path_independence_kl_bars_are_visible_on_their_own_axis(model):
    """A relative spread of ~0.1 and a KL of ~1e-4 nats shared one axis, where the KL bars vanished:
    now each has its own panel, scaled to its own largest bar, and the KL bars cover real pixels."""
    ids = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(4))
    result = inspect_sequence(model, ids, num_steps=4, num_samples=2)
    kl = np.array([1e-4, 3e-4, 2e-4, 5e-5, 4e-4, 1e-4])
    paths = dataclasses.replace(result.paths, latent_spread=np.full(6, 0.1) + 0.01 * np.arange(6),
                                distribution_spread=kl)
    result = dataclasses.replace(result, paths=paths)
    fig = plot_path_independence(result)
    spread_ax, kl_ax = fig.axes[1], fig.axes[2]
    assert "KL" in kl_ax.get_ylabel() and "spread" in spread_ax.get_ylabel()
    low, high = kl_ax.get_ylim()
    assert low == 0 and kl.max() <= high <= 1.2 * kl.max()  # the tallest KL bar fills its axis
    orange = (255, 127, 14)  # tab:orange, the KL bars
    area = kl_ax.get_window_extent().width * kl_ax.get_window_extent().height
    assert panel_pixels(fig, kl_ax, orange) > 0.05 * area
    assert panel_pixels(fig, spread_ax, orange) == 0  # the other unit stays on the other axis

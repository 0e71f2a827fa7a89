"""Write an `Inspection` as DIR/report.html with its PNG figures beside it, plus DIR/data.npz.

Figures use matplotlib's object API (`Figure`, rendered by Agg), so no display is ever needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..fsutil import atomic_write_bytes, atomic_write_text
from .classify import FIXED_MAX_STEP, SLIDER_MIN_STRAIGHTNESS, TAIL_FRACTION
from .inspect import Inspection

FIGURES = ("convergence", "pca_2d", "pca_3d", "orbits", "correlation", "exit_steps", "path_independence")
MAX_ORBIT_TOKENS = 12
LABEL_COLOURS = {"fixed point": "tab:blue", "orbit": "tab:red", "slider": "tab:green"}


MAX_LABEL = 32  # characters of a token's text shown in a figure's tick label (HTML shows all of it)


def token_label(text: str, limit: int | None = None) -> str:
    """A printable form of a token's text (whitespace made visible), whole unless it is longer than
    `limit` characters, which only a pathological token is: then its ends are kept around an ellipsis."""
    shown = repr(text)[1:-1]  # newlines, tabs and other control characters as escapes
    if not text.strip() and shown == text:  # only spaces: quoted, so that they can be seen
        shown = repr(text)
    if limit is not None and len(shown) > limit:
        keep = (limit - 1) // 2
        shown = f"{shown[:keep]}\u2026{shown[-keep:]}"
    return shown


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _labels(result: Inspection) -> list[str]:
    return [f"{i}:{token_label(t, MAX_LABEL)}" for i, t in enumerate(result.trajectories.tokens)]


def plot_convergence(result: Inspection) -> Figure:
    gap = result.trajectories.distance_to_final()[:, :-1]  # the last column is zero by definition
    seq, steps = gap.shape
    fig = Figure(figsize=(min(14, 3 + 0.25 * steps), min(30, 1.5 + 0.28 * seq)))
    ax = fig.add_subplot()
    floor = max(float(gap[gap > 0].min()) if (gap > 0).any() else 1e-6, 1e-6)
    norm = LogNorm(vmin=floor, vmax=max(gap.max(), floor * 10))
    image = ax.imshow(gap.clip(floor), aspect="auto", cmap="viridis", norm=norm,
                      extent=(0.5, steps + 0.5, seq - 0.5, -0.5), interpolation="nearest")
    ax.set_yticks(range(seq), _labels(result), fontsize=7)
    ax.set_xlabel("iteration t")
    ax.set_title("convergence: ||z_t - z_final|| / ||z_final|| (log colour)")
    fig.colorbar(image, ax=ax)
    return fig


def plot_pca_2d(result: Inspection) -> Figure:
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    p = result.projected
    for s, cls in enumerate(result.classes):
        ax.plot(p[:, s, 0], p[:, s, 1], "-", lw=0.8, alpha=0.7, color=LABEL_COLOURS[cls.label])
        ax.plot(p[-1, s, 0], p[-1, s, 1], "o", ms=3, color=LABEL_COLOURS[cls.label])
    for label, colour in LABEL_COLOURS.items():
        ax.plot([], [], "-", color=colour, label=label)
    ratio = result.pca.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.set_title("all token trajectories in PC1-PC2 (dot: final iteration)")
    ax.legend(fontsize=8)
    return fig


def plot_pca_3d(result: Inspection) -> Figure:
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot(projection="3d")
    p = result.projected
    k = p.shape[-1]
    for s, cls in enumerate(result.classes):
        z = p[:, s, 2] if k > 2 else np.zeros(p.shape[0])
        ax.plot(p[:, s, 0], p[:, s, 1], z, lw=0.8, alpha=0.7, color=LABEL_COLOURS[cls.label])
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_zlabel("PC3")
    ax.set_title("token trajectories in PC1-PC2-PC3")
    return fig


def plot_orbits(result: Inspection) -> Figure:
    """Per-token trajectories in PC pairs (1-2, 3-4, 5-6); moving tokens (orbits, sliders) first."""
    order = sorted(range(len(result.classes)), key=lambda s: (result.classes[s].label == "fixed point", s))
    chosen = order[:MAX_ORBIT_TOKENS]
    pairs = [(a, a + 1) for a in range(0, result.projected.shape[-1] - 1, 2)]
    fig = Figure(figsize=(3 * len(pairs), 2.6 * len(chosen)), layout="constrained")
    labels = _labels(result)
    for row, s in enumerate(chosen):
        for col, (a, b) in enumerate(pairs):
            ax = fig.add_subplot(len(chosen), len(pairs), row * len(pairs) + col + 1)
            points = result.projected[:, s]
            ax.plot(points[:, a], points[:, b], "-", lw=0.8, color="0.6")
            ax.scatter(points[:, a], points[:, b], c=np.arange(len(points)), cmap="plasma", s=8)
            ax.set_xlabel(f"PC{a + 1}", fontsize=7)
            ax.set_ylabel(f"PC{b + 1}", fontsize=7)
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_title(f"{labels[s]} ({result.classes[s].label})", fontsize=8, loc="left")
    fig.suptitle("per-token orbits in PC pairs (colour: iteration, dark = early)")
    return fig


def plot_correlation(result: Inspection) -> Figure:
    corr = result.trajectories.token_correlation
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(corr) + 1), corr, "o-", ms=3)
    ax.set_xlabel("iteration t")
    ax.set_ylabel("token correlation")
    ax.set_title("token correlation of the state (-> 1 means collapse)")
    ax.grid(alpha=0.3)
    return fig


def plot_exit_steps(result: Inspection) -> Figure:
    traj = result.trajectories
    seq = len(traj.exit_steps)
    fig = Figure(figsize=(min(16, 3 + 0.3 * seq), 3.8))
    ax = fig.add_subplot()
    ax.bar(range(seq), traj.exit_steps, color=[LABEL_COLOURS[c.label] for c in result.classes])
    ax.set_xticks(range(seq), _labels(result), rotation=90, fontsize=7)
    ax.set_ylabel("iterations")
    ax.set_title(f"KL-exit step per token (KL(p_t-1 || p_t) < {traj.exit_threshold:g}; "
                 f"capped at {traj.num_steps}); colour: trajectory class")
    return fig


def plot_path_independence(result: Inspection) -> Figure:
    """Three panels, each on its own axis: the state's spread per iteration, then per token at the last
    iteration the latent's relative spread and the next-token KL in nats (two units: two axes)."""
    paths = result.paths
    seq = len(paths.latent_spread)
    fig = Figure(figsize=(max(13, 0.6 * seq + 5), 4), layout="constrained")
    ax1 = fig.add_subplot(1, 3, 1)
    steps = np.arange(1, paths.spread_by_step.shape[0] + 1)
    ax1.semilogy(steps, paths.spread_by_step.mean(1).clip(1e-12), "o-", ms=3)
    ax1.set_xlabel("iteration t")
    ax1.set_ylabel("relative spread of the state")
    ax1.set_title(f"spread across {paths.num_samples} random starts (mean over tokens)", fontsize=9)
    ax1.grid(alpha=0.3)
    x = np.arange(seq)
    for index, (values, colour, ylabel, title) in enumerate((
        (paths.latent_spread, "tab:blue", "relative spread", "final latent spread per token"),
        (paths.distribution_spread, "tab:orange", "KL (nats)", "next-token KL to the mean per token"),
    )):
        ax = fig.add_subplot(1, 3, 2 + index)
        ax.bar(x, values, width=0.7, color=colour)
        top = float(np.max(values)) if len(values) else 0.0
        ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)  # each panel scaled to its own largest bar
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_xticks(x, _labels(result), rotation=90, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, last iteration", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return fig


PLOTTERS = dict(convergence=plot_convergence, pca_2d=plot_pca_2d, pca_3d=plot_pca_3d, orbits=plot_orbits,
                correlation=plot_correlation, exit_steps=plot_exit_steps, path_independence=plot_path_independence)


def summary(result: Inspection) -> dict:
    """Per-token numbers and the run's settings, as JSON-ready values."""
    traj, paths = result.trajectories, result.paths
    counts = {label: sum(c.label == label for c in result.classes) for label in LABEL_COLOURS}
    tokens = [
        dict(index=s, text=traj.tokens[s], id=int(traj.token_ids[s]), **result.classes[s].as_dict(),
             exit_step=int(traj.exit_steps[s]), latent_spread=float(paths.latent_spread[s]),
             distribution_spread=float(paths.distribution_spread[s]),
             top1_agreement=float(paths.top1_agreement[s]))
        for s in range(len(traj.tokens))
    ]
    return dict(num_steps=traj.num_steps, num_tokens=len(tokens), class_counts=counts,
                mean_exit_step=float(traj.exit_steps.mean()), exit_threshold=traj.exit_threshold,
                explained_variance_ratio=[float(v) for v in result.pca.explained_variance_ratio],
                final_token_correlation=float(traj.token_correlation[-1]),
                thresholds=dict(fixed_max_step=FIXED_MAX_STEP, slider_min_straightness=SLIDER_MIN_STRAIGHTNESS,
                                tail_fraction=TAIL_FRACTION),
                tokens=tokens)


def write_report(result: Inspection, out_dir: str | Path, title: str = "latentloop inspect",
                 text: str | None = None) -> Path:
    """Write report.html, one PNG per figure, summary.json and data.npz (all arrays) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {name: _png(PLOTTERS[name](result)) for name in FIGURES}
    for name, png in images.items():
        atomic_write_bytes(out / f"{name}.png", png)
    info = summary(result)
    atomic_write_text(out / "summary.json", json.dumps(info, indent=2))
    buffer = io.BytesIO()
    traj, paths = result.trajectories, result.paths
    np.savez_compressed(buffer, token_ids=traj.token_ids, latents=traj.latents, top_ids=traj.top_ids,
                        token_correlation=traj.token_correlation, exit_steps=traj.exit_steps,
                        projected=result.projected, pca_components=result.pca.components, pca_mean=result.pca.mean,
                        spread_by_step=paths.spread_by_step, latent_spread=paths.latent_spread,
                        distribution_spread=paths.distribution_spread, top1_agreement=paths.top1_agreement)
    atomic_write_bytes(out / "data.npz", buffer.getvalue())
    path = out / "report.html"
    atomic_write_text(path, _html(info, title, text, images))
    return path


CAPTIONS = {
    "convergence": "Distance of each token's latent from its final value after every iteration.",
    "pca_2d": "PCA over all latents of all tokens and iterations; colour is the trajectory class.",
    "pca_3d": "The same trajectories in the first three principal components.",
    "orbits": "Per-token trajectories in PC pairs 1-2, 3-4, 5-6 (moving tokens first).",
    "correlation": "Token correlation of the recurrent state per iteration (collapse diagnostic).",
    "exit_steps": "The iteration at which the KL exit criterion would stop each token.",
    "path_independence": "Spread of states and predictions across random initial states: the state per "
                         "iteration, then per token the final latent's relative spread and the KL (nats) of "
                         "each start's next-token distribution to their mixture, each on its own axis.",
}


def _html(info: dict, title: str, text: str | None, images: dict[str, bytes]) -> str:
    """The report, self-contained: every figure embedded as a data: URI (the PNGs beside it are copies)."""
    e = html.escape
    t = info["thresholds"]
    rows = "".join(
        f"<tr><td>{tok['index']}</td><td><code>{e(token_label(tok['text']))}</code></td>"
        f"<td class='{tok['label'].replace(' ', '-')}'>{tok['label']}</td><td>{tok['step']:.4f}</td>"
        f"<td>{tok['straightness']:.3f}</td><td>{tok['exit_step']}</td><td>{tok['latent_spread']:.2e}</td>"
        f"<td>{tok['distribution_spread']:.2e}</td><td>{tok['top1_agreement']:.2f}</td></tr>"
        for tok in info["tokens"]
    )
    figures = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode(images[name]).decode('ascii')}' "
        f"alt='{name}'><figcaption>{e(CAPTIONS[name])} ({name}.png)</figcaption></figure>"
        for name in FIGURES
    )
    counts = ", ".join(f"{n} {label}" for label, n in info["class_counts"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; font-size: 13px; }}
.fixed-point {{ color: #1f77b4; }} .orbit {{ color: #d62728; }} .slider {{ color: #2ca02c; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>{'<b>text:</b> <code>' + e(text) + '</code><br>' if text else ''}
{info['num_tokens']} tokens, {info['num_steps']} iterations. Classes: {counts}.
Mean KL-exit step {info['mean_exit_step']:.2f} (threshold {info['exit_threshold']:g}).
Final token correlation {info['final_token_correlation']:.3f}.</p>
<h2>Trajectory classes</h2>
<p>Heuristic on the last {t['tail_fraction']:.0%} of iterations: <b>fixed point</b> when the mean step
||z<sub>t</sub> - z<sub>t-1</sub>|| is below {t['fixed_max_step']} of the latent's norm; otherwise
<b>slider</b> when the straightness (net displacement / path length) is at least
{t['slider_min_straightness']}; otherwise <b>orbit</b> (moving without going anywhere).</p>
<table><tr><th>#</th><th>token</th><th>class</th><th>step</th><th>straightness</th><th>KL exit</th>
<th>latent spread</th><th>KL spread</th><th>top-1 agreement</th></tr>{rows}</table>
<h2>Figures</h2>{figures}
<p>Arrays: <code>data.npz</code>; numbers: <code>summary.json</code>; the figures are embedded in this page
and also written beside it as PNG files.</p>
</body></html>
"""

"""Evaluation results as JSON and PNG plots of each metric against depth."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..fsutil import atomic_write_bytes, atomic_write_text


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_perplexity(results: dict[str, Any], path: Path) -> Path:
    by_depth = results["depths"]
    depths = sorted(int(d) for d in by_depth)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(depths, [by_depth[str(d)]["loss"] for d in depths], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("iterations (depth r)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss vs depth on {Path(results['source']).name} ({results['tokens']:,} tokens)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy(tasks: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy of every task vs depth; adaptive-exit runs sit at their mean iterations per token."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for name, task in tasks.items():
        depths = sorted(int(d) for d in task["depths"])
        ticks.update(depths)
        line = ax.plot(depths, [task["depths"][str(d)]["accuracy"] for d in depths], "o-", label=name)[0]
        if task["kind"] == "choice":
            ax.plot(depths, [task["depths"][str(d)]["accuracy_norm"] for d in depths], "s--",
                    color=line.get_color(), alpha=0.6, label=f"{name} (length-normalized)")
        for run in task.get("adaptive", {}).values():
            ax.plot(run["mean_iterations"], run["accuracy"], "*", ms=11, color=line.get_color())
    if any(task.get("adaptive") for task in tasks.values()):
        ax.plot([], [], "*", ms=11, color="0.3", label="adaptive exit (x = mean iterations/token)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(d) for d in sorted(ticks)])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("iterations (depth r)")
    ax.set_ylabel("accuracy")
    ax.set_title("task accuracy vs depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_results(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """results.json plus perplexity_vs_depth.png / accuracy_vs_depth.png for what was evaluated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    atomic_write_text(written[0], json.dumps(results, indent=2))
    if results.get("perplexity"):
        written.append(plot_perplexity(results["perplexity"], out / "perplexity_vs_depth.png"))
    if results.get("tasks"):
        written.append(plot_accuracy(results["tasks"], out / "accuracy_vs_depth.png"))
    return written

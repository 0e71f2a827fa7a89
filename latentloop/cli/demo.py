"""`latentloop demo`: the bundled reasoning model getting better the longer it thinks."""

from __future__ import annotations

import argparse
import json
from io import BytesIO
from pathlib import Path

DESCRIPTION = """Evaluate a model trained on a latentloop reasoning task (default: the bundled one) at
1, 2, 4, ... 64 iterations on held-out problems from the training distribution and on harder
ones; compare with the same-size non-recurrent baseline; decode with KL early exit (every token's
depth, the prompt's included, decided by the criterion) and with a 4-iteration KV budget (every
prompt token decoded through the budgeted cache) against fixed depth 32, with two controls: an exit
after one iteration, which must lose what depth gives, and a 1-iteration budget; show one problem
whose answer changes as the model iterates; write a PNG plot of accuracy against iterations.

examples:
  latentloop demo
  latentloop demo --json --limit 50
  latentloop demo --out plots/ --limit 300
  latentloop demo --model runs/pointers/model --baseline runs/pointers-baseline/model
"""

DEPTHS = [1, 2, 4, 8, 16, 32, 64]
SPLITS = {"validation": "in-distribution", "test": "harder"}
CONTROL_EXIT = "kl:1e9"  # a threshold every iteration meets: every token exits after min_steps (1)


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("demo", help="accuracy vs iterations of the bundled reasoning model", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("--model", default="default", help="model directory (with task.json) or 'default'")
    p.add_argument("--baseline", default=None,
                   help="non-recurrent baseline directory; default: the bundled one for --model default, else none")
    p.add_argument("--limit", type=int, default=100, help="held-out problems per split")
    p.add_argument("--steps", type=int, default=32, help="fixed depth that KL exit and kv-budget compare against")
    p.add_argument("--exit", default="kl:5e-4", help="exit criterion for adaptive decoding")
    p.add_argument("--kv-budget", type=int, default=4, help="core iterations kept per layer in the budgeted cache")
    p.add_argument("--out", default="latentloop-demo", help="directory for the plot and figures.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out problems")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from ..checkpoint import load_model, resolve_model_dir
    from ..tasks import task_from_dir
    from ..tasks.evaluate import depth_correct, generate_answers, generation_accuracy

    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model_dir = resolve_model_dir(args.model)
    task = task_from_dir(model_dir)
    model = load_model(model_dir).eval()
    baseline_name = args.baseline or ("baseline" if args.model == "default" else None)
    problems = {split: task.problems(split, args.limit, seed=args.seed) for split in SPLITS}
    figures: dict = {"model": str(args.model), "task": task.name, "problems_per_split": args.limit,
                     "accuracy": {}, "baseline": None}
    correct = {}
    with tqdm(total=len(SPLITS) + 6, desc="demo", disable=args.json, leave=False) as bar:
        for split, label in SPLITS.items():
            correct[split] = depth_correct(model, task, problems[split], DEPTHS)
            figures["accuracy"][label] = {d: float(c.float().mean()) for d, c in correct[split].items()}
            bar.update()
        if baseline_name:
            baseline = load_model(resolve_model_dir(baseline_name)).eval()
            figures["baseline"] = {label: float(depth_correct(baseline, task, problems[split], [1])[1].float().mean())
                                   for split, label in SPLITS.items()}
        bar.update()
        val = problems["validation"]
        fixed = generation_accuracy(model, task, val, num_steps=args.steps)
        bar.update()
        # prompt_exit: the criterion decides the prompt's tokens too, where this task's depth is spent
        adaptive = generation_accuracy(model, task, val, num_steps=args.steps, exit=args.exit, prompt_exit=True)
        bar.update()
        # prefill_chunk=1: every prompt token reads the ring as a decoded token would, not the exact prompt pass
        budget = generation_accuracy(model, task, val, num_steps=args.steps, kv_budget=args.kv_budget,
                                     prefill_chunk=1)
        bar.update()
        no_thinking = generation_accuracy(model, task, val, num_steps=args.steps, exit=CONTROL_EXIT,
                                          prompt_exit=True)
        bar.update()
        one_slot = generation_accuracy(model, task, val, num_steps=args.steps, kv_budget=1, prefill_chunk=1)
        bar.update()
    figures["generation"] = {
        f"fixed_{args.steps}": fixed,
        "exit": {"criterion": args.exit, **adaptive},
        "kv_budget": {"budget": args.kv_budget, **budget},
        "controls": {"exit": {"criterion": CONTROL_EXIT, **no_thinking}, "kv_budget": {"budget": 1, **one_slot}},
    }
    # The problem that stays wrong for the most depths before the model, thinking longer, gets it right.
    hits = correct["validation"]
    solved = [i for i in range(len(val)) if hits[args.steps][i]] or [0]
    pick = max(solved, key=lambda i: sum(not hits[d][i] for d in DEPTHS if d < args.steps))
    answers = {d: generate_answers(model, task, [val[pick]], num_steps=d)[0][0] for d in DEPTHS}
    figures["example"] = {"prompt": val[pick].prompt, "answer": val[pick].answer, "by_iterations": answers}
    return figures


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (label, acc), color in zip(figures["accuracy"].items(), ("tab:blue", "tab:orange"), strict=False):
        depths = [int(d) for d in acc]
        ax.plot(depths, [100 * acc[d] for d in acc], marker="o", color=color, label=f"recurrent, {label}")
        if figures["baseline"]:
            ax.axhline(100 * figures["baseline"][label], color=color, linestyle="--",
                       label=f"non-recurrent baseline, {label}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(DEPTHS, [str(d) for d in DEPTHS])
    ax.set_xlabel("iterations of the recurrent core")
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{figures['task']}: accuracy vs test-time iterations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def report(figures: dict) -> str:
    lines = [f"task {figures['task']}: {figures['problems_per_split']} held-out problems per split, "
             "exact-match accuracy (%)", ""]
    labels = list(figures["accuracy"])
    lines.append(f"{'iterations':>10}" + "".join(f"{label:>18}" for label in labels))
    for d in DEPTHS:
        lines.append(f"{d:>10}" + "".join(f"{100 * figures['accuracy'][label][d]:>18.1f}" for label in labels))
    if figures["baseline"]:
        lines.append(f"{'baseline':>10}" + "".join(f"{100 * figures['baseline'][label]:>18.1f}" for label in labels)
                     + "   (same size, trained at depth 1)")
    gen = figures["generation"]
    fixed_key = next(k for k in gen if k.startswith("fixed_"))
    lines += ["", "cached greedy decoding, in-distribution:"]
    rows = [(fixed_key.replace("_", " "), gen[fixed_key]), ("exit " + gen["exit"]["criterion"], gen["exit"]),
            (f"kv budget {gen['kv_budget']['budget']}", gen["kv_budget"])]
    controls = gen["controls"]
    rows += [(f"control: exit {controls['exit']['criterion']}", controls["exit"]),
             (f"control: kv budget {controls['kv_budget']['budget']}", controls["kv_budget"])]
    for name, entry in rows:
        lines.append(f"  {name:<28}{100 * entry['accuracy']:6.1f} %   "
                     f"{entry['scored_mean_iterations']:5.1f} iterations per answer token")
    ex = figures["example"]
    lines += ["", f"thinking longer: {ex['prompt']}  (answer {ex['answer']})"]
    lines += [f"  {d:>3} iterations -> {a!r}" for d, a in ex["by_iterations"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..fsutil import atomic_write_text

    figures = measure(args)
    out = Path(args.out)
    plot_path = out / "accuracy_vs_iterations.png"
    plot(figures, plot_path)
    figures["plot"] = str(plot_path)
    atomic_write_text(out / "figures.json", json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures))
    else:
        print(report(figures))
        print(f"\nplot written to {plot_path}")
    return 0

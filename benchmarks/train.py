"""Training throughput and memory: tokens/s and model-FLOPs utilization against the matmul throughput
measured in the same run, for the small presets at depth 8 and 32 (k = 8), and peak memory at
depth 8 and 64 (flat: only k iterations keep activations). Prints one JSON object.

    python benchmarks/train.py                    # CPU, the 'small' and 'medium' presets
    python benchmarks/train.py --device cuda --batch-size 16 --block-size 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from latentloop.train.data import FORMAT, shard_dtype
from latentloop.train.metrics import measure_matmul_flops, sync
from latentloop.train.recipe import load_recipe
from latentloop.train.trainer import Trainer


def random_shards(directory: Path, vocab_size: int, block_size: int, rows: int = 256) -> Path:
    """Uniform random tokens in the `data prepare` layout: throughput does not depend on the text."""
    dtype = shard_dtype(vocab_size)
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "val"):
        name = f"random.{split}.00000.bin"
        rng.integers(0, vocab_size, size=(rows, block_size + 1)).astype(dtype).tofile(directory / name)
        files[split] = [[name, rows]]
    meta = {"format": FORMAT, "block_size": block_size, "val_every": 2, "dtype": dtype, "vocab_size": vocab_size,
            "eos_id": 0, "sources": {"random": {"path": "random", "weight": 1.0, "files": files}}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def make_trainer(args: argparse.Namespace, preset: str, depth: dict, peak: float, work: Path) -> Trainer:
    from latentloop import get_preset

    vocab = get_preset(preset).vocab_size
    data = random_shards(Path(tempfile.mkdtemp(dir=work)), vocab, args.block_size)
    recipe = load_recipe(None, base={
        "device": args.device,
        "model": {"preset": preset, "mean_backprop_depth": 8, **depth.get("model", {})},
        "objective": {"backprop_depth": 8, **depth.get("objective", {})},
        "data": {"path": str(data), "batch_size": args.batch_size, "val_batches": 1},
        "train": {"steps": 1000, "precision": args.precision, "peak_flops": peak, "val_depths": [1]},
    })
    return Trainer(recipe, out=Path(tempfile.mkdtemp(dir=work)) / "run", progress=False)


def throughput(args: argparse.Namespace, preset: str, depth: int, peak: float, work: Path) -> dict:
    trainer = make_trainer(args, preset, {"objective": {"fixed_depth": depth}}, peak, work)
    for step in range(args.warmup):
        trainer.train_step(step)
    sync(trainer.device)
    start, tokens, flops = time.perf_counter(), 0, 0.0
    for step in range(args.warmup, args.warmup + args.steps):
        stats = trainer.train_step(step)
        tokens += stats["tokens"]
        flops += stats["flops"]
    sync(trainer.device)
    seconds = time.perf_counter() - start
    return {"preset": preset, "depth": depth, "backprop_depth": 8, "tokens_per_s": round(tokens / seconds, 1),
            "model_tflops_per_s": round(flops / seconds / 1e12, 4), "mfu": round(flops / seconds / peak, 4),
            "seconds_per_step": round(seconds / args.steps, 3)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class RssPeak(threading.Thread):
    """Samples the resident set every millisecond: the CPU high-water mark of the training steps alone."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = rss_bytes(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)


def memory_probe(args: argparse.Namespace) -> dict:
    """Run in a fresh process: memory of a few steps at one depth (k = 8), above the memory held before
    the first step (weights, data, optimizer created lazily are included). The depth is fixed rather
    than sampled: at a sampled mean of 8 many steps draw r < k and keep fewer than k iterations, which
    would flatter the shallow run."""
    work = Path(tempfile.mkdtemp())
    trainer = make_trainer(args, args.probe_preset, {"objective": {"fixed_depth": args.probe_depth}}, 1e12, work)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
        before = torch.cuda.memory_allocated(trainer.device)
    else:
        before, sampler = rss_bytes(), RssPeak()
        sampler.start()
    depths = [trainer.train_step(step)["depth"] for step in range(args.steps)]
    if cuda:
        peak = torch.cuda.max_memory_allocated(trainer.device)
    else:
        sampler.running = False
        sampler.join()
        peak = sampler.peak
    return {"depth": args.probe_depth, "depths_run": depths, "peak_bytes": peak,
            "training_bytes": peak - before}


def memory_vs_depth(args: argparse.Namespace, preset: str) -> dict:
    rows = []
    for depth in (8, 64):
        command = [sys.executable, __file__, "--probe-preset", preset, "--probe-depth", str(depth),
                   "--device", args.device, "--batch-size", str(args.batch_size), "--block-size",
                   str(args.block_size), "--steps", "2", "--precision", args.precision, "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    kind = "cuda max_memory_allocated" if args.device.startswith("cuda") else "process max RSS"
    return {"preset": preset, "measure": kind, "runs": rows,
            "peak_ratio_64_over_8": round(rows[1]["peak_bytes"] / rows[0]["peak_bytes"], 4),
            "training_ratio_64_over_8": round(rows[1]["training_bytes"] / rows[0]["training_bytes"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probe-preset", help=argparse.SUPPRESS)
    parser.add_argument("--probe-depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe_preset:
        print(json.dumps(memory_probe(args)))
        return
    device = torch.device(args.device)
    matmul_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = max(measure_matmul_flops(device, matmul_dtype, size=n, seconds=1.0) for n in (512, 1024, 2048))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [throughput(args, preset, depth, peak, Path(tmp)) for preset in args.presets for depth in (8, 32)]
    report = {
        "device": str(device), "threads": torch.get_num_threads(), "precision": args.precision,
        "tokens_per_step": args.batch_size * args.block_size,
        "measured_matmul_tflops": round(peak / 1e12, 4),
        "throughput": runs,
        "memory_vs_depth": memory_vs_depth(args, args.presets[-1]),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

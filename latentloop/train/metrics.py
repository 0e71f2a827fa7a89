"""Run metrics: a JSONL log (plus TensorBoard when installed), training FLOPs, and measured matmul peak."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..accounting import flops_per_token
from ..config import ModelConfig
from ..fsutil import atomic_write_text, read_text


def train_flops_per_token(config: ModelConfig, num_steps: tuple[int, int], seq_len: int) -> float:
    """Model FLOPs of one training token: the forward at r = n + k iterations, plus the backward
    (2x forward) through the part that carries gradients (prelude, k iterations, coda, head)."""
    no_grad, grad = num_steps
    forward = flops_per_token(config, no_grad + grad, seq_len)
    return forward + 2 * flops_per_token(config, grad, seq_len)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                         seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a square matmul on this device and dtype: the denominator of MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
        if n % 8 == 0:
            sync(device)
    sync(device)
    return 2 * size**3 * n / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MetricsLog:
    """Append-only JSONL of `{"step": ..., "kind": "train"|"val"|"warning", ...}`; rank 0 writes."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines a killed run wrote after its last checkpoint
            kept = self._kept_lines(resume_step) if resume_step else []
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step or None)
        except ImportError:
            pass

    def _kept_lines(self, resume_step: int) -> list[str]:
        """The records up to `resume_step`; a torn last line (the run was killed mid-write) is dropped."""
        raw = read_text(self.path, "run metrics")
        lines = raw.split("\n")
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                    print(f"note: dropping the torn last line of {self.path} (line {number}: the run was killed "
                          "while writing it)", file=sys.stderr)
                    continue
                raise ValueError(f"{self.path}:{number} is not valid JSON ({err.msg}); fix or delete that line "
                                 "to resume") from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.path}:{number} is not a metrics record (a JSON object)")
            if record.get("step", 0) <= resume_step:
                kept.append(line)
        return kept

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def warn(self, step: int, message: str) -> None:
        if not self.enabled:
            return
        banner = "!" * 78
        print(f"\n{banner}\nWARNING (step {step}): {message}\n{banner}", file=sys.stderr, flush=True)
        self.write("warning", step, {"message": message})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

"""Optimizers: huginn's Adam variant (spec section 3) and plain AdamW, with weight-decay groups.

HuginnAdam, per tensor, with gradient g:
  first step:  m = g, v = g^2                      (moments initialized from the first gradient)
  later steps: m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
  clip  = max(1, RMS(g / sqrt(v)))                  (update clipping; 0/0 counts as 0)
  p    *= 1 - weight_decay * lr / peak_lr            (decoupled, scaled by the schedule, not by lr)
  p    -= lr * atan2(m, sqrt(v)) / clip              (atan2: bounded, scale-invariant, no epsilon)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class HuginnAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, update_clip: bool = True) -> None:
        defaults = dict(lr=lr, peak_lr=lr, betas=betas, weight_decay=weight_decay, update_clip=update_clip)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.to(torch.promote_types(p.grad.dtype, torch.float32))  # fp32 moments at least
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = g.clone()
                    state["exp_avg_sq"] = g * g
                else:
                    state["exp_avg"].lerp_(g, 1 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                root_v = v.sqrt()
                clip = 1.0
                if group["update_clip"]:
                    ratio = torch.where(root_v > 0, g / root_v, torch.zeros_like(g))
                    clip = ratio.pow(2).mean().sqrt().clamp_min(1.0)
                if group["weight_decay"]:
                    p.mul_(1 - group["weight_decay"] * lr / group["peak_lr"])
                update = torch.atan2(m, root_v) / clip
                p.add_(update.to(p.dtype), alpha=-lr)
        return loss


def no_decay(name: str, param: Tensor) -> bool:
    """Norm weights, biases and qk_bias are not decayed (their scale is meaningful, not capacity)."""
    return param.ndim < 2 or "norm" in name or "ln_f" in name or name.endswith(("bias", "qk_bias"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, name: str, lr: float, betas: tuple[float, float], weight_decay: float,
                    eps: float = 1e-8, update_clip: bool = True) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "huginn_adam":
        return HuginnAdam(groups, lr=lr, betas=betas, update_clip=update_clip)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; use 'huginn_adam' or 'adamw'")


def set_lr(optimizer: torch.optim.Optimizer, peak_lr: float, factor: float) -> float:
    lr = peak_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

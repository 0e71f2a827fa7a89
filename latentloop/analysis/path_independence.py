"""Path independence: do M random initial states converge to the same latent and prediction?

The M starts run as one batch of M copies of the sequence (the prelude output `e` is computed
once and shared), the recurrence is iterated once, and the spread across starts is measured after
every iteration; the coda reads out only the final states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model import RecurrentDepthLM


@dataclass
class PathIndependence:
    num_samples: int
    spread_by_step: np.ndarray  # [N, S] mean ||x_m - mean_m x|| / ||mean_m x|| of the state, per iteration
    latent_spread: np.ndarray  # [S] the same for the final latent (ln_f of the state)
    distribution_spread: np.ndarray  # [S] mean KL(p_m || mean_m p_m) of the next-token distributions, nats
    top1_agreement: np.ndarray  # [S] fraction of starts whose argmax equals the most common argmax


def _relative_spread(x: torch.Tensor) -> torch.Tensor:
    """x [M, S, h] -> [S]: mean distance to the centroid, relative to the centroid's norm."""
    centre = x.mean(0)
    return (x - centre).norm(dim=-1).mean(0) / centre.norm(dim=-1).clamp_min(1e-12)


@torch.no_grad()
def path_independence(
    model: RecurrentDepthLM,
    input_ids: torch.Tensor | list[int],
    num_steps: int,
    num_samples: int = 8,
    init_scale: float = 1.0,
    seed: int = 0,
) -> PathIndependence:
    if num_samples < 2:
        raise ValueError(f"path independence needs at least 2 random starts, got {num_samples}")
    if init_scale <= 0:
        raise ValueError("path independence needs random starts: init_scale must be > 0")
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(model.device)
    ctx = model.context(ids.shape[1])
    e = model.embed(ids, ctx).expand(num_samples, -1, -1)
    x = model.initial_state(e, init_scale, torch.Generator(model.device).manual_seed(seed))
    spreads = []
    for step in range(num_steps):
        x = model.core_step(x, e, ctx, step)
        spreads.append(_relative_spread(x.float()))
    latent, logits = model.decode(x, ctx)
    logp = torch.log_softmax(logits, dim=-1)  # [M, S, V]
    mixture = torch.logsumexp(logp, dim=0) - np.log(num_samples)
    kl = (logp.exp() * (logp - mixture)).sum(-1).mean(0)
    top = logits.argmax(-1)  # [M, S]
    mode = top.mode(dim=0).values
    return PathIndependence(
        num_samples=num_samples,
        spread_by_step=torch.stack(spreads).cpu().numpy(),
        latent_spread=_relative_spread(latent.float()).cpu().numpy(),
        distribution_spread=kl.clamp_min(0).cpu().numpy(),
        top1_agreement=(top == mode).float().mean(0).cpu().numpy(),
    )

"""Per-token latent trajectories: the latent after every iteration, collected in one recurrence.

`model.forward_depths(ids, 1..N)` runs the prelude once and reads the coda out after each
iteration, so a 32-iteration trajectory costs one forward of depth 32, not 32 forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..diagnostics import token_correlation
from ..exits import KL
from ..model import RecurrentDepthLM


@dataclass
class Trajectories:
    """Arrays for notebooks; iteration t (1-based) lives at index t - 1."""

    token_ids: np.ndarray  # [S]
    tokens: list[str]  # decoded text of each token (for labels)
    latents: np.ndarray  # [N, S, h] float32: ln_f(state) after each iteration, what the coda reads
    top_ids: np.ndarray  # [N, S] the next-token argmax at each iteration
    token_correlation: np.ndarray  # [N] collapse diagnostic of the state (spec section 3)
    exit_steps: np.ndarray  # [S] iteration at which the KL exit would stop each token (N if never)
    exit_threshold: float

    @property
    def num_steps(self) -> int:
        return self.latents.shape[0]

    def distance_to_final(self) -> np.ndarray:
        """[S, N] relative distance ||z_t - z_N|| / ||z_N||: the convergence heatmap."""
        final = self.latents[-1]
        gap = np.linalg.norm(self.latents - final, axis=-1) / np.linalg.norm(final, axis=-1).clip(1e-12)
        return gap.T


@torch.no_grad()
def collect_trajectories(
    model: RecurrentDepthLM,
    input_ids: torch.Tensor | list[int],
    num_steps: int,
    init_scale: float = 1.0,
    seed: int = 0,
    exit_threshold: float = 5e-4,
    token_texts: list[str] | None = None,
) -> Trajectories:
    """Run one sequence for `num_steps` iterations and keep what every iteration produced."""
    if num_steps < 2:
        raise ValueError(f"a trajectory needs num_steps >= 2, got {num_steps}")
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(model.device)
    if ids.shape[1] == 0:
        raise ValueError("the text is empty: a trajectory needs at least one token")
    generator = torch.Generator(model.device).manual_seed(seed)
    outputs = model.forward_depths(ids, range(1, num_steps + 1), init_scale=init_scale, generator=generator)

    seq = ids.shape[1]
    vocab = model.config.vocab_size  # the decode loop's own exit rule, one row per token
    comparison = KL.start(torch.zeros(seq, 1, 1, device=model.device), vocab)
    threshold = torch.full((seq,), exit_threshold, device=model.device)
    exit_steps = torch.full((seq,), num_steps, dtype=torch.long)
    latents, tops, correlations = [], [], []
    for step in range(1, num_steps + 1):
        out = outputs[step]
        converged, comparison = KL.compare(comparison, out.state[0, :, None], out.logits[0, :, None], threshold, vocab)
        converged = converged.cpu()
        exit_steps = torch.where(converged & (exit_steps == num_steps), step, exit_steps)
        latents.append(out.latent[0].float().cpu())
        tops.append(out.logits[0].argmax(-1).cpu())
        correlations.append(token_correlation(out.state))
    return Trajectories(
        token_ids=ids[0].cpu().numpy(),
        tokens=token_texts or [str(int(i)) for i in ids[0]],
        latents=torch.stack(latents).numpy(),
        top_ids=torch.stack(tops).numpy(),
        token_correlation=np.asarray(correlations),
        exit_steps=exit_steps.numpy(),
        exit_threshold=exit_threshold,
    )

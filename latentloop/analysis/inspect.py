"""Everything `latentloop inspect` computes for one text, as arrays (usable from notebooks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..accounting import count_parameters
from ..config import ModelConfig
from ..model import RecurrentDepthLM
from .classify import Classification, classify_tokens
from .path_independence import PathIndependence, path_independence
from .pca import PCA, fit_pca
from .trajectories import Trajectories, collect_trajectories

NUM_COMPONENTS = 6  # PC pairs 1-2, 3-4, 5-6


@dataclass
class Inspection:
    trajectories: Trajectories
    pca: PCA
    projected: np.ndarray  # [N, S, k]: every latent in PCA coordinates
    classes: list[Classification]
    paths: PathIndependence


def estimate_bytes(config: ModelConfig, seq_len: int, num_steps: int, num_samples: int) -> dict[str, int]:
    """Peak float32 memory of `inspect_sequence`, by part, before anything is allocated.

    trajectories: every iteration's logits [S, V], state and latent are kept (forward_depths);
    path independence: M copies of the sequence through the core (activations, attention scores),
    then M x S x V logits and the ~4 tensors of that size the spread of distributions needs."""
    s, h, v, i = seq_len, config.hidden_size, config.vocab_size, config.intermediate_size
    activations = s * (8 * h + 3 * i) + 2 * config.num_heads * s * s
    return {
        "weights": 4 * count_parameters(config).total,
        "trajectories": 4 * (num_steps * s * (v + 3 * h) + activations + 2 * s * v),
        "path_independence": 4 * num_samples * (activations + 5 * s * v),
    }


def inspect_sequence(
    model: RecurrentDepthLM,
    input_ids: torch.Tensor | list[int],
    num_steps: int = 32,
    num_samples: int = 8,
    init_scale: float = 1.0,
    seed: int = 0,
    exit_threshold: float = 5e-4,
    token_texts: list[str] | None = None,
) -> Inspection:
    """Trajectories (one pass), their PCA and classes, and path independence (one batched pass)."""
    traj = collect_trajectories(model, input_ids, num_steps, init_scale=init_scale, seed=seed,
                                exit_threshold=exit_threshold, token_texts=token_texts)
    flat = traj.latents.reshape(-1, traj.latents.shape[-1])
    pca = fit_pca(flat, NUM_COMPONENTS)
    paths = path_independence(model, input_ids, num_steps, num_samples=num_samples,
                              init_scale=init_scale or 1.0, seed=seed + 1)
    return Inspection(trajectories=traj, pca=pca, projected=pca.transform(traj.latents),
                      classes=classify_tokens(traj.latents), paths=paths)

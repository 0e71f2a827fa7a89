"""Principal components of latents, by an exact SVD of the centred data (small n x h matrices)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PCA:
    mean: np.ndarray  # [h]
    components: np.ndarray  # [k, h], rows are unit principal directions, strongest first
    explained_variance_ratio: np.ndarray  # [k]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project [..., h] onto the components: [..., k]."""
        return (x - self.mean) @ self.components.T


def fit_pca(x: np.ndarray, k: int) -> PCA:
    """Fit k components to the rows of x [n, h] (k is capped at min(n, h))."""
    data = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1, x.shape[-1])
    if data.shape[0] < 2:
        raise ValueError("PCA needs at least two points")
    k = min(k, *data.shape)
    mean = data.mean(0)
    _, singular, vt = torch.linalg.svd(data - mean, full_matrices=False)
    variance = singular**2
    return PCA(
        mean=mean.numpy(),
        components=vt[:k].numpy(),
        explained_variance_ratio=(variance[:k] / variance.sum().clamp_min(1e-300)).numpy(),
    )

"""Health signals of a recurrent-depth model (spec section 3): collapse and state statistics."""

from __future__ import annotations

import torch
from torch import Tensor


def token_correlation(hidden: Tensor) -> float:
    """Mean pairwise cosine between centred token vectors of hidden [B, S, h], minus 1/S.

    Near 0 for healthy, distinct token states; approaching 1 when all tokens collapse to one vector.
    """
    x = hidden.float()
    x = x - x.mean(dim=-1, keepdim=True)
    x = torch.nn.functional.normalize(x, dim=-1)
    cosine = x @ x.transpose(-1, -2)  # [B, S, S]
    seq = hidden.shape[-2]
    return float(cosine.mean() - 1.0 / seq)


def relative_change(previous: Tensor, current: Tensor) -> float:
    """||current - previous|| / ||current||: how much the last iteration still moved the state."""
    return float((current.float() - previous.float()).norm() / current.float().norm().clamp_min(1e-12))

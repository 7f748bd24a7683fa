"""Token affinities from intermediate CLIP features and aggregation along them (SC-CLIP's "adjust" steps),
plus the attention that mixes such a fixed map with k-k attention."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def cosine_affinity(x: torch.Tensor, beta: Optional[float] = None) -> torch.Tensor:
    """Tokens (B, N, D) -> cosine similarities (B, N, N) of the L2-normalised tokens; with `beta`, every entry
    < beta (strictly) is set to 0."""
    f = x / x.norm(dim=-1, keepdim=True)
    sim = f @ f.transpose(-2, -1)
    if beta is not None:
        sim = sim.masked_fill(sim < beta, 0.0)
    return sim


def aggregate(y: torch.Tensor, affinity: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-normalised aggregation (A / (rowsum(A) + eps)) · Y: y (B, N, D), affinity (B, N, N) -> (B, N, D)."""
    a = affinity / (affinity.sum(dim=-1, keepdim=True) + eps)
    return a @ y.to(a.dtype)


def map_kk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """½ · (P + softmax(d^-1/2 · K Kᵀ)) · V per head (SC-CLIP's last block): q, k, v (B, heads, T, d), `probs`
    (B, T, T) or (B, heads, T, T) a row-stochastic map shared by the heads. Rows of the mix sum to 1."""
    if probs.dim() == 3:
        probs = probs[:, None]
    return 0.5 * (probs.to(v.dtype) @ v + F.scaled_dot_product_attention(k, k, v))

"""Outlier ("anomaly") tokens of a ViT feature map and their replacement by the neighbours' mean (SC-CLIP).

`lof_scores` / `lof_outliers` are SC-CLIP's own Local-Outlier-Factor variant (`lof_pytorch` of SuleBai/SC-CLIP),
which is not the textbook LOF of scikit-learn: squared Euclidean distances, and a reachability distance that
uses the row's own k-distance, so that LOF_i = mean over i's k neighbours j of kd_i / kd_j. Batched over
windows; no Python loop over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lof_scores(x: torch.Tensor, n_neighbors: int = 30) -> torch.Tensor:
    """Tokens (B, N, D) -> SC-CLIP's LOF score per token (B, N), computed in fp32.

    Δ_ij = ‖x_i − x_j‖² (the 2-norm of the difference, squared); the k + 1 smallest Δ of each row, the first
    (the token itself, Δ = 0) dropped; kd_i = the k-th neighbour's Δ; reach_ij = max(Δ_ij, kd_i);
    lrd_i = k / mean_j reach_ij (a NaN mean -> 1e-6); LOF_i = mean_j lrd_j / lrd_i.
    k is capped at N − 1 (a window with fewer tokens than the official 31)."""
    x = x.float()
    k = min(n_neighbors, x.shape[1] - 1)
    if k < 1:
        return torch.ones(x.shape[:2], device=x.device)
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") ** 2       # (B, N, N), exact
    knn_d, knn_i = torch.topk(dist, k + 1, dim=-1, largest=False)
    knn_d, knn_i = knn_d[..., 1:], knn_i[..., 1:]                                     # (B, N, k)
    reach = torch.maximum(knn_d, knn_d[..., -1:])
    lrd = k / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)                          # (B, N)
    neigh = torch.gather(lrd, 1, knn_i.flatten(1)).view_as(knn_i)
    return (neigh / lrd[..., None]).mean(dim=-1)


def lof_outliers(x: torch.Tensor, n_neighbors: int = 30, contamination: float = 0.05) -> torch.Tensor:
    """Tokens (B, N, D) -> outlier mask (B, N): LOF score strictly above its (1 − contamination) quantile
    (linear interpolation, per window). With N = 196 and distinct scores: the 10 largest."""
    s = lof_scores(x, n_neighbors)
    thd = torch.quantile(s, 1.0 - contamination, dim=1, keepdim=True)
    return s > thd


def neighbour_mean_fill(fmap: torch.Tensor, outliers: torch.Tensor) -> torch.Tensor:
    """Replace outlier positions of fmap (B, C, h, w) by the mean of their 8 neighbours (3×3 minus the centre)
    that are inside the grid and not outliers; an outlier without such a neighbour stays as it is.
    `outliers`: bool (B, h, w). All replacements read the original values (simultaneous)."""
    B, C, h, w = fmap.shape
    keep = (~outliers).to(fmap.dtype)[:, None]                                          # (B, 1, h, w)
    ring = torch.ones(1, 1, 3, 3, dtype=fmap.dtype, device=fmap.device)
    ring[..., 1, 1] = 0
    sums = F.conv2d((fmap * keep).reshape(B * C, 1, h, w), ring, padding=1).view(B, C, h, w)
    count = F.conv2d(keep, ring, padding=1)                                             # (B, 1, h, w)
    replace = outliers[:, None] & (count > 0)
    return torch.where(replace, sums / count.clamp(min=1), fmap)

"""Patch clustering and mask voting (CLIPtrase, spec §2.6 steps 9-12), vectorised.

* :func:`self_correlation`: the head- and branch-averaged cosine self-correlation of q, k, v.
* :func:`denoise`: subtract the CLS row from every patch row, clamp at 0.
* :func:`dbscan_labels`: scikit-learn's DBSCAN on a precomputed Euclidean distance matrix of the rows.
* :func:`cluster_masks`: mean row per cluster -> map, bilinear xratio, median filter, bilinear to the output, argmax.
* :func:`vote`: per cluster, the most frequent label (ties -> smallest) written to all its pixels.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


@contextmanager
def single_thread(device: torch.device):
    """Run the enclosed small-tensor CPU work on one intra-op thread (restored afterwards).

    Post-processing maps of a few hundred thousand values costs far less than the thread synchronisation of a
    parallel region on a busy machine (measured on 2 shared cores: ~40 ms on one thread vs 100-600 ms on two)."""
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def channel_argmax(x: torch.Tensor, order: Optional[torch.Tensor] = None) -> torch.Tensor:
    """argmax over dim 0 of (K, H, W), first index on ties (first in `order`, a permutation of 0..K-1, when
    given); `max(0).indices` is several times faster than `argmax(0)` on the CPU for this layout."""
    if order is None:
        return x.max(0).indices
    order = order.to(x.device)
    return order[x.index_select(0, order).max(0).indices]


def lift_winner(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K, H, W) logits with channel labels[y, x] set one float32 ulp above the pixel's maximum, so that argmax
    returns `labels` even where another channel ties with it."""
    out = logits.float().clone()
    top = torch.nextafter(out.max(0).values, torch.tensor(float("inf"), device=out.device))
    return out.scatter_(0, labels[None].to(out.device), top[None])


def self_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-head q, k, v (B, heads, T, d) -> W_sc (B, T, T) = mean over heads and over the three branches of the
    cosine similarity matrices cos(Z_j, Z_j) (torch.cosine_similarity semantics: each vector divided by
    max(norm, eps)). One matmul: the unit vectors of every (branch, head) are concatenated along the features."""
    B, H, T, d = q.shape
    z = torch.stack([q, k, v]).float()                           # (3, B, H, T, d)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(eps)
    z = z.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * H * d)        # (B, T, 3*H*d)
    return (z @ z.transpose(1, 2)) / (3 * H)


def denoise(wsc: torch.Tensor) -> torch.Tensor:
    """W_sc (T, T) with the CLS token at index 0 -> patch correlations (N, N): G = max(W[1:, 1:] - W[0, 1:], 0)."""
    return (wsc[1:, 1:] - wsc[0:1, 1:]).clamp_min(0)


def pairwise_distances(rows: torch.Tensor) -> np.ndarray:
    """Euclidean distances (N, N) between the rows, float64 (the precision scikit-learn's trees work in)."""
    x = rows.detach().to("cpu", torch.float64)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0)
    d2.fill_diagonal_(0)
    return d2.sqrt_().numpy()


def dbscan_labels(rows: torch.Tensor, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN (Euclidean, scikit-learn semantics: neighbours at distance <= eps, the point itself counted in
    min_samples) of the rows of `rows` (N, D) -> labels (N,) int64, -1 = noise, clusters 0..K-1 in the order
    scikit-learn finds them."""
    from sklearn.cluster import DBSCAN
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    d = pairwise_distances(rows)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d).astype(np.int64)


def cluster_means(rows: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Mean row of every cluster (K, D); noise (label -1) belongs to none."""
    keep = labels >= 0
    onehot = F.one_hot(labels[keep], n_clusters).to(rows.dtype)   # (n, K)
    sums = onehot.T @ rows[keep]
    return sums / onehot.sum(0)[:, None]


def median_filter_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """scipy.ndimage.median_filter (mode 'reflect') of size x size on every map of (K, H, W), in one call."""
    from scipy.ndimage import median_filter
    out = median_filter(maps.detach().float().cpu().numpy(), size=(1, size, size), mode="reflect")
    return torch.from_numpy(out).to(maps.device)


def cluster_masks(rows: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int],
                  ratio: int = 4, median: int = 7) -> Optional[torch.Tensor]:
    """Cluster id of every output pixel (H, W) int64, or None when DBSCAN found no cluster.

    Each cluster's mean row (an h*w correlation map) is up-sampled bilinearly x`ratio`, median-filtered
    (`median` = 2*ratio-1 in the official code), up-sampled bilinearly to `out_size`; every pixel takes the
    cluster of the largest map (first on ties)."""
    n = int(labels.max()) + 1 if labels.numel() else 0
    if n <= 0:
        return None
    h, w = grid
    maps = cluster_means(rows.float(), labels, n).reshape(1, n, h, w)
    maps = F.interpolate(maps, size=(ratio * h, ratio * w), mode="bilinear", align_corners=False)[0]
    maps = median_filter_maps(maps, median)
    maps = F.interpolate(maps[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return channel_argmax(maps)


def vote_counts(pred: torch.Tensor, clusters: torch.Tensor, n_labels: int, n_clusters: int) -> torch.Tensor:
    """counts[c, l] = number of pixels of cluster c whose label in `pred` is l: (n_clusters, n_labels)."""
    idx = clusters.flatten() * n_labels + pred.flatten()
    return torch.bincount(idx, minlength=n_clusters * n_labels).view(n_clusters, n_labels)


def vote(pred: torch.Tensor, clusters: torch.Tensor, n_labels: int, order: Optional[torch.Tensor] = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask classification by voting: every pixel of cluster c gets the most frequent label of `pred` in c.
    Ties go to the label listed first in `order` (a permutation of the labels; None = ascending, i.e. the smallest
    label). Returns (voted labels (H, W), winner per cluster (n_clusters,), vote shares (n_clusters, n_labels))."""
    n_clusters = int(clusters.max()) + 1
    counts = vote_counts(pred, clusters, n_labels, n_clusters)
    if order is None:
        winner = counts.argmax(1)                  # first maximum = smallest label on ties
    else:
        order = order.to(counts.device)
        winner = order[counts.index_select(1, order).argmax(1)]
    c = counts.cpu().double()                      # float64 on the CPU (MPS has none)
    shares = c / c.sum(1, keepdim=True).clamp_min(1)
    return winner[clusters], winner, shares


def vote_logits(shares: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
    """A float32 logit table (n_clusters, n_labels) whose row argmax is the cluster's winner: log vote shares
    (floored at 1e-8), the winner lifted one ulp above its row maximum so that float32 rounding of nearly equal
    shares (clusters of millions of pixels) can never hand the argmax to another label."""
    table = shares.clamp_min(1e-8).log().float()
    rows = torch.arange(table.shape[0])
    winners = winners.to(table.device)
    table[rows, winners] = torch.nextafter(table.max(1).values, torch.tensor(float("inf")))
    return table

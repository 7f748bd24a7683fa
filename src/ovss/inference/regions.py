"""Region-map operations on batches of windows (CorrCLIP, spec methods/corrclip.md §4.2, §4.3, §5), vectorised:
no Python loop over regions or windows.

A region map holds integer region values per patch; its **minimum** value is the "unsegmented" region. Maps
of a batch are handled together through per-window dense ranks (:func:`dense_ranks`).

* :func:`dense_ranks` — the rank of every value among the sorted distinct values of its window;
* :func:`merge_regions` — regions whose mean features are close are merged (DBSCAN with ``min_samples=1`` =
  connected components of the graph "distance <= eps");
* :func:`scope_mask` — which patch pairs may interact: same region, or one side unsegmented and a similarity
  above the window's mean;
* :func:`region_mode` — every region (except the minimum) takes its most frequent label.
"""
from __future__ import annotations

import numpy as np
import torch


def dense_ranks(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values (B, L) integers -> (ranks (B, L) long, counts (B,) long): rank r of each entry among the sorted
    distinct values of its row (0 = the row's minimum), and the number of distinct values per row."""
    s, order = values.sort(dim=1)
    new = torch.ones_like(s, dtype=torch.long)
    new[:, 1:] = (s[:, 1:] != s[:, :-1]).long()
    r_sorted = new.cumsum(1) - 1
    ranks = torch.empty_like(r_sorted).scatter_(1, order, r_sorted)
    return ranks, r_sorted[:, -1] + 1


def region_means(feats: torch.Tensor, ranks: torch.Tensor, n: int) -> torch.Tensor:
    """Mean feature per region: feats (B, L, C), ranks (B, L) in [0, n) -> (B, n, C) (zeros for absent ranks)."""
    B, L, C = feats.shape
    idx = (ranks + torch.arange(B, device=ranks.device)[:, None] * n).reshape(-1)
    acc = torch.zeros(B * n, C, dtype=feats.dtype, device=feats.device).index_add_(0, idx, feats.reshape(-1, C))
    cnt = torch.bincount(idx, minlength=B * n).to(feats.dtype).clamp(min=1)
    return (acc / cnt[:, None]).view(B, n, C)


def merge_regions(region_map: torch.Tensor, feats: torch.Tensor, eps: float = 0.2,
                  offset: int = 10000) -> torch.Tensor:
    """CorrCLIP's mask merging (§4.2). region_map (B, L) integers, feats (B, L, C) L2-normalised patch features.

    In every window with more than 2 distinct values: f_r = normalised mean feature of region r (r = rank of
    the value), the minimum (r = 0) left out; S = f fᵀ over r >= 1, D = max(S) − S; regions connected through
    pairs with D <= eps (inclusive) form one component, and every region r >= 1 gets the value
    ``offset + component`` (components numbered by their smallest region, DBSCAN's order); the minimum keeps its
    value. Windows with <= 2 values are returned unchanged. Returns (B, L) long."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    region_map = region_map.long()
    ranks, counts = dense_ranks(region_map)
    B = region_map.shape[0]
    n = int(counts.max())
    if n <= 2:
        return region_map
    f = torch.nn.functional.normalize(region_means(feats.float(), ranks, n), dim=-1)[:, 1:]   # (B, n-1, C)
    m = n - 1
    sim = f @ f.transpose(1, 2)                                                             # (B, m, m)
    valid = torch.arange(1, n, device=f.device)[None] < counts[:, None]                    # (B, m)
    pair = valid[:, :, None] & valid[:, None, :]
    top = sim.masked_fill(~pair, float("-inf")).amax(dim=(1, 2), keepdim=True)
    edge = pair & ((top - sim) <= eps) & (counts > 2)[:, None, None]
    b, i, j = edge.nonzero(as_tuple=True)
    nodes = B * m
    graph = coo_matrix((np.ones(len(b), dtype=np.int8), ((b * m + i).cpu().numpy(), (b * m + j).cpu().numpy())),
                       shape=(nodes, nodes))
    _, comp = connected_components(graph, directed=False)
    comp = torch.from_numpy(comp).to(region_map.device).view(B, m)
    comp = comp - comp[:, :1]              # scipy numbers components in node order: per window from 0
    new = offset + torch.gather(comp, 1, (ranks - 1).clamp(min=0))
    merge = (ranks > 0) & (counts > 2)[:, None]
    return torch.where(merge, new, region_map)


def scope_mask(region_map: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """CorrCLIP's scope restriction (§4.3): region_map (B, L), sim (B, L, L) -> allowed (B, L, L) bool.

    (i, j) is allowed when both lie in one region other than the minimum, or when either lies in the minimum
    ("unsegmented") region and sim(i, j) exceeds the mean of all L² entries of its window."""
    ranks, _ = dense_ranks(region_map)
    seg = ranks > 0
    same = (ranks[:, :, None] == ranks[:, None, :]) & seg[:, :, None]
    unseg = ~seg
    above = sim > sim.mean(dim=(1, 2), keepdim=True)
    return same | ((unseg[:, :, None] | unseg[:, None, :]) & above)


def region_mode(labels: torch.Tensor, regions: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Per-region label correction (§5 step 4): labels (H, W) in [0, num_labels), regions (H, W) integers ->
    labels where every region except the minimum value takes its most frequent label (ties: the smallest
    label, torch.mode's CPU rule); pixels of the minimum value keep theirs."""
    ranks, counts = dense_ranks(regions.reshape(1, -1).long())
    ranks = ranks[0]
    lab = labels.reshape(-1).long()
    K = int(num_labels)
    hist = torch.bincount(ranks * K + lab, minlength=int(counts[0]) * K).view(-1, K)
    mode = hist.argmax(dim=1)                  # first maximum = smallest label
    out = torch.where(ranks > 0, mode[ranks], lab)
    return out.view(labels.shape).to(labels.dtype)

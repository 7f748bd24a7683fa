"""Semantic feedback refinement (ResCLIP's SFR; spec methods/resclip.md §2 steps 7-8 and 5): a first-pass
segmentation becomes one category per patch, and the patch-pair matrix "same category, reachable along a straight
path of that category" (distance-decayed otherwise, 1-D blurred, row-normalised) is mixed into the last block's
attention logits.

All functions work on a batch of windows at once (leading dimension B); nothing loops over pixels or patches.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def patch_categories(probs: torch.Tensor, thd: float, patch: int) -> torch.Tensor:
    """probs (B, Q, H, W) -> the most frequent category of every patch (B, ⌊H/p⌋, ⌊W/p⌋) (long).

    Per pixel the category is argmax_q (first index on ties), set to 0 where max_q < thd ("uncertain" shares
    category 0 with query 0); pixels beyond the last full patch are dropped; the mode of each p×p block takes
    the smallest category on ties (like torch.mode on CPU)."""
    best, cat = probs.max(dim=1)                            # (B, H, W)
    cat = torch.where(best < thd, torch.zeros_like(cat), cat)
    B, H, W = cat.shape
    h, w = H // patch, W // patch
    blocks = cat[:, :h * patch, :w * patch].reshape(B, h, patch, w, patch).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(B, h, w, patch * patch)
    counts = torch.zeros(B, h, w, probs.shape[1], dtype=torch.int32, device=cat.device)
    counts.scatter_add_(3, blocks, torch.ones_like(blocks, dtype=torch.int32))
    return counts.argmax(dim=3)                             # first maximum = smallest category


@lru_cache(maxsize=8)
def _path_geometry(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Path samples on a h×w grid (row-major patches u = r·w + c): rows (K, h, h) and cols (K, w, w), the row
    (column) of sample k on the path from row r_u to r_v (column c_u to c_v), K = m*+1; the Chebyshev step count
    m (N, N) long; m* = max m.

    Sample k sits at round(u·(1−t_k) + v·t_k), t = linspace(0, 1, m*+1) in fp32, each coordinate rounded half to
    even (the official arithmetic: float32 products of integer coordinates; it is separable per coordinate)."""
    N = h * w
    r = torch.arange(N, device=device) // w
    c = torch.arange(N, device=device) % w
    steps = torch.maximum((r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs())
    m_star = int(steps.max())
    t = torch.linspace(0, 1, steps=m_star + 1, device=device)[:, None, None]

    def samples(n: int) -> torch.Tensor:   # (K, n, n): coordinate a -> b at step k
        a = torch.arange(n, device=device).float()
        return (a[None, :, None] * (1 - t) + a[None, None, :] * t).round().long()

    return samples(h), samples(w), steps, m_star


def path_decay(cat: torch.Tensor) -> torch.Tensor:
    """cat (B, h, w) patch categories -> decay factor (B, N, N): 1 where the path from u to v is valid, else
    exp(−m/m*) with m the Chebyshev step count of (u, v) and m* its maximum over the grid.

    Valid: the category at each of the first m+1 path samples (of m*+1 spread over the whole segment, so only
    the first m/m* of the segment is inspected — the official quirk) equals the category of u."""
    B, h, w = cat.shape
    rows, cols, steps, m_star = _path_geometry(h, w, str(cat.device))
    if m_star == 0:                                          # a single patch
        return torch.ones(B, 1, 1, device=cat.device)
    N = h * w
    flat = cat.reshape(B, N)
    start = flat.view(B, 1, N, 1)
    # steps whose sample lies beyond m for a pair: ignored (|Δr| < k and |Δc| < k), separable like the samples
    ar = torch.arange(h, device=cat.device)
    ac = torch.arange(w, device=cat.device)
    valid = torch.ones(B, N, N, dtype=torch.bool, device=cat.device)
    chunk = max(1, (1 << 22) // (B * N * N))                 # path steps per vectorised chunk (bounded memory)
    for k0 in range(1, m_star + 1, chunk):                   # sample 0 is u itself
        ks = torch.arange(k0, min(k0 + chunk, m_star + 1), device=cat.device)
        n = len(ks)
        idx = (rows[ks] * w).view(n, h, 1, h, 1) + cols[ks].view(n, 1, w, 1, w)   # patch at step k of u -> v
        beyond = (((ar[:, None] - ar[None]).abs()[None] < ks.view(n, 1, 1)).view(n, h, 1, h, 1)
                  & ((ac[:, None] - ac[None]).abs()[None] < ks.view(n, 1, 1)).view(n, 1, w, 1, w))
        same = flat[:, idx.view(n, N, N)] == start           # (B, n, N, N)
        valid &= (same | beyond.view(1, n, N, N)).all(dim=1)
    decay = torch.exp(-steps / m_star)
    return torch.where(valid, torch.ones((), device=cat.device), decay)


def blur_rows(m: torch.Tensor, std: float) -> torch.Tensor:
    """1-D Gaussian blur of every row of m (B, N, N) along its last axis, zero padding: kernel length
    min(N, int(6σ+1)) made odd, taps exp(−x²/(2σ²)) normalised to sum 1."""
    B, N, _ = m.shape
    size = min(N, int(6 * std + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size, device=m.device) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * std ** 2))
    kernel = (kernel / kernel.sum()).to(m.dtype)
    out = F.conv1d(m.reshape(B * N, 1, N), kernel.view(1, 1, -1), padding=size // 2)
    return out.view(B, N, N)


def feedback_matrix(cat: torch.Tensor, std: float, decay: bool = True) -> torch.Tensor:
    """ResCLIP's SFR matrix (B, 1+N, 1+N) float32 from patch categories cat (B, h, w).

    S[u, v] = 1 if cat[u] == cat[v] (diagonal 1); with `decay` (delete_same_entity) multiplied by the path decay
    (`path_decay`); every row blurred (`blur_rows`), ReLU, divided by (row sum + 1e-8); CLS row/column 0."""
    B, h, w = cat.shape
    N = h * w
    flat = cat.reshape(B, N)
    s = (flat[:, :, None] == flat[:, None, :]).float()
    if decay:
        s = s * path_decay(cat)
    s = blur_rows(s, std).relu()
    s = s / (s.sum(dim=-1, keepdim=True) + 1e-8)
    out = torch.zeros(B, N + 1, N + 1, device=cat.device)
    out[:, 1:, 1:] = s
    return out


def mix_feedback(logits: torch.Tensor, fb: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """logits (B, heads, T, T) attention logits, fb (B, T, T) SFR matrix -> τ·((1−λ)·logits + λ·B̂) with
    B̂ = fb / max(fb) per window, rounded to float16 and λ·B̂ computed in float16 (the official dtypes, also in an
    fp32 run)."""
    peak = fb.flatten(1).amax(dim=1).view(-1, 1, 1)
    b = (fb / peak).half()[:, None]
    return tau * ((1 - lam) * logits + (lam * b).to(logits.dtype))

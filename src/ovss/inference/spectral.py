"""Spectral graph matching and low-rank graph approximation (CASS, spec methods/cass.md §4.5-4.8), batched.

* :func:`top_eigenvalues` — the k largest eigenvalues (float64) of symmetric graphs;
* :func:`spectral_profile` — L2- then L1-normalised eigenvalue vectors;
* :func:`profile_cost` — ``1 − W`` with W the L1 distance of the ascending-sorted profiles (a 1-D Wasserstein
  distance between equally weighted atoms), every DINO head against every CLIP head, stored in float32;
* :func:`match_heads` — Hungarian assignment minimising that cost (scipy);
* :func:`randomized_svd` — Halko et al.'s randomized range finder with subspace iteration followed by a thin
  SVD, step for step as ``torch.svd_lowrank`` (square input), with the random test matrix passed in;
* :func:`rescale_singular_values` — CASS's "dynamic eigen-scaling" ``[S_min, S_max] → [S_min/2, 1.5·S_max]``;
* :func:`range_match` — min–max map of one tensor onto the value range of another.

Only eigenvalues are used for the matching, and the low-rank graph ``U diag(S) Vᵀ`` depends only on span(Q),
so no sign or basis convention of a decomposition reaches the results.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def top_eigenvalues(graph: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetric graphs (..., N, N) -> their min(k, N) largest eigenvalues (..., k), descending, computed in float64
    (symmetric solver) from the graph as given (the official float32 graph: its rounding decides near-ties of the
    head matching, so the eigenvalues are not taken from the smaller Gram matrix). One LAPACK call per matrix, as
    the official loop: a batched call can differ in the last bits for small matrices."""
    N = graph.shape[-1]
    g = graph.double().reshape(-1, N, N)
    if g.device.type == "cpu" and len(g) > 1:
        # the solver is mostly memory-bound (tridiagonal reduction): two calls at once use the cores better than
        # one call on two threads, with the same bits (each call still runs LAPACK as in the official loop)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(len(g), max(1, torch.get_num_threads()))) as pool:
            vals = torch.stack(list(pool.map(torch.linalg.eigvalsh, g))).flip(-1)
    else:
        vals = torch.stack([torch.linalg.eigvalsh(m) for m in g]).flip(-1)
    return vals[..., :min(k, N)].reshape(*graph.shape[:-2], -1)


def spectral_profile(vals: torch.Tensor) -> torch.Tensor:
    """(..., k) eigenvalues -> L2-normalised, then L1-normalised (``x / max(Σ|x|, 1e-12)``) along the last axis."""
    return F.normalize(F.normalize(vals, p=2, dim=-1), p=1, dim=-1)


def profile_cost(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Profiles (..., H, k) x (..., H', k) -> cost (..., H, H') = 1 − Σ_k |sort↑(rows_i)_k − sort↑(cols_j)_k|,
    the distance in float64, the cost stored in float32 (as the official cost matrix)."""
    a = rows.sort(dim=-1).values.unsqueeze(-2)                       # (..., H, 1, k)
    b = cols.sort(dim=-1).values.unsqueeze(-3)                       # (..., 1, H', k)
    return (1 - (a - b).abs().sum(-1)).float()


def match_heads(cost: torch.Tensor) -> torch.Tensor:
    """Cost (B, H, H) -> column index σ (B, H) of the Hungarian assignment minimising the total cost per window
    (scipy ``linear_sum_assignment``; square, so rows are 0..H−1)."""
    from scipy.optimize import linear_sum_assignment
    c = cost.detach().float().cpu().numpy()
    cols = np.stack([linear_sum_assignment(m)[1] for m in c])
    return torch.from_numpy(cols).to(cost.device)


def randomized_svd(A: torch.Tensor, R: torch.Tensor, niter: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of square matrices A (..., N, N) with the test matrices R (..., N, q), as ``torch.svd_lowrank``:
    ``Q = qr(A R).Q``; `niter` times ``Q = qr(Aᵀ Q).Q``, ``Q = qr(A Q).Q``; ``B = Qᵀ A``; ``B = U_B S Vᵀ``;
    returns ``(Q U_B, S, V)`` with shapes (..., N, q), (..., q), (..., N, q)."""
    R = R.to(A.dtype)
    Q = torch.linalg.qr(A @ R).Q
    At = A.transpose(-1, -2)
    for _ in range(niter):
        Q = torch.linalg.qr(At @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    U, S, Vh = torch.linalg.svd(Q.transpose(-1, -2) @ A, full_matrices=False)
    return Q @ U, S, Vh.transpose(-1, -2)


def rescale_singular_values(S: torch.Tensor) -> torch.Tensor:
    """CASS's eigen-scaling along the last axis: ``(S − S_min)/(S_max − S_min)·(1.5·S_max − 0.5·S_min) + 0.5·S_min``,
    i.e. S_min -> S_min/2, S_max -> 1.5·S_max, linear in between."""
    lo = S.amin(-1, keepdim=True)
    hi = S.amax(-1, keepdim=True)
    return (S - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo


def range_match(src: torch.Tensor, ref: torch.Tensor, dims: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """Map `src` linearly so that its min/max become those of `ref`: ``(src − min)/(max − min)·(rmax − rmin) + rmin``.
    Min/max over `dims` (per remaining leading index; None = the whole tensors). The result has the promoted
    dtype of both (ref's range is computed in ref's dtype, as the official code does)."""
    def lo_hi(t):
        if dims is None:
            return t.amin(), t.amax()
        return t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    s0, s1 = lo_hi(src)
    r0, r1 = lo_hi(ref)
    return (src - s0) / (s1 - s0) * (r1 - r0) + r0

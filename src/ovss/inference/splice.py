"""Proxy attention (ProxyCLIP, Trident), window splicing and the SAM affinity (Trident).

* :func:`to_imagenet` — CLIP-normalised pixels -> ImageNet-normalised (the VFM input, §2.7 step 2);
* :func:`proxy_attention` — ``softmax_r(γ (Sim − β·mean Sim))`` with negatives masked, the mean taken per
  window (ProxyCLIP) or over all windows jointly (Trident);
* :func:`proxy_last_block` — CLIP blocks 0..L−2 on the windows, then the reduced last block whose attention
  is the proxy attention applied to the bilinearly resized CLIP values (§2.7 step 5);
* :func:`splice` — Trident's canvas: window maps averaged at their patch positions (§2.8 step 11);
* :func:`sam_affinity` — Trident's aggregation matrix from SAM's last-block attention and values
  (§2.8 step 13), computed in row chunks so that the N x N cosine never exists whole.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backbones.clip import CLIP_MEAN, CLIP_STD
from ..backbones.vfm import IMAGENET_MEAN, IMAGENET_STD


def to_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Undo the CLIP normalisation (x·std + mean, [0, 1] constants) and apply ImageNet's (x − mean)/std."""
    def col(v):
        return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * col(CLIP_STD) + col(CLIP_MEAN) - col(IMAGENET_MEAN)) / col(IMAGENET_STD)


def proxy_attention(feats: torch.Tensor, beta: float, gamma: float, joint: bool = False) -> torch.Tensor:
    """VFM features (B, C, I, J) -> proxy attention (B, I·J, I·J).

    x̂ = L2-normalised tokens, Sim = x̂x̂ᵀ, A = γ(Sim − β·mean(Sim)), A[A < 0] = −inf, row softmax. The mean is
    over all entries of each window, or of all windows together when `joint` (Trident). A row masked
    entirely (only possible when mean ≥ 1/β, e.g. a uniform image) keeps its unmasked softmax instead of
    the NaNs the official code would produce."""
    f = F.normalize(feats.flatten(2).float(), dim=1)                 # (B, C, L)
    sim = f.transpose(1, 2) @ f                                        # (B, L, L)
    mean = sim.mean() if joint else sim.mean(dim=(1, 2), keepdim=True)
    a = (sim - mean * beta) * gamma
    neg = a < 0.0
    full = neg.all(dim=-1, keepdim=True)
    a = a.masked_fill(neg & ~full, float("-inf"))
    return a.softmax(dim=-1)


def proxy_last_block(clip, x: torch.Tensor, attn: torch.Tensor, grid: tuple[int, int],
                     drop_cls: bool = False) -> torch.Tensor:
    """CLIP on normalised windows x (B, 3, H, W) with the proxy attention `attn` (B, I·J, I·J) in a reduced last
    block: per-head values of the patch tokens (CLS dropped) bilinearly resized from the CLIP grid (h, w) to
    `grid` = (I, J), ``Attn·V`` per head, ``out_proj``. Returns (B, I·J, D), before ``ln_post``.
    `drop_cls`: remove the CLS token before the last block (Trident; no effect on the result)."""
    t, h, w = clip.embed(x, pe="A")
    last = len(clip.blocks) - 1
    t = clip.run_blocks(t, 0, last)
    if drop_cls:
        t = t[:, 1:]
    blk = clip.blocks[last]
    D = t.shape[-1]
    nh = clip.info.heads
    u = blk.ln_1(t[:, -h * w:])                                          # values only: rows 2D..3D of in_proj
    v = F.linear(u, blk.attn.in_proj_weight[2 * D:], blk.attn.in_proj_bias[2 * D:])
    B = v.shape[0]
    d = D // nh
    v = v.view(B, h * w, nh, d).transpose(1, 2)                          # (B, nh, h*w, d)
    I, J = grid
    v = v.transpose(2, 3).reshape(B * nh, d, h, w)
    if (h, w) != (I, J):
        v = F.interpolate(v, size=(I, J), mode="bilinear", align_corners=False)
    v = v.reshape(B, nh, d, I * J).transpose(2, 3)                      # (B, nh, I*J, d)
    o = attn.to(v.dtype).unsqueeze(1) @ v                                # same attention for every head
    return clip.attn_out(last, o)


def splice(maps: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Average window maps (n, D, h, w) into a (D, H, W) canvas; boxes (n, 4) = (y1, x1, y2, x2) in canvas
    cells, each box the size of its map. Cells are divided by their window count."""
    n, D, h, w = maps.shape
    H, W = out_hw
    rows = (boxes[:, 0:1] + torch.arange(h))[:, :, None]
    cols = (boxes[:, 1:2] + torch.arange(w))[:, None, :]
    flat = (rows * W + cols).reshape(-1).to(maps.device)
    acc = torch.zeros(D, H * W, dtype=maps.dtype, device=maps.device)
    acc.index_add_(1, flat, maps.permute(1, 0, 2, 3).reshape(D, -1))
    cnt = torch.bincount(flat, minlength=H * W).to(maps.dtype)
    return (acc / cnt).view(D, H, W)


def sam_affinity(attn: torch.Tensor, v: torch.Tensor, cos_fac: float, refine_neg_cos: bool = True,
                 chunk: int = 1024) -> torch.Tensor:
    """Trident's aggregation matrix (N, N) from SAM's last-block attention `attn` (heads, N, N) and values
    `v` (heads, N, d):

    Cos_j = v̂_j v̂_jᵀ; τ_u = cos_fac · mean_{j,v} Cos_j[u, v] (→ 0.6 where negative unless `refine_neg_cos`,
    then capped at 0.9); W̃_j = W_j where Cos_j > τ_u else 0; Ā = mean_j W̃_j; rows L1-normalised."""
    nh, N, _ = attn.shape
    vn = F.normalize(v.reshape(nh, N, -1).float(), dim=-1)
    out = torch.empty(N, N, dtype=torch.float32, device=attn.device)
    for s in range(0, N, chunk):
        cos = vn[:, s:s + chunk] @ vn.transpose(1, 2)                   # (nh, c, N)
        thr = cos_fac * cos.mean(dim=0).mean(dim=-1)                     # (c,)
        if not refine_neg_cos:
            thr = torch.where(thr < 0.0, torch.full_like(thr, 0.6), thr)
        thr = thr.clamp(max=0.9)
        w = torch.where(cos > thr[None, :, None], attn[:, s:s + chunk].float(), 0.0).mean(dim=0)
        out[s:s + chunk] = w / w.sum(dim=-1, keepdim=True)
    return out

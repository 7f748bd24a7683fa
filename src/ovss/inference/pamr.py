"""Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP/SCLIP/Trident apply it (spec §1.8)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifts(t: torch.Tensor, d: int, offsets=_OFFSETS):
    """Neighbour values of t (B, C, H, W) at offsets (a·d, b·d), replicate padding."""
    H, W = t.shape[-2:]
    p = F.pad(t, [d] * 4, mode="replicate")
    return [p[..., d + a * d:d + a * d + H, d + b * d:d + b * d + W] for a, b in offsets]


@torch.no_grad()
def pamr(image: torch.Tensor, mask: torch.Tensor, iters: int = 10, dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """image (B, 3, H, W) float, mask (B, Q, H, W) logits at the same size -> refined logits."""
    x = image.float()
    m = mask.float()
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=True)
    centre = [(0, 0)]
    # local standard deviation over the 3x3 neighbourhoods of all dilations (centre counted once per dilation)
    local = torch.stack([s for d in dilations for s in _shifts(x, d, _OFFSETS[:4] + centre + _OFFSETS[4:])], dim=2)
    std = local.std(dim=2, unbiased=True)                                        # (B, 3, H, W)
    neigh = torch.stack([s for d in dilations for s in _shifts(x, d)], dim=2)   # (B, 3, 8·nd, H, W)
    aff = -(x.unsqueeze(2) - neigh).abs() / (1e-8 + 0.1 * std.unsqueeze(2))
    aff = aff.mean(dim=1).softmax(dim=1)                                         # (B, 8·nd, H, W)
    for _ in range(iters):
        out = torch.zeros_like(m)
        n = 0
        for d in dilations:
            for s in _shifts(m, d):
                out.addcmul_(aff[:, n:n + 1], s)   # fused: no (B, Q, H, W) temporary per neighbour
                n += 1
        m = out
    return m

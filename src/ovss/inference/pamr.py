"""Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP/SCLIP/Trident apply it (spec §1.8)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
_WITH_CENTRE = _OFFSETS[:4] + [(0, 0)] + _OFFSETS[4:]


def _neighbours(t: torch.Tensor, dilations: Sequence[int], offsets=_OFFSETS) -> list[torch.Tensor]:
    """Views of t (B, C, H, W) shifted by (a·d, b·d) for every dilation d and offset, in that order, with replicate
    padding: one pad by the largest dilation serves all (replicate padding clamps the index)."""
    H, W = t.shape[-2:]
    P = max(dilations)
    p = F.pad(t, [P] * 4, mode="replicate")
    return [p[..., P + a * d:P + a * d + H, P + b * d:P + b * d + W] for d in dilations for a, b in offsets]


def _affinity(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Image (B, 3, H, W) -> neighbour weights (B, 8·len(dilations), H, W): softmax over the neighbours of
    -mean_c |x - x_n| / (1e-8 + 0.1·σ), σ the unbiased std over the 3x3 neighbourhoods of all dilations (the centre
    counted once per dilation)."""
    local = torch.stack(_neighbours(x, dilations, _WITH_CENTRE), dim=2)              # (B, 3, 9·nd, H, W)
    mean = local.mean(dim=2, keepdim=True)
    std = ((local - mean).square().sum(dim=2) / (local.shape[2] - 1)).sqrt()        # two-pass, unbiased
    neigh = torch.stack(_neighbours(x, dilations), dim=2)                            # (B, 3, 8·nd, H, W)
    aff = -(x.unsqueeze(2) - neigh).abs() / (1e-8 + 0.1 * std.unsqueeze(2))
    return aff.mean(dim=1).softmax(dim=1)


@torch.no_grad()
def pamr(image: torch.Tensor, mask: torch.Tensor, iters: int = 10, dilations: Sequence[int] = (8, 16),
         chunk: int = 4) -> torch.Tensor:
    """image (B, 3, H, W) float, mask (B, Q, H, W) logits at the same size -> refined logits.

    Each iteration replaces every mask value by the affinity-weighted sum of its 8·len(dilations) neighbours. The
    channels do not interact, so `chunk` channels at a time run all the iterations while they stay in cache."""
    x = image.float()
    m = mask.float()
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=True)
    aff = _affinity(x, dilations)
    weights = [aff[:, n:n + 1] for n in range(aff.shape[1])]
    out = torch.empty_like(m)
    for c in range(0, m.shape[1], chunk):
        mc = m[:, c:c + chunk]
        for _ in range(iters):
            shifted = _neighbours(mc, dilations)
            mc = torch.zeros_like(mc)
            for w, s in zip(weights, shifted):
                mc.addcmul_(w, s)   # fused: no (B, chunk, H, W) temporary per neighbour
        out[:, c:c + chunk] = mc
    return out

"""Mask class tokens (CorrCLIP's semantic branch, spec methods/corrclip.md §4.4-§4.5): extra query tokens that
run through CLIP's blocks next to the image tokens, each attending to the class token and the patches of one
region only, while the image tokens never attend to them (so the image path stays exactly vanilla CLIP).

Since no token attends to a mask token, the mask tokens are pure queries: every block computes its keys and
values from the image tokens alone, the image tokens attend among themselves (unmasked SDPA) and the mask
tokens attend to them through a boolean mask. One linear projection serves both token sets.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .clip import ClipBackbone


def region_token_mask(ranks: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Which image tokens each mask token sees: ranks (B, h*w) region index per patch in [0, n_tokens) ->
    (B, n_tokens, 1 + h*w) bool; token k sees the class token (column 0) and the patches with rank k. Tokens
    beyond a window's region count see only the class token (padding rows; their outputs are unused)."""
    k = torch.arange(n_tokens, device=ranks.device)
    patches = ranks[:, None, :] == k[None, :, None]
    cls = torch.ones(patches.shape[:2] + (1,), dtype=torch.bool, device=ranks.device)
    return torch.cat([cls, patches], dim=2)


def block_with_mask_tokens(clip: ClipBackbone, idx: int, x: torch.Tensor, mct: torch.Tensor,
                           mask: torch.Tensor, image_tokens: bool = True
                           ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """One full CLIP block (attention, residual, MLP) on image tokens x (B, T, D) and mask tokens mct (B, N, D)
    with `mask` (B, N, T) from :func:`region_token_mask`. Returns (x', mct'); x' = blk(x) exactly in maths.
    `image_tokens=False` skips the image tokens' own update (x' = None; their keys and values are still used)."""
    T = x.shape[1]
    q, k, v = clip.qkv(idx, torch.cat([x, mct], dim=1))
    k, v = k[:, :, :T], v[:, :, :T]
    o_m = F.scaled_dot_product_attention(q[:, :, T:], k, v, attn_mask=mask[:, None])
    if not image_tokens:
        return None, clip.residual_mlp(idx, mct, clip.attn_out(idx, o_m))
    o_x = F.scaled_dot_product_attention(q[:, :, :T], k, v)
    y = clip.residual_mlp(idx, torch.cat([x, mct], dim=1), clip.attn_out(idx, torch.cat([o_x, o_m], dim=2)))
    return y[:, :T], y[:, T:]

"""Attention maps gathered from intermediate CLIP blocks and mixed into the last block's attention (ResCLIP's
residual cross-correlation self-attention, RCS; spec methods/resclip.md §2 steps 2-5).

`blocks_with_maps` runs blocks unchanged but returns the vanilla attention maps softmax_r(s·QKᵀ) of the blocks it
is asked for; `residual_mix` blends such a map into another attention (rows then sum to τ, not 1).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from .attention import attention_probs
from .clip import ClipBackbone


def blocks_with_maps(clip: ClipBackbone, x: torch.Tensor, start: int, stop: int,
                     keep: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks start .. stop-1 unmodified on tokens x (B, T, D); for the blocks in `keep` the attention is computed
    explicitly and its per-head maps are returned: tokens (B, T, D), maps (len(keep), B, heads, T, T) in `keep`'s
    order of execution (ascending)."""
    keep = set(keep)
    if not keep <= set(range(start, stop)):
        raise ValueError(f"blocks {sorted(keep)} are not all in {start}..{stop - 1}")
    maps = []
    for idx in range(start, stop):
        if idx in keep:
            q, k, v = clip.qkv(idx, x)
            a = attention_probs(q, k)                       # (B, heads, T, T), rows sum to 1
            x = clip.residual_mlp(idx, x, clip.attn_out(idx, a @ v))
            maps.append(a)
        else:
            x = clip.blocks[idx](x)
    return x, torch.stack(maps)


def residual_mix(attn: torch.Tensor, extra: Optional[torch.Tensor], tau: float, lam: float) -> torch.Tensor:
    """τ·((1−λ)·attn + λ·extra) for attention weights (…, T, T); `extra` None returns attn unchanged.
    ResCLIP's RCS uses τ = 2, so the mixed rows sum to 2 (the value mix is doubled before out_proj)."""
    if extra is None:
        return attn
    return tau * ((1 - lam) * attn + lam * extra.to(attn.dtype))

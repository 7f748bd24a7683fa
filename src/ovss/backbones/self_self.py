"""Two-stream last blocks (GEM, CLIP Surgery) and GEM's iterated self-self attention.

GEM (WalBouss/GEM `gem_utils.py`) and CLIP Surgery (xmed-lab/CLIP_Surgery `clip_surgery_model.py`) both run the
last blocks of CLIP with two token streams: the **original** stream X (standard blocks) and a **new** stream G
that starts as the input of the first modified block. In every modified block the new attention reads
`U = LN1(X)` of the original stream; the new stream keeps its residual `G <- G + attn(U)` and has no MLP/LN2.

All softmax attentions go through `scaled_dot_product_attention` (batched, fused).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .clip import ClipBackbone

_sdpa = F.scaled_dot_product_attention

# attention of the new stream: (q, k, v, u) -> per-head output (B, heads, T, d); u = LN1 output (B, T, D)
NewAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def adaptive_temperature(u: torch.Tensor, head_dim: int) -> torch.Tensor:
    """GEM's default temperature: d^-1/2 · mean over tokens of ‖u_n‖₂ (all D channels, CLS included).
    u (B, T, D) -> (B,)."""
    return u.float().norm(dim=-1).mean(dim=1) * head_dim ** -0.5


def self_self(z: torch.Tensor, v: torch.Tensor, temp: Union[torch.Tensor, float], iters: int = 1) -> torch.Tensor:
    """One self-self branch: `iters` times z <- softmax(τ·ẑẑᵀ)·ẑ (ẑ = z with L2-normalised rows), then
    softmax(τ·ẑẑᵀ)·v with the final ẑ. z, v (B, heads, T, d); τ a float or one value per batch item (B,)."""
    t = temp.to(z.dtype).view(-1, 1, 1, 1) if torch.is_tensor(temp) else temp
    for _ in range(iters):
        zn = F.normalize(z, dim=-1)
        z = _sdpa(zn * t, zn, zn, scale=1.0)
    zn = F.normalize(z, dim=-1)
    return _sdpa(zn * t, zn, v, scale=1.0)


def gem_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temp: Union[torch.Tensor, float],
                  iters: int = 1) -> torch.Tensor:
    """GEM: mean of the v-v, k-k and q-q self-self branches, each assigning the original v.
    q, k, v (B, heads, T, d) -> (B, heads, T, d); the three branches run as one batched attention."""
    B = q.shape[0]
    t = temp.repeat(3) if torch.is_tensor(temp) else temp
    out = self_self(torch.cat([v, k, q]), v.repeat(3, 1, 1, 1), t, iters)
    return out.view(3, B, *out.shape[1:]).sum(0) / 3


def vv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP Surgery's new path: softmax(d^-1/2 · V Vᵀ)·V (no normalisation of V)."""
    return _sdpa(v, v, v)


def dual_stream(clip: ClipBackbone, x: torch.Tensor, start: int, attention: NewAttention,
                last_original: str = "none") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Blocks start..L-1 of CLIP on tokens x (B, T, D) (the input of block `start`) with the two streams.

    Per block: U = LN1(X); new stream G <- G + out_proj(attention(q, k, v, U)); original stream
    X <- X + out_proj(softmax(s·QKᵀ)V), X <- X + MLP(LN2(X)). Returns (G, X) after the last block, where X is
    None (`last_original="none"`: the last block's original output is not needed and not computed) or only its
    CLS row (B, 1, D) (`"cls"`: exact, every other step is per token)."""
    if last_original not in ("none", "cls"):
        raise ValueError(f"last_original must be 'none' or 'cls', not {last_original!r}")
    L = len(clip.blocks)
    g = x
    for idx in range(start, L):
        blk = clip.blocks[idx]
        u = blk.ln_1(x)
        q, k, v = clip.qkv(idx, u, normed=True)
        g = g + blk.ls_1(clip.attn_out(idx, attention(q, k, v, u)))
        if idx < L - 1:
            x = clip.residual_mlp(idx, x, clip.attn_out(idx, _sdpa(q, k, v)))
        elif last_original == "cls":
            x = clip.residual_mlp(idx, x[:, :1], clip.attn_out(idx, _sdpa(q[:, :, :1], k, v)))
        else:
            x = None
    return g, x

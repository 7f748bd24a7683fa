"""Last-block attention variants (spec §1.4) as small pure functions over per-head q, k, v of shape
(B, heads, T, d), and `last_block`, which runs the last CLIP block with one of them.

Every softmax attention goes through `scaled_dot_product_attention` (scale d^-1/2, an additive float bias where
the method has one): the same numbers as softmax(s·XYᵀ + bias)·V, fused.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .clip import ClipBackbone

_sdpa = F.scaled_dot_product_attention


def vanilla(q, k, v, bias=None):
    return _sdpa(q, k, v, attn_mask=bias)


def qq(q, k, v, bias=None):
    return _sdpa(q, q, v, attn_mask=bias)


def kk(q, k, v, bias=None):
    return _sdpa(k, k, v, attn_mask=bias)


def vv(q, k, v, bias=None):
    return _sdpa(v, v, v, attn_mask=bias)


def csa(q, k, v, bias=None):
    """SCLIP: softmax(sQQᵀ) + softmax(sKKᵀ), rows sum to 2 (not halved)."""
    return _sdpa(q, q, v) + _sdpa(k, k, v)


def qkv_sum(q, k, v, bias=None):
    """CLIPtrase: softmax(sQQᵀ) + softmax(sKKᵀ) + softmax(sVVᵀ), rows sum to 3."""
    return _sdpa(q, q, v) + _sdpa(k, k, v) + _sdpa(v, v, v)


def identity(q, k, v, bias=None):
    """MaskCLIP: no mixing of tokens."""
    return v


VARIANTS: dict[str, Callable] = {"vanilla": vanilla, "qq": qq, "kk": kk, "vv": vv, "csa": csa,
                                 "qkv_sum": qkv_sum, "identity": identity}


def attention_probs(x: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Explicit softmax_r(d^-1/2 · X Yᵀ + bias) (B, heads, T, T), for methods that read the maps."""
    s = x.shape[-1] ** -0.5
    logits = (x * s) @ y.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                       rows: int = 128) -> torch.Tensor:
    """softmax((q·s)·kᵀ)·v over (B, heads, T, d), the plain three-step arithmetic of timm's and DINO's non-fused
    path (not SDPA's), for methods whose output hangs on its last bit (CASS's tied head matching).

    Computed `rows` query rows at a time: each output row depends on its own query row only, so the values are
    those of the unchunked steps, while the (B, heads, rows, T) scores stay in cache (at DINO B/8's 1765 tokens
    about 2.5x faster on a CPU than scoring all rows at once)."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    q = q * s
    kt = k.transpose(-2, -1)
    if q.shape[-2] <= rows:
        return (q @ kt).softmax(dim=-1) @ v
    return torch.cat([(q[..., i:i + rows, :] @ kt).softmax(dim=-1) @ v for i in range(0, q.shape[-2], rows)], dim=-2)


def last_block(clip: ClipBackbone, x: torch.Tensor, attention: str | Callable = "vanilla", residual: bool = False,
               mlp: bool = False, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the last block on tokens `x` (B, T, D) with a replaced attention.

    residual=False, mlp=False is the "reduced" block (output = attention output only); residual=True keeps
    `x +`, mlp=True keeps the MLP branch (needs residual)."""
    idx = len(clip.blocks) - 1
    q, k, v = clip.qkv(idx, x)
    fn = VARIANTS[attention] if isinstance(attention, str) else attention
    a = clip.attn_out(idx, fn(q, k, v, bias))
    if mlp:
        return clip.residual_mlp(idx, x, a)
    if residual:
        return x + clip.blocks[idx].ls_1(a)
    return a

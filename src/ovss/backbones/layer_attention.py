"""Attention maps pooled over layers (ITACLIP, spec methods/itaclip.md §1): the last block's attention is a weighted
sum of its own map and the maps of some middle blocks, all applied to the last block's values.

The maps are never materialised: A·V with A = Σ_i w_i A_i is computed as Σ_i w_i (A_i V), each term one fused
`scaled_dot_product_attention` (the same numbers up to float rounding, T×T maps never stored).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from .attention import csa, vanilla
from .clip import ClipBackbone


def pooled_attention(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], v: torch.Tensor, weights: Sequence[float],
                     self_self: bool = True) -> torch.Tensor:
    """Σ_i w_i · A_i · V for per-head (q_i, k_i) pairs (B, heads, T, d) and values v (B, heads, T, d).

    self_self=True: A_i = softmax(s·Q_iQ_iᵀ) + softmax(s·K_iK_iᵀ) (rows sum to 2, SCLIP's CSA);
    self_self=False: A_i = softmax(s·Q_iK_iᵀ) (vanilla)."""
    fn = csa if self_self else vanilla
    out = None
    for (q, k), w in zip(pairs, weights, strict=True):
        term = fn(q, k, v) * w
        out = term if out is None else out + term
    return out


def check_layers(layers: Sequence[int], n_blocks: int) -> tuple[int, ...]:
    """Middle layers as a sorted tuple of distinct 0-based block indices below the last block."""
    out = tuple(sorted({int(i) for i in layers}))
    if not out or len(out) != len(tuple(layers)) or out[0] < 0 or out[-1] > n_blocks - 2:
        raise InputError(f"intermediate_layers={tuple(layers)}: give distinct 0-based block indices between 0 and "
                         f"{n_blocks - 2} (the last block, {n_blocks - 1}, always takes part)")
    return out


def layer_pooled_tokens(clip: ClipBackbone, x: torch.Tensor, layers: Sequence[int] = (6, 7, 9),
                        last_weight: float = 0.5, self_self: bool = True) -> torch.Tensor:
    """Tokens after `ln_pre` (B, T, D) -> tokens after the last block (B, T, D), ITACLIP's encoder.

    Blocks 0 .. L-2 run unchanged; for each block ℓ in `layers` the map A_ℓ is taken from its *input* (LN1, its own
    in-projection) before it runs. The last block is reduced to attention + residual (no MLP):
    x + out_proj(A·V_last), A = last_weight·A_last + (1 - last_weight)·mean_ℓ A_ℓ."""
    n = len(clip.blocks)
    layers = check_layers(layers, n)
    pairs = []
    for i in range(n - 1):
        if i in layers:
            q, k, _ = clip.qkv(i, x)
            pairs.append((q, k))
        x = clip.blocks[i](x)
    q, k, v = clip.qkv(n - 1, x)
    w_mid = (1.0 - last_weight) / len(pairs)
    a = pooled_attention([(q, k)] + pairs, v, [last_weight] + [w_mid] * len(pairs), self_self)
    return x + clip.blocks[n - 1].ls_1(clip.attn_out(n - 1, a))

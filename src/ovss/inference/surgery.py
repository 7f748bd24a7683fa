"""CLIP Surgery's feature surgery (redundant-feature removal across classes) and per-class min-max maps
(CLIP Surgery over the patch tokens, GEM over the up-sampled pixels)."""
from __future__ import annotations

from typing import Sequence, Union

import torch


def feature_surgery(feats: torch.Tensor, text: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """xmed-lab/CLIP_Surgery `clip_feature_surgery` without `redundant_feats`.

    feats (B, 1+N, E) L2-normalised image tokens (row 0 = CLS), text (K, E) L2-normalised -> (B, 1+N, K):
    w = softmax_K(temperature · cos(CLS, T)) / its mean over K; f_ikc = F_ic·T_kc·w_k; r_ic = mean_k f_ikc;
    sim_ik = Σ_c (f_ikc − r_ic) = w_k·cos_ik − mean_k' w_k'·cos_ik' (the (B, T, K, E) product is never built)."""
    cos = feats @ text.to(feats.dtype).T                       # (B, T, K)
    w = torch.softmax(temperature * cos[:, :1], dim=-1)        # (B, 1, K), from the CLS token
    wc = cos * (w / w.mean(dim=-1, keepdim=True))
    return wc - wc.mean(dim=-1, keepdim=True)


def minmax(x: torch.Tensor, dims: Union[int, Sequence[int]]) -> torch.Tensor:
    """(x − min) / (max − min) over `dims` (each class's map separately when dims are its pixels/tokens).
    A constant map (max = min) becomes 0 instead of NaN."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    lo = x.amin(dim=dims, keepdim=True)
    rng = x.amax(dim=dims, keepdim=True) - lo
    return (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))

"""Class probabilities from cosine logits (spec §1.7): softmax over all query strings of λ·cos, max over each
class's synonyms, SCLIP's area filter, the background threshold."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def class_log_probs(cos: torch.Tensor, query_to_class: Sequence[int], logit_scale: float,
                    mode: str = "max") -> torch.Tensor:
    """cos (Q, H, W) -> log P_c (K, H, W): log of the softmax over queries, reduced per class.

    mode "max": P_c = max over the class's queries (SCLIP, NACLIP, ClearCLIP, ProxyCLIP);
    mode "first": Trident's rule (only class 0 may have synonyms: max over the first Q-K+1 queries)."""
    logp = torch.log_softmax(cos.float() * logit_scale, dim=0)
    q2c = torch.as_tensor(query_to_class, device=cos.device)
    K = int(q2c.max()) + 1
    if K == logp.shape[0]:
        return logp
    if mode == "first":
        extra = logp.shape[0] - K
        return torch.cat([logp[:extra + 1].amax(0, keepdim=True), logp[extra + 1:]])
    out = torch.full((K,) + logp.shape[1:], float("-inf"), device=logp.device)
    idx = q2c.view(-1, *([1] * (logp.dim() - 1))).expand_as(logp)
    return out.scatter_reduce(0, idx, logp, reduce="amax", include_self=True)


def area_filter(logp: torch.Tensor, area_thd: Optional[float]) -> torch.Tensor:
    """SCLIP: zero (log -> -inf) every class c >= 1 whose argmax area is not above area_thd x the foreground
    area; class 0 is never dropped."""
    if area_thd is None:
        return logp
    K = logp.shape[0]
    area = torch.bincount(logp.argmax(0).flatten(), minlength=K)[1:].float()
    keep = area > area_thd * area.sum()
    out = logp.clone()
    out[1:][~keep] = float("-inf")
    return out


def threshold_labels(logp: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """argmax (first index on ties), and 0 (background) where the max probability is below prob_thd."""
    best, labels = logp.max(0)
    if prob_thd > 0:
        labels = torch.where(best.exp() < prob_thd, torch.zeros_like(labels), labels)
    return labels

"""SC-CLIP (Bai et al., 2024): outlier tokens (LOF) of the penultimate block replaced by their neighbours' mean,
mid-layer similarities to aggregate tokens before and after a reduced last block whose attention mixes that
similarity with k-k attention, and a multi-level fusion of intermediate blocks through the same path
(spec methods/scclip.md §2). SCLIP's protocol, probabilities and VOC21 area filter (§3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..inference.affinity import aggregate, cosine_affinity, map_kk_attention
from ..inference.outliers import lof_outliers, neighbour_mean_fill
from ..inference.splice import proxy_attention
from .dense import presets_table
from .sclip import ALL, SCLIP, SCLIPParams

BETA = 0.4            # affinity threshold (hard-coded in the official code)
MAP_GAMMA = 3.0       # factor of the mean-centred similarity map in the last attention
LOF_K, LOF_CONTAMINATION = 30, 0.05

# blocks -> (pre_adjust_idx, post_adjust_idx, multi_start_idx, multi_end_idx, res_cls): ViT-B/16 from the
# official configs; ViT-L/14 from the first commit's base_config.py comments (74471da)
DEPTH_DEFAULTS = {12: (8, 3, 3, 10, 0.3), 24: (16, 6, 8, 19, 0.1)}


@dataclass
class SCCLIPParams(SCLIPParams):
    pre_adjust_idx: Optional[int] = None    # block whose output gives the pre-attention similarity (ViT-B: 8)
    post_adjust_idx: Optional[int] = None   # block whose output gives the post-attention similarity (ViT-B: 3)
    multi_start_idx: Optional[int] = None   # multi-level fusion sums block outputs start .. end-1 (ViT-B: 3 .. 9)
    multi_end_idx: Optional[int] = None
    res_cls: Optional[float] = None         # weight of the CLS token added back to every token (ViT-B: 0.3)
    # None = the official value for this CLIP's depth (12 or 24 blocks; other depths: scaled by depth / 12)


PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"cityscapes": 560},
    slide={b: (224, 112) for b in ALL},
    scale={"*": 40.0, "voc21": 50.0, "coco_object": 55.0},
    thd={"voc21": 0.15, "context60": 0.15, "coco_object": 0.35},
    files=("sclip_naclip", "sclip"))
PRESETS["voc21"]["area_thd"] = 0.1


def depth_settings(p: SCCLIPParams, layers: int) -> tuple[int, int, int, int, float]:
    """(pre, post, multi_start, multi_end, res_cls) for a CLIP of `layers` blocks, user values first; checked
    against the blocks that exist (outputs of blocks 0 .. layers-2)."""
    base = DEPTH_DEFAULTS.get(layers)
    if base is None:
        r = layers / 12
        base = (min(round(8 * r), layers - 2), min(round(3 * r), layers - 2), min(round(3 * r), layers - 2),
                min(max(round(10 * r), round(3 * r) + 1), layers - 1), 0.3)
    given = (p.pre_adjust_idx, p.post_adjust_idx, p.multi_start_idx, p.multi_end_idx, p.res_cls)
    pre, post, start, end, res = (b if g is None else g for g, b in zip(given, base))
    last = layers - 2
    if not (0 <= pre <= last and 0 <= post <= last):
        raise InputError(f"pre_adjust_idx={pre}, post_adjust_idx={post}: this CLIP has {layers} blocks, the "
                         f"indices must lie in 0..{last} (outputs of the blocks before the last)")
    if not 0 <= start < end <= last + 1:
        raise InputError(f"multi_start_idx={start}, multi_end_idx={end}: need 0 <= start < end <= {last + 1} "
                         f"for a CLIP with {layers} blocks")
    return int(pre), int(post), int(start), int(end), float(res)


class SCCLIP(SCLIP):
    name = "scclip"
    paper = "Bai et al., Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation, arXiv 2411.15869"
    repo = "SuleBai/SC-CLIP"
    summary = ("LOF outlier tokens replaced by neighbours, mid-layer similarity aggregation, "
               "similarity + k-k last attention, multi-level fusion")
    Params = SCCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0)

    def __init__(self, params, models, classes):
        super().__init__(params, models, classes)
        self.depth = depth_settings(params, len(self.clip.blocks))

    def last_attention(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Reduced last block on patch tokens x (B, N, D): LN1, ½(P + softmax(sKKᵀ))·V, out_proj (no residual,
        no MLP); `probs` (B, N, N) the similarity softmax shared by the heads."""
        idx = len(self.clip.blocks) - 1
        q, k, v = self.clip.qkv(idx, x)
        return self.clip.attn_out(idx, map_kk_attention(q, k, v, probs))

    def patch_features(self, x):
        clip = self.clip
        pre, post, start, end, res_cls = self.depth
        t, h, w = clip.embed(x, pe="A")
        zs = []                                              # outputs Z_0 .. Z_{L-2}, each (B, 1+N, D)
        for b in range(len(clip.blocks) - 1):
            t = clip.run_blocks(t, b, b + 1)
            zs.append(t)
        B, D = t.shape[0], t.shape[-1]
        outliers = lof_outliers(t[:, 1:], LOF_K, LOF_CONTAMINATION).view(B, h, w)

        def grid(tokens):                                    # (B, N, D) -> (B, D, h, w)
            return tokens.transpose(1, 2).reshape(B, D, h, w)

        def fill(tokens):                                    # outliers -> neighbours' mean, (B, N, D)
            return neighbour_mean_fill(grid(tokens), outliers).flatten(2).transpose(1, 2)

        mid_map = neighbour_mean_fill(grid(zs[pre][:, 1:]), outliers)
        mid = cosine_affinity(mid_map.flatten(2).transpose(1, 2))                       # M (B, N, N)
        probs = proxy_attention(mid_map, beta=1.0, gamma=MAP_GAMMA).to(t.dtype)        # softmax(3(M − mean M))
        x1 = aggregate(fill(t[:, 1:]), mid.masked_fill(mid < BETA, 0.0))
        x2 = self.last_attention(x1, probs) + res_cls * t[:, :1]
        post_aff = cosine_affinity(zs[post][:, 1:], BETA)
        x3 = aggregate(x2, post_aff)
        r = sum(zs[start:end])
        r2 = aggregate(self.last_attention(r[:, 1:], probs) + res_cls * r[:, :1], post_aff)
        return clip.head(x3 + r2), h, w


METHODS = {"scclip": SCCLIP}

"""ResCLIP (Yang et al., CVPR 2025) on NACLIP: the last block's k-k + neighbourhood attention is mixed with the
mean attention maps of blocks 5-8 (RCS) and, through a first-pass segmentation, with a same-category patch matrix
(SFR); reduced last block, NACLIP's windows and probabilities (spec methods/resclip.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..backbones.attention_maps import blocks_with_maps, residual_mix
from ..errors import InputError
from ..inference.feedback import feedback_matrix, mix_feedback, patch_categories
from ..inference.pamr import pamr
from .dense import DenseMethod, presets_table
from .naclip import ALL, NACLIPParams, neighbourhood_bias

FIRST_PASS_PAMR = (10, (8, 16))   # hard-coded in the official first pass, independent of pamr_steps


@dataclass
class ResCLIPParams(NACLIPParams):
    pamr_steps: int = 0                          # outer PAMR off (the official constructor default)
    temp_thd: Optional[float] = None             # SFR: first-pass pixels below this max probability vote category 0
    attn_rcs_weights: Optional[tuple] = None     # RCS (τ, λ): τ·((1−λ)·attention + λ·mean maps of rcs_layers)
    attn_sfr_weights: Optional[tuple] = None     # SFR (τ, λ): τ·((1−λ)·logits + λ·SFR matrix)
    delete_same_entity: bool = False             # SFR distance decay where the straight path leaves the category
    use_rcs: bool = True                         # (the official constructor cannot switch these off: 1-tuples)
    use_sfr: bool = True
    rcs_layers: tuple = (5, 6, 7, 8)             # 0-based blocks whose vanilla attention maps RCS averages


_TEMP = {"voc21": 0.5, "voc20": 0.1, "context60": 0.3, "context59": 0.25, "coco_object": 0.11,
         "coco_stuff": 0.11, "cityscapes": 0.1, "ade20k": 0.25}
_RCS = {"voc20": (2.0, 0.6), "context59": (2.0, 0.4), "coco_object": (2.0, 0.4), "coco_stuff": (2.0, 0.4),
        "cityscapes": (2.0, 0.2)}
_SFR = {"voc21": (2.2, 0.7), "voc20": (2.1, 0.6), "cityscapes": (2.1, 0.6), "ade20k": (2.1, 0.7)}

PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"cityscapes": 560},
    slide={b: (224, 112) for b in ALL} | {"voc21": (0, 112), "voc20": (0, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.1, "context60": 0.1, "coco_object": 0.1},
    files=("sclip_naclip", "sclip"), delete_same_entity=True)
for _b, _v in PRESETS.items():
    _v.update(temp_thd=_TEMP[_b], attn_rcs_weights=_RCS.get(_b, (2.0, 0.3)), attn_sfr_weights=_SFR.get(_b, (1.8, 0.7)))


class ResCLIP(DenseMethod):
    name = "resclip"
    paper = "Yang et al., ResCLIP: Residual Attention for Training-free Dense Vision-language Inference, CVPR 2025"
    repo = "yvhangyang/ResCLIP"
    summary = "NACLIP + mid-layer attention maps (RCS) + first-pass same-category feedback (SFR)"
    Params = ResCLIPParams
    PRESETS = PRESETS
    # preset=None: the ADE20K setting (the most open vocabulary of the configs), windows 224/112
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0, temp_thd=0.25,
                          attn_rcs_weights=(2.0, 0.3), attn_sfr_weights=(2.1, 0.7), delete_same_entity=True)

    def __init__(self, params: ResCLIPParams, models, classes):
        super().__init__(params, models, classes)
        p = params
        for key in ("attn_rcs_weights", "attn_sfr_weights"):
            val = getattr(p, key)
            if val is not None and (len(tuple(val)) != 2 or not all(isinstance(v, (int, float)) for v in val)):
                raise InputError(f"resclip: {key} must be a pair (tau, lambda) of numbers, got {val!r}")
        if p.use_rcs and p.attn_rcs_weights is None:
            raise InputError("resclip: use_rcs needs attn_rcs_weights=(tau, lambda), e.g. (2.0, 0.3)")
        if p.use_sfr and (p.temp_thd is None or p.attn_sfr_weights is None):
            raise InputError("resclip: use_sfr needs temp_thd (e.g. 0.25) and attn_sfr_weights=(tau, lambda), "
                             "e.g. (2.1, 0.7)")
        n = len(self.clip.blocks)
        if p.use_rcs and (not p.rcs_layers or not all(0 <= int(b) < n - 1 for b in p.rcs_layers)):
            raise InputError(f"resclip: rcs_layers {tuple(p.rcs_layers)} must be blocks 0..{n - 2} of this CLIP "
                             f"({n} blocks; the last one is replaced)")

    def _last_attention(self, v: torch.Tensor, logits: torch.Tensor, rcs: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention logits (B, heads, T, T) (already with Ω) -> joint-space features of all tokens (B, T, E):
        softmax, RCS mix, values, out_proj; reduced block (no residual, no MLP)."""
        idx = len(self.clip.blocks) - 1
        attn = logits.softmax(dim=-1)
        if rcs is not None:
            attn = residual_mix(attn, rcs, *self.params.attn_rcs_weights)
        return self.clip.head(self.clip.attn_out(idx, attn @ v))

    def _feedback(self, x: torch.Tensor, feats: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """SFR matrix (B, T, T) from the first-pass features (B, T, E) of the windows x (B, 3, H, W): cosine
        logits bilinear to the window size, PAMR 10 × (8, 16) guided by x, softmax over the queries, patch
        categories (query indices), then the same-category matrix."""
        p = self.params
        cos = self.features_cosine(feats[:, 1:], h, w).float()
        cos = F.interpolate(cos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cos = pamr(x, cos, *FIRST_PASS_PAMR)
        probs = torch.softmax(cos * p.logit_scale, dim=1)
        cat = patch_categories(probs, float(p.temp_thd), self.clip.info.patch)
        return feedback_matrix(cat, float(p.gaussian_std), decay=p.delete_same_entity)

    def patch_features(self, x):
        p = self.params
        clip = self.clip
        last = len(clip.blocks) - 1
        t, h, w = clip.embed(x, pe="A")
        rcs = None
        if p.use_rcs:
            t, maps = blocks_with_maps(clip, t, 0, last, sorted(int(b) for b in p.rcs_layers))
            rcs = maps.mean(dim=0)                                   # (B, heads, T, T)
        else:
            t = clip.run_blocks(t, 0, last)
        _, k, v = clip.qkv(last, t)
        kk = (k @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5         # (B, heads, T, T)
        omega = neighbourhood_bias(h, w, float(p.gaussian_std)).to(kk.device, kk.dtype)
        if p.use_sfr:
            fb = self._feedback(x, self._last_attention(v, kk + omega, rcs), h, w)
            kk = mix_feedback(kk, fb.to(kk.device), *p.attn_sfr_weights)
        return self._last_attention(v, kk + omega, rcs)[:, 1:], h, w


METHODS = {"resclip": ResCLIP}

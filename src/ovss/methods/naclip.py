"""NACLIP (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood bias, reduced last block,
PAMR post-processing on by default as in the official code (spec §2.5)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .dense import DenseMethod, DenseParams, presets_table

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")


@dataclass
class NACLIPParams(DenseParams):
    gaussian_std: float = 5.0
    pamr_steps: int = 10
    whole_double_resize: bool = True


@lru_cache(maxsize=32)
def neighbourhood_bias(h: int, w: int, std: float) -> torch.Tensor:
    """Ω (1+N, 1+N): exp(-|Δ|²/(2σ²)) between patches (row-major grid), unnormalised, 0 on the CLS row/column."""
    r = torch.arange(h).repeat_interleave(w).float()
    c = torch.arange(w).repeat(h).float()
    d2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
    omega = torch.zeros(h * w + 1, h * w + 1)
    omega[1:, 1:] = torch.exp(-d2 / (2 * std * std))
    return omega


PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"cityscapes": 560},
    slide={b: (224, 112) for b in ALL} | {"voc21": (0, 112), "voc20": (0, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.1, "context60": 0.1, "coco_object": 0.1},
    files=("sclip_naclip", "sclip"))


class NACLIP(DenseMethod):
    name = "naclip"
    paper = "Hajimiri et al., Pay Attention to Your Neighbours: Training-Free Open-Vocabulary Semantic Segmentation, WACV 2025"
    repo = "sinahmr/NACLIP"
    summary = "k-k attention + Gaussian neighbourhood, reduced last block, PAMR"
    Params = NACLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0)

    def patch_features(self, x):
        def bias(h, w, t):
            return neighbourhood_bias(h, w, float(self.params.gaussian_std)).to(t.device, t.dtype)
        return self.clip_features(x, "kk", residual=False, mlp=False, bias_fn=bias)


METHODS = {"naclip": NACLIP}

"""SCLIP (Wang et al., ECCV 2024): correlative self-attention softmax(sQQᵀ) + softmax(sKKᵀ) in the last block,
residual and MLP kept; SCLIP's area filter on VOC21 (spec §2.3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..inference.probs import area_filter
from .dense import DenseMethod, DenseParams, presets_table

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")


@dataclass
class SCLIPParams(DenseParams):
    area_thd: Optional[float] = None   # drop classes whose argmax area is not above this share of the foreground


PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"coco_stuff": 448, "cityscapes": 560},
    slide={b: (224, 112) for b in ALL},
    scale={"*": 40.0, "voc21": 65.0, "context60": 50.0, "coco_object": 50.0},
    thd={"voc21": 0.1, "context60": 0.1, "coco_object": 0.1},
    files=("sclip_naclip", "sclip"))
PRESETS["voc21"]["area_thd"] = 0.1


class SCLIP(DenseMethod):
    name = "sclip"
    paper = "Wang et al., SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference, ECCV 2024"
    repo = "wangf3014/SCLIP"
    summary = "correlative self-attention (q-q + k-k) in the last block, residual + FFN kept"
    Params = SCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0)

    def patch_features(self, x):
        return self.clip_features(x, "csa", residual=True, mlp=True)

    def class_scores(self, cos):
        return area_filter(super().class_scores(cos), self.params.area_thd)


METHODS = {"sclip": SCLIP}

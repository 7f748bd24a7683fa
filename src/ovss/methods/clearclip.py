"""ClearCLIP (Lan et al., ECCV 2024): q-q attention in a reduced last block (no residual, no FFN), spec §2.4."""
from __future__ import annotations

from dataclasses import dataclass

from .dense import DenseMethod, DenseParams, official_classes, presets_table

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")


@dataclass
class ClearCLIPParams(DenseParams):
    attention: str = "qq"          # the repo's model_type: ClearCLIP = q-q; "vanilla" (q-k) is its ablation
    residual: bool = False         # ignore_residual=False keeps residual + FFN (ablation)


PRESETS = presets_table(
    short={b: 448 for b in ALL},
    slide={b: (448, 224) for b in ALL} | {"cityscapes": (224, 224)},
    scale={"*": 50.0}, thd={"voc21": 0.5, "context60": 0.15, "coco_object": 0.4},
    files=("sclip_naclip", "clearclip"), pad_multiple=16)
PRESETS["voc21"]["classes_file"] = official_classes("clearclip", "voc21")


class ClearCLIP(DenseMethod):
    name = "clearclip"
    paper = "Lan et al., ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language Inference, ECCV 2024"
    repo = "mc-lan/ClearCLIP"
    summary = "q-q attention, residual and FFN removed in the last block"
    Params = ClearCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=448, slide_crop=448, slide_stride=224, logit_scale=50.0, pad_multiple=16)

    def patch_features(self, x):
        p = self.params
        return self.clip_features(x, p.attention, residual=p.residual, mlp=p.residual)


METHODS = {"clearclip": ClearCLIP}

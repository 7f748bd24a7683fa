"""CLIP baseline: unmodified CLIP, patch tokens (CLS dropped) through ln_post and proj (spec §2.1), under
ProxyCLIP's protocol (the code path of mc-lan/ProxyCLIP without a VFM)."""
from __future__ import annotations

from .dense import DenseMethod, DenseParams, presets_table

# protocols.md §3: the CLIP column (ProxyCLIP's configs with the CLIP-specific prob_thd values)
PRESETS = presets_table(
    short={"voc21": 336, "voc20": 336, "context60": 336, "context59": 336, "coco_object": 336, "coco_stuff": 336,
           "cityscapes": 448, "ade20k": 448, "context459": 448, "ade847": 448},
    slide={b: (336, 112) for b in ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff",
                                   "ade20k", "context459", "ade847")} | {"cityscapes": (224, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.1, "context60": 0.05, "coco_object": 0.1},
    files=("proxyclip_trident", "proxyclip"), pad_multiple=56)


class ClipBaseline(DenseMethod):
    name = "clip"
    paper = "Radford et al., ICML 2021 (CLIP); dense baseline as in ProxyCLIP, ECCV 2024"
    repo = "mc-lan/ProxyCLIP (no VFM)"
    summary = "plain CLIP patch tokens, full last block"
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=336, slide_stride=112, logit_scale=40.0, pad_multiple=56)

    def patch_features(self, x):
        return self.clip_features(x, "vanilla", residual=True, mlp=True)


METHODS = {"clip": ClipBaseline}

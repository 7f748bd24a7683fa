"""ProxyCLIP (Lan et al., ECCV 2024): the last CLIP block attends with a proxy attention computed from a
vision foundation model's features (spec §2.7, protocols §3.5).

Per window (zero-padded, centred, to a multiple of 56): the VFM sees the window re-normalised for ImageNet;
its L2-normalised patch tokens give ``Attn_p = softmax_r(γ(Sim − β·mean Sim))`` with negatives masked
(mean over the window); CLIP's last block is reduced to ``Attn_p · V`` on the values resized to the VFM
grid, then ``out_proj``, ``ln_post``, ``proj``. The windows of an image all have the same size and go
through CLIP and the VFM as one batch; the mean stays per window.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..inference.splice import proxy_attention, proxy_last_block, to_imagenet
from .dense import DenseMethod, DenseParams, presets_table

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k",
       "context459", "ade847")


@dataclass
class ProxyCLIPParams(DenseParams):
    beta: float = 1.2
    gamma: float = 3.0
    vfm: str = "dino_vitb8"        # used when the Segmenter gets no vfm=


PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"cityscapes": 448, "ade20k": 448, "context459": 448, "ade847": 448},
    slide={b: (336, 112) for b in ALL} | {"cityscapes": (224, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.2, "context60": 0.15, "coco_object": 0.25},
    files=("proxyclip_trident", "proxyclip"), pad_multiple=56)


class ProxyCLIP(DenseMethod):
    name = "proxyclip"
    needs = ("clip", "vfm")
    paper = "Lan et al., ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary Segmentation, ECCV 2024"
    repo = "mc-lan/ProxyCLIP"
    summary = "last CLIP block attends with a proxy attention from DINO/DINOv2/SAM/MAE features"
    Params = ProxyCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=336, slide_stride=112, logit_scale=40.0, pad_multiple=56)

    def __init__(self, params, models, classes):
        super().__init__(params, models, classes)
        self.vfm = models.vfm

    def vfm_features(self, x):
        """VFM features (B, C, I, J) of CLIP-normalised windows; MAE sees them resized to the crop size."""
        size = self.params.slide_crop or None
        return self.vfm.features(to_imagenet(x.float()).to(x.dtype), size=size)

    def patch_features(self, x):
        p = self.params
        feats = self.vfm_features(x)
        I, J = feats.shape[-2:]
        attn = proxy_attention(feats, p.beta, p.gamma, joint=False)
        out = proxy_last_block(self.clip, x, attn, (I, J))
        return self.clip.head(out), I, J


METHODS = {"proxyclip": ProxyCLIP}

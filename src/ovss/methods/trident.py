"""Trident (Shi et al., ICCV 2025): splice-then-segment with CLIP + DINO + SAM (spec §2.8, protocols §3.6).

A. SAM (once per image; two halves for Cityscapes) on the original image with each side rounded up to a
   multiple of the CLIP patch: last-block attention probabilities and values on the valid grid;
B. the network input adjusted to multiples of the patch (at least one crop), all windows batched through
   DINO (ImageNet re-normalised) and CLIP; the proxy attention's mean is taken over all windows jointly;
   the reduced last CLIP block gives per-window maps that are spliced into one canvas;
C. the canvas, resized to SAM's grid, is aggregated with SAM's affinity (value-cosine masked, head-averaged,
   row-normalised attention), then ``ln_post``, ``proj``, cosine with the text, bilinear to the original size;
D. optional SAM refinement of the coarse labels (:mod:`ovss.inference.sam_refine`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..images import LoadedImage
from ..inference.sam_refine import sam_refine
from ..inference.splice import proxy_attention, proxy_last_block, sam_affinity, splice, to_imagenet
from ..inference.window import gather_windows, window_boxes
from .base import Prediction
from .dense import DenseMethod, official_classes
from .proxyclip import ProxyCLIPParams

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k",
       "context459", "ade847")


@dataclass
class TridentParams(ProxyCLIPParams):   # beta, gamma: ProxyCLIP's proxy attention
    cos_fac: float = 1.2              # SAM affinity: row threshold = cos_fac x mean cosine (capped at 0.9)
    refine_neg_cos: bool = True       # False: a negative threshold becomes 0.6
    sam_halves: bool = False          # Cityscapes: SAM on the left and right halves
    sam_refinement: bool = True       # SAM refinement of the coarse labels (the paper's numbers use it)
    coarse_thresh: float = 0.10
    minimal_area: int = 225
    sam_mask_coff: float = 0.005
    sam_iou_thresh: float = 0.9
    affinity_chunk: int = 1024        # rows of the SAM affinity computed at once (memory bound)
    vfm: str = "dino_vitb16"          # used when the Segmenter gets no vfm= (the official code hard-codes it)


# protocols.md §3.6: (short side, stride, prob_thd, coarse_thresh, cos_fac, refine_neg_cos)
_TABLE = {
    "voc21": (448, 224, 0.2, 0.2, 1.2, True), "voc20": (336, 112, 0.0, 0.2, 0.0, True),
    "context60": (576, 224, 0.15, 0.15, 1.2, True), "context59": (576, 224, 0.0, 0.15, 1.2, True),
    "coco_object": (448, 224, 0.25, 0.25, 1.2, True), "coco_stuff": (448, 224, 0.0, 0.05, 1.2, True),
    "cityscapes": (688, 224, 0.0, 0.10, 3.0, False), "ade20k": (576, 224, 0.0, 0.05, 1.2, False),
    "context459": (448, 224, 0.0, 0.2, 1.2, True), "ade847": (448, 224, 0.0, 0.2, 1.2, True),
}
_COMMON = dict(slide_crop=336, logit_scale=40.0, beta=1.2, gamma=3.0, sam_iou_thresh=0.8, minimal_area=225,
               sam_mask_coff=0.005, sam_refinement=True, synonym_rule="first", class_format="proxyclip")
PRESETS = {b: dict(_COMMON, short_side=s, slide_stride=t, prob_thd=thd, coarse_thresh=ct, cos_fac=cf,
                   refine_neg_cos=neg, sam_halves=(b == "cityscapes"),
                   classes_file=official_classes("proxyclip_trident", b))
           for b, (s, t, thd, ct, cf, neg) in _TABLE.items()}


def adjust_input(x: torch.Tensor, patch: int, crop: int) -> torch.Tensor:
    """§2.8 step 6: both sides to multiples of `patch` and at least `crop` (bilinear), long side first."""
    H, W = x.shape[-2:]
    if H % patch == 0 and W % patch == 0 and min(H, W) >= crop:
        return x
    long = max(H, W)
    long2 = -(-long // patch) * patch
    h1, w1 = int(H * long2 / long), int(W * long2 / long)
    h1, w1 = max(-(-h1 // patch) * patch, crop), max(-(-w1 // patch) * patch, crop)
    return F.interpolate(x, (h1, w1), mode="bilinear", align_corners=False)


def sam_input(rgb: np.ndarray, patch: int) -> np.ndarray:
    """The original RGB image with each side rounded up to a multiple of `patch` (OpenCV bilinear)."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (-(-w // patch) * patch, -(-h // patch) * patch), interpolation=cv2.INTER_LINEAR)


class Trident(DenseMethod):
    name = "trident"
    needs = ("clip", "vfm", "sam")
    paper = "Shi et al., Harnessing Vision Foundation Models for High-Performance, Training-Free Open Vocabulary " \
            "Segmentation (Trident), ICCV 2025"
    repo = "YuHengsss/Trident"
    summary = "CLIP + DINO proxy attention on batched windows, spliced, aggregated by SAM attention; SAM refinement"
    Params = TridentParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(_COMMON, short_side=448, slide_stride=224, coarse_thresh=0.2, class_format="ovss",
                          synonym_rule="max")

    def __init__(self, params, models, classes):
        super().__init__(params, models, classes)
        self.vfm = models.vfm
        self.sam = models.sam

    # ------------------------------------------------------------------ A. SAM
    def sam_states(self, rgb: np.ndarray):
        """SAM states whose attention aggregates the canvas (one, or two halves), and the full-image state
        for the refinement (None when not needed)."""
        img = sam_input(rgb, self.clip.info.patch)
        refine = self.params.sam_refinement
        if self.params.sam_halves:
            half = img.shape[1] // 2
            parts = [self.sam.set_image(np.ascontiguousarray(img[:, :half]), with_features=False),
                     self.sam.set_image(np.ascontiguousarray(img[:, half:]), with_features=False)]
            full = self.sam.set_image(img, with_attention=False) if refine else None
            return parts, full
        st = self.sam.set_image(img, with_features=refine)     # the neck only feeds the refinement
        return [st], st

    # ------------------------------------------------------------------ B. windows -> canvas
    def canvas(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (1, 3, H, W) -> spliced last-block canvas (D, Hg·r, Wg·r) (before ``ln_post``)."""
        p = self.params
        patch = self.clip.info.patch
        crop = p.slide_crop
        x = adjust_input(x, patch, crop)
        Hp, Wp = x.shape[-2:]
        boxes = window_boxes(Hp, Wp, crop, p.slide_stride)
        win = gather_windows(x[0], boxes)                                   # (n, 3, c, c)
        feats = self.vfm.features(to_imagenet(win.float()).to(win.dtype))   # (n, C, I, J)
        I, J = feats.shape[-2:]
        attn = proxy_attention(feats, p.beta, p.gamma, joint=True)
        maps = [proxy_last_block(self.clip, win[i:i + p.window_batch], attn[i:i + p.window_batch], (I, J),
                                 drop_cls=True) for i in range(0, len(win), p.window_batch)]
        maps = torch.cat(maps).transpose(1, 2).reshape(len(win), -1, I, J)  # (n, D, I, J)
        g = crop // patch                                                   # CLIP grid of a window
        if J % g:
            r = int(round(I / g))
            maps = F.interpolate(maps, (g * r, g * r), mode="bilinear", align_corners=False)
        else:
            r = J // g
        return splice(maps.float(), (boxes // patch) * r, (Hp // patch * r, Wp // patch * r))

    # ------------------------------------------------------------------ C. aggregation
    def aggregate(self, canvas: torch.Tensor, states) -> torch.Tensor:
        """Canvas (D, h, w) + SAM states -> cosine logits on the SAM grid(s) (Q, vh, sum of vw)."""
        p = self.params
        parts = [canvas] if len(states) == 1 else [canvas[:, :, :canvas.shape[-1] // 2],
                                                   canvas[:, :, canvas.shape[-1] // 2:]]
        outs = []
        for part, st in zip(parts, states):
            vh, vw = st.valid_grid
            f = F.interpolate(part[None], (vh, vw), mode="bilinear", align_corners=False)[0]
            A = sam_affinity(st.attn, st.v, p.cos_fac, p.refine_neg_cos, p.affinity_chunk)
            f = A @ f.reshape(f.shape[0], -1).T                              # (Nv, D)
            f = self.clip.head(f.to(self.clip.dtype)).float()
            f = f / f.norm(dim=-1, keepdim=True)
            outs.append((f @ self.text.float().T).T.reshape(-1, vh, vw))
        return torch.cat(outs, dim=-1)

    def probabilities(self, cos: torch.Tensor) -> torch.Tensor:
        """Softmax over queries of λ·cos, reduced per class. Trident's rule ("first": class 0 = max over the first
        Q−C+1 queries, the others one query each) where it applies; the max over each class's synonyms otherwise
        (the same numbers whenever only class 0 has synonyms)."""
        P = torch.softmax(cos * self.params.logit_scale, dim=0)
        q2c = torch.as_tensor(self.classes.query_to_class, device=P.device)
        C = len(self.classes)
        if P.shape[0] == C:
            return P
        extra = P.shape[0] - C
        if self.params.synonym_rule == "first" and bool((q2c[extra:] == torch.arange(C, device=P.device)).all()):
            return torch.cat([P[:extra + 1].amax(0, keepdim=True), P[extra + 1:]])
        out = torch.zeros((C,) + P.shape[1:], dtype=P.dtype, device=P.device)
        return out.scatter_reduce(0, q2c.view(-1, 1, 1).expand_as(P), P, "amax", include_self=False)

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        p = self.params
        states, full = self.sam_states(image.rgb)
        x = self.preprocess(image)
        cos = self.aggregate(self.canvas(x), states)
        cos = F.interpolate(cos[None], image.size, mode="bilinear", align_corners=False)[0]
        if p.pamr_steps > 0:
            from ..inference.pamr import pamr
            img = F.interpolate(x.float(), size=image.size, mode="bilinear", align_corners=False)
            cos = pamr(img, cos[None], p.pamr_steps, p.pamr_dilations)[0]
        P = self.probabilities(cos)
        logp = P.log()
        best, labels = P.max(0)                                  # first index on ties
        if p.prob_thd > 0:
            labels = torch.where(best < p.prob_thd, torch.zeros_like(labels), labels)
        extras = {}
        if p.sam_refinement:
            labels, scores = sam_refine(self.sam, full, labels, P, p.coarse_thresh, p.minimal_area,
                                        p.sam_mask_coff, p.sam_iou_thresh)
            # logits whose argmax is the refined label map: refined scores where a mask covers the pixel,
            # else the probabilities with background raised to the maximum where prob_thd sent it there
            covered = scores.sum(0) > 0
            coarse = P.clone()
            forced = (labels == 0) & (P.argmax(0) != 0) & ~covered
            coarse[0] = torch.where(forced, P.max(0).values, P[0])
            logp = torch.where(covered[None], scores, coarse).log()
            extras["refined_scores"] = scores.cpu()
        return Prediction(logits=logp.float().cpu(), labels=labels.cpu(), extras=extras)


METHODS = {"trident": Trident}

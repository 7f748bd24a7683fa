"""CLIP Surgery (Li et al., Pattern Recognition 2025 / arXiv 2304.05653; xmed-lab/CLIP_Surgery): architecture
surgery (a v-v attention stream over the last 6 blocks, residual kept, no FFN) and feature surgery (the class-
weighted mean over the label set removed as redundant feature), spec methods/clip_surgery.md.

Pipeline (the demo's fixed-label-set block at its 512 "higher resolution"): PIL bicubic warp to 512 x 512; positional
embedding bilinearly resized to the grid; blocks 0..5 standard; blocks 6..11 two streams (backbones.self_self), the
CLS row of the output taken from the original stream; `ln_post`·`proj`, L2 normalisation; feature surgery with the
85-template text features; per-class min-max over the patch tokens; bilinear to the image size.

The official output is one min-max map per class, not a probability. `predict_logits` returns log of the maps
renormalised over classes (log M_c − log Σ_k M_k; maps at 0 become the smallest float32 instead of −inf), so the
softmax is M / ΣM and `prob_thd` acts on that share. The repository has no evaluation code or configs: every preset
is the demo's settings. The official in-place positional-embedding write-back only matters when the grid changes
between images, which a fixed `image_size` excludes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbones.self_self import dual_stream, vv_attention
from ..inference.probs import class_log_probs
from ..inference.surgery import feature_surgery, minmax
from .warped import WarpedMethod, WarpParams, warp_presets


@dataclass
class CLIPSurgeryParams(WarpParams):
    image_size: int = 512                # the demo's 512 x 512 (224 is the loader's own transform)
    templates: str = "clip_surgery"      # 80 ImageNet templates + 5 "... in the scene." ones
    surgery_blocks: int = 6              # the last blocks that get the v-v stream (official range(1, 7))
    surgery_temperature: float = 2.0     # softmax factor of the CLS class weights (hard-coded 2 officially)


PRESETS = warp_presets(image_size=512, templates="clip_surgery", surgery_blocks=6, surgery_temperature=2.0,
                       prob_thd=0.0)


class CLIPSurgery(WarpedMethod):
    name = "clip_surgery"
    paper = ("Li et al., A closer look at the explainability of Contrastive language-image pre-training, "
             "Pattern Recognition 2025 (CLIP Surgery, arXiv 2304.05653)")
    repo = "xmed-lab/CLIP_Surgery"
    summary = "v-v attention stream without FFN over the last 6 blocks + feature surgery, min-max maps, 512²"
    Params = CLIPSurgeryParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(image_size=512, templates="clip_surgery")

    def modified_blocks(self) -> tuple[int, str]:
        return self.params.surgery_blocks, f"surgery_blocks={self.params.surgery_blocks}"

    def surgery_features(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(1, 3, S, S) -> L2-normalised tokens (1, 1+N, E): row 0 the original path's CLS, rows 1.. the v-v
        stream's patches; and the grid (h, w)."""
        clip = self.clip
        t, h, w = clip.embed(x, pe="S")
        t = clip.run_blocks(t, 0, self.start)
        g, cls = dual_stream(clip, t, self.start, vv_attention, last_original="cls")
        return F.normalize(clip.head(torch.cat([cls, g[:, 1:]], dim=1)).float(), dim=-1), h, w

    def surgery_maps(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(1, 3, S, S) -> the official output: per-query min-max maps (Q, H, W) in [0, 1] at the image size."""
        f, h, w = self.surgery_features(x)
        sim = feature_surgery(f, self.text.float(), self.params.surgery_temperature)[:, 1:]    # (1, N, Q)
        maps = minmax(sim, 1).transpose(1, 2).reshape(1, -1, h, w)                           # per query, on the grid
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[0]

    def log_probs(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        maps = self.surgery_maps(x, size)
        return class_log_probs(maps.clamp_min(torch.finfo(maps.dtype).tiny).log(), self.classes.query_to_class, 1.0)


METHODS = {"clip_surgery": CLIPSurgery}

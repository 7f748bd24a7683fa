"""GEM, Grounding Everything Module (Bousselham et al., CVPR 2024; WalBouss/GEM): a second token stream through
the last `gem_depth - 1` blocks with self-self attention (q-q, k-k, v-v iterated on L2-normalised rows, adaptive
temperature, averaged, assigning the original V), residual kept, no MLP (spec methods/gem.md).

Pipeline: PIL bicubic warp to 448 x 448; PE-D (antialiased bicubic positional resampling); blocks 0..5 standard;
blocks 6..11 two streams (backbones.self_self); `ln_post`·`proj` of the GEM stream, cosine with one-template text
features (`a photo of a {}.`), bilinear to the input size, per-class min-max over all pixels, softmax over classes
(temperature 1: the README's `logits.softmax(dim=1)`), bilinear to the image size. The repository has no evaluation
code or configs: every preset is these defaults (its README's foreground-only 0.85 threshold cannot be reached, so
`prob_thd` defaults to 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..backbones.self_self import adaptive_temperature, dual_stream, gem_attention
from ..inference.probs import class_log_probs
from ..inference.surgery import minmax
from .warped import WarpedMethod, WarpParams, warp_presets


@dataclass
class GEMParams(WarpParams):
    image_size: int = 448
    templates: str = "photo"                # `a photo of a {}.`, no ensemble
    gem_depth: int = 7                      # the last gem_depth - 1 blocks get the GEM stream
    ss_attn_iter: int = 1                   # self-self iterations before the final assignment
    ss_attn_temp: Optional[float] = None    # None: d^-1/2 x mean token norm of the LN1 output (per image and block)


PRESETS = warp_presets(image_size=448, templates="photo", gem_depth=7, ss_attn_iter=1, ss_attn_temp=None,
                       prob_thd=0.0)


class GEM(WarpedMethod):
    name = "gem"
    paper = ("Bousselham et al., Grounding Everything: Emerging Localization Properties in Vision-Language "
             "Transformers, CVPR 2024")
    repo = "WalBouss/GEM"
    summary = "self-self (q-q, k-k, v-v) attention stream over the last 6 blocks, min-max maps, whole image 448²"
    Params = GEMParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(image_size=448, templates="photo")

    def modified_blocks(self) -> tuple[int, str]:
        return self.params.gem_depth - 1, f"gem_depth={self.params.gem_depth}"

    def gem_features(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(1, 3, S, S) -> L2-normalised GEM-stream patch features (1, N, E) and the grid (h, w)."""
        p, clip = self.params, self.clip
        t, h, w = clip.embed(x, pe="D")
        t = clip.run_blocks(t, 0, self.start)
        head_dim = clip.info.width // clip.info.heads

        def attention(q, k, v, u):
            temp = adaptive_temperature(u, head_dim) if p.ss_attn_temp is None else float(p.ss_attn_temp)
            return gem_attention(q, k, v, temp, p.ss_attn_iter)

        g, _ = dual_stream(clip, t, self.start, attention)
        return F.normalize(clip.head(g[:, 1:]), dim=-1), h, w

    def log_probs(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        f, h, w = self.gem_features(x)
        cos = (f @ self.text.T).transpose(1, 2).reshape(1, -1, h, w).float()       # (1, Q, h, w)
        cos = F.interpolate(cos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps = minmax(cos[0], (-2, -1))                                           # per query, after up-sampling
        probs = class_log_probs(maps, self.classes.query_to_class, 1.0).exp()    # (K, S, S)
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


METHODS = {"gem": GEM}

"""ITACLIP (Aydın et al., CVPRW 2025), spec methods/itaclip.md: SCLIP-family segmentor whose last block (attention +
residual, no MLP) uses the mean of its self-self attention map and those of middle layers 6, 7, 9; five views per
window (original, greyscale, blur; two flips merged separately); class embeddings mixed with embeddings of
LLM-written definitions / synonyms; PAMR, SCLIP's area filter, 3×3 closing of the labels."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..backbones.layer_attention import check_layers, layer_pooled_tokens
from ..inference.augment import engineered_views, unflip_mean
from ..inference.morphology import close_labels
from ..inference.probs import area_filter
from ..text import encode_queries, load_templates
from ..text.auxiliary import ALL, lookup_auxiliary
from ..text.templates import resource_path
from .dense import BACKGROUND_FIRST, DenseMethod, DenseParams


@dataclass
class ITACLIPParams(DenseParams):
    """Defaults of the official constructor (`ITACLIP_Segmentor.__init__`); the presets set the configs' values."""
    area_thd: Optional[float] = None         # SCLIP's area filter
    intermediate_layers: tuple = (6, 7, 9)   # 0-based middle blocks whose attention maps are pooled (code: [7, 8, 10])
    attn_self: bool = True                   # self-self maps softmax(sQQᵀ) + softmax(sKKᵀ); False: vanilla softmax(sQKᵀ)
    img_engineering: bool = False            # five views per window (spec §2)
    img_eng_coefficient: float = 0.75        # λ_img: λ·(original, grey, blur) + (1-λ)·(flips)
    aux_texts: Optional[str] = None          # auxiliary texts: a shipped set (voc21, context60, coco_object, coco_stuff,
                                             # cityscapes), "all", a file of '<name> >=<text>' lines, or None (no mixing)
    def_coefficient: float = 0.2             # β: t' = (1-β)·t + β·aux (not re-normalised)
    label_closing: int = 3                   # square closing of the final labels (0 = none)


def _preset(bench: str, short: int, scale: float, thd: float, beta: float, lam: float, aux: str,
            area: Optional[float] = None) -> dict:
    return dict(short_side=short, slide_crop=224, slide_stride=28, logit_scale=scale, prob_thd=thd, area_thd=area,
                def_coefficient=beta, img_eng_coefficient=lam, aux_texts=aux, img_engineering=True, attn_self=True,
                pamr_steps=10, class_format="sclip", background_first=bench in BACKGROUND_FIRST,
                classes_file=resource_path("classnames", "official", "itaclip", f"cls_{bench}.txt"))


# spec §7 (configs/cfg_*.py); width_chunk_size (COCO) only splits a max over columns to save GPU memory: not needed
PRESETS = {
    "voc21": _preset("voc21", 336, 60.0, 0.1, 0.05, 0.7, "voc21", area=0.1),
    "context60": _preset("context60", 336, 55.0, 0.1, 0.15, 0.75, "context60"),
    "coco_object": _preset("coco_object", 336, 50.0, 0.1, 0.1, 0.75, "coco_object"),
    "coco_stuff": _preset("coco_stuff", 448, 40.0, 0.0, 0.2, 0.75, "coco_stuff"),
    "cityscapes": _preset("cityscapes", 560, 40.0, 0.0, 0.05, 0.7, "cityscapes"),
}


class ITACLIP(DenseMethod):
    name = "itaclip"
    paper = ("Aydın et al., ITACLIP: Boosting Training-Free Semantic Segmentation with Image, Text, and "
             "Architectural Enhancements, CVPRW 2025")
    repo = "m-arda-aydn/ITACLIP"
    summary = "self-self attention pooled over middle layers, 5 augmented views, LLM definitions mixed into the text"
    Params = ITACLIPParams
    PRESETS = PRESETS
    # a user's images: the official method as configured everywhere, but stride 112 (the constructor default: the
    # configs' 28 costs 16x the windows) and the texts of every shipped set, matched by class name
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0, pamr_steps=10,
                          img_engineering=True, img_eng_coefficient=0.75, aux_texts=ALL, def_coefficient=0.2)

    def __init__(self, params: ITACLIPParams, models, classes):
        check_layers(params.intermediate_layers, len(models.clip.blocks))   # before the text encoding
        super().__init__(params, models, classes)
        self.aux_extras: dict = {"aux_texts": None, "aux_fallback_to_name": []}
        if params.aux_texts is not None and len(classes) > int(params.background_first):
            self.text = self._mix_auxiliary(params).to(models.dtype)

    def _mix_auxiliary(self, p: ITACLIPParams) -> torch.Tensor:
        """t'_q = (1-β)·t_q + β·d_c(q) (Q, E) for every query of a class c with a text; the background class (class 0
        where the preset has a background line) keeps t_q. Classes without a text use their name (first query)."""
        cl = self.classes
        first = {}
        for q, c in zip(cl.queries, cl.query_to_class):
            first.setdefault(c, q)
        start = 1 if p.background_first else 0
        names = [first[c] for c in range(start, len(cl))]
        texts, missing = lookup_auxiliary(names, p.aux_texts)
        fallback = [names[i] for i in missing]
        if fallback:
            msg = (f"itaclip: no auxiliary text (aux_texts={p.aux_texts!r}) for {', '.join(map(repr, fallback))}: "
                   f"using the class name itself instead (set aux_texts='all' to search every shipped set, a file "
                   f"of '<name> >=<text>' lines, or None to mix nothing)")
            warnings.warn(msg, stacklevel=2)
        self.aux_extras = {"aux_texts": p.aux_texts, "aux_fallback_to_name": fallback}
        templates = load_templates(p.templates)
        d = encode_queries(self.clip, texts, templates, device=self.models.device)        # (K', E) fp32
        t = encode_queries(self.clip, cl.queries, templates, device=self.models.device)   # fp32 (memory cache)
        q2c = torch.as_tensor(cl.query_to_class, device=t.device)
        rows = q2c >= start
        mixed = t.clone()
        mixed[rows] = (1 - p.def_coefficient) * t[rows] + p.def_coefficient * d[q2c[rows] - start]
        return mixed

    # ------------------------------------------------------------------ encoder and views
    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Normalised images (B, 3, H, W) -> all token features (B, 1+N, E), L2-normalised per token, and the grid."""
        p, clip = self.params, self.clip
        t, h, w = clip.embed(x, pe="A")
        t = layer_pooled_tokens(clip, t, p.intermediate_layers, last_weight=0.5, self_self=p.attn_self)
        f = clip.head(t)
        return f / f.norm(dim=-1, keepdim=True), h, w

    def patch_features(self, x):
        f, h, w = self.tokens(x)
        return f[:, 1:], h, w

    def engineered_logits(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Windows (n, 3, H, W) -> λ·main + (1-λ)·flips (n, Q, *size), cosine-like (spec §2). All five views of
        all windows go through the encoder as one batch."""
        p = self.params
        n = x.shape[0]
        if not p.img_engineering:
            return F.interpolate(self.cosine_grid(x).float(), size=size, mode="bilinear", align_corners=False)
        f, h, w = self.tokens(engineered_views(x))
        f = f.view(5, n, *f.shape[1:])
        main = f[:3].mean(0)                                     # (n, 1+N, E), not re-normalised
        feats = torch.cat([main, f[3], f[4]])[:, 1:]             # (3n, N, E)
        s = feats @ self.text.T.to(feats.dtype)                  # (3n, N, Q)
        s = s.transpose(1, 2).reshape(3 * n, -1, h, w).float()
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
        lam = p.img_eng_coefficient
        return lam * s[:n] + (1 - lam) * unflip_mean(s[n:2 * n], s[2 * n:])

    def window_logits(self, x):
        return self.engineered_logits(x, x.shape[-2:])

    def cosine_logits(self, x, size):
        if self.params.slide_crop > 0:
            return super().cosine_logits(x, size)
        # whole image (no preset uses it): straight to the original size as the official forward_feature; unlike the
        # official whole-image path, which skips PAMR, pamr_steps still applies here
        return self.engineered_logits(x, size)[0]

    # ------------------------------------------------------------------ scores and labels
    def class_scores(self, cos):
        return area_filter(super().class_scores(cos), self.params.area_thd)

    def forward(self, image):
        pred = super().forward(image)
        pred.labels = close_labels(pred.labels, self.params.label_closing)
        pred.extras.update(self.aux_extras)
        return pred


METHODS = {"itaclip": ITACLIP}

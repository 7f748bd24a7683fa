"""The mmseg-style family (CLIP baseline, MaskCLIP, SCLIP, ClearCLIP, NACLIP; ProxyCLIP builds on it):
mmseg resize -> whole image or batched sliding windows -> cosine logits with the text classifier -> bilinear
back to the original size -> (PAMR) -> probabilities, synonyms, background (spec §1.6-1.8).

A subclass only says how a batch of normalised windows becomes patch features (`patch_features`), plus its
hyper-parameters and presets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..backbones.attention import last_block
from ..images import LoadedImage
from ..inference.pamr import pamr
from ..inference.probs import class_log_probs, threshold_labels
from ..inference.resize import mmseg_normalize, mmseg_resize
from ..inference.window import slide_inference_many
from ..text import ClassList, encode_queries, load_templates
from ..text.templates import resource_path
from .base import Method, Models, Params, Prediction

BENCH_FILES = {  # benchmark -> file-name stem used by the mmseg-based repositories
    "voc21": "voc21", "voc20": "voc20", "context60": "context60", "context59": "context59",
    "coco_object": "coco_object", "coco_stuff": "coco_stuff", "cityscapes": "city_scapes", "ade20k": "ade20k",
    "context459": "context459", "ade847": "ade20k847",
}


# benchmarks whose class 0 is "background" (a line of background words in the mmseg-family class files)
BACKGROUND_FIRST = ("voc21", "context60", "coco_object")


def official_classes(folder: str, bench: str) -> str:
    """Path of an official class file shipped with ovss (resources/classnames/official/<folder>/cls_<bench>.txt)."""
    return resource_path("classnames", "official", folder, f"cls_{BENCH_FILES[bench]}.txt")


@dataclass
class DenseParams(Params):
    pad_multiple: int = 0          # zero-pad every window (centred) to a multiple of this; 0 = never
    whole_double_resize: bool = False   # whole-image mode: up-sample to the input size first, then to the original (NACLIP)
    pamr_steps: int = 0
    pamr_dilations: tuple = (8, 16)
    synonym_rule: str = "max"      # "max" or Trident's "first"
    window_batch: int = 8          # windows per forward pass


# the steps of DenseMethod.forward that forward_batch runs for several images at once
PIPELINE = ("forward", "preprocess", "cosine_logits", "slide_logits", "finish")


class DenseMethod(Method):
    """Base of the mmseg-style family; subclasses implement `patch_features`."""
    Params = DenseParams

    def __init__(self, params: DenseParams, models: Models, classes: ClassList):
        super().__init__()
        self.params = params
        self.clip = models.clip
        self.models = models
        self.classes = classes
        self.text = encode_queries(self.clip, classes.queries, load_templates(params.templates),
                                   device=models.device).to(models.dtype)

    # ------------------------------------------------------------------ to override
    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Normalised images (B, 3, H, W) -> patch features (B, h*w, E) in the joint space (CLS dropped) and the
        grid (h, w)."""
        raise NotImplementedError

    def clip_features(self, x: torch.Tensor, attention="vanilla", residual: bool = False, mlp: bool = False,
                      bias_fn=None) -> tuple[torch.Tensor, int, int]:
        """CLIP with blocks 0..L-2 unchanged and the last block replaced (see backbones.attention.last_block);
        returns `ln_post`·`proj` of the patch tokens (B, h*w, E) and the grid."""
        clip = self.clip
        t, h, w = clip.embed(x, pe="A")
        t = clip.run_blocks(t, 0, len(clip.blocks) - 1)
        bias = bias_fn(h, w, t) if bias_fn is not None else None
        t = last_block(clip, t, attention, residual=residual, mlp=mlp, bias=bias)
        return clip.head(t[:, 1:]), h, w

    # ------------------------------------------------------------------ shared pipeline
    def cosine_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> cosine logits on the patch grid (B, Q, h, w)."""
        return self.features_cosine(*self.patch_features(x))

    def features_cosine(self, f: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Patch features (B, h*w, E) -> cosine logits with the text classifier on the grid (B, Q, h, w)."""
        f = f / f.norm(dim=-1, keepdim=True)
        logits = f @ self.text.T.to(f.dtype)
        return logits.transpose(1, 2).reshape(f.shape[0], -1, h, w)

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (n, 3, h, w) -> cosine logits up-sampled to the window size (n, Q, h, w)."""
        return F.interpolate(self.cosine_grid(x).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def preprocess(self, image: LoadedImage) -> torch.Tensor:
        rgb = mmseg_resize(image.rgb, self.params.short_side, self.params.long_side_cap)
        return mmseg_normalize(rgb, device=self.models.device, dtype=self.models.dtype)

    def slide_logits(self, xs: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Network inputs (1, 3, H_i, W_i) -> sliding-window cosine logits (Q, h_i, w_i) at the original sizes; the
        windows of all inputs share forward passes of `window_batch` x len(xs) windows."""
        p = self.params
        coss = slide_inference_many(xs, p.slide_crop, p.slide_stride, self.window_logits,
                                    pad_multiple=p.pad_multiple or None, batch_size=p.window_batch * len(xs))
        return [F.interpolate(c[None], size=s, mode="bilinear", align_corners=False)[0] for c, s in zip(coss, sizes)]

    def cosine_logits(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Network input (1, 3, H, W) -> cosine logits (Q, h0, w0) at the original size."""
        p = self.params
        if p.slide_crop > 0:
            return self.slide_logits([x], [size])[0]
        if p.whole_double_resize:
            cos = self.window_logits(x)
        else:
            cos = self.cosine_grid(x).float()
        return F.interpolate(cos, size=size, mode="bilinear", align_corners=False)[0]

    def class_scores(self, cos: torch.Tensor) -> torch.Tensor:
        """Cosine logits (Q, H, W) -> log class probabilities (K, H, W); subclasses add their filters."""
        return class_log_probs(cos, self.classes.query_to_class, self.params.logit_scale, self.params.synonym_rule)

    def finish(self, x: torch.Tensor, cos: torch.Tensor) -> Prediction:
        """Network input (1, 3, H, W) and cosine logits (Q, h0, w0) at the original size -> the Prediction: PAMR
        (guided by the input at that size), class scores, the label rule."""
        if self.params.pamr_steps > 0:
            img = F.interpolate(x.float(), size=cos.shape[-2:], mode="bilinear", align_corners=False)
            cos = pamr(img, cos[None], self.params.pamr_steps, self.params.pamr_dilations)[0]
        logp = self.class_scores(cos)
        return Prediction(logits=logp.float().cpu(), labels=threshold_labels(logp, self.params.prob_thd).cpu())

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        x = self.preprocess(image)
        return self.finish(x, self.cosine_logits(x, image.size))

    @classmethod
    def shared_pipeline(cls) -> bool:
        """True when the class predicts with DenseMethod's own pipeline: it overrides none of the steps
        `forward_batch` reorders (only what windows become: patch_features, window_logits, class_scores...)."""
        return all(getattr(cls, n) is getattr(DenseMethod, n) for n in PIPELINE)

    def batches_windows(self) -> bool:
        """Whether `forward_batch` shares window forward passes between images: the shared pipeline, in
        sliding-window mode."""
        return self.params.slide_crop > 0 and self.shared_pipeline()

    @torch.inference_mode()
    def forward_batch(self, images: list[LoadedImage]) -> list[Prediction]:
        """The windows of all images through `window_logits` together (see `batches_windows`; otherwise one image
        at a time); each Prediction is bit-identical to `forward(image)` as long as the backbone's results for a
        window do not depend on the other windows of its batch."""
        if len(images) < 2 or not self.batches_windows():
            return super().forward_batch(images)
        xs = [self.preprocess(im) for im in images]
        coss = self.slide_logits(xs, [im.size for im in images])
        return [self.finish(x, cos) for x, cos in zip(xs, coss)]


def presets_table(short: dict, slide: dict, scale: dict, thd: dict, files: Optional[tuple[str, str]] = None,
                  **common) -> dict:
    """Build {bench: values} from per-benchmark columns (missing benchmark in `short` = no official config)."""
    out = {}
    for bench, s in short.items():
        crop, stride = slide.get(bench, (0, 112))
        values = dict(short_side=s, slide_crop=crop, slide_stride=stride, logit_scale=scale.get(bench, scale["*"]),
                      prob_thd=thd.get(bench, 0.0), **common)
        if files:
            values.update(class_format=files[1], classes_file=official_classes(files[0], bench),
                          background_first=bench in BACKGROUND_FIRST)
        out[bench] = values
    return out

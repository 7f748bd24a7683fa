"""Methods whose official pipeline warps the whole image to a fixed square (GEM, CLIP Surgery): PIL bicubic
Resize((S, S)) without keeping the aspect ratio, one forward pass, per-class maps resized back to the image.

A subclass implements `modified_blocks()` (how many last blocks it changes) and `log_probs(x, size)`: network input
(1, 3, S, S) -> log class probabilities (K, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..images import LoadedImage
from ..inference.probs import threshold_labels
from ..inference.resize import pil_warp_to_tensor
from ..text import ClassList, encode_queries, load_templates
from .base import Method, Models, Prediction
from .dense import BACKGROUND_FIRST, official_classes

BENCHMARKS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
# mc-lan/ClearCLIP's class files, one plain name per line (its other five are byte-identical to SCLIP/NACLIP's)
CLEARCLIP_FILES = ("voc21", "voc20", "coco_object")


@dataclass
class WarpParams:
    image_size: int = 448               # S: the image is warped to S x S (aspect ratio not kept)
    prob_thd: float = 0.0               # label 0 (background) where the max class probability is below this
    templates: str = "imagenet"         # prompt template set (see ovss.text.templates) or a file path
    class_format: str = "lines"         # how class files are parsed (see ovss.text.classes)
    classes_file: Optional[str] = None  # the preset's class file (used when classes=None)
    background_first: bool = False      # class 0 of that file is the background


def warp_presets(**values) -> dict:
    """{benchmark: values}: the same official settings on every benchmark (the repositories have no per-benchmark
    configs), with the field's class files read one name per line (each line one text, no synonym splitting)."""
    return {b: dict(values, class_format="lines", background_first=b in BACKGROUND_FIRST,
                    classes_file=official_classes("clearclip" if b in CLEARCLIP_FILES else "sclip_naclip", b))
            for b in BENCHMARKS}


class WarpedMethod(Method):
    """Base: text classifier of the preset's templates, square warp, `log_probs`, background threshold."""
    Params = WarpParams

    def __init__(self, params: WarpParams, models: Models, classes: ClassList):
        super().__init__()
        self.params = params
        self.clip = models.clip
        self.models = models
        self.classes = classes
        patch = self.clip.info.patch
        if not isinstance(params.image_size, int) or params.image_size < patch:
            raise InputError(f"image_size={params.image_size!r}: give an integer of at least {patch} (the patch size)")
        n, what = self.modified_blocks()
        L = len(self.clip.blocks)
        if not 1 <= n <= L:
            raise InputError(f"{what}: {n} modified blocks requested, but this CLIP has {L} blocks")
        self.start = L - n                  # the first modified block
        self.text = encode_queries(self.clip, classes.queries, load_templates(params.templates),
                                   device=models.device).to(models.dtype)

    def modified_blocks(self) -> tuple[int, str]:
        """How many last blocks the method modifies, and the setting that says so (for the error message)."""
        raise NotImplementedError

    def log_probs(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Network input (1, 3, S, S) -> log class probabilities (K, H, W) at the image size."""
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        x = pil_warp_to_tensor(image.rgb, self.params.image_size).to(self.models.device, self.models.dtype)
        logp = self.log_probs(x, image.size).float()
        return Prediction(logits=logp.cpu(), labels=threshold_labels(logp, self.params.prob_thd).cpu())

"""`ovss.Segmenter`: one constructor and three calls for every method (spec/api.md), plus batched `run_batch` /
`predict_batch`."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from .device import pick_device, pick_dtype
from .errors import InputError
from .images import ImageInput, LoadedImage, load_image
from .methods import get_method
from .methods.base import Models, Prediction
from .text import ClassList, parse_classes

# loaded backbones shared by Segmenters in one process (one per model/weights/device/dtype), least recently used
# first; at most MODEL_CACHE_LIMIT are kept (env OVSS_MODEL_CACHE), so a long-running process (the app, a compare
# over every method) holds a bounded number of models (a Segmenter keeps its own models alive while it exists)
_MODEL_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
MODEL_CACHE_LIMIT = max(1, int(os.environ.get("OVSS_MODEL_CACHE", "8") or 8))
MODEL_LOADS = 0           # models built so far in this process (the app reports "1 loaded" from it)


def _cached(key: tuple, build):
    global MODEL_LOADS
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    model = build()
    MODEL_LOADS += 1
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > MODEL_CACHE_LIMIT:
        _MODEL_CACHE.popitem(last=False)
    return model


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()


@dataclass
class SegmentationResult:
    """Labels of one image plus what a person wants to read off them."""
    labels: np.ndarray                 # (H, W) int64
    classes: list[str]                 # display name of each label value
    areas: dict[str, float]            # class -> share of the image's pixels (present classes only)
    scores: dict[str, float]           # class -> mean probability over its pixels (present classes only)
    image: np.ndarray = field(repr=False, default=None)   # the RGB image (H, W, 3) uint8

    def overlay(self, alpha: float = 0.5, legend: bool = True):
        """A PIL image: the label colours blended over the image, with a legend of the present classes."""
        from .viz import overlay
        return overlay(self.image, self.labels, self.classes, alpha=alpha, legend=legend)

    def label_image(self):
        """A palette PNG-ready PIL image of the labels (value = class index)."""
        from .viz import label_image
        return label_image(self.labels)

    def to_dict(self) -> dict:
        h, w = self.labels.shape
        return {"height": h, "width": w, "classes": self.classes, "areas": self.areas, "scores": self.scores}


class Segmenter:
    """Segment images by class names with a training-free method.

    Parameters follow spec/api.md: `method`, `classes` (list / file / None for the preset's official file),
    `clip` ("ViT-B/16", "ViT-L/14", "ViT-H/14", "MetaCLIP-B/16"; None = the method's default CLIP, e.g. MetaCLIP-B/16
    for corrclip, else ViT-B/16), `clip_weights` (None downloads, a path, "random"), `vfm`,
    `vfm_weights`, `sam`, `sam_weights`, `sd_weights`, `device` (None: cuda -> mps -> cpu), `dtype` (None: fp32 on
    CPU, fp16 on GPU), `preset` (a benchmark protocol or None) and any hyper-parameter of the method by name.
    """

    def __init__(self, method: str = "sclip", classes: Any = None, clip: Optional[str] = None,
                 clip_weights: Optional[Union[str, os.PathLike]] = None, vfm: Optional[str] = None,
                 vfm_weights: Optional[Union[str, os.PathLike]] = None, sam: str = "vit_b",
                 sam_weights: Optional[Union[str, os.PathLike]] = None,
                 sd_weights: Optional[Union[str, os.PathLike]] = None, device=None, dtype=None,
                 preset: Optional[str] = None, class_format: Optional[str] = None, **overrides):
        cls = get_method(method)
        self.method_name = method
        self.preset = preset
        if class_format is not None:
            overrides["class_format"] = class_format
        self.params = cls.resolve_params(preset, overrides)
        from .backbones.clip import clip_for
        self.clip_name = clip_for(cls, clip)   # the CLIP model actually loaded (canonical name)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        if classes is None:
            classes = cls.default_classes(self.params)
            if classes is None:
                raise InputError("no classes given: pass classes=[...] or a class file (or a benchmark preset, "
                                 "which brings its official class file)")
        self.class_list: ClassList = (classes if isinstance(classes, ClassList)
                                      else parse_classes(classes, self.params.class_format))
        models = self._load_models(cls, self.clip_name, clip_weights, vfm, vfm_weights, sam, sam_weights, sd_weights)
        self.method = cls(self.params, models, self.class_list)
        # a method may complete the list (CLIPer puts a "background" class 0 in front of a list without one)
        self.class_list = getattr(self.method, "class_list", None) or self.class_list

    # ------------------------------------------------------------------ models
    def _load_models(self, cls, clip, clip_weights, vfm, vfm_weights, sam, sam_weights, sd_weights) -> Models:
        dev, dt = self.device, self.dtype
        models = Models(device=dev, dtype=dt)
        wid = lambda w: os.path.abspath(os.fspath(w)) if w not in (None, "random") else w  # noqa: E731
        if "clip" in cls.needs:
            from .backbones.clip import canonical_name, load_clip
            name = canonical_name(clip)
            models.clip = _cached(("clip", name, wid(clip_weights), str(dev), dt),
                                  lambda: load_clip(name, clip_weights, dev, dt))
        if "vfm" in cls.needs:
            from .backbones.vfm import load_vfm
            vfm = vfm or getattr(self.params, "vfm", None) or "dino_vitb8"
            models.vfm = _cached(("vfm", vfm, wid(vfm_weights), str(dev), dt),
                                 lambda: load_vfm(vfm, vfm_weights, dev, dt))
        if "sam" in cls.needs:
            from .backbones.sam import load_sam
            models.sam = _cached(("sam", sam, wid(sam_weights), str(dev), dt),
                                 lambda: load_sam(sam, sam_weights, dev, dt))
        if "sd" in cls.needs:
            from .backbones.diffusion import load_sd
            models.sd = _cached(("sd", wid(sd_weights), str(dev), dt), lambda: load_sd(sd_weights, dev, dt))
        return models

    # ------------------------------------------------------------------ info
    @property
    def classes(self) -> list[str]:
        """Display name of every output channel / label value."""
        return list(self.class_list.names)

    @property
    def label_offset(self) -> int:
        """How many leading labels the method adds before the dataset's classes (CLIPer's background: 1)."""
        return int(getattr(self.method, "label_offset", 0))

    def target_transform(self, gt: np.ndarray) -> np.ndarray:
        """The ground truth as the method's official evaluation sees it (CLIPtrase: the centre crop)."""
        fn = getattr(self.method, "target_transform", None)
        return fn(gt) if fn else gt

    def config(self) -> dict:
        """Everything that determines the output (for result files)."""
        return {"method": self.method_name, "preset": self.preset, "clip": self.clip_name,
                "params": asdict(self.params),
                "classes": self.classes, "queries": list(self.class_list.queries),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}

    # ------------------------------------------------------------------ inference
    def run(self, image: ImageInput) -> Prediction:
        img = image if isinstance(image, LoadedImage) else load_image(image)
        return self.method(img)

    def run_batch(self, images: list[ImageInput]) -> list[Prediction]:
        """`run` of several images, in order; methods that can (see `Method.forward_batch`) send the sliding windows
        of all of them through the backbone together (fewer, larger batches: faster on a GPU)."""
        imgs = [im if isinstance(im, LoadedImage) else load_image(im) for im in images]
        return self.method.forward_batch(imgs)

    def predict_logits(self, image: ImageInput) -> torch.Tensor:
        """(K, H, W) float32 logits at the image's size; softmax over K = the method's class probabilities."""
        return self.run(image).logits

    def predict(self, image: ImageInput) -> torch.Tensor:
        """(H, W) int64 labels after the method's own label rule."""
        return self.run(image).labels

    def predict_batch(self, images: list[ImageInput]) -> list[torch.Tensor]:
        """`predict` of several images (one (H_i, W_i) int64 tensor each), through `run_batch`."""
        return [p.labels for p in self.run_batch(images)]

    def segment(self, image: ImageInput) -> SegmentationResult:
        img = image if isinstance(image, LoadedImage) else load_image(image)
        pred = self.method(img)
        labels = pred.labels.numpy().astype(np.int64)
        # per-pixel class scores: the probabilities, or the maps themselves for methods whose outputs are scores
        probs = (pred.logits.float() if getattr(self.method, "logits_are_scores", False)
                 else torch.softmax(pred.logits.float(), dim=0))
        K = probs.shape[0]
        counts = np.bincount(labels.ravel(), minlength=K)
        flat_p = probs.reshape(K, -1)
        lab_t = torch.from_numpy(labels.ravel())
        sums = torch.zeros(K).index_add_(0, lab_t, flat_p.gather(0, lab_t[None])[0])
        total = labels.size
        areas, scores = {}, {}
        names = self.classes
        for k in np.nonzero(counts)[0]:
            name = names[k] if k < len(names) else str(k)
            areas[name] = float(counts[k] / total)
            scores[name] = float(sums[k] / counts[k])
        return SegmentationResult(labels=labels, classes=names, areas=areas, scores=scores, image=img.rgb)

"""What every method shares: hyper-parameters as a dataclass, per-benchmark presets, the Prediction.

A method is a small ``torch.nn.Module`` subclass of :class:`Method` with

* ``name`` / ``needs`` / ``paper`` / ``repo`` / ``summary`` class attributes (``needs`` lists the models
  the Segmenter must load for it: ``"clip"``, ``"vfm"``, ``"sam"``, ``"sd"``);
* ``Params``: a dataclass (subclass of :class:`Params`) holding every hyper-parameter with the default of
  the official code;
* ``PRESETS``: benchmark key -> the values the official config of that benchmark sets (plain dicts,
  transcribed from ``spec/protocols.md``), plus ``DEFAULT_PRESET`` used for ``preset=None``;
* ``__init__(self, params, models, classes)`` and ``forward(image) -> Prediction`` (``forward_batch(images)``:
  one per image by default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from ..errors import InputError

BENCHMARKS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k",
              "context459", "ade847")


@dataclass
class Params:
    """Hyper-parameters common to the mmseg-style methods (each method extends this)."""
    short_side: Optional[int] = 336     # resize: shorter side -> S under a 2048 cap on the longer (mmseg scale=(2048, S)); None = as is
    long_side_cap: int = 2048
    slide_crop: int = 224               # sliding-window crop in pixels; 0 = whole image
    slide_stride: int = 112
    logit_scale: float = 40.0           # plain multiplier of the cosine logits before the softmax
    prob_thd: float = 0.0               # label 0 (background) where the max class probability is below this
    templates: str = "imagenet"         # prompt template set (see ovss.text.templates) or a file path
    class_format: str = "ovss"          # how class files are parsed (see ovss.text.classes)
    classes_file: Optional[str] = None  # the official class file of the preset (used when classes=None)
    background_first: bool = False      # class 0 of that file is the background (a list of background words)


@dataclass
class Prediction:
    """Output of a method on one image.

    logits: (K, H, W) float32; softmax over K = the method's class probabilities (see spec/api.md)
    labels: (H, W) int64 after the method's own label rule (background threshold etc.)
    """
    logits: torch.Tensor
    labels: torch.Tensor
    extras: dict = field(default_factory=dict)


@dataclass
class Models:
    """The loaded backbones a method may use (None where not needed)."""
    clip: Any = None
    vfm: Any = None
    sam: Any = None
    sd: Any = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


class Method(torch.nn.Module):
    name: ClassVar[str] = ""
    needs: ClassVar[tuple] = ("clip",)
    paper: ClassVar[str] = ""
    repo: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = Params
    PRESETS: ClassVar[dict] = {}
    DEFAULT_PRESET: ClassVar[dict] = {}

    @classmethod
    def resolve_params(cls, preset: Optional[str], overrides: dict) -> Params:
        """Defaults <- preset values <- user overrides; unknown names are rejected by name."""
        values: dict = dict(cls.DEFAULT_PRESET)
        if preset is not None:
            key = preset.lower()
            if key not in cls.PRESETS:
                raise InputError(f"method {cls.name!r} has no preset {preset!r}; available: "
                                 f"{', '.join(cls.PRESETS) or 'none'} (or preset=None)")
            values = dict(cls.PRESETS[key])
        known = {f.name for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"method {cls.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                             f"its parameters: {', '.join(sorted(known))}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls.Params)}
        for k, v in overrides.items():   # a string where a number / flag / tuple is expected (e.g. --set slide_crop=abc)
            typ = types[k]
            if isinstance(v, str) and "str" not in typ and any(t in typ for t in ("int", "float", "bool", "tuple")):
                raise InputError(f"{k}={v!r}: expected a value of type {typ}")
        values.update(overrides)
        return cls.Params(**values)

    @classmethod
    def default_classes(cls, params: Params) -> Any:
        """The classes used when the user gives none: the preset's official class file (a path), or a ClassList
        built in code (CLIPtrase joins its label and background files); None when there is none."""
        path = getattr(params, "classes_file", None)
        if not path:
            return None
        from ..text import parse_classes
        classes = parse_classes(path, params.class_format)
        if getattr(params, "background_first", False):   # line 0 holds background words: show it as "background"
            classes = dataclasses.replace(classes, names=("background",) + classes.names[1:])
        return classes

    def forward(self, image) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_batch(self, images: list) -> list[Prediction]:
        """Predictions of several images, each exactly `forward(image)`; a method that can share the backbone's
        forward passes between images overrides this (DenseMethod: their sliding windows)."""
        return [self(im) for im in images]

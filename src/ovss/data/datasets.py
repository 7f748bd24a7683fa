"""Benchmark readers: where the files are, how the ground truth is decoded, which labels count.

Every reader yields the ground truth in the **canonical label space** of its benchmark (the mmseg one:
class ``k`` is line ``k`` of ``ovss/resources/classnames/<key>.txt``; ``ignore_index`` marks pixels left
out of the metric), whatever the on-disk layout. Three layouts are supported, one reader class each:

* :class:`MMSegDataset` (``layout="mmseg"``, default): the mmsegmentation layout that SCLIP, NACLIP,
  ClearCLIP, ProxyCLIP and Trident evaluate on (``spec/protocols.md`` §1.1);
* :class:`Detectron2Dataset` (``layout="cliptrase"``): CLIPtrase's detectron2-style folders (§1.4);
* :class:`CLIPerDataset` (``layout="cliper"``): CLIPer's folders and image lists (§1.5).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np

from ..errors import InputError
from .classnames import class_names
from .io import DataError, image_size, read_label

IGNORE = 255
UNLABELED16 = 65535


@dataclass(frozen=True)
class Benchmark:
    """The label space of a benchmark (layout-independent)."""
    key: str
    title: str                      # column title in tables
    num_classes: int
    ignore_index: int = IGNORE      # default ignored GT value in the canonical space
    uint16: bool = False            # ground truth stored as 16-bit maps
    has_background: bool = False    # class 0 is "background"
    hint: str = ""                  # what to do when labels look wrong


BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in (
    Benchmark("voc21", "VOC21", 21, has_background=True),
    Benchmark("context60", "Context60", 60, has_background=True,
              hint="Pascal Context annotations must be the 60-class maps (ovss data prepare context)"),
    Benchmark("coco_object", "COCO-Object", 81, has_background=True,
              hint="COCO-Object maps are made from COCO-Stuff (ovss data prepare coco-object)"),
    Benchmark("voc20", "VOC20", 20),
    Benchmark("context59", "Context59", 59,
              hint="Pascal Context annotations must be the 60-class maps (ovss data prepare context)"),
    Benchmark("coco_stuff", "COCO-Stuff", 171,
              hint="COCO-Stuff maps must hold train ids 0-170 (ovss data prepare coco-stuff)"),
    Benchmark("cityscapes", "Cityscapes", 19,
              hint="Cityscapes annotations must hold train ids 0-18 (ovss data prepare cityscapes converts labelIds)"),
    Benchmark("ade20k", "ADE20K", 150),
    Benchmark("context459", "Context459", 459, ignore_index=UNLABELED16, uint16=True),
    Benchmark("ade847", "ADE847", 847, ignore_index=UNLABELED16, uint16=True),
)}

SURVEY_ORDER = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k",
                "context459", "ade847")


# --------------------------------------------------------------------------------------------- decoding
def reduce_zero_label(gt: np.ndarray) -> np.ndarray:
    """mmseg ``reduce_zero_label`` on a uint8 map: 0 -> 255, every other value v != 255 -> v - 1."""
    out = gt.copy()
    out[gt == 0] = 255
    out = out - 1
    out[out == 254] = 255
    return out


def _lut(table: dict[int, int], default: int = IGNORE) -> np.ndarray:
    lut = np.full(256, default, np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut


def _shift_up_void_to_bg(gt: np.ndarray) -> np.ndarray:
    """CLIPtrase VOC21 / PC60: classes stored as c-1 with 255 for background (and void); 255 counts as
    background (class 0). A map holding nothing but 255 stays all-ignored (CLIPtrase skips such images)."""
    if (gt == IGNORE).all():
        return gt
    return (gt.astype(np.uint16) + 1).astype(np.uint8)   # 255 + 1 wraps to 0 = background


_COCO80_LUT = _lut({**{v: v + 1 for v in range(80)}, 80: 0, 255: 0})   # 81..170 -> ignore


def _coco80(gt: np.ndarray) -> np.ndarray:
    """CLIPtrase COCO80: things 0-79 -> 1-80; 80 ("banner") and 255 -> background; other stuff ignored."""
    if (gt == IGNORE).all():
        return gt
    return _COCO80_LUT[gt]


# --------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Where a benchmark's files are in one on-disk layout (paths relative to ``base``)."""
    base: str                          # folder under the user's root holding the rest ("" = root itself)
    images: str
    labels: str
    img_suffix: str
    ann_suffix: str
    split: Optional[str] = None        # list of stems relative to base; None: scan the image folder
    split_resource: Optional[str] = None   # a list shipped with ovss (resources/splits/...)
    split_optional: bool = False       # fall back to a folder scan if the list is missing
    reduce_zero_label: bool = False
    decode: Optional[Callable[[np.ndarray], np.ndarray]] = None   # layout values -> canonical labels
    ann_stem: Optional[Callable[[str], str]] = None              # image stem -> annotation stem
    expected: Optional[int] = None     # number of images of the official split
    aliases: tuple = ()                # usual sub-folders of a shared data root (mmseg's data/<alias>)


@dataclass(frozen=True)
class Sample:
    index: int
    stem: str
    image: Path
    ann: Path


@dataclass
class SegDataset:
    """A benchmark on disk in one layout. ``samples`` is the ordered image list (split file or sorted scan)."""
    key: str
    root: Path
    ignore_index: Optional[int] = None      # None: the benchmark's default
    LAYOUT_NAME: ClassVar[str] = ""
    LAYOUTS: ClassVar[dict[str, Layout]] = {}

    def __post_init__(self):
        if self.key not in BENCHMARKS:
            raise InputError(f"unknown dataset {self.key!r}; known: {', '.join(BENCHMARKS)}")
        if self.key not in self.LAYOUTS:
            raise InputError(f"dataset {self.key!r} has no {self.LAYOUT_NAME} layout; layouts with it: "
                             f"{', '.join(n for n, c in LAYOUTS.items() if self.key in c.LAYOUTS)}")
        self.root = Path(self.root).expanduser()
        if self.ignore_index is None:
            self.ignore_index = self.benchmark.ignore_index

    # -- label space
    @property
    def benchmark(self) -> Benchmark:
        return BENCHMARKS[self.key]

    @property
    def layout(self) -> Layout:
        return self.LAYOUTS[self.key]

    @property
    def num_classes(self) -> int:
        return self.benchmark.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.key)

    @property
    def uint16(self) -> bool:
        return self.benchmark.uint16

    # -- paths
    @cached_property
    def base_dir(self) -> Path:
        """``root/base``; also accepts a root that already is (a deeper part of) the base folder, or a shared
        data root holding the dataset under its usual folder name (``coco_stuff164k``, ``cityscapes``, ``ade``)."""
        lay = self.layout
        parts = Path(lay.base).parts if lay.base else ()
        for root in (self.root, *(self.root / a for a in lay.aliases)):
            for i in range(len(parts) + 1):
                cand = root.joinpath(*parts[i:])
                if (cand / lay.images).is_dir():
                    return cand
        return self.root.joinpath(*parts)

    @property
    def image_dir(self) -> Path:
        return self.base_dir / self.layout.images

    @property
    def label_dir(self) -> Path:
        return self.base_dir / self.layout.labels

    @property
    def split_file(self) -> Optional[Path]:
        lay = self.layout
        if lay.split_resource:
            return Path(str(resources.files("ovss").joinpath("resources", "splits", *lay.split_resource.split("/"))))
        return self.base_dir / lay.split if lay.split else None

    def _stems(self) -> list[str]:
        lay, split = self.layout, self.split_file
        if split is not None and (split.is_file() or not lay.split_optional):
            if not split.is_file():
                raise DataError(f"{self.key}: image list not found: {split}", split, "missing")
            return [s.strip() for s in split.read_text().splitlines() if s.strip()]
        if not self.image_dir.is_dir():
            raise DataError(f"{self.key}: image folder not found: {self.image_dir} (root {self.root})",
                            self.image_dir, "missing")
        suffix = lay.img_suffix
        found = []
        for dirpath, _, files in os.walk(self.image_dir, followlinks=True):
            rel = os.path.relpath(dirpath, self.image_dir)
            for f in files:
                if f.endswith(suffix):
                    found.append(f[: -len(suffix)] if rel == "." else f"{rel}/{f[: -len(suffix)]}")
        return sorted(found, key=lambda s: s + suffix)

    @cached_property
    def samples(self) -> list[Sample]:
        lay = self.layout
        out = []
        for i, stem in enumerate(self._stems()):
            ann_stem = lay.ann_stem(stem) if lay.ann_stem else stem
            out.append(Sample(i, stem, self.image_dir / (stem + lay.img_suffix), self.label_dir / (ann_stem + lay.ann_suffix)))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    # -- ground truth
    def load_gt(self, sample: Sample) -> np.ndarray:
        """The ground truth in the canonical label space (uint8, or uint16 for the 16-bit benchmarks)."""
        gt = read_label(sample.ann, uint16=self.uint16)
        lay = self.layout
        if lay.reduce_zero_label:
            gt = reduce_zero_label(gt)
        if lay.decode is not None:
            gt = lay.decode(gt)
        return gt

    def allowed_extra(self) -> tuple[int, ...]:
        """Values besides 0..K-1 and ignore_index that may legitimately appear (16-bit "unlabeled")."""
        return (UNLABELED16,) if self.uint16 else (IGNORE,)

    def validate(self, sample: Sample, gt: np.ndarray, check_size: bool = True) -> None:
        """Raise :class:`DataError` for label values outside the class range or an image/annotation size mismatch."""
        values = np.unique(gt)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)
                     & ~np.isin(values, self.allowed_extra())]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            hint = f"; {self.benchmark.hint}" if self.benchmark.hint else ""
            raise DataError(f"annotation {sample.ann} has label values outside 0..{self.num_classes - 1} "
                            f"(ignore {self.ignore_index}): {shown}{hint}", sample.ann, "labels")
        if check_size:
            h, w = image_size(sample.image)
            if gt.shape != (h, w):
                raise DataError(f"size mismatch: image {sample.image} is {w}x{h} but annotation {sample.ann} is "
                                f"{gt.shape[1]}x{gt.shape[0]}", sample.ann, "size")

    def describe(self) -> dict:
        return {"key": self.key, "layout": self.LAYOUT_NAME, "root": str(self.root), "base": str(self.base_dir),
                "images": str(self.image_dir), "labels": str(self.label_dir),
                "split": None if self.split_file is None else str(self.split_file),
                "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "reduce_zero_label": self.layout.reduce_zero_label}


# --------------------------------------------------------------------------------------------- mmseg
_VOC12, _VOC10 = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010"


@dataclass
class MMSegDataset(SegDataset):
    """mmsegmentation layout (spec §1.1), as SCLIP / NACLIP / ClearCLIP / ProxyCLIP / Trident read it."""
    LAYOUT_NAME: ClassVar[str] = "mmseg"
    LAYOUTS: ClassVar[dict[str, Layout]] = {
        "voc21": Layout(_VOC12, "JPEGImages", "SegmentationClass", ".jpg", ".png",
                        split="ImageSets/Segmentation/val.txt", expected=1449),
        "voc20": Layout(_VOC12, "JPEGImages", "SegmentationClass", ".jpg", ".png",
                        split="ImageSets/Segmentation/val.txt", reduce_zero_label=True, expected=1449),
        "context60": Layout(_VOC10, "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                            split="ImageSets/SegmentationContext/val.txt", expected=5105),
        "context59": Layout(_VOC10, "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                            split="ImageSets/SegmentationContext/val.txt", reduce_zero_label=True, expected=5105),
        "coco_object": Layout("", "images/val2017", "annotations/val2017", ".jpg", "_instanceTrainIds.png",
                              expected=5000, aliases=("coco_stuff164k", "coco_object")),
        "coco_stuff": Layout("", "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png",
                             expected=5000, aliases=("coco_stuff164k",)),
        "cityscapes": Layout("", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png",
                             expected=500, aliases=("cityscapes",)),
        "ade20k": Layout("ADEChallengeData2016", "images/validation", "annotations/validation", ".jpg", ".png",
                         reduce_zero_label=True, expected=2000, aliases=("ade",)),
        "context459": Layout(_VOC10, "JPEGImages", "annotations_detectron2/pc459_val", ".jpg", ".tif",
                             split="ImageSets/SegmentationContext/val.txt", expected=5105),
        "ade847": Layout("ADE20K_2021_17_01", "images_detectron2/validation", "annotations_detectron2/validation",
                         ".jpg", ".tif", split="validation.txt", split_optional=True, expected=2000),
    }


# --------------------------------------------------------------------------------------------- CLIPtrase
@dataclass
class Detectron2Dataset(SegDataset):
    """CLIPtrase's detectron2-style folders (spec §1.4); every image of the folder, GT ``<stem>.png``/``.tif``."""
    LAYOUT_NAME: ClassVar[str] = "cliptrase"
    LAYOUTS: ClassVar[dict[str, Layout]] = {
        "voc20": Layout("VOC2012", "images_detectron2/val", "annotations_detectron2/val", ".jpg", ".png"),
        "voc21": Layout("VOC2012", "images_detectron2/val", "annotations_detectron2/val", ".jpg", ".png",
                        decode=_shift_up_void_to_bg),
        "context59": Layout("pcontext", "val/image", "val/label", ".jpg", ".png", expected=5105),
        "context60": Layout("pcontext", "val/image", "val/label", ".jpg", ".png", decode=_shift_up_void_to_bg,
                            expected=5105),
        "coco_stuff": Layout("coco", "val2017", "stuffthingmaps_detectron2/val2017", ".jpg", ".png", expected=5000),
        "coco_object": Layout("coco", "val2017", "stuffthingmaps_detectron2/val2017", ".jpg", ".png",
                              decode=_coco80, expected=5000),
        "ade20k": Layout("ADEChallengeData2016", "images/validation", "annotations_detectron2/validation",
                         ".jpg", ".png", expected=2000),
        "context459": Layout("pcontext_full", "val/image", "val/label", ".jpg", ".tif", expected=5105),
        "ade847": Layout("ADE20K_2021_17_01", "images_detectron2/validation", "annotations_detectron2/validation",
                         ".jpg", ".tif", expected=2000),
    }


# --------------------------------------------------------------------------------------------- CLIPer
def _coco14_ann(stem: str) -> str:
    return stem.rsplit("_", 1)[-1]


@dataclass
class CLIPerDataset(SegDataset):
    """CLIPer's folders and the image lists shipped in ``resources/splits/cliper`` (spec §1.5)."""
    LAYOUT_NAME: ClassVar[str] = "cliper"
    LAYOUTS: ClassVar[dict[str, Layout]] = {
        "voc21": Layout(_VOC12, "JPEGImages", "SegmentationClassAug", ".jpg", ".png",
                        split_resource="cliper/voc12_val.txt", expected=1449),
        "voc20": Layout(_VOC12, "JPEGImages", "SegmentationClassAug", ".jpg", ".png",
                        split_resource="cliper/voc12_val.txt", reduce_zero_label=True, expected=1449),
        "context60": Layout(_VOC10, "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                            split_resource="cliper/context_val.txt", expected=5104),
        "context59": Layout(_VOC10, "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                            split_resource="cliper/context_val.txt", reduce_zero_label=True, expected=5104),
        "coco_object": Layout("coco2014", "val2014", "coco_seg_anno", ".jpg", ".png",
                              split_resource="cliper/coco14_val_5k.txt", ann_stem=_coco14_ann, expected=5000),
        "coco_stuff": Layout("coco2017", "val2017", "stuff_anno164/val2017", ".jpg", ".png",
                             split_resource="cliper/coco_stuff164_val.txt", expected=5000),
        "ade20k": Layout("ADEChallengeData2016", "images/validation", "annotations/validation", ".jpg", ".png",
                         split_resource="cliper/ade_val.txt", reduce_zero_label=True, expected=2000),
        "cityscapes": Layout("CityScapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                             "_gtFine_labelTrainIds.png", split_resource="cliper/city_val.txt", expected=500),
    }


LAYOUTS: dict[str, type[SegDataset]] = {"mmseg": MMSegDataset, "cliptrase": Detectron2Dataset, "cliper": CLIPerDataset}


def get_dataset(key: str, root: str | os.PathLike, layout: str = "mmseg", ignore_index: Optional[int] = None) -> SegDataset:
    """The reader of benchmark ``key`` under ``root`` in the given on-disk layout."""
    key = key.lower().replace("-", "_")
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](key=key, root=Path(root), ignore_index=ignore_index)

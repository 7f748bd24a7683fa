"""Tiny synthetic benchmark folders written in the real on-disk layouts (paths spelled out here, independently
of ovss.data, so that a wrong path in the readers is caught)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (bit-interleaved), 256 entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


@dataclass(frozen=True)
class Spec:
    image: str              # path template relative to root ({s} = stem)
    ann: str
    split: str | None       # list file relative to root (None: folder scan)
    lo: int                 # raw label values drawn from lo..hi
    hi: int
    void: int | None        # raw value painted on a border line (ignore / void), None: none
    uint16: bool = False
    palette: bool = False
    stems: tuple = ()


VOC_STEMS = ("2007_000033", "2007_000042", "2007_000061", "2007_000123", "2007_000129")
CTX_STEMS = ("2008_000002", "2008_000003", "2008_000007", "2008_000008", "2008_000009")
COCO_STEMS = ("000000000139", "000000000285", "000000000632", "000000000724", "000000000776")
CITY_STEMS = ("frankfurt/frankfurt_000000_000294", "frankfurt/frankfurt_000000_000576",
              "lindau/lindau_000000_000019", "munster/munster_000000_000019", "munster/munster_000001_000019")
ADE_STEMS = ("ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003", "ADE_val_00000004", "ADE_val_00000005")
ADE847_STEMS = ("ADE_frame_00000007", "ADE_frame_00000011", "ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003")

V12, V10 = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010"
MMSEG = {
    "voc21": Spec(f"{V12}/JPEGImages/{{s}}.jpg", f"{V12}/SegmentationClass/{{s}}.png",
                  f"{V12}/ImageSets/Segmentation/val.txt", 0, 20, 255, palette=True, stems=VOC_STEMS),
    "context60": Spec(f"{V10}/JPEGImages/{{s}}.jpg", f"{V10}/SegmentationClassContext/{{s}}.png",
                      f"{V10}/ImageSets/SegmentationContext/val.txt", 0, 59, None, stems=CTX_STEMS),
    "coco_object": Spec("images/val2017/{s}.jpg", "annotations/val2017/{s}_instanceTrainIds.png", None, 0, 80, None,
                        stems=COCO_STEMS),
    "coco_stuff": Spec("images/val2017/{s}.jpg", "annotations/val2017/{s}_labelTrainIds.png", None, 0, 170, 255,
                       stems=COCO_STEMS),
    "cityscapes": Spec("leftImg8bit/val/{s}_leftImg8bit.png", "gtFine/val/{s}_gtFine_labelTrainIds.png", None, 0, 18,
                       255, stems=CITY_STEMS),
    "ade20k": Spec("ADEChallengeData2016/images/validation/{s}.jpg", "ADEChallengeData2016/annotations/validation/{s}.png",
                   None, 0, 150, None, stems=ADE_STEMS),
    "context459": Spec(f"{V10}/JPEGImages/{{s}}.jpg", f"{V10}/annotations_detectron2/pc459_val/{{s}}.tif",
                       f"{V10}/ImageSets/SegmentationContext/val.txt", 0, 458, 65535, uint16=True, stems=CTX_STEMS),
    "ade847": Spec("ADE20K_2021_17_01/images_detectron2/validation/{s}.jpg",
                   "ADE20K_2021_17_01/annotations_detectron2/validation/{s}.tif", "ADE20K_2021_17_01/validation.txt",
                   0, 846, 65535, uint16=True, stems=ADE847_STEMS),
}
MMSEG["voc20"] = MMSEG["voc21"]
MMSEG["context59"] = MMSEG["context60"]

CLIPTRASE = {
    "voc20": Spec("VOC2012/images_detectron2/val/{s}.jpg", "VOC2012/annotations_detectron2/val/{s}.png", None, 0, 19, 255,
                  stems=VOC_STEMS),
    "context59": Spec("pcontext/val/image/{s}.jpg", "pcontext/val/label/{s}.png", None, 0, 58, 255, stems=CTX_STEMS),
    "coco_stuff": Spec("coco/val2017/{s}.jpg", "coco/stuffthingmaps_detectron2/val2017/{s}.png", None, 0, 170, 255,
                       stems=COCO_STEMS),
    "ade20k": Spec("ADEChallengeData2016/images/validation/{s}.jpg",
                   "ADEChallengeData2016/annotations_detectron2/validation/{s}.png", None, 0, 149, 255, stems=ADE_STEMS),
    "context459": Spec("pcontext_full/val/image/{s}.jpg", "pcontext_full/val/label/{s}.tif", None, 0, 458, 65535,
                       uint16=True, stems=CTX_STEMS),
    "ade847": Spec("ADE20K_2021_17_01/images_detectron2/validation/{s}.jpg",
                   "ADE20K_2021_17_01/annotations_detectron2/validation/{s}.tif", None, 0, 846, 65535, uint16=True,
                   stems=ADE847_STEMS),
}
CLIPTRASE["voc21"] = CLIPTRASE["voc20"]
CLIPTRASE["context60"] = CLIPTRASE["context59"]
CLIPTRASE["coco_object"] = CLIPTRASE["coco_stuff"]

LAYOUT_SPECS = {"mmseg": MMSEG, "cliptrase": CLIPTRASE}


def random_labels(rng: np.random.Generator, spec: Spec, h: int, w: int) -> np.ndarray:
    """Piecewise-constant map: a 3x4 grid of random classes, a void line if the layout has one."""
    cells = rng.integers(spec.lo, spec.hi + 1, size=(3, 4))
    ys = np.minimum(np.arange(h) * 3 // h, 2)
    xs = np.minimum(np.arange(w) * 4 // w, 3)
    lab = cells[ys][:, xs].astype(np.int64)
    if spec.void is not None:
        lab[h // 2, :] = spec.void
    return lab.astype(np.uint16 if spec.uint16 else np.uint8)


def save_labels(path: Path, lab: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
        im.putpalette(voc_palette())
        im.save(path)
    else:
        Image.fromarray(lab).save(path)


def save_image(path: Path, rng: np.random.Generator, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def make_dataset(root: Path, key: str, layout: str = "mmseg", n: int = 4, size: tuple = (24, 32), seed: int = 0,
                 sizes: list | None = None) -> dict:
    """Write ``n`` images + annotations of ``key`` under ``root``; returns {stem: raw label map as written}. Beyond the
    layout's real file names, more stems are made up in the same pattern (``<first stem>_<i>``)."""
    spec = LAYOUT_SPECS[layout][key]
    rng = np.random.default_rng(seed)
    stems = list(spec.stems[:n]) + [f"{spec.stems[0]}_{i}" for i in range(max(0, n - len(spec.stems)))]
    raws = {}
    for i, s in enumerate(stems):
        h, w = sizes[i] if sizes else size
        save_image(root / spec.image.format(s=s), rng, h, w)
        lab = random_labels(rng, spec, h, w)
        save_labels(root / spec.ann.format(s=s), lab, spec.palette)
        raws[s] = lab
    if spec.split:
        p = root / spec.split
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(f"{s}\n" for s in stems))
    return raws


def tiny_eval_config(root, **kw):
    """EvalConfig of the CLIP baseline on the tiny random CLIP over a VOC21 folder (the evaluation-loop tests)."""
    from ovss.eval.runner import EvalConfig
    return EvalConfig(method="clip", dataset="voc21", data_root=str(root), clip="tiny-test", clip_weights="random",
                      device="cpu", **kw)

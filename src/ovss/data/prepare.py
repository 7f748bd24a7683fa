"""Conversions that turn the raw downloads into the layouts the benchmarks read (spec/protocols.md §1.2-1.3).

* COCO-Stuff-164k raw maps (``stuffthingmaps_trainval2017/<split>/<stem>.png``, value = COCO id - 1) ->
  ``<stem>_labelTrainIds.png`` (171 classes) and ``<stem>_instanceTrainIds.png`` (COCO-Object, 81 classes).
* Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` with the official 19-class table.
* Pascal Context: 459-label masks -> ``SegmentationClassContext/<stem>.png`` (60 classes) with mmseg's id table.
  Input either ``trainval_merged.json`` through the Detail API (if installed) or the per-image masks: the
  ``.mat`` files of PASCAL-Context's ``trainval.tar.gz`` (``LabelMap``, ids 1..459, 0 = unlabeled), PNG/TIFF
  masks with the same ids, or detectron2's ``pc459`` TIFFs (0..458, 65535 = unlabeled; ``ids="pc459"``).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import InputError
from .io import DataError, read_label, write_label

# --- COCO (§1.3)
COCO_THING_VALUES = (list(range(0, 11)) + list(range(12, 25)) + [26, 27] + list(range(30, 44)) + list(range(45, 65))
                     + [66, 69] + list(range(71, 82)) + list(range(83, 90)))
COCO_STUFF_VALUES = list(range(91, 182))
assert len(COCO_THING_VALUES) == 80 and len(COCO_STUFF_VALUES) == 91


def coco_object_lut() -> np.ndarray:
    """Raw COCO-Stuff value -> COCO-Object label: i-th thing -> i+1, everything else (stuff, 255) -> 0."""
    lut = np.zeros(256, np.uint8)
    lut[COCO_THING_VALUES] = np.arange(1, 81)
    return lut


def coco_stuff_lut() -> np.ndarray:
    """Raw COCO-Stuff value -> train id: things -> 0..79, stuff 91..181 -> 80..170, anything else -> 255."""
    lut = np.full(256, 255, np.uint8)
    lut[COCO_THING_VALUES] = np.arange(80)
    lut[COCO_STUFF_VALUES] = np.arange(80, 171)
    return lut


# --- Cityscapes
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for k, v in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[k] = v
    return lut


# --- Pascal Context (§1.2)
CONTEXT59_IDS = (0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
                 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
                 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
assert len(CONTEXT59_IDS) == 60 and list(CONTEXT59_IDS) == sorted(CONTEXT59_IDS)


def context_lut(strict: bool = False) -> np.ndarray:
    """459-label id (0 = unlabeled, 1..459) -> Context-60 index (rank in the sorted table).

    Ids outside the table become 0 (background), the usual Pascal-Context-59 convention; ``strict`` marks
    them 255 so that :func:`context_from_ids` can refuse them like mmseg's converter (which asserts)."""
    lut = np.full(65536, 255 if strict else 0, np.uint8)
    lut[list(CONTEXT59_IDS)] = np.arange(60)
    return lut


def read_context_ids(path: Path, ids: str = "detail") -> np.ndarray:
    """A 459-label mask as Detail ids (0 unlabeled, 1..459)."""
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
            m = loadmat(str(path))["LabelMap"]
        except Exception as e:
            raise DataError(f"cannot read LabelMap from {path}: {e}", path, "corrupt") from None
        arr = np.asarray(m).astype(np.int64)
    else:
        arr = read_label(path, uint16=True).astype(np.int64)
    if ids == "pc459":                       # detectron2: 0..458, 65535 unlabeled
        arr = np.where(arr == 65535, 0, arr + 1)
    elif ids != "detail":
        raise InputError(f"ids={ids!r}: use 'detail' (1..459, 0 unlabeled) or 'pc459' (0..458, 65535 unlabeled)")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 459:
        raise DataError(f"{path}: ids outside 0..459 (is this a 459-label mask?)", path, "labels")
    return arr


def context_from_ids(arr: np.ndarray, strict: bool = False, name: str = "mask") -> np.ndarray:
    out = context_lut(strict)[arr]
    if strict and (out == 255).any():
        bad = sorted(set(np.unique(arr[out == 255]).tolist()))
        raise DataError(f"{name}: ids not in the Pascal Context table: {bad[:10]}", None, "labels")
    return out


# --- driver
@dataclass
class Report:
    written: int = 0
    skipped: int = 0
    unexpected: dict = field(default_factory=dict)   # file -> sorted unexpected raw values
    outputs: list = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"written {self.written} file(s)" + (f", skipped {self.skipped} existing" if self.skipped else "")]
        for f, vals in list(self.unexpected.items())[:20]:
            out.append(f"warning: {f}: unexpected raw values {vals[:10]} (mapped to the ignore/background label)")
        if len(self.unexpected) > 20:
            out.append(f"warning: ... {len(self.unexpected) - 20} more files with unexpected values")
        return out


def _convert_one(job: tuple) -> tuple[str, Optional[list]]:
    src, dst, lut_name, expected = job
    lut = {"coco_object": coco_object_lut, "coco_stuff": coco_stuff_lut, "cityscapes": cityscapes_lut}[lut_name]()
    raw = read_label(src)
    vals = np.unique(raw)
    odd = [int(v) for v in vals if int(v) not in expected]
    write_label(dst, lut[raw])
    return str(src), odd or None


def _run(jobs: list[tuple], workers: int, overwrite: bool, progress: bool) -> Report:
    rep = Report()
    todo = []
    for j in jobs:
        if not overwrite and Path(j[1]).exists():
            rep.skipped += 1
        else:
            todo.append(j)
    it: Iterable
    if workers > 1 and len(todo) > 1:
        ex = ProcessPoolExecutor(max_workers=workers)
        it = ex.map(_convert_one, todo, chunksize=16)
    else:
        ex = None
        it = map(_convert_one, todo)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, total=len(todo), unit="file")
    try:
        for (src, odd), job in zip(it, todo):
            rep.written += 1
            rep.outputs.append(job[1])
            if odd:
                rep.unexpected[src] = odd
    finally:
        if ex is not None:
            ex.shutdown()
    return rep


def _pngs(src: Path, suffix: str = ".png", recursive: bool = False) -> list[Path]:
    if not src.is_dir():
        raise InputError(f"source folder not found: {src}")
    files = sorted(src.rglob(f"*{suffix}") if recursive else src.glob(f"*{suffix}"))
    if not files:
        raise InputError(f"no *{suffix} files in {src}")
    return files


_COCO_RAW_OK = set(COCO_THING_VALUES) | set(COCO_STUFF_VALUES) | {255}


def prepare_coco(src: os.PathLike, out: os.PathLike, target: str = "coco_object", workers: int = 1,
                 overwrite: bool = False, progress: bool = False) -> Report:
    """COCO-Stuff raw maps in ``src`` -> ``<stem>_instanceTrainIds.png`` (coco_object) or
    ``<stem>_labelTrainIds.png`` (coco_stuff) in ``out``."""
    suffix = {"coco_object": "_instanceTrainIds.png", "coco_stuff": "_labelTrainIds.png"}[target]
    files = [f for f in _pngs(Path(src)) if not f.name.endswith(("TrainIds.png",))]
    jobs = [(f, Path(out) / (f.stem + suffix), target, _COCO_RAW_OK) for f in files]
    return _run(jobs, workers, overwrite, progress)


def prepare_cityscapes(root: os.PathLike, splits: Iterable[str] = ("val",), workers: int = 1, overwrite: bool = False,
                       progress: bool = False) -> Report:
    """``root/gtFine/<split>/<city>/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` next to them."""
    jobs = []
    for split in splits:
        d = Path(root) / "gtFine" / split
        if not d.is_dir() and (Path(root) / "cityscapes" / "gtFine" / split).is_dir():
            d = Path(root) / "cityscapes" / "gtFine" / split
        for f in _pngs(d, "_gtFine_labelIds.png", recursive=True):
            jobs.append((f, f.with_name(f.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")),
                         "cityscapes", set(range(-1, 34))))
    return _run(jobs, workers, overwrite, progress)


def prepare_context(out_root: os.PathLike, src: Optional[os.PathLike] = None, json_path: Optional[os.PathLike] = None,
                    split: str = "val", stems: Optional[list[str]] = None, ids: str = "detail", strict: bool = False,
                    overwrite: bool = False, progress: bool = False) -> Report:
    """Pascal Context 60-class maps into ``out_root/SegmentationClassContext`` and the image list
    ``out_root/ImageSets/SegmentationContext/<split>.txt`` (``out_root`` = ``VOCdevkit/VOC2010``)."""
    out_root = Path(out_root)
    ann_dir = out_root / "SegmentationClassContext"
    rep = Report()
    written_stems: list[str] = []

    def emit(stem: str, labels) -> None:
        """Write one map (computed only when needed); an existing file is kept unless `overwrite`."""
        dst = ann_dir / f"{stem}.png"
        written_stems.append(stem)
        if dst.exists() and not overwrite:
            rep.skipped += 1
            return
        write_label(dst, labels())
        rep.written += 1
        rep.outputs.append(dst)

    if json_path is not None:
        try:
            from detail import Detail  # type: ignore
        except ImportError:
            raise InputError("reading trainval_merged.json needs the Detail API (pip install "
                             "git+https://github.com/zhanghang1989/detail-api#subdirectory=PythonAPI); without it, "
                             "convert from the 459-label masks instead (--src trainval/ with the .mat files)") from None
        det = Detail(str(json_path), str(out_root / "JPEGImages"), split)
        items = [(Path(img["file_name"]).stem, img) for img in det.getImgs()]
        if stems is not None:
            keep = set(stems)
            items = [it for it in items if it[0] in keep]
        for stem, img in items:
            emit(stem, lambda: context_from_ids(np.asarray(det.getMask(img)), strict, stem))
    else:
        if src is None:
            raise InputError("give --src (folder of 459-label masks: .mat, .png or .tif) or --json trainval_merged.json")
        srcp = Path(src)
        if not srcp.is_dir():
            raise InputError(f"source folder not found: {srcp}")
        files = {}
        for f in sorted(srcp.iterdir()):
            if f.suffix.lower() in (".mat", ".png", ".tif", ".tiff") and f.stem not in files:
                files[f.stem] = f
        if stems is not None:
            missing = [s for s in stems if s not in files]
            if missing:
                raise InputError(f"{len(missing)} listed image(s) have no mask in {srcp}, e.g. {missing[:3]}")
            files = {s: files[s] for s in stems}
        if not files:
            raise InputError(f"no .mat/.png/.tif masks in {srcp}")
        it = files.items()
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, total=len(files), unit="file")
        for stem, f in it:
            emit(stem, lambda: context_from_ids(read_context_ids(f, ids), strict, str(f)))
    lst = out_root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(f"{s}\n" for s in sorted(written_stems)))
    rep.outputs.append(lst)
    return rep

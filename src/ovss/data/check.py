"""``ovss data check``: say exactly what is missing or malformed in a benchmark folder."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from .datasets import SegDataset
from .io import DataError, verify_image


@dataclass
class Finding:
    level: str          # "error" | "warning"
    kind: str           # missing | corrupt | malformed | labels | size | count | layout
    path: Optional[str]
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7s} [{self.kind}] {self.message}"


def check_dataset(ds: SegDataset, limit: Optional[int] = None, decode_images: bool = True,
                  progress: bool = False) -> tuple[list[Finding], int]:
    """All problems found (errors and warnings) and the number of samples checked."""
    out: list[Finding] = []
    lay = ds.layout
    if not ds.root.is_dir():
        return [Finding("error", "missing", str(ds.root), f"dataset root not found: {ds.root}")], 0
    if not ds.image_dir.is_dir():
        out.append(Finding("error", "missing", str(ds.image_dir),
                           f"image folder not found: {ds.image_dir} (expected <root>/{lay.base + '/' if lay.base else ''}"
                           f"{lay.images} for the {ds.LAYOUT_NAME} layout of {ds.key})"))
    if not ds.label_dir.is_dir():
        hint = f"; {ds.benchmark.hint}" if ds.benchmark.hint else ""
        out.append(Finding("error", "missing", str(ds.label_dir), f"annotation folder not found: {ds.label_dir}{hint}"))
    split = ds.split_file
    if split is not None and not split.is_file():
        level = "warning" if lay.split_optional else "error"
        out.append(Finding(level, "missing", str(split), f"image list not found: {split}"
                           + (" (scanning the image folder instead)" if lay.split_optional else "")))
    if any(f.level == "error" for f in out):
        return out, 0
    try:
        samples = ds.samples
    except DataError as e:
        return out + [Finding("error", e.kind, e.path, str(e))], 0
    if lay.expected is not None and len(samples) != lay.expected:
        out.append(Finding("warning", "count", str(split or ds.image_dir),
                           f"{len(samples)} images listed; the official {ds.key} split has {lay.expected}"))
    dup = [s for s, c in Counter(s.stem for s in samples).items() if c > 1]
    if dup:
        out.append(Finding("error", "layout", str(split), f"{len(dup)} duplicated entries in the image list, e.g. {dup[:3]}"))
    todo = samples if limit is None else samples[:limit]
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, unit="img", desc=f"check {ds.key}")
    for s in it:
        img_ok = True
        try:
            verify_image(s.image) if decode_images else None
            if not decode_images and not s.image.is_file():
                raise DataError(f"image not found: {s.image}", s.image, "missing")
        except DataError as e:
            out.append(Finding("error", e.kind, e.path, str(e)))
            img_ok = False
        try:
            gt = ds.load_gt(s)
            ds.validate(s, gt, check_size=img_ok)
        except DataError as e:
            out.append(Finding("error", e.kind, e.path, str(e)))
    if split is None and ds.label_dir.is_dir():  # annotations without an image (folder-scan layouts)
        have = {s.ann.resolve() for s in samples}
        orphans = [p for p in ds.label_dir.rglob(f"*{lay.ann_suffix}") if p.resolve() not in have]
        if orphans:
            out.append(Finding("warning", "layout", str(ds.label_dir),
                               f"{len(orphans)} annotation(s) without an image, e.g. {orphans[0]}"))
    return out, len(todo)

"""What each method reported on the eight standard benchmarks (CLIP ViT-B/16, mIoU %), from the survey's Table 1
shipped in ``resources/reported/`` (see its README for the source), so a user sees what to expect before
downloading weights."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from ..text.templates import resource_path

BENCHMARKS = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff")
SOURCE = ("Kombol, Martinović, Šegvić, A Survey on Training-free Open-Vocabulary Semantic Segmentation, "
          "Table 1 (ViT-B/16, mIoU %, no post-processing)")


@dataclass(frozen=True)
class Reported:
    method: str                          # the survey's name
    miou: dict[str, Optional[float]]     # benchmark -> mIoU %, None = not reported
    note: str = ""


@lru_cache(maxsize=1)
def reported_table() -> dict[str, Reported]:
    """ovss method name -> its reported figures (only methods ovss has a name for)."""
    out: dict[str, Reported] = {}
    with open(resource_path("reported", "survey_table1_vitb16.tsv"), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            name = (row.get("ovss_name") or "").strip()
            if not name:
                continue
            miou = {b: (None if row[b].strip() in ("", "-") else float(row[b])) for b in BENCHMARKS}
            out[name] = Reported(row["method"], miou, (row.get("note") or "").strip())
    return out


def reported(method: str) -> Optional[Reported]:
    """The reported figures of `method` (CLIPer-ELF shares none: the survey lists full CLIPer only)."""
    return reported_table().get(method)


def format_miou(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"

"""Result files of an evaluation: JSON (everything), CSV (per class), Markdown (summary + per-class table),
and the methods x benchmarks table in the survey's column order."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..data.datasets import BENCHMARKS, SURVEY_ORDER

SUMMARY_KEYS = ("mIoU", "mAcc", "aAcc", "fwIoU")


def software_versions() -> dict:
    """Versions of the software that shaped the numbers (no git calls: works from an installed wheel)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("ovss", "torch", "torchvision", "open_clip_torch", "timm", "numpy", "pillow", "opencv-python-headless",
                 "segment-anything", "diffusers", "transformers", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch
        out["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover - torch is a hard dependency
        pass
    return out


@dataclass
class EvalResult:
    method: str
    dataset: str
    preset: str
    metric: str
    summary: dict                    # the chosen definition, percent, rounded
    per_class: dict                  # IoU / Acc / gt_pixels / pred_pixels lists
    class_names: list
    all_metrics: dict                # definition -> summary
    num_images: int                  # images in the list (after --limit)
    evaluated: int                   # images that entered the matrix
    empty: int = 0                   # images whose ground truth is all ignored (contribute nothing)
    bad: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    world_size: int = 1
    resumed: bool = False
    confusion: Optional[np.ndarray] = None

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("confusion")
        return _clean(d)


def _clean(x):
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def _fmt(v, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def per_class_rows(r: EvalResult) -> list[dict]:
    pc = r.per_class
    return [{"index": i, "class": name, "IoU": pc["IoU"][i], "Acc": pc["Acc"][i],
             "gt_pixels": pc["gt_pixels"][i], "pred_pixels": pc["pred_pixels"][i]} for i, name in enumerate(r.class_names)]


def result_markdown(r: EvalResult) -> str:
    title = BENCHMARKS[r.dataset].title if r.dataset in BENCHMARKS else r.dataset
    lines = [f"# {r.method} on {title} (preset `{r.preset}`, metric `{r.metric}`)", "",
             "| " + " | ".join(SUMMARY_KEYS) + " | images |", "|" + "---|" * (len(SUMMARY_KEYS) + 1),
             "| " + " | ".join(_fmt(r.summary.get(k)) for k in SUMMARY_KEYS) + f" | {r.evaluated}/{r.num_images} |", ""]
    if r.bad:
        lines += [f"**{len(r.bad)} bad sample(s) skipped:**", ""] + [f"- `{b.get('file') or b.get('stem')}`: {b['error']}"
                                                                       for b in r.bad] + [""]
    lines += ["## Per class", "", "| # | class | IoU | Acc | GT pixels | predicted pixels |", "|---|---|---|---|---|---|"]
    for row in per_class_rows(r):
        lines.append(f"| {row['index']} | {row['class']} | {_fmt(row['IoU'])} | {_fmt(row['Acc'])} | "
                     f"{row['gt_pixels']} | {row['pred_pixels']} |")
    lines += ["", "IoU/Acc in %; – = class absent from both ground truth and prediction (left out of the mean).", ""]
    return "\n".join(lines)


def write_result(r: EvalResult, out_dir: os.PathLike) -> dict[str, Path]:
    """Write result.json, per_class.csv, result.md and confusion.npy into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "result.json", "csv": out / "per_class.csv", "md": out / "result.md",
             "confusion": out / "confusion.npy"}
    atomic_write_text(paths["json"], json.dumps(r.to_json(), indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["index", "class", "IoU", "Acc", "gt_pixels", "pred_pixels"], lineterminator="\n")
    w.writeheader()
    for row in per_class_rows(r):
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else (f"{v:.4f}" if isinstance(v, float) else v))
                    for k, v in row.items()})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], result_markdown(r))
    if r.confusion is not None:
        tmp = out / f".confusion.tmp-{os.getpid()}.npy"
        np.save(tmp, r.confusion)
        os.replace(tmp, paths["confusion"])
    return paths


def load_result(path: os.PathLike) -> EvalResult:
    d = json.loads(Path(path).read_text())
    d.pop("confusion", None)
    return EvalResult(**d)


def table_columns(datasets: Iterable[str]) -> list[str]:
    """The requested benchmarks in the survey's column order (unknown keys last, as given)."""
    ds = list(dict.fromkeys(datasets))
    return [k for k in SURVEY_ORDER if k in ds] + [k for k in ds if k not in SURVEY_ORDER]


def table_markdown(results: list[EvalResult], key: str = "mIoU") -> str:
    """Methods x benchmarks table of ``key`` (like the survey's Table 1), with the row mean."""
    cols = table_columns(r.dataset for r in results)
    methods = list(dict.fromkeys(r.method for r in results))
    cell = {(r.method, r.dataset): r.summary.get(key) for r in results}
    head = "| method | " + " | ".join(BENCHMARKS[c].title if c in BENCHMARKS else c for c in cols) + " | avg |"
    lines = [f"{key} (%), metric `{results[0].metric if results else 'mmseg'}`", "", head, "|" + "---|" * (len(cols) + 2)]
    for m in methods:
        vals = [cell.get((m, c)) for c in cols]
        ok = [v for v in vals if v is not None and math.isfinite(v)]
        avg = sum(ok) / len(ok) if ok and len(ok) == len(vals) else None
        lines.append(f"| {m} | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(avg)} |")
    return "\n".join(lines) + "\n"


def write_table(results: list[EvalResult], out_dir: os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    cols = table_columns(r.dataset for r in results)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
    atomic_write_text(paths["md"], "\n".join(table_markdown(results, k) for k in ("mIoU", "mAcc", "aAcc")))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + cols)
    for m in dict.fromkeys(r.method for r in results):
        cell = {r.dataset: r.summary.get("mIoU") for r in results if r.method == m}
        w.writerow([m] + [("" if cell.get(c) is None else f"{cell[c]:.2f}") for c in cols])
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["json"], json.dumps(_clean({"columns": cols, "results": [
        {"method": r.method, "dataset": r.dataset, "preset": r.preset, "metric": r.metric, "summary": r.summary,
         "evaluated": r.evaluated, "num_images": r.num_images} for r in results]}), indent=2) + "\n")
    return paths

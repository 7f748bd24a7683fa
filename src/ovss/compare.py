"""Several methods on one image, side by side (`ovss compare`, the app's Compare tab).

Each method runs through its own :class:`ovss.Segmenter` (the backbones are shared through the model cache, so a
CLIP tower common to several methods loads once); a method that fails — missing weights, an input it rejects —
is recorded with its message and the others go on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .errors import InputError, OvssError


@dataclass
class MethodRun:
    """One method's result on the image: `result` None and `error` set when it failed."""
    method: str
    result: object = None          # ovss.api.SegmentationResult
    seconds: float = 0.0           # segmentation time (model loading excluded)
    load_seconds: float = 0.0      # building the Segmenter (loading models the first time, encoding the text)
    error: Optional[str] = None
    clip: Optional[str] = None     # the CLIP model the method loaded

    def to_dict(self) -> dict:
        out = {"method": self.method, "clip": self.clip, "seconds": round(self.seconds, 4),
               "load_seconds": round(self.load_seconds, 4)}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["areas"] = self.result.areas
            out["scores"] = self.result.scores
        return out


def model_kind(key: str) -> str:
    """The kind of a weights-registry key: "clip:ViT-B/16" -> "clip", "sam:vit_b" -> "sam", "sd21_base" -> "sd",
    a proxy model ("dino_vitb8", ...) -> "vfm"; another prefixed key -> its prefix."""
    if key.startswith("sd"):
        return "sd"
    return key.split(":", 1)[0] if ":" in key else "vfm"


def methods_with_weights(given: Iterable[str] = ()) -> list[str]:
    """The methods whose every model is on this machine: cached, or of a kind named in `given` (the kinds whose
    weights the user passed as a file or "random": "clip", "vfm", "sam", "sd")."""
    from . import weights as W
    from .methods import list_methods
    given = set(given)
    out = []
    for m in list_methods():
        try:
            keys = W.keys_for_method(m.name)
        except OvssError:
            continue
        if all(model_kind(k) in given or W.status(k).state == "cached" for k in keys):
            out.append(m.name)
    return out


def parse_methods(text: Optional[str]) -> Optional[list[str]]:
    """'a, b,c' -> ['a', 'b', 'c'] (unknown names are an InputError; duplicates dropped); None/'' -> None."""
    if text is None or not str(text).strip():
        return None
    from .methods import MODULES
    names = list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(MODULES)}")
    return names


def compare(image, methods: list[str], make_segmenter: Callable[[str], object],
            on_start: Callable[[str, int], None] = lambda m, i: None) -> list[MethodRun]:
    """Run every method on `image` (a LoadedImage). `make_segmenter(method)` builds (or returns a cached)
    Segmenter; `on_start(method, index)` reports progress. Failures become a MethodRun with `error`."""
    if not methods:
        raise InputError("no methods to compare (none has its weights on this machine: pass --methods, or the "
                         "weights with --clip-weights / --vfm-weights / ...)")
    runs = []
    for i, m in enumerate(methods):
        on_start(m, i)
        t0 = time.perf_counter()
        try:
            seg = make_segmenter(m)
            t1 = time.perf_counter()
            res = seg.segment(image)
            runs.append(MethodRun(m, res, time.perf_counter() - t1, t1 - t0, clip=getattr(seg, "clip_name", None)))
        except OvssError as e:
            runs.append(MethodRun(m, None, 0.0, time.perf_counter() - t0, str(e)))
        except (RuntimeError, MemoryError) as e:   # e.g. out of memory on a large image: report, go on
            runs.append(MethodRun(m, None, 0.0, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))
    return runs


def compare_dict(image_name: str, classes: list[str], runs: list[MethodRun]) -> dict:
    """What `ovss compare` writes as JSON: the classes and, per method, its class areas/scores and times."""
    return {"image": image_name, "classes": list(classes), "methods": [r.to_dict() for r in runs]}


def compare_picture(rgb, runs: list[MethodRun], classes, **grid_kw) -> tuple[list[str], object]:
    """(class names, grid PIL image) of the runs: the names of the first method that ran (they include a class a
    method adds, e.g. CLIPer's background), else `classes`; one cell per run, its time or its error as caption."""
    from .viz import compare_grid
    names = next((list(r.result.classes) for r in runs if r.result is not None), list(classes))
    cells = [(r.method, r.result.labels if r.result is not None else None,
              r.result.classes if r.result is not None else [],
              f"{r.seconds:.2f} s" if r.error is None else r.error) for r in runs]
    return names, compare_grid(rgb, cells, names, **grid_kw)

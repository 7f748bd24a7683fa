"""Canonical class names of each benchmark, read from the files shipped in ``ovss/resources/classnames``.

A line of a canonical file holds the synonyms of one class separated by ``"; "``; the class index is the
0-based line number. For reports we show one display name per class: the first synonym, or
``background`` for the line of background words that VOC21 and COCO-Object start with.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

BACKGROUND_LINE = ("voc21", "coco_object")   # line 0 is a list of background words


def class_file(key: str) -> Path:
    """Path of the canonical class file of benchmark ``key`` (e.g. ``voc21``)."""
    path = Path(str(resources.files("ovss").joinpath("resources", "classnames", f"{key}.txt")))
    if not path.is_file():
        raise KeyError(f"no class file for benchmark {key!r}")
    return path


@lru_cache(maxsize=None)
def class_synonyms(key: str) -> tuple[tuple[str, ...], ...]:
    """Synonyms of every class, in index order."""
    lines = class_file(key).read_text(encoding="utf-8").splitlines()
    return tuple(tuple(s.strip() for s in line.split("; ") if s.strip()) for line in lines if line.strip())


@lru_cache(maxsize=None)
def class_names(key: str) -> tuple[str, ...]:
    """One display name per class (first synonym; ``background`` for a background-word line)."""
    syn = class_synonyms(key)
    names = [s[0] for s in syn]
    if key in BACKGROUND_LINE:
        names[0] = "background"
    return tuple(names)

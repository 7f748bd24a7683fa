"""Prompt templates: the 80 ImageNet templates (default), CLIPer's 15 CaR-style ones, or a user file/list."""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from typing import Sequence, Union

from ..errors import InputError

NAMED = {
    "imagenet": "imagenet_templates.txt",
    "cliper_car": "cliper_car_templates.txt",
    "imagenet_subset7": "imagenet_templates_subset7.txt",
    "photo": "photo_template.txt",
    "clip_surgery": "clip_surgery_templates.txt",
}


def resource_path(*parts: str) -> str:
    """Path of a file shipped in ovss/resources."""
    return str(resources.files("ovss").joinpath("resources", *parts))


@lru_cache(maxsize=None)
def _read(path: str) -> tuple[str, ...]:
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\r\n") for ln in f]
    out = tuple(ln for ln in lines if ln.strip())
    if not out:
        raise InputError(f"{path}: no templates in the file")
    for t in out:
        if "{}" not in t:
            raise InputError(f"{path}: template {t!r} has no {{}} placeholder for the class name")
    return out


def load_templates(spec: Union[str, Sequence[str]] = "imagenet") -> tuple[str, ...]:
    """`spec`: a name (imagenet, cliper_car, imagenet_subset7, none), a file with one template per line, or a
    list of templates. 'none' (or None: what `--set templates=none` parses to) means the bare class name."""
    if spec is None:
        return ("{}",)
    if not isinstance(spec, str):
        out = tuple(spec)
        if not out or any("{}" not in t for t in out):
            raise InputError("templates: give at least one template, each with a {} placeholder")
        return out
    if spec == "none":
        return ("{}",)
    if spec in NAMED:
        return _read(resource_path("prompts", NAMED[spec]))
    if os.path.exists(spec):
        return _read(os.path.abspath(spec))
    raise InputError(f"templates={spec!r}: not a known set ({', '.join(NAMED)}, none) nor an existing file")

"""Methods, registered by name. Each lives in its own module and is imported on first use."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import InputError

# method name -> module under ovss.methods
MODULES: dict[str, str] = {
    "clip": "clip_baseline",
    "maskclip": "maskclip",
    "sclip": "sclip",
    "clearclip": "clearclip",
    "naclip": "naclip",
    "cliptrase": "cliptrase",
    "proxyclip": "proxyclip",
    "trident": "trident",
    "cliper_elf": "cliper",
    "cliper": "cliper",
    "scclip": "scclip",
    "resclip": "resclip",
    "itaclip": "itaclip",
    "gem": "gem",
    "clip_surgery": "clip_surgery",
    "cass": "cass",
    "corrclip": "corrclip",
}


def get_method(name: str):
    """The Method class registered as `name`."""
    if name not in MODULES:
        raise InputError(f"unknown method {name!r}; available: {', '.join(MODULES)}")
    try:
        mod = importlib.import_module(f"{__name__}.{MODULES[name]}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{MODULES[name]}":
            raise InputError(f"method {name!r} is not implemented in this build") from None
        raise
    return getattr(mod, "METHODS", {})[name]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    needs: tuple[str, ...]   # models the method loads: clip, vfm, sam, sd
    paper: str
    repo: str
    summary: str


def list_methods() -> list[MethodInfo]:
    out = []
    for name in MODULES:
        try:
            cls = get_method(name)
        except InputError:
            continue
        out.append(MethodInfo(name, tuple(cls.needs), cls.paper, cls.repo, cls.summary))
    return out

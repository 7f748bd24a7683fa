"""Auxiliary class texts: LLM-written definitions or synonyms of class names (ITACLIP, spec methods/itaclip.md §4,
§6), shipped in ovss/resources/auxiliary_texts/ (sources and attribution in its README.md).

File format (the official one): one line per class, `<class name> >=<text>`; the text is what follows `>=`.
Classes are matched to texts by name (case and repeated spaces ignored): in the official files the name part is
the first query string of that class's line, so this equals the official line-by-line pairing on the official
class lists, and it also serves a user's own class list.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from ..errors import InputError
from .templates import resource_path

# shipped sets: name -> file under resources/auxiliary_texts/itaclip/
SHIPPED = {
    "voc21": "voc21_definitions.txt",
    "context60": "context60_definitions.txt",
    "coco_stuff": "coco_stuff_definitions.txt",
    "coco_object": "coco_object_synonyms.txt",
    "cityscapes": "cityscapes_synonyms.txt",
}
ALL = "all"   # every shipped set, definitions first (in the order above); the first set naming a class wins


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def source_path(source: str) -> str:
    """A shipped set's name -> its file; any other string is taken as a path to a file in the same format."""
    if source in SHIPPED:
        return resource_path("auxiliary_texts", "itaclip", SHIPPED[source])
    if not os.path.isfile(source):
        raise InputError(f"aux_texts={source!r}: not a shipped set ({', '.join(SHIPPED)}, {ALL!r}) "
                         f"nor an existing file of '<class name> >=<text>' lines")
    return source


def read_auxiliary(path: str) -> tuple[tuple[str, str], ...]:
    """((name, text), …) in file order. Like the official reader: line breaks removed, the text is the part after
    the first `>=`; the name is the part before it, stripped. Blank lines are skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f.read().split("\n"), 1):
            if not line.strip():
                continue
            parts = line.split(">=")
            if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
                raise InputError(f"{path}, line {no}: expected '<class name> >=<text>', got {line!r}")
            out.append((parts[0].strip(), parts[1]))
    if not out:
        raise InputError(f"{path}: no auxiliary texts in the file")
    return tuple(out)


def auxiliary_table(source: str) -> dict[str, str]:
    """normalised class name -> text for a source (a shipped set, `"all"`, or a file); earlier entries win."""
    paths = [source_path(s) for s in SHIPPED] if source == ALL else [source_path(source)]
    table: dict[str, str] = {}
    for p in paths:
        for name, text in read_auxiliary(p):
            table.setdefault(_key(name), text)
    return table


def lookup_auxiliary(names: Sequence[str], source: str) -> tuple[list[str], list[int]]:
    """One auxiliary text per class name, and the indices of the names the source has no text for: those fall back
    to the class name itself."""
    table = auxiliary_table(source)
    texts: list[str] = []
    missing: list[int] = []
    for i, n in enumerate(names):
        t: Optional[str] = table.get(_key(n))
        if t is None:
            missing.append(i)
            t = n
        texts.append(t)
    return texts, missing

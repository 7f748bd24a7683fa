"""Class lists: what the user gives -> query strings (synonyms) and the query -> class map.

Formats of class files (`class_format`):
  ovss       one class per line, comma-separated synonyms, surrounding spaces stripped, blank lines skipped
  sclip      SCLIP / NACLIP files: every line split on ", "
  proxyclip  ProxyCLIP / Trident files (and ovss's canonical lists): every line split on "; "
  clearclip  ClearCLIP files: every line split on ","
  lines      one query per line, never split (CLIPtrase's ADE-full names contain commas)
  cliper     CLIPer files: line 0 = background words split on the regex [\\s,]+ (class 0, "background"),
             every other line one class used whole as a single prompt
A list is read like the ovss format: a string item holds comma-separated synonyms, a list item holds its
synonyms verbatim.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..errors import InputError

FORMATS = ("ovss", "sclip", "proxyclip", "clearclip", "lines", "cliper")
ClassesInput = Union[str, os.PathLike, Sequence[Union[str, Sequence[str]]]]


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]            # one display name per class (output channel)
    queries: tuple[str, ...]          # every query string, in order
    query_to_class: tuple[int, ...]   # class index of each query
    source: str = "<list>"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_synonyms(self) -> bool:
        return len(self.queries) != len(self.names)


def _split_line(line: str, fmt: str) -> list[str]:
    if fmt == "ovss":
        return [s.strip() for s in line.split(",") if s.strip()]
    if fmt == "sclip":
        return line.split(", ")
    if fmt == "proxyclip":
        return line.split("; ")
    if fmt == "clearclip":
        return line.split(",")
    if fmt == "lines":
        return [line]
    raise InputError(f"class_format={fmt!r}: use one of {', '.join(FORMATS)}")


def _build(groups: list[list[str]], source: str, names: Optional[list[str]] = None,
           check_duplicates: bool = True) -> ClassList:
    if not groups:
        raise InputError(f"{source}: the class list is empty; give at least one class")
    for i, g in enumerate(groups):
        if not g or not any(q.strip() for q in g):
            raise InputError(f"{source}: class {i + 1} is empty")
    names = names or [g[0].strip() for g in groups]
    if check_duplicates:
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            key = " ".join(n.lower().split())
            if key in seen:
                raise InputError(f"{source}: class {n!r} is given twice (classes {seen[key] + 1} and {i + 1}); "
                                 f"put synonyms of one class on one line, separated by commas")
            seen[key] = i
    queries = [q for g in groups for q in g]
    q2c = [i for i, g in enumerate(groups) for _ in g]
    return ClassList(tuple(names), tuple(queries), tuple(q2c), source)


def parse_lines(lines: Sequence[str], fmt: str = "ovss", source: str = "<text>") -> ClassList:
    lines = [ln.rstrip("\r\n") for ln in lines]
    if fmt == "cliper":
        if not lines:
            raise InputError(f"{source}: the class list is empty")
        bg = [w for w in re.split(r"[\s,]+", lines[0]) if w]
        fg = [[ln] for ln in lines[1:] if ln.strip()]
        return _build([bg] + fg, source, names=["background"] + [g[0].strip() for g in fg], check_duplicates=False)
    if fmt == "ovss":
        lines = [ln for ln in lines if ln.strip()]
        return _build([_split_line(ln, fmt) for ln in lines], source)
    # official formats: every line is a class, exactly as the official code reads it
    while lines and not lines[-1].strip():   # a final newline is not a class
        lines.pop()
    return _build([_split_line(ln, fmt) for ln in lines], source, check_duplicates=False)


def parse_text(text: str) -> ClassList:
    """Classes typed as one string: "horse, grass, sky" is three classes; when the string holds ';' or line
    breaks, those separate the classes and commas separate synonyms ("horse; grass, lawn; sky")."""
    if "\n" in text or ";" in text:
        return parse_lines(re.split(r"[;\n]", text), "ovss", source="<classes>")
    return _build([[c.strip()] for c in text.split(",") if c.strip()], "<classes>")


def parse_classes(classes: ClassesInput, fmt: str = "ovss") -> ClassList:
    """A file path (read with `fmt`), a string of class names (see `parse_text`), or a list."""
    if isinstance(classes, (str, os.PathLike)):
        path = os.fspath(classes)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return parse_lines(f.read().split("\n"), fmt, source=path)
        if isinstance(classes, str) and (os.sep in path or path.endswith(".txt")) and "," not in path:
            raise InputError(f"classes={path!r}: no such class file")
        return parse_text(path)
    if classes is None:
        raise InputError("no classes given: pass a list of class names or a class file")
    groups: list[list[str]] = []
    for item in classes:
        if isinstance(item, str):
            groups.append(_split_line(item, "ovss"))
        elif isinstance(item, (list, tuple)):
            groups.append([str(s) for s in item])
        else:
            raise InputError(f"class entry {item!r}: give a string or a list of synonym strings")
    return _build(groups, "<list>")

"""Resumable evaluation state, written atomically (tmp file + ``os.replace``).

``<out>/state/`` holds

* ``base.npz``: what earlier sessions finished (confusion matrix, done image indices, bad samples) and the
  ids of the part files already folded into it;
* ``part-<session>-r<rank>.npz``: what one rank of the current session has done so far, rewritten every few
  seconds and on exit (also on Ctrl-C / SIGTERM).

On ``--resume`` rank 0 folds every part not yet absorbed into a new ``base.npz`` (one atomic replace: a crash
in between cannot count a part twice), then every rank shards the images that are not done. Sums of integers
do not depend on the order, so a resumed run gives exactly the numbers of an uninterrupted one, whatever the
number of ranks before and after.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import OvssError


@dataclass
class Progress:
    """Accumulated work: confusion matrix, done indices, bad samples, images with an all-ignored GT."""
    mat: np.ndarray
    done: set = field(default_factory=set)
    bad: list = field(default_factory=list)
    empty: int = 0
    absorbed: list = field(default_factory=list)
    label_offset: int = 0

    @classmethod
    def empty_like(cls, n: int) -> "Progress":
        return cls(np.zeros((n, n), np.int64))


def _save_npz(path: Path, mat: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, mat=np.asarray(mat, np.int64), meta=np.array(json.dumps(meta)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_npz(path: Path) -> tuple[np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["mat"].astype(np.int64), json.loads(str(z["meta"]))
    except Exception as e:
        raise OvssError(f"cannot read evaluation state {path}: {e}; delete it (or use --overwrite) to start over") from None


class StateDir:
    """The ``state/`` folder of one evaluation output."""

    def __init__(self, out_dir: os.PathLike, fingerprint: dict):
        self.dir = Path(out_dir) / "state"
        self.fingerprint = fingerprint

    @property
    def base_path(self) -> Path:
        return self.dir / "base.npz"

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.npz")) if self.dir.is_dir() else []

    def exists(self) -> bool:
        return self.base_path.is_file() or bool(self.parts())

    def clear(self) -> None:
        for p in [self.base_path, *self.parts()]:
            p.unlink(missing_ok=True)

    def _check(self, meta: dict, path: Path) -> None:
        if meta.get("fingerprint") != self.fingerprint:
            old, new = meta.get("fingerprint") or {}, self.fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise OvssError(f"{path} belongs to a run with a different configuration (differs in: "
                            f"{', '.join(diff)}); use another --out, or --overwrite to start over")

    def load_base(self, size: int) -> Progress:
        if not self.base_path.is_file():
            return Progress.empty_like(size)
        mat, meta = _load_npz(self.base_path)
        self._check(meta, self.base_path)
        return Progress(mat, set(meta["done"]), list(meta["bad"]), int(meta.get("empty", 0)), list(meta["absorbed"]),
                        int(meta.get("label_offset", 0)))

    def consolidate(self, size: int) -> Progress:
        """Fold all parts into base.npz (rank 0 only); returns the merged progress."""
        base = self.load_base(size)
        parts = self.parts()
        fresh = []
        for p in parts:
            mat, meta = _load_npz(p)
            self._check(meta, p)
            if meta["part_id"] in base.absorbed:
                continue
            done = set(meta["done"])
            if done & base.done:
                raise OvssError(f"{p} repeats images already counted ({len(done & base.done)}); the state is "
                                "inconsistent: use --overwrite to start over")
            base.mat += mat
            base.done |= done
            base.bad += meta["bad"]
            base.empty += int(meta.get("empty", 0))
            base.absorbed.append(meta["part_id"])
            base.label_offset = max(base.label_offset, int(meta.get("label_offset", 0)))
            fresh.append(p)
        if fresh or not self.base_path.is_file():
            self.save_base(base)
        for p in parts:
            p.unlink(missing_ok=True)
        return base

    def save_base(self, prog: Progress, complete: bool = False) -> None:
        _save_npz(self.base_path, prog.mat, {"fingerprint": self.fingerprint, "done": sorted(prog.done),
                                             "bad": prog.bad, "empty": prog.empty, "absorbed": prog.absorbed,
                                             "label_offset": prog.label_offset, "complete": complete})

    def save_part(self, part_id: str, prog: Progress) -> None:
        _save_npz(self.dir / f"part-{part_id}.npz", prog.mat,
                  {"fingerprint": self.fingerprint, "part_id": part_id, "done": sorted(prog.done), "bad": prog.bad,
                   "empty": prog.empty, "label_offset": prog.label_offset})

"""Class-agnostic region masks in CorrCLIP's on-disk format (spec methods/corrclip.md §2, §6).

One file per image, ``<folder>/<image stem>.npz``, array key ``instance_mask``: an integer (H, W) map at the
image's size whose minimum value is the union of unsegmented pixels (0 for SAM / SAM 2 maps) and whose other
values are regions (any integers, not necessarily consecutive).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from ..errors import InputError

KEY = "instance_mask"


def mask_path(folder: str, image: str) -> str:
    """The mask file of an image (a path or a file name): ``<folder>/<stem>.npz``."""
    stem = os.path.splitext(os.path.basename(image))[0]
    return os.path.join(folder, f"{stem}.npz")


def read_region_masks(path: str, size: tuple[int, int]) -> np.ndarray:
    """Read one mask file -> (H, W) int32. `size` = (H, W) of the image; any defect is an InputError naming the
    file (missing, unreadable, no `instance_mask`, not 2-D, not integer, wrong size)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: region-mask file not found (expected <image stem>.npz with '{KEY}'; "
                         f"`ovss masks generate` writes them)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if KEY not in f.files:
                raise InputError(f"{path}: no '{KEY}' array in the file (it has: {', '.join(f.files) or 'none'})")
            arr = f[KEY]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: '{KEY}' has shape {arr.shape}, expected (H, W) = {tuple(size)}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InputError(f"{path}: '{KEY}' has dtype {arr.dtype}, expected integers (region ids)")
    if tuple(arr.shape) != tuple(size):
        raise InputError(f"{path}: '{KEY}' is {arr.shape[1]}x{arr.shape[0]} pixels but the image is "
                         f"{size[1]}x{size[0]}")
    return arr.astype(np.int32)


def write_region_masks(path: str, mask: np.ndarray) -> None:
    """Write an (H, W) region map atomically (a temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **{KEY: np.asarray(mask, dtype=np.int32)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def masks_to_region_map(masks: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary masks (N, H, W) -> one (H, W) int32 region map by the official SAM 2 rule: masks sorted by
    ascending area (stable) and written in that order with ids 1, 2, ... (a larger mask overwrites the smaller
    ones it covers); 0 = unsegmented."""
    out = np.zeros(size, dtype=np.int32)
    if len(masks) == 0:
        return out
    m = np.asarray(masks, dtype=bool).reshape(len(masks), *size)
    order = np.argsort(m.reshape(len(m), -1).sum(1), kind="stable")
    # the last mask (in write order) covering a pixel wins: ids 1..N in sorted order
    covered = m[order]
    any_ = covered.any(0)
    last = len(order) - 1 - np.argmax(covered[::-1], axis=0)
    out[any_] = (last + 1)[any_].astype(np.int32)
    return out

"""Reading label maps and image headers the way the official (mmseg) loaders do, with errors that name the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

Image.MAX_IMAGE_PIXELS = None  # benchmark images are trusted files; huge ones are still refused by ovss.images


class DataError(InputError):
    """A dataset file that is missing, unreadable or malformed (the message names the file)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, kind: str = "malformed"):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.kind = kind


def read_label(path: str | os.PathLike, uint16: bool = False) -> np.ndarray:
    """Decode an annotation "unchanged" (a palette PNG gives its indices) as uint8, or uint16 for 16-bit maps.

    mmseg casts whatever it decodes to uint8; a map whose values do not fit is refused here instead of being
    wrapped around silently.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"annotation not found: {p}", p, "missing")
    try:
        with Image.open(p) as im:
            im.load()
            arr = np.array(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode annotation {p}: {e}", p, "corrupt") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise DataError(f"annotation {p} has {arr.shape[2]} channels (colour image?); expected a single-channel "
                        "label map (palette or grey PNG holding class indices)", p, "malformed")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"annotation {p} holds {arr.dtype} values; expected integer class indices", p, "malformed")
    top = np.iinfo(np.uint16).max if uint16 else np.iinfo(np.uint8).max
    if arr.dtype.itemsize > (2 if uint16 else 1) or np.issubdtype(arr.dtype, np.signedinteger):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > top:
            raise DataError(f"annotation {p} has values in [{lo}, {hi}], outside the {'16' if uint16 else '8'}-bit "
                            "range this dataset uses", p, "malformed")
    return arr.astype(np.uint16 if uint16 else np.uint8, copy=False)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header only (cheap); DataError if missing or not an image."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}", p, "missing")
    try:
        with Image.open(p) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {p}: {e}", p, "corrupt") from None
    return h, w


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Fully decode an image (catches truncated files); returns (H, W)."""
    p = Path(path)
    h, w = image_size(p)
    try:
        with Image.open(p) as im:
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {p}: {e}", p, "corrupt") from None
    return h, w


def write_label(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a label map losslessly: uint8 as a grey PNG, uint16 as a 16-bit PNG/TIFF (by the suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.ascontiguousarray(arr)
    if a.dtype == np.uint8:
        Image.fromarray(a).save(p)
    elif a.dtype == np.uint16:
        Image.fromarray(a).save(p)
    else:
        raise ValueError(f"write_label: unsupported dtype {a.dtype}")

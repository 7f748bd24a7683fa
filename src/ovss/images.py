"""The one front door for pixels: path / PIL image / numpy array -> RGB uint8 array.

Handles EXIF orientation, palette and grey images, alpha (composited on white), 16-bit and float data, and
refuses what cannot be an image with a message that names the input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MAX_PIXELS = 100_000_000   # beyond this an input is refused (Pillow's own bomb limit is lifted for us)
MIN_SIDE = 1

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class LoadedImage:
    rgb: np.ndarray            # (H, W, 3) uint8, C-contiguous
    name: str                  # for messages and output file names
    path: Optional[str] = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return self.rgb.shape[0], self.rgb.shape[1]


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        # 16-bit data is scaled by its bit depth (a dark 16-bit image stays dark); other integer types by content
        top = 65535 if a.dtype == np.uint16 or a.max(initial=0) > 255 else 255
        return np.clip(np.round(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"{name}: image has NaN or infinite values")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    raise InputError(f"{name}: unsupported pixel type {a.dtype}")


def _array_to_rgb(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: expected an H x W (x 1/3/4) image array, got shape {tuple(a.shape)}")
    a = _to_uint8(a, name)
    c = a.shape[2]
    if c in (2, 4):  # alpha: composite on white
        alpha = a[:, :, -1:].astype(np.float32) / 255.0
        col = a[:, :, :-1].astype(np.float32)
        a = np.round(col * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(im), name)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        return _array_to_rgb(np.asarray(im.convert("RGBA")), name)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im))


def load_image(image: ImageInput, max_pixels: Optional[int] = None) -> LoadedImage:
    """Decode `image` into RGB uint8; raises InputError naming the input when it is not a usable image.
    `max_pixels` defaults to the module's MAX_PIXELS read at call time (so raising it takes effect)."""
    if max_pixels is None:
        max_pixels = MAX_PIXELS
    if isinstance(image, LoadedImage):
        return image
    path = None
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        name = path
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        if os.path.isdir(path):
            raise InputError(f"{path}: is a folder, not an image")
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, with a clearer message
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(f"{path}: {w}x{h} pixels is larger than the limit of {max_pixels} "
                                     f"(downscale it first, or raise ovss.images.MAX_PIXELS)")
                rgb = _pil_to_rgb(im, name)
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    elif isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<PIL image>"
        rgb = _pil_to_rgb(image, name)
    elif isinstance(image, np.ndarray):
        name = "<array>"
        rgb = _array_to_rgb(image, name)
    else:
        raise InputError(f"unsupported image input of type {type(image).__name__}: give a path, a PIL image "
                         f"or an H x W x 3 uint8 array")
    h, w = rgb.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"{name}: empty image ({w}x{h})")
    if h * w > max_pixels:
        raise InputError(f"{name}: {w}x{h} pixels is larger than the limit of {max_pixels}")
    return LoadedImage(rgb=rgb, name=name, path=path)

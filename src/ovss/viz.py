"""Colours, overlays with a legend, and palette label images."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours: the Pascal VOC bit-interleaving palette (0 = black, 1 = dark red, ...), so label
    PNGs look like the datasets' own; beyond 256 classes it repeats."""
    idx = np.arange(max(n, 1)) % 256
    cmap = np.zeros((len(idx), 3), dtype=np.uint8)
    c = idx.copy()
    for shift in range(7, -1, -1):
        for ch in range(3):
            cmap[:, ch] |= ((c >> ch) & 1).astype(np.uint8) << shift
        c = c >> 3
    return cmap


def label_image(labels: np.ndarray) -> Image.Image:
    """Palette ("P" mode) image whose pixel values are the labels (<= 255), or a 16-bit grey image beyond."""
    labels = np.asarray(labels)
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        return Image.fromarray(labels.astype(np.uint16))
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette(256).reshape(-1).tolist())
    return im


def _font(size: int):
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def overlay(image: np.ndarray, labels: np.ndarray, classes: Sequence[str], alpha: float = 0.5,
            legend: bool = True, colors: Optional[np.ndarray] = None) -> Image.Image:
    """Blend label colours over the RGB image; a legend column on the right lists the present classes with
    their share of the image."""
    labels = np.asarray(labels)
    n = max(len(classes), int(labels.max(initial=0)) + 1)
    # the VOC palette's colour 0 is black: start at colour 1 so that every class gets a visible colour
    cols = palette(n + 1)[1:] if colors is None else np.asarray(colors, dtype=np.uint8)
    img = np.asarray(image, dtype=np.float32)
    blend = (1 - alpha) * img + alpha * cols[labels].astype(np.float32)
    out = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    if not legend:
        return out
    present, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    H, W = labels.shape
    size = max(12, min(24, H // 30))
    font = _font(size)
    rows = [(int(present[i]), counts[i] / labels.size) for i in order]
    text = [f"{classes[k] if k < len(classes) else k}  {share * 100:.1f}%" for k, share in rows]
    draw_probe = ImageDraw.Draw(out)
    text_w = max((draw_probe.textlength(t, font=font) for t in text), default=0)
    pad = size // 2
    lw = int(text_w + size + 3 * pad)
    canvas = Image.new("RGB", (W + lw, max(H, pad + len(rows) * (size + pad) + pad)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = pad
    for (k, _), t in zip(rows, text):
        d.rectangle([W + pad, y, W + pad + size, y + size], fill=tuple(int(v) for v in cols[k]), outline=(0, 0, 0))
        d.text((W + 2 * pad + size, y), t, fill=(0, 0, 0), font=font)
        y += size + pad
    return canvas

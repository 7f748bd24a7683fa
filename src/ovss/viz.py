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


def _wrap(text: str, width_px: float, font, draw) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than `width_px` (a word longer than that is cut)."""
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if draw.textlength(trial, font=font) <= width_px:
            cur = trial
            continue
        if cur:
            lines.append(cur)
        cur = word
        while draw.textlength(cur, font=font) > width_px and len(cur) > 1:   # a path or URL: cut it
            n = len(cur) - 1
            while n > 1 and draw.textlength(cur[:n], font=font) > width_px:
                n -= 1
            lines.append(cur[:n])
            cur = cur[n:]
    return lines + ([cur] if cur else [])


def compare_grid(image: np.ndarray, cells: Sequence[tuple[str, Optional[np.ndarray], Sequence[str], str]],
                 classes: Sequence[str], alpha: float = 0.5, cell_width: int = 360, max_cols: int = 4) -> Image.Image:
    """Several label maps of one image side by side, with one shared legend.

    cells: (title, labels (H, W) or None for a failed method, that method's class names per label value,
    caption: the time, or the error message of a failed method). Colours follow the class *name*, so a method
    that adds a class (CLIPer's background) keeps the others' colours; `classes` fixes the order of the legend
    (names only some method adds come after)."""
    names = list(dict.fromkeys(list(classes) + [n for _, lab, cls, _ in cells if lab is not None for n in cls]))
    cols_all = palette(len(names) + 1)[1:]
    colour = {n: cols_all[i] for i, n in enumerate(names)}
    H, W = image.shape[:2]
    cw = cell_width
    ch = max(1, round(H * cw / W))
    size = 15
    font, bold = _font(size), _font(size + 2)
    title_h, cap_h, pad = size + 10, 2 * size + 8, 8
    ncols = max(1, min(max_cols, len(cells)))
    nrows = (len(cells) + ncols - 1) // ncols
    present: set = set()
    tiles = []
    small = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cw, ch), Image.BILINEAR))
    for title, labels, cls, caption in cells:
        if labels is None:
            tile = Image.new("RGB", (cw, ch), (235, 235, 235))
        else:
            lab = np.asarray(Image.fromarray(np.asarray(labels, dtype=np.int32)).resize((cw, ch), Image.NEAREST))
            used = np.unique(lab)
            present.update(cls[k] if k < len(cls) else str(k) for k in used)
            table = np.array([colour.get(cls[k] if k < len(cls) else str(k), (0, 0, 0))
                              for k in range(max(len(cls), int(lab.max(initial=0)) + 1))], dtype=np.uint8)
            tile = overlay(small, lab, cls, alpha=alpha, legend=False, colors=table)
        tiles.append((title, tile, caption, labels is None))
    legend = [n for n in names if n in present]
    lw = 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if legend:
        lw = int(max(probe.textlength(n, font=font) for n in legend) + size + 3 * pad)
    grid_w = ncols * (cw + pad) + pad
    grid_h = nrows * (title_h + ch + cap_h + pad) + pad
    canvas = Image.new("RGB", (grid_w + lw, max(grid_h, pad + len(legend) * (size + pad) + pad)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for i, (title, tile, caption, failed) in enumerate(tiles):
        x = pad + (i % ncols) * (cw + pad)
        y = pad + (i // ncols) * (title_h + ch + cap_h + pad)
        d.text((x, y), title, fill=(0, 0, 0), font=bold)
        canvas.paste(tile, (x, y + title_h))
        if failed:
            lines = _wrap(caption, cw - 2 * pad, font, d)[: max(1, (ch - 2 * pad) // (size + 4))]
            for j, ln in enumerate(lines):
                d.text((x + pad, y + title_h + pad + j * (size + 4)), ln, fill=(176, 0, 32), font=font)
            d.text((x, y + title_h + ch + 4), "failed", fill=(176, 0, 32), font=font)
        else:
            d.text((x, y + title_h + ch + 4), caption, fill=(60, 60, 60), font=font)
    y = pad
    for n in legend:
        d.rectangle([grid_w + pad, y, grid_w + pad + size, y + size], fill=tuple(int(v) for v in colour[n]),
                    outline=(0, 0, 0))
        d.text((grid_w + 2 * pad + size, y), n, fill=(0, 0, 0), font=font)
        y += size + pad
    return canvas

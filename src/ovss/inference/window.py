"""Sliding-window inference (spec §1.6), batched: the windows of an image all have the same size, so they go
through the network together, and their logits are accumulated with one `index_add_` (no Python loop over
windows or pixels). `slide_inference_many` does the same for several images at once: windows of one shape share
the forward passes (`ovss eval --batch-size`)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError


def window_boxes(H: int, W: int, crop: int, stride: int) -> torch.Tensor:
    """(n, 4) long tensor of (y1, x1, y2, x2): mmseg's grid, last row/column pulled back inside the image."""
    if crop < 1 or stride < 1:
        raise InputError(f"sliding window: slide_crop={crop} and slide_stride={stride} must be positive")
    n_rows = max(H - crop + stride - 1, 0) // stride + 1
    n_cols = max(W - crop + stride - 1, 0) // stride + 1
    y1 = torch.arange(n_rows) * stride
    x1 = torch.arange(n_cols) * stride
    y2 = torch.clamp(y1 + crop, max=H)
    x2 = torch.clamp(x1 + crop, max=W)
    y1 = torch.clamp(y2 - crop, min=0)
    x1 = torch.clamp(x2 - crop, min=0)
    yy1, xx1 = torch.meshgrid(y1, x1, indexing="ij")
    yy2, xx2 = torch.meshgrid(y2, x2, indexing="ij")
    return torch.stack([yy1.flatten(), xx1.flatten(), yy2.flatten(), xx2.flatten()], dim=1)


def _pixel_index(boxes: torch.Tensor, W: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (n, ch, 1) / (n, 1, cw) of every window pixel."""
    ch = int(boxes[0, 2] - boxes[0, 0])
    cw = int(boxes[0, 3] - boxes[0, 1])
    rows = (boxes[:, 0:1] + torch.arange(ch)).to(device)[:, :, None]
    cols = (boxes[:, 1:2] + torch.arange(cw)).to(device)[:, None, :]
    return rows, cols


def gather_windows(img: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """img (C, H, W) -> the windows (n, C, ch, cw)."""
    rows, cols = _pixel_index(boxes, img.shape[-1], img.device)
    return img[:, rows, cols].permute(1, 0, 2, 3)


def accumulate_windows(values: torch.Tensor, boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Average window values (n, Q, ch, cw) into a (Q, H, W) canvas by per-pixel window counts."""
    n, Q = values.shape[:2]
    rows, cols = _pixel_index(boxes, W, values.device)
    flat = (rows * W + cols).reshape(-1)
    acc = torch.zeros(Q, H * W, dtype=torch.float32, device=values.device)
    acc.index_add_(1, flat, values.permute(1, 0, 2, 3).reshape(Q, -1).float())
    cnt = torch.bincount(flat, minlength=H * W).to(acc.dtype)
    if bool((cnt == 0).any()):
        raise RuntimeError("sliding windows do not cover the image")
    return (acc / cnt).view(Q, H, W)


def centre_pad(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding to the next multiple, split pad//2 before and the rest after."""
    pw = (-w) % multiple
    ph = (-h) % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def cut_windows(img: torch.Tensor, crop: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """img (C, H, W) -> its windows (n, C, ch, cw) and their boxes (n, 4) (window_boxes)."""
    if stride > crop:
        raise InputError(f"slide_stride={stride} is larger than slide_crop={crop}: the windows would leave gaps")
    boxes = window_boxes(img.shape[-2], img.shape[-1], crop, stride)
    return gather_windows(img, boxes), boxes


def forward_windows(windows: torch.Tensor, forward: Callable[..., torch.Tensor], pad_multiple: Optional[int] = None,
                    batch_size: int = 8, aux_windows: Optional[torch.Tensor] = None,
                    aux_pad: float = 0) -> torch.Tensor:
    """Windows of one shape (n, C, h, w) -> forward's logits (n, Q, h, w), `batch_size` windows per call; with
    `pad_multiple` each window is zero-padded (centred) first and its logits cropped back; `aux_windows`
    (n, A, h, w), padded with `aux_pad`, are passed along: `forward(windows, aux_windows)`."""
    h, w = windows.shape[-2:]
    pad = centre_pad(h, w, pad_multiple) if pad_multiple else (0, 0, 0, 0)
    outs = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        extra = () if aux_windows is None else (aux_windows[i:i + batch_size],)
        if any(pad):
            chunk = F.pad(chunk, pad)
            extra = tuple(F.pad(e, pad, value=aux_pad) for e in extra)
        out = forward(chunk, *extra)
        if any(pad):
            out = out[:, :, pad[2]:pad[2] + h, pad[0]:pad[0] + w]
        outs.append(out)
    return torch.cat(outs)


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts)    # one image: no copy


def slide_inference_many(imgs: list[torch.Tensor], crop: int, stride: int,
                         forward: Callable[..., torch.Tensor], pad_multiple: Optional[int] = None,
                         batch_size: int = 8, aux: Optional[list[torch.Tensor]] = None,
                         aux_pad: float = 0) -> list[torch.Tensor]:
    """Images (1, C, H_i, W_i) -> their (Q, H_i, W_i) averaged window logits, each as `slide_inference` gives it;
    the windows of all images that share a shape (all but those of images smaller than the crop) go through
    `forward` together, `batch_size` per call. `aux`: one (A, H_i, W_i) map per image (see slide_inference)."""
    cuts = [cut_windows(img[0], crop, stride) for img in imgs]
    aux_cuts = [gather_windows(a, boxes) for a, (_, boxes) in zip(aux, cuts)] if aux is not None else None
    groups: dict[tuple, list[int]] = {}
    for i, (windows, _) in enumerate(cuts):
        groups.setdefault(tuple(windows.shape[-2:]), []).append(i)
    out: list = [None] * len(imgs)
    for members in groups.values():
        logits = forward_windows(_cat([cuts[i][0] for i in members]), forward, pad_multiple, batch_size,
                                 _cat([aux_cuts[i] for i in members]) if aux_cuts is not None else None, aux_pad)
        for i, part in zip(members, logits.split([len(cuts[i][1]) for i in members])):
            out[i] = accumulate_windows(part, cuts[i][1], *imgs[i].shape[-2:])
    return out


def slide_inference(img: torch.Tensor, crop: int, stride: int,
                    forward: Callable[[torch.Tensor], torch.Tensor], pad_multiple: Optional[int] = None,
                    batch_size: int = 8, aux: Optional[torch.Tensor] = None, aux_pad: float = 0) -> torch.Tensor:
    """img (1, C, H, W) -> (Q, H, W) averaged window logits.

    `forward(windows (n, C, h, w)) -> (n, Q, h, w)` logits at the window's pixel size. With `pad_multiple`, every
    window is zero-padded (centred) to the next multiple first and its logits cropped back (ClearCLIP: the patch
    size; ProxyCLIP: 56). With `aux` (A, H, W), e.g. a region map, its windows (n, A, h, w), padded with
    `aux_pad`, are passed too: `forward(windows, aux_windows)` (CorrCLIP)."""
    return slide_inference_many([img], crop, stride, forward, pad_multiple, batch_size,
                                None if aux is None else [aux], aux_pad)[0]

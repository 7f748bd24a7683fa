"""A deterministic stand-in for ovss.Segmenter (dependency injection into the eval runner).

It reads the ground truth of the image it is asked about and returns it with a deterministic corruption, so
the metrics are non-trivial but known. ``cfg.overrides`` steer it: ``offset`` (CLIPer-style 0 = background,
1+c = class c), ``crop`` (CLIPtrase-style SxS evaluation: a target_transform), ``fail_after`` (raise
KeyboardInterrupt after N predictions), ``crash_after`` (RuntimeError), ``delay`` (seconds per image).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ovss.data import get_dataset


def corrupt(gt: np.ndarray, k: int, ignore: int, index: int) -> np.ndarray:
    h, w = gt.shape
    yy, xx = np.mgrid[:h, :w]
    pred = gt.astype(np.int64)
    ign = (gt == ignore) | (pred >= k)
    pred[ign] = ((xx * 3 + yy) % k)[ign]
    flip = (yy * 7 + xx * 3 + index) % 5 == 0
    pred[flip] = (pred[flip] + 1) % k
    return pred


def center_crop_nearest(gt: np.ndarray, s: int) -> np.ndarray:
    h, w = gt.shape
    if h <= w:
        nh, nw = s, int(s * w / h)
    else:
        nh, nw = int(s * h / w), s
    ys = (np.arange(nh) * h // nh)
    xs = (np.arange(nw) * w // nw)
    r = gt[ys][:, xs]
    t, l = (nh - s) // 2, (nw - s) // 2
    return r[t:t + s, l:l + s]


class FakeSegmenter:
    def __init__(self, cfg, device=None):
        self.ds = get_dataset(cfg.dataset, cfg.data_root, cfg.layout, cfg.ignore_index)
        self.samples = {str(s.image): s for s in self.ds.samples}
        o = cfg.overrides
        self.label_offset = int(o.get("offset", 0))
        names = list(self.ds.class_names)
        self.classes = (["background"] if self.label_offset else []) + names
        self.crop = o.get("crop")
        if self.crop:
            self.target_transform = lambda gt: center_crop_nearest(gt, self.crop)
        self.fail_after = o.get("fail_after")
        self.crash_after = o.get("crash_after")
        self.delay = float(o.get("delay", 0))
        self.device = "cpu"
        self.calls = 0

    def predict(self, image):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        with Image.open(image) as im:       # decode like a real model would (corrupt files raise OSError)
            im.convert("RGB")
        s = self.samples[str(image)]
        gt = self.ds.load_gt(s)
        if self.crop:
            gt = center_crop_nearest(gt, self.crop)
        pred = corrupt(gt, self.ds.num_classes, self.ds.ignore_index, s.index)
        if self.label_offset:
            h, w = pred.shape
            yy, xx = np.mgrid[:h, :w]
            pred = pred + self.label_offset
            pred[(yy + xx + s.index) % 11 == 0] = 0       # "background" = no class on a dataset without one
        if self.delay:
            time.sleep(self.delay)
        return torch.from_numpy(pred)


def make(cfg, device=None):
    return FakeSegmenter(cfg, device)

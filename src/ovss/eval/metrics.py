"""Segmentation metrics from one confusion matrix accumulated over the dataset.

The accumulator is a ``(K+1) x (K+1)`` int64 matrix (rows: ground truth, columns: prediction) on the
device; pixels whose GT equals ``ignore_index`` are dropped, and index ``K`` collects every value outside
``0..K-1`` on either side (a "no class" prediction, a 16-bit "unlabeled" GT that is not ignored). Every
definition the official evaluations use can be computed from it exactly:

* ``mmseg`` (default; spec §4.1): mmseg ``IoUMetric``. ``I_k`` = diagonal, ``P_k`` = column sum over all
  non-ignored pixels (also those with an out-of-range GT), ``G_k`` = row sum; ``IoU = I/(P+G-I)`` (NaN when
  the union is 0, left out of the mean), ``Acc = I/G``, ``aAcc = ΣI/ΣG``, ``fwIoU = Σ (G_k/ΣG)·IoU_k``.
* ``cliptrase`` (§4.2): rows restricted to valid GT; ``IoU = M_kk/(row+col-M_kk+0.01)``, mean over classes
  with ``row > 0``; ``mAcc`` = mean of ``M_kk/(row+0.01)`` over all classes; pAcc; fwIoU over ``row > 0``.
* ``cliper`` (§4.3): as cliptrase with ``1e-5``; with a background slot that the dataset lacks
  (``label_offset = 1``) that empty slot enters the ``mAcc`` mean as 0, as in the official code.

All summary numbers are percentages rounded to 2 decimals, as the official code prints them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_long(x: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.int64)
    a = np.asarray(x)
    if a.dtype in (np.uint16, np.uint32, np.uint64):
        a = a.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=torch.int64)


class ConfusionMatrix:
    """Running ``(K+1)^2`` int64 confusion matrix on ``device`` (index ``K`` = outside the class range)."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255, device: Union[str, torch.device] = "cpu"):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        n = self.num_classes + 1
        self.mat = torch.zeros((n, n), dtype=torch.int64, device=self.device)

    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one image (any integer dtypes; shapes must match)."""
        k = self.num_classes
        g = _as_long(gt, self.device)
        p = _as_long(pred, self.device)
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {tuple(p.shape)} != ground-truth shape {tuple(g.shape)}")
        g, p = g.reshape(-1), p.reshape(-1)
        if self.ignore_index is not None:
            keep = g != self.ignore_index
            g, p = g[keep], p[keep]
        g = torch.where((g >= 0) & (g < k), g, k)
        p = torch.where((p >= 0) & (p < k), p, k)
        self.mat += torch.bincount(g * (k + 1) + p, minlength=(k + 1) ** 2).view(k + 1, k + 1)

    def add(self, other: Union["ConfusionMatrix", np.ndarray, torch.Tensor]) -> None:
        m = other.mat if isinstance(other, ConfusionMatrix) else other
        self.mat += _as_long(m, self.device).view_as(self.mat)

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()


@dataclass
class Metrics:
    """Summary (percent, rounded as the official code does) and per-class values (percent, NaN = undefined)."""
    definition: str
    summary: dict
    per_class: dict                  # name -> list over classes (IoU, Acc, gt_pixels, pred_pixels)
    exact: dict = field(default_factory=dict)   # unrounded summary values (percent)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(a, b)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float("nan") if np.isnan(x).all() else float(np.nanmean(x))


def _pct(summary: dict) -> tuple[dict, dict]:
    exact = {k: v * 100.0 for k, v in summary.items()}
    return {k: (float(np.round(v, 2)) if np.isfinite(v) else float("nan")) for k, v in exact.items()}, exact


def mmseg_metrics(mat: np.ndarray) -> Metrics:
    """mmseg IoUMetric (+ fwIoU) from a ``(K+1)^2`` matrix."""
    m = np.asarray(mat, np.float64)
    k = m.shape[0] - 1
    inter = np.diag(m)[:k]
    pred = m[:, :k].sum(0)
    gt = m[:k, :].sum(1)
    union = pred + gt - inter
    iou = _div(inter, union)
    acc = _div(inter, gt)
    freq = _div(gt, gt.sum())
    fw = float(np.nansum(freq[gt > 0] * iou[gt > 0])) if gt.sum() > 0 else float("nan")
    s = {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc),
         "aAcc": float(inter.sum() / gt.sum()) if gt.sum() > 0 else float("nan"), "fwIoU": fw}
    summary, exact = _pct(s)
    return Metrics("mmseg", summary, {"IoU": (iou * 100).tolist(), "Acc": (acc * 100).tolist(),
                                      "gt_pixels": gt.astype(np.int64).tolist(),
                                      "pred_pixels": pred.astype(np.int64).tolist()}, exact)


def _hist_metrics(mat: np.ndarray, eps: float, name: str, extra_slots: int = 0) -> Metrics:
    m = np.asarray(mat, np.float64)
    k = m.shape[0] - 1
    h = m[:k, :]                       # valid GT rows, every prediction (column k = no class)
    diag = np.diag(m)[:k]
    row = h.sum(1)
    col = h[:, :k].sum(0)
    iou = diag / (row + col - diag + eps)
    acc = diag / (row + eps)
    valid = row > 0
    total = h.sum()
    freq = row / total if total > 0 else np.zeros_like(row)
    s = {"mIoU": float(iou[valid].mean()) if valid.any() else float("nan"),
         "mAcc": float(acc.sum() / (k + extra_slots)),
         "aAcc": float(diag.sum() / total) if total > 0 else float("nan"),
         "fwIoU": float((freq[valid] * iou[valid]).sum())}
    summary, exact = _pct(s)
    return Metrics(name, summary, {"IoU": np.where(valid, iou * 100, np.nan).tolist(),
                                   "Acc": np.where(valid, acc * 100, np.nan).tolist(),
                                   "gt_pixels": row.astype(np.int64).tolist(),
                                   "pred_pixels": col.astype(np.int64).tolist()}, exact)


def cliptrase_metrics(mat: np.ndarray, label_offset: int = 0) -> Metrics:
    """CLIPtrase ``scores`` (``pAcc`` is reported as aAcc)."""
    return _hist_metrics(mat, 0.01, "cliptrase")


def cliper_metrics(mat: np.ndarray, label_offset: int = 0) -> Metrics:
    """CLIPer ``ShowSegmentResult`` (its background slot counts in mAcc when the dataset has none)."""
    return _hist_metrics(mat, 1e-5, "cliper", extra_slots=label_offset)


METRICS = {"mmseg": lambda mat, label_offset=0: mmseg_metrics(mat), "cliptrase": cliptrase_metrics,
           "cliper": cliper_metrics}


def compute_metrics(mat: np.ndarray, definition: str = "mmseg", label_offset: int = 0) -> Metrics:
    if definition not in METRICS:
        raise ValueError(f"unknown metric {definition!r}; known: {', '.join(METRICS)}")
    return METRICS[definition](mat, label_offset=label_offset)

"""Trident's SAM refinement (spec §2.8 D, official ``seg_utils.utils.sam_refinement``), vectorised.

1. ×2 down-sampling of the coarse labels (nearest) and probabilities (bilinear); pixels whose best
   probability is below ``coarse_thresh`` become "uncertain" (never refined);
2. per class: 8-connected components of its label mask (``skimage.measure.label``, connectivity 2) with at
   least ``minimal_area`` pixels; per region the point of highest class probability (first in row-major
   order) and the inclusive bounding box (:func:`region_prompts`);
3. one SAM mask-decoder batch for all regions of all classes: point + box prompts scaled to SAM's frame of
   the down-sampled map, and the class's probability map as mask prompt (long side 256, zero padded,
   ``α·P`` where ``P > coarse_thresh``), fed as the official 3-D ``1x256x256`` tensor;
4. masks with predicted IoU > ``sam_iou_thresh`` kept; ``R_k = max_r(sigmoid(logit_r)) · P_k`` on the
   union of the class's binary masks; final label ``argmax_k R_k`` where some mask covers the pixel, the
   coarse label elsewhere (the official "failed regions" step cannot change a label).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Regions:
    """Prompts of the connected regions of one class map (all tensors have one row per region)."""
    points: torch.Tensor    # (R, 2) long, (x, y)
    boxes: torch.Tensor     # (R, 4) long, (x_min, y_min, x_max, y_max), inclusive
    areas: torch.Tensor     # (R,) long


def region_prompts(mask: np.ndarray, prob: torch.Tensor, minimal_area: int) -> Regions:
    """8-connected regions of a binary (h, w) mask with at least `minimal_area` pixels, in the raster order of
    their labels, with the argmax point of ``prob · 1_R`` (first maximum in row-major order) and the box."""
    from skimage import measure

    lab = torch.from_numpy(measure.label(mask, connectivity=2).astype(np.int64)).reshape(-1)
    h, w = mask.shape
    n = int(lab.max()) if lab.numel() else 0
    empty = Regions(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long))
    if n == 0:
        return empty
    areas = torch.bincount(lab, minlength=n + 1)[1:]
    keep = torch.nonzero(areas >= minimal_area).flatten() + 1            # region labels, ascending
    if keep.numel() == 0:
        return empty
    inside = lab > 0
    idx = torch.nonzero(inside).flatten()
    rl = lab[idx]
    p = prob.reshape(-1).float().cpu()[idx]
    best = torch.full((n + 1,), float("-inf")).scatter_reduce(0, rl, p, "amax")
    at_best = p == best[rl]
    first = torch.full((n + 1,), h * w, dtype=torch.long).scatter_reduce(0, rl[at_best], idx[at_best], "amin")
    # a region whose probabilities are all 0 ties with the zeros outside it: argmax is then pixel 0
    first = torch.where(best > 0, first, torch.zeros_like(first))
    ys, xs = idx // w, idx % w
    big = torch.full((n + 1,), h * w, dtype=torch.long)
    small = torch.full((n + 1,), -1, dtype=torch.long)
    boxes = torch.stack([big.scatter_reduce(0, rl, xs, "amin"), big.scatter_reduce(0, rl, ys, "amin"),
                         small.scatter_reduce(0, rl, xs, "amax"), small.scatter_reduce(0, rl, ys, "amax")], 1)
    pts = torch.stack([first % w, first // w], 1)
    return Regions(pts[keep], boxes[keep], areas[keep - 1])


def mask_prompt(prob_down: torch.Tensor, image_hw: tuple[int, int], coarse_thresh: float, coeff: float,
                transform) -> torch.Tensor:
    """Class probability map (h, w) -> SAM mask prompt (1, 256, 256): bilinear to the long-side-256 frame of the
    original image, zero padded right/bottom, α·P where P > coarse_thresh, else 0. Deliberately 3-D."""
    nh, nw = transform.get_preprocess_shape(image_hw[0], image_hw[1], 256)
    m = F.interpolate(prob_down[None, None].float(), (nh, nw), mode="bilinear", align_corners=False)[0]
    m = F.pad(m, (0, 256 - nw, 0, 256 - nh))
    return torch.where(m > coarse_thresh, coeff * m, torch.zeros_like(m))


@torch.no_grad()
def sam_refine(sam, state, pred: torch.Tensor, probs: torch.Tensor, coarse_thresh: float, minimal_area: int,
               coeff: float, iou_thresh: float, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine coarse labels `pred` (H, W) with class probabilities `probs` (C, H, W) at the original size, using
    SAM's embedding `state` of the whole image. Returns (labels (H, W), refined scores (C, H, W), zero where
    no kept mask covers the pixel)."""
    C, H, W = probs.shape
    dev = probs.device
    dh, dw = H // 2, W // 2
    pred_d = F.interpolate(pred[None, None].float(), (dh, dw), mode="nearest")[0, 0].long()
    probs_d = F.interpolate(probs[None].float(), (dh, dw), mode="bilinear", align_corners=False)[0]
    if coarse_thresh > 0:
        pred_d = torch.where(probs_d.max(0).values < coarse_thresh, torch.full_like(pred_d, C), pred_d)
    pred_np = pred_d.cpu().numpy()
    class_max = probs_d.amax(dim=(1, 2))

    pe = sam.model.prompt_encoder
    sparse, dense, owner = [], [], []
    for k in range(C):                                   # classes, not pixels: at most C small label maps
        if bool(class_max[k] < coarse_thresh):
            continue
        mask = pred_np == k
        if not mask.any():
            continue
        reg = region_prompts(mask, probs_d[k], minimal_area)
        R = reg.points.shape[0]
        if R == 0:
            continue
        pts = sam.transform.apply_coords_torch(reg.points.to(dev), (dh, dw)).unsqueeze(1)
        boxes = sam.transform.apply_boxes_torch(reg.boxes.to(dev), (dh, dw)).float()
        sp, _ = pe(points=(pts.float(), torch.ones(R, 1, device=dev)), boxes=boxes, masks=None)
        _, dn = pe(points=None, boxes=None,
                   masks=mask_prompt(probs_d[k], (H, W), coarse_thresh, coeff, sam.transform).to(dev))
        sparse.append(sp)
        dense.append(dn.reshape(1, *dn.shape[-3:]).expand(R, -1, -1, -1))
        owner.append(torch.full((R,), k, dtype=torch.long, device=dev))
    scores = torch.zeros(C, H, W, dtype=torch.float32, device=dev)
    if not sparse:
        return pred, scores
    low, iou = sam.decode(state, torch.cat(sparse), torch.cat(dense))
    keep = iou[:, 0] > iou_thresh
    if not bool(keep.any()):
        return pred, scores
    low, owner = low[keep], torch.cat(owner)[keep]
    best_sig = torch.zeros(C, H, W, device=dev)        # max over a class's kept regions of sigmoid(logit)
    union = torch.zeros(C, H, W, device=dev)           # 1 where one of its kept masks covers the pixel
    for s in range(0, low.shape[0], chunk):            # chunks bound the full-size masks held at once
        logits = sam.postprocess_masks(low[s:s + chunk], state)[:, 0]            # (r, H', W')
        if tuple(logits.shape[-2:]) != (H, W):
            logits = F.interpolate(logits[None], (H, W), mode="bilinear", align_corners=False)[0]
        idx = owner[s:s + chunk].view(-1, 1, 1).expand_as(logits)
        best_sig.scatter_reduce_(0, idx, logits.sigmoid(), "amax")
        union.scatter_reduce_(0, idx, (logits > 0).float(), "amax")
    scores = best_sig * probs.float() * union
    covered = scores.sum(0) > 0
    labels = torch.where(covered, scores.argmax(0), pred)
    return labels, scores

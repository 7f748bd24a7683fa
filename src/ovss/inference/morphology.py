"""Grey-level morphology of label maps (ITACLIP's final 3×3 closing, spec methods/itaclip.md §5 step 5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def close_labels(labels: torch.Tensor, size: int = 3) -> torch.Tensor:
    """(H, W) integer labels -> the same shape after a size×size square closing of the label *indices*: a max filter,
    then a min filter. Only in-image pixels count at the border (the same as edge replication), as
    `cv2.morphologyEx(labels_uint8, MORPH_CLOSE, 3×3 rect)`; the indices are not wrapped to uint8."""
    if size <= 1:
        return labels
    if size % 2 != 1:
        raise ValueError(f"close_labels: the filter size must be odd, got {size}")
    pad = size // 2
    x = labels.to(torch.float64)[None, None]
    x = F.max_pool2d(x, size, stride=1, padding=pad)          # max_pool2d pads with -inf: in-image maxima only
    x = -F.max_pool2d(-x, size, stride=1, padding=pad)        # min filter the same way
    return x[0, 0].to(labels.dtype)

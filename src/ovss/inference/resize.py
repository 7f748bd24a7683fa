"""Resizing and normalisation rules of the official pipelines."""
from __future__ import annotations

import cv2
import numpy as np
import torch

# mmseg's SegDataPreProcessor for CLIP: the OpenAI statistics x 255, on RGB
MMSEG_MEAN = (122.771, 116.746, 104.094)
MMSEG_STD = (68.501, 66.632, 70.323)


def mmseg_scale(h: int, w: int, short_side: int, long_cap: int = 2048) -> tuple[int, int]:
    """mmcv `imrescale` with scale=(long_cap, short_side), keep_ratio: the new (h, w)."""
    f = min(long_cap / max(h, w), short_side / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def mmseg_resize(rgb: np.ndarray, short_side: int | None, long_cap: int = 2048) -> np.ndarray:
    """uint8 RGB -> resized uint8 RGB with OpenCV bilinear (INTER_LINEAR), as mmcv does. None = unchanged."""
    if not short_side:
        return rgb
    h, w = rgb.shape[:2]
    nh, nw = mmseg_scale(h, w, short_side, long_cap)
    if (nh, nw) == (h, w):
        return rgb
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)


def mmseg_normalize(rgb: np.ndarray, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> (1, 3, H, W) float, (x - mean) / std with mmseg's CLIP statistics."""
    # torch.tensor copies: a read-only array (PIL-decoded images are) gives no "not writable" warning
    x = torch.tensor(np.asarray(rgb), device=device).permute(2, 0, 1).float()
    mean = torch.tensor(MMSEG_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(MMSEG_STD, device=x.device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0).to(dtype)


def clip_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """torchvision ToTensor + Normalize(CLIP mean/std), as CLIPtrase and CLIPer preprocess:
    uint8 (H, W, 3) -> (1, 3, H, W) float32."""
    from ..backbones.clip import CLIP_MEAN, CLIP_STD
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std)[None]


def pil_warp_to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """torchvision `Resize((size, size), BICUBIC)` on the PIL image (aspect ratio not kept, PIL's antialiased
    bicubic), ToTensor, CLIP mean/std, as GEM and CLIP Surgery preprocess: uint8 (H, W, 3) -> (1, 3, S, S)."""
    from PIL import Image
    return clip_to_tensor(np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC)))

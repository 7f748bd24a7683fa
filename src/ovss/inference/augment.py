"""Test-time views of a batch of normalised images (ITACLIP's "image engineering", spec methods/itaclip.md §2):
greyscale, Gaussian blur, vertical and horizontal flips, all on the normalised tensor, and the flip-back of maps
computed on flipped views. Each function is the torchvision tensor operation the official code uses, written
out (torchvision is not a dependency)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

GREY_WEIGHTS = (0.2989, 0.587, 0.114)   # torchvision rgb_to_grayscale, channels R, G, B


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): 0.2989·R + 0.587·G + 0.114·B repeated on the three channels."""
    r, g, b = x.unbind(dim=-3)
    grey = GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b
    return grey.unsqueeze(-3).expand_as(x)


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> torch.Tensor:
    """(size,) weights exp(-x²/(2σ²)) at x = -(size-1)/2 … (size-1)/2, normalised to sum 1."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """(B, C, H, W) -> same shape: per-channel size×size Gaussian (outer product of the 1-D kernel) after reflect
    padding by size//2 (mirror without repeating the edge pixel), as torchvision's GaussianBlur."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"gaussian_blur: the kernel size must be odd and positive, got {size}")
    k1 = gaussian_kernel1d(size, sigma, dtype=x.dtype, device=x.device)
    k2 = torch.outer(k1, k1)
    C = x.shape[1]
    pad = size // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(xp, k2.expand(C, 1, size, size), groups=C)


def engineered_views(x: torch.Tensor, blur_size: int = 11, blur_sigma: float = 5.0) -> torch.Tensor:
    """(B, 3, H, W) -> (5·B, 3, H, W), view-major: original, greyscale, blurred, rows reversed (vertical flip),
    columns reversed (horizontal flip)."""
    return torch.cat([x, grayscale(x), gaussian_blur(x, blur_size, blur_sigma), x.flip(-2), x.flip(-1)])


def unflip_mean(vflipped: torch.Tensor, hflipped: torch.Tensor) -> torch.Tensor:
    """Maps (…, H, W) computed on the vertically / horizontally flipped views -> their mean in the original frame."""
    return (vflipped.flip(-2) + hflipped.flip(-1)) * 0.5

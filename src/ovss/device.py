"""Device and dtype choice: cuda -> mps -> cpu, half precision on GPUs."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .errors import InputError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The requested device, or the best available one (cuda, then mps, then cpu)."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device={device!r} requested but CUDA is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: Optional[Union[str, torch.dtype]] = None) -> torch.dtype:
    """fp32 on the CPU (the parity reference); fp16 on CUDA/MPS unless bf16/fp32 is asked for."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in _DTYPES:
            raise InputError(f"dtype={dtype!r}: use one of fp32, fp16, bf16")
        return _DTYPES[dtype]
    return torch.float32 if device.type == "cpu" else torch.float16

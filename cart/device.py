"""Device and precision settings (`device: auto|cpu|cuda`, `dtype: auto|float32|bfloat16`), the
same for training and evaluation: auto means CUDA with bf16 autocast when a GPU is present, else
the CPU in fp32."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(setting: str, where: str = "device") -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: 'cuda' requested but no CUDA device is available; use auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(setting: str, device: torch.device, where: str = "dtype") -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"{where}: {setting!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[setting]


def autocast(device: torch.device | str, dtype: torch.dtype):
    """bf16 autocast where asked for; a no-op context for fp32."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

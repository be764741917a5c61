"""Devices and precision: ``--device`` names as torch devices, ``--half``'s dtype, autocast."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from vprkit.errors import VprkitError

__all__ = ["autocast", "cpu_has_bf16", "half_dtype", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device; one
    clear line for an unknown name or a CUDA device without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VprkitError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VprkitError(f"device {device} requested but CUDA is not available")
    return dev


def half_dtype(device: torch.device) -> torch.dtype:
    """--half: float16 on CUDA, bfloat16 on CPUs (native on AVX512-BF16 / AMX processors)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (None where unknown: not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast(device: torch.device, half: bool):
    """Reduced-precision autocast with ``half`` (``half_dtype``), else a no-op context."""
    if half:
        return torch.autocast(device_type=device.type, dtype=half_dtype(device))
    return nullcontext()

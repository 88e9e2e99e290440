"""The one place that picks a backend: torch on CPU, Triton on CUDA, flashinfer where installed and
asked for (the engine's attention only: engine/attention_flashinfer.py). KOJUDGE_BACKEND overrides
(tests use it to run Triton kernels in the CPU interpreter)."""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "flashinfer")


def flashinfer_available() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def choose_backend(device: torch.device | str, requested: str | None = None) -> str:
    requested = requested or os.environ.get("KOJUDGE_BACKEND")
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
        if requested == "flashinfer" and not flashinfer_available():
            raise ValueError("backend 'flashinfer' asked for but the flashinfer package is not "
                             "installed")
        return requested
    return "triton" if torch.device(device).type == "cuda" else "torch"

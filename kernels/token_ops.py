"""The decoder's per-token passes, RMSNorm and the rotary embedding, in one pass each by the C++
kernels of token_ops.cpp, for inference on CPU. kojudge.model.decoder's torch code is their
reference and runs wherever `applies` is False: training (no backward here), other devices and
dtypes, or no library (kernels/native.py)."""
from __future__ import annotations

import torch

from kojudge.kernels.native import library

DTYPES = (torch.float32, torch.bfloat16)


def applies(x: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether the kernels take x ([N, D] or [N, H, D], last dim contiguous) with a weight or
    table `other` of its dtype."""
    return (library is not None and x.device.type == "cpu" and x.dtype in DTYPES
            and other.dtype == x.dtype and x.dim() in (2, 3) and x.stride(-1) == 1
            and not torch.is_grad_enabled())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, normalized in float32 and rounded
    to x's dtype before the weight."""
    return library.rms_norm(x, weight, eps)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d] * cos + rotate_half(x) * sin, with cos, sin [T, 1, d] (contiguous)."""
    return library.rotary(x, cos, sin)

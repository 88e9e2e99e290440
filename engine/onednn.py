"""Linear layers on oneDNN with each weight packed once, for CPU inference.

aten's float32 matmul on CPU goes through MKL, which on the AMD EPYC (Zen 5) machines this project
runs on reaches about 220 GFLOP/s on 2 cores for a 1024^3 product, where oneDNN reaches about 500
in true float32: the same error against float64 at small inner sizes, about twice MKL's at an inner
size of 1,024 (another summation order), nothing like bfloat16's. The decode shapes gain as much
(64 x 512 x 3072: 190 -> 490 GFLOP/s), and bfloat16 gains 15% over aten's own oneDNN call, which
reorders the weight on every call. oneDNN ships inside torch (`torch.ops.mkldnn`, the ops inductor
uses for the same purpose); where torch was built without it, nothing is packed.

The packed copy sits beside the dense weight, which the model keeps for `update_weights` and, when
tied, for the embedding: packing costs one more copy of the linear weights in memory.
"""
from __future__ import annotations

import torch
from torch import nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)
BATCH_HINT = 64  # rows oneDNN picks the packed layout for; any row count runs on it (tested)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] weight -> oneDNN's blocked layout for `linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) on the packed weight; x [..., in]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def can_pack(model: nn.Module) -> bool:
    weight = next(model.parameters())
    return available() and weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES

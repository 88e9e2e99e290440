"""Linear layers on oneDNN with each weight packed once, for CPU inference.

torch's float32 matmul on CPU goes through MKL, which on some CPUs (AMD EPYC) runs at under half
the speed oneDNN reaches on the same product in true float32; bfloat16 reaches oneDNN in torch too
but reorders the weight on every call (figures: README, "How it works"). oneDNN ships inside torch
(`torch.ops.mkldnn`); where torch was built without it, nothing is packed. The packed copy sits
beside the dense weight, which the model keeps for `update_weights` and, when tied, for the
embedding. Training runs on the dense weights through `LinearFunction`.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)
BATCH_HINT = 64  # rows oneDNN picks the packed layout for; any row count runs on it (tested)


@functools.cache
def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] weight -> oneDNN's blocked layout for `linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
           activation: str = "none") -> torch.Tensor:
    """F.linear(x, weight, bias) on the packed weight, then `activation` in the GEMM's epilogue
    ("swish" is SiLU); x [..., in]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, activation, [], "")


def linear_times(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                 factor: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) * factor, the product in the GEMM's epilogue."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, factor, packed, bias, "mul")


def applies(weight: torch.Tensor) -> bool:
    """Where the unpacked path runs on oneDNN: float32 on CPU (bfloat16 already reaches oneDNN in
    aten)."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and available()


class LinearFunction(torch.autograd.Function):
    """F.linear with its forward and backward matmuls on oneDNN, on dense weights that may change
    every step (no packing)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_rows, x_rows = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = linear(grad_rows.t(), x_rows.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = grad_rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def can_pack(model: nn.Module) -> bool:
    weight = next(model.parameters())
    return available() and weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES

"""Attention without a cache, for training and teacher-forced scoring: each packed sequence
attends causally to itself only."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CausalVarlenAttention:
    def __init__(self, cu_seqlens: list[int]):
        self.cu_seqlens = cu_seqlens

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start, end in zip(self.cu_seqlens[:-1], self.cu_seqlens[1:]):
            rows = slice(start, end)
            out = F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1),
                                                 v[rows].transpose(0, 1), is_causal=True,
                                                 enable_gqa=True)
            outputs.append(out.transpose(0, 1))
        return torch.cat(outputs)

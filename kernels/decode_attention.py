"""Decode attention on CPU read straight from the paged KV pool, by the C++ kernel of
cpu_kernels.cpp; `supports` is False where that library is not loaded (kernels/native.py) and
the engine keeps its torch path. The reference is `cpu_attention.partial_attention` over the
gathered blocks (tests/test_decode_attention.py)."""
from __future__ import annotations

import torch

from kojudge.kernels.native import library

DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)


def supports(k: torch.Tensor, block_size: int) -> bool:
    """Whether the kernel runs on a pool of keys like `k` ([..., d])."""
    return (library is not None and k.device.type == "cpu" and k.dtype in DTYPES
            and k.shape[-1] in HEAD_DIMS and block_size % 16 == 0)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor,
                     counts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per sequence, q [B, heads, d], to the first counts[i] keys held in
    the pool blocks blocks[i] ([B, width], int64) of one layer's keys and values
    k, v [kv_heads, slots, d] -> (out [B, heads, d], LSE [B, heads] float32)."""
    return tuple(library.decode_attention(q.contiguous(), k, v, blocks, counts, block_size))

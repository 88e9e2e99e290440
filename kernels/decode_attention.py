"""Decode attention on CPU read straight from the paged KV pool, by the C++ kernel beside this file
(decode_attention.cpp), which setup.py compiles at install for the machine's instruction set.
Where it was not built (no AVX-512, no compiler, torch missing at install), `supports` is False
and the engine keeps its torch path. The reference is `cpu_attention.partial_attention` over the
gathered blocks (tests/test_decode_attention.py)."""
from __future__ import annotations

import torch

try:
    # Compiled at install; absent where that was not possible.
    from kojudge.kernels import _decode_attention as _kernel
except ImportError:
    _kernel = None

DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)


def built() -> bool:
    return _kernel is not None and _kernel.available()


def supports(k: torch.Tensor, block_size: int) -> bool:
    """Whether the kernel runs on a pool of keys like `k` ([..., d])."""
    return (built() and k.device.type == "cpu" and k.dtype in DTYPES
            and k.shape[-1] in HEAD_DIMS and block_size % 16 == 0)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor,
                     counts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per sequence, q [B, heads, d], to the first counts[i] keys held in
    the pool blocks blocks[i] ([B, width], int64) of one layer's keys and values
    k, v [kv_heads, slots, d] -> (out [B, heads, d], LSE [B, heads] float32)."""
    return tuple(_kernel.decode_attention(q.contiguous(), k, v, blocks, counts, block_size))

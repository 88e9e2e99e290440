"""Attention on CPU read straight from the paged KV pool, by the C++ kernels of
cpu_kernels.cpp (decode) and prefill_attention.cpp (a prefill span over its own keys);
`supports` is False where that library is not loaded (kernels/native.py) and the engine keeps
its torch paths. The references are `cpu_attention.partial_attention` over the gathered blocks
(tests/test_pool_attention.py)."""
from __future__ import annotations

import functools

import torch

from kojudge.kernels.cpu_attention import additive_mask, attention_with_lse, best_of_three
from kojudge.kernels.native import library

DTYPES = (torch.float32, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)


def supports(k: torch.Tensor, block_size: int) -> bool:
    """Whether the kernels run on a pool of keys like `k` ([..., d])."""
    return (library is not None and k.device.type == "cpu" and k.dtype in DTYPES
            and k.shape[-1] in HEAD_DIMS and block_size % 16 == 0)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor,
                     counts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per sequence, q [B, heads, d], to the first counts[i] keys held in
    the pool blocks blocks[i] ([B, width], int64) of one layer's keys and values
    k, v [kv_heads, slots, d] -> (out [B, heads, d], LSE [B, heads] float32)."""
    return tuple(library.decode_attention(q.contiguous(), k, v, blocks, counts, block_size))


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor,
                      num_keys: int, block_size: int,
                      causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [M, heads, d] to the first num_keys keys held in the pool blocks
    `blocks` ([n], int64) of one layer's k, v [kv_heads, slots, d] -> (out [M, heads, d],
    LSE [M, heads] float32). causal: the queries are the last M of those positions, each seeing
    the keys up to its own."""
    return tuple(library.prefill_attention(q.contiguous(), k, v, blocks, num_keys, block_size,
                                           causal))


@functools.cache
def prefill_is_faster(dtype: torch.dtype) -> bool:
    """Whether the prefill kernel beats torch's flash kernel on a prefill span of this dtype
    on this machine, measured once per process (~10 ms): the flash kernel's GEMMs are oneDNN's or
    MKL's, whose speed varies with the CPU (bfloat16 on AMX runs ~2x the kernel's float32 FMAs);
    the kernel skips the masked half of the square that a masked flash call computes."""
    generator = torch.Generator().manual_seed(0)
    rows, block_size, heads, kv_heads = 384, 16, 8, 4
    blocks = torch.arange(rows // block_size)
    k, v = (torch.randn(kv_heads, rows, 64, generator=generator).to(dtype) for _ in range(2))
    q = torch.randn(rows, heads, 64, generator=generator).to(dtype)
    causal = torch.ones(rows, rows, dtype=torch.bool).tril_()
    bias = additive_mask(causal, dtype, heads // kv_heads)

    flash = best_of_three(lambda: attention_with_lse(q, k, v, bias))
    return best_of_three(lambda: prefill_attention(q, k, v, blocks, rows, block_size)) < flash

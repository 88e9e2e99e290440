"""Attention over a packed varlen batch: paged KV cache for serving, plain causal for training.

Both are callables `(layer, q, k, v) -> out` that `Model.forward` takes, so the model never holds
cache state. Torch implementations; the Triton kernels plug in at the same place on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer in one slot-addressed pool: slot = block * block_size + offset."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


@dataclass
class PrefillSpan:
    """New tokens [start, end) of one sequence, attending to its cached context plus themselves."""

    start: int
    end: int
    context_slots: torch.Tensor  # [C] slots of positions 0..C-1 (C includes the new tokens)
    mask: torch.Tensor | None  # [L, C] bool, None when the span is the whole context (plain causal)


@dataclass
class PagedBatch:
    """Where one step's new tokens go and what they attend to. Decode tokens come first in the packing."""

    slot_mapping: torch.Tensor  # [T] slot written for each new token
    num_decodes: int
    decode_slots: torch.Tensor | None  # [B, maxC] context slots of each decoding sequence (padded)
    decode_mask: torch.Tensor | None  # [B, 1, 1, maxC] bool, None when no padding is needed
    prefills: list[PrefillSpan]


class PagedAttention:
    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache, self.batch = cache, batch

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache, b = self.cache.k[layer], self.cache.v[layer], self.batch
        k_cache.index_copy_(0, b.slot_mapping, k)
        v_cache.index_copy_(0, b.slot_mapping, v)
        outputs = []
        if b.num_decodes:
            qd = q[: b.num_decodes].unsqueeze(2)  # [B, heads, 1, d]
            kd = k_cache[b.decode_slots].transpose(1, 2)  # [B, kv_heads, C, d]
            vd = v_cache[b.decode_slots].transpose(1, 2)
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=b.decode_mask, enable_gqa=True)
            outputs.append(od.squeeze(2))
        for span in b.prefills:
            qp = q[span.start: span.end].transpose(0, 1)  # [heads, L, d]
            kp = k_cache[span.context_slots].transpose(0, 1)
            vp = v_cache[span.context_slots].transpose(0, 1)
            op = F.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=span.mask, is_causal=span.mask is None, enable_gqa=True
            )
            outputs.append(op.transpose(0, 1))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class CausalVarlenAttention:
    """Training / scoring without a cache: each packed sequence attends causally to itself only."""

    def __init__(self, cu_seqlens: list[int]):
        self.cu_seqlens = cu_seqlens

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start, end in zip(self.cu_seqlens[:-1], self.cu_seqlens[1:]):
            o = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1),
                is_causal=True, enable_gqa=True,
            )
            outputs.append(o.transpose(0, 1))
        return torch.cat(outputs)

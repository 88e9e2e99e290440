"""Attention over a packed varlen batch: paged KV cache for serving, plain causal for training.

Both are callables `(layer, q, k, v) -> out` that `Model.forward` takes, so the model never holds
cache state. Torch implementations; the Triton kernels plug in at the same place on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer in one paged pool: slot = block * block_size + offset.

    Laid out [layer, kv_head, slot, d] so that gathering a batch's blocks for one layer
    (`blocks(layer)[:, block_table]`) yields [kv_heads, B, positions, d] ready for batched matmuls
    with no further copy, and each gathered block is one contiguous run of memory.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, num_kv_heads, num_blocks * block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv_heads, _, d = self.k.shape[1:]
        shape = (kv_heads, self.num_blocks, self.block_size, d)
        return self.k[layer].view(shape), self.v[layer].view(shape)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


@dataclass
class PrefillSpan:
    """New tokens [start, end) of one sequence, attending to its cached context plus themselves."""

    start: int
    end: int
    context_blocks: torch.Tensor  # [ceil(C / block_size)] blocks holding positions 0..C-1 (C includes the span)
    context_len: int
    mask: torch.Tensor | None  # [L, C] bool, None when the span is the whole context (plain causal)


@dataclass
class PagedBatch:
    """Where one step's new tokens go and what they attend to. Decode tokens come first in the packing."""

    slot_mapping: torch.Tensor  # [T] slot written for each new token
    num_decodes: int
    decode_blocks: torch.Tensor | None  # [B, nb] block table of each decoding sequence (padded)
    decode_mask: torch.Tensor | None  # [B, 1, nb * block_size] bool: False past a sequence's context
    prefills: list[PrefillSpan]


class PagedAttention:
    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache, self.batch = cache, batch

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self.batch
        self.cache.k[layer].index_copy_(1, b.slot_mapping, k.transpose(0, 1))
        self.cache.v[layer].index_copy_(1, b.slot_mapping, v.transpose(0, 1))
        k_blocks, v_blocks = self.cache.blocks(layer)
        outputs = []
        if b.num_decodes:
            outputs.append(decode_attention(q[: b.num_decodes], k_blocks[:, b.decode_blocks], v_blocks[:, b.decode_blocks],
                                            b.decode_mask))
        for span in b.prefills:
            kp = k_blocks[:, span.context_blocks].flatten(1, 2)[:, : span.context_len]  # [kv_heads, C, d]
            vp = v_blocks[:, span.context_blocks].flatten(1, 2)[:, : span.context_len]
            op = F.scaled_dot_product_attention(q[span.start: span.end].transpose(0, 1), kp, vp,
                                                attn_mask=span.mask, is_causal=span.mask is None, enable_gqa=True)
            outputs.append(op.transpose(0, 1))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One query per sequence. q [B, heads, d]; k/v [kv_heads, B, nb, block_size, d]; mask [B, 1, S].

    Two batched matmuls with the query heads of each KV head stacked together: on CPU several times
    faster than SDPA for single-token queries, and GQA needs no repeated keys.
    """
    batch, heads, d = q.shape
    kv_heads = k.shape[0]
    k, v = k.flatten(2, 3), v.flatten(2, 3)  # [kv_heads, B, S, d]
    q = q.view(batch, kv_heads, heads // kv_heads, d).transpose(0, 1)  # [kv_heads, B, group, d]
    scores = torch.matmul(q, k.transpose(-1, -2)) * d**-0.5  # [kv_heads, B, group, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v).transpose(0, 1).reshape(batch, heads, d)


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

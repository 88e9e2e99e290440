"""The engine's attention step in torch (the CPU backend): decodes read their blocks in the pool
(the CPU decode kernel), else from the workspace or their gathered blocks; prefill spans read
their blocks in the pool (the CPU prefill kernel) or gathered; then every shared prefix once for
all its members' queries, merged by log-sum-exp."""
from __future__ import annotations

import torch

from kojudge.attention.batch import KVCache, PagedBatch, as_range
from kojudge.kernels.cpu_attention import (CAUSAL_SPLIT_MIN_ROWS, additive_mask,
                                           attention_with_lse, causal_attention_with_lse,
                                           flash_cpu_runs, merge_states, partial_attention)
from kojudge.kernels.pool_attention import decode_attention, prefill_attention

Attended = tuple[torch.Tensor, torch.Tensor | None]  # (out [M, heads, d], LSE [M, heads] or None)


def _grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[M, heads, d] -> [kv_heads, M, group, d]: the query heads of one KV head side by side."""
    m, heads, d = q.shape
    return q.view(m, kv_heads, heads // kv_heads, d).transpose(0, 1)


def _ungrouped(x: torch.Tensor) -> torch.Tensor:
    """[kv_heads, M, group, ...] -> [M, heads, ...]."""
    x = x.transpose(0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


class PagedAttention:
    """`(layer, q, k, v) -> out` for one step; keys and values go to the pool first."""

    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache = cache
        self.batch = batch
        # Resolved once per step, not per layer; a fresh pool hands out consecutive blocks, so a
        # long shared prefix is usually one run, read as a view.
        self.span_blocks = [] if batch.spans_in_place else [as_range(span.blocks)
                                                            for span in batch.prefills]
        self.prefix_blocks = [as_range(prefix.blocks) for prefix in batch.shared]
        self.decode_bias = None
        self.decode_counts = None
        if batch.decode_in_place:
            self.decode_counts = torch.tensor(batch.decode_key_counts, device=cache.k.device)
        if batch.decode_mask is not None:
            self.decode_bias = additive_mask(batch.decode_mask, cache.k.dtype)
        # Masks of spans that continue their sequence: built at the first layer (which knows the
        # GQA group) for the paths that read one, then reused by every other layer.
        self.span_masks: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        batch = self.batch
        self.cache.store(layer, k, v, batch.slot_mapping)
        k_blocks, v_blocks = self.cache.blocks(layer)  # [kv_heads, num_blocks, block_size, d]
        parts = []
        if batch.num_decodes:
            parts.append(self._decodes(layer, q, k, v, k_blocks, v_blocks))
        for i, span in enumerate(batch.prefills):
            parts.append(self._span(layer, i, q[span.start: span.end], k_blocks, v_blocks))
        out = parts[0][0] if len(parts) == 1 else torch.cat([o for o, _ in parts])
        if batch.shared:
            lse = torch.cat([torch.zeros(o.shape[:2], device=o.device) if x is None else x
                             for o, x in parts])
            for prefix, blocks in zip(batch.shared, self.prefix_blocks):
                rows = prefix.token_rows
                prefix_k = k_blocks[:, blocks].flatten(1, 2)  # [kv_heads, P, d], read once
                prefix_v = v_blocks[:, blocks].flatten(1, 2)
                out_p, lse_p = attention_with_lse(q[rows], prefix_k, prefix_v, None)
                out[rows], _ = merge_states(out[rows], lse[rows], out_p, lse_p)
        return out

    def _decodes(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> Attended:
        batch = self.batch
        decodes = slice(0, batch.num_decodes)
        step = batch.decode_workspace
        if step is not None:
            return step.workspace.attend(step, layer, q[decodes], k[decodes], v[decodes],
                                         self.decode_bias)
        if batch.decode_in_place:
            return decode_attention(q[decodes], self.cache.k[layer], self.cache.v[layer],
                                    batch.decode_blocks, self.decode_counts, self.cache.block_size)
        # Without a workspace (it would not fit): gather every block.
        keys = k_blocks[:, batch.decode_blocks].flatten(2, 3)
        values = v_blocks[:, batch.decode_blocks].flatten(2, 3)
        grouped = _grouped(q[decodes], k_blocks.shape[0])
        out, lse = partial_attention(grouped, keys, values, self.decode_bias)
        return _ungrouped(out), _ungrouped(lse)

    def _span(self, layer: int, i: int, q: torch.Tensor, k_blocks: torch.Tensor,
              v_blocks: torch.Tensor) -> Attended:
        span = self.batch.prefills[i]
        num_keys = span.context_len - span.key_start
        if self.batch.spans_in_place:
            return prefill_attention(q, self.cache.k[layer], self.cache.v[layer], span.blocks,
                                     num_keys, self.cache.block_size)
        blocks = self.span_blocks[i]
        keys = k_blocks[:, blocks].flatten(1, 2)[:, :num_keys]  # [kv_heads, S, d]
        values = v_blocks[:, blocks].flatten(1, 2)[:, :num_keys]
        # The flash kernel called directly: F.scaled_dot_product_attention on these 3-d heads
        # takes the math path on CPU, 7x slower at 1k tokens.
        split = not span.past or len(q) >= CAUSAL_SPLIT_MIN_ROWS
        if split and flash_cpu_runs(q):
            return causal_attention_with_lse(q, keys, values)
        if i not in self.span_masks:
            group = q.shape[1] // k_blocks.shape[0]
            self.span_masks[i] = additive_mask(span.mask(), q.dtype, group)
        return attention_with_lse(q, keys, values, self.span_masks[i])

"""The engine's attention step on the Triton kernels (CUDA; the CPU interpreter in tests):
decodes and prefill spans in one varlen launch, every shared prefix in one more, merged by LSE."""
from __future__ import annotations

import torch

from kojudge.attention.batch import KeyRuns, KVCache, PagedBatch
from kojudge.kernels.attention import merge_state_triton, paged_attention_triton, store_kv_triton


class TritonPagedAttention:
    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache = cache
        self.batch = batch
        self.own = self._launch_args(KeyRuns.own(batch, cache.block_size), causal=True)
        self.shared = self.shared_rows = None
        shared = KeyRuns.shared(batch, cache.block_size)
        if shared is not None:
            self.shared = self._launch_args(shared[0], causal=False)
            self.shared_rows = shared[1]

    def _launch_args(self, runs: KeyRuns, causal: bool) -> dict:
        device = self.batch.slot_mapping.device
        width = max(len(b) for b in runs.blocks)
        tables = torch.zeros(len(runs.blocks), width, dtype=torch.int32, device=device)
        for row, blocks in enumerate(runs.blocks):
            tables[row, : len(blocks)] = blocks

        def as_int(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)

        rows = [end - start for start, end in zip(runs.q_start, runs.q_start[1:])]
        q_offsets = [n - r if causal else 0 for n, r in zip(runs.kv_lens, rows)]
        return dict(q_start=as_int(runs.q_start), block_tables=tables,
                    kv_lens=as_int(runs.kv_lens), q_offsets=as_int(q_offsets),
                    block_size=self.cache.block_size, causal=causal, max_queries=runs.max_rows,
                    max_kv_len=max(runs.kv_lens))

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        store_kv_triton(k, v, k_cache, v_cache, self.batch.slot_mapping)
        out, lse = paged_attention_triton(q, k_cache, v_cache, **self.own)
        if self.shared is not None:
            rows = self.shared_rows
            out_p, lse_p = paged_attention_triton(q[rows], k_cache, v_cache, **self.shared)
            out[rows], _ = merge_state_triton(out[rows], lse[rows], out_p, lse_p)
        return out

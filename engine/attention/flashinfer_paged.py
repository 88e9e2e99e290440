"""The engine's attention step on flashinfer's paged kernels (CUDA, float16 / bfloat16; extra
`kojudge[gpu]`).

flashinfer reads our KV pool in place: a layer's [kv_heads, num_blocks, block_size, d] blocks,
transposed, are its "HND" pages [num_blocks, kv_heads, block_size, d] (it takes the strides of the
tensors it is given, so no copy). A step is two batched calls, as with the Triton kernels: every
decode and prefill span over its own keys (causal, each run's queries aligned to the end of its
keys), then the queries of every shared prefix over that prefix, merged by LSE. flashinfer's LSE is
in base 2 and only ever meets its own merge_state.
"""
from __future__ import annotations

import torch

from kojudge.attention.batch import KeyRuns, KVCache, PagedBatch
from kojudge.utils import ceil_div

WORKSPACE_BYTES = 128 * 2**20  # flashinfer's recommended scratch size for split-KV partial results


class FlashInferAttention:
    """Holds flashinfer's scratch buffer and planners across steps; called with (cache, batch) it
    plans one step and returns the `(layer, q, k, v) -> out` callable the model runs."""

    def __init__(self, device: torch.device | str):
        import flashinfer

        self.flashinfer = flashinfer
        scratch = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.own_keys = flashinfer.BatchPrefillWithPagedKVCacheWrapper(scratch, "HND")
        self.prefix_keys = flashinfer.BatchPrefillWithPagedKVCacheWrapper(scratch, "HND")

    def __call__(self, cache: KVCache, batch: PagedBatch) -> FlashInferStep:
        return FlashInferStep(self, cache, batch)


def _page_table(runs: KeyRuns, block_size: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs as flashinfer's CSR tables: (qo_indptr [n + 1], kv page indptr [n + 1], page indices,
    entries used in each last page [n])."""
    pages = [ceil_div(n, block_size) for n in runs.kv_lens]
    as_int = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    page_indptr = as_int([0] + pages).cumsum(0, dtype=torch.int32)
    indices = torch.cat([b[:p] for b, p in zip(runs.blocks, pages)]).to(torch.int32)
    last_page_len = as_int([n - (p - 1) * block_size for n, p in zip(runs.kv_lens, pages)])
    return as_int(runs.q_start), page_indptr, indices, last_page_len


class FlashInferStep:
    def __init__(self, backend: FlashInferAttention, cache: KVCache, batch: PagedBatch):
        self.backend = backend
        self.cache = cache
        self.batch = batch
        self.own = KeyRuns.own(batch, cache.block_size)
        self.shared = KeyRuns.shared(batch, cache.block_size)
        self.planned = False  # at the first layer, which knows the number of query heads

    def _plan(self, q: torch.Tensor) -> None:
        kv_heads, _, d = self.cache.k.shape[1:]
        bs = self.cache.block_size
        dtype = self.cache.k.dtype
        device = q.device
        shape = (q.shape[1], kv_heads, d, bs)
        self.backend.own_keys.plan(*_page_table(self.own, bs, device), *shape, causal=True,
                                   q_data_type=dtype, kv_data_type=dtype)
        if self.shared is not None:
            self.backend.prefix_keys.plan(*_page_table(self.shared[0], bs, device), *shape,
                                          causal=False, q_data_type=dtype, kv_data_type=dtype)
        self.planned = True

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        if not self.planned:
            self._plan(q)
        self.cache.store(layer, k, v, self.batch.slot_mapping)
        k_blocks, v_blocks = self.cache.blocks(layer)
        pages = (k_blocks.transpose(0, 1), v_blocks.transpose(0, 1))  # HND views of the pool
        q = q.contiguous()
        out, lse = self.backend.own_keys.run(q, pages, return_lse=True)
        if self.shared is not None:
            rows = self.shared[1]
            out_p, lse_p = self.backend.prefix_keys.run(q[rows], pages, return_lse=True)
            out[rows], _ = self.backend.flashinfer.merge_state(out[rows], lse[rows], out_p, lse_p)
        return out

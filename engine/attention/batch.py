"""Attention over a packed varlen batch: paged KV cache for serving, plain causal for training.

Both are callables `(layer, q, k, v) -> out` that `Model.forward` takes, so the model never holds
cache state. Torch implementations; the Triton kernels plug in at the same place on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kojudge.kernels import onednn


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

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Write new keys/values [T, kv_heads, d] of one layer into their slots."""
        self.k[layer].index_copy_(1, slots, k.transpose(0, 1))
        self.v[layer].index_copy_(1, slots, v.transpose(0, 1))

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv_heads, _, d = self.k.shape[1:]
        shape = (kv_heads, self.num_blocks, self.block_size, d)
        return self.k[layer].view(shape), self.v[layer].view(shape)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


@dataclass
class PrefillSpan:
    """New tokens [start, end) of one sequence. They attend to keys at positions [key_start, C)
    read from `blocks` (C includes the span), plus, when key_start > 0, a shared prefix."""

    start: int
    end: int
    blocks: torch.Tensor  # blocks holding positions key_start .. C-1
    key_start: int  # multiple of block_size; > 0 only when a SharedPrefix covers the positions before
    context_len: int

    @property
    def past(self) -> int:
        """Positions of the sequence before the span; 0 when the span is the whole context (plain causal)."""
        return self.context_len - (self.end - self.start)

    def mask(self) -> torch.Tensor:
        """[L, C - key_start] bool: each new token sees the keys up to its own position."""
        rows = torch.arange(self.end - self.start, device=self.blocks.device)[:, None] + self.past
        return torch.arange(self.key_start, self.context_len, device=self.blocks.device)[None, :] <= rows


@dataclass
class SharedPrefix:
    """Blocks that several sequences' contexts begin with, attended once for all their queries
    (cascade attention); each member's own suffix is attended separately and the two merged by LSE."""

    blocks: torch.Tensor
    token_rows: torch.Tensor | slice  # rows of the packed batch whose queries see this prefix


@dataclass
class DecodeWorkspace:
    """Contiguous copies of the decoding sequences' own keys and values, kept across steps.

    A row per sequence, laid out [row, kv_head, column, d] so that sequences join and leave without
    moving the others: a step appends one key to each continuing row and fills from the paged cache
    only the rows of sequences that start decoding. On CPU gathering every block again each step
    costs more than the attention itself, and while prefills join the decodes the set changes
    every step."""

    k: list[torch.Tensor]  # per layer [rows, kv_heads, capacity, d]
    v: list[torch.Tensor]
    rows: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # request id -> (row, key_start, keys held)


@dataclass
class WorkspaceStep:
    """One step's use of the workspace: the B decodes attend to rows [0, B) and columns [0, length)."""

    workspace: DecodeWorkspace
    length: int
    decode_rows: torch.Tensor | None  # [B] row of each decode; None when decode i sits in row i
    fill_target: torch.Tensor | None  # workspace blocks, numbered over [rows * kv_heads * capacity / block_size], ...
    fill_source: torch.Tensor | None  # ... copied from these pool blocks, numbered over [kv_heads * num_blocks]
    append_target: torch.Tensor | None  # [A * kv_heads] flat (row, head, column) slots of continuing decodes' keys
    append_decodes: torch.Tensor | slice | None  # the A decodes that append their key


@dataclass
class PagedBatch:
    """Where one step's new tokens go and what they attend to. Decode tokens come first in the packing."""

    slot_mapping: torch.Tensor  # [T] slot written for each new token
    num_decodes: int
    decode_blocks: torch.Tensor | None  # [B, nb] blocks of each decoding sequence past its shared prefix (padded)
    # bool, False past a sequence's context: [B, 1, nb * block_size], or [rows, 1, 1, length] with a workspace
    decode_mask: torch.Tensor | None
    prefills: list[PrefillSpan]
    shared: list[SharedPrefix] = field(default_factory=list)
    decode_workspace: WorkspaceStep | None = None  # when set, decodes read it instead of gathering blocks
    decode_key_counts: list[int] = field(default_factory=list)  # keys of each decode past its shared prefix


@dataclass
class KeyRuns:
    """A step's attention as varlen kernels see it: runs of query rows [q_start[i], q_start[i + 1])
    over keys held in `blocks[i]` (kv_lens[i] of them). In `own` runs (causal) query j of a run sees
    its first kv_lens[i] - (rows in the run) + j + 1 keys; `shared` runs see all their keys."""

    q_start: list[int]
    blocks: list[torch.Tensor]
    kv_lens: list[int]

    @classmethod
    def own(cls, batch: PagedBatch, block_size: int) -> KeyRuns:
        """Each decode and each prefill span over its own keys, past any shared prefix."""
        runs = cls([0], [], [])
        for i, count in enumerate(batch.decode_key_counts):
            runs.q_start.append(i + 1)
            runs.blocks.append(batch.decode_blocks[i, : -(-count // block_size)])
            runs.kv_lens.append(count)
        for span in batch.prefills:
            runs.q_start.append(span.end)
            runs.blocks.append(span.blocks)
            runs.kv_lens.append(span.context_len - span.key_start)
        return runs

    @classmethod
    def shared(cls, batch: PagedBatch, block_size: int) -> tuple[KeyRuns, torch.Tensor] | None:
        """Each shared prefix over its blocks, its members' queries gathered prefix after prefix ->
        (runs, the packed rows gathered), or None without shared prefixes. A sequence shares one
        prefix at most, so the rows are distinct."""
        if not batch.shared:
            return None
        device = batch.slot_mapping.device
        rows = [torch.arange(p.token_rows.start, p.token_rows.stop, device=device)
                if isinstance(p.token_rows, slice) else p.token_rows for p in batch.shared]
        q_start = [0]
        for r in rows:
            q_start.append(q_start[-1] + len(r))
        runs = cls(q_start, [p.blocks for p in batch.shared], [len(p.blocks) * block_size for p in batch.shared])
        return runs, torch.cat(rows)

    @property
    def max_rows(self) -> int:
        return max(end - start for start, end in zip(self.q_start, self.q_start[1:]))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32, repeat: int = 1) -> torch.Tensor:
    """Bool mask (True = attend) -> 0 / -inf to add to scores, its rows repeated `repeat` times.
    Built once per step and shared by every layer."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias.repeat(repeat, *[1] * (mask.dim() - 1)) if repeat > 1 else bias


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [..., M, d] to k/v [..., S, d] -> (out [..., M, d], log-sum-exp [..., M] float32).

    bias: additive mask (additive_mask) broadcast to the scores, float32 or q's dtype. The LSE lets
    partial results over disjoint key sets be merged exactly (merge_states).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    if bias is not None:
        scores.add_(bias)
    peak = scores.amax(dim=-1, keepdim=True)  # every row attends to at least one key
    weights = scores.sub_(peak).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    # Normalize the [.., d] output rather than the [.., S] weights: fewer elements to divide.
    out = torch.matmul(weights.to(v.dtype), v).float().div_(total)
    return out.to(v.dtype), (peak + total.log()).squeeze(-1)


def merge_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over key sets A and B into attention over A + B. out [..., d], lse [...]."""
    lse = torch.logaddexp(lse_a, lse_b)
    merged = out_a.float() * torch.exp(lse_a - lse).unsqueeze(-1) + out_b.float() * torch.exp(lse_b - lse).unsqueeze(-1)
    return merged.to(out_a.dtype), lse


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash_cpu_runs(x: torch.Tensor) -> bool:
    """Whether torch's CPU flash kernel (which also returns the LSE) can take x."""
    return _FLASH_CPU is not None and x.device.type == "cpu"


ONEDNN_MIN_ROWS = 128  # stacked query rows from which the oneDNN form beat the flash kernel
ONEDNN_ROW_CHUNK = 512  # rows scored at a time, so one head's score block stays in L2


def _attention_onednn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked float32 attention of q [H, M, d] to k/v [H, S, d] with both matmuls on oneDNN, one
    head and row chunk at a time -> (out [H, M, d], LSE [H, M]). torch's flash kernel does its matmuls
    on MKL, under half as fast on these CPUs: 10% faster per decode step at 128 rows x 1,024 keys,
    28% at 2,048 rows x 640."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    q = q * q.shape[-1] ** -0.5
    for h in range(q.shape[0]):
        for start in range(0, q.shape[1], ONEDNN_ROW_CHUNK):
            rows = slice(start, start + ONEDNN_ROW_CHUNK)
            scores = onednn.linear(q[h, rows], k[h], None)
            peak = scores.amax(dim=-1)
            weights = torch.softmax(scores, dim=-1)  # one fused pass instead of sub, exp, sum, divide
            out[h, rows] = onednn.linear(weights, v[h].t(), None)
            # The top weight is exp(peak - LSE), so LSE = peak - log(top weight), always well above 0.
            torch.sub(peak, weights.amax(dim=-1).log(), out=lse[h, rows])
    return out, lse


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """q [M, heads, d] attends to k/v [kv_heads, S, d] -> (out [M, heads, d], LSE [M, heads] float32).

    The query heads of one KV head are stacked along the query axis, so GQA needs no repeated keys.
    On CPU this runs torch's tiled flash kernel, which also returns the LSE and beat the matmul form
    at every size measured (1 to 512 query rows, 16 to 4,096 keys, masked or not), except unmasked
    float32 with many rows (a shared prefix), where the matmuls on oneDNN win; elsewhere the plain
    matmul form (GPU paths get the Triton kernels). bias: additive mask [group * M, S] in q's dtype,
    rows in the stacked order (additive_mask(mask, q.dtype, group)).
    """
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    stacked = q.view(m, kv_heads, group, d).permute(1, 2, 0, 3).reshape(kv_heads, group * m, d)
    if bias is None and stacked.shape[1] >= ONEDNN_MIN_ROWS and onednn.applies(q):
        out, lse = _attention_onednn(stacked, k, v)
    elif _flash_cpu_runs(q):
        out, lse = _FLASH_CPU(stacked[None], k[None], v[None], attn_mask=bias)
        out, lse = out[0], lse[0]
    else:
        out, lse = partial_attention(stacked, k, v, None if bias is None else bias.float())
    out = out.view(kv_heads, group, m, d).permute(2, 0, 1, 3).reshape(m, heads, d)
    return out, lse.float().view(kv_heads, group, m).permute(2, 0, 1).reshape(m, heads)


CAUSAL_SPLIT_MIN_ROWS = 768  # query rows from which splitting off the causal square beats one masked call


def causal_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [m, heads, d] holds the last m of the S positions of k/v [kv_heads, S, d], each query seeing
    the keys up to its own position -> (out [m, heads, d], LSE [m, heads] float32). CPU.

    The keys before the queries are seen by all of them (attended unmasked); the square of the
    queries' own keys runs on the flash kernel's is_causal, which skips the key blocks a mask would
    hide but still compute: 1.2x to 1.6x one masked call from 768 query rows, float32 (measured
    here); below that, one masked call is as fast or faster."""
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    group, seen_by_all = heads // kv_heads, k.shape[1] - m
    # The query heads of a KV head as a batch dim over keys expanded (not copied) along it.
    by_group = q.view(m, kv_heads, group, d).permute(2, 1, 0, 3)
    own_k = k[None, :, seen_by_all:].expand(group, -1, -1, -1)
    own_v = v[None, :, seen_by_all:].expand(group, -1, -1, -1)
    out, lse = _FLASH_CPU(by_group, own_k, own_v, is_causal=True)
    out, lse = out.permute(2, 1, 0, 3).reshape(m, heads, d), lse.permute(2, 1, 0).reshape(m, heads).float()
    if seen_by_all:
        out_before, lse_before = attention_with_lse(q, k[:, :seen_by_all], v[:, :seen_by_all], None)
        out, lse = merge_states(out_before, lse_before, out, lse)
    return out, lse


def _grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[M, heads, d] -> [kv_heads, M, group, d]: the query heads of one KV head side by side."""
    m, heads, d = q.shape
    return q.view(m, kv_heads, heads // kv_heads, d).transpose(0, 1)


def _ungrouped(x: torch.Tensor) -> torch.Tensor:
    """[kv_heads, M, group, ...] -> [M, heads, ...]."""
    x = x.transpose(0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def as_range(index: torch.Tensor) -> torch.Tensor | slice:
    """Consecutive ids (pool blocks, packed rows) as a slice, so that indexing with them is a view,
    not a gather."""
    n = index.numel()
    if n and int(index[-1] - index[0]) == n - 1 and (n == 1 or bool((index.diff() == 1).all())):
        return slice(int(index[0]), int(index[0]) + n)
    return index


class PagedAttention:
    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache, self.batch = cache, batch
        # Resolved once per step rather than once per layer; a fresh pool hands out consecutive blocks,
        # so a long shared prefix is usually one run.
        self.span_blocks = [as_range(span.blocks) for span in batch.prefills]
        self.prefix_blocks = [as_range(prefix.blocks) for prefix in batch.shared]
        self.decode_bias = None if batch.decode_mask is None else additive_mask(batch.decode_mask, cache.k.dtype)
        # Masks of spans that continue their sequence: built at the first layer (which knows the GQA
        # group) for the paths that read one, then reused by every other layer.
        self.span_masks: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self.batch
        self.cache.store(layer, k, v, b.slot_mapping)
        k_blocks, v_blocks = self.cache.blocks(layer)  # [kv_heads, num_blocks, block_size, d]
        kv_heads = k_blocks.shape[0]
        outputs, lses = [], []
        if b.num_decodes:
            if b.decode_workspace is None:  # gather every block (a workspace would not fit, or Triton's layout)
                keys, values = k_blocks[:, b.decode_blocks].flatten(2, 3), v_blocks[:, b.decode_blocks].flatten(2, 3)
                out, lse = partial_attention(_grouped(q[: b.num_decodes], kv_heads), keys, values, self.decode_bias)
                outputs.append(_ungrouped(out))
                lses.append(_ungrouped(lse))
            else:
                decodes = slice(0, b.num_decodes)
                out, lse = self._decode_from_workspace(layer, q[decodes], k[decodes], v[decodes], k_blocks, v_blocks)
                outputs.append(out)
                lses.append(lse)
        for i, (span, blocks) in enumerate(zip(b.prefills, self.span_blocks)):
            qs = q[span.start: span.end]
            ks = k_blocks[:, blocks].flatten(1, 2)[:, : span.context_len - span.key_start]  # [kv_heads, S, d]
            vs = v_blocks[:, blocks].flatten(1, 2)[:, : span.context_len - span.key_start]
            if span.past and len(qs) >= CAUSAL_SPLIT_MIN_ROWS and _flash_cpu_runs(q):
                out, lse = causal_attention_with_lse(qs, ks, vs)
                outputs.append(out)
                lses.append(lse)
            elif span.key_start == 0:
                if span.past and i not in self.span_masks:
                    self.span_masks[i] = span.mask()
                out = F.scaled_dot_product_attention(qs.transpose(0, 1), ks, vs, self.span_masks.get(i),
                                                     is_causal=not span.past, enable_gqa=True)
                outputs.append(out.transpose(0, 1))
                lses.append(None)
            else:  # after a shared prefix, so the span continues its sequence
                if i not in self.span_masks:
                    self.span_masks[i] = additive_mask(span.mask(), q.dtype, q.shape[1] // kv_heads)
                out, lse = attention_with_lse(qs, ks, vs, self.span_masks[i])
                outputs.append(out)
                lses.append(lse)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if b.shared:
            lse = torch.cat([x if x is not None else torch.zeros(o.shape[:2], device=o.device)
                             for x, o in zip(lses, outputs)])
            for prefix, blocks in zip(b.shared, self.prefix_blocks):
                rows = prefix.token_rows
                kp = k_blocks[:, blocks].flatten(1, 2)  # [kv_heads, P, d], read once for all rows
                vp = v_blocks[:, blocks].flatten(1, 2)
                out_p, lse_p = attention_with_lse(q[rows], kp, vp, None)
                out[rows], _ = merge_states(out[rows], lse[rows], out_p, lse_p)
        return out

    def _decode_from_workspace(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decodes' own keys from the workspace: fill the rows of sequences that start decoding
        (this step's key is already in the pool), append this step's key to the others, attend."""
        step = self.batch.decode_workspace
        k_rows, v_rows = step.workspace.k[layer], step.workspace.v[layer]  # [rows, kv_heads, capacity, d]
        rows, kv_heads, d = q.shape[0], k_rows.shape[1], k_rows.shape[3]
        if step.fill_target is not None:
            for rows_of, pool in ((k_rows, k_blocks), (v_rows, v_blocks)):
                pool_blocks = pool.reshape((-1,) + pool.shape[2:])  # [kv_heads * num_blocks, block_size, d]
                fill = pool_blocks[step.fill_source]
                rows_of.view((-1,) + pool_blocks.shape[1:]).index_copy_(0, step.fill_target, fill)
        if step.append_target is not None:
            k_rows.view(-1, d).index_copy_(0, step.append_target, k[step.append_decodes].reshape(-1, d))
            v_rows.view(-1, d).index_copy_(0, step.append_target, v[step.append_decodes].reshape(-1, d))
        if step.decode_rows is not None:
            q = torch.empty_like(q).index_copy_(0, step.decode_rows, q)
        q = q.view(rows, kv_heads, q.shape[1] // kv_heads, d)  # the query heads of a KV head as its query rows
        keys, values = k_rows[:rows, :, : step.length], v_rows[:rows, :, : step.length]
        if _flash_cpu_runs(q):
            # Reads the strided rows in place; bfloat16 batched matmuls copy them first (5x slower at 1k keys).
            out, lse = _FLASH_CPU(q, keys, values, attn_mask=self.decode_bias)
        else:
            out, lse = partial_attention(q, keys, values, self.decode_bias)
        out, lse = out.reshape(rows, -1, d), lse.reshape(rows, -1)
        if step.decode_rows is not None:
            out, lse = out[step.decode_rows], lse[step.decode_rows]
        return out, lse


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


class TritonPagedAttention:
    """The same step as PagedAttention on the Triton kernels (CUDA; the CPU interpreter in tests):
    decodes and prefill spans in one varlen launch, every shared prefix in one more, merged by LSE."""

    def __init__(self, cache: KVCache, batch: PagedBatch):
        self.cache, self.batch = cache, batch
        self.own = self._launch_args(KeyRuns.own(batch, cache.block_size), causal=True)
        shared = KeyRuns.shared(batch, cache.block_size)
        self.shared, self.shared_rows = (None, None) if shared is None else \
            (self._launch_args(shared[0], causal=False), shared[1])

    def _launch_args(self, runs: KeyRuns, causal: bool) -> dict:
        device = self.batch.slot_mapping.device
        tables = torch.zeros(len(runs.blocks), max(len(b) for b in runs.blocks), dtype=torch.int32, device=device)
        for row, blocks in enumerate(runs.blocks):
            tables[row, : len(blocks)] = blocks
        as_int = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
        rows = [end - start for start, end in zip(runs.q_start, runs.q_start[1:])]
        return dict(q_start=as_int(runs.q_start), block_tables=tables, kv_lens=as_int(runs.kv_lens),
                    q_offsets=as_int([n - r if causal else 0 for n, r in zip(runs.kv_lens, rows)]),
                    block_size=self.cache.block_size, causal=causal, max_queries=runs.max_rows,
                    max_kv_len=max(runs.kv_lens))

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from kojudge.kernels.attention import merge_state_triton, paged_attention_triton, store_kv_triton

        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        store_kv_triton(k, v, k_cache, v_cache, self.batch.slot_mapping)
        out, lse = paged_attention_triton(q, k_cache, v_cache, **self.own)
        if self.shared is not None:
            rows = self.shared_rows
            out_p, lse_p = paged_attention_triton(q[rows], k_cache, v_cache, **self.shared)
            out[rows], _ = merge_state_triton(out[rows], lse[rows], out_p, lse_p)
        return out

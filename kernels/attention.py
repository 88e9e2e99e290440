"""Paged attention over the engine's KV pool: KV store, varlen prefill/extend, decode, the
shared-prefix (cascade) form, and merging partial results by their log-sum-exp. Triton kernels
beside torch references with the same signatures.

Cache layout (one layer): k_cache, v_cache [kv_heads, num_blocks * block_size, d]; slot = block *
block_size + offset. A batch of "sequences" is described by: q [Tq, heads, d] packed, q_start [B +
1] (row offsets), block_tables [B, max_blocks] (the blocks that hold each sequence's keys, in
order), kv_lens [B] (keys per sequence), q_offsets [B] (position of a sequence's first query
relative to its first key: query j may see keys 0 .. q_offsets + j when causal). Decode is the case
of one query per sequence; the cascade form is one "sequence" per shared prefix whose queries are
the stacked queries of all its members, without the causal mask.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The torch references of the store and merge kernels are the CPU path's own functions.
from kojudge.kernels.cpu_attention import merge_states as merge_state_reference  # noqa: F401
from kojudge.kernels.cpu_attention import store_kv as store_kv_reference  # noqa: F401

# ---- references
# -------------------------------------------------------------------------------------


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              q_start: torch.Tensor, block_tables: torch.Tensor,
                              kv_lens: torch.Tensor, q_offsets: torch.Tensor, block_size: int,
                              causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """-> out [Tq, heads, d], lse [Tq, heads] float32."""
    heads, kv_heads, d = q.shape[1], k_cache.shape[0], q.shape[2]
    group = heads // kv_heads
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    offsets = torch.arange(block_size, device=q.device)
    for b in range(len(kv_lens)):
        start = int(q_start[b])
        end = int(q_start[b + 1])
        n = int(kv_lens[b])
        if end == start:
            continue
        blocks = block_tables[b, : triton.cdiv(n, block_size)].long()
        slots = (blocks[:, None] * block_size + offsets).flatten()[:n]
        k = k_cache[:, slots].repeat_interleave(group, 0).float()  # [heads, n, d]
        v = v_cache[:, slots].repeat_interleave(group, 0).float()
        scores = q[start:end].transpose(0, 1).float() @ k.transpose(1, 2) * d**-0.5  # [heads, L, n]
        if causal:
            rows = torch.arange(end - start, device=q.device)[:, None] + int(q_offsets[b])
            scores = scores.masked_fill(torch.arange(n, device=q.device)[None, :] > rows,
                                        float("-inf"))
        lse[start:end] = torch.logsumexp(scores, -1).transpose(0, 1)
        out[start:end] = (scores.softmax(-1) @ v).transpose(0, 1).to(q.dtype)
    return out, lse


# ---- Triton
# -------------------------------------------------------------------------------------------

@triton.jit
def store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, stride_kt, stride_kh,
                    stride_ch, stride_cs, KV_HEADS: tl.constexpr, D: tl.constexpr,
                    BLOCK_HEADS: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    h = tl.arange(0, BLOCK_HEADS)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    ok = (h < KV_HEADS) & (d < D)
    src = t * stride_kt + h * stride_kh + d
    dst = h * stride_ch + slot * stride_cs + d
    tl.store(k_cache_ptr + dst, tl.load(k_ptr + src, mask=ok), mask=ok)
    tl.store(v_cache_ptr + dst, tl.load(v_ptr + src, mask=ok), mask=ok)


@triton.jit
def paged_attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, lse_ptr, q_start_ptr,
                           tables_ptr, kv_lens_ptr, q_offsets_ptr, scale, stride_qt, stride_qh,
                           stride_ch, stride_cs, stride_table, stride_lse, stride_split_out,
                           stride_split_lse, num_splits, GROUP: tl.constexpr,
                           GROUP_PAD: tl.constexpr, BLOCK_M: tl.constexpr, ROWS: tl.constexpr,
                           D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                           CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """One program: BLOCK_M queries of sequence b, for the GROUP query heads of KV head `kvh`, over
    split `split` of the sequence's key blocks (out/lse of split s at s * stride_split_*).

    Tile rows are (query, head-in-group) pairs, padded to ROWS (>= 16 for tensor cores), so a KV
    block is loaded once for all the query heads that share it (GQA)."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    tile = tl.program_id(2) // num_splits
    split = tl.program_id(2) % num_splits
    q_lo = tl.load(q_start_ptr + b)
    n_q = tl.load(q_start_ptr + b + 1) - q_lo
    kv_len = tl.load(kv_lens_ptr + b)
    q_offset = tl.load(q_offsets_ptr + b)
    r = tl.arange(0, ROWS)
    m = tile * BLOCK_M + r // GROUP_PAD  # query index within the sequence
    g = r % GROUP_PAD
    row_ok = (r < BLOCK_M * GROUP_PAD) & (m < n_q) & (g < GROUP)
    head = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q_rows = (q_lo + m).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    kv_end = kv_len
    if CAUSAL:
        last_q = tl.minimum(n_q, (tl.program_id(2) // num_splits + 1) * BLOCK_M) - 1
        kv_end = tl.minimum(kv_len, q_offset + last_q + 1)
    j = tl.arange(0, BLOCK_SIZE)
    blocks = tl.cdiv(kv_end, BLOCK_SIZE)
    per_split = tl.cdiv(blocks, num_splits)
    for n in range(split * per_split, tl.minimum(blocks, (split + 1) * per_split)):
        block = tl.load(tables_ptr + b * stride_table + n).to(tl.int64)
        key = n * BLOCK_SIZE + j
        key_ok = key < kv_end
        kv_rows = kvh * stride_ch + (block * BLOCK_SIZE + j) * stride_cs
        k = tl.load(k_cache_ptr + kv_rows[:, None] + d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_cache_ptr + kv_rows[:, None] + d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        visible = key_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            visible = visible & (key[None, :] <= (q_offset + m)[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    out_rows = (split.to(tl.int64) * stride_split_out + (q_lo + m).to(tl.int64) * stride_qt
                + head * stride_qh)
    tl.store(out_ptr + out_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    lse_rows = split.to(tl.int64) * stride_split_lse + (q_lo + m).to(tl.int64) * stride_lse + head
    tl.store(lse_ptr + lse_rows, m_i + tl.log(l_safe), mask=row_ok)  # -inf where a split saw no key


@triton.jit
def merge_state_kernel(out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr, out_ptr, lse_ptr,
                       D: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # one (token, head) pair
    d = tl.arange(0, BLOCK_D)
    ok = d < D
    la = tl.load(lse_a_ptr + row)
    lb = tl.load(lse_b_ptr + row)
    top = tl.maximum(la, lb)
    wa = tl.exp(la - top)
    wb = tl.exp(lb - top)
    oa = tl.load(out_a_ptr + row * D + d, mask=ok, other=0.0).to(tl.float32)
    ob = tl.load(out_b_ptr + row * D + d, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + d, ((oa * wa + ob * wb) / (wa + wb)).to(out_ptr.dtype.element_ty),
             mask=ok)
    tl.store(lse_ptr + row, top + tl.log(wa + wb))


def store_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slots: torch.Tensor) -> None:
    k, v = k.contiguous(), v.contiguous()
    kv_heads, d = k.shape[1], k.shape[2]
    store_kv_kernel[(k.shape[0],)](k, v, k_cache, v_cache, slots, k.stride(0), k.stride(1),
                                   k_cache.stride(0), k_cache.stride(1), KV_HEADS=kv_heads, D=d,
                                   BLOCK_HEADS=triton.next_power_of_2(kv_heads),
                                   BLOCK_D=triton.next_power_of_2(d))


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           q_start: torch.Tensor, block_tables: torch.Tensor,
                           kv_lens: torch.Tensor, q_offsets: torch.Tensor, block_size: int,
                           causal: bool = True, max_queries: int | None = None,
                           max_kv_len: int | None = None,
                           num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """num_splits > 1 divides each sequence's key blocks among that many programs (split-KV, as in
    flash-decoding) and merges their partial results by LSE: more programs for the GPU when the
    sequences are few and long, as a shared prefix is. By default chosen from max_kv_len (a host
    number, so no sync) by choose_num_splits; 1 when it is not given."""
    if block_size & (block_size - 1):
        raise ValueError(f"the Triton kernel needs a power-of-two block size, got {block_size}")
    q = q.contiguous()
    heads, d = q.shape[1], q.shape[2]
    group = heads // k_cache.shape[0]
    group_pad = triton.next_power_of_2(group)
    if max_queries is None:
        max_queries = int((q_start[1:] - q_start[:-1]).max())
    block_m = 1 if max_queries == 1 else max(1, 64 // group_pad)  # decode: one query per program
    rows = max(16, block_m * group_pad)
    tiles = triton.cdiv(max_queries, block_m)
    programs = len(kv_lens) * k_cache.shape[0] * tiles
    if num_splits is None:
        num_splits = 1 if max_kv_len is None else choose_num_splits(programs, max_kv_len, q.device)
    out = q.new_empty((num_splits, *q.shape)) if num_splits > 1 else torch.empty_like(q)
    lse = torch.empty((num_splits, *q.shape[:2]) if num_splits > 1 else q.shape[:2],
                      dtype=torch.float32, device=q.device)
    grid = (len(kv_lens), k_cache.shape[0], tiles * num_splits)
    paged_attention_kernel[grid](q, k_cache, v_cache, out, lse, q_start, block_tables, kv_lens,
                                 q_offsets, d**-0.5, q.stride(0), q.stride(1), k_cache.stride(0),
                                 k_cache.stride(1), block_tables.stride(0), lse.stride(-2),
                                 q.numel() if num_splits > 1 else 0,
                                 lse[0].numel() if num_splits > 1 else 0, num_splits, GROUP=group,
                                 GROUP_PAD=group_pad, BLOCK_M=block_m, ROWS=rows, D=d,
                                 BLOCK_D=triton.next_power_of_2(d), BLOCK_SIZE=block_size,
                                 CAUSAL=causal,
                                 PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return merge_splits(out, lse) if num_splits > 1 else (out, lse)


def merge_splits(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial results over disjoint key ranges, out [S, T, heads, d] and lse [S, T, heads], merged
    into one by their LSE; rows no split saw a key of keep LSE -inf."""
    top = lse.amax(0)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    weights = torch.exp(lse - top)
    total = weights.sum(0)
    divisor = torch.where(total == 0, 1.0, total)
    merged = (weights[..., None] * out.float()).sum(0) / divisor[..., None]
    return merged.to(out.dtype), top + torch.log(total)


def choose_num_splits(num_programs: int, max_kv_len: int, device: torch.device,
                      min_keys: int = 512) -> int:
    """Splits of each sequence's keys so that the launch has about two programs per streaming
    multiprocessor, each split keeping at least `min_keys` keys. 1 off CUDA."""
    if torch.device(device).type != "cuda":
        return 1
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(target, num_programs), max_kv_len // min_keys))


def merge_state_triton(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                       lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out_a, out_b = out_a.contiguous(), out_b.contiguous()
    out = torch.empty_like(out_a)
    lse = torch.empty_like(lse_a)
    d = out_a.shape[-1]
    merge_state_kernel[(lse_a.numel(),)](out_a, lse_a.contiguous(), out_b, lse_b.contiguous(), out,
                                         lse, D=d, BLOCK_D=triton.next_power_of_2(d))
    return out, lse

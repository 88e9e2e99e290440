"""Attention math on CPU tensors: partial attention with its log-sum-exp, merging partial results,
and the KV store. The paged torch backend is built from these; they are also the torch references
of the Triton kernels in kojudge.kernels.attention."""
from __future__ import annotations

from collections.abc import Callable
import functools
import time

import torch

from kojudge.kernels import onednn

FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# Stacked query rows from which unmasked float32 attention runs faster on oneDNN than on the flash
# kernel, and the rows scored at a time there, so that one head's score block stays in L2.
ONEDNN_MIN_ROWS = 128
ONEDNN_ROW_CHUNK = 512
# Query rows from which splitting off the causal square beats one masked call (bench/test_micro.py).
CAUSAL_SPLIT_MIN_ROWS = 768


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """Write new keys/values [T, kv_heads, d] into their slots of one layer's cache
    [kv_heads, slots, d]."""
    k_cache.index_copy_(1, slots, k.transpose(0, 1))
    v_cache.index_copy_(1, slots, v.transpose(0, 1))


def merge_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                 lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over key sets A and B from attention over each: out [..., d], lse [...].

    One lerp in the outputs' dtype: in 16 bits its weight is rounded to 16 bits too (mean error
    1.3x that of rounding the result alone), where the float32 round trip cost 19x the time."""
    lse = torch.logaddexp(lse_a, lse_b)
    weight_a = torch.exp(lse_a - lse).unsqueeze(-1).to(out_a.dtype)
    return torch.lerp(out_b, out_a, weight_a), lse


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32,
                  repeat: int = 1) -> torch.Tensor:
    """Bool mask (True = attend) -> 0 / -inf to add to scores, its rows repeated `repeat` times.
    Built once per step and shared by every layer."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, float("-inf"))
    if repeat == 1:
        return bias
    return bias.repeat(repeat, *[1] * (mask.dim() - 1))


def flash_cpu_runs(x: torch.Tensor) -> bool:
    """Whether torch's CPU flash kernel (which also returns the LSE) can take x."""
    return FLASH_CPU is not None and x.device.type == "cpu"


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [..., M, d] to k/v [..., S, d] -> (out [..., M, d], LSE [..., M] float32).

    bias: an additive mask broadcast to the scores, float32 or q's dtype. The LSE lets partial
    results over disjoint key sets be merged exactly (merge_states).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    if bias is not None:
        scores.add_(bias)
    peak = scores.amax(dim=-1, keepdim=True)  # every row attends to at least one key
    weights = scores.sub_(peak).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    # Normalizing the [.., d] output rather than the [.., S] weights divides fewer elements.
    out = torch.matmul(weights.to(v.dtype), v).float().div_(total)
    return out.to(v.dtype), (peak + total.log()).squeeze(-1)


def _attention_onednn(q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked float32 attention of q [H, M, d] to k/v [H, S, d] with both matmuls on oneDNN,
    one head and row chunk at a time -> (out [H, M, d], LSE [H, M])."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    q = q * q.shape[-1] ** -0.5
    for h in range(q.shape[0]):
        for start in range(0, q.shape[1], ONEDNN_ROW_CHUNK):
            rows = slice(start, start + ONEDNN_ROW_CHUNK)
            scores = onednn.linear(q[h, rows], k[h], None)
            peak = scores.amax(dim=-1)
            weights = torch.softmax(scores, dim=-1)  # one fused pass
            out[h, rows] = onednn.linear(weights, v[h].t(), None)
            # The top weight is exp(peak - LSE), so LSE = peak - log(top weight).
            torch.sub(peak, weights.amax(dim=-1).log(), out=lse[h, rows])
    return out, lse


def best_of_three(attend: Callable[[], object]) -> float:
    """Seconds of the fastest of three calls after a warm-up, for choosing paths at run time."""
    attend()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        attend()
        times.append(time.perf_counter() - start)
    return min(times)


@functools.cache
def onednn_attention_is_faster() -> bool:
    """Whether unmasked float32 attention runs faster on oneDNN's matmuls than on torch's flash
    kernel on this machine, measured once per process (~20 ms): the flash kernel's GEMMs are
    MKL's, which on some CPUs (AMD EPYC) run at half oneDNN's speed and on others match it, and
    then the fused kernel wins by 3x."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, rows, 64, generator=generator) for rows in (256, 1024, 1024))
    flash = best_of_three(lambda: FLASH_CPU(q[None], k[None], v[None]))
    return best_of_three(lambda: _attention_onednn(q, k, v)) < 0.9 * flash


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [M, heads, d] attends to k/v [kv_heads, S, d] -> (out [M, heads, d], LSE [M, heads]).

    The query heads of one KV head are stacked along the query axis, so GQA repeats no keys. On
    CPU it runs torch's flash kernel, or oneDNN's matmuls for unmasked float32 with many rows (a
    shared prefix) where those measured faster; elsewhere the matmul form. bias: an additive mask
    [group * M, S] in q's dtype, rows in the stacked order (additive_mask(mask, q.dtype, group)).
    """
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    stacked = q.view(m, kv_heads, group, d).permute(1, 2, 0, 3).reshape(kv_heads, group * m, d)
    many_rows = bias is None and stacked.shape[1] >= ONEDNN_MIN_ROWS and onednn.applies(q)
    if many_rows and (not flash_cpu_runs(q) or onednn_attention_is_faster()):
        out, lse = _attention_onednn(stacked, k, v)
    elif flash_cpu_runs(q):
        out, lse = FLASH_CPU(stacked[None], k[None], v[None], attn_mask=bias)
        out, lse = out[0], lse[0]
    else:
        out, lse = partial_attention(stacked, k, v, None if bias is None else bias.float())
    out = out.view(kv_heads, group, m, d).permute(2, 0, 1, 3).reshape(m, heads, d)
    lse = lse.float().view(kv_heads, group, m).permute(2, 0, 1).reshape(m, heads)
    return out, lse


def causal_attention_with_lse(q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [m, heads, d] holds the last m of the S positions of k/v [kv_heads, S, d], each query
    seeing the keys up to its own -> (out [m, heads, d], LSE [m, heads] float32). CPU.

    The keys before the queries are attended unmasked; the square of the queries' own keys runs
    on the flash kernel's is_causal, which skips the key blocks a mask would hide but compute.
    """
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    seen_by_all = k.shape[1] - m
    # The query heads of a KV head as a batch dim over keys expanded (not copied) along it.
    by_group = q.view(m, kv_heads, group, d).permute(2, 1, 0, 3)
    own_k = k[None, :, seen_by_all:].expand(group, -1, -1, -1)
    own_v = v[None, :, seen_by_all:].expand(group, -1, -1, -1)
    out, lse = FLASH_CPU(by_group, own_k, own_v, is_causal=True)
    out = out.permute(2, 1, 0, 3).reshape(m, heads, d)
    lse = lse.permute(2, 1, 0).reshape(m, heads).float()
    if seen_by_all:
        before = attention_with_lse(q, k[:, :seen_by_all], v[:, :seen_by_all], None)
        out, lse = merge_states(*before, out, lse)
    return out, lse

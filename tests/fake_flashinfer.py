"""A stand-in for the flashinfer package on CPU: the calls kojudge makes, computed in float64 with the
semantics flashinfer documents, and checked as strictly as its kernels check their inputs. The real
package needs a GPU; bench/gpu_kernels.py runs the engine on it when one is lent.

Documented semantics relied on: page tables in CSR form (indptr, indices, last_page_len in
[1, page_size]), "HND" pages [num_pages, kv_heads, page_size, d] given as a (k, v) tuple of tensors with
any strides, causal masks aligned to the end of each request's keys, LSE in base 2, merge_state taking
base-2 LSEs.
"""
from __future__ import annotations

import functools
import math

import torch

plans: list[dict] = []  # every plan made, for tests to inspect
calls: list[tuple[str, tuple, dict]] = []  # (qualified name, args, kwargs) as called, to bind to the real package


def _recorded(fn):
    @functools.wraps(fn)
    def record(*args, **kwargs):
        calls.append((fn.__qualname__, args, kwargs))
        return fn(*args, **kwargs)
    return record


def _as_dtype(name: str | torch.dtype) -> torch.dtype:
    return getattr(torch, name) if isinstance(name, str) else name


class BatchPrefillWithPagedKVCacheWrapper:
    @_recorded
    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD"):
        assert float_workspace_buffer.dtype == torch.uint8
        assert kv_layout in ("NHD", "HND")
        self.kv_layout = kv_layout
        self.plan_args: dict | None = None

    @_recorded
    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, causal: bool = False, q_data_type: str | torch.dtype = "float16",
             kv_data_type: str | torch.dtype | None = None) -> None:
        for name, t in (("qo_indptr", qo_indptr), ("paged_kv_indptr", paged_kv_indptr),
                        ("paged_kv_indices", paged_kv_indices), ("paged_kv_last_page_len", paged_kv_last_page_len)):
            assert t.dtype == torch.int32 and t.dim() == 1, f"{name}: {t.dtype} {tuple(t.shape)}"
        batch = len(qo_indptr) - 1
        assert len(paged_kv_indptr) == batch + 1 and len(paged_kv_last_page_len) == batch
        assert int(qo_indptr[0]) == 0 and int(paged_kv_indptr[0]) == 0
        assert bool((qo_indptr.diff() >= 0).all()) and bool((paged_kv_indptr.diff() >= 1).all())
        assert int(paged_kv_indptr[-1]) == len(paged_kv_indices)
        assert bool(((paged_kv_last_page_len >= 1) & (paged_kv_last_page_len <= page_size)).all())
        assert num_qo_heads % num_kv_heads == 0
        kv_lens = (paged_kv_indptr.diff() - 1) * page_size + paged_kv_last_page_len
        if causal:  # bottom-right alignment: a request with more queries than keys has rows seeing nothing
            assert bool((kv_lens >= qo_indptr.diff()).all())
        self.plan_args = dict(qo_indptr=qo_indptr.tolist(), kv_indptr=paged_kv_indptr.tolist(),
                              indices=paged_kv_indices.tolist(), kv_lens=kv_lens.tolist(), heads=num_qo_heads,
                              kv_heads=num_kv_heads, d=head_dim_qk, page_size=page_size, causal=causal,
                              q_dtype=_as_dtype(q_data_type), kv_dtype=_as_dtype(kv_data_type or q_data_type))
        plans.append(self.plan_args)

    @_recorded
    def run(self, q: torch.Tensor, paged_kv_cache: tuple[torch.Tensor, torch.Tensor], return_lse: bool = False):
        p = self.plan_args
        assert p is not None, "run before plan"
        k_pages, v_pages = paged_kv_cache
        if self.kv_layout == "NHD":
            k_pages, v_pages = k_pages.transpose(1, 2), v_pages.transpose(1, 2)
        assert k_pages.shape[1:] == (p["kv_heads"], p["page_size"], p["d"]), tuple(k_pages.shape)
        assert k_pages.stride(-1) == 1 and v_pages.stride(-1) == 1
        assert q.dtype == p["q_dtype"] and k_pages.dtype == p["kv_dtype"]
        assert q.shape == (p["qo_indptr"][-1], p["heads"], p["d"]), tuple(q.shape)
        group = p["heads"] // p["kv_heads"]
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:2], dtype=torch.float32)
        for i, n in enumerate(p["kv_lens"]):
            start, end = p["qo_indptr"][i], p["qo_indptr"][i + 1]
            pages = p["indices"][p["kv_indptr"][i]: p["kv_indptr"][i + 1]]
            keys = k_pages[pages].transpose(0, 1).flatten(1, 2)[:, :n].double().repeat_interleave(group, 0)
            values = v_pages[pages].transpose(0, 1).flatten(1, 2)[:, :n].double().repeat_interleave(group, 0)
            scores = q[start:end].double().transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(p["d"])
            if p["causal"]:
                rows = torch.arange(end - start)[:, None] + n - (end - start)
                scores = scores.masked_fill(torch.arange(n)[None, :] > rows, float("-inf"))
            out[start:end] = (scores.softmax(-1) @ values).transpose(0, 1).to(q.dtype)
            lse[start:end] = (torch.logsumexp(scores, -1) / math.log(2)).transpose(0, 1).float()
        return (out, lse) if return_lse else out


@_recorded
def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    assert v_a.shape == v_b.shape and s_a.shape == s_b.shape == v_a.shape[:2]
    assert s_a.dtype == s_b.dtype == torch.float32
    s = torch.logaddexp2(s_a, s_b)
    v = v_a.double() * torch.exp2(s_a - s)[..., None].double() + v_b.double() * torch.exp2(s_b - s)[..., None].double()
    return v.to(v_a.dtype), s

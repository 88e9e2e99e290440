"""Paged attention kernels (Triton: on the GPU where there is one, else in the CPU interpreter) against
their torch references."""
import pytest
import torch

from conftest import KERNEL_DEVICE

from kojudge.kernels.attention import (merge_state_reference, merge_state_triton, paged_attention_reference,
                                       paged_attention_triton, store_kv_reference, store_kv_triton)


def make_batch(q_lens, kv_lens, heads, kv_heads, d, block_size, seed=0, num_blocks=64):
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(kv_heads, num_blocks * block_size, d, generator=g)
    v_cache = torch.randn(kv_heads, num_blocks * block_size, d, generator=g)
    width = max(1, max(-(-n // block_size) for n in kv_lens))
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(kv_lens), width, dtype=torch.int32)
    used = 0
    for b, n in enumerate(kv_lens):
        need = -(-n // block_size)
        tables[b, :need] = order[used: used + need]
        used += need
    q_start = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(int(q_start[-1]), heads, d, generator=g)
    q_offsets = torch.tensor([n - l for n, l in zip(kv_lens, q_lens)], dtype=torch.int32)
    batch = q, k_cache, v_cache, q_start, tables, torch.tensor(kv_lens, dtype=torch.int32), q_offsets
    return tuple(t.to(KERNEL_DEVICE) for t in batch)


CASES = {
    "extend, odd lengths": ([5, 17, 3], [5, 33, 20], 4, 2, 16, 4),
    "decode, block edges": ([1, 1, 1, 1], [1, 8, 9, 16], 6, 2, 16, 8),
    "gqa 3, d 24": ([7, 1], [12, 30], 6, 2, 24, 4),
    "mha": ([9], [9], 2, 2, 32, 8),
    "empty queries and keys": ([0, 3, 0], [5, 3, 0], 4, 1, 16, 4),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("causal", [True, False])
def test_paged_attention_matches_reference(case, causal):
    q_lens, kv_lens, heads, kv_heads, d, block_size = CASES[case]
    args = make_batch(q_lens, kv_lens, heads, kv_heads, d, block_size)
    expected = paged_attention_reference(*args, block_size, causal=causal)
    got = paged_attention_triton(*args, block_size, causal=causal)
    rows = torch.tensor([kv_lens[b] > 0 for b, n in enumerate(q_lens) for _ in range(n)], dtype=torch.bool,
                        device=KERNEL_DEVICE)
    torch.testing.assert_close(got[0][rows], expected[0][rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
    if (~rows).any():  # no keys: nothing to attend to, LSE -inf so a merge gives it no weight
        assert torch.isinf(got[1][~rows]).all()


@pytest.mark.parametrize("num_splits", [2, 3, 8])
@pytest.mark.parametrize("causal", [True, False])
def test_split_keys_give_the_same_attention(num_splits, causal):
    """Split-KV: more splits than some sequences have blocks (empty splits), odd block counts, a
    sequence without keys, decode and extend rows."""
    q_lens, kv_lens, heads, kv_heads, d, block_size = [1, 6, 2, 3], [37, 20, 4, 0], 6, 2, 16, 4
    args = make_batch(q_lens, kv_lens, heads, kv_heads, d, block_size, seed=7)
    expected = paged_attention_reference(*args, block_size, causal=causal)
    got = paged_attention_triton(*args, block_size, causal=causal, num_splits=num_splits)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


def test_cascade_prefix_plus_suffix_equals_full_attention():
    """Stacked queries of 3 sequences vs one shared prefix (no mask), each vs its own suffix (causal),
    merged by LSE = each sequence attending to prefix + suffix."""
    block_size, prefix_blocks = 4, 3
    q_lens, suffix_lens = [1, 6, 2], [5, 9, 2]
    full_lens = [prefix_blocks * block_size + n for n in suffix_lens]
    q, k_cache, v_cache, q_start, tables, _, _ = make_batch(q_lens, full_lens, 4, 2, 16, block_size, seed=3)
    shared = tables[0, :prefix_blocks].clone()
    tables[:, :prefix_blocks] = shared  # every sequence starts with the same blocks
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=KERNEL_DEVICE)  # noqa: E731
    expected = paged_attention_reference(q, k_cache, v_cache, q_start, tables, ints(full_lens),
                                         ints([n - l for n, l in zip(full_lens, q_lens)]), block_size)
    total = int(q_start[-1])
    prefix = paged_attention_triton(q, k_cache, v_cache, ints([0, total]), shared[None].contiguous(),
                                    ints([prefix_blocks * block_size]), ints([0]), block_size, causal=False)
    suffix = paged_attention_triton(q, k_cache, v_cache, q_start, tables[:, prefix_blocks:].contiguous(),
                                    ints(suffix_lens), ints([n - l for n, l in zip(suffix_lens, q_lens)]), block_size)
    merged = merge_state_triton(*prefix, *suffix)
    torch.testing.assert_close(merged[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged[1], expected[1], atol=1e-5, rtol=1e-5)


def test_merge_state_matches_reference_including_empty_side():
    g = torch.Generator().manual_seed(4)
    out_a, out_b = torch.randn(5, 3, 24, generator=g), torch.randn(5, 3, 24, generator=g)
    lse_a, lse_b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    out_a, out_b, lse_a, lse_b = (t.to(KERNEL_DEVICE) for t in (out_a, out_b, lse_a, lse_b))
    lse_b[0] = float("-inf")  # an empty suffix contributes nothing
    got = merge_state_triton(out_a, lse_a, out_b, lse_b)
    expected = merge_state_reference(out_a, lse_a, out_b, lse_b)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[0][0], out_a[0])


def test_store_kv_matches_reference():
    g = torch.Generator().manual_seed(5)
    k, v = torch.randn(7, 3, 24, generator=g), torch.randn(7, 3, 24, generator=g)
    k, v = k.to(KERNEL_DEVICE), v.to(KERNEL_DEVICE)
    slots = torch.tensor([0, 5, 9, 31, 2, 17, 30], device=KERNEL_DEVICE)
    caches = [torch.zeros(3, 32, 24, device=KERNEL_DEVICE) for _ in range(4)]
    store_kv_reference(k, v, caches[0], caches[1], slots)
    store_kv_triton(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_non_power_of_two_block_size_is_refused():
    args = make_batch([2], [6], 2, 2, 16, 4)
    with pytest.raises(ValueError, match="power-of-two block size"):
        paged_attention_triton(*args, block_size=6)

"""The C++ CPU kernels (kernels/*.cpp) against their torch references: decode and prefill
attention over gathered blocks, the KV store, RMSNorm and the rotary embedding."""
import pytest
import torch

import kojudge
from conftest import hf_greedy, random_prompts
from kojudge import SamplingParams
from kojudge.attention import torch_paged
from kojudge.kernels import pool_attention as kernel, token_ops
from kojudge.kernels.cpu_attention import partial_attention, store_kv
from kojudge.kernels.native import library
from kojudge.model.decoder import RMSNorm

pytestmark = pytest.mark.skipif(
    library is None, reason="the C++ CPU kernels are not loaded (they need AVX-512, and a "
    "compiler at install: scripts/install.sh)")


def _pool(kv_heads, num_blocks, block_size, d, dtype, generator):
    shape = (kv_heads, num_blocks * block_size, d)
    return (torch.randn(shape, generator=generator).to(dtype),
            torch.randn(shape, generator=generator).to(dtype))


def _reference(q, k, v, blocks, counts, block_size):
    """partial_attention in float32 over each row's gathered blocks."""
    kv_heads, _, d = k.shape
    outs, lses = [], []
    for row, count in enumerate(counts.tolist()):
        def gather(x):
            paged = x.view(kv_heads, -1, block_size, d)[:, blocks[row]]
            return paged.flatten(1, 2)[:, :count].float()
        grouped = q[row].float().view(kv_heads, -1, d)  # the query heads of each KV head
        out, lse = partial_attention(grouped, gather(k), gather(v), None)
        outs.append(out.flatten(0, 1))
        lses.append(lse.flatten())
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 4), (6, 2), (14, 2), (16, 1), (11, 1)])
def test_kernel_matches_attention_over_gathered_blocks(dtype, d, heads, kv_heads):
    generator = torch.Generator().manual_seed(d * heads + kv_heads)
    block_size, rows, width = 16, 6, 9
    k, v = _pool(kv_heads, rows * width + 3, block_size, d, dtype, generator)
    # Each row's blocks scattered over the pool; counts at tile edges and inside a tile.
    blocks = torch.randperm(rows * width + 3, generator=generator)[: rows * width].view(rows, width)
    counts = torch.tensor([1, 15, 16, 17, 100, width * block_size])
    q = torch.randn(rows, heads, d, generator=generator).to(dtype)
    out, lse = kernel.decode_attention(q, k, v, blocks, counts, block_size)
    ref_out, ref_lse = _reference(q, k, v, blocks, counts, block_size)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (rows, heads)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16 rounds the output
    torch.testing.assert_close(out.float(), ref_out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_kernel_reads_blocks_larger_than_its_tiles():
    generator = torch.Generator().manual_seed(0)
    block_size = 32
    k, v = _pool(2, 20, block_size, 64, torch.float32, generator)
    blocks = torch.tensor([[7, 3, 12], [0, 19, 5]])
    counts = torch.tensor([70, 33])
    q = torch.randn(2, 4, 64, generator=generator)
    out, lse = kernel.decode_attention(q, k, v, blocks, counts, block_size)
    ref_out, ref_lse = _reference(q, k, v, blocks, counts, block_size)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_kernel_rejects_counts_past_the_blocks_given():
    k, v = _pool(1, 4, 16, 64, torch.float32, torch.Generator().manual_seed(0))
    q = torch.randn(1, 1, 64)
    with pytest.raises(RuntimeError, match="every count"):
        kernel.decode_attention(q, k, v, torch.tensor([[0, 1]]), torch.tensor([33]), 16)
    with pytest.raises(RuntimeError, match="head_dim"):
        kernel.decode_attention(q[..., :48].contiguous(), k[..., :48].contiguous(),
                                v[..., :48].contiguous(), torch.tensor([[0]]),
                                torch.tensor([3]), 16)
    assert not kernel.supports(k[..., :48], 16) and not kernel.supports(k, 8)
    assert kernel.supports(k, 16) and not kernel.supports(k.half(), 16)


def _prefill_reference(q, k, v, blocks, num_keys, block_size, causal):
    """partial_attention in float32 over the gathered blocks, the causal mask as a bias."""
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    keys, values = (x.view(kv_heads, -1, block_size, d)[:, blocks].flatten(1, 2)[:, :num_keys]
                    .float()[:, None] for x in (k, v))
    bias = None
    if causal:
        seen = torch.arange(num_keys)[None, :] <= torch.arange(m)[:, None] + num_keys - m
        bias = torch.zeros(m, num_keys).masked_fill_(~seen, float("-inf"))
    grouped = q.float().view(m, kv_heads, heads // kv_heads, d).permute(1, 2, 0, 3)
    out, lse = partial_attention(grouped, keys, values, bias)
    return out.permute(2, 0, 1, 3).reshape(m, heads, d), lse.permute(2, 0, 1).reshape(m, heads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 4), (14, 2), (11, 1)])
def test_prefill_kernel_matches_attention_over_gathered_blocks(dtype, d, heads, kv_heads):
    """Spans of 1 to 70 queries over 1 to 300 keys: inside one tile of 32 keys, across row
    blocks of 32 stacked rows and key blocks of 128, causal and not."""
    generator = torch.Generator().manual_seed(d * heads + kv_heads)
    block_size, pool_blocks = 16, 40
    k, v = _pool(kv_heads, pool_blocks, block_size, d, dtype, generator)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16 rounds the output
    for rows, num_keys, causal in [(1, 1, True), (5, 17, True), (40, 40, True), (33, 300, True),
                                   (70, 129, False), (3, 64, False)]:
        blocks = torch.randperm(pool_blocks, generator=generator)[: -(-num_keys // block_size)]
        q = torch.randn(rows, heads, d, generator=generator).to(dtype)
        out, lse = kernel.prefill_attention(q, k, v, blocks, num_keys, block_size, causal)
        ref_out, ref_lse = _prefill_reference(q, k, v, blocks, num_keys, block_size, causal)
        assert out.dtype == dtype and out.shape == q.shape
        torch.testing.assert_close(out.float(), ref_out, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


def test_prefill_kernel_rejects_what_it_cannot_attend():
    k, v = _pool(2, 4, 16, 64, torch.float32, torch.Generator().manual_seed(0))
    q = torch.randn(8, 4, 64)
    with pytest.raises(RuntimeError, match="num_keys"):
        kernel.prefill_attention(q, k, v, torch.tensor([0, 1]), 33, 16)
    with pytest.raises(RuntimeError, match="causal queries"):
        kernel.prefill_attention(q, k, v, torch.tensor([0]), 5, 16)
    with pytest.raises(RuntimeError, match="outside the pool"):
        kernel.prefill_attention(q, k, v, torch.tensor([4]), 16, 16)


@pytest.mark.parametrize("spans_in_place", [True, False])
def test_engine_prefills_in_place_and_matches_transformers(model_dirs, hf_models,
                                                           spans_in_place, monkeypatch):
    """Prefill spans on the kernel (chunked, so that later chunks see keys before them) give
    transformers' greedy tokens and the torch path's log-probs within float32 rounding."""
    calls = []
    kernel_call = torch_paged.prefill_attention
    monkeypatch.setattr(torch_paged, "prefill_attention",
                        lambda *args: calls.append(len(args[0])) or kernel_call(*args))
    prompts = random_prompts([30, 75, 140], seed=8)
    params = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True)
    engine = kojudge.Engine(model_dirs["qwen3-tied"], max_num_batched_tokens=64)
    engine.runner.spans_in_place = spans_in_place
    outs = engine.generate(prompts, params)
    reference = kojudge.Engine(model_dirs["qwen3-tied"], max_num_batched_tokens=64)
    reference.runner.spans_in_place = False
    expected = reference.generate(prompts, params)
    assert bool(calls) == spans_in_place
    for prompt, out, ref in zip(prompts, outs, expected):
        assert out.token_ids == hf_greedy(hf_models["qwen3-tied"], prompt, 8) == ref.token_ids
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(ref.logprobs),
                                   atol=1e-5, rtol=0)


def test_engine_decodes_in_place_and_matches_transformers(model_dirs, hf_models):
    """Judge-shaped prompts (a shared template, then two candidates each): decodes read the
    pool in place, merged with the shared prefix by LSE, and give transformers' greedy tokens
    and the same log-probs as the workspace path within float32 rounding."""
    head = random_prompts([40], seed=5)[0]
    prompts = [head + tail for tail in random_prompts([9 + 7 * i for i in range(6)], seed=6)]
    params = SamplingParams(max_tokens=24, ignore_eos=True, logprobs=True)
    in_place = kojudge.Engine(model_dirs["qwen3-tied"])
    assert in_place.runner.decode_in_place
    outs = in_place.generate(prompts, params)
    workspace = kojudge.Engine(model_dirs["qwen3-tied"])
    workspace.runner.decode_in_place = False
    workspace.runner.workspace.budget_bytes = 2**30
    expected = workspace.generate(prompts, params)
    assert in_place.stats()["cached_prompt_tokens"] > 0  # the template was shared
    for prompt, out, ref in zip(prompts, outs, expected):
        assert out.token_ids == hf_greedy(hf_models["qwen3-tied"], prompt, 24) == ref.token_ids
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(ref.logprobs),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 300])
def test_store_matches_index_copy(dtype, tokens):
    """New keys as the model has them (views of the fused projection), into scattered slots."""
    generator = torch.Generator().manual_seed(tokens)
    kv_heads, d, pool = 2, 32, 1024
    projected = torch.randn(tokens, 3 * kv_heads * d, generator=generator).to(dtype)
    k = projected[:, kv_heads * d: 2 * kv_heads * d].view(tokens, kv_heads, d)
    v = projected[:, 2 * kv_heads * d:].view(tokens, kv_heads, d)
    slots = torch.randperm(pool, generator=generator)[:tokens]
    caches = [torch.zeros(kv_heads, pool, d, dtype=dtype) for _ in range(4)]
    library.store_kv(k, v, caches[0], caches[1], slots)
    store_kv(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    assert caches[0].abs().sum() > 0
    with pytest.raises(RuntimeError, match="outside the pool"):
        library.store_kv(k, v, caches[0], caches[1], slots + pool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 24, 64, 128])
def test_token_ops_round_where_the_torch_code_rounds(dtype, d):
    """Rotary on q as the model has it (a view of the fused projection) and RMSNorm over widths
    that end inside a vector: rotary bit for bit in both dtypes, RMSNorm bit for bit in
    bfloat16 and within 3 ulp in float32 (another order of the sum of squares)."""
    generator = torch.Generator().manual_seed(d)
    tokens, heads = 37, 3
    fused = torch.randn(tokens, 2 * heads * d, generator=generator).to(dtype)
    q = fused[:, : heads * d].view(tokens, heads, d)
    cos, sin = (torch.randn(tokens, 1, d, generator=generator).to(dtype) for _ in range(2))
    x1, x2 = q.chunk(2, dim=-1)
    reference = torch.cat([-x2, x1], dim=-1).mul_(sin).add_(q * cos)
    with torch.no_grad():
        assert token_ops.applies(q, cos)
        assert torch.equal(token_ops.rotary(q, cos, sin), reference)
    norm = RMSNorm(d, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=generator))
        rows = fused[:, :d]
        ours = token_ops.rms_norm(rows, norm.weight, norm.eps)
    wide = rows.float()
    normed = (wide * torch.rsqrt(wide.square().mean(-1, keepdim=True) + 1e-6)).to(dtype)
    reference = norm.weight * normed
    if dtype == torch.float32:
        torch.testing.assert_close(ours, reference, atol=0, rtol=3.6e-7)
    else:
        assert torch.equal(ours, reference)
    with torch.no_grad():
        assert not token_ops.applies(q, cos.half())  # another dtype: the torch code
    assert not token_ops.applies(q, cos)  # with grad (training): the torch code

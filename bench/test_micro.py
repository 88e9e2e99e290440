"""Micro-benchmarks with pytest-benchmark (not part of the default test run):

    python -m pytest bench/test_micro.py --benchmark-only

Each case pairs a kojudge path with its baseline in the same run, so compare the rows, not the
absolute times (these machines are shared and noisy).
"""
import random

import pytest
import torch
import torch.nn.functional as F

import kojudge
from kojudge.kernels import onednn
from kojudge.kernels.cpu_attention import (additive_mask, attention_with_lse, causal_attention_with_lse, merge_states,
                               partial_attention)
from kojudge.kernels import chosen_logprobs, pool_attention

pytestmark = pytest.mark.benchmark(min_rounds=5, warmup=True)


@pytest.fixture(scope="module")
def logprob_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(512, 256, generator=g, requires_grad=True),
            (torch.randn(32768, 256, generator=g) * 0.05).requires_grad_(), torch.randint(0, 32768, (512,), generator=g))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_logprobs_forward_backward(benchmark, logprob_inputs, backend):
    hidden, weight, targets = logprob_inputs

    def run():
        logp, _ = chosen_logprobs(hidden, weight, targets, backend=backend)
        logp.sum().backward()

    benchmark(run)


@pytest.mark.parametrize("rows", [64, 1024])  # a decode step's batch; a prefill chunk
@pytest.mark.parametrize("path", ["aten", "onednn_packed"])
def test_linear_float32(benchmark, rows, path):
    """The engine's largest linear layer (512 -> 3072) in float32: torch's F.linear (MKL) vs oneDNN on
    the packed weight (kojudge.kernels.onednn), what the engine runs on CPU."""
    if path == "onednn_packed" and not onednn.available():
        pytest.skip("torch built without oneDNN")
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(rows, 512, generator=g), torch.randn(3072, 512, generator=g)
    if path == "aten":
        benchmark(F.linear, x, weight)
    else:
        packed = onednn.pack(weight)
        benchmark(onednn.linear, x, packed, None)


@pytest.mark.parametrize("cascade", [False, True])
def test_decode_attention_shared_prefix(benchmark, cascade):
    """64 queries (8 heads over 2 KV heads) against a shared 1,024-token prefix plus 32 own keys each."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(64, 8, 64, generator=g)
    prefix_k, prefix_v = torch.randn(2, 1024, 64, generator=g), torch.randn(2, 1024, 64, generator=g)
    own_k, own_v = torch.randn(2, 64, 32, 64, generator=g), torch.randn(2, 64, 32, 64, generator=g)
    grouped = q.view(64, 2, 4, 64).transpose(0, 1)  # [kv_heads, B, group, d]

    def plain():
        k = torch.cat([prefix_k[:, None].expand(-1, 64, -1, -1), own_k], dim=2)  # what a non-shared step reads
        v = torch.cat([prefix_v[:, None].expand(-1, 64, -1, -1), own_v], dim=2)
        return partial_attention(grouped, k, v, None)

    def shared():
        out_p, lse_p = partial_attention(grouped.reshape(2, 1, 256, 64), prefix_k[:, None], prefix_v[:, None], None)
        out_s, lse_s = partial_attention(grouped, own_k, own_v, None)
        return merge_states(out_s, lse_s, out_p.view(2, 64, 4, 64), lse_p.view(2, 64, 4))

    benchmark(shared if cascade else plain)


def test_knockout_logic_64_candidates(benchmark):
    rng = random.Random(0)
    truth = [rng.random() < 0.3 for _ in range(64)]
    teams = [rng.randrange(6) for _ in range(64)]

    def compare(pairs):
        return [(truth[a], truth[b]) for a, b in pairs]

    benchmark(lambda: kojudge.knockout(64, compare, teams=teams, seed=1))


@pytest.mark.parametrize("rows,keys", [(512, 512), (1024, 2048)])  # below and above CAUSAL_SPLIT_MIN_ROWS
@pytest.mark.parametrize("path", ["one_masked_call", "causal_split", "pool_kernel"])
def test_prefill_span_attention(benchmark, rows, keys, path):
    """A prefill chunk's queries (8 heads over 4 KV heads) attending causally to the keys before them
    and to their own: one call with a bias mask vs the unmasked part + the flash kernel's causal square
    vs the C++ prefill kernel reading the keys in place (blocks of 16 in a pool)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(rows, 8, 64, generator=g)
    k, v = torch.randn(4, keys, 64, generator=g), torch.randn(4, keys, 64, generator=g)
    if path == "pool_kernel":
        if not pool_attention.supports(k, 16):
            pytest.skip("the C++ CPU kernels are not loaded (AVX-512 and scripts/install.sh)")
        benchmark(pool_attention.prefill_attention, q, k, v, torch.arange(keys // 16), keys, 16)
    elif path == "causal_split":
        benchmark(causal_attention_with_lse, q, k, v)
    else:
        visible = torch.arange(keys)[None, :] <= torch.arange(rows)[:, None] + keys - rows
        benchmark(attention_with_lse, q, k, v, additive_mask(visible, q.dtype, repeat=2))

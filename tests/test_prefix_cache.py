"""Prefix cache, cache-aware scheduling and cascade attention."""
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kojudge
from conftest import KERNEL_DEVICE, hf_greedy, random_prompts
from kojudge import SamplingParams
from kojudge.attention import torch_paged
from kojudge.attention.batch import KVCache
from kojudge.attention.torch_paged import PagedAttention
from kojudge.attention import workspace
from kojudge.attention.workspace import DecodeWorkspace, grouped_by_length, in_rows, row_groups
from kojudge.kernels import cpu_attention
from kojudge.kernels.cpu_attention import (additive_mask, attention_with_lse, causal_attention_with_lse,
                                           merge_states, partial_attention)
from kojudge.runtime.model_runner import ModelRunner, shared_prefixes
from kojudge.runtime.prefix_cache import PrefixCache
from kojudge.runtime.sequence import Sequence


def tournament_prompts(num_questions=2, matches=3, template=40, question=9, seed=0):
    """Prompts shaped like knockout matches: shared template, per-question text, two candidates."""
    head = random_prompts([template], seed=seed)[0]
    prompts = []
    for q in range(num_questions):
        body = random_prompts([question], seed=seed + 100 + q)[0]
        for m in range(matches):
            a, b = random_prompts([7 + 3 * m, 12 + m], seed=seed + 1000 + 10 * q + m)
            prompts.append(head + body + a + b)
    return prompts


def two_template_prompts(matches=4):
    """Match prompts of two templates interleaved, so two shared-prefix groups run side by side."""
    two = zip(*(tournament_prompts(num_questions=1, matches=matches, template=24, question=5, seed=seed)
                for seed in (12, 40)))
    return [p for pair in two for p in pair]


# ---- prefix cache -----------------------------------------------------------------------------------

def filled_sequence(cache, token_ids, request_id=0):
    """A sequence admitted with no cached blocks, given fresh blocks for all of its tokens, computed
    and published."""
    seq = Sequence(request_id, None, token_ids, SamplingParams(), None)
    cache.admit(seq, [])
    seq.block_table = cache.allocate(cache.blocks_for(len(token_ids)))
    seq.num_computed = len(token_ids)
    cache.publish(seq)
    return seq


def test_prefix_cache_matches_full_blocks_and_evicts_lru():
    cache = PrefixCache(num_blocks=4, block_size=2)
    seq = filled_sequence(cache, [1, 2, 3, 4])
    a = list(seq.block_table)
    assert cache.match([1, 2, 3, 4, 5], 5) == a
    assert cache.match([1, 2, 3, 9], 4) == a[:1]
    assert cache.match([1, 2, 3, 4], 3) == a[:1]  # limited to whole blocks within max_tokens
    cache.release(seq)  # cached, unreferenced: evictable, tail first
    assert cache.num_free == 4 and seq.block_table == []
    fresh = cache.allocate(3)  # two never-used blocks, then the LRU cached one: the tail
    assert a[1] in fresh and a[0] not in fresh
    assert cache.match([1, 2, 3, 4], 4) == a[:1]


def test_prefix_cache_never_evicts_referenced_blocks():
    cache = PrefixCache(num_blocks=3, block_size=2)
    held = filled_sequence(cache, [7, 7]).block_table[0]
    others = cache.allocate(2)
    assert held not in others and cache.num_free == 0
    with pytest.raises(KeyError):
        cache.allocate(1)
    assert cache.match([7, 7, 1], 3) == [held]


def test_identical_blocks_published_twice_keep_one_entry():
    cache = PrefixCache(num_blocks=4, block_size=2)
    x = filled_sequence(cache, [1, 2], request_id=0)
    y = filled_sequence(cache, [1, 2], request_id=1)
    assert x.prefix_node == y.prefix_node and x.block_table != y.block_table
    assert cache.match([1, 2, 3], 3) == x.block_table


def test_admission_claims_cached_blocks_and_counts_them_computed():
    cache = PrefixCache(num_blocks=4, block_size=2)
    first = filled_sequence(cache, [1, 2, 3, 4])
    cache.release(first)
    second = Sequence(1, None, [1, 2, 3, 4, 5], SamplingParams(), None)
    hits = cache.match(second.token_ids, second.num_tokens - 1)
    assert cache.can_admit(hits, 1) and not cache.can_admit(hits, 3)
    cache.admit(second, hits)
    assert second.num_computed == 4 and second.block_table == hits
    assert cache.num_free == 2  # the two cached blocks left the free list
    assert cache.next_block_key(second.token_ids, hits) is None  # the next block is not full


# ---- cascade attention --------------------------------------------------------------------------------

def grouped_reference(q, k, v, bias):
    """Attention of q [M, heads, d] to k/v [kv_heads, S, d] in float64 by partial_attention, each query
    head on its KV head -> (out [M, heads, d], LSE [M, heads]); bias [M, S] additive, or None."""
    m, heads, d = q.shape
    kv_heads = k.shape[0]
    grouped = q.double().view(m, kv_heads, heads // kv_heads, d).permute(1, 2, 0, 3)  # [kv_heads, group, M, d]
    out, lse = partial_attention(grouped, k.double()[:, None], v.double()[:, None], bias)
    return out.permute(2, 0, 1, 3).reshape(m, heads, d), lse.double().permute(2, 0, 1).reshape(m, heads)


def test_merge_states_equals_attention_over_the_union():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 13, 8), torch.randn(2, 13, 8)
    whole, lse = partial_attention(q, k, v, None)
    a, lse_a = partial_attention(q, k[:, :6], v[:, :6], None)
    b, lse_b = partial_attention(q, k[:, 6:], v[:, 6:], None)
    merged, merged_lse = merge_states(a, lse_a, b, lse_b)
    torch.testing.assert_close(merged, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(merged_lse, lse, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("onednn_faster", [True, False], ids=["onednn-measured-faster", "flash-measured-faster"])
@pytest.mark.parametrize("rows", [3, 64, 300])  # stacked rows 6 / 128 / 600: flash, oneDNN, oneDNN in two chunks
def test_attention_with_lse_equals_plain_attention(rows, onednn_faster, monkeypatch):
    """Both paths the machine's probe may pick for many unmasked rows are exact."""
    monkeypatch.setattr(cpu_attention, "onednn_attention_is_faster", lambda: onednn_faster)
    g = torch.Generator().manual_seed(rows)
    q, k, v = torch.randn(rows, 4, 16, generator=g), torch.randn(2, 37, 16, generator=g), torch.randn(2, 37, 16, generator=g)
    out, lse = attention_with_lse(q, k, v, None)
    ref, ref_lse = grouped_reference(q, k, v, None)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [[0, 1, 2], [3, 0, 8]], ids=["consecutive", "scattered"])
@pytest.mark.parametrize("block_size", [4, 5])
def test_cascade_attention_equals_plain_attention(block_size, shared):
    """Decodes and prefill chunks whose block tables share prefixes: cascade on == cascade off,
    whether the shared blocks are one run of the pool (read as a view) or scattered (gathered)."""
    torch.manual_seed(1)
    kv_heads, heads, d = 2, 6, 8
    cache = KVCache(1, 40, block_size, kv_heads, d, torch.float32, "cpu")
    cache.k.normal_()
    cache.v.normal_()
    # `shared`: three full blocks every sequence starts with
    seqs = []
    for i, (computed, new) in enumerate([(19, 1), (23, 1), (17, 1), (16, 6), (21, 3), (9, 1)]):
        seq = Sequence(i, None, [0] * (computed + new), SamplingParams(), None)
        seq.num_computed = computed
        own = list(range(10 + 5 * i, 10 + 5 * i + 5))
        seq.block_table = (shared if i != 5 else []) + own  # the last one shares nothing
        seqs.append(seq)
    work = [(s, s.num_tokens - s.num_computed) for s in seqs]
    total = sum(n for _, n in work)
    q, k, v = torch.randn(total, heads, d), torch.randn(total, kv_heads, d), torch.randn(total, kv_heads, d)
    outs = []
    for cascade in (False, True):
        runner = ModelRunner(None, cache, torch.device("cpu"), cascade=cascade)
        _, _, batch = runner.build(work)
        assert bool(batch.shared) == cascade
        outs.append(PagedAttention(cache, batch)(0, q, k, v))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m,keys,heads,kv_heads", [(5, 5, 4, 2), (7, 19, 6, 2), (33, 40, 4, 4), (1, 9, 4, 1)])
def test_causal_attention_with_lse_equals_masked_attention(m, keys, heads, kv_heads):
    """The last m positions attend to keys up to their own: the unmasked part before them plus the
    causal square, merged, equals one masked attention (output and LSE)."""
    torch.manual_seed(2)
    d = 16
    q, k, v = torch.randn(m, heads, d), torch.randn(kv_heads, keys, d), torch.randn(kv_heads, keys, d)
    out, lse = causal_attention_with_lse(q, k, v)
    visible = torch.arange(keys)[None, :] <= torch.arange(m)[:, None] + keys - m
    ref, ref_lse = grouped_reference(q, k, v, additive_mask(visible, torch.float64))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_shared_prefix_groups_stop_at_the_first_difference():
    tables = [[1, 2, 3, 9], [1, 2, 4, 8], [1, 2, 3, 7], [5, 6], [1, 2]]
    groups = shared_prefixes(tables, [3, 3, 3, 1, 1])
    assert groups == [([0, 1, 2, 4], 1)]  # the last member has only one computed block


# ---- the engine with cache and cascade --------------------------------------------------------------

@pytest.mark.parametrize("causal_split_rows", [torch_paged.CAUSAL_SPLIT_MIN_ROWS, 2],
                         ids=["masked-spans", "causal-split"])
def test_tournament_prompts_cached_and_cascaded_match_transformers(model_dirs, hf_models, monkeypatch,
                                                                   causal_split_rows):
    """causal-split: every prefill chunk after a cached or shared part takes the causal-square path
    that the engine takes from 768 rows on."""
    monkeypatch.setattr(torch_paged, "CAUSAL_SPLIT_MIN_ROWS", causal_split_rows)
    prompts = tournament_prompts()
    hf = hf_models["qwen3-untied"]
    engines = {
        "plain": kojudge.Engine(model_dirs["qwen3-untied"], block_size=4, enable_prefix_caching=False,
                                enable_cascade=False),
        "cached": kojudge.Engine(model_dirs["qwen3-untied"], block_size=4),
    }
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    outs = {name: e.generate(prompts, params) for name, e in engines.items()}
    for i, prompt in enumerate(prompts):
        expected = hf_greedy(hf, prompt, 32)
        assert outs["plain"][i].token_ids == expected
        assert outs["cached"][i].token_ids == expected
    stats = engines["cached"].stats()
    # Unique prompt tokens: template + 2 questions + every candidate pair; cache-aware admission
    # computes little more than that (the partial block at each boundary).
    unique = 40 + 2 * 9 + sum(len(p) - 49 for p in prompts)
    assert unique <= stats["computed_prompt_tokens"] <= unique + 4 * len(prompts) + 8
    assert stats["cached_prompt_tokens"] == stats["prompt_tokens"] - stats["computed_prompt_tokens"]
    assert engines["plain"].stats()["computed_prompt_tokens"] == sum(map(len, prompts))


def test_eviction_under_pressure_keeps_results_correct(model_dirs, hf_models):
    engine = kojudge.Engine(model_dirs["qwen2-untied"], block_size=4, kv_cache_blocks=30)
    hf = hf_models["qwen2-untied"]
    prompts = tournament_prompts(num_questions=3, matches=2, template=24, question=5, seed=7)
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    for _ in range(2):  # the second pass hits what survived eviction
        outs = engine.generate(prompts, params)
        for prompt, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(hf, prompt, 20)
    assert engine.stats()["preemptions"] > 0


def test_prefix_of_a_running_request_serves_a_later_one(model_dirs, hf_models):
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4, kv_cache_blocks=40)
    hf = hf_models["qwen2-tied"]
    shared = random_prompts([32], seed=8)[0]
    first = engine.submit(shared + [5, 6, 7], SamplingParams(max_tokens=30, ignore_eos=True))
    engine.step()
    engine.step()  # the first request is decoding and holds the shared blocks
    pressure = [engine.submit(p, SamplingParams(max_tokens=8, ignore_eos=True)) for p in random_prompts([30, 30], seed=9)]
    late = engine.submit(shared + [9, 9], SamplingParams(max_tokens=10, ignore_eos=True))
    done = {}
    while len(done) < 4:
        done.update({o.request_id: o for o in engine.step()})
    assert done[late].cached_tokens == 32
    assert done[late].token_ids == hf_greedy(hf, shared + [9, 9], 10)
    assert done[first].token_ids == hf_greedy(hf, shared + [5, 6, 7], 30)
    assert all(done[r].finish_reason == "length" for r in pressure)


@pytest.mark.parametrize("split_keys", [False, True])
def test_triton_attention_backend_matches_torch(model_dirs, monkeypatch, split_keys):
    """The engine on the Triton kernels (on the GPU where there is one, else the CPU interpreter): same
    greedy tokens, with chunked prefill, prefix hits and two cascade groups in play; also with every
    launch's keys split three ways (split-KV, which the engine chooses only on a GPU)."""
    if split_keys:
        from kojudge.kernels import attention as kernel_attention

        monkeypatch.setattr(kernel_attention, "choose_num_splits", lambda *args: 3)
    prompts = two_template_prompts(matches=3)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        engine = kojudge.Engine(model_dirs["qwen2-untied"], block_size=4, max_num_batched_tokens=32,
                                attention_backend=backend, device=str(KERNEL_DEVICE))
        outs[backend] = [o.token_ids for o in engine.generate(prompts, params)]
        assert engine.stats()["cached_prompt_tokens"] > 0
    assert outs["triton"] == outs["torch"]


@pytest.fixture
def stand_in_flashinfer(monkeypatch):
    """tests/fake_flashinfer.py importable as `flashinfer` (the real package needs a GPU)."""
    import fake_flashinfer

    monkeypatch.setitem(sys.modules, "flashinfer", fake_flashinfer)
    fake_flashinfer.plans.clear()
    fake_flashinfer.calls.clear()
    return fake_flashinfer


def test_flashinfer_attention_backend_matches_torch(model_dirs, stand_in_flashinfer):
    """The runner making flashinfer's calls (answered by the CPU stand-in with flashinfer's documented
    semantics: CSR page tables, HND strided pages, bottom-right causal masks, base-2 LSE): the same greedy
    tokens and chosen-token log-probs as the torch path, with chunked prefill, prefix hits and cascade
    groups of decodes and prefill spans in play."""
    prompts = two_template_prompts()
    params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=True)
    outs = {}
    for backend in ("torch", "flashinfer"):
        engine = kojudge.Engine(model_dirs["qwen3-untied"], block_size=4, max_num_batched_tokens=32)
        if backend == "flashinfer":  # the Engine itself takes flashinfer only on CUDA in half precision
            engine.runner = ModelRunner(engine.model, engine.cache, engine.device, backend="flashinfer")
        outs[backend] = engine.generate(prompts, params)
        assert engine.stats()["cached_prompt_tokens"] > 0
    for got, want in zip(outs["flashinfer"], outs["torch"]):
        assert got.token_ids == want.token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5, rtol=1e-5)
    plans = stand_in_flashinfer.plans
    assert any(not p["causal"] and len(p["qo_indptr"]) > 2 for p in plans)  # shared prefixes, several at once
    assert any(p["causal"] and p["qo_indptr"][1] == 1 and p["qo_indptr"][-1] > len(p["qo_indptr"]) - 1
               for p in plans)  # decodes and prefill spans in one call
    assert any(n % 4 for p in plans for n in p["kv_lens"])  # partly filled last pages


def test_flashinfer_calls_fit_the_real_package(model_dirs, monkeypatch):
    """Every call the backend makes, as the stand-in received it, binds to the installed flashinfer's
    signature (argument positions and keyword names), so the stand-in cannot drift from the real API."""
    import inspect

    real = pytest.importorskip("flashinfer", reason="the gpu extra (flashinfer-python) is not installed")
    import fake_flashinfer

    monkeypatch.setitem(sys.modules, "flashinfer", fake_flashinfer)
    fake_flashinfer.calls.clear()
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4, max_num_batched_tokens=32)
    engine.runner = ModelRunner(engine.model, engine.cache, engine.device, backend="flashinfer")
    engine.generate(tournament_prompts(num_questions=1, matches=2), SamplingParams(max_tokens=3, ignore_eos=True))
    seen = set()
    for name, args, kwargs in fake_flashinfer.calls:
        target = real
        for part in name.split("."):
            target = getattr(target, part)
        inspect.signature(target).bind(*args, **kwargs)
        seen.add(name)
    assert seen == {"BatchPrefillWithPagedKVCacheWrapper.__init__", "BatchPrefillWithPagedKVCacheWrapper.plan",
                    "BatchPrefillWithPagedKVCacheWrapper.run", "merge_state"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flashinfer's kernels need a CUDA device")
def test_flashinfer_backend_on_cuda_agrees_with_triton(tmp_path):
    """The real package (gpu extra) on a GPU, bfloat16: first greedy tokens and their log-probs agree
    with the Triton backend's up to bfloat16 rounding."""
    pytest.importorskip("flashinfer", reason="the gpu extra (flashinfer-python) is not installed")
    from kojudge.model.tiny import make_tiny_model

    # head_dim 64: flashinfer's kernels are built for 64, 128 and 256, not the 16 of the shared tiny models
    path = make_tiny_model(tmp_path / "hd64", "qwen2", hidden_size=256, num_heads=4, num_kv_heads=2,
                           intermediate_size=256)
    prompts = tournament_prompts(num_questions=2, matches=4, template=40, question=9, seed=5)
    params = SamplingParams(max_tokens=4, ignore_eos=True, logprobs=True)
    outs = {}
    for backend in ("triton", "flashinfer"):
        engine = kojudge.Engine(path, dtype="bfloat16", device="cuda", block_size=16,
                                max_num_batched_tokens=64, attention_backend=backend)
        outs[backend] = engine.generate(prompts, params)
    pairs = [(a, b) for a, b in zip(outs["flashinfer"], outs["triton"]) if a.token_ids[0] == b.token_ids[0]]
    assert len(pairs) >= 0.75 * len(prompts)  # near-ties may flip under bfloat16
    assert max(abs(a.logprobs[0] - b.logprobs[0]) for a, b in pairs) < 5e-2


def test_flashinfer_backend_needs_cuda_and_half_precision(model_dirs, stand_in_flashinfer):
    with pytest.raises(ValueError, match="CUDA device in float16 or bfloat16"):
        kojudge.Engine(model_dirs["qwen2-tied"], attention_backend="flashinfer")


def _workspace_steps(engine):
    """Record the decode workspace use of every step the engine's runner builds."""
    steps, build = [], engine.runner.build

    def recording_build(work):
        ids, positions, batch = build(work)
        step = batch.decode_workspace
        steps.append(None if step is None else (step, step.workspace.k[0]))
        return ids, positions, batch

    engine.runner.build = recording_build
    return steps


@pytest.mark.parametrize("max_num_seqs,headroom", [(256, 64), (3, 64), (256, 1)])
def test_decode_workspace_rows_match_block_gathers(model_dirs, monkeypatch, max_num_seqs, headroom):
    """Sequences leave the workspace at staggered ends, (max_num_seqs=3) newcomers take their rows
    while others keep appending, (headroom=1) the storage is outgrown and refilled every few steps:
    the same tokens as gathering blocks every step."""
    monkeypatch.setattr(DecodeWorkspace, "HEADROOM", headroom)
    prompts = tournament_prompts(num_questions=2, matches=3, seed=13)
    params = [SamplingParams(max_tokens=12 + 3 * i, ignore_eos=True) for i in range(len(prompts))]  # staggered ends
    outs = {}
    for budget in (None, 0):
        engine = kojudge.Engine(model_dirs["qwen3-tied"], block_size=4, max_num_seqs=max_num_seqs)
        if budget is not None:
            engine.runner.workspace.budget_bytes = budget
        steps = _workspace_steps(engine)
        outs[budget] = [o.token_ids for o in engine.generate(prompts, params)]
        used = [s for s, _ in filter(None, steps)]
        if budget == 0:
            assert not used
            continue
        assert any(s.append_target is not None for s in used)
        if max_num_seqs == 3:  # a newcomer filled while others append, in a row out of decode order
            assert any(s.fill_target is not None and s.append_target is not None and s.decode_rows is not None
                       for s in used)
        storages = {id(storage) for _, storage in filter(None, steps)}
        assert len(storages) >= (4 if headroom == 1 else 1)
    assert outs[None] == outs[0]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), headroom=st.sampled_from([1, 3, 64]), block_size=st.sampled_from([2, 4]),
       group_rows=st.sampled_from([1, 2, 16]))
def test_decode_workspace_rows_fuzzed_against_block_gathers(data, headroom, block_size, group_rows):
    """Random decode steps, at the attention level: sequences leave, newcomers join already deep in
    their context (with or without the shared prefix), the decode order is shuffled, the storage is
    outgrown, (group_rows 1, 2) rows are regrouped by length and attended a group at a time. Every
    step equals the same step over gathered blocks (no workspace)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workspace, "GROUP_ROWS", group_rows)
        _fuzz_workspace_steps(data, headroom, block_size)


def _fuzz_workspace_steps(data, headroom, block_size):
    torch.manual_seed(0)
    kv_heads, heads, d, prefix_blocks = 2, 4, 8, 3
    cache = KVCache(1, 400, block_size, kv_heads, d, torch.float32, "cpu")
    cache.k.normal_()
    cache.v.normal_()
    runner = ModelRunner(None, cache, torch.device("cpu"), workspace_bytes=2**30)
    runner.workspace.HEADROOM = headroom
    gather = ModelRunner(None, cache, torch.device("cpu"), workspace_bytes=0)
    next_block, next_id, live = prefix_blocks, 0, []
    for _ in range(data.draw(st.integers(2, 8), label="steps")):
        live = [seq for seq in live if not data.draw(st.booleans(), label="leaves")]
        for _ in range(data.draw(st.integers(0 if live else 1, 3), label="joining")):
            shares = data.draw(st.booleans(), label="shares the prefix")
            computed = data.draw(st.integers(prefix_blocks * block_size if shares else 1, 30), label="context")
            seq = Sequence(next_id, None, [0] * (computed + 1), SamplingParams(), None)
            seq.num_computed, next_id = computed, next_id + 1
            seq.block_table = list(range(prefix_blocks)) if shares else []
            live.append(seq)
        for seq in live:  # blocks up to the position of this step's token
            while len(seq.block_table) * block_size < seq.num_computed + 1:
                seq.block_table.append(next_block)
                next_block += 1
        order = data.draw(st.permutations(live), label="decode order")
        work = [(seq, 1) for seq in order]
        q = torch.randn(len(work), heads, d)
        k, v = torch.randn(len(work), kv_heads, d), torch.randn(len(work), kv_heads, d)
        expected = PagedAttention(cache, gather.build(work)[2])(0, q, k, v)
        batch = runner.build(work)[2]
        assert batch.decode_workspace is not None
        torch.testing.assert_close(PagedAttention(cache, batch)(0, q, k, v), expected, atol=1e-5, rtol=1e-5)
        for seq in live:
            seq.token_ids.append(0)
            seq.num_computed += 1


def test_rows_of_like_lengths_are_grouped_moving_the_fewest(monkeypatch):
    """Decodes go to chunks of GROUP_ROWS rows by descending key count; those already in their
    chunk stay. A chunk is attended to its longest row, where that spares a tenth of the keys."""
    monkeypatch.setattr(workspace, "GROUP_ROWS", 2)
    counts = [5, 90, 10, 100]
    row_of = [0, 3, 2, 1]  # by row: 5, 100, 10, 90
    grouped = grouped_by_length(counts, row_of)
    assert sorted(grouped) == [0, 1, 2, 3]
    assert {grouped[1], grouped[3]} == {0, 1} and {grouped[0], grouped[2]} == {2, 3}
    assert grouped[3] == 1 and grouped[2] == 2  # already in their chunks
    assert row_groups(in_rows(counts, grouped)) == [(0, 2, 100, True), (2, 4, 10, True)]
    assert row_groups([100, 100, 95, 96]) == [(0, 4, 100, True)]  # under a tenth spared
    assert row_groups([7, 7, 7]) == [(0, 3, 7, False)]


def test_decode_workspace_regroups_rows_when_it_pays(monkeypatch):
    """Two long newcomers join a long and a middling decode: the middling one moves to the short
    newcomer's chunk (refilled from the pool) when many steps remain, and stays when one does."""
    monkeypatch.setattr(workspace, "GROUP_ROWS", 2)
    cache = KVCache(1, 64, 4, 2, 8, torch.float32, "cpu")

    def request(i, keys, steps_left):
        return workspace.DecodeRequest(i, 0, keys, list(range(-(-keys // 4))), steps_left)

    for steps_left, regrouped in ((100, True), (1, False)):
        ws = DecodeWorkspace(cache, budget_bytes=2**30, max_rows=8)
        ws.plan([request(0, 40, steps_left), request(1, 30, steps_left)])
        joined = [request(0, 41, steps_left), request(1, 31, steps_left),
                  request(2, 44, steps_left), request(3, 4, steps_left)]
        step, _ = ws.plan(joined)
        rows = {i: row for i, (row, _, _) in ws.rows.items()}
        assert rows[0] == 0 and step.append_target is not None
        assert (rows[1] >= 2) == regrouped
        assert len(step.groups) == (2 if regrouped else 1)


def test_decode_workspace_shrinks_headroom_to_fit_its_budget():
    """Rows up to max_rows and columns to grow into, as the budget allows; else the columns the
    budget allows (at least the keys needed); else no workspace (decodes gather their blocks)."""
    layers, kv_heads, d, bs = 2, 2, 8, 4
    cache = KVCache(layers, 64, bs, kv_heads, d, torch.float32, "cpu")
    column_bytes = 2 * layers * kv_heads * d * 4
    ws = DecodeWorkspace(cache, budget_bytes=2**30, max_rows=8)
    assert ws.reserve(num_rows=3, length=10)
    assert ws.k[0].shape == (8, kv_heads, 10 + DecodeWorkspace.HEADROOM + 2, d)
    ws = DecodeWorkspace(cache, budget_bytes=5 * 80 * column_bytes, max_rows=8)
    assert ws.reserve(num_rows=3, length=10) and ws.k[0].shape == (5, kv_heads, 76, d)
    ws = DecodeWorkspace(cache, budget_bytes=3 * 20 * column_bytes, max_rows=8)
    assert ws.reserve(num_rows=3, length=10) and ws.k[0].shape == (3, kv_heads, 20, d)
    ws = DecodeWorkspace(cache, budget_bytes=3 * 11 * column_bytes, max_rows=8)
    assert not ws.reserve(num_rows=3, length=10)  # 12 columns (3 blocks) do not fit


def test_a_fresh_kv_pool_is_zero_and_costs_no_memory_until_used():
    """The pool comes from calloc'd pages: constructing a GiB of it must not write (and so
    fault in) that GiB, which took seconds of every first Engine() with torch.zeros."""
    import resource

    from kojudge.attention.batch import KVCache

    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    before = resident_bytes()
    cache = KVCache(num_layers=8, num_blocks=8192, block_size=16, num_kv_heads=4, head_dim=64,
                    dtype=torch.bfloat16, device="cpu")
    pool = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert pool == 2**30
    assert resident_bytes() - before < pool // 16
    assert cache.k.dtype == torch.bfloat16 and cache.k.shape == (8, 4, 8192 * 16, 64)
    assert not cache.k[3, 2, -5:].any() and not cache.v[7].any()

"""The engine end to end: greedy equality with transformers under every scheduling regime."""
import resource
import subprocess
import sys

import pytest
import torch

import kojudge
from conftest import MODELS, hf_greedy, random_prompts
from kojudge import SamplingParams
from kojudge.kernels import onednn
from kojudge.model.decoder import Linear
from kojudge.model.weights import hf_state_dict

LENGTHS = [5, 17, 1, 33, 60, 3, 24]
MAX_TOKENS = [32, 40, 33, 36, 32, 48, 34]  # prompts finish at different steps


def check_against_hf(engine, hf_model, prompts, max_tokens):
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in max_tokens]
    outs = engine.generate(prompts, params)
    for prompt, m, out in zip(prompts, max_tokens, outs):
        assert out.token_ids == hf_greedy(hf_model, prompt, m)
        assert out.finish_reason == "length" and out.prompt_token_ids == prompt
    return outs


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_batch_matches_transformers(name, engines, hf_models):
    check_against_hf(engines[name], hf_models[name], random_prompts(LENGTHS, seed=11), MAX_TOKENS)


def test_requests_joining_midway_match_transformers(engines, hf_models):
    """Continuous batching: requests submitted while others decode join the running batch."""
    engine, hf = engines["qwen3-untied"], hf_models["qwen3-untied"]
    prompts = random_prompts(LENGTHS, seed=12)
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    ids, done = {}, {}
    for prompt in prompts:
        ids[engine.submit(prompt, params)] = prompt
        for _ in range(5):  # a few steps between arrivals
            done.update({o.request_id: o for o in engine.step()})
    while len(done) < len(prompts):
        done.update({o.request_id: o for o in engine.step()})
    for rid, prompt in ids.items():
        assert done[rid].token_ids == hf_greedy(hf, prompt, 32)


def test_small_chunked_prefill_matches_transformers(model_dirs, hf_models):
    engine = kojudge.Engine(model_dirs["qwen2-untied"], max_num_batched_tokens=7)
    check_against_hf(engine, hf_models["qwen2-untied"], random_prompts(LENGTHS, seed=13), MAX_TOKENS)


def test_preemption_happens_and_outputs_still_match(model_dirs, hf_models):
    # 24 blocks of 4 slots: each request fits alone (<= 96 slots), all together do not.
    engine = kojudge.Engine(model_dirs["qwen3-tied"], block_size=4, kv_cache_blocks=24, max_num_batched_tokens=64)
    check_against_hf(engine, hf_models["qwen3-tied"], random_prompts(LENGTHS, seed=14), MAX_TOKENS)
    assert engine.stats()["preemptions"] > 0


def test_prefix_cache_serves_repeated_prompts(model_dirs, hf_models):
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4)
    prompts = random_prompts([30, 41], seed=15)
    first = check_against_hf(engine, hf_models["qwen2-tied"], prompts, [32, 32])
    assert all(o.cached_tokens == 0 for o in first)
    before = engine.stats()
    second = check_against_hf(engine, hf_models["qwen2-tied"], prompts, [32, 32])
    # All full blocks but the one holding the last prompt token come from the cache.
    assert [o.cached_tokens for o in second] == [28, 40]
    after = engine.stats()
    assert after["computed_prompt_tokens"] - before["computed_prompt_tokens"] == 71 - 68
    assert after["cached_prompt_tokens"] - before["cached_prompt_tokens"] == 68


def test_seeded_sampling_is_independent_of_batch_composition(engines):
    engine = engines["qwen2-untied"]
    prompt = random_prompts([12], seed=16)[0]
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = engine.generate([prompt], params)[0].token_ids
    others = random_prompts([7, 30, 19], seed=17)
    noisy = [SamplingParams(max_tokens=24, temperature=0.8, ignore_eos=True)] * 3
    mixed = engine.generate(others[:2] + [prompt] + others[2:], noisy[:2] + [params] + noisy[2:])
    assert mixed[2].token_ids == alone
    other_seed = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=1.0, seed=99, ignore_eos=True))
    assert other_seed[0].token_ids != alone


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(engines):
    engine = engines["qwen3-tied"]
    prompt = random_prompts([10], seed=18)[0]
    greedy = engine.generate([prompt], SamplingParams(max_tokens=16, ignore_eos=True))[0].token_ids
    for params in (SamplingParams(max_tokens=16, temperature=1.5, top_k=1, ignore_eos=True),
                   SamplingParams(max_tokens=16, temperature=1.5, top_p=1e-6, ignore_eos=True)):
        assert engine.generate([prompt], params)[0].token_ids == greedy


def test_sampling_follows_the_model_distribution(engines):
    """Temperature-1 draws of the first token have the model's probabilities (chi-square-ish bound)."""
    engine = engines["qwen2-tied"]
    prompt = random_prompts([6], seed=19)[0]
    out = engine.generate([prompt] * 400, SamplingParams(max_tokens=1, temperature=1.0, logprobs=True))
    counts = torch.bincount(torch.tensor([o.token_ids[0] for o in out]), minlength=engine.config.vocab_size)
    probs = {o.token_ids[0]: torch.tensor(o.logprobs[0]).exp().item() for o in out}
    top = max(probs, key=probs.get)
    assert abs(counts[top].item() / 400 - probs[top]) < 4 * (probs[top] * (1 - probs[top]) / 400) ** 0.5 + 0.01


def test_logprobs_match_transformers_scores(engines, hf_models):
    engine, hf = engines["qwen3-untied"], hf_models["qwen3-untied"]
    prompt = random_prompts([9], seed=20)[0]
    out = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True))[0]
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                      output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    expected = [step.log_softmax(-1)[0, t].item() for step, t in zip(ref.logits, out.token_ids)]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


def test_stop_strings_cut_exactly(engines):
    engine = engines["qwen2-tied"]
    prompt = "the answer is"
    full = engine.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True))[0]
    stop = full.text[10:13]
    cut = full.text.find(stop)
    out = engine.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True, stop=[stop, "never-there"]))[0]
    assert out.finish_reason == "stop" and out.text == full.text[:cut]
    kept = engine.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True, stop=stop,
                                                    include_stop_str_in_output=True))[0]
    assert kept.text == full.text[: cut + len(stop)]
    assert full.token_ids[: len(kept.token_ids)] == kept.token_ids


def test_stop_token_ids_and_eos_finish_with_stop(engines):
    engine = engines["qwen3-tied"]
    prompt = random_prompts([8], seed=21)[0]
    full = engine.generate([prompt], SamplingParams(max_tokens=30, ignore_eos=True))[0].token_ids
    stop_id = full[6]
    out = engine.generate([prompt], SamplingParams(max_tokens=30, ignore_eos=True, stop_token_ids=[stop_id]))[0]
    assert out.finish_reason == "stop" and out.token_ids == full[: full.index(stop_id) + 1]


def test_chat_uses_the_chat_template(engines):
    engine = engines["qwen2-untied"]
    messages = [{"role": "user", "content": "compare the two responses"}]
    text = engine.tokenizer.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    assert engine.chat([messages], params)[0].token_ids == engine.generate([text], params)[0].token_ids


@pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN: the engine packs nothing")
def test_packed_linear_layers_match_dense_ones_and_follow_update_weights(model_dirs):
    path = model_dirs["qwen2-tied"]  # biases in qkv, the LM head tied to the embedding
    packed, dense = kojudge.Engine(path), kojudge.Engine(path, pack_weights=False)
    assert packed.pack_weights and not dense.pack_weights
    prompts = random_prompts([7, 19], seed=23)
    params = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True)

    def same_outputs():
        outs = [(o.token_ids, o.logprobs) for o in packed.generate(prompts, params)]
        for (tokens, logprobs), ref in zip(outs, dense.generate(prompts, params)):
            assert tokens == ref.token_ids and logprobs == pytest.approx(ref.logprobs, abs=1e-4)
        return outs

    before = same_outputs()
    g = torch.Generator().manual_seed(0)
    new = {n: p + 0.05 * torch.randn(p.shape, generator=g) for n, p in dense.model.named_parameters()}
    packed.update_weights(new)
    dense.update_weights(new)
    assert same_outputs() != before  # the packed copies follow the new weights
    # Each linear weight is held once, packed; the embedding (also the tied LM head) stays.
    released = {n for n, p in packed.model.named_parameters() if p.numel() == 0}
    assert released == {f"{n}.weight" for n, m in packed.model.named_modules()
                        if isinstance(m, Linear)}
    assert "embed_tokens.weight" not in released
    with pytest.raises(ValueError, match="packed only"):
        hf_state_dict(packed.model)
    with pytest.raises(ValueError, match="down_proj.weight: shape"):
        packed.update_weights({**new, "layers.0.mlp.down_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="pack_weights.*float16"):
        kojudge.Engine(path, dtype="float16", pack_weights=True)


def test_bfloat16_generates(model_dirs):
    engine = kojudge.Engine(model_dirs["qwen2-untied"], dtype="bfloat16")
    outs = engine.generate(random_prompts([5, 20], seed=22), SamplingParams(max_tokens=10, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [10, 10]


# ---- bad input -------------------------------------------------------------------------------------

def test_empty_prompt_list_is_refused(engines):
    with pytest.raises(ValueError, match="empty prompt list"):
        engines["qwen2-tied"].generate([])


def test_over_long_prompt_is_refused_before_anything_runs(engines):
    engine = engines["qwen2-tied"]
    before = engine.stats()
    with pytest.raises(kojudge.PromptTooLong, match="prompt 1: 2048 tokens leave no room to generate within the max "
                                                    "model length 2048"):
        engine.generate([[5] * 10, [5] * 2048], SamplingParams(max_tokens=16))
    assert engine.stats() == before


def test_generation_stops_at_the_max_model_length(engines):
    """A prompt that fits runs even when max_tokens would overrun the model length (as in vLLM)."""
    out = engines["qwen2-tied"].generate([[5] * 2040], SamplingParams(max_tokens=16, ignore_eos=True))[0]
    assert len(out.token_ids) == 8 and out.finish_reason == "length"


def test_empty_prompt_and_bad_token_ids_are_refused(engines):
    engine = engines["qwen2-tied"]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[10**6]])


def test_unknown_model_dir_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        kojudge.Engine(tmp_path / "missing")


def test_bad_sampling_params_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_submitted_request_finishing_inside_generate_is_handed_over(engines):
    engine = engines["qwen2-untied"]
    rid = engine.submit([5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
    outs = engine.generate([[8, 9]], SamplingParams(max_tokens=20, ignore_eos=True))
    assert len(outs[0].token_ids) == 20
    handed = engine.step()
    assert [o.request_id for o in handed] == [rid] and len(handed[0].token_ids) == 3


REUSE_PROBE = """
import resource, sys, torch
from kojudge.utils import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def faults_of_a_fresh_64_mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum([faults_of_a_fresh_64_mib_tensor() for _ in range(10)][4:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings: Linux only")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    """Tensors of 64 MiB made and freed in a loop settle on the same pages: by default glibc
    unmaps a freed block that large, and all 16k pages of the next one fault in again."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", REUSE_PROBE, mode], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    pages = 64 * 2**20 // resource.getpagesize()
    assert faults("default") > 5 * pages  # 6 tensors: the probe sees the faults to be removed
    assert faults("reuse") <= 2 * pages

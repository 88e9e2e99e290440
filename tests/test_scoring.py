"""Engine.score: exact teacher-forced log-probs of given continuations, through the prefix cache."""
import pytest
import torch

import kojudge
from conftest import hf_greedy, random_prompts


def hf_continuation_logprobs(hf_model, prompt, continuation):
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logp = hf_model(ids).logits[0].float().log_softmax(-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1)
    return logp[rows, torch.tensor(continuation)].tolist()


@pytest.mark.parametrize("name", ["qwen2-untied", "qwen3-tied"])
def test_score_equals_transformers_log_softmax(model_dirs, hf_models, name):
    engine = kojudge.Engine(model_dirs[name], block_size=4)
    prompts = random_prompts([13, 30, 7], seed=5)
    continuations = random_prompts([5, 1, 17], seed=6)
    got = engine.score(prompts, continuations)
    for prompt, continuation, logprobs in zip(prompts, continuations, got):
        expected = hf_continuation_logprobs(hf_models[name], prompt, continuation)
        assert len(logprobs) == len(continuation)
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(expected), atol=1e-4, rtol=0)


def test_score_is_the_same_alone_batched_and_in_any_order(model_dirs):
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4)
    prompt = random_prompts([37], seed=8)[0]
    continuations = random_prompts([3, 9, 1, 6], seed=9)
    alone = [engine.score([prompt], [c])[0] for c in continuations]
    batched = engine.score([prompt] * 4, continuations)
    order = [2, 0, 3, 1]
    shuffled = engine.score([prompt] * 4, [continuations[i] for i in order])
    # While other requests decode and prefill in the same steps.
    busy = [engine.submit(p, kojudge.SamplingParams(max_tokens=6, ignore_eos=True))
            for p in random_prompts([20, 45], seed=10)]
    mixed = engine.score([prompt] * 4, continuations)
    finished = {out.request_id for out in engine.step()}
    while engine.scheduler.has_work():
        finished |= {out.request_id for out in engine.step()}
    assert set(busy) <= finished
    for i in range(4):
        for other in (batched[i], shuffled[order.index(i)], mixed[i]):
            torch.testing.assert_close(torch.tensor(other), torch.tensor(alone[i]), atol=1e-5,
                                       rtol=0)


@pytest.mark.parametrize("prompt_len", [40, 43])
def test_score_computes_a_shared_prompt_once(model_dirs, prompt_len):
    """Once, but for the block that holds the prompt's last token: each continuation computes
    that block again, since the last token's logits predict its first token."""
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4)
    prompt = random_prompts([prompt_len], seed=11)[0]
    continuations = random_prompts([3, 5, 2], seed=12)
    engine.score([prompt] * 3, continuations)
    stats = engine.stats()
    last_block = (prompt_len - 1) % 4 + 1
    expected = prompt_len + sum(map(len, continuations)) + 2 * last_block
    assert stats["computed_prompt_tokens"] == expected
    assert stats["cached_prompt_tokens"] == 2 * (prompt_len - last_block)


def test_score_of_a_cached_continuation_recomputes_what_it_scores(model_dirs, hf_models):
    engine = kojudge.Engine(model_dirs["qwen2-tied"], block_size=4)
    prompt, continuation = random_prompts([16, 8], seed=13)
    first = engine.score([prompt], [continuation])
    again = engine.score([prompt], [continuation])  # every block is in the cache now
    assert first == again
    expected = hf_continuation_logprobs(hf_models["qwen2-tied"], prompt, continuation)
    torch.testing.assert_close(torch.tensor(again[0]), torch.tensor(expected), atol=1e-4, rtol=0)


def test_score_refuses_what_it_cannot_score(model_dirs):
    engine = kojudge.Engine(model_dirs["qwen2-tied"], max_model_len=64)
    with pytest.raises(ValueError, match="must not be empty"):
        engine.score([[5, 6]], [[]])
    with pytest.raises(kojudge.PromptTooLong, match="score 0"):
        engine.score([[5] * 60], [[6] * 5])
    with pytest.raises(ValueError, match="2 prompts for 1 continuations"):
        engine.score([[5], [6]], [[7]])


def test_a_lone_prompt_longer_than_the_token_budget_matches_transformers(model_dirs, hf_models):
    """Its prefill runs over several steps with nothing sampled in the first ones; each of those
    steps still writes its keys and values."""
    prompt = random_prompts([70], seed=14)[0]
    engine = kojudge.Engine(model_dirs["qwen2-untied"], max_num_batched_tokens=16)
    out = engine.generate([prompt], kojudge.SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert out.token_ids == hf_greedy(hf_models["qwen2-untied"], prompt, 6)

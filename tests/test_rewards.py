"""Rewards, advantages and the shared pointwise parser, pinned on hand-computed cases."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kojudge
from kojudge.judging.parsers import parse_pairwise_choice, parse_pointwise
from kojudge.train.grpo import group_advantages
from kojudge.train.rewards import format_reward, par_rewards

FRAGMENTS = [f"<{c}{t}>" for t in ("think", "generate_rubrics", "eval", "answer") for c in ("", "/")] + [
    "<answer>A</answer>", "<answer> b </answer>", "7", "10.0", "-3", "nan", "1e9", ".5", "\n"]
GOOD = "<think>sum ok</think>\n<generate_rubrics>1. steps</generate_rubrics><eval>fine</eval><answer>{}</answer>"


def test_par_graded_hand_computed():
    chosen, rejected = par_rewards([8, 6, 3], [5, 7, 2])
    # mean(rejected) = 14/3: 8 is 3.33 above (1.4), 6 is 1.33 above (1.2), 3 is below (0).
    assert chosen == [1.4, 1.2, 0.0]
    # mean(chosen) = 17/3: 5 is 0.67 below (1.2), 7 above (0), 2 is 3.67 below (1.4).
    assert rejected == [1.2, 0.0, 1.4]


def test_par_constant_and_boundaries():
    assert par_rewards([8, 6, 3], [5, 7, 2], f="constant") == ([1.3, 1.3, 0.0], [1.3, 0.0, 1.3])
    assert par_rewards([6], [4]) == ([1.2], [1.2])  # a gap of exactly 2 is the lower grade
    assert par_rewards([6.01], [4]) == ([1.4], [1.4])
    with pytest.raises(ValueError, match="f must be one of"):
        par_rewards([1], [2], f="linear")


def test_par_ties_and_all_equal():
    assert par_rewards([5, 5], [5, 5]) == ([0.0, 0.0], [0.0, 0.0])
    assert par_rewards([5, 7], [6, 6]) == ([0.0, 1.2], [0.0, 0.0])  # mean(chosen)=6: rejected 6 is not below


def test_par_invalid_scores():
    assert par_rewards([None, 9], [3, None]) == ([0.0, 1.4], [1.4, 0.0])
    assert par_rewards([7, 8], [None, None]) == ([0.0, 0.0], [0.0, 0.0])


def test_format_reward_cases():
    assert format_reward(GOOD.format("7.5")) == 0.0 and parse_pointwise(GOOD.format(" 7.5 ")).score == 7.5
    assert format_reward(GOOD.format("10")) == 0.0
    assert format_reward(GOOD.format("eleven")) == -1.0
    assert format_reward(GOOD.format("10.5")) == -1.0
    assert format_reward(GOOD.format("")) == -1.0
    assert format_reward(GOOD.replace("<eval>fine</eval>", "")) == -1.5  # missing tag
    assert format_reward("<answer>5</answer>" + GOOD.split("<answer>")[0]) == -1.5  # out of order
    assert format_reward(GOOD.format("5") + "<think>again</think>") == -1.5  # repeated
    assert format_reward("<generate_rubrics>r</generate_rubrics><think>t</think><eval>e</eval><answer>5</answer>") == -1.5


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=30).map("".join))
def test_parsers_never_crash(text):
    parsed = parse_pointwise(text)
    assert parsed.format_reward in (0.0, -1.0, -1.5)
    assert (parsed.score is None) == (parsed.format_reward != 0.0)
    assert parse_pairwise_choice(text) in (None, "A", "B")


def test_group_advantages_hand_computed():
    adv = group_advantages([1, 2, 3, 5, 2, 2], ["a", "a", "a", "b", "c", "c"])
    expected = torch.tensor([-1 / (1 + 1e-6), 0, 1 / (1 + 1e-6), 0, 0, 0])
    torch.testing.assert_close(adv, expected)
    # unbiased std: [0, 4] has std 2.828
    torch.testing.assert_close(group_advantages([0.0, 4.0], [7, 7]), torch.tensor([-2 / (8**0.5 + 1e-6),
                                                                                    2 / (8**0.5 + 1e-6)]))
    with pytest.raises(ValueError, match="group ids"):
        group_advantages([1.0], [0, 1])


def test_clipped_policy_loss_cases():
    from kojudge.train.grpo import clipped_policy_loss

    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.5]))
    adv = torch.tensor([2.0, 1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, old, adv, clip=0.2)
    # ratio 1: -A; ratio 1.5, A > 0: clipped to 1.2; ratio 0.5, A > 0: unclipped 0.5; ratio 1.5, A < 0: 1.5 A
    torch.testing.assert_close(loss, torch.tensor([-2.0, -1.2, -0.5, 1.5]))
    assert clipped.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_k3_kl_and_token_mean():
    from kojudge.train.grpo import kl_k3, token_mean

    kl = kl_k3(torch.tensor([0.0, -1.0]), torch.tensor([torch.log(torch.tensor(0.5)), -1.0]))
    torch.testing.assert_close(kl, torch.tensor([0.5 + 0.6931472 - 1, 0.0]))
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-100.0])).item() <= 10.0  # clamped
    assert token_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0]), 4.0).item() == 1.0


def test_score_pairs_adds_par_and_format():
    from kojudge.train.grpo import Rollout, score_pairs

    chosen = [Rollout([], [], 8.0, 0.0), Rollout([], [], None, -1.5)]
    rejected = [Rollout([], [], 3.0, 0.0), Rollout([], [], 9.0, -0.0)]
    score_pairs(chosen, rejected, "graded")
    # mean(rejected) = 6: 8 is 2 above (1.2); mean(chosen) = 8 (valid only): 3 is 5 below (1.4), 9 is above (0)
    assert [r.reward for r in chosen + rejected] == [1.2, -1.5, 1.4, 0.0]


def test_grpo_log_probs_are_those_of_the_sampling_temperature(model_dirs, hf_models):
    """The trainer's log-probs of a rollout equal the engine's sampled-token log-probs at the
    same temperature (T=0.7), and transformers' log-softmax of logits / T."""
    from kojudge.train.grpo import Rollout, pack_rollouts
    from kojudge.train.policy import build_policy

    temperature = 0.7
    engine = kojudge.Engine(model_dirs["qwen2-untied"])
    prompt = list(range(5, 25))
    params = kojudge.SamplingParams(max_tokens=12, temperature=temperature, seed=3, logprobs=True,
                                    logprobs_mode="temperature", ignore_eos=True)
    out = engine.generate([prompt], params)[0]
    rollout = Rollout(prompt, out.token_ids, score=None, format_reward=0.0)
    packed = pack_rollouts([rollout], torch.zeros(1), torch.device("cpu"), temperature)
    with torch.no_grad():
        trainer = packed.logprobs(build_policy(model_dirs["qwen2-untied"], 1, "float32"))
    response = trainer[packed.mask.bool()]
    torch.testing.assert_close(response, torch.tensor(out.logprobs), atol=1e-4, rtol=0)
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = hf_models["qwen2-untied"](ids).logits[0, len(prompt) - 1: -1].float()
    expected = (logits / temperature).log_softmax(-1).gather(1, torch.tensor(out.token_ids)[:, None])
    torch.testing.assert_close(response, expected.squeeze(1), atol=1e-4, rtol=0)
    raw = engine.generate([prompt], kojudge.SamplingParams(**{**vars(params), "logprobs_mode": "raw"}))[0]
    assert raw.token_ids == out.token_ids and raw.logprobs != pytest.approx(out.logprobs, abs=1e-3)


def test_grpo_refuses_settings_that_cannot_learn(tmp_path):
    from kojudge.train.config import GRPOConfig
    from kojudge.train.grpo import Rollout, rollout_advantages

    with pytest.raises(ValueError, match="rollouts: 1 rollout per judge prompt"):
        GRPOConfig(model="m", data="d", output="o", rollouts=1)
    GRPOConfig(model="m", data="d", output="o", rollouts=1, normalize="pair")  # pairs of two
    with pytest.raises(ValueError, match="temperature"):
        GRPOConfig(model="m", data="d", output="o", temperature=0.0)
    lonely = [Rollout([1], [2], 5.0, 0.0, group=("s", str(i), "chosen")) for i in range(3)]
    with pytest.raises(ValueError, match="one member"):
        rollout_advantages(lonely, "prompt")
    config = tmp_path / "grpo.json"
    config.write_text('{"model": "m", "data": "d", "output": "o", "rollouts": 1}')
    from kojudge.app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "grpo", "--config", str(config)])
    assert exit_info.value.code == 2

"""The shipped demo judge: a real model directory that kojudge and transformers load alike."""
import random

import pytest
import torch

import kojudge
from kojudge.attention.varlen import CausalVarlenAttention
from kojudge.model.config import load_config
from kojudge.demo.run import SHIPPED_JUDGE
from kojudge.model.decoder import Model
from kojudge.judging.pairjudge import STOP, PairJudge, parse_verdict
from kojudge.demo.synthetic import make_problem, sample_candidates
from kojudge.model.weights import load_weights


@pytest.fixture(scope="module")
def hf_judge():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(SHIPPED_JUDGE, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def judge_prompts():
    """Judge prompts for questions the judge never trained on (the demo's held-out seed space)."""
    engine = kojudge.Engine(SHIPPED_JUDGE)
    judge = PairJudge(engine, template=SHIPPED_JUDGE / "judge_template.md")
    rng = random.Random(123_456)
    prompts = []
    while len(prompts) < 3:
        problem = make_problem(rng)
        right, wrong = (sample_candidates(problem, 1, rng, solve_rate=rate)[0] for rate in (1.0, 0.0))
        if not wrong.correct:
            prompts.append(judge.prompt_ids(problem.question, right.text, wrong.text))
    return engine, prompts


def test_shipped_judge_is_small_and_complete():
    files = {p.name for p in SHIPPED_JUDGE.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "judge_template.md", "pointwise_template.md"} <= files
    assert (SHIPPED_JUDGE / "model.safetensors").stat().st_size < 20 * 2**20


def test_shipped_judge_logits_match_transformers(hf_judge, judge_prompts):
    _, prompts = judge_prompts
    model = Model(load_config(SHIPPED_JUDGE))
    load_weights(model, SHIPPED_JUDGE)
    cu = [0]
    for p in prompts:
        cu.append(cu[-1] + len(p))
    with torch.no_grad():
        hidden = model.eval()(torch.tensor(sum(prompts, [])), torch.cat([torch.arange(len(p)) for p in prompts]),
                              CausalVarlenAttention(cu))
        ours = model.logits(hidden)
        theirs = torch.cat([hf_judge(torch.tensor([p])).logits[0] for p in prompts])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_shipped_judge_greedy_judgments_match_transformers_and_parse(hf_judge, judge_prompts):
    engine, prompts = judge_prompts
    params = kojudge.SamplingParams(max_tokens=200, stop=[STOP], include_stop_str_in_output=True)
    outs = engine.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        reference = hf_judge.generate(torch.tensor([prompt]), max_new_tokens=len(out.token_ids), do_sample=False,
                                      pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == reference[:len(out.token_ids)]
        assert None not in parse_verdict(out.text)  # a trained judge, not a random one


def test_kojudge_demo_command_uses_the_shipped_judge(capsys):
    from kojudge.app.cli import main

    main(["demo", "--questions", "3", "--n", "4", "--pointwise-samples", "1"])
    printed = capsys.readouterr().out
    assert "best-of-4 accuracy on 3 held-out questions" in printed and "smoke" not in printed
    assert "pointwise mean vote" in printed and "judge calls/s" in printed


def test_verdict_confidence_agrees_with_the_verdicts_it_scores():
    """On the shipped judge, each judged side's p(correct) is in [0, 1] and on the side of 0.5
    that its parsed verdict is."""
    from kojudge.demo.run import held_out_set

    engine = kojudge.Engine(SHIPPED_JUDGE)
    judge = PairJudge(engine, params=kojudge.SamplingParams(max_tokens=400, stop=[STOP],
                                                            include_stop_str_in_output=True))
    problems, candidates = held_out_set(4, 6, seed=7)
    results = judge.best_of_n_many([(p.question, [c.text for c in cs])
                                    for p, cs in zip(problems, candidates)])
    sides = [(verdict, p) for r in results for j in r.judgments
             for verdict, p in zip(j["verdict"], j["confidence"])]
    assert len(sides) >= 8
    for verdict, p in sides:
        assert 0.0 <= p <= 1.0
        if verdict is not None:
            assert (p > 0.5) == verdict

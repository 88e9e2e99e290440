"""The synthetic addition task: exact arithmetic, slips that change the answer, clustered wrong answers."""
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from kojudge.judging.answers import extract_final_answer
from kojudge.demo.synthetic import Problem, Slip, make_problem, sample_candidates, worked_solution


@settings(max_examples=200, deadline=None)
@given(st.integers(1000, 9999), st.integers(1000, 9999))
def test_worked_solution_is_exact(a, b):
    candidate = worked_solution(Problem(a, b, 4))
    assert candidate.correct and candidate.answer == a + b
    assert extract_final_answer(candidate.text) == str(a + b)


def test_slips_change_the_answer_the_way_they_say():
    p = Problem(1958, 2367, 4)  # carries out of the units, tens and hundreds columns
    assert worked_solution(p, Slip("dropped_carry", 0)).answer == 4325 - 10
    assert worked_solution(p, Slip("misread_digit", 3, 3)).answer == 4325 + 1000
    assert worked_solution(p, Slip("column_off_by_one", 1, 1)).answer == 4325 + 10


def test_wrong_answers_cluster_and_majority_vote_can_fail():
    rng = random.Random(0)
    repeated_wrong, majority_wrong_with_a_right_one, problems = 0, 0, 300
    for _ in range(problems):
        problem = make_problem(rng)
        candidates = sample_candidates(problem, 8, rng)
        wrong = Counter(c.answer for c in candidates if not c.correct)
        assert len(wrong) <= 3  # a few systematic slips per problem
        assert all(c.correct == (c.answer == problem.answer) for c in candidates)
        repeated_wrong += any(count > 1 for count in wrong.values())
        top, _ = Counter(c.answer for c in candidates).most_common(1)[0]
        majority_wrong_with_a_right_one += top != problem.answer and any(c.correct for c in candidates)
    assert repeated_wrong > problems // 3
    assert majority_wrong_with_a_right_one > problems // 20  # room for a verifier to beat majority vote


def test_candidates_are_deterministic_for_a_seed():
    def draw(seed):
        rng = random.Random(seed)
        return [sample_candidates(make_problem(rng), 6, rng) for _ in range(5)]
    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_judgments_recompute_in_their_own_form_and_parse_to_the_truth():
    from kojudge.judging.pairjudge import parse_verdict
    from kojudge.demo.synthetic import judgment, reference_check

    rng = random.Random(5)
    for _ in range(50):
        problem = make_problem(rng)
        a, b = sample_candidates(problem, 2, rng, solve_rate=0.5)
        text = judgment(problem, a, b)
        assert parse_verdict(text) == (a.correct, b.correct)
        assert "col" not in reference_check(problem) and "+" not in reference_check(problem)  # never the candidates' form
        assert reference_check(problem).endswith(str(problem.answer))


def test_char_tokenizer_is_one_token_per_character_in_kojudge_and_transformers(tmp_path):
    from transformers import AutoTokenizer

    import kojudge
    from kojudge.model.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "m", "qwen2", char_tokenizer=True)
    ours, hf = kojudge.Engine(path).tokenizer, AutoTokenizer.from_pretrained(path)
    text = "col 2: 7+6+0=13, carry 1\nanswer \\boxed{6434} <resp_a_judge>Correct</resp_a_judge>"
    ids = ours.encode(text)
    assert len(ids) == len(text) and ids == hf.encode(text) and ours.decode(ids) == text


def test_demo_judge_data_pairs_different_answers_with_true_verdicts():
    from kojudge.judging.pairjudge import parse_verdict
    from kojudge.train.recipes.demo_judge import judge_conversations

    conversations = judge_conversations(40, seed=1)
    truths = []
    for system, user, assistant in conversations:
        assert system["content"] == "You are a helpful assistant." and "{response_a}" not in user["content"]
        verdict = parse_verdict(assistant["content"])
        assert None not in verdict
        truths.extend(verdict)
    assert 0.2 < sum(truths) / len(truths) < 0.8  # both labels are well represented
    with_work = sum("col 1:" in user["content"] for _, user, _ in conversations)
    assert 0.2 < with_work / len(conversations) < 0.8  # answer-only prompts make the judge add, not copy


def test_pointwise_judgments_score_right_answers_ten_and_wrong_ones_low():
    from kojudge.judging.parsers import parse_pointwise
    from kojudge.demo.synthetic import pointwise_judgment, pointwise_score
    from kojudge.train.recipes.demo_judge import pointwise_conversations

    rng = random.Random(2)
    for _ in range(50):
        problem = make_problem(rng)
        for candidate in sample_candidates(problem, 4, rng, solve_rate=0.5):
            parsed = parse_pointwise(pointwise_judgment(problem, candidate))
            assert parsed.format_reward == 0 and parsed.score == pointwise_score(candidate, problem)
            assert (parsed.score == 10) == candidate.correct and (candidate.correct or parsed.score <= 3)
    scores = [parse_pointwise(c[-1]["content"]).score for c in pointwise_conversations(60, seed=3)]
    assert 0.3 < sum(s == 10 for s in scores) / len(scores) < 0.7


def test_preference_pairs_put_a_right_candidate_against_a_wrong_one():
    from kojudge.judging.answers import extract_final_answer
    from kojudge.train.recipes.demo_judge import preference_pairs

    pairs = preference_pairs(30, seed=4)
    assert len({p["id"] for p in pairs}) == 30
    for pair in pairs:
        a, b = _operands(pair["prompt"])
        assert extract_final_answer(pair["chosen"]) == str(a + b) != extract_final_answer(pair["rejected"])


def test_check_curriculum_answers_the_bare_question_with_the_check_or_compares_digits():
    from kojudge.demo.synthetic import compare_digits, reference_check
    from kojudge.train.recipes.demo_judge import check_conversations, judge_conversations

    assert all(user["content"].startswith("What is ") for user, _ in check_conversations(40, seed=5))
    kinds = set()
    for user, assistant in check_conversations(40, seed=5, compare_fraction=0.5):
        if user["content"].startswith("What is "):
            a, b = _operands(user["content"])
            assert assistant["content"] == reference_check(Problem(a, b, 4))
            kinds.add("check")
        else:
            theirs, mine = (int(x) for x in user["content"].split())
            assert assistant["content"] == compare_digits(theirs, mine)
            kinds.add("compare")
    assert kinds == {"check", "compare"}
    assert compare_digits(10914, 10922) == "11= 00= 99= 12x 42x" and compare_digits(9922, 10922) == "_1x 90x 99= 22= 22="
    # In every judgment the check comes right after the question, as in the curriculum.
    for _, user, assistant in judge_conversations(20, seed=5):
        a, b = _operands(user["content"].splitlines()[-1])
        assert assistant["content"].startswith(reference_check(Problem(a, b, 4)) + "\n")


def test_far_off_responses_are_wrong_on_many_digits_and_judged_so():
    import re

    from kojudge.judging.answers import extract_final_answer
    from kojudge.train.recipes.demo_judge import judge_conversations

    def digits_off(line: str) -> int:
        return line.removeprefix("A ").removeprefix("B ").count("x")

    plain = judge_conversations(200, seed=6, far_off=0.0, answer_only=0.0)
    mixed = judge_conversations(200, seed=6, far_off=1.0, answer_only=0.0)
    for conversations in (plain, mixed):
        for _, user, assistant in conversations:
            question = user["content"].splitlines()[-1]
            a, b = _operands(question)
            responses = re.split(r"\n\nB:\n", user["content"].removeprefix("A:\n"))
            said = [int(extract_final_answer(r)) for r in responses]
            lines = assistant["content"].splitlines()
            assert lines[1:3] == [f"A says {said[0]:_>5}", f"B says {said[1]:_>5}"] and said[0] != said[1]
            verdicts = re.findall(r"<resp_[ab]_judge>(\w+)<", assistant["content"])
            assert verdicts == ["Correct" if s == a + b else "Incorrect" for s in said]
    off = lambda convs: sum(digits_off(line) for c in convs for line in c[2]["content"].splitlines()[3:5]) / len(convs)
    assert off(mixed) > 2 * off(plain)


def _operands(question: str) -> tuple[int, int]:
    """(a, b) of "What is a + b?"."""
    a, b = question.removeprefix("What is ").removesuffix("?").split(" + ")
    return int(a), int(b)


def test_judge_sft_data_mixes_pairwise_pointwise_and_comparison_rehearsal():
    import argparse
    import re

    from kojudge.train.recipes.demo_judge import POINTWISE_FRACTION, REHEARSAL_FRACTION, _judge_sft_data

    data = _judge_sft_data(argparse.Namespace(examples=200, seed=0, answer_only=0.5, far_off=0.3))
    kinds = Counter("pairwise" if c[0]["role"] == "system" else
                    "compare" if re.fullmatch(r"\d+ \d+", c[0]["content"]) else "pointwise" for c in data)
    assert kinds == {"pointwise": int(200 * POINTWISE_FRACTION), "compare": int(200 * REHEARSAL_FRACTION),
                     "pairwise": 200 - int(200 * POINTWISE_FRACTION) - int(200 * REHEARSAL_FRACTION)}
    assert kinds["pairwise"] != sum(1 for c in data[: kinds["pairwise"]] if c[0]["role"] == "system")  # shuffled

"""Builds the small demo judge: a Qwen2-shaped model with a byte-level tokenizer, trained with our
own trainer on the synthetic addition task (kojudge.demo.synthetic), in up to three stages.

    python -m kojudge.train.recipes.demo_judge --out engine/demo/judge --compare-steps 2400
    --sft-steps 1000 --grpo-steps 40

(the shipped judge's recipe, ~45 minutes on 2 cores).

0. Curriculum, SFT on the judgment's two skills alone, mixed half and half from a fresh model: the
   judge's own check (question in, check out) and the digit-by-digit comparison (an answer and the
   sum in, the marks out; --compare-steps). --check-steps trains the check alone before it; learned
   one after the other, the comparison did not hold once the judge SFT began.
1. SFT on PairJudge verdicts (recompute the sum in the judge's own form, compare each response's
   answer digit by digit, give the verdict tags) mixed with pointwise judgments (PaTaRM tags, a 0-10
   score in <answer>) and, as a rehearsal, the comparison alone.
2. GRPO-PAR on preference pairs (a right and a wrong candidate of one question), scored pointwise.

The output directory holds the model plus the two compact templates it was trained with
(judge_template.md for PairJudge, pointwise_template.md for PointwiseJudge), loaded by path.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from kojudge.judging.templates import fill_placeholders
from kojudge.judging.pairjudge import SYSTEM_PROMPT
from kojudge.model.tiny import make_tiny_model
from kojudge.train.config import GRPOConfig, SFTConfig
from kojudge.train.grpo import train_grpo
from kojudge.train.sft import train_sft
from kojudge.demo.synthetic import (Candidate, Problem, compare_digits, disagreeing_pairs,
                                    judgment, make_problem, pointwise_judgment, reference_check,
                                    sample_candidates, worked_solution)

# The question comes last, right before the judgment, as in the check stage's prompts (the question
# alone): the check reads the operands at the same distance in both, so what that stage learned
# carries over. With the question first, the judge had to relearn reading it hundreds of characters
# back.
TEMPLATE = "A:\n{response_a}\n\nB:\n{response_b}\n\nJudge A and B.\n{question}"
POINTWISE_TEMPLATE = ("R:\n{response}\n\nScore R from 0 to 10; rubric: the final answer is "
                      "the exact sum.\n{prompt}")
PAIRWISE_FILE, POINTWISE_FILE = "judge_template.md", "pointwise_template.md"
POINTWISE_FRACTION = 0.25  # of SFT conversations; the rest are pairwise verdicts
# Share of SFT conversations whose responses show only their final line. With the work always
# visible, the judge learns to copy column sums from the responses (and copies their slips) instead
# of adding; without it, adding is the only way to the check.
ANSWER_ONLY_FRACTION = 0.5
# Share of SFT judgments in which one response is far off (it read a whole operand wrong). Realistic
# slips change one or two digits, so a judge that restates its own sum for theirs is right on most
# digits and never learns to read; against far-off answers that shortcut fails on every digit.
FAR_OFF_FRACTION = 0.3
# Share of SFT conversations that are the comparison alone (as in the curriculum). Inside judgments,
# where most marks are "=", a judge that had learned the marks to 93% fell back to the "=" base rate
# within 300 steps.
REHEARSAL_FRACTION = 0.1


def _shown(texts: list[str], rng: random.Random, answer_only: float) -> list[str]:
    """The responses as one training prompt shows them: whole, or (all of them) only their final
    line."""
    # No draw at 0, so answer_only=0 reproduces the data of the runs made before this option
    # existed.
    if answer_only > 0 and rng.random() < answer_only:
        return [t.splitlines()[-1] for t in texts]
    return texts


def _far_off(problem: Problem, rng: random.Random) -> Candidate:
    """A wrong candidate whose work is self-consistent but starts from a misread first operand."""
    misread = make_problem(rng, problem.digits).a
    text = worked_solution(Problem(misread, problem.b, problem.digits)).text
    answer = misread + problem.b
    return Candidate(text, answer, answer == problem.answer)


def _with_far_off(pair: list[Candidate], problem: Problem, rng: random.Random,
                  far_off: float) -> list[Candidate]:
    if far_off > 0 and rng.random() < far_off:
        pair[rng.randrange(len(pair))] = _far_off(problem, rng)
    return pair


def _problems(rng: random.Random, candidates_per_problem: int):
    while True:
        problem = make_problem(rng)
        yield problem, sample_candidates(problem, candidates_per_problem, rng)


def judge_conversations(count: int, seed: int, candidates_per_problem: int = 8,
                        answer_only: float = ANSWER_ONLY_FRACTION,
                        far_off: float = FAR_OFF_FRACTION) -> list[list[dict[str, str]]]:
    """Judged pairs as the knockout asks for them: two candidates with different final answers, in
    random order (so both slots see right and wrong answers)."""
    rng = random.Random(seed)
    conversations = []
    for problem, candidates in _problems(rng, candidates_per_problem):
        if len(conversations) == count:
            return conversations
        pairs = disagreeing_pairs(candidates)
        if not pairs:
            continue
        a, b = _with_far_off(list(rng.choice(pairs)), problem, rng, far_off)
        if a.answer == b.answer:
            continue
        response_a, response_b = _shown([a.text, b.text], rng, answer_only)
        user = fill_placeholders(TEMPLATE, {"question": problem.question, "response_a": response_a,
                                            "response_b": response_b})
        conversations.append([{"role": "system", "content": SYSTEM_PROMPT},
                              {"role": "user", "content": user},
                              {"role": "assistant", "content": judgment(problem, a, b)}])


def check_conversations(count: int, seed: int,
                        compare_fraction: float = 0.0) -> list[list[dict[str, str]]]:
    """Curriculum: the judgment's two skills apart. The question alone, answered by the judge's own
    check: with nothing else in view, adding is the only way to it, and a fresh model learns the
    column digit exactly in a few hundred steps (inside judge prompts it copied digits from the
    answers in view and plateaued near 84%). A `compare_fraction` of the conversations is the
    digit-by-digit comparison of an answer with the sum. Mixed from a fresh model, both are exact
    after ~1,200 steps; learned one after the other, the second stalls (a check-trained model got
    the marks to 93-97%, and they fell back to the "=" base rate once the judge SFT began)."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        problem = make_problem(rng)
        # No draw at 0, so the check-alone data is the same as before the comparison existed.
        if compare_fraction == 0 or rng.random() >= compare_fraction:
            conversations.append([{"role": "user", "content": problem.question},
                                  {"role": "assistant", "content": reference_check(problem)}])
        else:
            # Half far-off answers: realistic ones differ in a digit or two, so "x" would be rare.
            if rng.random() < 0.5:
                answer = _far_off(problem, rng).answer
            else:
                answer = rng.choice(sample_candidates(problem, 8, rng)).answer
            conversations.append([{"role": "user", "content": f"{answer} {problem.answer}"},
                                  {"role": "assistant",
                                   "content": compare_digits(answer, problem.answer)}])
    return conversations


def pointwise_conversations(count: int, seed: int, candidates_per_problem: int = 8,
                            answer_only: float = ANSWER_ONLY_FRACTION,
                            far_off: float = FAR_OFF_FRACTION) -> list[list[dict[str, str]]]:
    """One candidate judged on its own, right and wrong ones equally often (as PointwiseJudge
    asks)."""
    rng = random.Random(seed)
    conversations = []
    for problem, candidates in _problems(rng, candidates_per_problem):
        if len(conversations) == count:
            return conversations
        by_truth = [[c for c in candidates if c.correct == truth] for truth in (True, False)]
        pool = by_truth[rng.random() < 0.5] or by_truth[0] or by_truth[1]
        candidate_is_right = pool[0].correct
        if candidate_is_right or rng.random() >= far_off:
            candidate = rng.choice(pool)
        else:
            candidate = _far_off(problem, rng)
        user = fill_placeholders(POINTWISE_TEMPLATE,
                                 {"prompt": problem.question,
                                  "response": _shown([candidate.text], rng, answer_only)[0]})
        conversations.append([{"role": "user", "content": user},
                              {"role": "assistant",
                               "content": pointwise_judgment(problem, candidate)}])


def preference_pairs(count: int, seed: int,
                     candidates_per_problem: int = 8) -> list[dict[str, str]]:
    """GRPO-PAR data: per question, a right candidate (chosen) and a wrong one (rejected)."""
    rng = random.Random(seed)
    pairs = []
    for problem, candidates in _problems(rng, candidates_per_problem):
        if len(pairs) == count:
            return pairs
        right = [c for c in candidates if c.correct]
        wrong = [c for c in candidates if not c.correct]
        if right and wrong:
            pairs.append({"id": str(len(pairs)), "prompt": problem.question,
                          "chosen": rng.choice(right).text, "rejected": rng.choice(wrong).text,
                          "source": "synthetic-addition", "domain": "math"})


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_templates(directory: str | Path) -> None:
    """Byte for byte what the judge trained on: a tiny judge is thrown off even by a trailing
    newline."""
    directory = Path(directory)
    (directory / PAIRWISE_FILE).write_text(TEMPLATE)
    (directory / POINTWISE_FILE).write_text(POINTWISE_TEMPLATE)


def _judge_sft_data(args: argparse.Namespace) -> list[list[dict[str, str]]]:
    pointwise = int(args.examples * POINTWISE_FRACTION)
    rehearsal = int(args.examples * REHEARSAL_FRACTION)
    shown = {"answer_only": args.answer_only, "far_off": args.far_off}
    conversations = (
        judge_conversations(args.examples - pointwise - rehearsal, args.seed, **shown)
        + pointwise_conversations(pointwise, args.seed + 1, **shown)
        + check_conversations(rehearsal, args.seed + 5, compare_fraction=1.0))
    random.Random(args.seed).shuffle(conversations)
    return conversations


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the trained judge directory goes")
    parser.add_argument("--work",
                        help="scratch directory: data, checkpoints, metrics (default: OUT.work)")
    parser.add_argument("--examples", type=int, default=60_000, help="SFT conversations")
    parser.add_argument("--check-steps", type=int, default=0,
                        help="curriculum: first train this many steps on the check alone")
    parser.add_argument(
        "--compare-steps", type=int, default=0,
        help="curriculum: then this many on the check and the digit-by-digit comparison")
    parser.add_argument("--sft-steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--answer-only", type=float, default=ANSWER_ONLY_FRACTION,
                        help="share of SFT prompts whose responses show only their final line")
    parser.add_argument(
        "--far-off", type=float, default=FAR_OFF_FRACTION,
        help="share of SFT judgments with one far-off response (a whole operand misread)")
    parser.add_argument("--grpo-lr", type=float, default=5e-5)
    parser.add_argument("--init",
                        help="start from this model directory instead of a fresh random model "
                             "(to continue training a judge; --sft-steps 0 runs only GRPO)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0,
                        help="data, initialization and sampling seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    work = Path(args.work or f"{out}.work")
    work.mkdir(parents=True, exist_ok=True)
    write_templates(work)
    model = Path(args.init) if args.init else None
    if model is None and (args.check_steps > 0 or args.compare_steps > 0 or args.sft_steps > 0):
        model = make_tiny_model(work / "base", "qwen2", char_tokenizer=True,
                                hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                                num_kv_heads=2, intermediate_size=4 * args.hidden,
                                max_position_embeddings=1024, initializer_range=0.02,
                                seed=args.seed)
    stages = [
        ("check", args.check_steps, lambda: check_conversations(args.examples, args.seed + 3)),
        ("compare", args.compare_steps,
         lambda: check_conversations(args.examples, args.seed + 4, 0.5)),
        ("sft", args.sft_steps, lambda: _judge_sft_data(args)),
    ]
    for name, steps, conversations in stages:
        if steps <= 0:
            continue
        data = _write_jsonl(work / f"{name}.jsonl", [{"messages": c} for c in conversations()])
        train_sft(SFTConfig(model=str(model), data=str(data), output=str(work / name),
                            max_length=1024, batch_size=args.batch_size, max_steps=steps,
                            lr=args.lr, warmup_steps=30, weight_decay=args.weight_decay,
                            dtype=args.dtype, save_every=max(100, steps // 6), eval_every=10**9,
                            seed=args.seed))
        model = work / name / "final"
    if model is None:
        raise SystemExit("nothing to train: --sft-steps 0 needs --init")
    if args.grpo_steps > 0:
        pairs = _write_jsonl(work / "pairs.jsonl",
                             preference_pairs(args.grpo_steps * 8, args.seed + 2))
        train_grpo(GRPOConfig(model=str(model), data=str(pairs), output=str(work / "grpo"),
                              template=str(work / POINTWISE_FILE), pairs_per_batch=8, rollouts=4,
                              max_new_tokens=200, temperature=1.0, max_steps=args.grpo_steps,
                              lr=args.grpo_lr, dtype=args.dtype,
                              save_every=max(10, args.grpo_steps // 4), seed=args.seed))
        model = work / "grpo" / "final"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    write_templates(out)
    print(f"judge written to {out}")


if __name__ == "__main__":
    main()

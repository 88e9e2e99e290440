"""Free-running diagnosis of a demo judge on held-out pairs (greedy, through the engine): how often its
own check is exactly right, per-cell accuracy, verdict accuracy on right and wrong candidates, and the
(A, B) verdict pattern (a judge stuck in one order shows a single pattern).

    python bench/demo_judge_free_running.py JUDGE_DIR [--pairs 100] [--answer-only] [--show 3]
"""
from __future__ import annotations

import argparse
import random
import re
from collections import Counter

import kojudge
from kojudge.demo.run import held_out_set
from kojudge.judging.pairjudge import STOP, PairJudge, parse_verdict
from kojudge.runtime.sampling import SamplingParams
from kojudge.demo.synthetic import disagreeing_pairs, reference_check

CELL = re.compile(r"\[[^\]]*\]")


def held_out_pairs(count: int):
    """One pair with different final answers per held-out question (a seed the demo table does not use)."""
    problems, candidates = held_out_set(count, 8, seed=7)
    rng, pairs = random.Random(0), []
    for problem, cands in zip(problems, candidates):
        options = disagreeing_pairs(cands)
        if options:
            pairs.append((problem, *rng.choice(options)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("judge")
    parser.add_argument("--pairs", type=int, default=100, help="held-out questions (one pair each)")
    parser.add_argument("--answer-only", action="store_true", help="show only the responses' final lines")
    parser.add_argument("--show", type=int, default=3, help="judgments to print")
    args = parser.parse_args()
    engine = kojudge.Engine(args.judge)
    judge = PairJudge(engine, template=f"{args.judge}/judge_template.md")
    pairs = held_out_pairs(args.pairs)
    shown = (lambda text: text.splitlines()[-1]) if args.answer_only else (lambda text: text)
    prompts = [judge.prompt_ids(p.question, shown(a.text), shown(b.text)) for p, a, b in pairs]
    outputs = engine.generate(prompts, SamplingParams(max_tokens=300, stop=[STOP], include_stop_str_in_output=True))
    exact = cells_right = cells = 0
    right, total, patterns = Counter(), Counter(), Counter()
    for (problem, a, b), out in zip(pairs, outputs):
        check = next((line for line in out.text.splitlines() if line.startswith("check")), "")
        want = reference_check(problem)
        exact += check == want
        cells += len(CELL.findall(want))
        cells_right += sum(x == y for x, y in zip(CELL.findall(check), CELL.findall(want)))
        verdict = parse_verdict(out.text)
        for candidate, said in ((a, verdict.a_correct), (b, verdict.b_correct)):
            right[candidate.correct] += said == candidate.correct
            total[candidate.correct] += 1
        patterns[(verdict.a_correct, verdict.b_correct)] += 1
    print(f"{args.judge} ({'answer-only' if args.answer_only else 'work shown'}, {len(pairs)} pairs): own check "
          f"exact {exact / len(pairs):.2f}, cells {cells_right / cells:.3f}; verdicts right on right "
          f"{right[True]}/{total[True]}, on wrong {right[False]}/{total[False]}; (A, B) verdicts {dict(patterns)}")
    for (problem, a, b), out in list(zip(pairs, outputs))[: args.show]:
        print(f"{problem.question} = {problem.answer}; A {a.answer}, B {b.answer}\n    {out.text!r}")


if __name__ == "__main__":
    main()

"""Tournament-efficiency study with a simulated judge: best-of-N accuracy vs judge calls and vs judge
tokens, for knockout (PairJudge's random bye, and the bye to the largest answer team), knockout
with order swap, round-robin, Swiss, pointwise mean and
majority voting over judge scores, plain answer majority vote, random pick and the oracle.

    python bench/simulate_tournaments.py [--questions 400] [--seed 0]

The tournaments are `kojudge.knockout` / `round_robin` / `swiss` themselves (no second implementation);
only the judge is simulated. Writes bench/results/tournament_simulation.json and two PNG plots.

Model of a question: a solve rate drawn per question; each candidate is correct with that rate; wrong
candidates share a few systematic slips (a Dirichlet over 3 wrong answers), so majority vote can fail.
Model of the judge: labels a correct candidate correct with probability `p_correct`, a wrong one
incorrect with `p_wrong`; the candidate in slot A gets `position_bias` more probability of "correct";
with probability `consistency` a judgment repeats the judge's fixed view of the candidate (errors are
systematic, so voting over samples helps less than independent draws would suggest).
The defaults put pairwise verification accuracy near 70%, the PairJudge paper's figure.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402

import kojudge  # noqa: E402

# Judge-token cost model (per judge call): instruction template, question, two candidates, verdict.
TEMPLATE, QUESTION, CANDIDATE, OUTPUT = 600, 60, 200, 400


@dataclass
class JudgeModel:
    p_correct: float = 0.75  # P(label "correct" | candidate correct)
    p_wrong: float = 0.65  # P(label "incorrect" | candidate wrong)
    position_bias: float = 0.05  # added to P("correct") for the candidate shown first
    consistency: float = 0.5  # P(a judgment repeats the judge's fixed view of that candidate)

    def label(self, correct: bool, first: bool, rng: random.Random, view: bool | None = None) -> bool:
        """One judgment. `view` is the judge's fixed opinion of this candidate: real judges err
        systematically, so repeated judgments of one candidate are correlated."""
        if view is not None and rng.random() < self.consistency:
            return view
        p = self.p_correct if correct else 1 - self.p_wrong
        return rng.random() < min(1.0, max(0.0, p + (self.position_bias if first else 0.0)))

    def views(self, correct: list[bool], rng: random.Random) -> list[bool]:
        return [self.label(c, False, rng) for c in correct]

    @property
    def accuracy(self) -> float:
        return (self.p_correct + self.p_wrong) / 2


def make_question(n: int, rng: random.Random) -> tuple[list[bool], list[str]]:
    solve_rate = rng.betavariate(1.2, 1.5)
    slips = [rng.gammavariate(0.6, 1) for _ in range(3)]
    correct, answers = [], []
    for _ in range(n):
        ok = rng.random() < solve_rate
        correct.append(ok)
        answers.append("right" if ok else f"slip{rng.choices(range(3), weights=slips)[0]}")
    return correct, answers


def pairwise_compare(correct: list[bool], views: list[bool], judge: JudgeModel, rng: random.Random):
    def compare(pairs):
        return [(judge.label(correct[a], True, rng, views[a]), judge.label(correct[b], False, rng, views[b]))
                for a, b in pairs]
    return compare


def pointwise_pick(correct: list[bool], views: list[bool], answers: list[str], judge: JudgeModel,
                   rng: random.Random, votes: int, method: str) -> int:
    """Each candidate scored by `votes` judge samples (1 = labelled correct); pick the best mean or
    the answer with most 'correct' votes."""
    scores = [sum(judge.label(c, False, rng, v) for _ in range(votes)) / votes for c, v in zip(correct, views)]
    if method == "mean":
        best = max(scores)
        return rng.choice([i for i, s in enumerate(scores) if s == best])
    by_answer = Counter()
    for answer, s in zip(answers, scores):
        by_answer[answer] += s
    top = max(by_answer.values())
    answer = rng.choice(sorted(a for a, v in by_answer.items() if v == top))
    return answers.index(answer)


def run_formats(n: int, questions: int, judge: JudgeModel, seed: int, votes: int = 8) -> dict[str, dict]:
    rng = random.Random(seed)
    totals: dict[str, dict] = {}

    def add(name: str, ok: bool, calls: int, tokens_no_reuse: int, tokens_reuse: int) -> None:
        t = totals.setdefault(name, {"correct": 0, "calls": 0, "tokens": 0, "tokens_with_prefix_reuse": 0})
        t["correct"] += ok
        t["calls"] += calls
        t["tokens"] += tokens_no_reuse
        t["tokens_with_prefix_reuse"] += tokens_reuse

    for q in range(questions):
        correct, answers = make_question(n, rng)
        views = judge.views(correct, rng)
        pair_tokens = TEMPLATE + QUESTION + 2 * CANDIDATE + OUTPUT
        for name, fn, options in (("knockout", kojudge.knockout, {}),
                                  ("knockout_largest_team_bye", kojudge.knockout,
                                   {"pairing": "largest_team_bye"}),
                                  ("knockout_both_orders", kojudge.knockout, {"both_orders": True}),
                                  ("round_robin", kojudge.round_robin, {}),
                                  ("swiss", kojudge.swiss, {})):
            result = fn(n, pairwise_compare(correct, views, judge, rng), teams=answers, seed=seed * 100_000 + q, **options)
            calls = result.judge_calls
            # With prefix caching the template and question are computed once per question.
            add(name, correct[result.winner], calls, calls * pair_tokens,
                (TEMPLATE + QUESTION if calls else 0) + calls * (pair_tokens - TEMPLATE - QUESTION))
        point_tokens = TEMPLATE + QUESTION + CANDIDATE + OUTPUT
        for method in ("mean", "majority"):
            pick = pointwise_pick(correct, views, answers, judge, rng, votes, method)
            calls = n * votes
            add(f"pointwise_{method}_vote", correct[pick], calls, calls * point_tokens,
                TEMPLATE + QUESTION + n * CANDIDATE + calls * OUTPUT)
        top = max(Counter(answers).values())
        majority = rng.choice(sorted(a for a, c in Counter(answers).items() if c == top))
        add("answer_majority_vote", majority == "right", 0, 0, 0)
        add("random_pick", correct[rng.randrange(n)], 0, 0, 0)
        add("oracle", any(correct), 0, 0, 0)
    return {name: {"accuracy": t["correct"] / questions, "calls_per_question": t["calls"] / questions,
                   "tokens_per_question": t["tokens"] / questions,
                   "tokens_with_prefix_reuse_per_question": t["tokens_with_prefix_reuse"] / questions}
            for name, t in totals.items()}


def plot(by_n: dict[int, dict], sweep: dict[float, dict], path_calls: Path, path_sweep: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = [f for f in next(iter(by_n.values())) if f not in ("oracle",)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in formats:
        xs_calls = [by_n[n][name]["calls_per_question"] for n in by_n]
        xs_tokens = [by_n[n][name]["tokens_with_prefix_reuse_per_question"] for n in by_n]
        ys = [by_n[n][name]["accuracy"] for n in by_n]
        if max(xs_calls) == 0:
            for ax in axes:
                ax.plot([], [])
                ax.axhline(sum(ys) / len(ys), linestyle=":", linewidth=1, label=f"{name} (no judge, mean over N)")
            continue
        axes[0].plot(xs_calls, ys, marker="o", label=name)
        axes[1].plot(xs_tokens, ys, marker="o", label=name)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_xlabel("judge calls per question (N = 4, 8, 16, 32, 64)")
    axes[1].set_xlabel("judge prompt+output tokens per question, prefix reuse counted")
    for ax in axes:
        ax.set_ylabel("best-of-N accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Simulated judge (pairwise verification accuracy ~70%)")
    fig.tight_layout()
    fig.savefig(path_calls, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    accuracies = sorted(sweep)
    for name in ("knockout", "knockout_both_orders", "round_robin", "pointwise_mean_vote", "answer_majority_vote",
                 "random_pick"):
        ax.plot(accuracies, [sweep[a][name]["accuracy"] for a in accuracies], marker="o", label=name)
    ax.set_xlabel("judge verification accuracy")
    ax.set_ylabel("best-of-16 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Where knockout stops beating majority vote (N = 16)")
    fig.tight_layout()
    fig.savefig(path_sweep, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    judge = JudgeModel()
    by_n = {n: run_formats(n, args.questions, judge, args.seed) for n in (4, 8, 16, 32, 64)}
    sweep = {}
    for accuracy in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9):
        sweep[accuracy] = run_formats(16, args.questions, JudgeModel(accuracy + 0.05, accuracy - 0.05, 0.05), args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(by_n, sweep, RESULTS / "tournament_simulation.png", RESULTS / "tournament_judge_accuracy_sweep.png")
    write_result("tournament_simulation", {"questions": args.questions, "judge": vars(judge),
                                           "judge_accuracy": judge.accuracy, "by_n": by_n, "accuracy_sweep_n16": sweep})
    print(f"{'format':28s}" + "".join(f"  N={n:<10d}" for n in by_n))
    for name in by_n[4]:
        print(f"{name:28s}" + "".join(f"  {by_n[n][name]['accuracy']:.3f} ({by_n[n][name]['calls_per_question']:5.1f})"
                                       for n in by_n))
    crossing = [a for a in sorted(sweep) if sweep[a]["knockout"]["accuracy"] > sweep[a]["answer_majority_vote"]["accuracy"]]
    print(f"knockout beats answer majority vote at N=16 from judge accuracy {crossing[0] if crossing else 'never'}")


if __name__ == "__main__":
    main()

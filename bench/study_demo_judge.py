"""Tournament formats with a real judge: the shipped demo judge through the engine, on held-out
synthetic questions. Per format: best-of-N accuracy, judge calls, wall time, prompt tokens served
from the prefix cache; beside them the pointwise mean vote and the judge-free baselines.

    python bench/study_demo_judge.py [--questions 100] [--n 8]

Writes bench/results/demo_judge_study.json and .png (accuracy against judge calls per question); the
JSON also holds the table `kojudge demo` prints (its default 200 questions), which the README quotes.
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, write_result

FORMATS = [("knockout", False), ("knockout", True), ("swiss", False), ("round_robin", False)]


def main() -> None:
    from kojudge.demo.run import (SHIPPED_JUDGE, baseline_accuracy, cached_prompt_ratio, held_out_set, pick_accuracy,
                              pointwise_picks, run_demo, run_tournaments, verdict_accuracy)
    from kojudge.runtime.engine import Engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default=str(SHIPPED_JUDGE))
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--pointwise-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--demo-questions", type=int, default=200, help="for the README's `kojudge demo` table")
    parser.add_argument("--hard", action="store_true",
                        help="N=16 and solve rates ~ Beta(1, 5): few right candidates among many "
                             "clustered wrong ones (writes demo_judge_study_hard)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sample the judgments (with --hard: writes demo_judge_study_sampled)")
    args = parser.parse_args()
    result_name = "demo_judge_study_hard" if args.hard else "demo_judge_study"
    if args.hard and args.temperature > 0:
        result_name = "demo_judge_study_sampled"
    demo_table = None
    if not args.hard:
        demo_table = run_demo(args.judge, questions=args.demo_questions,
                              pointwise_samples=args.pointwise_samples).table()
        print(demo_table)
    problems, candidates = held_out_set(args.questions, args.n, args.seed,
                                        solve_beta=(1.0, 5.0) if args.hard else None)
    rows = {}
    for fmt, both in FORMATS:
        engine = Engine(args.judge)
        start = time.perf_counter()
        results = run_tournaments(engine, args.judge, problems, candidates, format=fmt, both_orders=both, seed=args.seed,
                                   temperature=args.temperature)
        seconds = time.perf_counter() - start
        name = fmt + (" (both orders)" if both else "")
        rows[name] = {"accuracy": pick_accuracy(candidates, [r.winner for r in results]),
                      "calls_per_question": sum(r.judge_calls for r in results) / args.questions,
                      "seconds": seconds, "calls_per_s": sum(r.judge_calls for r in results) / seconds,
                      "cached_prompt_ratio": cached_prompt_ratio(engine),
                      "verdict_accuracy": verdict_accuracy(candidates, results)}
        print(name, rows[name])
    engine = Engine(args.judge)
    start = time.perf_counter()
    picks = pointwise_picks(engine, args.judge, problems, candidates, args.pointwise_samples, 400, args.seed)
    distinct = len({(p.question, c.text) for p, cs in zip(problems, candidates) for c in cs})
    rows["pointwise mean vote"] = {
        "accuracy": pick_accuracy(candidates, picks),
        "calls_per_question": distinct * args.pointwise_samples / args.questions,
        "seconds": time.perf_counter() - start}
    print("pointwise mean vote", rows["pointwise mean vote"])
    baselines = baseline_accuracy(problems, candidates, args.seed)
    payload = {"questions": args.questions, "n": args.n, "formats": rows, "baselines": baselines,
               "pointwise_samples": args.pointwise_samples, "hard": args.hard,
               "temperature": args.temperature}
    if demo_table is not None:
        payload["demo_table"] = demo_table
    write_result(result_name, payload)
    plot(rows, baselines, args, result_name)


def plot(rows: dict, baselines: dict, args, result_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in rows.items():
        ax.scatter(row["calls_per_question"], row["accuracy"], label=name)
    for name, value in baselines.items():
        ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
        ax.text(0.01, value, name, transform=ax.get_yaxis_transform(), fontsize=7, va="bottom")
    ax.set_xlabel("judge calls per question (pointwise: rollouts)")
    ax.set_ylabel(f"best-of-{args.n} accuracy")
    ax.set_title(f"demo judge, {args.questions} held-out questions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{result_name}.png", dpi=120)


if __name__ == "__main__":
    main()

"""Tournament formats with a real judge: the shipped demo judge through the engine, on held-out
synthetic questions. Per format: best-of-N accuracy, judge calls, wall time, prompt tokens served
from the prefix cache; beside them the pointwise mean vote and the judge-free baselines.

    python bench/study_demo_judge.py [--setting demo_judge_study|_hard|_noisy] [--questions N]

Writes bench/results/SETTING.json and .png (accuracy against judge calls per question), with each
format's difference from the knockout and its paired 95% interval; the default setting's JSON also
holds the table `kojudge demo` prints (its default 200 questions), which the README quotes.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import RESULTS, write_result

FORMATS = [("knockout", False), ("knockout", True), ("swiss", False), ("round_robin", False)]
SETTINGS = {  # result name -> questions, N, per-question solve rates, judgment temperature
    "demo_judge_study": {"questions": 100, "n": 8, "solve_beta": None, "temperature": 0.0},
    # few right candidates among many clustered wrong ones: majority vote fails, the judge does not
    "demo_judge_study_hard": {"questions": 100, "n": 16, "solve_beta": (1.0, 5.0),
                              "temperature": 0.0},
    # judgments sampled just above temperature 1, where this judge's verdicts are about 60-70%
    # right: the noisy judge of the paper's regime, under which the formats separate (400
    # questions, so that their 95% intervals can)
    "demo_judge_study_noisy": {"questions": 400, "n": 8, "solve_beta": (1.0, 3.0),
                               "temperature": 1.15},
}


def paired_interval(correct: list[bool], reference: list[bool], draws: int = 10_000,
                    seed: int = 0) -> dict[str, float]:
    """Accuracy of `correct` minus that of `reference` on the same questions, with a 95% interval
    from a paired bootstrap over questions (the formats share questions, so their errors do too)."""
    diff = np.asarray(correct, dtype=float) - np.asarray(reference, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high)}


def main() -> None:
    from kojudge.demo.run import SHIPPED_JUDGE, baseline_accuracy, held_out_set, run_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default=str(SHIPPED_JUDGE))
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="demo_judge_study")
    parser.add_argument("--questions", type=int, help="default: the setting's")
    parser.add_argument("--pointwise-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--demo-questions", type=int, default=200, help="for the README's `kojudge demo` table")
    args = parser.parse_args()
    setting = dict(SETTINGS[args.setting])
    setting["questions"] = args.questions or setting["questions"]
    demo_table = None
    if args.setting == "demo_judge_study":
        demo_table = run_demo(args.judge, questions=args.demo_questions,
                              pointwise_samples=args.pointwise_samples).table()
        print(demo_table)
    problems, candidates = held_out_set(setting["questions"], setting["n"], args.seed,
                                        solve_beta=setting["solve_beta"])
    rows, correct = run_formats(args, setting, problems, candidates)
    for name, row in rows.items():
        row["vs_knockout"] = paired_interval(correct[name], correct["knockout"])
    baselines = baseline_accuracy(problems, candidates, args.seed)
    payload = {**setting, "formats": rows, "baselines": baselines,
               "pointwise_samples": args.pointwise_samples, "correct": correct}
    if demo_table is not None:
        payload["demo_table"] = demo_table
    write_result(args.setting, payload)
    plot(rows, baselines, setting["n"], setting["questions"], args.setting)


def run_formats(args, setting: dict, problems, candidates) -> tuple[dict, dict]:
    """Each tournament format and the pointwise mean vote on a fresh engine: their rows and, per
    format, which questions it got right."""
    from kojudge.demo.run import (cached_prompt_ratio, pointwise_picks, run_tournaments,
                                  verdict_accuracy)
    from kojudge.runtime.engine import Engine

    rows, correct = {}, {}
    questions = setting["questions"]
    for fmt, both in FORMATS:
        engine = Engine(args.judge)
        start = time.perf_counter()
        results = run_tournaments(engine, args.judge, problems, candidates, format=fmt,
                                  both_orders=both, seed=args.seed,
                                  temperature=setting["temperature"])
        seconds = time.perf_counter() - start
        name = fmt + (" (both orders)" if both else "")
        calls = sum(r.judge_calls for r in results)
        correct[name] = [cs[r.winner].correct for cs, r in zip(candidates, results)]
        rows[name] = {"accuracy": sum(correct[name]) / questions,
                      "calls_per_question": calls / questions,
                      "seconds": seconds, "calls_per_s": calls / seconds,
                      "cached_prompt_ratio": cached_prompt_ratio(engine),
                      "verdict_accuracy": verdict_accuracy(candidates, results)}
        print(name, rows[name], flush=True)
    engine = Engine(args.judge)
    start = time.perf_counter()
    picks = pointwise_picks(engine, args.judge, problems, candidates, args.pointwise_samples, 400,
                            args.seed, temperature=max(1.0, setting["temperature"]))
    distinct = len({(p.question, c.text) for p, cs in zip(problems, candidates) for c in cs})
    correct["pointwise mean vote"] = [cs[i].correct for cs, i in zip(candidates, picks)]
    rows["pointwise mean vote"] = {
        "accuracy": sum(correct["pointwise mean vote"]) / questions,
        "calls_per_question": distinct * args.pointwise_samples / questions,
        "seconds": time.perf_counter() - start}
    print("pointwise mean vote", rows["pointwise mean vote"], flush=True)
    return rows, correct


def plot(rows: dict, baselines: dict, n: int, questions: int, result_name: str) -> None:
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
    ax.set_ylabel(f"best-of-{n} accuracy")
    ax.set_title(f"demo judge, {questions} held-out questions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{result_name}.png", dpi=120)


if __name__ == "__main__":
    main()

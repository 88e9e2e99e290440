"""Verdict confidence of the shipped demo judge on held-out questions: calibration (expected
calibration error and a reliability plot of p(correct) against how often the side really is
correct), the order-flip rate with both orders, and best-of-N accuracy with and without the
confidence tie-break and the flip gate. Same code path as `kojudge judge`.

    python bench/demo_judge_calibration.py [--questions 100] [--n 8]

Writes bench/results/demo_judge_calibration.json and .png.
"""
from __future__ import annotations

import argparse
import time

from common import RESULTS, write_result

from kojudge import Engine, PairJudge, SamplingParams
from kojudge.demo.run import SHIPPED_JUDGE, held_out_set, pick_accuracy
from kojudge.judging.pairjudge import STOP

BINS = 10
VARIANTS = {  # name -> PairJudge options
    "knockout": {},
    "knockout, confidence tie-break": {"tie_break": "confidence"},
    "knockout, both orders": {"both_orders": True},
    "knockout, both orders, flips gated by confidence": {"both_orders": True, "gate_flips": True},
}


def reliability(sides: list[tuple[float, bool]]) -> tuple[float, list[dict]]:
    """(expected calibration error, per-bin mean confidence / accuracy / count), equal-width bins."""
    bins = [[] for _ in range(BINS)]
    for p, truth in sides:
        bins[min(int(p * BINS), BINS - 1)].append((p, truth))
    rows, ece = [], 0.0
    for k, members in enumerate(bins):
        if not members:
            continue
        confidence = sum(p for p, _ in members) / len(members)
        accuracy = sum(t for _, t in members) / len(members)
        ece += len(members) / len(sides) * abs(confidence - accuracy)
        rows.append({"bin": [k / BINS, (k + 1) / BINS], "confidence": confidence,
                     "accuracy": accuracy, "count": len(members)})
    return ece, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default=str(SHIPPED_JUDGE))
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    problems, candidates = held_out_set(args.questions, args.n, args.seed)
    items = [(p.question, [c.text for c in cs]) for p, cs in zip(problems, candidates)]
    params = SamplingParams(max_tokens=400, stop=[STOP], include_stop_str_in_output=True)
    rows, sides = {}, []
    for name, options in VARIANTS.items():
        judge = PairJudge(Engine(args.judge), params=params, **options)
        start = time.perf_counter()
        results = judge.best_of_n_many(items, seed=args.seed)
        seconds = time.perf_counter() - start
        flips = [m.flipped for r in results for m in r.result.matches if m.judged]
        rows[name] = {"accuracy": pick_accuracy(candidates, [r.winner for r in results]),
                      "calls_per_question": sum(r.judge_calls for r in results) / len(items),
                      "seconds": seconds,
                      "flip_rate": sum(flips) / len(flips) if options.get("both_orders") else None}
        print(name, rows[name], flush=True)
        if name == "knockout, both orders":
            sides = [(p, cs[j[side]].correct) for r, cs in zip(results, candidates)
                     for j in r.judgments for side, p in zip(("a", "b"), j["confidence"])]
    ece, bins = reliability(sides)
    print(f"ECE {ece:.3f} over {len(sides)} judged sides")
    write_result("demo_judge_calibration", {"questions": args.questions, "n": args.n,
                                            "variants": rows, "ece": ece, "sides": len(sides),
                                            "reliability": bins})
    plot(bins, ece)


def plot(bins: list[dict], ece: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
            label=f"demo judge (ECE {ece:.3f})")
    for b in bins:
        ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -8))
    ax.set_xlabel("p(correct) from the judge's label probabilities")
    ax.set_ylabel("share of those sides really correct")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "demo_judge_calibration.png", dpi=120)


if __name__ == "__main__":
    main()

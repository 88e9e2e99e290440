"""The tournament simulator calibrated to the PairJudge paper (arXiv 2501.13007, Table 2: MATH-500,
best-of-16/32/64), then used to answer what a researcher would ask of tournament formats.

    python bench/calibrate_simulator.py [--questions 3000] [--seed 0]

Model. A policy is its published pass@1 and two fitted numbers: how spread question difficulty is
(a question's solve rate ~ Beta(pass@1 * k, (1 - pass@1) * k), so a small k means many questions
all-right or all-wrong) and how clustered its wrong answers are (each question's wrong answers
drawn from 10 with Dirichlet(alpha) weights: a small alpha means one wrong answer dominates). The
judge, one for all three policies, labels a right candidate "correct" with probability tpr and a
wrong one "incorrect" with tnr, is lost on a share of the questions (labels at chance there: errors
that go with the question), and favours the side shown first by a small bias. The tournaments are
`kojudge.knockout` and friends themselves; only policy and judge are simulated.

Fit. Each policy's (k, alpha) to its majority-vote cells, then the judge's (tpr, tnr, lost) to the
knockout cells; the held-out check fits on N = 16 and 32 only and predicts N = 64. Writes
bench/results/simulator_calibration.json and simulator_formats.png / simulator_scaling.png.
"""
from __future__ import annotations

import argparse
import itertools
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from common import RESULTS, write_result

import kojudge

# policy -> (pass@1, {N: (majority vote, PairJudge + knockout)}), the paper's Table 2.
PAPER = {
    "Llama-3.1-8B-Instruct": (0.420, {16: (0.570, 0.610), 32: (0.588, 0.646),
                                      64: (0.588, 0.656)}),
    "Qwen-2.5-7B-Instruct": (0.736, {16: (0.774, 0.802), 32: (0.776, 0.798),
                                     64: (0.780, 0.804)}),
    "Llama-3.1-70B-Instruct": (0.592, {16: (0.702, 0.722), 32: (0.728, 0.756),
                                       64: (0.736, 0.774)}),
}
WRONG_ANSWERS = 10
NS = (16, 32, 64)
SPREADS = [0.15, 0.25, 0.4, 0.6, 0.9, 1.4, 2.0, 3.0, 5.0, 8.0]
CLUSTERINGS = [0.03, 0.06, 0.1, 0.2, 0.35, 0.6, 1.0, 2.0]


@dataclass
class Policy:
    pass1: float
    spread: float  # k: small = questions all-right or all-wrong
    clustering: float  # alpha: small = one wrong answer dominates

    def questions(self, count: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """([count, n] answers: 0 is the right answer, 1.. the wrong ones; [count] solve rates)."""
        rng = np.random.default_rng(seed)
        solve = rng.beta(self.pass1 * self.spread, (1 - self.pass1) * self.spread, size=count)
        weights = rng.dirichlet([self.clustering] * WRONG_ANSWERS, size=count)
        wrong = (rng.random((count, n, 1)) > weights.cumsum(1)[:, None, :]).sum(-1) + 1
        right = rng.random((count, n)) < solve[:, None]
        return np.where(right, 0, np.minimum(wrong, WRONG_ANSWERS)), solve


def majority_vote(answers: np.ndarray, n: int, seed: int) -> float:
    """Accuracy of the most common answer among each question's first n (ties at random)."""
    counts = np.stack([(answers[:, :n] == a).sum(1) for a in range(WRONG_ANSWERS + 1)], 1)
    noise = np.random.default_rng(seed).random(counts.shape) * 0.5
    return float(((counts + noise).argmax(1) == 0).mean())


@dataclass
class Judge:
    tpr: float  # P("correct" | right)
    tnr: float  # P("incorrect" | wrong)
    # Errors go with the question: the judge labels at chance on a question with probability
    # (1 - solve rate) ** hardness, so the harder a question is for the policy, the likelier.
    hardness: float
    bias: float = 0.03  # added to P("correct") of the side shown first

    def lost(self, solve: float | np.ndarray) -> float | np.ndarray:
        return (1 - solve) ** self.hardness

    def compare(self, right: list[bool], solve: float, rng: random.Random):
        lost = rng.random() < self.lost(solve)

        def label(ok: bool, first: bool) -> bool:
            p = 0.5 if lost else (self.tpr if ok else 1 - self.tnr)
            return rng.random() < min(1.0, p + (self.bias if first else 0.0))

        return lambda pairs: [(label(right[a], True), label(right[b], False)) for a, b in pairs]

    def accuracy(self, solve: np.ndarray) -> float:
        """Verification accuracy over questions of these solve rates."""
        lost = float(np.mean(self.lost(solve)))
        return (1 - lost) * (self.tpr + self.tnr) / 2 + lost * 0.5


def tournament(fmt, questions: tuple[np.ndarray, np.ndarray], n: int, judge: Judge, seed: int,
               **options) -> dict:
    """A format over each question's first n candidates -> accuracy and judge calls."""
    answers, solve = questions
    rng = random.Random(seed)
    correct = calls = 0
    for q, row in enumerate(answers[:, :n].tolist()):
        right = [a == 0 for a in row]
        compare = judge.compare(right, float(solve[q]), rng)
        result = fmt(n, compare, teams=row, seed=seed * 100_003 + q, **options)
        correct += right[result.winner]
        calls += result.judge_calls
    return {"accuracy": correct / len(answers), "calls_per_question": calls / len(answers)}


def fit_policy(name: str, ns: tuple[int, ...], questions: int, seed: int) -> Policy:
    """A grid over (spread, clustering), then local refinement by multiplicative steps."""
    pass1, cells = PAPER[name]

    def error(policy: Policy) -> float:
        answers, _ = policy.questions(questions, max(NS), seed)
        return sum((majority_vote(answers, n, seed) - cells[n][0]) ** 2 for n in ns)

    scored = [(error(Policy(pass1, s, c)), Policy(pass1, s, c))
              for s, c in itertools.product(SPREADS, CLUSTERINGS)]
    best_error, best = min(scored, key=lambda pair: pair[0])
    for factor in (1.3, 1.15, 1.07):
        improved = True
        while improved:
            improved = False
            for spread, clustering in ((factor, 1), (1 / factor, 1), (1, factor), (1, 1 / factor)):
                trial = Policy(pass1, best.spread * spread, best.clustering * clustering)
                trial_error = error(trial)
                if trial_error < best_error - 1e-12:
                    best_error, best, improved = trial_error, trial, True
    return best


def knockout_error(judge: Judge, policies: dict[str, Policy], ns: tuple[int, ...], questions: int,
                   seed: int) -> float:
    error = 0.0
    for name, policy in policies.items():
        drawn = policy.questions(questions, max(NS), seed)
        for n in ns:
            got = tournament(kojudge.knockout, drawn, n, judge, seed)["accuracy"]
            error += (got - PAPER[name][1][n][1]) ** 2
    return error


def fit_judge(policies: dict[str, Policy], ns: tuple[int, ...], questions: int, seed: int) -> Judge:
    """Coordinate search over (tpr, tnr, hardness), halving the steps when nothing improves."""
    judge = Judge(0.8, 0.7, 2.0)
    best = knockout_error(judge, policies, ns, questions, seed)
    step = {"tpr": 0.08, "tnr": 0.08, "hardness": 1.0}
    bounds = {"tpr": (0.5, 0.99), "tnr": (0.3, 0.99), "hardness": (0.0, 20.0)}
    for _ in range(5):
        improved = True
        while improved:
            improved = False
            for field, sign in itertools.product(step, (1, -1)):
                low, high = bounds[field]
                value = min(high, max(low, getattr(judge, field) + sign * step[field]))
                trial = Judge(**{**asdict(judge), field: value})
                error = knockout_error(trial, policies, ns, questions, seed)
                if error < best - 1e-9:
                    judge, best, improved = trial, error, True
        step = {k: v / 2 for k, v in step.items()}
    return judge


def calibrate(ns: tuple[int, ...], questions: int, seed: int) -> tuple[dict[str, Policy], Judge]:
    # Majority vote needs no judge and is vectorized: many more questions for its cells.
    policies = {name: fit_policy(name, ns, 8 * questions, seed) for name in PAPER}
    return policies, fit_judge(policies, ns, questions // 2, seed)


def predicted_cells(policies: dict[str, Policy], judge: Judge, questions: int,
                    seed: int) -> list[dict]:
    """All 18 cells, predicted on fresh questions (another seed than the fit's)."""
    rows = []
    for name, policy in policies.items():
        drawn = policy.questions(questions, max(NS), seed + 1)
        answers = drawn[0]
        for n in NS:
            knockout = tournament(kojudge.knockout, drawn, n, judge, seed + 1)["accuracy"]
            for method, value in (("majority vote", majority_vote(answers, n, seed + 1)),
                                  ("knockout", knockout)):
                published = PAPER[name][1][n][0 if method == "majority vote" else 1]
                rows.append({"policy": name, "n": n, "method": method, "predicted": value,
                             "published": published})
    return rows


def rmse(rows: list[dict]) -> float:
    return math.sqrt(sum((r["predicted"] - r["published"]) ** 2 for r in rows) / len(rows))


# ---- what the calibrated model says ------------------------------------------------------------

TEMPLATE, QUESTION, CANDIDATE, OUTPUT = 600, 60, 200, 400  # judge tokens per call (cost model)
FORMAT_NS = (4, 8, 16, 32, 64)


def pointwise(questions: tuple[np.ndarray, np.ndarray], n: int, judge: Judge, seed: int,
              votes: int = 4) -> dict:
    """Each candidate labelled `votes` times by the judge alone; the highest share wins."""
    answers, solve = questions
    rng = random.Random(seed)
    correct = 0
    for q, row in enumerate(answers[:, :n].tolist()):
        right = [a == 0 for a in row]
        lost = rng.random() < judge.lost(float(solve[q]))
        scores = []
        for ok in right:
            p = 0.5 if lost else (judge.tpr if ok else 1 - judge.tnr)
            scores.append(sum(rng.random() < p for _ in range(votes)) + rng.random() * 0.5)
        correct += right[max(range(n), key=scores.__getitem__)]
    return {"accuracy": correct / len(answers), "calls_per_question": n * votes}


def formats_by_budget(policy: Policy, judge: Judge, questions: int, seed: int) -> dict:
    answers = policy.questions(questions, max(FORMAT_NS), seed + 2)
    majority = answers[0]
    formats = {
        "knockout": lambda n: tournament(kojudge.knockout, answers, n, judge, seed),
        "knockout, both orders": lambda n: tournament(kojudge.knockout, answers, n, judge, seed,
                                                      both_orders=True),
        "knockout, 3 samples": lambda n: tournament(kojudge.knockout, answers, n, judge, seed,
                                                    samples=3),
        "swiss": lambda n: tournament(kojudge.swiss, answers, n, judge, seed),
        "round robin": lambda n: tournament(kojudge.round_robin, answers, n, judge, seed),
        "pointwise mean vote (4 votes)": lambda n: pointwise(answers, n, judge, seed),
    }
    out = {name: {n: run(n) for n in FORMAT_NS if not (name == "round robin" and n > 32)}
           for name, run in formats.items()}
    out["majority vote"] = {n: {"accuracy": majority_vote(majority, n, seed), "calls_per_question": 0}
                            for n in FORMAT_NS}
    for name, cells in out.items():
        for n, cell in cells.items():
            calls = cell["calls_per_question"]
            per_call = CANDIDATE + OUTPUT if name.startswith("pointwise") else 2 * CANDIDATE + OUTPUT
            cell["tokens_with_prefix_reuse"] = (TEMPLATE + QUESTION if calls else 0) + calls * per_call
    return out


def best_within(cells: dict, budget: float) -> float | None:
    fits = [c["accuracy"] for c in cells.values() if 0 < c["calls_per_question"] <= budget]
    return max(fits) if fits else None


def chen_bound(n: int, pass1: float, p_comp: float, k: int) -> float:
    """Chen et al. 2024 (arXiv 2411.19477): P(fail) <= (1 - p_gen)^N
    + ceil(log2 N) * exp(-2K (p_comp - 1/2)^2)."""
    return min(1.0, (1 - pass1) ** n + math.ceil(math.log2(n)) * math.exp(-2 * k * (p_comp - 0.5) ** 2))


def p_comp(judge: Judge, solve: np.ndarray) -> float:
    """P(the right side goes on) in a right-vs-wrong match judged once, over these questions."""
    lost = float(np.mean(judge.lost(solve)))
    sharp = judge.tpr * judge.tnr + 0.5 * judge.tpr * (1 - judge.tnr)
    return (1 - lost) * sharp + lost * 0.375


def scaling(policy: Policy, judge: Judge, questions: int, seed: int) -> dict:
    answers = policy.questions(questions, 128, seed + 3)
    rows = {}
    for k in (1, 3, 5):
        for n in (2, 4, 8, 16, 32, 64, 128):
            got = tournament(kojudge.knockout, answers, n, judge, seed, samples=k)["accuracy"]
            rows.setdefault(k, {})[n] = {"failure": 1 - got,
                                         "bound": chen_bound(n, policy.pass1,
                                                             p_comp(judge, answers[1]), k)}
    return rows


def plot(formats: dict, scale: dict, policy_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, cells in formats.items():
        judged = {n: c for n, c in cells.items() if c["calls_per_question"]}
        if not judged:
            for ax in axes:
                ax.axhline(cells[16]["accuracy"], linestyle=":", color="grey",
                           label=f"{name}, N=16")
            continue
        ys = [c["accuracy"] for c in judged.values()]
        axes[0].plot([c["calls_per_question"] for c in judged.values()], ys, marker="o", label=name)
        axes[1].plot([c["tokens_with_prefix_reuse"] for c in judged.values()], ys, marker="o",
                     label=name)
    axes[0].set_xlabel("judge calls per question (N = 4 ... 64)")
    axes[1].set_xlabel("judge tokens per question, prefix reuse counted")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("best-of-N accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Calibrated simulator: {policy_name}-like candidates, the fitted judge")
    fig.tight_layout()
    fig.savefig(RESULTS / "simulator_formats.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, rows in scale.items():
        ns = list(rows)
        line = ax.plot(ns, [rows[n]["failure"] for n in ns], marker="o", label=f"knockout, K={k}")
        ax.plot(ns, [rows[n]["bound"] for n in ns], linestyle="--", color=line[0].get_color(),
                label=f"Chen et al. bound, K={k}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("P(the pick is wrong)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "simulator_scaling.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policies, judge = calibrate(NS, args.questions, args.seed)
    cells = predicted_cells(policies, judge, args.questions, args.seed)
    print(f"fit on all 18 cells: RMSE {100 * rmse(cells):.2f} points; judge {judge}")
    held_policies, held_judge = calibrate((16, 32), args.questions, args.seed)
    held = [c for c in predicted_cells(held_policies, held_judge, args.questions, args.seed)
            if c["n"] == 64]
    print(f"fit on N=16, 32, predicting N=64: RMSE {100 * rmse(held):.2f} points")
    name = "Llama-3.1-8B-Instruct"
    formats = formats_by_budget(policies[name], judge, args.questions // 3, args.seed)
    budgets = {b: {f: best_within(c, b) for f, c in formats.items()} for b in (4, 8, 16, 32, 64)}
    scale = scaling(policies[name], judge, args.questions // 3, args.seed)
    write_result("simulator_calibration", {
        "questions": args.questions, "policies": {k: asdict(v) for k, v in policies.items()},
        "judge": asdict(judge),
        "judge_accuracy": {k: judge.accuracy(v.questions(args.questions, 1, args.seed)[1])
                           for k, v in policies.items()},
        "cells": cells, "rmse": rmse(cells), "held_out": {"fit_on": [16, 32], "cells": held,
                                                          "rmse": rmse(held),
                                                          "judge": asdict(held_judge)},
        "formats_policy": name, "formats": formats, "best_within_budget": budgets,
        "scaling": scale})
    plot(formats, scale, name)
    for budget, best in budgets.items():
        ranked = sorted(((v, f) for f, v in best.items() if v is not None), reverse=True)
        print(f"within {budget} calls: " + ", ".join(f"{f} {v:.3f}" for v, f in ranked))


if __name__ == "__main__":
    main()

"""`kojudge demo`: best-of-N on held-out synthetic additions with a small trained judge.

Every question's knockout runs through the engine at once (PairJudge.best_of_n_many); the table
compares the knockout's pick with a random pick, answer majority vote, the pointwise mean vote
(each distinct candidate scored 0-10 by sampled PointwiseJudge rollouts, highest mean wins) and the
oracle.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kojudge.demo.synthetic import make_problem, sample_candidates
from kojudge.judging.pairjudge import STOP, PairJudge
from kojudge.judging.parsers import POINTWISE_STOP
from kojudge.judging.pointwise import PointwiseJudge
from kojudge.runtime.engine import Engine
from kojudge.runtime.sampling import SamplingParams

HELD_OUT_SEED = 10_000  # training data uses other seeds
SHIPPED_JUDGE = Path(__file__).parent / "judge"


@dataclass
class DemoReport:
    questions: int
    n: int
    accuracy: dict[str, float]
    judge_calls: int
    seconds: float
    cached_ratio: float  # prompt tokens served from the prefix cache / all prompt tokens
    verdict_accuracy: dict[str, float]  # on truly correct and truly wrong candidates

    def table(self) -> str:
        rows = [f"best-of-{self.n} accuracy on {self.questions} held-out questions"]
        rows += [f"  {name:<22s} {value:.3f}" for name, value in self.accuracy.items()]
        rows += [f"  judge calls            {self.judge_calls} "
                 f"({self.judge_calls / self.questions:.1f} per question)",
                 f"  judge calls/s          {self.judge_calls / self.seconds:.2f}",
                 f"  cached prompt tokens   {100 * self.cached_ratio:.0f}%"]
        rows += [f"  verdicts right on {name:<5s} {value:.3f}"
                 for name, value in self.verdict_accuracy.items()]
        return "\n".join(rows)


def held_out_set(questions: int, n: int, seed: int = 0,
                 solve_beta: tuple[float, float] | None = None):
    """Problems and their n candidates from a seed space the judge never trained on; with
    `solve_beta`, each problem's solve rate ~ Beta(*solve_beta) (low rates: few right
    candidates among many clustered wrong ones)."""
    rng = random.Random(HELD_OUT_SEED + seed)
    problems = [make_problem(rng) for _ in range(questions)]
    rates = [None if solve_beta is None else rng.betavariate(*solve_beta) for _ in problems]
    return problems, [sample_candidates(p, n, rng, rate) for p, rate in zip(problems, rates)]


def run_tournaments(engine, judge_dir: str | Path, problems, candidates, *,
                    format: str = "knockout", both_orders: bool = False, max_tokens: int = 400,
                    seed: int = 0, bar=None, temperature: float = 0.0) -> list:
    """One PairJudge tournament per question, all questions' matches batched in the engine
    (judgments greedy, or sampled at `temperature` with a seed per request)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=[STOP],
                            include_stop_str_in_output=True)
    judge = PairJudge(engine, template=Path(judge_dir) / "judge_template.md", format=format,
                      both_orders=both_orders, params=params)
    items = [(p.question, [c.text for c in cs]) for p, cs in zip(problems, candidates)]
    on_result = (lambda i, r: bar.update(1)) if bar is not None else None
    return judge.best_of_n_many(items, seed=seed, on_result=on_result)


def pick_accuracy(candidates, picks: list[int]) -> float:
    """Share of questions whose picked candidate is right."""
    return sum(cs[i].correct for cs, i in zip(candidates, picks)) / len(candidates)


def cached_prompt_ratio(engine) -> float:
    """Prompt tokens served from the prefix cache / all prompt tokens, so far."""
    stats = engine.stats()
    return stats["cached_prompt_tokens"] / max(1, stats["prompt_tokens"])


def verdict_accuracy(candidates, results) -> dict[str, float]:
    """Share of verdicts that match the truth, on truly right and on truly wrong candidates."""
    verdicts = {"right": [], "wrong": []}
    for cs, best in zip(candidates, results):
        for judged in best.judgments:
            for index, said in zip((judged["a"], judged["b"]), judged["verdict"]):
                truth = cs[index].correct
                verdicts["right" if truth else "wrong"].append(said is truth)
    return {k: sum(v) / len(v) for k, v in verdicts.items() if v}


def baseline_accuracy(problems, candidates, seed: int = 0) -> dict[str, float]:
    pick_rng = random.Random(seed)
    accuracy = Counter()
    for problem, cs in zip(problems, candidates):
        accuracy["random pick"] += pick_rng.choice(cs).correct
        majority = Counter(c.answer for c in cs).most_common(1)[0][0]
        accuracy["answer majority vote"] += majority == problem.answer
        accuracy["oracle"] += any(c.correct for c in cs)
    return {k: v / len(problems) for k, v in accuracy.items()}


def run_demo(judge_dir: str | Path, questions: int = 200, n: int = 8, seed: int = 0,
             dtype: str = "float32", max_tokens: int = 400, pointwise_samples: int = 4,
             progress: bool = True) -> DemoReport:
    judge_dir = Path(judge_dir)
    problems, candidates = held_out_set(questions, n, seed)
    engine = Engine(judge_dir, dtype=dtype)
    bar = None
    if progress:
        bar = tqdm(total=questions, desc="demo", unit="question")
    start = time.perf_counter()
    results = run_tournaments(engine, judge_dir, problems, candidates, max_tokens=max_tokens,
                              seed=seed, bar=bar)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    cached_ratio = cached_prompt_ratio(engine)  # the knockout's, before the pointwise rollouts
    picks = pointwise_picks(engine, judge_dir, problems, candidates, pointwise_samples, max_tokens,
                            seed)
    baselines = baseline_accuracy(problems, candidates, seed)
    accuracy = {"knockout": pick_accuracy(candidates, [r.winner for r in results]),
                "random pick": baselines["random pick"],
                "answer majority vote": baselines["answer majority vote"],
                "pointwise mean vote": pick_accuracy(candidates, picks),
                "oracle": baselines["oracle"]}
    return DemoReport(questions=questions, n=n, accuracy=accuracy,
                      judge_calls=sum(r.judge_calls for r in results), seconds=seconds,
                      cached_ratio=cached_ratio,
                      verdict_accuracy=verdict_accuracy(candidates, results),)


def pointwise_picks(engine, judge_dir: str | Path, problems, candidates, samples: int,
                    max_tokens: int, seed: int, temperature: float = 1.0) -> list[int]:
    """Per question, the candidate with the highest mean pointwise score (unparseable rollouts count
    as 0; ties go to the earliest). Identical candidates are scored once."""
    scorer = PointwiseJudge(engine, template=Path(judge_dir) / "pointwise_template.md",
                            params=SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                                  stop=[POINTWISE_STOP],
                                                  include_stop_str_in_output=True))
    items = sorted({(p.question, c.text) for p, cs in zip(problems, candidates) for c in cs})
    scored = scorer.score_many(items, n=samples, domain="math", seed=seed)
    mean = {item: sum(s or 0.0 for s in result.rollout_scores) / samples
            for item, result in zip(items, scored)}
    return [max(range(len(cs)), key=lambda i: (mean[(p.question, cs[i].text)], -i))
            for p, cs in zip(problems, candidates)]

"""PairJudge: pairwise verdicts from a judge model, and best-of-N by tournament over many questions.

Prompt: the chat template with system "You are a helpful assistant." and a user turn made from a
template with {question}, {response_a}, {response_b}, filled in one pass
(kojudge.judging.templates); the verdict parser reads the generated text only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from kojudge.judging.answers import answer_teams
from kojudge.judging.parsers import VERDICT_STOP, parse_verdict
from kojudge.judging.runner import JudgeRequests, check_fits
from kojudge.judging.templates import (check_placeholders, fill_placeholders,
                                       judge_directory_template, read_template)
from kojudge.judging.formats import FORMATS
from kojudge.judging.tournament import TournamentResult, Verdict
from kojudge.runtime.engine import Engine
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.sequence import RequestOutput

SYSTEM_PROMPT = "You are a helpful assistant."
PLACEHOLDERS = ("question", "response_a", "response_b")
STOP = VERDICT_STOP


def load_template(path: str | Path | None = None) -> str:
    """The shipped default template, or one from a file; every placeholder must be present."""
    if path is None:
        shipped = resources.files("kojudge.judging").joinpath("prompts/pairjudge.md")
        return check_placeholders(shipped.read_text(), PLACEHOLDERS, "default template")
    return read_template(path, PLACEHOLDERS)


def fill_template(template: str, question: str, response_a: str, response_b: str) -> str:
    """Single-pass substitution: inserted text is never scanned again."""
    values = {"question": question, "response_a": response_a, "response_b": response_b}
    return fill_placeholders(template, values)


@dataclass
class BestOfN:
    winner: int
    result: TournamentResult
    teams: list[int] | None
    # Every judge call: round, a, b, text, verdict.
    judgments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def judge_calls(self) -> int:
        return self.result.judge_calls


class PairJudge:
    """Best-of-N by a pairwise judge running on `engine`.

    template: a file with {question}, {response_a} and {response_b}; by default the judge
    directory's judge_template.md if it has one, else the shipped default. format: knockout
    (default) | round_robin | swiss. group_by_answer: candidates with equivalent final answers form
    a team and never meet in a judged match. both_orders / samples: see
    `kojudge.judging.tournament.knockout_rounds`.
    """

    def __init__(self, engine: Engine, template: str | Path | None = None,
                 params: SamplingParams | None = None, *, system_prompt: str = SYSTEM_PROMPT,
                 format: str = "knockout", group_by_answer: bool = True, both_orders: bool = False,
                 samples: int = 1):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
        self.engine = engine
        if template is None:
            template = judge_directory_template(engine.model_dir, "judge_template.md")
        self.template = load_template(template)
        self.params = params or SamplingParams(max_tokens=1024, temperature=0.0, stop=[STOP],
                                               include_stop_str_in_output=True)
        self.system_prompt = system_prompt
        self.format = format
        self.group_by_answer = group_by_answer
        self.options = {"both_orders": both_orders, "samples": samples}

    def messages(self, question: str, response_a: str, response_b: str) -> list[dict[str, str]]:
        user = fill_template(self.template, question, response_a, response_b)
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user}]

    def prompt_ids(self, question: str, response_a: str, response_b: str) -> list[int]:
        messages = self.messages(question, response_a, response_b)
        return self.engine.tokenizer.apply_chat_template(messages)

    def longest_match(self, question: str, candidates: Sequence[str]) -> int:
        """Tokens of the question's longest judge prompt: the one with its two longest
        candidates."""
        if len(candidates) < 2:
            return 0  # a single candidate wins without a judge call
        lengths = [len(self.engine.tokenizer.encode(c)) for c in candidates]
        first, second = sorted(range(len(candidates)), key=lengths.__getitem__)[-2:]
        return len(self.prompt_ids(question, candidates[first], candidates[second]))

    def best_of_n(self, question: str, candidates: Sequence[str], seed: int = 0) -> BestOfN:
        return self.best_of_n_many([(question, candidates)], seed=seed)[0]

    def best_of_n_many(self, items: Sequence[tuple[str, Sequence[str]]], seed: int = 0,
                       on_result: Callable[[int, BestOfN], None] | None = None) -> list[BestOfN]:
        """Tournaments for many questions at once. Every question's pending matches sit in the
        engine together, and a question's next round is submitted the moment its last match is
        judged. `on_result(index, result)` is called as each question finishes (to write results
        as they go)."""
        for index, (question, candidates) in enumerate(items):
            if not candidates:
                raise ValueError(f"item {index}: the candidate list is empty")
            check_fits(self.engine, index, self.longest_match(question, candidates),
                       "its two longest candidates make a judge prompt of")
        tournaments = Tournaments(self, items, seed, on_result)
        for q in range(len(items)):
            tournaments.start(q, seed)
        tournaments.requests.run(tournaments.judged)
        return [tournaments.results[q] for q in range(len(items))]


class Tournaments:
    """The tournaments of one best_of_n_many call, each advanced as its round's matches finish."""

    def __init__(self, judge: PairJudge, items: Sequence[tuple[str, Sequence[str]]], seed: int,
                 on_result: Callable[[int, BestOfN], None] | None):
        self.judge = judge
        self.items = items
        self.on_result = on_result
        self.requests = JudgeRequests(judge.engine)
        self.request_seed = seed * 1_000_003  # sampled judgments: a seed per request
        self.results: dict[int, BestOfN] = {}
        self.rounds: dict = {}  # question -> its tournament generator
        self.asked: dict[int, list[tuple[int, int]]] = {}  # question -> this round's pairs
        self.verdicts: dict[int, list[Verdict | None]] = {}
        self.judgments: dict[int, list[dict[str, Any]]] = {}
        self.teams: dict[int, list[int] | None] = {}
        self.round_no: dict[int, int] = {}

    def start(self, q: int, seed: int) -> None:
        candidates = self.items[q][1]
        self.teams[q] = answer_teams(candidates) if self.judge.group_by_answer else None
        self.judgments[q] = []
        self.round_no[q] = 1
        self.rounds[q] = FORMATS[self.judge.format](len(candidates), self.teams[q], seed,
                                                     **self.judge.options)
        self._advance(q, None)

    def _advance(self, q: int, verdicts: list[Verdict] | None) -> None:
        try:
            pairs = next(self.rounds[q]) if verdicts is None else self.rounds[q].send(verdicts)
        except StopIteration as done:
            result = done.value
            self.results[q] = BestOfN(result.winner, result, self.teams[q], self.judgments.pop(q))
            if self.on_result is not None:
                self.on_result(q, self.results[q])
            return
        question, candidates = self.items[q]
        self.asked[q] = pairs
        self.verdicts[q] = [None] * len(pairs)
        for k, (a, b) in enumerate(pairs):
            params = self.judge.params
            if not params.greedy:
                self.request_seed += 1
                params = SamplingParams(**{**vars(params), "seed": self.request_seed})
            prompt = self.judge.prompt_ids(question, candidates[a], candidates[b])
            self.requests.submit(prompt, params, (q, k))

    def judged(self, tag: tuple[int, int], out: RequestOutput) -> None:
        q, k = tag
        verdict = parse_verdict(out.text)
        self.verdicts[q][k] = verdict
        a, b = self.asked[q][k]
        self.judgments[q].append({"round": self.round_no[q], "a": a, "b": b, "text": out.text,
                                  "verdict": list(verdict)})
        if all(v is not None for v in self.verdicts[q]):
            self.round_no[q] += 1
            self._advance(q, self.verdicts[q])

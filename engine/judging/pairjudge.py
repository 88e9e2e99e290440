"""PairJudge: pairwise verdicts from a judge model, and best-of-N by tournament over many questions.

Prompt: the chat template with system "You are a helpful assistant." and a user turn made from a
template with {question}, {response_a}, {response_b}, filled in one pass
(kojudge.judging.templates); the verdict parser reads the generated text only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from kojudge.judging.answers import answer_teams
from kojudge.judging.confidence import LABELS, SIDES, label_context, p_correct
from kojudge.judging.parsers import VERDICT_STOP, parse_verdict
from kojudge.judging.runner import JudgeRequests, check_fits
from kojudge.judging.templates import (check_placeholders, fill_placeholders,
                                       judge_directory_template, read_template)
from kojudge.judging.formats import FORMATS
from kojudge.judging.tournament import ScoredVerdict, TournamentResult, Verdict
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


def question_seed(seed: int, index: int) -> int:
    """Each question's own bracket seed, derived from (seed, question index): brackets differ
    across questions and stay reproducible."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


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

    @property
    def flip_rate(self) -> float | None:
        return self.result.flip_rate


class PairJudge:
    """Best-of-N by a pairwise judge running on `engine`.

    template: a file with {question}, {response_a} and {response_b}; by default the judge
    directory's judge_template.md if it has one, else the shipped default. format: knockout
    (default) | round_robin | swiss. group_by_answer: candidates with equivalent final answers form
    a team and never meet in a judged match. confidence: score each judged side's p(correct)
    (kojudge.judging.confidence; four short scoring requests per judgment). both_orders / samples,
    and for the knockout pairing / tie_break / gate_flips: see
    `kojudge.judging.tournament.knockout_rounds`.
    """

    def __init__(self, engine: Engine, template: str | Path | None = None,
                 params: SamplingParams | None = None, *, system_prompt: str = SYSTEM_PROMPT,
                 format: str = "knockout", group_by_answer: bool = True, both_orders: bool = False,
                 samples: int = 1, confidence: bool = True, pairing: str = "random_bye",
                 tie_break: str = "random", gate_flips: bool = False):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
        knockout_only = {"pairing": pairing, "tie_break": tie_break, "gate_flips": gate_flips}
        defaults = {"pairing": "random_bye", "tie_break": "random", "gate_flips": False}
        if format != "knockout" and knockout_only != defaults:
            raise ValueError("pairing, tie_break and gate_flips are knockout options, not "
                             f"{format}'s")
        if (tie_break == "confidence" or gate_flips) and not confidence:
            raise ValueError("tie_break='confidence' and gate_flips need confidence=True")
        self.engine = engine
        if template is None:
            template = judge_directory_template(engine.model_dir, "judge_template.md")
        self.template = load_template(template)
        self.params = params or SamplingParams(max_tokens=1024, temperature=0.0, stop=[STOP],
                                               include_stop_str_in_output=True)
        self.system_prompt = system_prompt
        self.format = format
        self.group_by_answer = group_by_answer
        self.confidence = confidence
        self.options = {"both_orders": both_orders, "samples": samples}
        if format == "knockout":
            self.options.update(knockout_only)

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

    def check_item(self, index: int, question: str, candidates: Sequence[str]) -> None:
        """Refuse a question that cannot be judged (PromptTooLong, ValueError) before any work."""
        if not candidates:
            raise ValueError(f"item {index}: the candidate list is empty")
        check_fits(self.engine, index, self.longest_match(question, candidates),
                   "its two longest candidates make a judge prompt of")

    def best_of_n(self, question: str, candidates: Sequence[str], seed: int = 0) -> BestOfN:
        return self.best_of_n_many([(question, candidates)], seed=seed)[0]

    def best_of_n_many(self, items: Sequence[tuple[str, Sequence[str]]], seed: int = 0,
                       on_result: Callable[[int, BestOfN], None] | None = None,
                       indices: Sequence[int] | None = None) -> list[BestOfN]:
        """Tournaments for many questions at once. Every question's pending matches sit in the
        engine together, and a question's next round is submitted the moment its last match is
        judged. `on_result(index, result)` is called as each question finishes (to write results
        as they go). Question q's bracket seed is derived from (seed, indices[q]); by default
        indices[q] = q (a job resuming part of its input passes each item's place in it)."""
        for index, (question, candidates) in enumerate(items):
            self.check_item(index, question, candidates)
        tournaments = Tournaments(self, items, seed, on_result)
        for q in range(len(items)):
            tournaments.start(q, question_seed(seed, q if indices is None else indices[q]))
        tournaments.requests.run(tournaments.finished)
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
        self.verdicts: dict[int, list[Verdict | ScoredVerdict | None]] = {}
        # (question, match) -> its label log-probs so far, and its verdict and judgment record
        self.label_logprobs: dict[tuple[int, int], dict[tuple[str, str], float]] = {}
        self.unscored: dict[tuple[int, int], tuple[Verdict, dict[str, Any]]] = {}
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
            self.requests.submit(prompt, params, ("judge", q, k))

    def finished(self, tag: tuple, out: RequestOutput) -> None:
        if tag[0] == "label":
            self._label_scored(tag[1:], out)
            return
        _, q, k = tag
        verdict = parse_verdict(out.text)
        a, b = self.asked[q][k]
        judgment = {"round": self.round_no[q], "a": a, "b": b, "text": out.text,
                    "verdict": list(verdict), "confidence": None}
        self.judgments[q].append(judgment)
        if not self.judge.confidence:
            self._settle(q, k, verdict)
            return
        self.label_logprobs[(q, k)] = {}
        self.unscored[(q, k)] = (verdict, judgment)
        tokenizer = self.judge.engine.tokenizer
        for side in SIDES:
            context = label_context(tokenizer, out.prompt_token_ids, out.token_ids, out.text, side)
            for label in LABELS:
                self.requests.submit_score(context, label, ("label", q, k, side, label))

    def _label_scored(self, key: tuple[int, int, str, str], out: RequestOutput) -> None:
        q, k, side, label = key
        scores = self.label_logprobs[(q, k)]
        scores[(side, label)] = sum(out.logprobs)
        if len(scores) < len(SIDES) * len(LABELS):
            return
        del self.label_logprobs[(q, k)]
        verdict, judgment = self.unscored.pop((q, k))
        confidence = [p_correct(scores[(s, "Correct")], scores[(s, "Incorrect")]) for s in SIDES]
        judgment["confidence"] = confidence
        self._settle(q, k, ScoredVerdict(*verdict, *confidence))

    def _settle(self, q: int, k: int, answer: Verdict | ScoredVerdict) -> None:
        self.verdicts[q][k] = answer
        if all(v is not None for v in self.verdicts[q]):
            self.round_no[q] += 1
            self._advance(q, self.verdicts[q])

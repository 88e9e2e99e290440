"""PairJudge: pairwise verdicts from a judge model, and best-of-N by tournament over many questions.

Prompt: the chat template with system "You are a helpful assistant." and a user turn made from a
template with {question}, {response_a}, {response_b}. Substitution is one pass over the template only,
so candidate text that looks like a placeholder or a verdict tag stays inert; the verdict parser reads
the generated text only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from kojudge.judging.answers import answer_teams
from kojudge.runtime.engine import Engine, PromptTooLong
from kojudge.judging.parsers import check_placeholders, fill_placeholders, judge_directory_template, read_template
from kojudge.runtime.sampling import SamplingParams
from kojudge.judging.tournament import FORMATS, TournamentResult, Verdict

SYSTEM_PROMPT = "You are a helpful assistant."
PLACEHOLDERS = ("question", "response_a", "response_b")
_TAGS = {side: re.compile(rf"<\s*resp_{side}_judge\s*>(.*?)<\s*/\s*resp_{side}_judge\s*>", re.IGNORECASE | re.DOTALL)
         for side in ("a", "b")}
_LABELS = {"correct": True, "true": True, "incorrect": False, "false": False}
STOP = "</resp_b_judge>"


def load_template(path: str | Path | None = None) -> str:
    """The shipped default template, or one from a file; every placeholder must be present."""
    if path is None:
        text = resources.files("kojudge.judging").joinpath("prompts/pairjudge.md").read_text()
        return check_placeholders(text, PLACEHOLDERS, "default template")
    return read_template(path, PLACEHOLDERS)


def fill_template(template: str, question: str, response_a: str, response_b: str) -> str:
    """Single-pass substitution: inserted text is never scanned again."""
    return fill_placeholders(template, {"question": question, "response_a": response_a, "response_b": response_b})


def _label(content: str) -> bool | None:
    return _LABELS.get(re.sub(r"[^a-z]", "", content.lower()))


def parse_verdict(text: str) -> Verdict:
    """The last verdict tag of each side in the generated text; None for a side without a clear label."""
    labels = []
    for side in ("a", "b"):
        found = _TAGS[side].findall(text)
        labels.append(_label(found[-1]) if found else None)
    return Verdict(*labels)


@dataclass
class BestOfN:
    winner: int
    result: TournamentResult
    teams: list[int] | None
    judgments: list[dict[str, Any]] = field(default_factory=list)  # every judge call: round, a, b, text, verdict

    @property
    def judge_calls(self) -> int:
        return self.result.judge_calls


class PairJudge:
    """Best-of-N by a pairwise judge running on `engine`.

    template: a file with {question}, {response_a} and {response_b}; by default the judge directory's
    judge_template.md if it has one, else the shipped default. format: knockout (default) | round_robin | swiss. group_by_answer: candidates with equivalent
    final answers form a team and never meet in a judged match. both_orders / samples: see
    `kojudge.tournament.knockout_rounds`.
    """

    def __init__(self, engine: Engine, template: str | Path | None = None, params: SamplingParams | None = None, *,
                 system_prompt: str = SYSTEM_PROMPT, format: str = "knockout", group_by_answer: bool = True,
                 both_orders: bool = False, samples: int = 1):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
        self.engine = engine
        self.template = load_template(template or judge_directory_template(engine.model_dir, "judge_template.md"))
        self.params = params or SamplingParams(max_tokens=1024, temperature=0.0, stop=[STOP],
                                               include_stop_str_in_output=True)
        self.system_prompt = system_prompt
        self.format, self.group_by_answer = format, group_by_answer
        self.options = {"both_orders": both_orders, "samples": samples}

    def messages(self, question: str, response_a: str, response_b: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": fill_template(self.template, question, response_a, response_b)}]

    def prompt_ids(self, question: str, response_a: str, response_b: str) -> list[int]:
        return self.engine.tokenizer.apply_chat_template(self.messages(question, response_a, response_b))

    def longest_match(self, question: str, candidates: Sequence[str]) -> int:
        """Tokens of the question's longest judge prompt: the one with its two longest candidates."""
        if len(candidates) < 2:
            return 0  # a single candidate wins without a judge call
        lengths = [len(self.engine.tokenizer.encode(c)) for c in candidates]
        first, second = sorted(range(len(candidates)), key=lengths.__getitem__)[-2:]
        return len(self.prompt_ids(question, candidates[first], candidates[second]))

    def best_of_n(self, question: str, candidates: Sequence[str], seed: int = 0) -> BestOfN:
        return self.best_of_n_many([(question, candidates)], seed=seed)[0]

    def best_of_n_many(self, items: Sequence[tuple[str, Sequence[str]]], seed: int = 0,
                       on_result: Callable[[int, BestOfN], None] | None = None) -> list[BestOfN]:
        """Tournaments for many questions at once. Every question's pending matches sit in the engine
        together, and a question's next round is submitted the moment its last match is judged.
        `on_result(index, result)` is called as each question finishes (to write results as they go)."""
        limit = self.engine.max_model_len
        for index, (question, candidates) in enumerate(items):
            if not candidates:
                raise ValueError(f"item {index}: the candidate list is empty")
            tokens = self.longest_match(question, candidates)
            if tokens >= limit:
                raise PromptTooLong(f"item {index}", f"its two longest candidates make a judge prompt of {tokens} "
                                    f"tokens, and the judge's max model length is {limit}", index, tokens, limit)
        results: dict[int, BestOfN] = {}
        pending: dict[int, tuple[int, int]] = {}  # request id -> (question, match index in its round)
        rounds, asked, answers, texts, teams_of = {}, {}, {}, {}, {}
        request_seed = seed * 1_000_003

        def finish(q: int, result: TournamentResult) -> None:
            results[q] = BestOfN(result.winner, result, teams_of[q], texts.pop(q, []))
            if on_result is not None:
                on_result(q, results[q])

        def submit(q: int, pairs: list[tuple[int, int]]) -> None:
            nonlocal request_seed
            question, candidates = items[q]
            asked[q], answers[q] = pairs, [None] * len(pairs)
            for k, (a, b) in enumerate(pairs):
                params = self.params
                if not params.greedy:  # reproducible sampling: a seed per request
                    request_seed += 1
                    params = SamplingParams(**{**vars(params), "seed": request_seed})
                rid = self.engine.submit(self.prompt_ids(question, candidates[a], candidates[b]), params)
                pending[rid] = (q, k)

        def advance(q: int, verdicts: list[Verdict] | None) -> None:
            try:
                pairs = next(rounds[q]) if verdicts is None else rounds[q].send(verdicts)
            except StopIteration as done:
                finish(q, done.value)
                return
            submit(q, pairs)

        for q, (_, candidates) in enumerate(items):
            teams_of[q] = answer_teams(candidates) if self.group_by_answer else None
            texts[q] = []
            rounds[q] = FORMATS[self.format](len(candidates), teams_of[q], seed, **self.options)
            advance(q, None)
        round_no = {q: 1 for q in range(len(items))}
        while pending:
            for out in self.engine.step():
                if out.request_id not in pending:
                    continue
                q, k = pending.pop(out.request_id)
                verdict = parse_verdict(out.text)
                answers[q][k] = verdict
                a, b = asked[q][k]
                texts[q].append({"round": round_no[q], "a": a, "b": b, "text": out.text,
                                 "verdict": list(verdict)})
                if all(v is not None for v in answers[q]):
                    round_no[q] += 1
                    advance(q, answers[q])
        return [results[q] for q in range(len(items))]

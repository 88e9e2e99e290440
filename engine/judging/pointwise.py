"""PaTaRM pointwise judging: a primary rubric per domain, the judge adds its own rubrics, reasons
and gives a 0-10 score; n sampled rollouts per response are combined by mean or majority vote.
Also the pairwise variant, where the judge answers A or B.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kojudge.judging.parsers import POINTWISE_STOP, parse_pairwise_choice, parse_pointwise
from kojudge.judging.runner import JudgeRequests, check_fits
from kojudge.judging.templates import (PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE, PRIMARY_RUBRICS,
                                       fill_placeholders, judge_directory_template, read_template)
from kojudge.runtime.engine import Engine
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.sequence import RequestOutput


@dataclass
class PointwiseScore:
    score: float | None  # the vote; None if no rollout gave a valid score
    rollout_scores: list[float | None]
    format_rewards: list[float]
    texts: list[str]


def vote(scores: Sequence[float | None], method: str = "mean") -> float | None:
    """Mean of the valid scores, or the most common rounded score (ties: the mean of the tied
    values)."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None
    if method == "mean":
        return statistics.fmean(valid)
    if method == "majority":
        counts = Counter(round(s) for s in valid)
        top = max(counts.values())
        return statistics.fmean(v for v, c in counts.items() if c == top)
    raise ValueError(f"vote must be 'mean' or 'majority', got {method!r}")


def pointwise_text(rubric: str, prompt: str, response: str,
                   template: str = POINTWISE_TEMPLATE) -> str:
    return fill_placeholders(template, {"rubric": rubric, "prompt": prompt, "response": response})


class PointwiseJudge:
    """template: a file with {prompt} and {response} (and {rubric} where the rubric goes) replacing
    the PaTaRM pointwise template, e.g. a judge trained on a compact format of its own; by default
    the judge directory's pointwise_template.md if it has one."""

    def __init__(self, engine: Engine, rubrics: dict[str, str] | None = None,
                 params: SamplingParams | None = None, template: str | Path | None = None):
        self.engine = engine
        self.requests = JudgeRequests(engine)
        self.rubrics = {**PRIMARY_RUBRICS, **(rubrics or {})}
        template = template or judge_directory_template(engine.model_dir, "pointwise_template.md")
        self.template = POINTWISE_TEMPLATE
        if template is not None:
            self.template = read_template(template, ("prompt", "response"))
        self.params = params or SamplingParams(max_tokens=1024, temperature=0.8, top_p=0.95,
                                               stop=[POINTWISE_STOP],
                                               include_stop_str_in_output=True)

    def _rubric(self, domain: str) -> str:
        if domain not in self.rubrics:
            raise ValueError(f"unknown domain {domain!r}; known: {sorted(self.rubrics)}")
        return self.rubrics[domain]

    def pointwise_text(self, prompt: str, response: str, domain: str = "chat") -> str:
        """The user turn of a pointwise judgment (what SFT data for the judge should contain)."""
        return pointwise_text(self._rubric(domain), prompt, response, self.template)

    def pointwise_prompt(self, prompt: str, response: str, domain: str = "chat") -> list[int]:
        user = self.pointwise_text(prompt, response, domain)
        return self.engine.tokenizer.apply_chat_template([{"role": "user", "content": user}])

    def pointwise_prompts(self, items: Sequence[tuple[str, str]],
                          domain: str | Sequence[str] = "chat") -> list[list[int]]:
        """The judge prompts of (prompt, response) items; PromptTooLong names the first that
        leaves the judge no room to generate."""
        domains = [domain] * len(items) if isinstance(domain, str) else list(domain)
        prompts = [self.pointwise_prompt(p, r, d) for (p, r), d in zip(items, domains)]
        for index, prompt in enumerate(prompts):
            check_fits(self.engine, index, len(prompt), "its judge prompt has")
        return prompts

    def pairwise_prompt(self, prompt: str, response_a: str, response_b: str,
                        domain: str = "chat") -> list[int]:
        values = {"rubric": self._rubric(domain), "prompt": prompt, "response_a": response_a,
                  "response_b": response_b}
        user = fill_placeholders(PAIRWISE_TEMPLATE, values)
        return self.engine.tokenizer.apply_chat_template([{"role": "user", "content": user}])

    def rollouts(self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int]
                 ) -> list[list[RequestOutput]]:
        """n sampled rollouts per prompt, all in one batch; rollout i of prompt k is seeded with
        seeds[k] + i. Each output holds the text and the token ids."""
        params = [SamplingParams(**{**vars(self.params), "seed": base + i})
                  for base in seeds for i in range(n)]
        outs = self.requests.generate([p for p in prompts for _ in range(n)], params)
        return [outs[k * n: (k + 1) * n] for k in range(len(prompts))]

    def score_many(self, items: Sequence[tuple[str, str]], n: int = 8, vote_method: str = "mean",
                   domain: str | Sequence[str] = "chat", seed: int = 0) -> list[PointwiseScore]:
        """Score (prompt, response) pairs (domain: one for all or one per item); every rollout of
        every item runs in one batch."""
        return self.score_prompts(self.pointwise_prompts(items, domain), n, vote_method, seed)

    def score_prompts(self, prompts: Sequence[list[int]], n: int = 8, vote_method: str = "mean",
                      seed: int = 0) -> list[PointwiseScore]:
        """score_many on judge prompts already built by pointwise_prompts; rollout i of every
        prompt is seeded with seed + i."""
        results = []
        for outs in self.rollouts(prompts, n, [seed] * len(prompts)):
            texts = [o.text for o in outs]
            parsed = [parse_pointwise(t) for t in texts]
            scores = [p.score for p in parsed]
            rewards = [p.format_reward for p in parsed]
            results.append(PointwiseScore(vote(scores, vote_method), scores, rewards, texts))
        return results

    def score(self, prompt: str, response: str, n: int = 8, vote: str = "mean",
              domain: str = "chat", seed: int = 0) -> PointwiseScore:
        return self.score_many([(prompt, response)], n, vote, domain, seed)[0]

    def compare(self, prompt: str, response_a: str, response_b: str, n: int = 8,
                domain: str = "chat", seed: int = 0) -> tuple[str | None, list[str | None]]:
        """Pairwise variant: (majority choice 'A' / 'B', None on a tie or without a valid answer;
        every rollout's choice)."""
        prompts = [self.pairwise_prompt(prompt, response_a, response_b, domain)]
        choices = [parse_pairwise_choice(o.text) for o in self.rollouts(prompts, n, [seed])[0]]
        counts = Counter(c for c in choices if c is not None)
        if not counts or counts["A"] == counts["B"]:
            return None, choices
        return max(counts, key=counts.get), choices

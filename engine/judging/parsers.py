"""Parsers of judge outputs. They read generated text only, never the prompt, and never raise.

PairJudge: the last <resp_a_judge>Correct|Incorrect</resp_a_judge> and <resp_b_judge>...</...> of
each side. Pointwise (PaTaRM): <think>, <generate_rubrics>, <eval>, <answer>S</answer> in that
order, S in [0, 10]. The format reward cases live here so the judge and the trainer share them:
-1.5 when a tag is missing, repeated or out of order, -1.0 when the score is not a number in
[0, 10], else 0.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

from kojudge.judging.tournament import Verdict

VERDICT_STOP = "</resp_b_judge>"
_VERDICT_TAGS = {
    side: re.compile(rf"<\s*resp_{side}_judge\s*>(.*?)<\s*/\s*resp_{side}_judge\s*>",
                     re.IGNORECASE | re.DOTALL)
    for side in ("a", "b")
}
_LABELS = {"correct": True, "true": True, "incorrect": False, "false": False}

POINTWISE_TAGS = ("think", "generate_rubrics", "eval", "answer")
POINTWISE_STOP = "</answer>"
FORMAT_PENALTY_TAGS = -1.5
FORMAT_PENALTY_SCORE = -1.0
MAX_SCORE = 10.0
_ORDERED = re.compile("".join(rf"<{t}>(.*?)</{t}>.*?" for t in POINTWISE_TAGS[:-1])
                      + r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def _label(content: str) -> bool | None:
    return _LABELS.get(re.sub(r"[^a-z]", "", content.lower()))


def parse_verdict(text: str) -> Verdict:
    """The last verdict tag of each side; None for a side without a clear label."""
    labels = []
    for side in ("a", "b"):
        found = _VERDICT_TAGS[side].findall(text)
        labels.append(_label(found[-1]) if found else None)
    return Verdict(*labels)


class PointwiseParse(NamedTuple):
    score: float | None  # None when the format or the score is invalid
    format_reward: float  # 0, -1.0 or -1.5


def parse_pointwise(text: str) -> PointwiseParse:
    for tag in POINTWISE_TAGS:
        if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
            return PointwiseParse(None, FORMAT_PENALTY_TAGS)
    match = _ORDERED.search(text)
    if match is None:
        return PointwiseParse(None, FORMAT_PENALTY_TAGS)
    raw = match.group(4).strip()
    if not _NUMBER.fullmatch(raw):
        return PointwiseParse(None, FORMAT_PENALTY_SCORE)
    score = float(raw)
    if not (math.isfinite(score) and 0.0 <= score <= MAX_SCORE):
        return PointwiseParse(None, FORMAT_PENALTY_SCORE)
    return PointwiseParse(score, 0.0)


def parse_pairwise_choice(text: str) -> str | None:
    """PaTaRM's pairwise variant: the last <answer>A</answer> or <answer>B</answer>, else None."""
    found = re.findall(r"<answer>\s*([AaBb])\s*</answer>", text)
    return found[-1].upper() if found else None

"""Judge formats: placeholder filling for prompts, and parsers for outputs.

Filling is one pass over the template, so inserted text (a candidate's) is never expanded. Parsers
read generated text only, never the prompt, and never raise.

Pointwise (PaTaRM): <think>, <generate_rubrics>, <eval>, <answer>S</answer> in that order, S in [0, 10].
The format reward cases live here so the judge and the trainer share them: -1.5 when a tag is
missing, repeated or out of order, -1.0 when the score is not a number in [0, 10], else 0.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple

POINTWISE_TAGS = ("think", "generate_rubrics", "eval", "answer")
FORMAT_PENALTY_TAGS = -1.5
FORMAT_PENALTY_SCORE = -1.0
MAX_SCORE = 10.0

_ORDERED = re.compile(
    "".join(rf"<{t}>(.*?)</{t}>.*?" for t in POINTWISE_TAGS[:-1]) + r"<answer>(.*?)</answer>", re.DOTALL
)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def fill_placeholders(template: str, values: dict[str, str]) -> str:
    """Replace each {name} of `values` in one pass over the template; other braces stay as they are."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


def read_template(path: str | Path, placeholders: tuple[str, ...]) -> str:
    """A judge template from a file; every one of `placeholders` must appear in it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template file not found: {path}")
    return check_placeholders(path.read_text(encoding="utf-8"), placeholders, str(path))


def judge_directory_template(model_dir: Path, name: str) -> Path | None:
    """The template a judge directory ships with its weights (a judge trained on a format of its own,
    as the demo judge is), if it has one."""
    path = Path(model_dir) / name
    return path if path.is_file() else None


def check_placeholders(text: str, placeholders: tuple[str, ...], where: str) -> str:
    missing = [p for p in placeholders if "{" + p + "}" not in text]
    if missing:
        raise ValueError(f"{where}: placeholder(s) {', '.join('{' + p + '}' for p in missing)} missing")
    return text


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
    """PaTaRM pairwise variant: the last <answer>A</answer> or <answer>B</answer>; None otherwise."""
    found = re.findall(r"<answer>\s*([AaBb])\s*</answer>", text)
    return found[-1].upper() if found else None

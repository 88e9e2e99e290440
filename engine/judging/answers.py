"""Final answers of candidate solutions and their equivalence (math-verify), for knockout teams."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_STATED = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth = 1
        i = start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start: i - 1].strip()
    return None


def extract_final_answer(text: str) -> str | None:
    """The last \\boxed{} answer; else the last 'answer is / answer:' statement; else the last
    number."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    stated = _STATED.findall(text)
    if stated:
        answer = stated[-1].strip().rstrip(".").strip("$ ").strip()
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


@lru_cache(maxsize=4096)
def _parsed(answer: str):
    from math_verify import parse

    return parse(f"${answer}$")


def answers_equivalent(a: str, b: str) -> bool:
    """Same final answer: equal strings, or mathematically equal according to math-verify."""
    if a.strip() == b.strip():
        return True
    from math_verify import verify

    parsed_a, parsed_b = _parsed(a), _parsed(b)
    return bool(parsed_a and parsed_b and verify(parsed_a, parsed_b))


def answer_teams(solutions: Sequence[str]) -> list[int]:
    """Team id per solution: solutions with equivalent final answers share one (the index of the
    first member); a solution with no recognisable answer is a team of its own."""
    representatives: list[tuple[int, str]] = []
    teams = []
    for i, text in enumerate(solutions):
        answer = extract_final_answer(text)
        team = i
        if answer is not None:
            team = next((t for t, rep in representatives if answers_equivalent(rep, answer)), i)
            if team == i:
                representatives.append((i, answer))
        teams.append(team)
    return teams

"""Rewards for GRPO-PAR: the preference-aware reward (PaTaRM) and the format reward. Pure
functions."""
from __future__ import annotations

import math
from typing import Sequence

from kojudge.judging.parsers import parse_pointwise

Score = float | None  # None: the rollout's score could not be parsed


def graded_f(delta: float) -> float:
    """1.2 for a gap of size in (0, 2], 1.4 beyond 2."""
    return 1.2 if abs(delta) <= 2 else 1.4


def constant_f(delta: float) -> float:
    return 1.3


PAR_FUNCTIONS = {"graded": graded_f, "constant": constant_f}


def _valid(scores: Sequence[Score]) -> list[float]:
    return [s for s in scores if s is not None and math.isfinite(s)]


def par_rewards(chosen_scores: Sequence[Score], rejected_scores: Sequence[Score], f: str = "graded"
                ) -> tuple[list[float], list[float]]:
    """PAR for one preference pair's rollouts: (rewards of chosen rollouts, rewards of rejected
    rollouts).

    R(chosen_i) = 1[s_i > mean(rejected)] * f(s_i - mean(rejected));
    R(rejected_j) = 1[s_j < mean(chosen)] * f(s_j - mean(chosen)).
    Means run over the other side's valid scores; an invalid score earns 0 (its format reward is the
    penalty), and if the other side has no valid score there is nothing to compare with: 0.
    """
    if f not in PAR_FUNCTIONS:
        raise ValueError(f"f must be one of {sorted(PAR_FUNCTIONS)}, got {f!r}")
    fn = PAR_FUNCTIONS[f]
    chosen_valid, rejected_valid = _valid(chosen_scores), _valid(rejected_scores)

    def side(scores: Sequence[Score], other: list[float], better: bool) -> list[float]:
        if not other:
            return [0.0] * len(scores)
        mean = sum(other) / len(other)
        out = []
        for s in scores:
            ok = s is not None and math.isfinite(s) and (s > mean if better else s < mean)
            out.append(fn(s - mean) if ok else 0.0)
        return out

    return side(chosen_scores, rejected_valid, True), side(rejected_scores, chosen_valid, False)


def format_reward(text: str) -> float:
    """-1.5 if a pointwise tag is missing or out of order, -1.0 if the score is invalid, else 0."""
    return parse_pointwise(text).format_reward

"""The research formats, round-robin and Swiss, over the same batched judge as the knockout, and
FORMATS: every format's name and its round generator."""
from __future__ import annotations

import math
import random
from typing import Callable, Hashable, Sequence

from kojudge.judging.tournament import (Compare, Match, Rounds, TournamentResult, _judge_round,
                                        _team_function, knockout_rounds, play)


def _tally(result: TournamentResult, round_no: int, judged: list[Match],
           points: dict[int, float], games: dict[int, int]) -> None:
    for match in judged:
        match.round = round_no
        points[match.a] += match.a_score
        points[match.b] += match.b_score
        games[match.a] += 1
        games[match.b] += 1
        result.matches.append(match)


def _standings_winner(points: dict[int, float], games: dict[int, int], rng: random.Random) -> int:
    rate = {i: points[i] / games[i] if games[i] else 0.0 for i in points}
    best = max(rate.values())
    return rng.choice(sorted(i for i, r in rate.items() if r == best))


def round_robin_rounds(n: int, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
                       both_orders: bool = False, samples: int = 1) -> Rounds:
    """Every cross-team pair judged once, all in one batch; the best rate of 'correct' verdicts
    wins."""
    team_of = _team_function(n, teams, "round_robin")
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if team_of(a) != team_of(b)]
    result = TournamentResult(winner=0, rounds=1 if pairs else 0, both_orders=both_orders)
    judged, result.judge_calls = yield from _judge_round(pairs, both_orders, samples)
    points, games = {i: 0.0 for i in range(n)}, {i: 0 for i in range(n)}
    _tally(result, 1, judged, points, games)
    result.points = points
    result.winner = _standings_winner(points, games, rng)
    return result


def swiss_rounds(n: int, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
                 rounds: int | None = None, both_orders: bool = False, samples: int = 1) -> Rounds:
    """Swiss system: ceil(log2 n) rounds by default; each round pairs neighbours in the standings
    (avoiding rematches and same-team pairs where possible); the best rate of 'correct' verdicts
    wins."""
    team_of = _team_function(n, teams, "swiss")
    rng = random.Random(seed)
    rounds = math.ceil(math.log2(n)) if rounds is None else rounds
    points, games = {i: 0.0 for i in range(n)}, {i: 0 for i in range(n)}
    met: set[tuple[int, int]] = set()
    result = TournamentResult(winner=0, both_orders=both_orders)
    order = list(range(n))
    rng.shuffle(order)
    for r in range(1, rounds + 1):
        standing = sorted(order, key=lambda i: -points[i] / max(games[i], 1))
        pairs = []
        while len(standing) > 1:
            a = standing.pop(0)
            fresh = [b for b in standing
                     if (min(a, b), max(a, b)) not in met and team_of(a) != team_of(b)]
            if not fresh:
                continue
            b = fresh[0]
            standing.remove(b)
            pairs.append((a, b))
            met.add((min(a, b), max(a, b)))
        if not pairs:
            break
        result.rounds = r
        judged, calls = yield from _judge_round(pairs, both_orders, samples)
        result.judge_calls += calls
        _tally(result, r, judged, points, games)
    result.points = points
    result.winner = _standings_winner(points, games, rng)
    return result


def round_robin(n: int, compare: Compare, teams: Sequence[Hashable] | None = None, seed: int = 0,
                *, both_orders: bool = False, samples: int = 1) -> TournamentResult:
    """Every cross-team pair judged in one batch; see `round_robin_rounds`."""
    return play(round_robin_rounds(n, teams, seed, both_orders=both_orders, samples=samples),
                compare)


def swiss(n: int, compare: Compare, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
          rounds: int | None = None, both_orders: bool = False,
          samples: int = 1) -> TournamentResult:
    """Swiss system; see `swiss_rounds`."""
    rounds_of = swiss_rounds(n, teams, seed, rounds=rounds, both_orders=both_orders,
                             samples=samples)
    return play(rounds_of, compare)


FORMATS: dict[str, Callable[..., Rounds]] = {
    "knockout": knockout_rounds, "round_robin": round_robin_rounds, "swiss": swiss_rounds,
}

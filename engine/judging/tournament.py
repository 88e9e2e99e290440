"""Tournaments over an abstract batched judge: knockout (PairJudge), round-robin and Swiss.

Pure logic, no model. Each format is a generator that yields one round's matches (a list of (a, b)
pairs) and is sent back their verdicts, so a caller can run many tournaments at once and submit a
question's next round the moment its last one is judged (`PairJudge.best_of_n_many`). The plain
functions `knockout`, `round_robin` and `swiss` drive one with `compare(pairs) -> verdicts`, called
once per round. A verdict says whether the judge found each side correct (True / False / None for
unparseable, which counts as incorrect).
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Generator, Hashable, NamedTuple, Sequence


class Verdict(NamedTuple):
    a_correct: bool | None
    b_correct: bool | None


Compare = Callable[[list[tuple[int, int]]], Sequence[tuple[bool | None, bool | None]]]
Pairs = list[tuple[int, int]]
Rounds = Generator[Pairs, Sequence[tuple[bool | None, bool | None]], "TournamentResult"]


@dataclass
class Match:
    round: int
    a: int
    b: int
    # As asked (both orders: the swapped ones mapped back to a, b); empty if not judged.
    verdicts: list[Verdict]
    a_score: float  # fraction of judgments that found a correct
    b_score: float
    advanced: list[int]  # knockout: who went on from this match

    @property
    def judged(self) -> bool:
        return bool(self.verdicts)


@dataclass
class TournamentResult:
    winner: int
    matches: list[Match] = field(default_factory=list)
    judge_calls: int = 0
    rounds: int = 0
    points: dict[int, float] = field(default_factory=dict)  # round-robin / Swiss standings


def _judge_round(pairs: Pairs, both_orders: bool, samples: int):
    """Yield every judgment of a round at once; returns (per pair (verdicts, a_score, b_score),
    calls)."""
    if not pairs:
        return [], 0
    asked: Pairs = []
    for a, b in pairs:
        for _ in range(samples):
            asked.append((a, b))
            if both_orders:
                asked.append((b, a))
    answers = list((yield asked))
    if len(answers) != len(asked):
        raise ValueError(f"compare returned {len(answers)} verdicts for {len(asked)} pairs")
    per_pair = len(asked) // len(pairs)
    results = []
    for k, (a, b) in enumerate(pairs):
        verdicts = []
        mine = slice(k * per_pair, (k + 1) * per_pair)
        for (x, _), answer in zip(asked[mine], answers[mine]):
            v = Verdict(*answer)
            verdicts.append(v if x == a else Verdict(v.b_correct, v.a_correct))
        a_score = sum(v.a_correct is True for v in verdicts) / len(verdicts)
        b_score = sum(v.b_correct is True for v in verdicts) / len(verdicts)
        results.append((verdicts, a_score, b_score))
    return results, len(asked)


def _team_function(n: int, teams: Sequence[Hashable] | None,
                   fmt: str) -> Callable[[int], Hashable]:
    if n < 1:
        raise ValueError(f"{fmt} needs at least one candidate")
    if teams is None:
        return lambda i: i
    if len(teams) != n:
        raise ValueError(f"{len(teams)} teams for {n} candidates")
    return lambda i: teams[i]


def _pair_across_teams(players: list[int], team_of: Callable[[int], Hashable], rng: random.Random
                       ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int]]:
    """(cross-team pairs, same-team pairs, byes): as many cross-team pairs as the teams allow."""
    teams: dict[Hashable, list[int]] = defaultdict(list)
    for p in players:
        teams[team_of(p)].append(p)
    pools = list(teams.values())
    rng.shuffle(pools)
    cross = []
    while True:
        pools = [pool for pool in pools if pool]
        if len(pools) < 2:
            break
        pools.sort(key=len, reverse=True)  # stable: equal sizes keep their shuffled order
        cross.append((pools[0].pop(), pools[1].pop()))
    rest = pools[0] if pools else []
    same = [(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
    byes = [rest[-1]] if len(rest) % 2 else []
    rng.shuffle(cross)
    return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in cross], same, byes


def knockout_rounds(n: int, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
                    both_orders: bool = False, samples: int = 1) -> Rounds:
    """Best-of-n by knockout (PairJudge): at most n - 1 judge calls with one order and one sample.

    Candidates with the same team (final answer) never meet in a judged match; correct beats
    incorrect, both correct advances one, both incorrect eliminates both; if a round eliminates
    everyone one of its players survives at random. Stops at one survivor or one team.
    `both_orders` judges each pair as (a, b) and (b, a); `samples` repeats each judgment; the side
    found correct more often wins, an even split with at least half correct counts as both correct.
    """
    team_of = _team_function(n, teams, "knockout")
    rng = random.Random(seed)
    survivors = list(range(n))
    rng.shuffle(survivors)
    result = TournamentResult(winner=survivors[0])
    while len(survivors) > 1 and len({team_of(s) for s in survivors}) > 1:
        result.rounds += 1
        cross, same, byes = _pair_across_teams(survivors, team_of, rng)
        judged, calls = yield from _judge_round(cross, both_orders, samples)
        result.judge_calls += calls
        advancing = list(byes)
        for a, b in same:
            keep = rng.choice((a, b))
            advancing.append(keep)
            result.matches.append(Match(result.rounds, a, b, [], 1.0, 1.0, [keep]))
        for (a, b), (verdicts, a_score, b_score) in zip(cross, judged):
            if a_score != b_score:
                advanced = [a if a_score > b_score else b]
            elif a_score >= 0.5:
                advanced = [rng.choice((a, b))]
            else:
                advanced = []
            advancing.extend(advanced)
            result.matches.append(Match(result.rounds, a, b, verdicts, a_score, b_score, advanced))
        survivors = advancing or [rng.choice(survivors)]
    result.winner = survivors[0] if len(survivors) == 1 else rng.choice(survivors)
    return result


def _tally(result: TournamentResult, round_no: int, pairs: list[tuple[int, int]],
           judged: list[tuple[list[Verdict], float, float]], points: dict[int, float],
           games: dict[int, int]) -> None:
    for (a, b), (verdicts, a_score, b_score) in zip(pairs, judged):
        points[a] += a_score
        points[b] += b_score
        games[a] += 1
        games[b] += 1
        result.matches.append(Match(round_no, a, b, verdicts, a_score, b_score, []))


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
    result = TournamentResult(winner=0, rounds=1 if pairs else 0)
    judged, result.judge_calls = yield from _judge_round(pairs, both_orders, samples)
    points, games = {i: 0.0 for i in range(n)}, {i: 0 for i in range(n)}
    _tally(result, 1, pairs, judged, points, games)
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
    result = TournamentResult(winner=0)
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
        _tally(result, r, pairs, judged, points, games)
    result.points = points
    result.winner = _standings_winner(points, games, rng)
    return result


def play(rounds: Rounds, compare: Compare) -> TournamentResult:
    """Run a tournament generator to the end, judging each round with one `compare` call."""
    try:
        pairs = next(rounds)
        while True:
            pairs = rounds.send(compare(pairs))
    except StopIteration as done:
        return done.value


def knockout(n: int, compare: Compare, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
             both_orders: bool = False, samples: int = 1) -> TournamentResult:
    """Best-of-n by knockout; see `knockout_rounds` for the rules and options."""
    return play(knockout_rounds(n, teams, seed, both_orders=both_orders, samples=samples), compare)


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

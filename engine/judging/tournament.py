"""Tournaments over an abstract batched judge: the knockout (PairJudge) and what every format
shares.

Pure logic, no model. Each format is a generator that yields one round's matches (a list of (a, b)
pairs) and is sent back their verdicts, so a caller can run many tournaments at once and submit a
question's next round the moment its last one is judged (`PairJudge.best_of_n_many`). The plain
functions `knockout`, `round_robin` and `swiss` (kojudge.judging.formats) drive one with
`compare(pairs) -> verdicts`, called once per round. A verdict says whether the judge found each
side correct (True / False / None for unparseable, which counts as incorrect); a ScoredVerdict
adds the judge's p(correct) per side.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Generator, Hashable, NamedTuple, Sequence


class Verdict(NamedTuple):
    a_correct: bool | None
    b_correct: bool | None


class ScoredVerdict(NamedTuple):
    """A verdict with the judge's own p(correct) for each side (None where not scored)."""

    a_correct: bool | None
    b_correct: bool | None
    a_confidence: float | None
    b_confidence: float | None


Answer = tuple  # a Verdict, a ScoredVerdict, or any tuple that starts like one
Compare = Callable[[list[tuple[int, int]]], Sequence[Answer]]
Pairs = list[tuple[int, int]]
Rounds = Generator[Pairs, Sequence[Answer], "TournamentResult"]
PAIRINGS = ("random_bye", "largest_team_bye")
TIE_BREAKS = ("random", "confidence")


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
    a_confidence: float | None = None  # the judge's mean p(correct) for a, where scored
    b_confidence: float | None = None
    flipped: bool = False  # judged in both orders, and the two orders disagree on who is better

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
    both_orders: bool = False

    @property
    def flip_rate(self) -> float | None:
        """With both orders, the share of judged matches whose verdicts flip with the order."""
        judged = [m for m in self.matches if m.judged]
        if not self.both_orders or not judged:
            return None
        return sum(m.flipped for m in judged) / len(judged)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _order(verdicts: list[Verdict]) -> int:
    """-1, 0 or 1: whether a, neither or b was found correct more often."""
    a = sum(v.a_correct is True for v in verdicts)
    b = sum(v.b_correct is True for v in verdicts)
    return (b > a) - (a > b)


def _judge_round(pairs: Pairs, both_orders: bool, samples: int):
    """Yield every judgment of a round at once; returns (a Match per pair, judge calls), their
    rounds and `advanced` left for the format to fill in."""
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
    matches = []
    for k, (a, b) in enumerate(pairs):
        verdicts, confidences, swapped = [], [], []
        mine = slice(k * per_pair, (k + 1) * per_pair)
        for (x, _), answer in zip(asked[mine], answers[mine]):
            v = Verdict(*answer[:2])
            confidence = tuple(answer[2:4]) if len(answer) >= 4 else (None, None)
            if x != a:
                v = Verdict(v.b_correct, v.a_correct)
                confidence = confidence[::-1]
            verdicts.append(v)
            confidences.append(confidence)
            swapped.append(x != a)
        a_score = sum(v.a_correct is True for v in verdicts) / len(verdicts)
        b_score = sum(v.b_correct is True for v in verdicts) / len(verdicts)
        forward = [v for v, s in zip(verdicts, swapped) if not s]
        backward = [v for v, s in zip(verdicts, swapped) if s]
        flipped = bool(backward) and _order(forward) != _order(backward)
        matches.append(Match(0, a, b, verdicts, a_score, b_score, [],
                             _mean([c[0] for c in confidences]),
                             _mean([c[1] for c in confidences]), flipped))
    return matches, len(asked)


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


def knockout_pairs(players: list[int], team_of: Callable[[int], Hashable], rng: random.Random,
                   pairing: str = "random_bye") -> tuple[Pairs, Pairs, list[int]]:
    """One knockout round's (cross-team pairs, same-team pairs, byes). random_bye (the paper's):
    with an odd count a uniformly random player sits out, and the rest are paired with as many
    cross-team pairs as the teams allow. largest_team_bye: the bye falls to whoever is left of
    the largest team after that pairing (a hidden majority-vote prior)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    byes = []
    if pairing == "random_bye" and len(players) % 2:
        byes = [rng.choice(players)]
        players = [p for p in players if p != byes[0]]
    cross, same, left = _pair_across_teams(players, team_of, rng)
    return cross, same, byes + left


def knockout_rounds(n: int, teams: Sequence[Hashable] | None = None, seed: int = 0, *,
                    both_orders: bool = False, samples: int = 1, pairing: str = "random_bye",
                    tie_break: str = "random", gate_flips: bool = False) -> Rounds:
    """Best-of-n by knockout (PairJudge): at most n - 1 judge calls with one order and one sample.

    Candidates with the same team (final answer) never meet in a judged match; correct beats
    incorrect, both correct advances one, both incorrect eliminates both; if a round eliminates
    everyone one of its players survives at random. Stops at one survivor or one team.
    `both_orders` judges each pair as (a, b) and (b, a); `samples` repeats each judgment; the side
    found correct more often wins, an even split with at least half correct counts as both
    correct. `pairing`: see `knockout_pairs`. `tie_break="confidence"`: a both-correct match
    advances the side the judge was more confident of (ScoredVerdicts), else one at random.
    `gate_flips`: a match whose verdicts flip with the order is a tie broken by confidence.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    team_of = _team_function(n, teams, "knockout")
    rng = random.Random(seed)
    survivors = list(range(n))
    rng.shuffle(survivors)
    result = TournamentResult(winner=survivors[0], both_orders=both_orders)
    while len(survivors) > 1 and len({team_of(s) for s in survivors}) > 1:
        result.rounds += 1
        cross, same, byes = knockout_pairs(survivors, team_of, rng, pairing)
        judged, calls = yield from _judge_round(cross, both_orders, samples)
        result.judge_calls += calls
        advancing = list(byes)
        for a, b in same:
            keep = rng.choice((a, b))
            advancing.append(keep)
            result.matches.append(Match(result.rounds, a, b, [], 1.0, 1.0, [keep]))
        for match in judged:
            match.round = result.rounds
            match.advanced = _advance(match, rng, tie_break, gate_flips)
            advancing.extend(match.advanced)
            result.matches.append(match)
        survivors = advancing or [rng.choice(survivors)]
    result.winner = survivors[0] if len(survivors) == 1 else rng.choice(survivors)
    return result


def _advance(match: Match, rng: random.Random, tie_break: str, gate_flips: bool) -> list[int]:
    """Who goes on from a judged knockout match."""
    if gate_flips and match.flipped:
        return [_more_confident(match, rng)]
    if match.a_score != match.b_score:
        return [match.a if match.a_score > match.b_score else match.b]
    if match.a_score < 0.5:
        return []  # both incorrect
    if tie_break == "confidence":
        return [_more_confident(match, rng)]
    return [rng.choice((match.a, match.b))]


def _more_confident(match: Match, rng: random.Random) -> int:
    a, b = match.a_confidence, match.b_confidence
    if a is None or b is None or a == b:
        return rng.choice((match.a, match.b))
    return match.a if a > b else match.b


def play(rounds: Rounds, compare: Compare) -> TournamentResult:
    """Run a tournament generator to the end, judging each round with one `compare` call."""
    try:
        pairs = next(rounds)
        while True:
            pairs = rounds.send(compare(pairs))
    except StopIteration as done:
        return done.value


def knockout(n: int, compare: Compare, teams: Sequence[Hashable] | None = None, seed: int = 0,
             **options) -> TournamentResult:
    """Best-of-n by knockout; see `knockout_rounds` for the rules and options."""
    return play(knockout_rounds(n, teams, seed, **options), compare)

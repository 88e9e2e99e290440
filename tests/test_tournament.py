"""Tournament logic against abstract judges (no model): properties with hypothesis, and fixed cases."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kojudge
from kojudge.judging.tournament import Verdict

# A field: per candidate (correct?, team). Correct candidates share the team "right".
fields = st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=40).map(
    lambda cands: [(ok, "right" if ok else f"wrong{t}") for ok, t in cands])


def perfect_judge(field, log=None):
    def compare(pairs):
        if log is not None:
            log.append(list(pairs))
        return [Verdict(field[a][0], field[b][0]) for a, b in pairs]
    return compare


def noisy_judge(seed):
    rng = random.Random(seed)

    def compare(pairs):
        return [Verdict(rng.choice([True, False, None]), rng.choice([True, False, None])) for _ in pairs]
    return compare


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(0, 10**6), st.booleans())
def test_knockout_makes_at_most_n_minus_1_judge_calls(n, seed, with_teams):
    teams = [random.Random(seed + i).randrange(3) for i in range(n)] if with_teams else None
    result = kojudge.knockout(n, noisy_judge(seed), teams=teams, seed=seed)
    assert result.judge_calls <= n - 1
    assert 0 <= result.winner < n
    assert result.judge_calls == sum(m.judged for m in result.matches)


@settings(max_examples=200, deadline=None)
@given(fields, st.integers(0, 10**6), st.booleans())
def test_knockout_with_a_perfect_judge_finds_a_correct_candidate(field, seed, with_teams):
    teams = [team for _, team in field] if with_teams else None
    result = kojudge.knockout(len(field), perfect_judge(field), teams=teams, seed=seed)
    if any(ok for ok, _ in field):
        assert field[result.winner][0]


@settings(max_examples=200, deadline=None)
@given(fields, st.integers(0, 10**6))
def test_same_team_pairs_never_reach_the_judge(field, seed):
    teams = [team for _, team in field]
    log = []
    result = kojudge.knockout(len(field), perfect_judge(field, log), teams=teams, seed=seed)
    assert all(teams[a] != teams[b] for batch in log for a, b in batch)
    assert len(log) <= result.rounds  # one compare call per round at most


@settings(max_examples=100, deadline=None)
@given(fields, st.integers(0, 10**6))
def test_knockout_is_deterministic_for_a_seed(field, seed):
    teams = [team for _, team in field]
    first = kojudge.knockout(len(field), noisy_judge(7), teams=teams, seed=seed)
    second = kojudge.knockout(len(field), noisy_judge(7), teams=teams, seed=seed)
    assert (first.winner, first.judge_calls, first.rounds) == (second.winner, second.judge_calls, second.rounds)
    assert [(m.a, m.b, m.advanced) for m in first.matches] == [(m.a, m.b, m.advanced) for m in second.matches]


def test_knockout_rules_on_a_fixed_bracket():
    # Two candidates, different teams: each verdict pattern decides as the paper says.
    for verdict, advanced in [((True, False), [0]), ((False, True), [1]), ((None, True), [1])]:
        res = kojudge.knockout(2, lambda pairs, v=verdict: [v if pairs[0] == (0, 1) else v[::-1]], seed=1)
        assert res.matches[0].advanced == advanced and res.winner == advanced[0] and res.judge_calls == 1
    both_wrong = kojudge.knockout(2, lambda pairs: [(False, None)], seed=3)
    assert both_wrong.matches[0].advanced == [] and both_wrong.winner in (0, 1)  # one kept at random
    assert kojudge.knockout(1, lambda pairs: pytest.fail("no call for one candidate")).winner == 0
    same_team = kojudge.knockout(5, lambda pairs: pytest.fail("no call within a team"), teams=["x"] * 5)
    assert same_team.judge_calls == 0 and same_team.rounds == 0


def test_knockout_odd_field_gives_a_bye():
    res = kojudge.knockout(5, perfect_judge([(True, 0)] * 5), seed=0)
    first_round = [m for m in res.matches if m.round == 1]
    assert len(first_round) == 2  # 5 players: 2 matches and a bye


def test_both_orders_cancels_a_position_biased_judge():
    field = [(False, "a"), (True, "b")]
    always_first = lambda pairs: [Verdict(True, False) for _ in pairs]  # noqa: E731
    plain = [kojudge.knockout(2, always_first, seed=s).winner for s in range(40)]
    assert set(plain) == {0, 1}  # the winner is whoever was placed first
    truthful_in_b_slot = lambda pairs: [Verdict(True, field[b][0]) for a, b in pairs]  # noqa: E731
    res = kojudge.knockout(2, truthful_in_b_slot, both_orders=True, samples=3, seed=0)
    assert res.judge_calls == 6
    assert res.winner == 1  # correct both ways round, the wrong one only when placed first


def test_round_robin_and_swiss_find_the_correct_candidate():
    field = [(False, "w1"), (False, "w2"), (True, "r"), (False, "w1"), (True, "r"), (False, "w3")]
    teams = [t for _, t in field]
    rr = kojudge.round_robin(len(field), perfect_judge(field), teams=teams, seed=0)
    cross = sum(teams[a] != teams[b] for a in range(6) for b in range(a + 1, 6))
    assert rr.judge_calls == cross and field[rr.winner][0]
    sw = kojudge.swiss(len(field), perfect_judge(field), teams=teams, seed=0)
    assert sw.rounds <= 3 and sw.judge_calls <= 3 * 3 and field[sw.winner][0]
    met = [(min(m.a, m.b), max(m.a, m.b)) for m in sw.matches]
    assert len(met) == len(set(met))  # no rematches


def test_compare_must_answer_every_pair():
    with pytest.raises(ValueError, match="returned 0 verdicts for 1 pairs"):
        kojudge.knockout(2, lambda pairs: [])


# ---- the bracket: byes, seeds, confidence ------------------------------------------------------------

def bye_counts(pairing, trials=5000):
    from kojudge.judging.tournament import knockout_pairs

    teams = ["A", "A", "A", "B", "C"]
    counts = [0] * 5
    for seed in range(trials):
        _, _, byes = knockout_pairs(list(range(5)), teams.__getitem__, random.Random(seed), pairing)
        assert len(byes) == 1
        counts[byes[0]] += 1
    return [c / trials for c in counts]


def test_the_bye_falls_uniformly_at_random_by_default():
    for share in bye_counts("random_bye"):
        assert abs(share - 0.2) <= 0.02


def test_largest_team_bye_keeps_the_old_rule():
    shares = bye_counts("largest_team_bye")
    assert sum(shares[:3]) == 1.0  # always a member of the largest team


def scored_judge(field, confidence):
    """Correct verdicts; each side's confidence from `confidence[candidate]`."""
    def compare(pairs):
        return [kojudge.ScoredVerdict(field[a], field[b], confidence[a], confidence[b])
                for a, b in pairs]
    return compare


def test_confidence_breaks_both_correct_ties():
    field = [True] * 4
    confidence = [0.6, 0.9, 0.7, 0.8]
    for seed in range(20):
        result = kojudge.knockout(4, scored_judge(field, confidence), seed=seed,
                                  tie_break="confidence")
        assert result.winner == 1
        first = [m for m in result.matches if m.round == 1]
        assert all(m.advanced == [m.a if confidence[m.a] > confidence[m.b] else m.b] for m in first)
        assert all(m.a_confidence == confidence[m.a] for m in result.matches)
    winners = {kojudge.knockout(4, scored_judge(field, confidence), seed=s).winner for s in range(40)}
    assert len(winners) > 1  # without the tie-break, a both-correct match is a coin flip


def test_flipped_matches_are_counted_and_can_be_gated():
    """A judge that always calls the side shown first correct: every match flips with the order;
    gated, the side it was more confident of goes on."""
    confidence = [0.2, 0.9, 0.4, 0.6]

    def first_shown(pairs):
        return [kojudge.ScoredVerdict(True, False, confidence[a], confidence[b]) for a, b in pairs]

    plain = kojudge.knockout(4, first_shown, seed=3, both_orders=True)
    assert plain.flip_rate == 1.0
    gated = kojudge.knockout(4, first_shown, seed=3, both_orders=True, gate_flips=True)
    assert gated.winner == 1 and all(m.flipped for m in gated.matches)
    assert kojudge.knockout(4, first_shown, seed=3).flip_rate is None  # one order: nothing to flip


def test_knockout_options_are_checked():
    with pytest.raises(ValueError, match="pairing"):
        kojudge.knockout(3, perfect_judge([(True, 0)] * 3), pairing="best")
    with pytest.raises(ValueError, match="tie_break"):
        kojudge.knockout(3, perfect_judge([(True, 0)] * 3), tie_break="coin")

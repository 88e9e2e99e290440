"""A synthetic best-of-N task with checkable answers: multi-digit addition, worked column by column.

Candidates are right or carry one slip. Slips cluster the way real model errors do: each problem
has a few systematic slips (a dropped carry in one column, a digit misread in an operand, a column
summed one off) with uneven weights, so several wrong candidates share a wrong answer and majority
vote can fail.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SLIP_KINDS = ("dropped_carry", "misread_digit", "column_off_by_one")


@dataclass(frozen=True)
class Slip:
    kind: str
    column: int  # 0 = units
    digit: int = 0  # misread_digit: the digit read instead; column_off_by_one: +1 or -1


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    digits: int

    @property
    def question(self) -> str:
        return f"What is {self.a} + {self.b}?"

    @property
    def answer(self) -> int:
        return self.a + self.b


@dataclass(frozen=True)
class Candidate:
    text: str
    answer: int
    correct: bool


def _digits(n: int, width: int) -> list[int]:
    return [(n // 10**i) % 10 for i in range(width)]


def worked_solution(problem: Problem, slip: Slip | None = None) -> Candidate:
    """Column-by-column addition with carries, optionally carrying one slip through to the answer.
    Short lines keep judge prompts short: a tiny judge trains on this machine in minutes."""
    width = problem.digits
    a, b = _digits(problem.a, width), _digits(problem.b, width)
    if slip is not None and slip.kind == "misread_digit":
        b[slip.column] = slip.digit
    lines = []
    carry = 0
    out = []
    for col in range(width):
        total = a[col] + b[col] + carry
        if slip is not None and slip.kind == "column_off_by_one" and col == slip.column:
            total = max(0, total + slip.digit)
        digit = total % 10
        new_carry = total // 10
        if slip is not None and slip.kind == "dropped_carry" and col == slip.column:
            new_carry = 0
        lines.append(f"col {col + 1}: {a[col]}+{b[col]}+{carry}={total}, carry {new_carry}")
        out.append(digit)
        carry = new_carry
    if carry:
        out.append(carry)
    answer = int("".join(map(str, reversed(out))))
    text = "\n".join(lines) + f"\nanswer \\boxed{{{answer}}}"
    return Candidate(text, answer, answer == problem.answer)


def _possible_slips(problem: Problem, rng: random.Random) -> list[Slip]:
    """Slips that change this problem's answer (a dropped carry needs a carry to drop)."""
    width = problem.digits
    slips = []
    for col in range(width):
        slips.append(Slip("dropped_carry", col))
        slips.append(Slip("column_off_by_one", col, rng.choice((-1, 1))))
        true_digit = _digits(problem.b, width)[col]
        slips.append(Slip("misread_digit", col,
                          rng.choice([d for d in range(10) if d != true_digit])))
    return [s for s in slips if not worked_solution(problem, s).correct]


def make_problem(rng: random.Random, digits: int = 4) -> Problem:
    low = 10 ** (digits - 1)
    high = 10 ** digits - 1
    return Problem(rng.randint(low, high), rng.randint(low, high), digits)


def sample_candidates(problem: Problem, n: int, rng: random.Random,
                      solve_rate: float | None = None,
                      slips_per_problem: int = 3) -> list[Candidate]:
    """n candidates: each right with the problem's solve rate, else one of the problem's systematic
    slips drawn with uneven weights (so wrong answers repeat)."""
    solve_rate = rng.betavariate(1.5, 1.5) if solve_rate is None else solve_rate
    options = _possible_slips(problem, rng)
    slips = rng.sample(options, min(slips_per_problem, len(options)))
    weights = [rng.gammavariate(0.7, 1.0) + 1e-3 for _ in slips]
    candidates = []
    for _ in range(n):
        if not slips or rng.random() < solve_rate:
            candidates.append(worked_solution(problem))
        else:
            candidates.append(worked_solution(problem, rng.choices(slips, weights=weights)[0]))
    return candidates


def disagreeing_pairs(candidates: list[Candidate]) -> list[tuple[Candidate, Candidate]]:
    """Ordered pairs of candidates with different final answers: the matches a knockout judges
    (equal answers need no judge)."""
    return [(a, b) for a in candidates for b in candidates if a.answer != b.answer]


def reference_check(problem: Problem) -> str:
    """The judge's own recomputation, in a form no candidate uses (so a judge trained on it cannot
    learn to copy a candidate's work): one [a|b|carry-in:digit] cell per column, units first, each
    cell needing only the question and the cell before it, then the sum written high to low."""
    width = problem.digits
    a, b = _digits(problem.a, width), _digits(problem.b, width)
    cells = []
    carry = 0
    for col in range(width):
        total = a[col] + b[col] + carry
        cells.append(f"[{a[col]}|{b[col]}|{carry}:{total % 10}]")
        carry = total // 10
    return f"check {''.join(cells)} = {problem.answer}"


def compare_digits(answer: int, truth: int) -> str:
    """Digit by digit, right-aligned: per digit theirs, mine, then = (same) or x (different), so
    each mark compares the two characters just before it (a tiny judge did not learn to compare
    digits of two numbers written apart: "10914 vs 10922 =====")."""
    mine, theirs = str(truth), str(answer)
    width = max(len(mine), len(theirs))
    mine, theirs = mine.rjust(width, "_"), theirs.rjust(width, "_")
    return " ".join(f"{t}{m}{'=' if t == m else 'x'}" for t, m in zip(theirs, mine))


def said(label: str, answer: int, problem: Problem) -> str:
    """The line that reads a response's final answer, right-aligned to the widest possible sum, so
    each digit of it sits at a fixed place, as in the comparison."""
    return f"{label} says {str(answer).rjust(problem.digits + 1, '_')}"


def judgment(problem: Problem, a: Candidate, b: Candidate) -> str:
    """A PairJudge-format judgment: the judge's own check, both final answers read, each compared
    with the check digit by digit, then the verdict tags.

    The check comes right after the question, where the check stage trains it: with the answers read
    in between, a tiny judge copied their digits into its column sums instead of adding (even when
    those answers were far off). Read after the check, it may restate its own sum instead of reading
    theirs; the far-off responses of the training data make that fail on every digit."""
    verdict = {True: "Correct", False: "Incorrect"}
    return "\n".join([
        reference_check(problem),
        said("A", a.answer, problem),
        said("B", b.answer, problem),
        f"A {compare_digits(a.answer, problem.answer)}",
        f"B {compare_digits(b.answer, problem.answer)}",
        f"<resp_a_judge>{verdict[a.correct]}</resp_a_judge>",
        f"<resp_b_judge>{verdict[b.correct]}</resp_b_judge>",
    ])


def pointwise_score(candidate: Candidate, problem: Problem) -> int:
    """10 for the right sum; a wrong one gets at most 3, one point per matching digit."""
    if candidate.correct:
        return 10
    mine, theirs = str(problem.answer), str(candidate.answer)
    width = max(len(mine), len(theirs))
    return min(3, sum(x == y for x, y in zip(mine.rjust(width), theirs.rjust(width))))


def pointwise_judgment(problem: Problem, candidate: Candidate) -> str:
    """A PaTaRM-format judgment of one candidate: recompute, read its answer, a rubric, the
    comparison, a 0-10 score (in that order for the reasons given in `judgment`)."""
    return (f"<think>{reference_check(problem)}\n{said('R', candidate.answer, problem)}</think>"
            f"<generate_rubrics>every digit must match</generate_rubrics>"
            f"<eval>{compare_digits(candidate.answer, problem.answer)}</eval>"
            f"<answer>{pointwise_score(candidate, problem)}</answer>")

"""The judging protocols: pairwise tournaments (PairJudge) and pointwise rubric scoring (PaTaRM)."""

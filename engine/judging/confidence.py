"""Verdict confidence: the judge's own p(correct) for each side of a match, from its probabilities
of the "Correct" and "Incorrect" label sequences right after that side's opening verdict tag, given
the judgment so far (scored through Engine.score, so any tokenizer works)."""
from __future__ import annotations

import math

from kojudge.model.tokenizer import Tokenizer

LABELS = ("Correct", "Incorrect")
SIDES = ("a", "b")


def opening_tag(side: str) -> str:
    return f"<resp_{side}_judge>"


def label_context(tokenizer: Tokenizer, prompt_ids: list[int], output_ids: list[int], text: str,
                  side: str) -> list[int]:
    """The judge prompt and its judgment up to and including the side's last opening tag (the
    one the parser reads); where the judgment never wrote that tag, all of it and the tag.

    The generated tokens themselves are used where they end exactly at the tag, so the context
    is what the judge saw (and its blocks are still in the prefix cache); else the text is
    tokenized again."""
    tag = opening_tag(side)
    end = text.rfind(tag)
    prefix = text + tag if end < 0 else text[: end + len(tag)]
    if end >= 0:
        k = _tokens_covering(tokenizer, output_ids, len(prefix))
        if k is not None and tokenizer.decode(output_ids[:k]) == prefix:
            return prompt_ids + output_ids[:k]
    return prompt_ids + tokenizer.encode(prefix, add_special_tokens=False)


def _tokens_covering(tokenizer: Tokenizer, ids: list[int], length: int) -> int | None:
    """The fewest leading tokens of `ids` whose text has at least `length` characters."""
    low = 0
    high = len(ids)
    if len(tokenizer.decode(ids)) < length:
        return None
    while low < high:
        middle = (low + high) // 2
        if len(tokenizer.decode(ids[:middle])) >= length:
            high = middle
        else:
            low = middle + 1
    return low


def p_correct(correct_logprob: float, incorrect_logprob: float) -> float:
    """P(Correct) / (P(Correct) + P(Incorrect)) from the two label sequences' log-probs."""
    return 1.0 / (1.0 + math.exp(incorrect_logprob - correct_logprob))

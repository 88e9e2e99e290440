"""Teacher-forced next-token accuracy of a demo judge on unseen judge conversations, by part of the
judgment: the check's operands (a, b), carries (cin) and column digits, the answers it reads (says_A/B),
the digit pairs of the comparison lines (digits_A/B) and their = / x marks (mark_A/B), and the verdicts.
Only free-running evaluation says whether a judge works (bench/demo_judge_free_running.py); this says
which part is not learned yet.

    python bench/demo_judge_teacher_forced.py JUDGE_DIR [--conversations 64] [--answer-only 0.5]
"""
from __future__ import annotations

import argparse
import re
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kojudge.train.recipes.demo_judge import judge_conversations

CELL = re.compile(r"\[(\d)\|(\d)\|(\d):(\d)\]")


def token_kinds(judgment: str) -> list[str]:
    """A label per character of the judgment (the byte-level tokenizer has one token per character)."""
    kinds = ["other"] * len(judgment)
    for m in CELL.finditer(judgment):
        for group, kind in zip(range(1, 5), ("a", "b", "cin", "digit")):
            kinds[m.start(group)] = kind
    for m in re.finditer(r"([AB]) says _*(\d+)", judgment):
        kinds[m.start(2): m.end(2)] = ["says_" + m.group(1)] * (m.end(2) - m.start(2))
    for m in re.finditer(r"^([AB]) ([_\d=x ]+)$", judgment, re.MULTILINE):
        for i in range(m.start(2), m.end(2)):
            if judgment[i] != " ":
                kinds[i] = ("mark_" if judgment[i] in "=x" else "digits_") + m.group(1)
    for m in re.finditer(r"<resp_[ab]_judge>(\w)", judgment):
        kinds[m.start(1)] = "verdict"
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("judge")
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--answer-only", type=float, default=0.5, help="share of prompts showing only final lines")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.judge)
    model = AutoModelForCausalLM.from_pretrained(args.judge).eval()
    right, total = Counter(), Counter()
    for conversation in judge_conversations(args.conversations, seed=999, answer_only=args.answer_only):
        prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        judgment = conversation[-1]["content"]
        ids = tokenizer(prompt + judgment, return_tensors="pt").input_ids
        start = len(tokenizer(prompt).input_ids)
        with torch.no_grad():
            predicted = model(ids).logits[0, :-1].argmax(-1)
        for i, kind in enumerate(token_kinds(judgment)):
            right[kind] += int(predicted[start + i - 1]) == int(ids[0, start + i])
            total[kind] += 1
    print(args.judge, {kind: round(right[kind] / total[kind], 3) for kind in sorted(total)})


if __name__ == "__main__":
    main()

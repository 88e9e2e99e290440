"""Teacher-forced next-token accuracy of a demo judge on unseen judge conversations, by part of the
judgment: the check's operands (a, b), carries (cin) and column digits, the answers it reads (says_A/B),
the answers it restates in the comparison lines (theirs_A/B), the comparison marks and the verdicts.

    python bench/demo_judge_teacher_forced.py JUDGE_DIR [CONVERSATIONS] [ANSWER_ONLY_FRACTION]
"""
import re
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from kojudge.train.demo_judge import judge_conversations
d = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d).eval()
convs = judge_conversations(n, seed=999, answer_only=float(sys.argv[3]) if len(sys.argv) > 3 else 0.5)
stats = {}
for c in convs:
    prompt = tok.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True)
    full = prompt + c[-1]["content"]
    ids = tok(full, return_tensors="pt").input_ids; start = len(tok(prompt).input_ids)
    with torch.no_grad(): pred = model(ids).logits[0, :-1].argmax(-1)
    target = c[-1]["content"]; cell = re.compile(r"\[(\d)\|(\d)\|(\d):(\d)\]")
    kinds = ["other"] * len(target)
    for m in cell.finditer(target):
        for g, k in zip(range(1, 5), ("a", "b", "cin", "digit")): kinds[m.start(g)] = k
    for m in re.finditer(r"([AB]) says (\d+)", target):
        for i in range(m.start(2), m.end(2)): kinds[i] = "says_" + m.group(1)
    for m in re.finditer(r"<resp_[ab]_judge>(\w)", target): kinds[m.start(1)] = "verdict"
    for m in re.finditer(r"\n([AB]) ([_\d]+) vs [_\d]+ ([=x]+)", target):
        for i in range(m.start(2), m.end(2)): kinds[i] = "theirs_" + m.group(1)
        for i in range(m.start(3), m.end(3)): kinds[i] = "marks"
    for i, k in enumerate(kinds):
        pos = start + i  # token index of target char i (byte-level: one char per token)
        ok = int(pred[pos - 1]) == int(ids[0, pos])
        s = stats.setdefault(k, [0, 0]); s[0] += ok; s[1] += 1
print(d, {k: f"{a/b:.3f}" for k, (a, b) in sorted(stats.items())})

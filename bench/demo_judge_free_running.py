"""Free-running diagnosis of a demo judge on held-out pairs (greedy, through the engine): how often its
own check is exactly right, per-cell accuracy, verdict accuracy on right and wrong candidates, and the
(A, B) verdict pattern (a judge stuck in one order shows a single pattern).

    python bench/demo_judge_free_running.py JUDGE_DIR [PAIRS] [answer-only]
"""
import random
import re
import sys

import kojudge
from kojudge.demo import held_out_set
from kojudge.pairjudge import PairJudge, STOP, parse_verdict
from kojudge.sampling import SamplingParams
from kojudge.synthetic import reference_check
judge_dir = sys.argv[1]; npairs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
answer_only = len(sys.argv) > 3
engine = kojudge.Engine(judge_dir)
judge = PairJudge(engine, template=f"{judge_dir}/judge_template.md")
problems, cands = held_out_set(npairs, 8, seed=7)
rng = random.Random(0); items = []
for p, cs in zip(problems, cands):
    pairs = [(a, b) for a in cs for b in cs if a.answer != b.answer]
    if pairs: items.append((p, *rng.choice(pairs)))
show = (lambda t: t.splitlines()[-1]) if answer_only else (lambda t: t)
prompts = [judge.prompt_ids(p.question, show(a.text), show(b.text)) for p, a, b in items]
outs = engine.generate(prompts, SamplingParams(max_tokens=300, stop=[STOP], include_stop_str_in_output=True))
check_ok = cell_ok = cells = 0; right = {True: [0, 0], False: [0, 0]}; aa = {}
for (p, a, b), o in zip(items, outs):
    first = next((l for l in o.text.splitlines() if l.startswith("check")), "")
    ref = reference_check(p)
    check_ok += first == ref
    got, want = re.findall(r"\[[^\]]*\]", first), re.findall(r"\[[^\]]*\]", ref)
    cells += len(want); cell_ok += sum(x == y for x, y in zip(got, want))
    v = parse_verdict(o.text)
    for c, verdict in ((a, v.a_correct), (b, v.b_correct)):
        right[c.correct][0] += verdict == c.correct; right[c.correct][1] += 1
    key = (v.a_correct, v.b_correct); aa[key] = aa.get(key, 0) + 1
print(f"{judge_dir} {'answer-only' if answer_only else 'work shown'}: {len(items)} pairs; own check exact {check_ok/len(items):.2f}, cells {cell_ok/cells:.3f}")
print(f"verdict right on right {right[True][0]}/{right[True][1]}, on wrong {right[False][0]}/{right[False][1]}; (A,B) verdicts {aa}")
print("example:", repr(outs[0].text[:300]))
for (p, a, b), o in list(zip(items, outs))[:3]:
    print(p.question, "| ref:", reference_check(p)); print("  got:", o.text[:120])

"""Builds the small demo judge: a Qwen2-shaped model with a byte-level tokenizer, trained with our
own trainer on PairJudge verdicts for the synthetic addition task (kojudge.synthetic).

    python -m kojudge.train.demo_judge --out runs/demo-judge [--examples 4000] [--steps 1000]

The judgment the judge learns recomputes the sum in its own format, compares each response's answer
digit by digit, then gives the verdict tags; the run writes the model directory plus the compact
judge template it was trained with (judge_template.md), which PairJudge loads by path.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from kojudge.judgment_format import fill_placeholders
from kojudge.pairjudge import SYSTEM_PROMPT
from kojudge.synthetic import judgment, make_problem, sample_candidates

TEMPLATE = ("Question: {question}\n\nResponse A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
            "Check both responses, then give the <resp_a_judge> and <resp_b_judge> verdicts.")


def judge_conversations(count: int, seed: int, candidates_per_problem: int = 8) -> list[list[dict[str, str]]]:
    """Judged pairs as the knockout asks for them: two candidates with different final answers, in
    random order (so both slots see right and wrong answers)."""
    rng = random.Random(seed)
    conversations = []
    while len(conversations) < count:
        problem = make_problem(rng)
        candidates = sample_candidates(problem, candidates_per_problem, rng)
        pairs = [(a, b) for a in candidates for b in candidates if a.answer != b.answer]
        if not pairs:
            continue
        a, b = rng.choice(pairs)
        user = fill_placeholders(TEMPLATE, {"question": problem.question, "response_a": a.text, "response_b": b.text})
        conversations.append([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user},
                              {"role": "assistant", "content": judgment(problem, a, b)}])
    return conversations


def write_data(path: str | Path, count: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in judge_conversations(count, seed)))
    return path


def main(argv: list[str] | None = None) -> None:
    from kojudge.tiny import make_tiny_model
    from kojudge.train.config import SFTConfig
    from kojudge.train.sft import train_sft

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the trained judge directory goes")
    parser.add_argument("--work", help="scratch directory (default: OUT.work)")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    work = Path(args.work or f"{out}.work")
    data = write_data(work / "sft.jsonl", args.examples, args.seed)
    base = make_tiny_model(work / "base", "qwen2", char_tokenizer=True, hidden_size=args.hidden,
                           num_layers=args.layers, num_heads=4, num_kv_heads=2, intermediate_size=4 * args.hidden,
                           max_position_embeddings=4096, initializer_range=0.02, seed=args.seed)
    train_sft(SFTConfig(model=str(base), data=str(data), output=str(work / "sft"), max_length=4096,
                        batch_size=args.batch_size, max_steps=args.steps, lr=args.lr, warmup_steps=20,
                        dtype=args.dtype, save_every=max(100, args.steps // 5), seed=args.seed))
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(work / "sft" / "final", out)
    (out / "judge_template.md").write_text(TEMPLATE + "\n")
    print(f"judge written to {out}")


if __name__ == "__main__":
    main()

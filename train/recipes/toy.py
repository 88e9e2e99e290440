"""A toy preference task for exercising SFT + GRPO-PAR end to end on tiny models (tests,
benchmarks).

Prompts are small sums; the chosen response carries the right sum, the rejected one a slip. The SFT
stage teaches the pointwise judgment format with scores unrelated to the response, so what the judge
learns about telling the sides apart comes from GRPO-PAR alone.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from kojudge.judging.pointwise import pointwise_text
from kojudge.judging.templates import PRIMARY_RUBRICS

JUDGMENT = ("<think>check</think><generate_rubrics>sum</generate_rubrics><eval>ok</eval>"
            "<answer>{score}</answer>")


def write_toy_task(root: str | Path, num_pairs: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Writes pairs.jsonl (preference pairs) and sft.jsonl (format-only judgments) under root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs = []
    for i in range(num_pairs):
        a, b = rng.randrange(50), rng.randrange(50)
        pairs.append({"id": str(i), "prompt": f"{a} + {b} = ?", "chosen": f"good: {a + b}",
                      "rejected": f"bad: {a + b + rng.randrange(1, 9)}", "domain": "math"})
    pairs_path, sft_path = root / "pairs.jsonl", root / "sft.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with sft_path.open("w") as f:
        for p in pairs:
            for side in ("chosen", "rejected"):
                user = pointwise_text(PRIMARY_RUBRICS[p["domain"]], p["prompt"], p[side])
                judgment = JUDGMENT.format(score=rng.randrange(3, 8))
                messages = [{"role": "user", "content": user},
                            {"role": "assistant", "content": judgment}]
                f.write(json.dumps({"messages": messages}) + "\n")
    return pairs_path, sft_path

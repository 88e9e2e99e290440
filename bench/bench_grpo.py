"""GRPO-PAR on the toy preference task: the judge's mean PAR reward and pair accuracy over steps.

    python bench/bench_grpo.py [--pairs 32] [--epochs 8]

SFT first teaches the judgment format with scores unrelated to the response (so pair accuracy starts
near chance); GRPO-PAR then has to teach the judge to score the right sum above the slip. Writes
bench/results/grpo_toy.json and grpo_toy.png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402

from kojudge.model.tiny import make_tiny_model  # noqa: E402
from kojudge.train.config import GRPOConfig, SFTConfig  # noqa: E402
from kojudge.train.grpo import train_grpo  # noqa: E402
from kojudge.train.sft import train_sft  # noqa: E402
from kojudge.train.recipes.toy import write_toy_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--pairs-per-batch", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "model", "qwen2", hidden_size=args.hidden, num_layers=2)
        pairs, sft = write_toy_task(tmp / "task", num_pairs=args.pairs)
        start = time.perf_counter()
        sft_records = train_sft(SFTConfig(model=str(model), data=str(sft), output=str(tmp / "sft"), batch_size=8,
                                          max_steps=120, lr=3e-3, warmup_steps=3, save_every=10**9), progress=False)
        sft_seconds = time.perf_counter() - start
        records = train_grpo(GRPOConfig(model=str(tmp / "sft" / "final"), data=str(pairs), output=str(tmp / "grpo"),
                                        pairs_per_batch=args.pairs_per_batch, rollouts=args.rollouts,
                                        max_new_tokens=96, lr=5e-4, epochs=args.epochs, save_every=10**9))
    quarter = max(1, len(records) // 4)
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    summary = {"par_first_quarter": mean("par_reward", records[:quarter]),
               "par_last_quarter": mean("par_reward", records[-quarter:]),
               "pair_accuracy_first_quarter": mean("pair_accuracy", records[:quarter]),
               "pair_accuracy_last_quarter": mean("pair_accuracy", records[-quarter:]),
               "format_reward_last_quarter": mean("format_reward", records[-quarter:])}
    write_result("grpo_toy", {**vars(args), "sft_final_loss": sft_records[-1]["loss"], "sft_seconds": sft_seconds,
                              "grpo_seconds": sum(r["seconds"] for r in records), **summary, "steps": records})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["par_reward"] for r in records], marker="o", label="mean PAR reward")
    ax.plot(steps, [r["pair_accuracy"] for r in records], marker="s", label="pair accuracy (mean score)")
    ax.plot(steps, [r["format_reward"] for r in records], marker="^", label="mean format reward")
    ax.set_xlabel("GRPO step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"GRPO-PAR, toy task: {args.pairs} pairs, {args.rollouts} rollouts per side")
    fig.tight_layout()
    fig.savefig(RESULTS / "grpo_toy.png", dpi=110)
    print(summary)


if __name__ == "__main__":
    main()

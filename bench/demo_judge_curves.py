"""Training curves of the demo judge from the work directories of `python -m kojudge.train.recipes.demo_judge`.

    python bench/demo_judge_curves.py WORK_DIR[:SFT_STEPS] ...   # in training order

Writes bench/results/demo_judge_training.json and .png: the loss per step of the curriculum stages (the
check alone, then mixed with the comparison) and of the judge SFT (continued runs appended), and the GRPO stage's mean PAR reward, pair accuracy and valid-score rate per step. WORK_DIR:N keeps a
run's first N SFT steps (the checkpoint the next run started from, when a run went on past it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, write_result


# Curriculum stages before the judge SFT, in order, with their plot labels.
STAGES = {"check": "check alone", "compare": "check + comparison"}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def quarter_means(values: list[float]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", nargs="+")
    args = parser.parse_args()
    stages, sft, grpo = {name: [] for name in STAGES}, [], []
    for spec in args.work:
        work, _, keep = spec.partition(":")
        for name in STAGES:
            stages[name] += [r["loss"] for r in read_metrics(Path(work) / name / "metrics.jsonl")]
        losses = [r["loss"] for r in read_metrics(Path(work) / "sft" / "metrics.jsonl")]
        sft += losses[: int(keep)] if keep else losses
        grpo += read_metrics(Path(work) / "grpo" / "metrics.jsonl")
    par = [r["par_reward"] for r in grpo]
    payload = {**{f"{name}_loss": losses for name, losses in stages.items()}, "sft_steps": len(sft), "sft_loss": sft, "grpo_steps": len(grpo),
               "grpo": {k: [r[k] for r in grpo] for k in ("par_reward", "pair_accuracy", "valid_score_rate", "reward")}}
    if par:
        payload["par_first_quarter"], payload["par_last_quarter"] = quarter_means(par)
        acc = payload["grpo"]["pair_accuracy"]
        payload["pair_accuracy_first_quarter"], payload["pair_accuracy_last_quarter"] = quarter_means(acc)
    write_result("demo_judge_training", payload)
    plot(payload)


def plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    start = 1
    for name, label in [*STAGES.items(), ("sft", "judge SFT")]:
        losses = payload.get(f"{name}_loss", [])
        if losses:
            left.plot(range(start, start + len(losses)), losses, linewidth=0.8, label=label)
            start += len(losses)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("loss per assistant token")
    left.set_title("stage 0-1: curriculum, then SFT on judgments")
    left.legend(fontsize=8)
    steps = range(1, payload["grpo_steps"] + 1)
    for key in ("par_reward", "pair_accuracy", "valid_score_rate"):
        right.plot(steps, payload["grpo"][key], marker=".", linewidth=0.8, label=key)
    right.set_xlabel("GRPO step")
    right.set_title("stage 2: GRPO-PAR (pointwise)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "demo_judge_training.png", dpi=120)


if __name__ == "__main__":
    main()

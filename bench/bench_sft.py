"""SFT throughput: kojudge's trainer vs TRL's SFTTrainer on the same tiny model and data (CPU, float32).

    pip install trl        # bench-only extra
    python bench/bench_sft.py [--steps 20] [--batch 8]

Both train one epoch over the same conversations (loss on the assistant turn only), batch 8, same
learning rate; step time is summed over optimizer steps only (no loading, no saving) and tokens/s
counts every token of every processed conversation.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from workloads import MODEL_SHAPES  # noqa: E402
from common import write_result  # noqa: E402

from kojudge.model.tiny import make_tiny_model  # noqa: E402

WORDS = "the answer step sum carry digit check each final compare score judge response question".split()


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(60, 200)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 80)))
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def run_kojudge(model: Path, data: Path, out: Path, steps: int, batch: int, lr: float) -> float:
    from kojudge.train.config import SFTConfig
    from kojudge.train.sft import train_sft

    records = train_sft(SFTConfig(model=str(model), data=str(data), output=str(out), batch_size=batch,
                                  max_steps=steps, lr=lr, warmup_steps=0, save_every=10**9), progress=False)
    return sum(r["tokens"] / r["tokens_per_s"] for r in records), records[-1]["loss"]


def run_trl(model: Path, convs: list, out: Path, steps: int, batch: int, lr: float) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.total, self.start, self.loss = 0.0, 0.0, None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.total += time.perf_counter() - self.start

    dataset = Dataset.from_list([{"prompt": c[:1], "completion": c[1:]} for c in convs])
    timer = StepTimer()
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(model),
        train_dataset=dataset,
        args=SFTConfig(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                       lr_scheduler_type="cosine", warmup_steps=0, logging_steps=steps, save_strategy="no",
                       report_to=[], use_cpu=True, dataloader_num_workers=0, max_length=1024, packing=False,
                       bf16=False, seed=0),
        callbacks=[timer],
    )
    result = trainer.train()
    return timer.total, result.training_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    convs = conversations(args.steps * args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "model", "qwen2", tie_word_embeddings=True, initializer_range=0.05, **MODEL_SHAPES["bench-25m"])
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        tokens = sum(len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in convs)
        ours, ours_loss = run_kojudge(model, data, tmp / "ours", args.steps, args.batch, args.lr)
        trl_time, trl_loss = run_trl(model, convs, tmp / "trl", args.steps, args.batch, args.lr)
    result = {"steps": args.steps, "batch": args.batch, "tokens": tokens,
              "kojudge_seconds": ours, "trl_seconds": trl_time,
              "kojudge_tokens_per_s": tokens / ours, "trl_tokens_per_s": tokens / trl_time,
              "speedup_vs_trl": trl_time / ours, "kojudge_last_loss": ours_loss, "trl_mean_loss": trl_loss}
    path = write_result("sft_vs_trl", result)
    print(f"SFT, {tokens} tokens in {args.steps} steps: kojudge {tokens / ours:.0f} tok/s, TRL {tokens / trl_time:.0f} "
          f"tok/s, speedup {trl_time / ours:.2f}x (goal >= 1.5x) -> {path}")


if __name__ == "__main__":
    main()

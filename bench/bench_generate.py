"""Plain batched generation: kojudge against HF `generate` and llama.cpp, each at its best.

    python bench/bench_generate.py [--model bench-25m|qwen2.5-0.5b|qwen2.5-1.5b]
        [--dtype float32|bfloat16] [--prompts 32] [--new-tokens 64]

Prompts of 50-300 random tokens with nothing shared; kojudge cold and warm, HF at each batch size,
llama.cpp at each setting (bench/compare.py); greedy outputs compared.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from compare import add_system_arguments, check_greedy_matches_hf, compare  # noqa: E402
from workloads import bench_model, prompt_vocab  # noqa: E402

import kojudge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    add_system_arguments(parser)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    model_dir = bench_model(args.model)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 300, (args.prompts,), generator=g).tolist()
    vocab = prompt_vocab(kojudge.load_config(model_dir))
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    result = compare(args, model_dir, prompts, args.new_tokens)
    print(f"-> {write_result(f'generate_{args.model}_{args.dtype}', result)}")
    check_greedy_matches_hf(result)


if __name__ == "__main__":
    main()

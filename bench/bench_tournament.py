"""Tournament workload: kojudge (prefix cache + cascade) against HF `generate` and llama.cpp, each
at its best, and the decode roofline.

    python bench/bench_tournament.py [--model bench-25m|qwen2.5-0.5b|qwen2.5-1.5b]
        [--dtype float32|bfloat16] [--quick] [--hf-batches 8 16 32 64] [--llama-slots 8 16]
        [--decode-only]

Part 1, the knockout's first round (Q=8 questions x N=16 candidates = 64 judge calls, a 600-token
template, 60-token questions, candidates of 100-300 tokens, 64 greedy new tokens): kojudge's first
run in a fresh process and its best warm run, where its time goes, HF at each batch size and
llama.cpp at each setting (bench/compare.py), greedy outputs compared; the round's limit is the
unique work (each distinct prompt token once) at the matmul peak measured in the same run.
Part 2: decode of 64 sequences sharing a 1,024-token prefix, FLOPs per step over the peak, with
and without the cascade path.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peaks, write_result  # noqa: E402
from compare import (add_system_arguments, check_greedy_matches_hf, compare,  # noqa: E402
                     flops_per_token, lm_head_flops, prefill_fraction)
from workloads import bench_model, first_round, prompt_vocab  # noqa: E402

import kojudge  # noqa: E402


def unique_work_flops(config, workload, new_tokens: int) -> float:
    """FLOPs an ideal engine spends: each distinct prompt token once (causal context ~ the mean
    prompt length / 2), every generated token, the LM head only where a token is sampled."""
    calls = len(workload.prompts)
    mean_len = sum(map(len, workload.prompts)) / calls
    prefill = workload.unique_prompt_tokens * flops_per_token(config, mean_len / 2)
    decode = calls * new_tokens * flops_per_token(config, mean_len + new_tokens / 2)
    return prefill + decode + lm_head_flops(config, calls * new_tokens)


def decode_roofline(model_dir, dtype, peak, batch=64, prefix=1024, steps=16) -> dict:
    """Each decode step timed alone; the fraction uses the median step, so a burst of load from
    the machine's neighbours moves it less than a mean would."""
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(3, 500, (prefix,), generator=g).tolist()
    prompts = [shared + torch.randint(3, 500, (8,), generator=g).tolist() for _ in range(batch)]
    fractions = {}
    for cascade in (True, False):
        engine = kojudge.Engine(model_dir, dtype=dtype, enable_cascade=cascade)
        for p in prompts:
            engine.submit(p, kojudge.SamplingParams(max_tokens=steps + 8, ignore_eos=True))
        running = engine.scheduler.running
        while len(running) < batch or any(s.num_uncomputed > 1 for s in running):
            engine.step()  # prefill everything; then every step is a pure decode of the batch
        engine.step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        per_step = statistics.median(times)
        context = prefix + 8 + steps // 2  # at the median step
        flops = batch * flops_per_token(engine.config, context) + lm_head_flops(engine.config, batch)
        fractions["cascade" if cascade else "no_cascade"] = {
            "step_ms": per_step * 1e3, "fastest_step_ms": min(times) * 1e3,
            "roofline_fraction": flops / per_step / peak}
    return fractions


def print_roofline(roofline: dict) -> None:
    for name, r in roofline.items():
        print(f"  decode 64 x 1024 shared, {name}: {r['step_ms']:.1f} ms/step (median; fastest "
              f"{r['fastest_step_ms']:.1f}), {100 * r['roofline_fraction']:.0f}% of the matmul "
              "peak")


def main() -> None:
    parser = argparse.ArgumentParser()
    add_system_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="Q=2 questions, 32 new tokens")
    parser.add_argument("--decode-only", action="store_true", help="only part 2, printed")
    args = parser.parse_args()
    model_dir = bench_model(args.model)
    config = kojudge.load_config(model_dir)
    if args.decode_only:
        peak = max(matmul_peaks(getattr(torch, args.dtype)).values())
        return print_roofline(decode_roofline(model_dir, args.dtype, peak))
    q, new_tokens = (2, 32) if args.quick else (8, 64)
    workload = first_round(num_questions=q, vocab_size=prompt_vocab(config))
    result = compare(args, model_dir, workload.prompts, new_tokens)
    peak = result["matmul_peak_gflops"] * 1e9  # measured by compare, in this run
    ideal = unique_work_flops(config, workload, new_tokens) / peak
    mean_prompt = result["prompt_tokens"] / len(workload.prompts)
    computed = result["kojudge"]["stats"]["computed_prompt_tokens"]
    result.update(unique_prompt_tokens=workload.unique_prompt_tokens,
                  computed_over_unique=computed / workload.unique_prompt_tokens,
                  ideal_seconds=ideal,
                  limit_fraction_first_run=ideal / result["kojudge"]["first_run_seconds"],
                  limit_fraction_warm=ideal / result["kojudge"]["warm_run_seconds"],
                  prefill_peak_fraction=prefill_fraction(result, config, mean_prompt),
                  decode_64x1024_shared=decode_roofline(model_dir, args.dtype, peak))
    print(f"  unique work at the peak {ideal:.1f} s: kojudge at "
          f"{100 * result['limit_fraction_warm']:.0f}% of the limit warm "
          f"({100 * result['limit_fraction_first_run']:.0f}% first run); prefill at "
          f"{100 * result['prefill_peak_fraction']:.0f}% of the peak; computed / unique prompt "
          f"tokens {result['computed_over_unique']:.3f}")
    print_roofline(result["decode_64x1024_shared"])
    name = f"tournament_{args.model}_{args.dtype}" + ("_quick" if args.quick else "")
    print(f"-> {write_result(name, result)}")
    check_greedy_matches_hf(result)


if __name__ == "__main__":
    main()

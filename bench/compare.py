"""What the generation and tournament benchmarks share: the command-line flags that pick the
model and the baselines' settings, one comparison run, its ratios and its printout."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import matmul_peaks
from step_profile import print_breakdown
from systems import agreement, run_hf, run_kojudge, run_llama_cpp
from workloads import MODEL_SHAPES, MODELS_DIR

import kojudge


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bench-25m", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="warm kojudge runs (best kept)")
    parser.add_argument("--hf-batches", type=int, nargs="*", default=[4, 8, 16, 32, 64],
                        help="HF generate batch sizes, each timed (none: HF skipped)")
    parser.add_argument("--llama-slots", type=int, nargs="*", default=[8, 16],
                        help="llama.cpp server slot counts, each timed (none: skipped)")
    parser.add_argument("--llama-flash", nargs="*", default=["off", "on"],
                        help="llama.cpp flash-attention settings, each timed")


def flops_per_token(config: kojudge.ModelConfig, context: float) -> float:
    """Matmul FLOPs of one new token through every layer (projections, MLP, attention over
    `context` keys), LM head excluded."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_layers
    q, kv = config.q_size, config.kv_size
    linear = 2 * layers * (h * (q + 2 * kv) + q * h + 3 * h * inter)
    return linear + 4 * layers * config.num_heads * config.head_dim * context


def lm_head_flops(config: kojudge.ModelConfig, rows: int) -> float:
    return 2 * rows * config.hidden_size * config.vocab_size


def compare(args: argparse.Namespace, model_dir: Path, prompts: list[list[int]],
            new_tokens: int) -> dict:
    """kojudge (cold and warm, profiled), HF at each batch size and llama.cpp at each setting on
    one workload, with the matmul peaks measured in the same run; figures and outputs."""
    peaks = matmul_peaks(getattr(torch, args.dtype))
    print(f"{args.model} {args.dtype}: {len(prompts)} prompts, {new_tokens} new tokens; matmul "
          "peak " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " GFLOP/s",
          flush=True)
    ours = run_kojudge(model_dir, args.dtype, prompts, new_tokens, args.repeats)
    print(f"  kojudge: Engine() {ours['engine_seconds']:.2f} s first, "
          f"{ours['later_engine_seconds']:.2f} s later; run {ours['first_run_seconds']:.2f} s "
          f"first, {ours['warm_run_seconds']:.2f} s warm", flush=True)
    print_breakdown(ours["profile"])
    result = {"model": args.model, "dtype": args.dtype, "prompts": len(prompts),
              "new_tokens": new_tokens, "prompt_tokens": sum(map(len, prompts)),
              "matmul_peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
              "matmul_peak_gflops": max(peaks.values()) / 1e9,
              "kojudge": {k: v for k, v in ours.items() if k != "outputs"},
              "first_over_warm": ours["first_run_seconds"] / ours["warm_run_seconds"],
              "first_engine_over_later": ours["engine_seconds"] / ours["later_engine_seconds"]}
    baselines = {}
    if args.hf_batches:
        baselines["hf"] = run_hf(model_dir, args.dtype, prompts, new_tokens, args.hf_batches)
    if args.llama_slots:
        llama = run_llama_cpp(model_dir, args.dtype, prompts, new_tokens, args.llama_slots,
                              args.llama_flash, MODELS_DIR)
        if llama is not None:
            baselines["llama_cpp"] = llama
    for name, baseline in baselines.items():
        result[name] = {k: v for k, v in baseline.items() if k != "outputs"}
        result[name]["identical_to_kojudge"] = agreement(baseline["outputs"], ours["outputs"])
        result[name]["first_tokens_identical_to_kojudge"] = agreement(
            [o[:1] for o in baseline["outputs"]], [o[:1] for o in ours["outputs"]])
        for run in ("first_run", "warm_run"):
            result[name][f"speedup_{run}"] = baseline["seconds"] / ours[f"{run}_seconds"]
    if "hf" in baselines and "llama_cpp" in baselines:
        result["llama_cpp"]["identical_to_hf"] = agreement(baselines["llama_cpp"]["outputs"],
                                                           baselines["hf"]["outputs"])
    print_ratios(result)
    return result


def check_greedy_matches_hf(result: dict) -> None:
    """In float32 kojudge's greedy tokens must be HF's, every one (after the result is written)."""
    hf = result.get("hf")
    every = f"{result['prompts']}/{result['prompts']}"
    if result["dtype"] == "float32" and hf and hf["identical_to_kojudge"] != every:
        raise SystemExit("greedy outputs differ from transformers")


def print_ratios(result: dict) -> None:
    for name in ("hf", "llama_cpp"):
        if name in result:
            r = result[name]
            best = r.get("best_batch", r.get("best_setting"))
            print(f"  vs {name} at its best ({best}): {r['speedup_first_run']:.2f}x first run, "
                  f"{r['speedup_warm_run']:.2f}x warm; identical greedy outputs "
                  f"{r['identical_to_kojudge']} (first tokens "
                  f"{r['first_tokens_identical_to_kojudge']})", flush=True)


def prefill_fraction(result: dict, config: kojudge.ModelConfig, mean_prompt: float) -> float:
    """Pure prefill steps' matmul FLOPs (context ~ half the mean prompt) over their time at the
    peak."""
    prefill = result["kojudge"]["profile"].get("prefill")
    if prefill is None:
        return float("nan")
    flops = prefill["tokens"] * flops_per_token(config, mean_prompt / 2)
    flops += lm_head_flops(config, prefill["lm_head_rows"])
    return flops / prefill["total"] / (result["matmul_peak_gflops"] * 1e9)

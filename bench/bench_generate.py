"""Plain batched generation: kojudge.Engine vs Hugging Face `generate` on the same prompts.

Greedy outputs must be identical; reports tokens/s of both and the ratio, measured in one run.
    python bench/bench_generate.py [--dtype bfloat16] [--batch 32] [--new-tokens 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed, write_result  # noqa: E402

import kojudge  # noqa: E402
from kojudge.model.tiny import make_tiny_model  # noqa: E402

BENCH_MODEL = dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536,
                   vocab_size=2048)


def hf_generate(hf, prompts, new_tokens, pad_id):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=pad_id, eos_token_id=None)
    return [row[width:].tolist() for row in out]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(tmp, "qwen2", tie_word_embeddings=True, initializer_range=0.05, **BENCH_MODEL)
        dtype = getattr(torch, args.dtype)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        engine = kojudge.Engine(path, dtype=args.dtype, enable_prefix_caching=False)
        n_params = sum(p.numel() for p in hf.parameters())
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 300, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(3, engine.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    params = kojudge.SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    hf_time, hf_out = timed(lambda: hf_generate(hf, prompts, args.new_tokens, pad_id=0), args.repeats)
    ours_time, ours_out = timed(lambda: engine.generate(prompts, params), args.repeats)
    same = sum(o.token_ids == r for o, r in zip(ours_out, hf_out))
    tokens = args.batch * args.new_tokens
    result = {"dtype": args.dtype, "params": n_params, "batch": args.batch, "new_tokens": args.new_tokens,
              "prompt_tokens": sum(lengths), "hf_seconds": hf_time, "kojudge_seconds": ours_time,
              "hf_tok_per_s": tokens / hf_time, "kojudge_tok_per_s": tokens / ours_time,
              "speedup": hf_time / ours_time, "identical_outputs": f"{same}/{args.batch}"}
    path = write_result(f"generate_{args.dtype}", result)
    print(f"{n_params / 1e6:.1f}M params, {args.dtype}, batch {args.batch}, {args.new_tokens} new tokens: "
          f"HF {result['hf_tok_per_s']:.0f} tok/s, kojudge {result['kojudge_tok_per_s']:.0f} tok/s, "
          f"speedup {result['speedup']:.2f}x; identical greedy outputs {same}/{args.batch} -> {path}")
    if args.dtype == "float32" and same != args.batch:
        raise SystemExit("greedy outputs differ from transformers")


if __name__ == "__main__":
    main()

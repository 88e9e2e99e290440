"""The `kojudge` command line."""
from __future__ import annotations

import argparse
import tempfile
import time


def demo(args: argparse.Namespace) -> None:
    """Smoke run: make a tiny random model, generate a batch with continuous batching, print stats."""
    from kojudge import Engine, SamplingParams
    from kojudge.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_tiny_model(tmp, "qwen2", hidden_size=128, num_layers=4, num_heads=4,
                                                  num_kv_heads=2, intermediate_size=256)
        engine = Engine(model_dir, dtype=args.dtype)
        template = "Question {i}: compare the two responses step by step and give the final answer."
        prompts = [template.format(i=i) for i in range(args.num_prompts)]
        params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
        start = time.perf_counter()
        outs = engine.generate(prompts, params, use_tqdm=True)
        elapsed = time.perf_counter() - start
    stats = engine.stats()
    print(f"{len(outs)} requests, {stats['generated_tokens']} tokens in {elapsed:.2f}s "
          f"({stats['generated_tokens'] / elapsed:.0f} tok/s); prompt tokens {stats['prompt_tokens']}, "
          f"computed {stats['computed_prompt_tokens']}, from cache {stats['cached_prompt_tokens']}")
    print(f"first output: {outs[0].text[:80]!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kojudge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the built-in demo (for now: a generation smoke run on a tiny model)")
    p.add_argument("--model", help="local HF model directory (default: a tiny random model made on the fly)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""Peak memory and time of chosen-token log-probs (forward + backward): chunked vs naive, on CPU.

    python bench/bench_logprobs.py [--tokens 2048] [--vocab 152064] [--hidden 896]

Each variant runs in its own process; peak = VmHWM after the op minus VmRSS before it, with the
high-water mark reset first (inputs excluded, gradients of hidden and weight included for both).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(variant: str, tokens: int, vocab: int, hidden_size: int) -> None:
    import torch

    from kojudge.kernels import chosen_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    upstream = torch.randn(tokens, generator=g)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: building the inputs had its own peak
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    logp, _ = chosen_logprobs(hidden, weight, targets, backend="reference" if variant == "naive" else "torch")
    (logp * upstream).sum().backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024, "seconds": seconds,
                      "logp_sum": float(logp.sum())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.tokens, args.vocab, args.hidden)
    runs = {}
    for variant in ("naive", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens), "--vocab",
                              str(args.vocab), "--hidden", str(args.hidden)], capture_output=True, text=True, check=True)
        runs[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = runs["chunked"]["peak_mib"] / runs["naive"]["peak_mib"]
    path = write_result("logprobs_memory_cpu", {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
                                                "dtype": "bfloat16 inputs, float32 log-probs", **runs,
                                                "peak_ratio_chunked_over_naive": ratio})
    print(f"T={args.tokens} V={args.vocab} H={args.hidden}: naive peak {runs['naive']['peak_mib']:.0f} MiB "
          f"({runs['naive']['seconds']:.1f}s), chunked {runs['chunked']['peak_mib']:.0f} MiB "
          f"({runs['chunked']['seconds']:.1f}s): ratio {ratio:.3f} (goal <= 0.125) -> {path}")


if __name__ == "__main__":
    main()

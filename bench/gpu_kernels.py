"""GPU kernel benchmark, to run in one go when a GPU is lent:

    python bench/gpu_kernels.py [--quick]

1. Decode attention of B sequences sharing a P-token prefix (+ 64 own tokens each), Qwen2-7B-like heads
   (28 query / 4 KV, d 128), bfloat16, block 16, P in 1k/4k/16k, B in 16/64/256:
   kojudge Triton cascade (prefix once + suffix + LSE merge) vs kojudge Triton non-shared decode vs
   torch SDPA on contiguous per-sequence KV vs flashinfer's two-level cascade (when installed).
   Goals: >= 0.9x flashinfer cascade and >= 5x non-shared at P=4k, B=64.
2. Chosen-token log-probs, forward + backward, V=152,064, T=8,192, H=3,584, bfloat16: fused Triton vs
   naive log_softmax + gather; time and peak memory. Goal: fused peak <= 1/8 of naive.
3. The engine on CUDA, bfloat16, on each attention backend (torch, triton, flashinfer when installed):
   a tournament first round (bench/workloads.first_round) on a random Qwen2 the size of the CPU
   benchmarks' model; judge calls/s, and how many greedy outputs and chosen-token log-probs agree with
   the Triton backend's. This is the only run of the flashinfer backend against the real package
   (the test suite checks it against a CPU stand-in, tests/fake_flashinfer.py).
Results go to bench/results/gpu_kernels.json; a failing backend is recorded, not fatal.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from workloads import MODEL_SHAPES  # noqa: E402
from common import write_result  # noqa: E402
from workloads import first_round  # noqa: E402

from kojudge.kernels import chosen_logprobs  # noqa: E402
from kojudge.kernels.attention import merge_state_triton, paged_attention_triton  # noqa: E402

HEADS, KV_HEADS, D, BLOCK, SUFFIX = 28, 4, 128, 16, 64


def cuda_time(fn, warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def decode_case(prefix: int, batch: int) -> dict:
    dev, dt = "cuda", torch.bfloat16
    prefix_blocks, suffix_blocks = prefix // BLOCK, -(-SUFFIX // BLOCK)
    num_blocks = prefix_blocks + batch * suffix_blocks
    k_cache = torch.randn(KV_HEADS, num_blocks * BLOCK, D, device=dev, dtype=dt)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch, HEADS, D, device=dev, dtype=dt)
    shared = torch.arange(prefix_blocks, device=dev, dtype=torch.int32)
    own = (prefix_blocks + torch.arange(batch * suffix_blocks, device=dev, dtype=torch.int32)).view(batch, suffix_blocks)
    full_tables = torch.cat([shared.expand(batch, -1), own], dim=1).contiguous()
    ones = torch.arange(batch + 1, device=dev, dtype=torch.int32)
    full_lens = torch.full((batch,), prefix + SUFFIX, device=dev, dtype=torch.int32)
    suffix_lens = torch.full((batch,), SUFFIX, device=dev, dtype=torch.int32)
    results: dict = {"prefix": prefix, "batch": batch}

    def non_shared():
        return paged_attention_triton(q, k_cache, v_cache, ones, full_tables, full_lens, full_lens - 1, BLOCK,
                                      max_queries=1)

    def cascade(split: bool = True):
        stacked = torch.tensor([0, batch], device=dev, dtype=torch.int32)
        out_p, lse_p = paged_attention_triton(q, k_cache, v_cache, stacked, shared[None], full_lens[:1] - SUFFIX,
                                              torch.zeros(1, device=dev, dtype=torch.int32), BLOCK, causal=False,
                                              max_queries=batch, max_kv_len=prefix if split else None)
        out_s, lse_s = paged_attention_triton(q, k_cache, v_cache, ones, own, suffix_lens, suffix_lens - 1, BLOCK,
                                              max_queries=1)
        return merge_state_triton(out_p, lse_p, out_s, lse_s)

    reference = non_shared()[0]
    torch.testing.assert_close(cascade()[0].float(), reference.float(), atol=2e-2, rtol=2e-2)
    results["kojudge_non_shared_ms"] = cuda_time(non_shared)
    results["kojudge_cascade_ms"] = cuda_time(cascade)  # the prefix's keys split-KV, as the engine runs it
    results["kojudge_cascade_unsplit_ms"] = cuda_time(lambda: cascade(split=False))
    try:  # SDPA on contiguous per-sequence KV: what a non-paged engine does
        slots = (full_tables.long()[:, :, None] * BLOCK + torch.arange(BLOCK, device=dev)).flatten(1)[:, : prefix + SUFFIX]
        k = k_cache[:, slots].transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 1)  # [B, heads, S, d]
        v = v_cache[:, slots].transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 1)
        results["torch_sdpa_ms"] = cuda_time(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v))
        del k, v
    except Exception as exc:  # noqa: BLE001 - recorded
        results["torch_sdpa_error"] = repr(exc)
    try:
        import flashinfer

        # flashinfer's paged layout: [pages, 2, page_size, kv_heads, d]
        kv = torch.stack([k_cache.view(KV_HEADS, num_blocks, BLOCK, D).permute(1, 2, 0, 3),
                          v_cache.view(KV_HEADS, num_blocks, BLOCK, D).permute(1, 2, 0, 3)], dim=1).contiguous()
        workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
        wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
        qo_indptr = [torch.tensor([0, batch], device=dev, dtype=torch.int32), ones]
        kv_indptr = [torch.tensor([0, prefix_blocks], device=dev, dtype=torch.int32),
                     torch.arange(batch + 1, device=dev, dtype=torch.int32) * suffix_blocks]
        kv_indices = [shared, own.flatten()]
        last_len = [torch.tensor([BLOCK], device=dev, dtype=torch.int32),
                    torch.full((batch,), SUFFIX - (suffix_blocks - 1) * BLOCK, device=dev, dtype=torch.int32)]
        wrapper.plan(qo_indptr, kv_indptr, kv_indices, last_len, HEADS, KV_HEADS, D, BLOCK)
        out = wrapper.run(q, kv)
        torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
        results["flashinfer_cascade_ms"] = cuda_time(lambda: wrapper.run(q, kv))
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        results["flashinfer_error"] = "".join(traceback.format_exception_only(exc)).strip()
    results["cascade_speedup_vs_non_shared"] = results["kojudge_non_shared_ms"] / results["kojudge_cascade_ms"]
    if "flashinfer_cascade_ms" in results:
        results["cascade_vs_flashinfer"] = results["flashinfer_cascade_ms"] / results["kojudge_cascade_ms"]
    return results


def logprobs_case(tokens: int, vocab: int, hidden_size: int) -> dict:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device=dev, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(vocab, hidden_size, device=dev, generator=g) * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=dev, generator=g)
    out = {"tokens": tokens, "vocab": vocab, "hidden": hidden_size}
    values = {}
    for name, backend in (("naive", "reference"), ("fused", "triton")):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

        def step():
            hidden.grad = weight.grad = None
            logp, _ = chosen_logprobs(hidden, weight, targets, backend=backend)
            logp.sum().backward()
            return logp

        values[name] = step().detach()
        out[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out[f"{name}_ms"] = cuda_time(step, warmup=1, iters=5)
    out["max_abs_diff"] = float((values["naive"] - values["fused"]).abs().max())
    out["peak_ratio_fused_over_naive"] = out["fused_peak_mib"] / out["naive_peak_mib"]
    return out


def engine_case(num_questions: int) -> dict:
    import tempfile

    import kojudge
    from kojudge.kernels.dispatch import flashinfer_available
    from kojudge.model.tiny import make_tiny_model

    backends = ["torch", "triton"] + (["flashinfer"] if flashinfer_available() else [])
    results: dict = {"num_questions": num_questions, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(tmp, "qwen2", tie_word_embeddings=True, initializer_range=0.05, **MODEL_SHAPES["bench-25m"])
        workload = first_round(num_questions=num_questions, vocab_size=kojudge.load_config(path).vocab_size)
        params = kojudge.SamplingParams(max_tokens=16, ignore_eos=True, logprobs=True)
        outputs = {}
        for backend in backends:
            try:
                engine = kojudge.Engine(path, dtype="bfloat16", device="cuda", attention_backend=backend)
                engine.generate(workload.prompts[:4], params)  # compile / JIT before timing
                torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[backend] = engine.generate(workload.prompts, params)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                results["backends"][backend] = {"seconds": seconds, "calls_per_s": len(workload.prompts) / seconds}
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                results["backends"][backend] = {"error": "".join(traceback.format_exception_only(exc)).strip()}
            torch.cuda.empty_cache()
        for backend, outs in outputs.items():
            if backend == "triton" or "triton" not in outputs:
                continue
            pairs = list(zip(outs, outputs["triton"]))
            results["backends"][backend]["same_tokens_as_triton"] = sum(a.token_ids == b.token_ids for a, b in pairs)
            results["backends"][backend]["max_first_logprob_diff_vs_triton"] = max(
                abs(a.logprobs[0] - b.logprobs[0]) for a, b in pairs)
    results["calls"] = len(workload.prompts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one decode case and a small log-prob case")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a lent GPU")
    cases = [(4096, 64)] if args.quick else [(p, b) for p in (1024, 4096, 16384) for b in (16, 64, 256)]
    decode = []
    for prefix, batch in cases:
        try:
            decode.append(decode_case(prefix, batch))
        except Exception as exc:  # noqa: BLE001 - keep going, record it
            decode.append({"prefix": prefix, "batch": batch, "error": repr(exc)})
        print(decode[-1], flush=True)
        torch.cuda.empty_cache()
    logprobs = logprobs_case(2048 if args.quick else 8192, 152064, 3584)
    print(logprobs, flush=True)
    engine = engine_case(2 if args.quick else 8)
    print(engine, flush=True)
    path = write_result("gpu_kernels" + ("_quick" if args.quick else ""),
                        {"decode": decode, "logprobs": logprobs, "engine": engine})
    print(f"-> {path}")


if __name__ == "__main__":
    main()

"""Ahead-of-time compilation of every Triton kernel for real GPUs, no GPU needed.

    python -m kojudge.kernels.aot 80 90      # prints one line per kernel and target

Run without TRITON_INTERPRET (the kernels must be JIT functions). The test suite calls it so that
GPU code cannot rot unseen on CPU-only machines.
"""
from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kojudge.kernels import attention, logprobs


def _spec(kernel, pointers: dict[str, str], scalars: dict[str, str], constexprs: dict):
    signature = {name: pointers.get(name) or scalars.get(name) or "constexpr"
                 for name in kernel.arg_names}
    return ASTSource(kernel, signature, constexprs={name: constexprs[name] for name in constexprs})


def kernel_specs(dtype: str = "bf16") -> dict[str, ASTSource]:
    """Representative specializations: a Qwen-like head_dim 128, GQA 7 (28 / 4 heads), block 16."""
    ptr = f"*{dtype}"
    attention_ptrs = {"q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                      "lse_ptr": "*fp32", "q_start_ptr": "*i32", "tables_ptr": "*i32",
                      "kv_lens_ptr": "*i32", "q_offsets_ptr": "*i32"}
    attention_scalars = {"scale": "fp32",
                         **{s: "i32" for s in ("stride_qt", "stride_qh", "stride_ch", "stride_cs",
                                               "stride_table", "stride_lse", "stride_split_out",
                                               "stride_split_lse", "num_splits")}}
    common = {"GROUP": 7, "GROUP_PAD": 8, "D": 128, "BLOCK_D": 128, "BLOCK_SIZE": 16,
              "PRECISION": "tf32"}
    logprob_scalars = {"T": "i32", "V": "i32", "H": "i32", "stride_h": "i32", "stride_w": "i32",
                       "inv_temp": "fp32", "v_start": "i32", "v_count": "i32", "stride_g": "i32"}
    blocks = {"BLOCK_T": 64, "BLOCK_V": 64, "BLOCK_H": 64, "PRECISION": "tf32"}
    return {
        "store_kv": _spec(attention.store_kv_kernel,
                          {"k_ptr": ptr, "v_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr,
                           "slot_ptr": "*i64"},
                          {s: "i32" for s in ("stride_kt", "stride_kh", "stride_ch",
                                              "stride_cs")},
                          {"KV_HEADS": 4, "D": 128, "BLOCK_HEADS": 4, "BLOCK_D": 128}),
        "paged_attention_decode": _spec(attention.paged_attention_kernel, attention_ptrs,
                                        attention_scalars,
                                        {**common, "BLOCK_M": 1, "ROWS": 16, "CAUSAL": True}),
        "paged_attention_extend": _spec(attention.paged_attention_kernel, attention_ptrs,
                                        attention_scalars,
                                        {**common, "BLOCK_M": 8, "ROWS": 64, "CAUSAL": True}),
        "paged_attention_cascade_prefix": _spec(attention.paged_attention_kernel,
                                                attention_ptrs, attention_scalars,
                                                {**common, "BLOCK_M": 8, "ROWS": 64,
                                                 "CAUSAL": False}),
        "merge_state": _spec(attention.merge_state_kernel,
                             {"out_a_ptr": ptr, "lse_a_ptr": "*fp32", "out_b_ptr": ptr,
                              "lse_b_ptr": "*fp32", "out_ptr": ptr, "lse_ptr": "*fp32"}, {},
                             {"D": 128, "BLOCK_D": 128}),
        "logprobs_forward": _spec(logprobs.logprobs_forward_kernel,
                                  {"h_ptr": ptr, "w_ptr": ptr, "t_ptr": "*i64",
                                   "logp_ptr": "*fp32", "lse_ptr": "*fp32",
                                   "ent_ptr": "*fp32"}, logprob_scalars,
                                  {**blocks, "WITH_ENTROPY": True}),
        "logprobs_grad_logits": _spec(logprobs.logprobs_grad_logits_kernel,
                                      {"h_ptr": ptr, "w_ptr": ptr, "t_ptr": "*i64",
                                       "lse_ptr": "*fp32", "dlogp_ptr": "*fp32",
                                       "g_ptr": "*fp32"}, logprob_scalars, blocks),
    }


def compile_all(capabilities: list[int]) -> list[tuple[str, int, int]]:
    """(kernel, compute capability, cubin bytes) for every kernel and target."""
    results = []
    for cc in capabilities:
        for name, source in kernel_specs().items():
            compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32))
            results.append((name, cc, len(compiled.asm["cubin"])))
    return results


if __name__ == "__main__":
    for name, cc, size in compile_all([int(c) for c in sys.argv[1:]] or [80, 90]):
        print(f"sm_{cc} {name}: {size} bytes of cubin")

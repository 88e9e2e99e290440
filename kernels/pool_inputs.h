// The argument checks the paged-pool attention kernels share (cpu_kernels.cpp,
// prefill_attention.cpp): queries [rows, heads, d] against one layer's keys and values
// [kv_heads, slots, d].
#pragma once

#include <torch/extension.h>

namespace kojudge {

inline void check_pool_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const char* name) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.sizes() == v.sizes(), name,
              ": q [rows, heads, d], k and v [kv_heads, slots, d]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), name,
              ": contiguous q, k, v");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(), name,
              ": q, k, v of one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, name,
              ": float32 or bfloat16");
  TORCH_CHECK(q.size(1) % k.size(0) == 0, name, ": heads a multiple of kv_heads");
  TORCH_CHECK(q.size(2) == k.size(2), name, ": q and k of one head_dim");
  const int64_t d = q.size(2);
  TORCH_CHECK(d == 16 || d == 32 || d == 64 || d == 128, name,
              ": head_dim 16, 32, 64 or 128, not ", d);
}

}  // namespace kojudge

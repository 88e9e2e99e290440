// The engine's CPU kernels in C++, compiled at install for AVX-512 (F, BW, DQ, VL: torch's
// "AVX512" capability, which kernels/native.py checks before it loads the library).
//
// decode_attention: decode attention straight from the paged KV pool. Each (sequence, KV head)
// is one task that reads its blocks once for all the query heads of the group, with an online
// softmax over tiles of 16 keys. It returns the output and the log-sum-exp, so that the engine
// can merge it with attention to a shared prefix. The torch reference is
// kojudge.kernels.cpu_attention.partial_attention over the gathered blocks.
//
// store_kv: a step's new keys and values into their pool slots, a row copy per (token, head),
// where torch's index_copy_ of the transposed rows costs ~10x more at decode sizes.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "pool_inputs.h"
#include "simd.h"

namespace {

using namespace kojudge;

// Scores of one query row q [D] against 16 consecutive key rows, float32.
template <int D>
inline __m512 dot16(const float* q, const float* keys) {
  constexpr int C = D / 16;
  __m512 query[C], partial[16];
  for (int c = 0; c < C; ++c) query[c] = _mm512_load_ps(q + c * 16);
  for (int j = 0; j < 16; ++j) {
    __m512 dot = _mm512_mul_ps(query[0], _mm512_loadu_ps(keys + j * D));
    for (int c = 1; c < C; ++c)
      dot = _mm512_fmadd_ps(query[c], _mm512_loadu_ps(keys + j * D + c * 16), dot);
    partial[j] = dot;
  }
  return sum_lanes16(partial);
}

// 16 key rows as float32: in place for float32, converted into `buffer` for bfloat16.
template <int D>
inline const float* as_float(const float* rows, float*) { return rows; }

template <int D>
inline const float* as_float(const c10::BFloat16* rows, float* buffer) {
  for (int i = 0; i < 16 * D; i += 16) _mm512_store_ps(buffer + i, load16(rows + i));
  return buffer;
}

template <typename T>
inline void prefetch(const T* rows, int bytes) {
  const char* p = reinterpret_cast<const char*>(rows);
  for (int line = 0; line < bytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
}

// The G query heads q[g] (stride D) of one KV head attend to `count` keys of one sequence, whose
// positions p lie at slot blocks[p / block_size] * block_size + p % block_size of the KV head's
// rows [slots, D]. A tile of 16 keys (one vector of scores) at a time, with an online softmax.
template <typename T, int D, int G>
void attend(const T* q, const T* k_head, const T* v_head, const int64_t* blocks, int64_t count,
            int64_t block_size, float scale, T* out, float* lse) {
  constexpr int C = D / 16;  // vectors per head row
  constexpr int kTileBytes = 16 * D * static_cast<int>(sizeof(T));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  alignas(64) float qf[G][D];
  alignas(64) float acc[G][D];
  alignas(64) float probs[G][16];
  alignas(64) float buffer[16 * D];
  float row_max[G], row_sum[G];
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < C; ++c) {
      __m512 x = _mm512_mul_ps(load16(q + g * D + c * 16), _mm512_set1_ps(scale));
      _mm512_store_ps(qf[g] + c * 16, x);
      _mm512_store_ps(acc[g] + c * 16, _mm512_setzero_ps());
    }
    row_max[g] = neg_inf;
    row_sum[g] = 0.f;
  }
  // Tiles start at multiples of 16, and so do blocks: a tile's rows are consecutive slots.
  auto tile_offset = [&](int64_t pos) {
    return (blocks[pos / block_size] * block_size + pos % block_size) * D;
  };
  for (int64_t start = 0; start < count; start += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, count - start));
    const T* k_tile = k_head + tile_offset(start);
    const T* v_tile = v_head + tile_offset(start);
    // A tile is a 4 KiB page at float32 and d = 64, and the hardware prefetcher stops at pages.
    if (start + 16 < count) {
      prefetch(k_head + tile_offset(start + 16), kTileBytes);
      prefetch(v_head + tile_offset(start + 16), kTileBytes);
    }
    const float* keys = as_float<D>(k_tile, buffer);  // rows past n are finite and masked
    for (int g = 0; g < G; ++g) {
      const __m512 s = _mm512_mask_blend_ps(static_cast<__mmask16>((1u << n) - 1),
                                            _mm512_set1_ps(neg_inf), dot16<D>(qf[g], keys));
      const float new_max = std::max(row_max[g], _mm512_reduce_max_ps(s));
      const __m512 p = exp16(_mm512_sub_ps(s, _mm512_set1_ps(new_max)));
      _mm512_store_ps(probs[g], p);
      const float rescale = std::exp(row_max[g] - new_max);
      row_sum[g] = row_sum[g] * rescale + _mm512_reduce_add_ps(p);
      row_max[g] = new_max;
      if (rescale != 1.f) {
        for (int c = 0; c < C; ++c) {
          __m512 a = _mm512_load_ps(acc[g] + c * 16);
          _mm512_store_ps(acc[g] + c * 16, _mm512_mul_ps(a, _mm512_set1_ps(rescale)));
        }
      }
    }
    for (int c = 0; c < C; ++c) {  // a slice of the output at a time keeps G sums in registers
      __m512 sums[G];
      for (int g = 0; g < G; ++g) sums[g] = _mm512_load_ps(acc[g] + c * 16);
      for (int j = 0; j < n; ++j) {
        const __m512 value = load16(v_tile + j * D + c * 16);
        for (int g = 0; g < G; ++g)
          sums[g] = _mm512_fmadd_ps(_mm512_set1_ps(probs[g][j]), value, sums[g]);
      }
      for (int g = 0; g < G; ++g) _mm512_store_ps(acc[g] + c * 16, sums[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const float inv = 1.f / row_sum[g];
    for (int d = 0; d < D; ++d) out[g * D + d] = static_cast<T>(acc[g][d] * inv);
    lse[g] = row_max[g] + std::log(row_sum[g]);
  }
}

template <typename T, int D, int G>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& blocks, const at::Tensor& counts, int64_t block_size,
                at::Tensor& out, at::Tensor& lse) {
  const int64_t rows = q.size(0), heads = q.size(1), kv_heads = k.size(0);
  const int64_t group = heads / kv_heads, slots = k.size(1), width = blocks.size(1);
  const int64_t chunks = group / G;  // the query heads of a KV head, G at a time
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* bp = blocks.data_ptr<int64_t>();
  const int64_t* cp = counts.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  // Longest sequences first, handed out one at a time, so that no thread waits on a long tail.
  std::vector<int64_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cp[a] > cp[b]; });
  const int64_t tasks = rows * kv_heads * chunks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t row = order[task / (kv_heads * chunks)];
    const int64_t head = task % (kv_heads * chunks) / chunks, chunk = task % chunks;
    const int64_t first = row * heads + head * group + chunk * G;  // first query head
    attend<T, D, G>(qp + first * D, kp + head * slots * D, vp + head * slots * D,
                    bp + row * width, cp[row], block_size, scale, op + first * D, lp + first);
  }
}

template <typename T, int D>
void dispatch_group(int64_t group, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& blocks, const at::Tensor& counts,
                    int64_t block_size, at::Tensor& out, at::Tensor& lse) {
  // Query heads per task: the largest G <= 8 that divides the group; a larger group runs as
  // several tasks, each reading the keys again.
  int per_task = 8;
  while (group % per_task != 0) --per_task;
  switch (per_task) {
    case 8: return attend_all<T, D, 8>(q, k, v, blocks, counts, block_size, out, lse);
    case 7: return attend_all<T, D, 7>(q, k, v, blocks, counts, block_size, out, lse);
    case 6: return attend_all<T, D, 6>(q, k, v, blocks, counts, block_size, out, lse);
    case 5: return attend_all<T, D, 5>(q, k, v, blocks, counts, block_size, out, lse);
    case 4: return attend_all<T, D, 4>(q, k, v, blocks, counts, block_size, out, lse);
    case 3: return attend_all<T, D, 3>(q, k, v, blocks, counts, block_size, out, lse);
    case 2: return attend_all<T, D, 2>(q, k, v, blocks, counts, block_size, out, lse);
    default: return attend_all<T, D, 1>(q, k, v, blocks, counts, block_size, out, lse);
  }
}

template <typename T>
void dispatch_dim(int64_t d, int64_t group, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& blocks, const at::Tensor& counts,
                  int64_t block_size, at::Tensor& out, at::Tensor& lse) {
  switch (d) {
    case 16: return dispatch_group<T, 16>(group, q, k, v, blocks, counts, block_size, out, lse);
    case 32: return dispatch_group<T, 32>(group, q, k, v, blocks, counts, block_size, out, lse);
    case 64: return dispatch_group<T, 64>(group, q, k, v, blocks, counts, block_size, out, lse);
    default: return dispatch_group<T, 128>(group, q, k, v, blocks, counts, block_size, out, lse);
  }
}

}  // namespace

std::vector<at::Tensor> decode_attention(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const at::Tensor& blocks,
                                         const at::Tensor& counts, int64_t block_size) {
  check_pool_inputs(q, k, v, "decode_attention");
  TORCH_CHECK(block_size % 16 == 0, "decode_attention: block_size a multiple of 16");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && counts.scalar_type() == at::kLong &&
                  blocks.dim() == 2 && blocks.size(0) == q.size(0) && counts.numel() == q.size(0),
              "decode_attention: blocks [B, width] and counts [B], int64");
  const auto blocks_c = blocks.contiguous();
  const auto counts_c = counts.contiguous();
  const int64_t* count = counts_c.data_ptr<int64_t>();
  for (int64_t i = 0; i < counts_c.numel(); ++i)
    TORCH_CHECK(count[i] > 0 && count[i] <= blocks.size(1) * block_size,
                "decode_attention: every count in [1, width * block_size], not ", count[i]);
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  const int64_t group = q.size(1) / k.size(0), d = q.size(2);
  if (q.scalar_type() == at::kFloat) {
    dispatch_dim<float>(d, group, q, k, v, blocks_c, counts_c, block_size, out, lse);
  } else {
    dispatch_dim<c10::BFloat16>(d, group, q, k, v, blocks_c, counts_c, block_size, out, lse);
  }
  return {out, lse};
}

void store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
              at::Tensor& v_cache, const at::Tensor& slots) {
  TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes() && k_cache.dim() == 3 &&
                  k_cache.sizes() == v_cache.sizes() && k.size(1) == k_cache.size(0) &&
                  k.size(2) == k_cache.size(2),
              "store_kv: k, v [T, kv_heads, d] and caches [kv_heads, slots, d]");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type()
                  && k.scalar_type() == v.scalar_type(), "store_kv: one dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "store_kv: contiguous caches");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == k.size(2) &&
                  v.stride(1) == v.size(2), "store_kv: each token's heads one run of memory");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.size(0) == k.size(0),
              "store_kv: slots [T], int64");
  const auto slots_c = slots.contiguous();
  const int64_t* slot = slots_c.data_ptr<int64_t>();
  const int64_t tokens = k.size(0), heads = k.size(1), pool = k_cache.size(1);
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < pool, "store_kv: slot ", slot[t], " outside the pool");
  const int64_t row = k.size(2) * k.element_size();  // bytes of one head's key
  const auto* k_src = static_cast<const char*>(k.data_ptr());
  const auto* v_src = static_cast<const char*>(v.data_ptr());
  auto* k_dst = static_cast<char*>(k_cache.data_ptr());
  auto* v_dst = static_cast<char*>(v_cache.data_ptr());
  const int64_t k_stride = k.stride(0) * k.element_size();
  const int64_t v_stride = v.stride(0) * v.element_size();
  at::parallel_for(0, tokens, 256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t offset = (h * pool + slot[t]) * row;
        std::memcpy(k_dst + offset, k_src + t * k_stride + h * row, row);
        std::memcpy(v_dst + offset, v_src + t * v_stride + h * row, row);
      }
    }
  });
}

// prefill_attention.cpp
std::vector<at::Tensor> prefill_attention(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& blocks,
                                          int64_t num_keys, int64_t block_size, bool causal);

// token_ops.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("store_kv", &store_kv,
        "k, v [T, kv_heads, d] into the slots [T] (int64) of caches [kv_heads, slots, d]");
  m.def("decode_attention", &decode_attention,
        "q [B, heads, d] to the paged keys/values [kv_heads, slots, d] of each row's blocks "
        "[B, width] (int64), counts [B] keys each -> (out [B, heads, d], LSE [B, heads] float32)");
  m.def("prefill_attention", &prefill_attention,
        "q [M, heads, d] to the first num_keys paged keys/values [kv_heads, slots, d] of the "
        "blocks [n] (int64), causal: the queries are the last M positions -> (out [M, heads, d], "
        "LSE [M, heads] float32)");
  m.def("rms_norm", &rms_norm, "RMSNorm of x [N, D] or [N, H, D] times weight [D]");
  m.def("rotary", &rotary, "x [T, heads, d] rotated by cos, sin [T, 1, d]");
}

// prefill_attention: many queries against keys held in paged KV pool blocks, on CPU. It serves a
// prefill span over its own keys (causal) and every member's queries over a shared prefix (not
// causal), and returns the log-sum-exp beside the output so that the two can be merged.
//
// The keys of each KV head are first packed once, transposed into tiles of 32 (float32), so that
// scores come from outer products: a query element broadcast against a vector of 32 keys' same
// element, 16 accumulators for 8 query rows. The query heads of a KV head are stacked as rows.
// Each task then runs a flash-style loop for 32 stacked rows, 128 keys at a time with an online
// softmax, and a causal task stops at the last key its rows see. The torch reference is
// kojudge.kernels.cpu_attention.partial_attention with the causal mask.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "pool_inputs.h"
#include "simd.h"

namespace {

using namespace kojudge;

constexpr int kTile = 32;         // keys per packed tile: two vectors of scores
constexpr int kBlockKeys = 128;   // keys per online-softmax step
constexpr int kRows = 32;         // stacked query rows per task
constexpr int kScoreRows = 8;     // query rows per score micro-tile (16 accumulators)

// One KV head's keys at positions [tile * 32, tile * 32 + 32), as kt[tile][j][i] = key i's
// element j, and its values as rows vf[position][D], both float32. Positions past num_keys are
// zeros (their scores are masked).
template <typename T, int D>
void pack_tile(const T* k_head, const T* v_head, const int64_t* blocks, int64_t block_size,
               int64_t num_keys, int64_t tile, float* kt, float* vf) {
  for (int half = 0; half < 2; ++half) {
    const T* k_rows[16];
    const int64_t base = tile * kTile + half * 16;
    for (int i = 0; i < 16; ++i) {
      const int64_t pos = base + i;
      const int64_t slot = blocks[pos / block_size] * block_size + pos % block_size;
      k_rows[i] = pos < num_keys ? k_head + slot * D : nullptr;
      float* v_row = vf + pos * D;
      for (int c = 0; c < D; c += 16)
        _mm512_storeu_ps(v_row + c, pos < num_keys ? load16(v_head + slot * D + c)
                                                   : _mm512_setzero_ps());
    }
    float* dst = kt + tile * D * kTile + half * 16;
    for (int c = 0; c < D; c += 16) {
      __m512 rows[16];
      for (int i = 0; i < 16; ++i)
        rows[i] = k_rows[i] != nullptr ? load16(k_rows[i] + c) : _mm512_setzero_ps();
      transpose16(rows);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + (c + j) * kTile, rows[j]);
    }
  }
}

// scores[r][0 .. tiles * 32) = q[r] . keys of the tiles, for the kRows rows of q [kRows][D].
template <int D>
void score_block(const float* q, const float* kt, int tiles, float* scores) {
  for (int r0 = 0; r0 < kRows; r0 += kScoreRows) {
    for (int t = 0; t < tiles; ++t) {
      const float* keys = kt + t * D * kTile;
      __m512 lo[kScoreRows], hi[kScoreRows];
      for (int i = 0; i < kScoreRows; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
      for (int j = 0; j < D; ++j) {
        const __m512 k0 = _mm512_loadu_ps(keys + j * kTile);
        const __m512 k1 = _mm512_loadu_ps(keys + j * kTile + 16);
#pragma GCC unroll 8
        for (int i = 0; i < kScoreRows; ++i) {
          const __m512 x = _mm512_set1_ps(q[(r0 + i) * D + j]);
          lo[i] = _mm512_fmadd_ps(x, k0, lo[i]);
          hi[i] = _mm512_fmadd_ps(x, k1, hi[i]);
        }
      }
      for (int i = 0; i < kScoreRows; ++i) {
        float* row = scores + (r0 + i) * kBlockKeys + t * kTile;
        _mm512_storeu_ps(row, lo[i]);
        _mm512_storeu_ps(row + 16, hi[i]);
      }
    }
  }
}

// out[r] = out[r] * rescale[r] + probs[r] . values, for n keys: values [n][D].
template <int D>
void accumulate_block(const float* probs, int n, const float* values, const float* rescale,
                      float* out) {
  constexpr int C = D / 16, R = 16 / C;  // R rows x C vectors: 16 accumulators
  for (int r0 = 0; r0 < kRows; r0 += R) {
    __m512 acc[R][C];
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < C; ++c)
        acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(out + (r0 + i) * D + c * 16),
                                  _mm512_set1_ps(rescale[r0 + i]));
    for (int k = 0; k < n; ++k) {
      __m512 value[C];
      for (int c = 0; c < C; ++c) value[c] = _mm512_loadu_ps(values + k * D + c * 16);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512 p = _mm512_set1_ps(probs[(r0 + i) * kBlockKeys + k]);
        for (int c = 0; c < C; ++c) acc[i][c] = _mm512_fmadd_ps(p, value[c], acc[i][c]);
      }
    }
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + (r0 + i) * D + c * 16, acc[i][c]);
  }
}

// The online softmax over one block of n keys starting at key `first`: masks keys at or past
// each row's limit, turns scores into exp(score - running max) in place and records how much
// each row's earlier sums shrink.
void softmax_block(float* scores, int n, int64_t first, const int64_t* limit, float* row_max,
                   float* row_sum, float* rescale) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < kRows; ++r) {
    float* row = scores + r * kBlockKeys;
    const int64_t visible = std::clamp<int64_t>(limit[r] - first, 0, n);
    __m512 peak = _mm512_set1_ps(neg_inf);
    for (int c = 0; c < n; c += 16) {
      __m512 s = _mm512_loadu_ps(row + c);
      if (c + 16 > visible) {
        const int keep = static_cast<int>(std::max<int64_t>(visible - c, 0));
        s = _mm512_mask_blend_ps(static_cast<__mmask16>((1u << keep) - 1),
                                 _mm512_set1_ps(neg_inf), s);
        _mm512_storeu_ps(row + c, s);
      }
      peak = _mm512_max_ps(peak, s);
    }
    const float new_max = std::max(row_max[r], _mm512_reduce_max_ps(peak));
    if (new_max == neg_inf) {  // nothing visible yet: the row stays empty
      rescale[r] = 1.f;
      for (int c = 0; c < n; c += 16) _mm512_storeu_ps(row + c, _mm512_setzero_ps());
      continue;
    }
    __m512 sum = _mm512_setzero_ps();
    for (int c = 0; c < n; c += 16) {
      const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + c), _mm512_set1_ps(new_max)));
      _mm512_storeu_ps(row + c, p);
      sum = _mm512_add_ps(sum, p);
    }
    rescale[r] = std::exp(row_max[r] - new_max);
    row_sum[r] = row_sum[r] * rescale[r] + _mm512_reduce_add_ps(sum);
    row_max[r] = new_max;
  }
}

struct Shape {
  int64_t tokens, heads, group, num_keys, tiles;
  bool causal;
  // Keys stacked row r (token r / group) sees: causal queries are the last `tokens` positions.
  int64_t limit(int64_t r) const {
    if (r >= tokens * group) return num_keys;  // padding rows: any finite result, not stored
    return causal ? num_keys - tokens + r / group + 1 : num_keys;
  }
};

// One task: kRows stacked rows [row0, row0 + kRows) of KV head `head`.
template <typename T, int D>
void attend_rows(const T* q, const float* kt, const float* vf, const Shape& shape, int64_t head,
                 int64_t row0, T* out, float* lse) {
  alignas(64) float qf[kRows * D];
  alignas(64) float acc[kRows * D];
  alignas(64) float scores[kRows * kBlockKeys];
  float row_max[kRows], row_sum[kRows], rescale[kRows];
  int64_t limit[kRows];
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t rows = shape.tokens * shape.group;
  int64_t last_key = 0;
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r;
    const int64_t offset = (row / shape.group * shape.heads + head * shape.group +
                            row % shape.group) * D;
    for (int c = 0; c < D; c += 16) {
      const __m512 x = row < rows ? load16(q + offset + c) : _mm512_setzero_ps();
      _mm512_storeu_ps(qf + r * D + c, _mm512_mul_ps(x, _mm512_set1_ps(scale)));
      _mm512_storeu_ps(acc + r * D + c, _mm512_setzero_ps());
    }
    limit[r] = shape.limit(row);
    last_key = std::max(last_key, row < rows ? limit[r] : 0);
    row_max[r] = -std::numeric_limits<float>::infinity();
    row_sum[r] = 0.f;
  }
  for (int64_t first = 0; first < last_key; first += kBlockKeys) {
    const int n = static_cast<int>(std::min<int64_t>(kBlockKeys, last_key - first));
    const int tiles = (n + kTile - 1) / kTile;
    score_block<D>(qf, kt + first * D, tiles, scores);
    softmax_block(scores, tiles * kTile, first, limit, row_max, row_sum, rescale);
    accumulate_block<D>(scores, n, vf + first * D, rescale, acc);
  }
  for (int r = 0; r < kRows && row0 + r < rows; ++r) {
    const int64_t row = row0 + r;
    const int64_t index = row / shape.group * shape.heads + head * shape.group + row % shape.group;
    const float inv = 1.f / row_sum[r];
    for (int d = 0; d < D; ++d) out[index * D + d] = static_cast<T>(acc[r * D + d] * inv);
    lse[index] = row_max[r] + std::log(row_sum[r]);
  }
}

template <typename T, int D>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& blocks, int64_t block_size, const Shape& shape,
                at::Tensor& out, at::Tensor& lse) {
  const int64_t kv_heads = k.size(0), slots = k.size(1);
  const int64_t padded = shape.tiles * kTile;
  auto kt = at::empty({kv_heads, padded, D}, q.options().dtype(at::kFloat));
  auto vf = at::empty({kv_heads, padded, D}, q.options().dtype(at::kFloat));
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* bp = blocks.data_ptr<int64_t>();
  float* ktp = kt.data_ptr<float>();
  float* vfp = vf.data_ptr<float>();
  const int threads = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < kv_heads * shape.tiles; ++task) {
    const int64_t head = task / shape.tiles, tile = task % shape.tiles;
    pack_tile<T, D>(kp + head * slots * D, vp + head * slots * D, bp, block_size, shape.num_keys,
                    tile, ktp + head * padded * D, vfp + head * padded * D);
  }
  const int64_t row_blocks = (shape.tokens * shape.group + kRows - 1) / kRows;
  const T* qp = q.data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  // A KV head at a time, so that its packed keys stay in cache; in it the last row blocks
  // first: causal ones see the most keys, and no thread waits on a long tail.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t task = 0; task < kv_heads * row_blocks; ++task) {
    const int64_t head = task / row_blocks, block = row_blocks - 1 - task % row_blocks;
    attend_rows<T, D>(qp, ktp + head * padded * D, vfp + head * padded * D, shape, head,
                      block * kRows, op, lp);
  }
}

template <typename T>
void dispatch_dim(int64_t d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& blocks, int64_t block_size, const Shape& shape,
                  at::Tensor& out, at::Tensor& lse) {
  switch (d) {
    case 16: return attend_all<T, 16>(q, k, v, blocks, block_size, shape, out, lse);
    case 32: return attend_all<T, 32>(q, k, v, blocks, block_size, shape, out, lse);
    case 64: return attend_all<T, 64>(q, k, v, blocks, block_size, shape, out, lse);
    default: return attend_all<T, 128>(q, k, v, blocks, block_size, shape, out, lse);
  }
}

}  // namespace

std::vector<at::Tensor> prefill_attention(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& blocks,
                                          int64_t num_keys, int64_t block_size, bool causal) {
  check_pool_inputs(q, k, v, "prefill_attention");
  const int64_t d = q.size(2);
  TORCH_CHECK(blocks.scalar_type() == at::kLong && blocks.dim() == 1,
              "prefill_attention: blocks [n], int64");
  TORCH_CHECK(block_size > 0 && num_keys > 0 && num_keys <= blocks.size(0) * block_size,
              "prefill_attention: num_keys in [1, blocks * block_size], not ", num_keys);
  TORCH_CHECK(!causal || num_keys >= q.size(0),
              "prefill_attention: causal queries are the last of the keys' positions");
  const auto blocks_c = blocks.contiguous();
  const int64_t* block = blocks_c.data_ptr<int64_t>();
  const int64_t used = (num_keys + block_size - 1) / block_size;
  for (int64_t i = 0; i < used; ++i)
    TORCH_CHECK(block[i] >= 0 && (block[i] + 1) * block_size <= k.size(1),
                "prefill_attention: block ", block[i], " outside the pool");
  // Tiles of 32 positions may reach into the next block: the table is padded to cover them.
  const int64_t tiles = (num_keys + kTile - 1) / kTile;
  auto table = blocks_c;
  const int64_t needed = (tiles * kTile + block_size - 1) / block_size;
  if (needed > blocks_c.size(0))
    table = at::cat({blocks_c, blocks_c.new_zeros(needed - blocks_c.size(0))});
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  if (q.size(0) == 0) return {out, lse};
  const Shape shape{q.size(0), q.size(1), q.size(1) / k.size(0), num_keys, tiles, causal};
  if (q.scalar_type() == at::kFloat) {
    dispatch_dim<float>(d, q, k, v, table, block_size, shape, out, lse);
  } else {
    dispatch_dim<c10::BFloat16>(d, q, k, v, table, block_size, shape, out, lse);
  }
  return {out, lse};
}

// rms_norm and rotary: the decoder's per-token passes in one pass each over the activations,
// for inference on CPU, where torch runs RMSNorm as six passes (power, mean, add, rsqrt, two
// products) and the rotary embedding as five. Each rounds where the torch code of
// kojudge.model.decoder (their reference) rounds, so that bfloat16 results match it.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.h"

namespace {

using namespace kojudge;

// Rows of x [..., D] for a 2-d or 3-d tensor whose last dim is contiguous: row r starts at
// (r / inner) * outer_stride + (r % inner) * inner_stride.
struct Rows {
  int64_t count, inner, outer_stride, inner_stride, width;
  explicit Rows(const at::Tensor& x)
      : count(x.numel() / x.size(-1)),
        inner(x.dim() == 3 ? x.size(1) : 1),
        outer_stride(x.stride(0)),
        inner_stride(x.dim() == 3 ? x.stride(1) : 0),
        width(x.size(-1)) {}
  int64_t offset(int64_t r) const { return r / inner * outer_stride + r % inner * inner_stride; }
  int64_t grain() const { return std::max<int64_t>(1, 16384 / width); }
};

template <typename T>
void rms_norm_rows(const T* x, const T* weight, float eps, const Rows& rows, T* out) {
  const int64_t d = rows.width;
  at::parallel_for(0, rows.count, rows.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + rows.offset(r);
      __m512 squares = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; c += 16) {
        const __m512 v = load16(row + c, static_cast<int>(std::min<int64_t>(16, d - c)));
        squares = _mm512_fmadd_ps(v, v, squares);
      }
      const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(d);
      const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(mean + eps));
      for (int64_t c = 0; c < d; c += 16) {
        const int n = static_cast<int>(std::min<int64_t>(16, d - c));
        const __m512 normed = round_to(_mm512_mul_ps(load16(row + c, n), inv), row);
        store16(out + r * d + c, _mm512_mul_ps(normed, load16(weight + c, n)), n);
      }
    }
  });
}

// out = x * cos + rotate_half(x) * sin, each product rounded to T before the sum.
template <typename T>
void rotary_rows(const T* x, const T* cos, const T* sin, const Rows& rows, T* out) {
  const int64_t d = rows.width, half = d / 2;
  const __m512 sign = _mm512_set1_ps(-0.f);
  at::parallel_for(0, rows.count, rows.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + rows.offset(r);
      const int64_t token = r / rows.inner;
      const T* c_row = cos + token * d;
      const T* s_row = sin + token * d;
      T* o = out + r * d;
      for (int64_t c = 0; c < half; c += 16) {
        const int n = static_cast<int>(std::min<int64_t>(16, half - c));
        const __m512 x1 = load16(row + c, n), x2 = load16(row + half + c, n);
        const __m512 first = _mm512_add_ps(
            round_to(_mm512_mul_ps(_mm512_xor_ps(x2, sign), load16(s_row + c, n)), row),
            round_to(_mm512_mul_ps(x1, load16(c_row + c, n)), row));
        const __m512 second = _mm512_add_ps(
            round_to(_mm512_mul_ps(x1, load16(s_row + half + c, n)), row),
            round_to(_mm512_mul_ps(x2, load16(c_row + half + c, n)), row));
        store16(o + c, first, n);
        store16(o + half + c, second, n);
      }
    }
  });
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK((x.dim() == 2 || x.dim() == 3) && x.stride(-1) == 1, name,
              ": x [N, D] or [N, H, D] with its last dim contiguous");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              ": float32 or bfloat16");
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, "rms_norm");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "rms_norm: weight [D], contiguous, of x's dtype");
  auto out = at::empty(x.sizes(), x.options());
  const Rows rows(x);
  if (x.scalar_type() == at::kFloat) {
    rms_norm_rows(x.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(eps), rows,
                  out.data_ptr<float>());
  } else {
    rms_norm_rows(x.data_ptr<c10::BFloat16>(), weight.data_ptr<c10::BFloat16>(),
                  static_cast<float>(eps), rows, out.data_ptr<c10::BFloat16>());
  }
  return out;
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_rows(x, "rotary");
  TORCH_CHECK(x.dim() == 3 && x.size(2) % 2 == 0, "rotary: x [T, heads, d], d even");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == x.size(0) * x.size(2) &&
                  cos.is_contiguous() && sin.is_contiguous() &&
                  cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rotary: cos and sin [T, 1, d], contiguous, of x's dtype");
  auto out = at::empty(x.sizes(), x.options());
  const Rows rows(x);
  if (x.scalar_type() == at::kFloat) {
    rotary_rows(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), rows,
                out.data_ptr<float>());
  } else {
    rotary_rows(x.data_ptr<c10::BFloat16>(), cos.data_ptr<c10::BFloat16>(),
                sin.data_ptr<c10::BFloat16>(), rows, out.data_ptr<c10::BFloat16>());
  }
  return out;
}

// AVX-512 helpers shared by the CPU kernels (cpu_kernels.cpp, span_attention.cpp).
#pragma once

#include <c10/util/BFloat16.h>

#include <immintrin.h>

namespace kojudge {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const c10::BFloat16* p) {
  __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// exp(x) as 2^n * 2^f with n = round(x log2 e), |f| <= 1/2: degree-6 Taylor series of 2^f,
// relative error ~1e-7. Inputs far below the float range (-inf for masked keys) give 0.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// The sums of 16 vectors' lanes as one vector: lane j holds the sum of x[j]'s lanes. Pairs
// are added within 128-bit lanes, then across them: 45 operations where 16 separate horizontal
// sums take ~160.
inline __m512 sum_lanes16(const __m512* x) {
  __m512 pairs[8], quads[4], halves[2];
  for (int i = 0; i < 8; ++i)
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                             _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                       _mm512_shuffle_f32x4(halves[0], halves[1], 0xdd));
}


// Rows r[0..15] in, columns out: afterwards lane i of r[j] is what lane j of r[i] was. Pairs,
// then quads within 128-bit lanes, then the lanes themselves: 64 shuffles for 256 floats.
inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + e]: element e of each 128-bit lane, rows 4i..4i+3
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  __m512 out[16];
  for (int e = 0; e < 4; ++e) {
    const __m512 even01 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x88);
    const __m512 odd01 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xdd);
    const __m512 even23 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xdd);
    out[e] = _mm512_shuffle_f32x4(even01, even23, 0x88);
    out[8 + e] = _mm512_shuffle_f32x4(even01, even23, 0xdd);
    out[4 + e] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
    out[12 + e] = _mm512_shuffle_f32x4(odd01, odd23, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = out[i];
}

// The first n (<= 16) elements as float32; the other lanes 0.
inline __m512 load16(const float* p, int n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}

inline __m512 load16(const c10::BFloat16* p, int n) {
  __m256i bits = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// x rounded to the nearest bfloat16 (ties to even), as c10::BFloat16 rounds; NaN stays NaN.
inline __m256i to_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// x's first n lanes stored, in float32 or rounded to bfloat16.
inline void store16(float* p, __m512 x, int n) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), x);
}

inline void store16(c10::BFloat16* p, __m512 x, int n) {
  _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), to_bf16(x));
}

// x as the element type would hold it: unchanged in float32, rounded through bfloat16.
inline __m512 round_to(__m512 x, const float*) { return x; }

inline __m512 round_to(__m512 x, const c10::BFloat16*) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(x)), 16));
}

}  // namespace kojudge

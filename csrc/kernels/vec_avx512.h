// 16 x float32 in a zmm register; compiled only with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma.
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <immintrin.h>

#include <cstdint>

namespace sparsekit {
namespace SK_ISA {

struct Vec {
  using T = __m512;
  static constexpr int W = 16;
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline T set1(float v) { return _mm512_set1_ps(v); }
  static inline T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline float hsum(T v) {
    // Fixed pairwise order so results do not depend on the compiler's choice.
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline __m512i index16(const uint16_t* idx) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
  }
  static inline __m512i index16(const int32_t* idx) {
    return _mm512_loadu_si512(reinterpret_cast<const void*>(idx));
  }
  template <class I>
  static inline T gather(const float* base, const I* idx) {
    return _mm512_i32gather_ps(index16(idx), base, 4);
  }
};

}  // namespace SK_ISA
}  // namespace sparsekit

// 8 x float32 in a ymm register; compiled only with -mavx2 -mfma.
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <immintrin.h>

#include <cstdint>

namespace sparsekit {
namespace SK_ISA {

struct Vec {
  using T = __m256;
  static constexpr int W = 8;
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline T set1(float v) { return _mm256_set1_ps(v); }
  static inline T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline __m256i index8(const uint16_t* idx) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
  }
  static inline __m256i index8(const int32_t* idx) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
  }
  template <class I>
  static inline T gather(const float* base, const I* idx) {
    return _mm256_i32gather_ps(base, index8(idx), 4);
  }
};

}  // namespace SK_ISA
}  // namespace sparsekit

// 16 x float32 in a zmm register; compiled only with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma.
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <immintrin.h>

#include <cstdint>

#include "x86_common.h"

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
  static inline T max(T a, T b) { return _mm512_max_ps(a, b); }  // b when either is NaN
  static inline __m512 join(__m256 lo, __m256 hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  }
  // The batch-1 CSR loop runs 8 wide (see x86::Ymm).
  using Gather = x86::Ymm;

  static constexpr bool kGroupOps = true;
  // Lane l holds base[idx[l / G]].
  template <int G, class I>
  static inline T bcast_groups(const float* base, const I* idx) {
    static_assert(G == 2 || G == 4 || G == 8, "group of 2, 4 or 8");
    if constexpr (G == 8) {
      return join(_mm256_broadcast_ss(base + idx[0]), _mm256_broadcast_ss(base + idx[1]));
    } else if constexpr (G == 4) {
      const __m512 v = _mm512_castps128_ps512(x86::gather4(base, idx));
      return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), v);
    } else {
      const __m512 v = _mm512_castps256_ps512(x86::gather8(base, idx));
      return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), v);
    }
  }
  // Lane l holds base[idx[l / G] * G + l % G].
  template <int G, class I>
  static inline T chunk_groups(const float* base, const I* idx) {
    static_assert(G == 2 || G == 4 || G == 8, "group of 2, 4 or 8");
    if constexpr (G == 8) {
      return join(_mm256_loadu_ps(base + static_cast<int64_t>(idx[0]) * 8),
                  _mm256_loadu_ps(base + static_cast<int64_t>(idx[1]) * 8));
    } else if constexpr (G == 4) {
      return join(_mm256_loadu2_m128(base + static_cast<int64_t>(idx[1]) * 4, base + static_cast<int64_t>(idx[0]) * 4),
                  _mm256_loadu2_m128(base + static_cast<int64_t>(idx[3]) * 4, base + static_cast<int64_t>(idx[2]) * 4));
    } else {
      return join(x86::pairs4(base, idx), x86::pairs4(base, idx + 4));
    }
  }
  static constexpr int kTile = 8;
  static inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
    x86::transpose8x8(src, lds, dst, ldd);
  }
};

}  // namespace SK_ISA
}  // namespace sparsekit

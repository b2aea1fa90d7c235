// 8 x float32 in a ymm register; compiled only with -mavx2 -mfma.
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <immintrin.h>

#include <cstdint>

#include "x86_common.h"

namespace sparsekit {
namespace SK_ISA {

struct Vec : x86::Ymm {
  using Gather = x86::Ymm;  // the batch-1 CSR loop's width

  // Group operations for blocks narrower than a register (kGroupOps).
  static constexpr bool kGroupOps = true;
  // Lane l holds base[idx[l / G]] (r x 1 blocks at batch 1, G = r < W).
  template <int G, class I>
  static inline T bcast_groups(const float* base, const I* idx) {
    static_assert(G == 2 || G == 4, "group of 2 or 4");
    if constexpr (G == 4) {
      return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(base + idx[0])),
                                  _mm_broadcast_ss(base + idx[1]), 1);
    } else {
      const __m256 v = _mm256_castps128_ps256(x86::gather4(base, idx));
      return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    }
  }
  // Lane l holds base[idx[l / G] * G + l % G] (1 x c blocks at batch 1, G = c < W).
  template <int G, class I>
  static inline T chunk_groups(const float* base, const I* idx) {
    static_assert(G == 2 || G == 4, "group of 2 or 4");
    if constexpr (G == 4) {
      return _mm256_loadu2_m128(base + static_cast<int64_t>(idx[1]) * 4, base + static_cast<int64_t>(idx[0]) * 4);
    } else {
      return x86::pairs4(base, idx);
    }
  }
  // dst[j * ldd + i] = src[i * lds + j], 8 x 8.
  static constexpr int kTile = 8;
  static inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
    x86::transpose8x8(src, lds, dst, ldd);
  }
};

}  // namespace SK_ISA
}  // namespace sparsekit

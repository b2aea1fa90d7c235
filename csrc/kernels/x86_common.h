// Small AVX2 helpers shared (as inline code, inside each unit's own SK_ISA
// namespace) by the avx2 and avx512 units. Included only after <immintrin.h>
// from a unit compiled with at least -mavx2 -mfma.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sparsekit {
namespace SK_ISA {
namespace x86 {

// Four (eight) scalar loads assembled into one register. On Zen 3/4 this beats
// vgatherdps for random float gathers (the microcoded gather is ~1 element/cycle).
// uint16 indices are read four at a time with one 64-bit load and split with
// shifts (ALU work), which leaves the load ports to the x values.
inline __m128 gather4(const float* base, const uint16_t* idx) {
  uint64_t q;
  std::memcpy(&q, idx, sizeof q);
  __m128 v = _mm_load_ss(base + (q & 0xffff));
  v = _mm_insert_ps(v, _mm_load_ss(base + ((q >> 16) & 0xffff)), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(base + ((q >> 32) & 0xffff)), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(base + (q >> 48)), 0x30);
}
inline __m128 gather4(const float* base, const int32_t* idx) {
  __m128 v = _mm_load_ss(base + idx[0]);
  v = _mm_insert_ps(v, _mm_load_ss(base + idx[1]), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(base + idx[2]), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(base + idx[3]), 0x30);
}
template <class I>
inline __m256 gather8(const float* base, const I* idx) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(base, idx)), gather4(base, idx + 4), 1);
}
// Two adjacent floats at base + idx[g] * 2 for g = 0..3.
template <class I>
inline __m256 pairs4(const float* base, const I* idx) {
  auto pair = [&](int g) {
    return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(base + static_cast<int64_t>(idx[g]) * 2)));
  };
  const __m128 lo = _mm_movelh_ps(pair(0), pair(1));
  const __m128 hi = _mm_movelh_ps(pair(2), pair(3));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// 8 x float32 in a ymm register: the AVX2 Vec's arithmetic, and the width of the
// batch-1 CSR loop in both x86 units (Vec::Gather). That loop assembles x values with
// scalar loads, so a wider register only adds insert and reduction work. AVX-512 unit,
// one thread, Zen 4 build machine, 16 wide -> 8 wide: 17.7 -> 15.6 us on 1024x1000 at
// 95% (51 values per row), 73.7 -> 64.7 us on 3072x768 at 90%, 404 -> 383 us on
// 4096x4096 at 90%.
struct Ymm {
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
  static inline T max(T a, T b) { return _mm256_max_ps(a, b); }  // b when either is NaN
  // W values base[idx[0..W)]: scalar loads (faster than vgatherdps on AMD Zen).
  template <class I>
  static inline T gather(const float* base, const I* idx) { return gather8(base, idx); }
};

// dst[j * ldd + i] = src[i * lds + j] for an 8 x 8 tile.
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}

}  // namespace x86
}  // namespace SK_ISA
}  // namespace sparsekit

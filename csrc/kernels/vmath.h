// Vectorised elementwise math for the kernels' epilogues (GELU), written once over a
// small per-register-type trait. Included by spmm_impl.h inside each unit's SK_ISA
// namespace, after that unit's vec_<isa>.h, so every unit gets its own copy compiled
// with its own flags (nothing here is shared between units).
#pragma once
#include <cstdint>

namespace sparsekit {
namespace SK_ISA {

// Operations gelu() needs on one register type T. clamp(v, lo, hi) returns NaN when v
// is NaN (the x86 max/min return their second operand when either is NaN, so the order
// of the operands below matters).
template <class T>
struct VMath;

template <>
struct VMath<float> {
  using T = float;
  static inline T set1(float v) { return v; }
  static inline T mul(T a, T b) { return a * b; }
  static inline T div(T a, T b) { return a / b; }
  static inline T fmadd(T a, T b, T c) { return a * b + c; }
  static inline T clamp(T v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
};

#if defined(__AVX2__) && defined(__FMA__)
template <>
struct VMath<__m256> {
  using T = __m256;
  static inline T set1(float v) { return _mm256_set1_ps(v); }
  static inline T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm256_div_ps(a, b); }
  static inline T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T clamp(T v, float lo, float hi) {
    return _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), v));
  }
};
#endif

#if defined(__AVX512F__)
template <>
struct VMath<__m512> {
  using T = __m512;
  static inline T set1(float v) { return _mm512_set1_ps(v); }
  static inline T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm512_div_ps(a, b); }
  static inline T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T clamp(T v, float lo, float hi) {
    return _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), v));
  }
};
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
template <>
struct VMath<float32x4_t> {
  using T = float32x4_t;
  static inline T set1(float v) { return vdupq_n_f32(v); }
  static inline T mul(T a, T b) { return vmulq_f32(a, b); }
  static inline T div(T a, T b) { return vdivq_f32(a, b); }
  static inline T fmadd(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static inline T clamp(T v, float lo, float hi) {
    const T l = vdupq_n_f32(lo), h = vdupq_n_f32(hi);
    const T up = vbslq_f32(vcltq_f32(v, l), l, v);   // NaN compares false: stays NaN
    return vbslq_f32(vcgtq_f32(up, h), h, up);
  }
};
#endif

// GELU (the erf form, torch's default): 0.5 x (1 + erf(x / sqrt 2)).
// erf(z) = z P(z^2) / Q(z^2) for |z| <= 3.93 and +-1 beyond (erf(3.93) rounds to 1 in
// float32). P and Q (degree 5 each) were fitted for relative error over [0, 3.93]
// (Lawson-weighted least squares in float64): 2.0e-8 in float64; evaluated in float32
// with FMAs the absolute error of erf is at most 2.9e-7 over [-6, 6] (measured on a
// 600,001-point grid), against 5e-8 for a correctly rounded erf. NaN stays NaN, +Inf
// gives +Inf and -Inf gives NaN (0 * -Inf), like the formula in float arithmetic.
template <class T>
inline T gelu(T x) {
  using M = VMath<T>;
  const T z = M::clamp(M::mul(x, M::set1(0.70710678118654752440f)), -3.93f, 3.93f);
  const T t = M::mul(z, z);
  T p = M::set1(2.043057748e-06f);
  p = M::fmadd(p, t, M::set1(2.848255390e-04f));
  p = M::fmadd(p, t, M::set1(3.777919337e-03f));
  p = M::fmadd(p, t, M::set1(5.278529972e-02f));
  p = M::fmadd(p, t, M::set1(1.907370687e-01f));
  p = M::fmadd(p, t, M::set1(1.128379107e+00f));
  T q = M::set1(3.801620915e-05f);
  q = M::fmadd(q, t, M::set1(1.164904446e-03f));
  q = M::fmadd(q, t, M::set1(1.499402430e-02f));
  q = M::fmadd(q, t, M::set1(1.142392755e-01f));
  q = M::fmadd(q, t, M::set1(5.023690462e-01f));
  q = M::fmadd(q, t, M::set1(1.0f));
  const T e = M::clamp(M::div(M::mul(z, p), q), -1.f, 1.f);
  const T h = M::mul(x, M::set1(0.5f));
  return M::fmadd(h, e, h);
}

}  // namespace SK_ISA
}  // namespace sparsekit

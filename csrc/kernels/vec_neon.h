// 4 x float32 in a NEON q register (aarch64).
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <arm_neon.h>

#include <cstdint>

namespace sparsekit {
namespace SK_ISA {

struct Vec {
  using Gather = Vec;  // the batch-1 CSR loop's width
  using T = float32x4_t;
  static constexpr int W = 4;
  static inline T zero() { return vdupq_n_f32(0.f); }
  static inline T load(const float* p) { return vld1q_f32(p); }
  static inline void store(float* p, T v) { vst1q_f32(p, v); }
  static inline T set1(float v) { return vdupq_n_f32(v); }
  static inline T fmadd(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static inline T add(T a, T b) { return vaddq_f32(a, b); }
  static inline float hsum(T v) {
    float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(s, s), 0);
  }
  static inline T max(T a, T b) {  // b when either is NaN, like x86 maxps
    return vbslq_f32(vcgtq_f32(a, b), a, b);
  }
  static constexpr bool kGroupOps = false;
  static constexpr int kTile = 0;  // no register transpose: plain loops
  template <class I>
  static inline T gather(const float* base, const I* idx) {
    float t[4] = {base[idx[0]], base[idx[1]], base[idx[2]], base[idx[3]]};
    return vld1q_f32(t);
  }
};

}  // namespace SK_ISA
}  // namespace sparsekit

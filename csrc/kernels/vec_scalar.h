// One-lane "vector": the portable baseline every build has.
#pragma once
// Included by the one translation unit that defines SK_ISA for this instruction set.
#include <cstdint>

namespace sparsekit {
namespace SK_ISA {

struct Vec {
  using Gather = Vec;  // the batch-1 CSR loop's width
  using T = float;
  static constexpr int W = 1;
  static inline T zero() { return 0.f; }
  static inline T load(const float* p) { return *p; }
  static inline void store(float* p, T v) { *p = v; }
  static inline T set1(float v) { return v; }
  static inline T fmadd(T a, T b, T c) { return a * b + c; }
  static inline T add(T a, T b) { return a + b; }
  static inline float hsum(T v) { return v; }
  static inline T max(T a, T b) { return a > b ? a : b; }  // b when either is NaN
  static constexpr bool kGroupOps = false;
  static constexpr int kTile = 0;  // no register transpose: plain loops
  template <class I>
  static inline T gather(const float* base, const I* idx) { return base[idx[0]]; }
};

}  // namespace SK_ISA
}  // namespace sparsekit

// How fast can a batch-1 CSR loop be on this core? Standalone (no sparsekit), AVX2.
//
//   g++ -O3 -mavx2 -mfma benchmarks/cpp/gather_ceiling.cpp -o /tmp/gather_ceiling
//   /tmp/gather_ceiling            # 4096x4096 at 90%, uint16 indices, weights in cache
//
// Prints ns per stored value for
//   * spmv:     the batch-1 CSR loop as sparsekit runs it (scalar-load gather, 16 values
//               per step, two accumulators, prefetch);
//   * assemble: only the part every such loop must do per stored value: fetch x[idx] from
//               a random column into a vector lane (no values, no FMAs, x in L1);
//   * gather:   the same loop with vgatherdps instead of scalar loads;
//   * stream:   a streaming read of the same bytes (values + indices), for comparison.
// assemble / stream bounds the share of a streaming read any loop of this kind can reach.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

inline __m128 gather4(const float* b, const uint16_t* idx) {
  uint64_t q;
  std::memcpy(&q, idx, 8);
  __m128 v = _mm_load_ss(b + (q & 0xffff));
  v = _mm_insert_ps(v, _mm_load_ss(b + ((q >> 16) & 0xffff)), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(b + ((q >> 32) & 0xffff)), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(b + (q >> 48)), 0x30);
}
template <bool HW>
inline __m256 gather8(const float* b, const uint16_t* idx) {
  if constexpr (HW) {
    const __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    return _mm256_i32gather_ps(b, i, 4);
  } else {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(b, idx)), gather4(b, idx + 4), 1);
  }
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <bool HW>
__attribute__((noinline)) void spmv(int rows, const int64_t* ip, const uint16_t* idx, const float* val,
                                    const float* x, float* y) {
  for (int r = 0; r < rows; ++r) {
    int64_t k = ip[r];
    const int64_t ke = ip[r + 1];
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (; k + 16 <= ke; k += 16) {
      __builtin_prefetch(val + k + 512);
      __builtin_prefetch(idx + k + 512);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), gather8<HW>(x, idx + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k + 8), gather8<HW>(x, idx + k + 8), a1);
    }
    for (; k + 8 <= ke; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), gather8<HW>(x, idx + k), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; k < ke; ++k) s += val[k] * x[idx[k]];
    y[r] = s;
  }
}

__attribute__((noinline)) float assemble(int64_t n, const uint16_t* idx, const float* x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t k = 0; k + 32 <= n; k += 32) {
    a0 = _mm256_add_ps(a0, gather8<false>(x, idx + k));
    a1 = _mm256_add_ps(a1, gather8<false>(x, idx + k + 8));
    a2 = _mm256_add_ps(a2, gather8<false>(x, idx + k + 16));
    a3 = _mm256_add_ps(a3, gather8<false>(x, idx + k + 24));
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

__attribute__((noinline)) float stream(const float* p, int64_t n) {
  __m256 a = _mm256_setzero_ps(), b = a;
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
    b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
  }
  return hsum(_mm256_add_ps(a, b));
}

template <class F>
double best_seconds(F&& f, int reps) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main() {
  const int rows = 4096, cols = 4096;
  const double density = 0.1;
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<int64_t> ip(rows + 1);
  std::vector<uint16_t> idx;
  std::vector<float> val;
  for (int r = 0; r < rows; ++r) {
    ip[r] = static_cast<int64_t>(idx.size());
    for (int c = 0; c < cols; ++c)
      if (u(gen) < density) {
        idx.push_back(static_cast<uint16_t>(c));
        val.push_back(u(gen) - 0.5f);
      }
  }
  ip[rows] = static_cast<int64_t>(idx.size());
  const int64_t nnz = ip[rows];
  idx.resize(idx.size() + 1024);  // prefetch reads past the end
  val.resize(val.size() + 1024);
  std::vector<float> x(cols), y(rows), bytes(static_cast<size_t>(nnz + nnz / 2) + 16);
  for (float& v : x) v = u(gen);
  volatile float sink = 0;
  const double t_spmv = best_seconds([&] { spmv<false>(rows, ip.data(), idx.data(), val.data(), x.data(), y.data()); }, 200);
  const double t_hw = best_seconds([&] { spmv<true>(rows, ip.data(), idx.data(), val.data(), x.data(), y.data()); }, 200);
  const double t_asm = best_seconds([&] { sink = sink + assemble(nnz, idx.data(), x.data()); }, 200);
  const double t_str = best_seconds([&] { sink = sink + stream(bytes.data(), nnz + nnz / 2); }, 200);
  // Both loops must compute the product: compare with a double-precision reference.
  double err = 0;
  std::vector<float> y_hw(rows);
  spmv<true>(rows, ip.data(), idx.data(), val.data(), x.data(), y_hw.data());
  for (int r = 0; r < rows; ++r) {
    double ref = 0;
    for (int64_t k = ip[r]; k < ip[r + 1]; ++k) ref += static_cast<double>(val[k]) * x[idx[k]];
    err = std::max({err, std::abs(ref - y[r]), std::abs(ref - y_hw[r])});
  }
  std::printf("%lld stored values, 6 bytes each (float32 value + uint16 index); max |error| %.1e\n",
              static_cast<long long>(nnz), err);
  std::printf("spmv      %.3f ns/value\n", t_spmv / nnz * 1e9);
  std::printf("gather    %.3f ns/value (vgatherdps)\n", t_hw / nnz * 1e9);
  std::printf("assemble  %.3f ns/value (x[idx] into lanes only)\n", t_asm / nnz * 1e9);
  std::printf("stream    %.3f ns/value (streaming read of the same bytes)\n", t_str / nnz * 1e9);
  std::printf("ceiling: assemble reaches %.0f%% of the streaming read; spmv %.0f%%\n", 100 * t_str / t_asm,
              100 * t_str / t_spmv);
  return 0;
}

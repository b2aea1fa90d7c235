// Sparse (block CSR) x dense kernels, written once over `Vec` and compiled once per
// instruction set. A translation unit defines SK_ISA (its namespace), includes its
// vec_<isa>.h and then this file; nothing here may be shared between those units
// (no std containers or out-of-line templates, which would be merged by the linker
// across units compiled with different -m flags).
//
// Design (docs/design.md explains each point):
//  * output-stationary, weight-streaming: a thread owns a range of block rows,
//    balanced by stored blocks, and streams their values and indices; every output
//    element is produced by one thread in one fixed order, so results are bitwise
//    identical for any thread count;
//  * batch of one: a dot product per row. 1x1 blocks gather x with scalar loads
//    (faster than the microcoded vgatherdps on AMD Zen), at most 8 wide
//    (Vec::Gather); r x 1 blocks multiply W/r blocks' values (contiguous) by a
//    register holding each block's x value r times; 1 x c blocks read c contiguous
//    x values per block;
//  * larger batches: the dense operand is packed into panels of NB = NV * W columns
//    (a register-tile transpose for the linear layout) so that one stored value
//    becomes one broadcast and NV fused multiply-adds on contiguous loads; r x 1
//    blocks reuse each panel load for r rows. Rows are processed in chunks of about
//    64 KiB of values, each chunk against every panel tile, so a chunk's values are
//    read from memory once. Results go to a small row-major buffer, which for the
//    linear layout is transposed into y with the same register transpose, and the
//    bias/activation epilogue runs vectorised on contiguous output. For r x 1 blocks
//    (CSR included) the columns are also cut into K-blocks whose panel slice stays in
//    L1 (run_panels_kblocked); partial sums wait in the result buffer between them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "sparsekit/dispatch.h"
#include "vmath.h"

namespace sparsekit {
namespace SK_ISA {

constexpr int W = Vec::W;
using V = typename Vec::T;
// Vec as a dependent type, so that `if constexpr` can skip operations a Vec lacks.
template <class Any>
struct Dep {
  using Vec = SK_ISA::Vec;
};

// ---------------------------------------------------------------- helpers

template <class F>
inline void parallel_parts(int parts, F&& f) {
#ifdef _OPENMP
  if (parts > 1) {
#pragma omp parallel for schedule(static, 1) num_threads(parts)
    for (int t = 0; t < parts; ++t) f(t);
    return;
  }
#endif
  for (int t = 0; t < parts; ++t) f(t);
}

// y[i] = act(y[i] + bias[i]) for i < len (bias may be null).
inline void finish_vec(float* y, const float* bias, Activation act, int64_t len) {
  if (!bias && act == Activation::None) return;
  const bool relu = act == Activation::Relu, gelu_act = act == Activation::Gelu;
  const V zero = Vec::zero();
  int64_t i = 0;
  for (; i + W <= len; i += W) {
    V v = Vec::load(y + i);
    if (bias) v = Vec::add(v, Vec::load(bias + i));
    if (relu) v = Vec::max(zero, v);  // max(0, NaN) is NaN, max(0, -0) is -0: like torch
    if (gelu_act) v = gelu(v);
    Vec::store(y + i, v);
  }
  for (; i < len; ++i) {
    float v = y[i] + (bias ? bias[i] : 0.f);
    if (relu) v = v < 0.f ? 0.f : v;
    if (gelu_act) v = gelu(v);
    y[i] = v;
  }
}

// y[i] = act(src[i] + b) for i < len.
inline void finish_scalar_bias(float* y, const float* src, float b, Activation act, int64_t len) {
  const bool relu = act == Activation::Relu, gelu_act = act == Activation::Gelu;
  const V zero = Vec::zero(), bv = Vec::set1(b);
  int64_t i = 0;
  for (; i + W <= len; i += W) {
    V v = Vec::add(Vec::load(src + i), bv);
    if (relu) v = Vec::max(zero, v);
    if (gelu_act) v = gelu(v);
    Vec::store(y + i, v);
  }
  for (; i < len; ++i) {
    float v = src[i] + b;
    if (relu) v = v < 0.f ? 0.f : v;
    if (gelu_act) v = gelu(v);
    y[i] = v;
  }
}

// dst[j * ldd + i] = src[i * lds + j] for i < m, j < n.
template <class Any = void>
inline void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t m, int64_t n) {
  int64_t mt = 0;  // rows done by register transposes
  if constexpr (Dep<Any>::Vec::kTile > 0) {
    constexpr int T = Dep<Any>::Vec::kTile;
    mt = m - m % T;
    const int64_t nt = n - n % T;
    // T destination rows at a time, each written front to back: T write streams (the
    // destination is y, often not in cache) instead of one per destination row.
    for (int64_t j = 0; j < nt; j += T)
      for (int64_t i0 = 0; i0 < mt; i0 += T)
        Dep<Any>::Vec::transpose_tile(src + i0 * lds + j, lds, dst + j * ldd + i0, ldd);
    for (int64_t j = nt; j < n; ++j)
      for (int64_t i = 0; i < mt; ++i) dst[j * ldd + i] = src[i * lds + j];
  }
  // Remaining rows (all of them without a register transpose), a few rows at a time
  // so that each source row is read sequentially.
  for (int64_t i0 = mt; i0 < m; i0 += 8) {
    const int64_t i1 = std::min<int64_t>(m, i0 + 8);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = i0; i < i1; ++i) dst[j * ldd + i] = src[i * lds + j];
  }
}

// ------------------------------------------------------------------- batch 1

// Prefetches values and indices kStreamAhead bytes (of values) ahead in a batch-1
// loop that consumes `floats` values and floats / G indices per step. The hardware
// prefetchers follow these streams too, but with the weights in DRAM they keep too
// few lines in flight. Measured (4096x4096, 90%, CSR, 1 thread, weights cold):
// 14.6 GB/s without, 16.1 / 16.6 / 15.6 GB/s at 1 / 2 / 4 KiB ahead; hot unchanged.
constexpr int64_t kStreamAhead = 2048;
template <int G, class I>
inline void stream_prefetch(const float* v, const I* idx, int floats) {
  constexpr int64_t ahead = kStreamAhead / 4;  // floats
  for (int f = 0; f < floats; f += 16) __builtin_prefetch(v + ahead + f);
  __builtin_prefetch(idx + ahead / G);  // a step reads at most 64 bytes of indices
}

// Batch-1 row kernels, one per block shape. Each writes the raw dot products (no
// bias/activation) of one block row's R rows, whose stored blocks are [kb, ke), to
// acc[0, R). spmv_block_rows below picks one per (R, C) at compile time:
//
//   spmv_csr          1 x 1 (CSR)          x gathered by scalar loads, Vec::Gather wide
//   spmv_tall_rx1     r x 1, r = k * W     one broadcast of x feeds r / W registers
//   spmv_grouped      r x 1 or 1 x c,      W / r (W / c) blocks per register
//                     1 < r, c < W         (a Vec with kGroupOps)
//   spmv_wide_1xc     1 x c, c = k * W     contiguous loads of values and x
//   spmv_generic_rxc  any other r x c      per-column partial sums (also the narrow
//                                          shapes on a Vec without group operations)
//
// Forced inline: each one is the body of spmv_block_rows's row loop, compiled as if
// written there.
#define SK_ROW_KERNEL inline __attribute__((always_inline))

template <class I>
SK_ROW_KERNEL void spmv_csr(const float* vals, const I* idx, const float* x, int64_t kb, int64_t ke, float* acc) {
  using G = typename Dep<I>::Vec::Gather;
  constexpr int GW = G::W;
  typename G::T a0 = G::zero(), a1 = G::zero();
  int64_t k = kb;
  for (; k + 2 * GW <= ke; k += 2 * GW) {
    stream_prefetch<1>(vals + k, idx + k, 2 * GW);
    a0 = G::fmadd(G::load(vals + k), G::gather(x, idx + k), a0);
    a1 = G::fmadd(G::load(vals + k + GW), G::gather(x, idx + k + GW), a1);
  }
  for (; k + GW <= ke; k += GW) a0 = G::fmadd(G::load(vals + k), G::gather(x, idx + k), a0);
  float s = G::hsum(G::add(a0, a1));
  for (; k < ke; ++k) s += vals[k] * x[idx[k]];
  acc[0] = s;
}

template <class I, int R>
SK_ROW_KERNEL void spmv_tall_rx1(const float* vals, const I* idx, const float* x, int64_t kb, int64_t ke, float* acc) {
  constexpr int NQ = R / W;
  constexpr int SETS = NQ == 1 ? 2 : 1;
  V a[SETS][NQ];
  for (int s = 0; s < SETS; ++s)
    for (int q = 0; q < NQ; ++q) a[s][q] = Vec::zero();
  int64_t k = kb;
  for (; k + SETS <= ke; k += SETS) {
    stream_prefetch<R>(vals + k * R, idx + k, SETS * R);
    for (int s = 0; s < SETS; ++s) {
      const V xv = Vec::set1(x[idx[k + s]]);
      for (int q = 0; q < NQ; ++q) a[s][q] = Vec::fmadd(Vec::load(vals + (k + s) * R + q * W), xv, a[s][q]);
    }
  }
  for (; k < ke; ++k) {
    const V xv = Vec::set1(x[idx[k]]);
    for (int q = 0; q < NQ; ++q) a[0][q] = Vec::fmadd(Vec::load(vals + k * R + q * W), xv, a[0][q]);
  }
  for (int q = 0; q < NQ; ++q) {
    V t = a[0][q];
    for (int s = 1; s < SETS; ++s) t = Vec::add(t, a[s][q]);
    Vec::store(acc + q * W, t);
  }
}

// r x 1 (1 < r < W) or 1 x c (1 < c < W) blocks, G = r or c values each: W / G
// blocks per register, whose values are contiguous (needs Vec::kGroupOps).
template <class I, int R, int C>
SK_ROW_KERNEL void spmv_grouped(const float* vals, const I* idx, const float* x, int64_t kb, int64_t ke, float* acc) {
  constexpr int G = C == 1 ? R : C;
  constexpr int PER = W / G;  // blocks per register
  V a0 = Vec::zero(), a1 = Vec::zero();
  auto xs = [&](int64_t k) {
    using DV = typename Dep<I>::Vec;
    if constexpr (C == 1) return DV::template bcast_groups<G>(x, idx + k);
    else return DV::template chunk_groups<G>(x, idx + k);
  };
  int64_t k = kb;
  for (; k + 2 * PER <= ke; k += 2 * PER) {
    stream_prefetch<G>(vals + k * G, idx + k, 2 * W);
    a0 = Vec::fmadd(Vec::load(vals + k * G), xs(k), a0);
    a1 = Vec::fmadd(Vec::load(vals + (k + PER) * G), xs(k + PER), a1);
  }
  for (; k + PER <= ke; k += PER) a0 = Vec::fmadd(Vec::load(vals + k * G), xs(k), a0);
  float lanes[W];
  Vec::store(lanes, Vec::add(a0, a1));
  if constexpr (C == 1) {
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      for (int g = 0; g < PER; ++g) s += lanes[g * R + r];
      for (int64_t kk = k; kk < ke; ++kk) s += vals[kk * R + r] * x[idx[kk]];
      acc[r] = s;
    }
  } else {
    float s = 0.f;
    for (int l = 0; l < W; ++l) s += lanes[l];
    for (int64_t kk = k; kk < ke; ++kk)
      for (int c = 0; c < C; ++c) s += vals[kk * C + c] * x[static_cast<int64_t>(idx[kk]) * C + c];
    acc[0] = s;
  }
}

template <class I, int C>
SK_ROW_KERNEL void spmv_wide_1xc(const float* vals, const I* idx, const float* x, int64_t kb, int64_t ke, float* acc) {
  V a[C / W];
  for (int q = 0; q < C / W; ++q) a[q] = Vec::zero();
  for (int64_t k = kb; k < ke; ++k) {
    const float* xb = x + static_cast<int64_t>(idx[k]) * C;
    for (int q = 0; q < C / W; ++q) a[q] = Vec::fmadd(Vec::load(vals + k * C + q * W), Vec::load(xb + q * W), a[q]);
  }
  V t = a[0];
  for (int q = 1; q < C / W; ++q) t = Vec::add(t, a[q]);
  acc[0] = Vec::hsum(t);
}

// C = 0: a block width known only at run time (bc <= 16).
template <class I, int R, int C>
SK_ROW_KERNEL void spmv_generic_rxc(const BsrView& w, const float* vals, const I* idx, const float* x, int64_t kb,
                                    int64_t ke, float* acc) {
  const int bc = C > 0 ? C : w.bc;
  constexpr int CM = C > 0 ? C : 16;
  float part[R][CM];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CM; ++c) part[r][c] = 0.f;
  for (int64_t k = kb; k < ke; ++k) {
    const float* vb = vals + k * R * bc;
    const float* xb = x + static_cast<int64_t>(idx[k]) * bc;
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < bc; ++c) part[r][c] += vb[r * bc + c] * xb[c];
  }
  for (int r = 0; r < R; ++r) {
    float s = 0.f;
    for (int c = 0; c < bc; ++c) s += part[r][c];
    acc[r] = s;
  }
}

// Rows of block rows [b0, b1): raw dot products (no bias/activation) into y, by the
// row kernel for R x C blocks (the one place that chooses it).
template <class I, int R, int C>
void spmv_block_rows(const BsrView& w, const I* idx, const float* x, float* y, int64_t b0, int64_t b1) {
  const float* vals = static_cast<const float*>(w.values);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t kb = w.indptr[b], ke = w.indptr[b + 1];
    float acc[R];
    if constexpr (R == 1 && C == 1) spmv_csr<I>(vals, idx, x, kb, ke, acc);
    else if constexpr (C == 1 && R >= W && R % W == 0) spmv_tall_rx1<I, R>(vals, idx, x, kb, ke, acc);
    else if constexpr (Vec::kGroupOps && ((C == 1 && R > 1 && R < W) || (R == 1 && C > 1 && C < W)))
      spmv_grouped<I, R, C>(vals, idx, x, kb, ke, acc);
    else if constexpr (R == 1 && C >= W && C % W == 0) spmv_wide_1xc<I, C>(vals, idx, x, kb, ke, acc);
    else spmv_generic_rxc<I, R, C>(w, vals, idx, x, kb, ke, acc);
    const int64_t row0 = b * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, w.rows - row0));
    for (int r = 0; r < nr; ++r) y[row0 + r] = acc[r];
  }
}

// --------------------------------------------------------------- batch > 1

// Vectors per panel row and independent accumulator sets: R * NV * SETS >= 8
// chains hide the FMA latency; R * NV * SETS registers stay below the register file.
constexpr int panel_vectors(int r) { return r >= 8 ? 1 : (r >= 4 ? 2 : (W >= 16 ? 2 : 4)); }
constexpr int acc_sets(int r, int nv) { return r * nv >= 8 ? 1 : (r * nv >= 4 ? 2 : 4); }

// Rows [b0, b1) against one panel tile: panel row i (i = input column) starts at
// panel + i * ldp and holds NB consecutive dense vectors' values. Results (no
// bias/activation) go to res + (b - b0) * R * NB, row-major with NB per row.
template <class I, int R, int C, int NV>
void panel_block_rows(const BsrView& w, const I* idx, const float* panel, int64_t ldp,
                      int64_t b0, int64_t b1, float* res) {
  constexpr int NB = NV * W;
  constexpr int SETS = acc_sets(R, NV);
  // Blocks ahead to prefetch. Measured on Zen 4 (4096x4096, 90%, batch 128, 1 thread, avx2):
  // 4x1 blocks 7.8 ms without, 5.7 / 5.5 / 5.4 ms at 8 / 16 / 32 ahead; CSR unchanged (~11 ms,
  // bound by L2->L1 bandwidth at 128 bytes of panel per stored value).
  constexpr int64_t kPrefetch = 16;
  const int bc = C > 0 ? C : w.bc;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t kb = w.indptr[b], ke = w.indptr[b + 1];
    V acc[SETS][R][NV];
    for (int s = 0; s < SETS; ++s)
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) acc[s][r][u] = Vec::zero();
    auto block = [&](int s, int64_t k) {
      // Software prefetch of a later block's panel row: its column is random, so the
      // hardware prefetchers cannot fetch it; the row is usually in L2, not L1.
      if (k + kPrefetch < ke) {
        const float* pr = panel + static_cast<int64_t>(idx[k + kPrefetch]) * bc * ldp;
        for (int c = 0; c < bc; ++c)
          for (int l = 0; l < NB * 4; l += 64) __builtin_prefetch(pr + c * ldp + l / 4);
      }
      const float* vb = static_cast<const float*>(w.values) + k * R * bc;
      const float* xr = panel + static_cast<int64_t>(idx[k]) * bc * ldp;
      for (int c = 0; c < bc; ++c) {
        V xv[NV];
        for (int u = 0; u < NV; ++u) xv[u] = Vec::load(xr + c * ldp + u * W);
        for (int r = 0; r < R; ++r) {
          const V sv = Vec::set1(vb[r * bc + c]);
          for (int u = 0; u < NV; ++u) acc[s][r][u] = Vec::fmadd(sv, xv[u], acc[s][r][u]);
        }
      }
    };
    int64_t k = kb;
    for (; k + SETS <= ke; k += SETS)
      for (int s = 0; s < SETS; ++s) block(s, k + s);
    for (; k < ke; ++k) block(0, k);
    float* out = res + (b - b0) * R * NB;
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < NV; ++u) {
        V a = acc[0][r][u];
        for (int s = 1; s < SETS; ++s) a = Vec::add(a, acc[s][r][u]);
        Vec::store(out + r * NB + u * W, a);
      }
  }
}

// ---- batch > 1, r x 1 blocks (CSR included): K-blocked panels
//
// A panel tile's rows for all columns (cols * NB * 4 bytes) do not fit in L1, and a
// CSR value touches NB * 4 bytes of them at a random column: read from L2, that is the
// bound. So the columns are cut into K-blocks of BsrView::kKBlockCols (128) block columns whose panel
// slice stays in L1, and every row of a chunk runs its stored blocks in one K-block
// before the next K-block starts; a row's partial sums wait in the result buffer
// between K-blocks. Each row still adds its stored blocks in index order into one
// accumulator per output, so the result does not depend on chunks or threads.
// Accumulator registers per vector width: R * NV (times the rows interleaved) stay
// within them, leaving registers for the panel loads and broadcasts.
constexpr int kAccRegs = W >= 16 ? 16 : 8;
// Most vectors per panel row for r x 1 blocks (1, 2 or 4); fewer when the batch is small.
constexpr int kblock_max_vectors(int r) {
  return r == 1 ? 4 : (kAccRegs / r >= 4 ? 4 : (kAccRegs / r >= 2 ? 2 : 1));
}
// Block rows run side by side, so that each K-block segment keeps >= 8 FMA chains busy.
constexpr int kblock_interleave(int r, int nv) { return r * nv >= 8 ? 1 : 2; }

// S block rows of R x 1 blocks, one K-block each: acc[s] += their stored blocks
// [k[s], e[s]), in index order per row; panel row i at panel + i * ldp.
template <class I, int R, int NV, int S>
SK_ROW_KERNEL void kblock_segments(const float* vals, const I* idx, const float* panel, int64_t ldp,
                                   const int64_t* k, const int64_t* e, V (&acc)[S][R][NV]) {
  auto block = [&](int s, int64_t kk) {
    const float* xr = panel + static_cast<int64_t>(idx[kk]) * ldp;
    V xv[NV];
    for (int u = 0; u < NV; ++u) xv[u] = Vec::load(xr + u * W);
    for (int r = 0; r < R; ++r) {
      const V sv = Vec::set1(vals[kk * R + r]);
      for (int u = 0; u < NV; ++u) acc[s][r][u] = Vec::fmadd(sv, xv[u], acc[s][r][u]);
    }
  };
  int64_t common = e[0] - k[0];
  for (int s = 1; s < S; ++s) common = std::min(common, e[s] - k[s]);
  for (int64_t t = 0; t < common; ++t)
    for (int s = 0; s < S; ++s) block(s, k[s] + t);
  for (int s = 0; s < S; ++s)
    for (int64_t kk = k[s] + common; kk < e[s]; ++kk) block(s, kk);
}

// K-block j of block rows [0, nbrows) of a chunk (indptr and seg, as BsrView::kstarts,
// from the chunk's first block row) against one panel tile; partial sums in res
// (R * NB floats per block row), started at j = 0.
template <class I, int R, int NV>
void kblock_rows(const float* vals, const I* idx, const float* panel, int64_t ldp, const int64_t* indptr,
                 const int32_t* seg, int nkb, int j, int64_t nbrows, float* res) {
  constexpr int NB = NV * W;
  constexpr int S = kblock_interleave(R, NV);
  auto rows = [&](auto s_const, int64_t b) {
    constexpr int SN = decltype(s_const)::value;
    int64_t k[SN], e[SN];
    bool any = j == 0;
    for (int s = 0; s < SN; ++s) {
      k[s] = indptr[b + s] + seg[(b + s) * (nkb + 1) + j];
      e[s] = indptr[b + s] + seg[(b + s) * (nkb + 1) + j + 1];
      any = any || e[s] > k[s];
    }
    if (!any) return;  // nothing stored in this K-block: the partial sums stand
    V acc[SN][R][NV];
    for (int s = 0; s < SN; ++s)
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u)
          acc[s][r][u] = j == 0 ? Vec::zero() : Vec::load(res + ((b + s) * R + r) * NB + u * W);
    kblock_segments<I, R, NV, SN>(vals, idx, panel, ldp, k, e, acc);
    for (int s = 0; s < SN; ++s)
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) Vec::store(res + ((b + s) * R + r) * NB + u * W, acc[s][r][u]);
  };
  int64_t b = 0;
  for (; b + S <= nbrows; b += S) rows(std::integral_constant<int, S>{}, b);
  for (; b < nbrows; ++b) rows(std::integral_constant<int, 1>{}, b);
}

#undef SK_ROW_KERNEL

// Packs vectors [v0, v0 + nv) of x into a panel tile of cols_pad rows x NB.
template <int NB>
void pack_tile(const Problem& p, int64_t v0, int nv, int64_t cols_pad, float* dst) {
  const int64_t n = p.n, cols = p.w.cols;
  if (p.layout == Layout::Linear) {  // x is (n, cols): transpose nv rows
    if (nv < NB)
      for (int64_t i = 0; i < cols; ++i) std::memset(dst + i * NB + nv, 0, sizeof(float) * (NB - nv));
    transpose(p.x + v0 * cols, cols, dst, NB, nv, cols);
  } else {  // x is (cols, n): copy NB-wide row segments
    for (int64_t i = 0; i < cols; ++i) {
      std::memcpy(dst + i * NB, p.x + i * n + v0, sizeof(float) * nv);
      if (nv < NB) std::memset(dst + i * NB + nv, 0, sizeof(float) * (NB - nv));
    }
  }
  if (cols_pad != cols) std::memset(dst + cols * NB, 0, sizeof(float) * (cols_pad - cols) * NB);
}

// Writes a chunk's results (rows [row0, row0 + nrows), vectors [col0, col0 + nc))
// from the row-major buffer res (NB per row) into y, with bias and activation.
template <int NB>
void store_chunk(const Problem& p, const float* res, int64_t row0, int64_t nrows, int64_t col0, int nc) {
  const int64_t rows = p.w.rows;
  if (p.layout == Layout::Linear) {  // y is (n, rows)
    float* y = p.y + col0 * rows + row0;
    transpose(res, NB, y, rows, nrows, nc);
    if (p.bias || p.act != Activation::None)
      for (int u = 0; u < nc; ++u) finish_vec(y + u * rows, p.bias ? p.bias + row0 : nullptr, p.act, nrows);
  } else {  // y is (rows, n)
    for (int64_t r = 0; r < nrows; ++r) {
      float* y = p.y + (row0 + r) * p.n + col0;
      const float b = p.bias ? p.bias[row0 + r] : 0.f;
      if (!p.bias && p.act == Activation::None) std::memcpy(y, res + r * NB, sizeof(float) * nc);
      else finish_scalar_bias(y, res + r * NB, b, p.act, nc);
    }
  }
}

// Batch 1: each thread's rows, then their bias/activation epilogue.
template <class I, int R, int C>
void run_single_vector(const Problem& p, const I* idx, int parts, const int64_t* bounds) {
  const BsrView& w = p.w;
  const int64_t cols_pad = w.n_block_cols() * (C > 0 ? C : w.bc);
  const float* x = p.x;
  if (cols_pad != w.cols) {  // edge blocks read past the last column: pad with zeros
    float* xp = detail::scratch(static_cast<size_t>(cols_pad));
    std::memcpy(xp, p.x, sizeof(float) * w.cols);
    std::memset(xp + w.cols, 0, sizeof(float) * (cols_pad - w.cols));
    x = xp;
  }
  parallel_parts(parts, [&](int t) {
    spmv_block_rows<I, R, C>(w, idx, x, p.y, bounds[t], bounds[t + 1]);
    const int64_t r0 = bounds[t] * R, r1 = std::min<int64_t>(w.rows, bounds[t + 1] * R);
    if (r1 > r0) finish_vec(p.y + r0, p.bias ? p.bias + r0 : nullptr, p.act, r1 - r0);
  });
}

// The dense operand as panel tiles of NB vectors: tile t starts at data + t * stride
// and its panel row i at + i * ld.
struct Panels {
  const float* data;
  int64_t ld, stride, tiles;
};

// x itself when its rows already are panel rows, else x packed into scratch slot 0.
template <int NB>
Panels make_panels(const Problem& p, int64_t cols_pad, int parts) {
  const int64_t n = p.n;
  const int64_t ntiles = (n + NB - 1) / NB;
  if (p.layout == Layout::Matmul && n % NB == 0 && cols_pad == p.w.cols)
    return Panels{p.x, n, NB, ntiles};  // x is (cols, n): its rows already are panel rows
  float* buf = detail::scratch(static_cast<size_t>(ntiles * cols_pad * NB));
  const int64_t stride = cols_pad * NB;
  const int pack_parts = static_cast<int>(std::min<int64_t>(parts, ntiles));
  parallel_parts(pack_parts, [&](int part) {
    for (int64_t t = part; t < ntiles; t += pack_parts) {
      const int64_t v0 = t * NB;
      pack_tile<NB>(p, v0, static_cast<int>(std::min<int64_t>(NB, n - v0)), cols_pad, buf + t * stride);
    }
  });
  return Panels{buf, NB, stride, ntiles};
}

// The chunk loop of the panel kernels: each thread's block rows in chunks of at most
// chunk_blocks stored blocks and chunk_brows block rows, each chunk against every panel
// tile (so its values come from memory once and from cache for the other tiles):
// chunk(s, e, panel, res) writes the raw results of block rows [s, e) against one tile
// into res (R * NB floats per block row), then store_chunk moves them into y.
template <int R, int NB, class F>
void for_chunks(const Problem& p, const Panels& panels, int parts, const int64_t* bounds, int64_t chunk_blocks,
                int64_t chunk_brows, F&& chunk) {
  const BsrView& w = p.w;
  parallel_parts(parts, [&](int t) {
    float* res = detail::scratch(static_cast<size_t>(chunk_brows * R * NB), 1);
    for (int64_t s = bounds[t]; s < bounds[t + 1];) {
      const int64_t e = std::min(detail::chunk_end(w.indptr, s, bounds[t + 1], chunk_blocks), s + chunk_brows);
      const int64_t row0 = s * R, nrows = std::min<int64_t>(w.rows, e * R) - row0;
      for (int64_t tile = 0; tile < panels.tiles; ++tile) {
        chunk(s, e, panels.data + tile * panels.stride, res);
        store_chunk<NB>(p, res, row0, nrows, tile * NB, static_cast<int>(std::min<int64_t>(NB, p.n - tile * NB)));
      }
      s = e;
    }
  });
}

// Batch > 1, r x 1 blocks with NV vectors per panel row: chunks of about 256 KiB of
// values (at most 128 rows; they stay in L2 for the other tiles), each run K-block by
// K-block (kblock_rows). 64 KiB chunks left only a few block rows per chunk for wide
// inputs, so each chunk streamed the whole panel for little reuse: 768x3072, 70%,
// batch 512, avx512: CSR 17.5 -> 11.9 ms, 4x1 12.4 -> 7.6 ms at 256 KiB; 3072x768 at
// batch 128 also gains 3-5%. 512 KiB: no further clear gain.
template <class I, int R, int NV>
void run_panels_kblocked(const Problem& p, const I* idx, int parts, const int64_t* bounds) {
  const BsrView& w = p.w;
  constexpr int NB = NV * W;
  const Panels panels = make_panels<NB>(p, w.n_block_cols(), parts);
  const int nkb = static_cast<int>(w.n_kblocks());
  const int64_t chunk_blocks = std::max<int64_t>(1, 65536 / R);
  const int64_t chunk_brows = std::max<int64_t>(1, 128 / R);
  for_chunks<R, NB>(p, panels, parts, bounds, chunk_blocks, chunk_brows,
                    [&](int64_t s, int64_t e, const float* panel, float* res) {
                      const int32_t* seg = w.kstarts + s * (nkb + 1);  // compute() made sure they exist
                      for (int j = 0; j < nkb; ++j)
                        kblock_rows<I, R, NV>(static_cast<const float*>(w.values), idx, panel, panels.ld, w.indptr + s, seg, nkb, j, e - s, res);
                    });
}

// Batch > 1, blocks wider than one column: chunks of about 64 KiB of values (at most
// 256 rows), each block row at once (panel_block_rows).
template <class I, int R, int C>
void run_panels_wide(const Problem& p, const I* idx, int parts, const int64_t* bounds) {
  const BsrView& w = p.w;
  const int bc = C > 0 ? C : w.bc;
  constexpr int NV = panel_vectors(R);
  constexpr int NB = NV * W;
  const Panels panels = make_panels<NB>(p, w.n_block_cols() * bc, parts);
  const int64_t chunk_blocks = std::max<int64_t>(1, 16384 / (R * bc));
  const int64_t chunk_brows = std::max<int64_t>(1, 256 / R);
  for_chunks<R, NB>(p, panels, parts, bounds, chunk_blocks, chunk_brows,
                    [&](int64_t s, int64_t e, const float* panel, float* res) {
                      panel_block_rows<I, R, C, NV>(w, idx, panel, panels.ld, s, e, res);
                    });
}

// Batch > 1, the one place that picks the panel kernel: r x 1 blocks (CSR included)
// run K-blocked with as many vectors per panel row (1, 2 or 4 registers) as the batch
// fills; wider blocks run run_panels_wide.
template <class I, int R, int C>
void run_panels(const Problem& p, const I* idx, int parts, const int64_t* bounds) {
  if constexpr (C == 1) {
    constexpr int NVM = kblock_max_vectors(R);
    const int64_t regs = (p.n + W - 1) / W;
    if (NVM >= 4 && regs > 2) run_panels_kblocked<I, R, NVM >= 4 ? 4 : 1>(p, idx, parts, bounds);
    else if (NVM >= 2 && regs > 1) run_panels_kblocked<I, R, NVM >= 2 ? 2 : 1>(p, idx, parts, bounds);
    else run_panels_kblocked<I, R, 1>(p, idx, parts, bounds);
  } else {
    run_panels_wide<I, R, C>(p, idx, parts, bounds);
  }
}

// One product with R x C blocks (C = 0: the width w.bc, known at run time) and
// indices of type I, on threads owning nnz-balanced ranges of block rows.
template <class I, int R, int C>
void run_typed(const Problem& p) {
  const BsrView& w = p.w;
  const I* idx = static_cast<const I*>(w.indices);
  const int64_t fmas = w.n_blocks() * R * (C > 0 ? C : w.bc) * p.n;
  const int parts = detail::threads_for(fmas, p.threads);
  int64_t bounds[detail::kMaxThreads + 1];
  detail::partition_rows(w.indptr, w.n_block_rows(), parts, bounds);
  if (p.n == 1) run_single_vector<I, R, C>(p, idx, parts, bounds);
  else run_panels<I, R, C>(p, idx, parts, bounds);
}
template <class I, int R>
void run_rows(const Problem& p) {
  switch (p.w.bc) {
    case 1: run_typed<I, R, 1>(p); break;
    case 4: run_typed<I, R, 4>(p); break;
    case 8: run_typed<I, R, 8>(p); break;
    default: run_typed<I, R, 0>(p); break;  // 2, 16: generic width, still vectorised over the panel
  }
}

template <class I>
void run_index(const Problem& p) {
  switch (p.w.br) {
    case 1: run_rows<I, 1>(p); break;
    case 2: run_rows<I, 2>(p); break;
    case 4: run_rows<I, 4>(p); break;
    case 8: run_rows<I, 8>(p); break;
    default: run_rows<I, 16>(p); break;
  }
}

inline void run(const Problem& p) {
  if (p.w.index_bytes == 2) run_index<uint16_t>(p);
  else run_index<int32_t>(p);
}

// Sum of n floats read once, split over `threads` threads (a streaming-read
// reference for the batch-1 kernels: same bytes, same vector width).
inline float stream_read(const float* p, int64_t n, int threads) {
  // At least 64 KiB per thread: below that a fork/join costs more than the read.
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({threads, detail::kMaxThreads, n / 16384})));
  float sums[detail::kMaxThreads];
  parallel_parts(parts, [&](int t) {
    const int64_t a = n * t / parts, b = n * (t + 1) / parts;
    V a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
    int64_t i = a;
    for (; i + 4 * W <= b; i += 4 * W) {
      a0 = Vec::add(a0, Vec::load(p + i));
      a1 = Vec::add(a1, Vec::load(p + i + W));
      a2 = Vec::add(a2, Vec::load(p + i + 2 * W));
      a3 = Vec::add(a3, Vec::load(p + i + 3 * W));
    }
    float s = Vec::hsum(Vec::add(Vec::add(a0, a1), Vec::add(a2, a3)));
    for (; i < b; ++i) s += p[i];
    sums[t] = s;
  });
  float s = 0.f;
  for (int t = 0; t < parts; ++t) s += sums[t];
  return s;
}

}  // namespace SK_ISA
}  // namespace sparsekit

// Sparse (block CSR) x dense kernels, written once over `Vec` and compiled once per
// instruction set. A translation unit defines SK_ISA (its namespace), includes its
// vec_<isa>.h and then this file; nothing here may be shared between those units
// (no std containers or out-of-line templates, which would be merged by the linker
// across units compiled with different -m flags).
//
// Design (see shared/design.md):
//  * output-stationary, weight-streaming: a thread owns a range of block rows,
//    balanced by stored blocks, and streams their values and indices; every output
//    element is produced by one thread in one fixed order, so results are bitwise
//    identical for any thread count;
//  * batch of one: a dot product per row, gathering x for 1x1 blocks and reading
//    contiguous x for 1 x c blocks;
//  * larger batches: the dense operand is packed into panels of NB = NV * W columns
//    so that one stored value becomes one broadcast and NV fused multiply-adds on
//    contiguous loads; r x 1 blocks reuse each panel load for r rows.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "sparsekit/dispatch.h"

namespace sparsekit {
namespace SK_ISA {

using detail::apply_activation;
constexpr int W = Vec::W;

// Vectors per panel row: R * NV accumulators stay in registers.
constexpr int panel_vectors(int r) { return r >= 8 ? 1 : (r >= 4 ? 2 : 4); }

template <class I, int R, int C>
void spmv_block_rows(const BsrView& w, const I* idx, const float* x, const float* bias,
                     Activation act, float* y, int64_t b0, int64_t b1) {
  const int bc = C > 0 ? C : w.bc;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t kb = w.indptr[b], ke = w.indptr[b + 1];
    float acc[R];
    if constexpr (R == 1 && C == 1) {
      const float* v = w.values;
      Vec::T a0 = Vec::zero(), a1 = Vec::zero();
      int64_t k = kb;
      for (; k + 2 * W <= ke; k += 2 * W) {
        a0 = Vec::fmadd(Vec::load(v + k), Vec::gather(x, idx + k), a0);
        a1 = Vec::fmadd(Vec::load(v + k + W), Vec::gather(x, idx + k + W), a1);
      }
      for (; k + W <= ke; k += W) a0 = Vec::fmadd(Vec::load(v + k), Vec::gather(x, idx + k), a0);
      float s = Vec::hsum(Vec::add(a0, a1));
      for (; k < ke; ++k) s += v[k] * x[idx[k]];
      acc[0] = s;
    } else {
      constexpr int CM = C > 0 ? C : 16;
      float part[R][CM];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < CM; ++c) part[r][c] = 0.f;
      for (int64_t k = kb; k < ke; ++k) {
        const float* vb = w.values + k * R * bc;
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
    const int64_t row0 = b * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, w.rows - row0));
    for (int r = 0; r < nr; ++r)
      y[row0 + r] = apply_activation(acc[r] + (bias ? bias[row0 + r] : 0.f), act);
  }
}

// Where one panel tile's results go.
struct TileOut {
  const Problem* p;
  int64_t col0;  // first dense vector of the tile
  int nc;        // valid vectors in the tile
};

template <int R, int NB>
inline void store_tile(const TileOut& t, int64_t row0, const float (&res)[R][NB]) {
  const Problem& p = *t.p;
  const int64_t rows = p.w.rows;
  const int nr = static_cast<int>(std::min<int64_t>(R, rows - row0));
  for (int r = 0; r < nr; ++r) {
    const float bv = p.bias ? p.bias[row0 + r] : 0.f;
    if (p.layout == Layout::Linear) {
      float* y = p.y + t.col0 * rows + row0 + r;
      for (int u = 0; u < t.nc; ++u) y[u * rows] = apply_activation(res[r][u] + bv, p.act);
    } else {
      float* y = p.y + (row0 + r) * p.n + t.col0;
      if (p.act == Activation::None) {
        for (int u = 0; u < t.nc; ++u) y[u] = res[r][u] + bv;
      } else {
        for (int u = 0; u < t.nc; ++u) y[u] = apply_activation(res[r][u] + bv, p.act);
      }
    }
  }
}

// Rows [b0, b1) against one panel tile: panel row i (i = input column) starts at
// panel + i * ldp and holds NB consecutive dense vectors' values.
template <class I, int R, int C, int NV>
void panel_block_rows(const BsrView& w, const I* idx, const float* panel, int64_t ldp,
                      int64_t b0, int64_t b1, const TileOut& out) {
  constexpr int NB = NV * W;
  constexpr int SETS = R == 1 ? 2 : 1;  // independent chains to hide FMA latency
  const int bc = C > 0 ? C : w.bc;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t kb = w.indptr[b], ke = w.indptr[b + 1];
    typename Vec::T acc[SETS][R][NV];
    for (int s = 0; s < SETS; ++s)
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) acc[s][r][u] = Vec::zero();
    auto block = [&](int s, int64_t k) {
      const float* vb = w.values + k * R * bc;
      const float* xr = panel + static_cast<int64_t>(idx[k]) * bc * ldp;
      for (int c = 0; c < bc; ++c) {
        typename Vec::T xv[NV];
        for (int u = 0; u < NV; ++u) xv[u] = Vec::load(xr + c * ldp + u * W);
        for (int r = 0; r < R; ++r) {
          const typename Vec::T sv = Vec::set1(vb[r * bc + c]);
          for (int u = 0; u < NV; ++u) acc[s][r][u] = Vec::fmadd(sv, xv[u], acc[s][r][u]);
        }
      }
    };
    int64_t k = kb;
    for (; k + SETS <= ke; k += SETS)
      for (int s = 0; s < SETS; ++s) block(s, k + s);
    for (; k < ke; ++k) block(0, k);
    float res[R][NB];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < NV; ++u) {
        typename Vec::T a = acc[0][r][u];
        for (int s = 1; s < SETS; ++s) a = Vec::add(a, acc[s][r][u]);
        Vec::store(&res[r][u * W], a);
      }
    store_tile<R, NB>(out, b * R, res);
  }
}

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

template <class I, int R, int C>
void run_typed(const Problem& p) {
  const BsrView& w = p.w;
  const I* idx = static_cast<const I*>(w.indices);
  const int bc = C > 0 ? C : w.bc;
  const int64_t nbr = w.n_block_rows();
  const int64_t cols_pad = w.n_block_cols() * bc;
  const int64_t fmas = w.n_blocks() * R * bc * p.n;
  const int parts = detail::threads_for(fmas, p.threads);
  int64_t bounds[detail::kMaxThreads + 1];
  detail::partition_rows(w.indptr, nbr, parts, bounds);

  if (p.n == 1) {
    const float* x = p.x;
    if (cols_pad != w.cols) {  // edge blocks read past the last column: pad with zeros
      float* xp = detail::scratch(static_cast<size_t>(cols_pad));
      std::memcpy(xp, p.x, sizeof(float) * w.cols);
      std::memset(xp + w.cols, 0, sizeof(float) * (cols_pad - w.cols));
      x = xp;
    }
    parallel_parts(parts, [&](int t) {
      spmv_block_rows<I, R, C>(w, idx, x, p.bias, p.act, p.y, bounds[t], bounds[t + 1]);
    });
    return;
  }

  constexpr int NV = panel_vectors(R);
  constexpr int NB = NV * W;
  const int64_t n = p.n, cols = w.cols;
  const int64_t ntiles = (n + NB - 1) / NB;
  const float* panels;
  int64_t ldp, tile_stride;
  if (p.layout == Layout::Matmul && n % NB == 0 && cols_pad == cols) {
    panels = p.x;  // x is (cols, n): its rows already are panel rows
    ldp = n;
    tile_stride = NB;
  } else {
    float* buf = detail::scratch(static_cast<size_t>(ntiles * cols_pad * NB));
    ldp = NB;
    tile_stride = cols_pad * NB;
    const int pack_parts = static_cast<int>(std::min<int64_t>(parts, ntiles));
    parallel_parts(pack_parts, [&](int part) {
      for (int64_t t = part; t < ntiles; t += pack_parts) {
        float* dst = buf + t * tile_stride;
        const int64_t v0 = t * NB;
        const int nv = static_cast<int>(std::min<int64_t>(NB, n - v0));
        if (p.layout == Layout::Linear) {  // x is (n, cols): transpose NB rows
          if (nv < NB || cols_pad != cols) std::memset(dst, 0, sizeof(float) * cols_pad * NB);
          for (int u = 0; u < nv; ++u) {
            const float* src = p.x + (v0 + u) * cols;
            for (int64_t i = 0; i < cols; ++i) dst[i * NB + u] = src[i];
          }
        } else {  // x is (cols, n): copy NB-wide row segments
          for (int64_t i = 0; i < cols; ++i) {
            std::memcpy(dst + i * NB, p.x + i * n + v0, sizeof(float) * nv);
            if (nv < NB) std::memset(dst + i * NB + nv, 0, sizeof(float) * (NB - nv));
          }
          if (cols_pad != cols) std::memset(dst + cols * NB, 0, sizeof(float) * (cols_pad - cols) * NB);
        }
      }
    });
    panels = buf;
  }

  // Rows in chunks of about 64 KiB of values, each chunk against every tile, so a
  // chunk's values are read from memory once and from cache for the other tiles.
  const int64_t chunk_blocks = std::max<int64_t>(1, 16384 / (R * bc));
  parallel_parts(parts, [&](int t) {
    for (int64_t s = bounds[t]; s < bounds[t + 1];) {
      const int64_t e = detail::chunk_end(w.indptr, s, bounds[t + 1], chunk_blocks);
      for (int64_t tile = 0; tile < ntiles; ++tile) {
        const TileOut out{&p, tile * NB, static_cast<int>(std::min<int64_t>(NB, n - tile * NB))};
        panel_block_rows<I, R, C, NV>(w, idx, panels + tile * tile_stride, ldp, s, e, out);
      }
      s = e;
    }
  });
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

}  // namespace SK_ISA
}  // namespace sparsekit

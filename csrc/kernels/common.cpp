#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sparsekit {
namespace detail {

void partition_rows(const int64_t* indptr, int64_t n_block_rows, int parts, int64_t* bounds) {
  bounds[0] = 0;
  bounds[parts] = n_block_rows;
  // Cost of rows [0, b) = indptr[b] + b; find the row where each share starts.
  const double total = static_cast<double>(indptr[n_block_rows] + n_block_rows);
  int64_t lo = 0;
  for (int t = 1; t < parts; ++t) {
    const double target = total * t / parts;
    int64_t a = lo, b = n_block_rows;
    while (a < b) {
      const int64_t mid = a + (b - a) / 2;
      if (static_cast<double>(indptr[mid] + mid) < target) a = mid + 1; else b = mid;
    }
    bounds[t] = a;
    lo = a;
  }
}

int64_t chunk_end(const int64_t* indptr, int64_t start, int64_t end, int64_t blocks) {
  const int64_t target = indptr[start] + blocks;
  int64_t a = start + 1, b = end;
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (indptr[mid] < target) a = mid + 1; else b = mid;
  }
  return a;
}

float* scratch(std::size_t floats, int slot) {
  // 64-byte aligned: packed panel rows of 16/32 floats then start on a cache line,
  // so each panel-row load touches the fewest lines (measured below).
  constexpr std::size_t kAlignFloats = 16;
  thread_local std::vector<float> bufs[2];
  std::vector<float>& buf = bufs[slot & 1];
  if (buf.size() < floats + kAlignFloats) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(floats + kAlignFloats);
  }
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  const std::size_t skip = ((64 - addr % 64) % 64) / sizeof(float);
  return buf.data() + skip;
}

template <class I>
static void kblock_starts_typed(const BsrView& w, const I* idx, int64_t b0, int64_t b1, int32_t* out) {
  const int nkb = static_cast<int>(w.n_kblocks());
  for (int64_t b = b0; b < b1; ++b) {
    int32_t* s = out + (b - b0) * (nkb + 1);
    const int64_t kb = w.indptr[b], ke = w.indptr[b + 1];
    // Branch-free: each stored block writes its K-block's end; a running max then
    // fills the K-blocks that store nothing.
    for (int j = 0; j <= nkb; ++j) s[j] = 0;
    for (int64_t k = kb; k < ke; ++k)  // (min: a bad index must not write out of bounds)
      s[std::min<int64_t>(static_cast<int64_t>(idx[k]) >> BsrView::kKBlockShift, nkb - 1) + 1] =
          static_cast<int32_t>(k + 1 - kb);
    for (int j = 1; j <= nkb; ++j) s[j] = std::max(s[j], s[j - 1]);
  }
}

void kblock_starts(const BsrView& w, int64_t b0, int64_t b1, int32_t* out) {
  if (w.index_bytes == 2) kblock_starts_typed(w, static_cast<const uint16_t*>(w.indices), b0, b1, out);
  else kblock_starts_typed(w, static_cast<const int32_t*>(w.indices), b0, b1, out);
}

int threads_for(int64_t fmas, int requested) {
  if (requested <= 1) return 1;
  // A second thread pays off from about 16k multiply-adds each. Measured on the 2-core
  // build machine at 2 threads, with the grain as the only change (min / median of 25-30
  // interleaved rounds): the 95% MLP 1000-1024-1024-1 at batch 1, two 51k-value CSR
  // layers between torch calls, 57-59 / 70-98 us at a 32k grain (one thread each) and
  // 39-50 / 58-67 us at 8k or 16k; 768x768 at 90% (59k values) back to back 23 / 25-26
  // us at 32k and 15-17 / 22 us at 16k. An earlier session measured the opposite for the
  // 768 layer inside a model while other processes held the second core: a woken thread
  // then waits for a time slice, as torch's own threads do; set_num_threads(1) avoids it.
  constexpr int64_t kGrain = 16384;
  const int64_t useful = std::max<int64_t>(1, fmas / kGrain);
  return static_cast<int>(std::min<int64_t>({requested, useful, kMaxThreads}));
}

namespace {
template <class I>
void propagate_impl(const Problem& p, const I* idx) {
  const BsrView& w = p.w;
  const int64_t rows = w.rows, cols = w.cols, n = p.n;
  const int64_t nbr = w.n_block_rows();
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  std::vector<int64_t> bad;     // nonfinite columns of this input vector
  std::vector<uint8_t> is_bad;  // per block column: holds a nonfinite column
  for (int64_t v = 0; v < n; ++v) {
    bad.clear();
    for (int64_t i = 0; i < cols; ++i) {
      const float xv = p.layout == Layout::Linear ? p.x[v * cols + i] : p.x[i * n + v];
      if (!std::isfinite(xv)) bad.push_back(i);
    }
    if (bad.empty()) continue;
    is_bad.assign(static_cast<size_t>(w.n_block_cols()), 0);
    for (int64_t i : bad) is_bad[i / w.bc] = 1;
    int64_t bad_blocks = 0;
    for (uint8_t b : is_bad) bad_blocks += b;
    for (int64_t b = 0; b < nbr; ++b) {
      int64_t covered = 0;
      for (int64_t k = w.indptr[b]; k < w.indptr[b + 1]; ++k) covered += is_bad[idx[k]];
      if (covered == bad_blocks) continue;  // every nonfinite column is stored: kernel result stands
      const int64_t r1 = std::min<int64_t>(rows, (b + 1) * w.br);
      for (int64_t r = b * w.br; r < r1; ++r) {
        if (p.layout == Layout::Linear) p.y[v * rows + r] = qnan; else p.y[r * n + v] = qnan;
      }
    }
  }
}

bool any_nonfinite(const float* x, int64_t count) {
  // Exponent all ones <=> Inf or NaN. An OR over integers vectorises at any -O level.
  uint32_t hit = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    hit |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return hit != 0;
}
}  // namespace

void propagate_nonfinite(const Problem& p) {
  if (p.n == 0 || p.w.cols == 0) return;
  if (!any_nonfinite(p.x, p.n * p.w.cols)) return;
  if (p.w.index_bytes == 2) propagate_impl(p, static_cast<const uint16_t*>(p.w.indices));
  else propagate_impl(p, static_cast<const int32_t*>(p.w.indices));
}

}  // namespace detail
}  // namespace sparsekit

// ISA-independent helpers shared by every kernel set (compiled once, baseline flags).
#pragma once
#include <cstddef>
#include <cstdint>

#include "sparsekit/problem.h"

namespace sparsekit {
namespace detail {

constexpr int kMaxThreads = 256;

// Splits block rows [0, n_block_rows) into `parts` (<= kMaxThreads) contiguous
// ranges holding about the same number of stored blocks (plus one unit per row,
// so empty rows still spread). Writes parts + 1 bounds, bounds[0] = 0.
void partition_rows(const int64_t* indptr, int64_t n_block_rows, int parts, int64_t* bounds);

// First block row e in (start, end] with indptr[e] - indptr[start] >= blocks, or end.
int64_t chunk_end(const int64_t* indptr, int64_t start, int64_t end, int64_t blocks);

// Per-thread scratch memory that lives as long as the calling thread (kept so that
// repeated calls do not page-fault a fresh buffer each time). Zero-initialised
// only where the caller writes zeros. Never shared between threads. `slot` (0 or
// 1) picks one of two independent buffers (e.g. packed panels and a result tile).
float* scratch(std::size_t floats, int slot = 0);
// BsrView::kstarts for block rows [b0, b1) of w (bc == 1) into out, n_kblocks() + 1
// entries per block row.
void kblock_starts(const BsrView& w, int64_t b0, int64_t b1, int32_t* out);

// Threads worth using for `fmas` multiply-adds, at most `requested`.
int threads_for(int64_t fmas, int requested);

// Makes y equal what the dense product gives when x holds NaN or Inf at columns
// a row of W does not store: 0 * Inf and 0 * NaN are NaN in the dense product,
// while the sparse kernels never read those columns. Cheap when x is finite.
void propagate_nonfinite(const Problem& p);

}  // namespace detail
}  // namespace sparsekit

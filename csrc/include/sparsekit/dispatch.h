// Run-time selection of the kernel set for the instruction sets this CPU has.
#pragma once
#include <string>
#include <vector>

#include "sparsekit/problem.h"

namespace sparsekit {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };

// One instruction set's kernels. Every entry point validates nothing: the
// caller (compute()) has already checked the problem.
struct KernelTable {
  Isa isa;
  const char* name;
  void (*run)(const Problem&);
  // Sums n floats with this instruction set's loads, split over `threads`
  // threads: the streaming-read reference the benchmarks compare batch 1 with.
  float (*stream)(const float* p, int64_t n, int threads);
};

// Kernel tables compiled into this build (scalar always; others per target).
const KernelTable* scalar_table();
const KernelTable* avx2_table();    // null when not built
const KernelTable* avx512_table();  // null when not built
const KernelTable* neon_table();    // null when not built

const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512" | "neon"; throws std::invalid_argument.
Isa parse_isa(const std::string& name);

// Levels both compiled in and supported by this CPU, lowest first.
std::vector<Isa> available_isas();
Isa best_isa();
Isa current_isa();
// Throws std::invalid_argument if the level is unknown or unavailable here.
void set_isa(Isa isa);

bool openmp_enabled();
int openmp_max_threads();

// Checks the cheap invariants of a problem (sizes, pointers, block shape) and
// runs it on the current kernel table. Throws std::invalid_argument.
void compute(const Problem& p);

// `batch` independent products sharing p's weight, bias and activation: sample i
// reads p.x + i * x_stride and writes p.y + i * y_stride (float offsets), each laid
// out as p describes (a lowered convolution's (N, cols, L) -> (N, rows, L)). With at
// least as many samples as p.threads, threads take whole samples (one fork/join).
void compute_batch(const Problem& p, int64_t batch, int64_t x_stride, int64_t y_stride);

// Streaming read of n floats on the current kernel table (benchmark reference).
float stream_read(const float* p, int64_t n, int threads);

// BsrView::kstarts for all of w's block rows (empty unless w.bc == 1): an owner of a
// matrix's arrays builds them once so that batch > 1 calls need not. w must be valid.
std::vector<int32_t> kblock_starts(const BsrView& w);

// Full O(nnz) structural validation of a block-CSR matrix: indptr starts at 0,
// is non-decreasing and ends at n_blocks; every block column index is in range
// and strictly increasing within its block row. Throws std::invalid_argument.
void validate_bsr(const BsrView& w, int64_t n_blocks);

}  // namespace sparsekit

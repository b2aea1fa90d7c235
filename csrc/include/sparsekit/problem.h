// Plain C++17 description of one sparse x dense product. No Python here.
#pragma once
#include <cstdint>

namespace sparsekit {

enum class Activation : int { None = 0, Relu = 1, Gelu = 2 };

// Which product is computed.
//  Linear: x is (n, cols) row-major, y is (n, rows) row-major: y = x @ W^T (+ bias, act).
//  Matmul: x is (cols, n) row-major, y is (rows, n) row-major: y = W @ x.
enum class Layout : int { Linear = 0, Matmul = 1 };

// How stored values are held. F32: float. I8: int8 with one float scale per output row
// (value = q * scales[row]). F16 / BF16: IEEE half / bfloat16 bit patterns, widened to
// float exactly in registers.
enum class ValueType : int { F32 = 0, I8 = 1, F16 = 2, BF16 = 3 };

// A block-CSR matrix of logical shape rows x cols made of br x bc blocks.
// Block row b covers rows [b*br, b*br+br); a block with column index j covers
// columns [j*bc, j*bc+bc). Edge blocks may stick out of the logical shape; the
// part outside it holds zeros and is never written to the output.
// values: n_blocks * br * bc elements of vtype, each block row-major.
struct BsrView {
  int64_t rows = 0, cols = 0;
  int br = 1, bc = 1;
  const int64_t* indptr = nullptr;  // n_block_rows + 1 entries
  const void* indices = nullptr;    // n_blocks entries, uint16 or int32
  int index_bytes = 4;              // 2 or 4
  const void* values = nullptr;
  ValueType vtype = ValueType::F32;
  const float* scales = nullptr;  // I8 only: one per logical row (rows entries)
  // Optional, for blocks one column wide (bc == 1) at batch > 1: per block row b,
  // n_kblocks() + 1 offsets from indptr[b] of its first stored block whose block
  // column is >= j * kKBlockCols (j = 0..n_kblocks(); the last is the row's length).
  // Built once by kblock_starts (dispatch.h) by whoever keeps the arrays; when null,
  // compute() builds them for the call.
  const int32_t* kstarts = nullptr;

  // The batch > 1 kernels for bc == 1 cut the block columns into K-blocks of this many.
  static constexpr int kKBlockShift = 7;
  static constexpr int64_t kKBlockCols = int64_t{1} << kKBlockShift;

  int64_t n_block_rows() const { return (rows + br - 1) / br; }
  int64_t n_block_cols() const { return (cols + bc - 1) / bc; }
  int64_t n_kblocks() const { return n_block_cols() > kKBlockCols ? (n_block_cols() + kKBlockCols - 1) / kKBlockCols : 1; }
  int64_t n_blocks() const { return indptr ? indptr[n_block_rows()] : 0; }
};

struct Problem {
  BsrView w;
  Layout layout = Layout::Linear;
  const float* x = nullptr;
  int64_t n = 0;                 // number of dense vectors (batch rows / columns)
  const float* bias = nullptr;   // rows entries or null
  Activation act = Activation::None;
  float* y = nullptr;
  int threads = 1;
  // I8 weights only, Layout::Linear: quantize each x row to int8 (symmetric, per row) and
  // accumulate in int32 (dynamic quantization, like torch's quantize_dynamic).
  bool dynamic = false;
};

}  // namespace sparsekit

// CPU detection, the active kernel table, and the checks every product passes.
#include "sparsekit/dispatch.h"

#include <atomic>
#include <exception>
#include <stdexcept>
#include <string>

#include "kernels/common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace sparsekit {

#ifndef SPARSEKIT_HAVE_AVX2
const KernelTable* avx2_table() { return nullptr; }
#endif
#ifndef SPARSEKIT_HAVE_AVX512
const KernelTable* avx512_table() { return nullptr; }
#endif
#ifndef SPARSEKIT_HAVE_NEON
const KernelTable* neon_table() { return nullptr; }
#endif

namespace {

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    // __builtin_cpu_supports also checks that the OS saves the wider registers.
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
#endif
#if defined(__aarch64__)
    case Isa::Neon: return true;  // Advanced SIMD is mandatory on AArch64
#endif
    default: return false;
  }
}

const KernelTable* table_for(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return scalar_table();
    case Isa::Avx2: return avx2_table();
    case Isa::Avx512: return avx512_table();
    case Isa::Neon: return neon_table();
  }
  return nullptr;
}

std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> table{table_for(best_isa())};
  return table;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("unknown SIMD level '" + name +
                              "'; valid values are scalar, avx2, avx512, neon");
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512})
    if (table_for(isa) != nullptr && cpu_has(isa)) out.push_back(isa);
  return out;
}

Isa best_isa() { return available_isas().back(); }

Isa current_isa() { return active().load()->isa; }

void set_isa(Isa isa) {
  const KernelTable* t = table_for(isa);
  if (t == nullptr)
    throw std::invalid_argument(std::string("SIMD level '") + isa_name(isa) +
                                "' is not compiled into this build of sparsekit");
  if (!cpu_has(isa))
    throw std::invalid_argument(std::string("SIMD level '") + isa_name(isa) +
                                "' is not supported by this CPU");
  active().store(t);
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

static bool valid_block_side(int s) { return s == 1 || s == 2 || s == 4 || s == 8 || s == 16; }

std::vector<int32_t> kblock_starts(const BsrView& w) {
  std::vector<int32_t> out;
  if (w.bc != 1 || w.indptr == nullptr || w.n_block_rows() == 0) return out;
  out.resize(static_cast<size_t>(w.n_block_rows() * (w.n_kblocks() + 1)));
  detail::kblock_starts(w, 0, w.n_block_rows(), out.data());
  return out;
}

void compute(const Problem& p) {
  const BsrView& w = p.w;
  require(w.rows >= 0 && w.cols >= 0, "matrix shape must be non-negative");
  require(valid_block_side(w.br) && valid_block_side(w.bc), "block sides must be 1, 2, 4, 8 or 16");
  require(w.index_bytes == 2 || w.index_bytes == 4, "index width must be 2 or 4 bytes");
  require(w.indptr != nullptr, "indptr is missing");
  require(w.indptr[0] == 0, "indptr[0] must be 0");
  require(p.n >= 0, "batch size must be non-negative");
  require(p.threads >= 1, "threads must be at least 1");
  require(w.vtype == ValueType::F32, "only float32 values are supported by this build");
  require(!p.dynamic, "dynamic quantization is not supported by this build");
  if (p.n == 0 || w.rows == 0) return;
  require(p.y != nullptr && (w.cols == 0 || p.x != nullptr), "missing input or output buffer");
  const int64_t nb = w.n_blocks();
  require(nb >= 0 && (nb == 0 || (w.indices != nullptr && w.values != nullptr)),
          "indices/values are missing");
  if (w.bc == 1 && p.n > 1 && w.kstarts == nullptr) {
    // The batch > 1 kernels for bc == 1 need BsrView::kstarts: build them for this call
    // (a Weight builds them once).
    const std::vector<int32_t> kstarts = kblock_starts(w);
    Problem q = p;
    q.w.kstarts = kstarts.data();
    active().load()->run(q);
  } else {
    active().load()->run(p);
  }
  detail::propagate_nonfinite(p);
}

void compute_batch(const Problem& p, int64_t batch, int64_t x_stride, int64_t y_stride) {
  require(batch >= 0 && x_stride >= 0 && y_stride >= 0, "batch and strides must be non-negative");
  require(p.threads >= 1, "threads must be at least 1");
  auto sample = [&](int64_t i, int threads) {
    Problem q = p;
    q.x = p.x ? p.x + i * x_stride : nullptr;
    q.y = p.y ? p.y + i * y_stride : nullptr;
    q.threads = threads;
    compute(q);
  };
  if (p.threads == 1 || batch < p.threads) {  // fewer samples than threads: thread each sample
    for (int64_t i = 0; i < batch; ++i) sample(i, p.threads);
    return;
  }
  // At least one sample per thread: each thread runs whole samples on its own, one
  // fork/join for the batch instead of one per sample. The results are bitwise the same
  // (a sample's rows are computed identically on any number of threads).
  std::exception_ptr error;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(p.threads)
#endif
  for (int64_t i = 0; i < batch; ++i) {
    try {
      sample(i, 1);
    } catch (...) {
#ifdef _OPENMP
#pragma omp critical(sparsekit_batch_error)
#endif
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

float stream_read(const float* p, int64_t n, int threads) {
  require(n >= 0 && threads >= 1 && (n == 0 || p != nullptr), "bad stream_read arguments");
  return active().load()->stream(p, n, threads);
}

namespace {
template <class I>
void validate_indices(const BsrView& w) {
  const I* idx = static_cast<const I*>(w.indices);
  const int64_t nbc = w.n_block_cols();
  for (int64_t b = 0; b < w.n_block_rows(); ++b) {
    int64_t prev = -1;
    for (int64_t k = w.indptr[b]; k < w.indptr[b + 1]; ++k) {
      const int64_t j = static_cast<int64_t>(idx[k]);
      if (j < 0 || j >= nbc)
        throw std::invalid_argument("indices[" + std::to_string(k) + "] = " + std::to_string(j) +
                                    " is out of range [0, " + std::to_string(nbc) + ")");
      if (j <= prev)
        throw std::invalid_argument("indices are not strictly increasing within block row " +
                                    std::to_string(b) + " (duplicate or unsorted at position " +
                                    std::to_string(k) + ")");
      prev = j;
    }
  }
}
}  // namespace

void validate_bsr(const BsrView& w, int64_t n_blocks) {
  require(w.rows >= 0 && w.cols >= 0, "shape must be non-negative");
  require(valid_block_side(w.br) && valid_block_side(w.bc), "block sides must be 1, 2, 4, 8 or 16");
  const int64_t nbr = w.n_block_rows();
  require(w.indptr[0] == 0, "indptr[0] must be 0");
  for (int64_t b = 0; b < nbr; ++b)
    if (w.indptr[b + 1] < w.indptr[b])
      throw std::invalid_argument("indptr must be non-decreasing (indptr[" + std::to_string(b + 1) +
                                  "] < indptr[" + std::to_string(b) + "])");
  require(w.indptr[nbr] == n_blocks, "indptr[-1] must equal the number of stored blocks");
  if (w.index_bytes == 2) validate_indices<uint16_t>(w);
  else validate_indices<int32_t>(w);
}

}  // namespace sparsekit

// The only file that knows about Python: translates arrays to views, releases the
// GIL around kernel work, and lets std::invalid_argument surface as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "sparsekit/dispatch.h"

namespace py = pybind11;
namespace sk = sparsekit;

namespace {

// No forcecast: a wrong dtype or a non-contiguous array is rejected, never copied.
template <class T>
using carray = py::array_t<T, py::array::c_style>;
using IndexArray = std::variant<carray<uint16_t>, carray<int32_t>>;

sk::BsrView view_of(int64_t rows, int64_t cols, int br, int bc, const carray<int64_t>& indptr,
                    const IndexArray& indices, const carray<float>& values) {
  sk::BsrView w;
  w.rows = rows;
  w.cols = cols;
  w.br = br;
  w.bc = bc;
  if (rows < 0 || cols < 0 || br <= 0 || bc <= 0) throw std::invalid_argument("shape and block must be non-negative");
  const int64_t nbr = w.n_block_rows();
  if (indptr.ndim() != 1 || indptr.shape(0) != nbr + 1)
    throw std::invalid_argument("indptr must have n_block_rows + 1 = " + std::to_string(nbr + 1) + " entries");
  w.indptr = indptr.data();
  int64_t n_idx = 0;
  std::visit([&](const auto& a) {
    w.indices = a.data();
    w.index_bytes = static_cast<int>(sizeof(*a.data()));
    n_idx = a.size();
  }, indices);
  const int64_t nb = w.indptr[nbr];
  if (w.indptr[0] != 0 || nb != n_idx)
    throw std::invalid_argument("indptr must start at 0 and end at len(indices)");
  if (values.size() != nb * br * bc)
    throw std::invalid_argument("values must hold n_blocks * br * bc = " + std::to_string(nb * br * bc) + " floats");
  w.values = values.data();
  return w;
}

void bind_formats(py::module_& m) {
  m.def("validate_bsr",
        [](int64_t rows, int64_t cols, int br, int bc, const carray<int64_t>& indptr,
           const IndexArray& indices, const carray<float>& values) {
          sk::BsrView w = view_of(rows, cols, br, bc, indptr, indices, values);
          py::gil_scoped_release release;
          sk::validate_bsr(w, w.n_blocks());
        },
        py::arg("rows"), py::arg("cols"), py::arg("br"), py::arg("bc"), py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("values").noconvert(),
        "Full structural check of block-CSR arrays; raises ValueError.");
}

// A weight whose arrays were checked once (O(1) here; O(nnz) by validate_bsr when the
// Python object was built) and are kept alive by this object: later calls pass only
// the dense operands. The raw entry points take addresses, for callers that have
// already checked those operands (sparsekit.nn's layers and sparsekit.ops): they cut
// the per-call cost of a small layer from about 1.5 us to a few hundred ns.
class Weight {
 public:
  Weight(int64_t rows, int64_t cols, int br, int bc, carray<int64_t> indptr, IndexArray indices,
         carray<float> values, std::optional<carray<float>> bias, int activation)
      : indptr_(std::move(indptr)), indices_(std::move(indices)), values_(std::move(values)),
        bias_(std::move(bias)) {
    w_ = view_of(rows, cols, br, bc, indptr_, indices_, values_);
    if (bias_ && (bias_->ndim() != 1 || bias_->shape(0) != rows))
      throw std::invalid_argument("bias must have one entry per row");
    act_ = activation_of(activation);
    work_per_vector_ = w_.n_blocks() * br * bc;
  }

  // y = act(x @ W.T + bias): x is (n, cols) and y (n, rows), both C-contiguous float32.
  void linear_raw(uintptr_t x, uintptr_t y, int64_t n, int threads) const {
    py::gil_scoped_release release;
    linear_into(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), n, threads);
  }

  // linear_raw's work on pointers, with or without the GIL (it touches no Python object).
  void linear_into(const float* x, float* y, int64_t n, int threads) const {
    sk::Problem p = problem(sk::Layout::Linear, n, serial_if_small(n, threads));
    p.x = x;
    p.y = y;
    sk::compute(p);
  }

  int64_t rows() const { return w_.rows; }
  int64_t cols() const { return w_.cols; }

  // y[i] = act(W @ x[i] + bias[:, None]) for i < batch: x is (batch, cols, len) and y
  // (batch, rows, len), both C-contiguous float32 (a lowered convolution).
  void matmul_raw(uintptr_t x, uintptr_t y, int64_t batch, int64_t len, int threads) const {
    if (batch < 0 || len < 0) throw std::invalid_argument("batch and len must be non-negative");
    // The small-work rule looks at the whole batch (len * batch vectors, saturated).
    const int64_t vectors = batch > 0 && len > INT64_MAX / batch ? INT64_MAX : len * batch;
    sk::Problem p = problem(sk::Layout::Matmul, len, serial_if_small(vectors, threads));
    p.x = reinterpret_cast<const float*>(x);
    p.y = reinterpret_cast<float*>(y);
    py::gil_scoped_release release;
    sk::compute_batch(p, batch, w_.cols * len, w_.rows * len);
  }

  // Checked numpy entry point (sparsekit.linear / sparsekit.matmul): bias and activation
  // per call, x (n, cols) for linear or (cols, n) for matmul, y the matching output.
  void run(const carray<float>& x, const std::optional<carray<float>>& bias, int activation,
           carray<float>& y, bool matmul, int threads) const {
    if (x.ndim() != 2) throw std::invalid_argument("x must be 2-D");
    const int64_t n = matmul ? x.shape(1) : x.shape(0);
    const int64_t inner = matmul ? x.shape(0) : x.shape(1);
    if (inner != w_.cols) throw std::invalid_argument("x does not match the matrix's columns");
    const int64_t y_rows = matmul ? w_.rows : n, y_cols = matmul ? n : w_.rows;
    if (y.ndim() != 2 || y.shape(0) != y_rows || y.shape(1) != y_cols)
      throw std::invalid_argument("y has the wrong shape");
    if (bias && (bias->ndim() != 1 || bias->shape(0) != w_.rows))
      throw std::invalid_argument("bias must have one entry per row");
    sk::Problem p = problem(matmul ? sk::Layout::Matmul : sk::Layout::Linear, n, threads);
    p.bias = bias ? bias->data() : nullptr;
    p.act = activation_of(activation);
    p.x = x.data();
    p.y = y.mutable_data();
    py::gil_scoped_release release;
    sk::compute(p);
  }

 private:
  static sk::Activation activation_of(int code) {
    if (code < 0 || code > 2) throw std::invalid_argument("unknown activation code");
    return static_cast<sk::Activation>(code);
  }

  // Products smaller than this many stored-value x vector multiply-adds run on one
  // thread in the raw paths (the checked path runs on the threads it is given): waking a second OpenMP thread costs more than it saves
  // there (results are bitwise identical either way).
  static constexpr int64_t kSmallWork = int64_t{1} << 15;

  sk::Problem problem(sk::Layout layout, int64_t n, int threads) const {
    sk::Problem p;
    p.w = w_;
    p.w.kstarts = kstarts(n);
    p.layout = layout;
    p.n = n;
    p.bias = bias_ ? bias_->data() : nullptr;
    p.act = act_;
    p.threads = threads;
    return p;
  }

  // BsrView::kstarts for a product with n vectors: built at the first batch > 1 call
  // (the arrays are checked by then; batch-1 users never pay for them), then reused.
  const int32_t* kstarts(int64_t n) const {
    if (w_.bc != 1 || n <= 1) return nullptr;
    std::call_once(kstarts_once_, [this] { kstarts_ = sk::kblock_starts(w_); });
    return kstarts_.empty() ? nullptr : kstarts_.data();
  }

  // One thread when n vectors make less than kSmallWork multiply-adds (no overflow).
  int serial_if_small(int64_t n, int threads) const {
    const bool small = work_per_vector_ == 0 || n < (kSmallWork - 1) / work_per_vector_ + 1;
    return small ? 1 : threads;
  }

  carray<int64_t> indptr_;
  IndexArray indices_;
  carray<float> values_;
  std::optional<carray<float>> bias_;
  sk::BsrView w_;
  mutable std::once_flag kstarts_once_;
  mutable std::vector<int32_t> kstarts_;  // BsrView::kstarts (empty unless bc == 1)
  sk::Activation act_ = sk::Activation::None;
  int64_t work_per_vector_ = 0;
};

// Consecutive linear layers run in one call (sparsekit.nn.SparseSequential): one GIL
// release, the activations between layers in C++ buffers, no Python between layers.
// Each layer runs exactly as its own linear_raw would, so results are bitwise equal
// to calling the layers one by one.
class Chain {
 public:
  explicit Chain(const py::sequence& layers) {
    if (py::len(layers) == 0) throw std::invalid_argument("layers must not be empty");
    for (const py::handle h : layers) {
      if (!py::isinstance<Weight>(h)) throw py::type_error("layers must be sparsekit._core.Weight objects");
      const Weight* w = h.cast<const Weight*>();
      if (!layers_.empty() && w->cols() != layers_.back()->rows())
        throw std::invalid_argument("layer " + std::to_string(layers_.size()) + " takes " + std::to_string(w->cols()) +
                                    " inputs but the layer before it gives " + std::to_string(layers_.back()->rows()));
      if (layers_.size() + 1 < static_cast<size_t>(py::len(layers))) widest_ = std::max(widest_, w->rows());
      layers_.push_back(w);
      owners_.push_back(py::reinterpret_borrow<py::object>(h));  // keeps the Weight alive
    }
  }

  // y = L_k(...L_1(x)): x is (n, cols of the first) and y (n, rows of the last), C-contiguous float32.
  void linear_raw(uintptr_t x, uintptr_t y, int64_t n, int threads) const {
    if (n < 0) throw std::invalid_argument("n must be non-negative");
    if (widest_ > 0 && n > INT64_MAX / static_cast<int64_t>(sizeof(float)) / 2 / widest_)
      throw std::invalid_argument("n * widest intermediate layer is too large");
    py::gil_scoped_release release;
    // Layer i writes into one buffer while reading the other, 64-byte aligned. Up to
    // kKeepFloats they are kept per calling thread and only grow, like the kernels'
    // scratch (a fresh 1 MiB buffer per call at batch 256 cost page faults on every
    // call); larger ones are allocated per call, so one huge batch does not stay
    // allocated for the thread's lifetime.
    constexpr size_t kKeepFloats = size_t{1} << 21;  // 8 MiB
    thread_local std::vector<float> kept[2];
    std::vector<float> local[2];
    const size_t size = static_cast<size_t>(n * widest_) + 16;
    float* ping[2] = {nullptr, nullptr};
    for (size_t i = 0; i < 2 && i + 1 < layers_.size(); ++i) {
      std::vector<float>& buf = size <= kKeepFloats ? kept[i] : local[i];
      if (buf.size() < size) buf.resize(size);
      const auto addr = reinterpret_cast<uintptr_t>(buf.data());
      ping[i] = buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
    }
    const float* in = reinterpret_cast<const float*>(x);
    for (size_t i = 0; i < layers_.size(); ++i) {
      float* out = i + 1 == layers_.size() ? reinterpret_cast<float*>(y) : ping[i % 2];
      layers_[i]->linear_into(in, out, n, threads);
      in = out;
    }
  }

  int64_t rows() const { return layers_.back()->rows(); }
  int64_t cols() const { return layers_.front()->cols(); }
  size_t size() const { return layers_.size(); }

 private:
  std::vector<const Weight*> layers_;
  std::vector<py::object> owners_;
  int64_t widest_ = 0;  // most outputs of any layer but the last
};

void bind_kernels(py::module_& m) {
  py::class_<Weight>(m, "Weight",
                     "Block-CSR arrays checked once and kept alive; sparse x dense products on them.")
      .def(py::init<int64_t, int64_t, int, int, carray<int64_t>, IndexArray, carray<float>,
                    std::optional<carray<float>>, int>(),
           py::arg("rows"), py::arg("cols"), py::arg("br"), py::arg("bc"), py::arg("indptr").noconvert(),
           py::arg("indices").noconvert(), py::arg("values").noconvert(), py::arg("bias").noconvert(),
           py::arg("activation"))
      .def("linear_raw", &Weight::linear_raw, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("threads"),
           "Unchecked: y = act(x @ W.T + bias) at addresses x (n, cols) and y (n, rows).")
      .def("matmul_raw", &Weight::matmul_raw, py::arg("x"), py::arg("y"), py::arg("batch"), py::arg("len"),
           py::arg("threads"),
           "Unchecked: y[i] = act(W @ x[i] + bias) at addresses x (batch, cols, len), y (batch, rows, len).")
      .def("run", &Weight::run, py::arg("x").noconvert(), py::arg("bias").noconvert(), py::arg("activation"),
           py::arg("y").noconvert(), py::arg("matmul"), py::arg("threads"),
           "y = act(x @ W.T + bias) (matmul=False) or y = W @ x (matmul=True), checked.");
  py::class_<Chain>(m, "Chain", "Consecutive Weights (each one's rows = the next one's cols) run in one call.")
      .def(py::init<const py::sequence&>(), py::arg("layers"))
      .def("linear_raw", &Chain::linear_raw, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("threads"),
           "Unchecked: y = L_k(...L_1(x)) at addresses x (n, cols) and y (n, rows).")
      .def_property_readonly("rows", &Chain::rows)
      .def_property_readonly("cols", &Chain::cols)
      .def("__len__", &Chain::size);
  m.def("stream_read",
        [](const carray<float>& a, int threads) {
          const float* p = a.data();
          const int64_t n = a.size();
          py::gil_scoped_release release;
          return sk::stream_read(p, n, threads);
        },
        py::arg("a").noconvert(), py::arg("threads"),
        "Sum of a's floats read once on `threads` threads (benchmark reference for bandwidth).");
}

void bind_runtime(py::module_& m) {
  m.def("simd", [] { return std::string(sk::isa_name(sk::current_isa())); });
  m.def("simd_available", [] {
    std::vector<std::string> names;
    for (sk::Isa isa : sk::available_isas()) names.emplace_back(sk::isa_name(isa));
    return names;
  });
  m.def("set_simd", [](const std::string& name) { sk::set_isa(sk::parse_isa(name)); }, py::arg("name"));
  m.def("openmp", &sk::openmp_enabled);
  m.def("openmp_max_threads", &sk::openmp_max_threads);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "sparsekit's compiled kernels (private; use the sparsekit package).";
  bind_runtime(m);
  bind_formats(m);
  bind_kernels(m);
}

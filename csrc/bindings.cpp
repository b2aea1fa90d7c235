// The only file that knows about Python: translates arrays to views, releases the
// GIL around kernel work, and lets std::invalid_argument surface as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

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

void bind_kernels(py::module_& m) {
  m.def("spmm",
        [](int64_t rows, int64_t cols, int br, int bc, const carray<int64_t>& indptr,
           const IndexArray& indices, const carray<float>& values, const carray<float>& x,
           std::optional<carray<float>> bias, int activation, carray<float> y, bool matmul,
           int threads) {
          sk::Problem p;
          p.w = view_of(rows, cols, br, bc, indptr, indices, values);
          p.layout = matmul ? sk::Layout::Matmul : sk::Layout::Linear;
          if (activation < 0 || activation > 2) throw std::invalid_argument("unknown activation code");
          p.act = static_cast<sk::Activation>(activation);
          // x is (n, cols) for linear and (cols, n) for matmul, both stored as 2-D.
          if (x.ndim() != 2) throw std::invalid_argument("x must be 2-D");
          p.n = matmul ? x.shape(1) : x.shape(0);
          const int64_t inner = matmul ? x.shape(0) : x.shape(1);
          if (inner != cols) throw std::invalid_argument("x does not match the matrix's columns");
          const int64_t y_rows = matmul ? rows : p.n, y_cols = matmul ? p.n : rows;
          if (y.ndim() != 2 || y.shape(0) != y_rows || y.shape(1) != y_cols)
            throw std::invalid_argument("y has the wrong shape");
          if (bias && (bias->ndim() != 1 || bias->shape(0) != rows))
            throw std::invalid_argument("bias must have one entry per row");
          p.x = x.data();
          p.y = y.mutable_data();
          p.bias = bias ? bias->data() : nullptr;
          p.threads = threads;
          py::gil_scoped_release release;
          sk::compute(p);
        },
        py::arg("rows"), py::arg("cols"), py::arg("br"), py::arg("bc"), py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("values").noconvert(), py::arg("x").noconvert(),
        py::arg("bias").noconvert(), py::arg("activation"), py::arg("y").noconvert(), py::arg("matmul"),
        py::arg("threads"),
        "y = act(x @ W.T + bias) (matmul=False) or y = W @ x (matmul=True).");
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

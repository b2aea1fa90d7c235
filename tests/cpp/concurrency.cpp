// ThreadSanitizer harness: 8 threads run the kernels on one shared matrix and must
// produce bitwise the results of a single-threaded run, at every SIMD level this CPU
// has, switching levels while others compute. Built without OpenMP (libgomp is not
// instrumented, so TSan cannot see its synchronisation); OpenMP parallel regions are
// covered by the thread-count determinism tests instead. Run by .ci/tsan.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "sparsekit/dispatch.h"

namespace sk = sparsekit;

int main() {
  const int64_t rows = 97, cols = 130;
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::vector<int64_t> indptr{0};
  std::vector<int32_t> indices;
  std::vector<float> values;
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < cols; ++c)
      if ((gen() % 5) == 0) { indices.push_back(c); values.push_back(uni(gen)); }
    indptr.push_back(static_cast<int64_t>(indices.size()));
  }
  sk::BsrView w;
  w.rows = rows; w.cols = cols; w.br = 1; w.bc = 1;
  w.indptr = indptr.data(); w.indices = indices.data(); w.index_bytes = 4; w.values = values.data();
  sk::validate_bsr(w, static_cast<int64_t>(indices.size()));

  const int64_t n = 19;
  std::vector<float> x(n * cols), bias(rows);
  for (float& v : x) v = uni(gen);
  for (float& v : bias) v = uni(gen);
  auto run = [&](std::vector<float>& y, int64_t batch) {
    sk::Problem p;
    p.w = w; p.layout = sk::Layout::Linear; p.x = x.data(); p.n = batch;
    p.bias = bias.data(); p.act = sk::Activation::Gelu; p.y = y.data(); p.threads = 1;
    sk::compute(p);
  };
  const auto levels = sk::available_isas();
  std::vector<std::vector<float>> expected;
  for (sk::Isa isa : levels) {
    sk::set_isa(isa);
    for (int64_t batch : {int64_t{1}, n}) {
      expected.emplace_back(batch * rows);
      run(expected.back(), batch);
    }
  }
  int failures = 0;
  std::vector<std::thread> pool;
  std::vector<int> bad(8, 0);
  for (int t = 0; t < 8; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t li = static_cast<size_t>((t + i) % levels.size());
        if (t == 0 && i % 10 == 0) sk::set_isa(levels[li]);  // switch while others compute
        const int64_t batch = (i % 2) ? n : 1;
        std::vector<float> y(batch * rows);
        run(y, batch);
        const sk::Isa now = sk::current_isa();
        (void)now;  // the level used is whichever was active: compare against all
        bool any = false;
        for (const auto& e : expected)
          if (e.size() == y.size() && std::memcmp(e.data(), y.data(), y.size() * sizeof(float)) == 0) any = true;
        if (!any) ++bad[t];
      }
    });
  }
  for (auto& th : pool) th.join();
  for (int b : bad) failures += b;
  std::printf("%zu levels, 8 threads x 200 calls, mismatches: %d\n", levels.size(), failures);
  return failures == 0 ? 0 : 1;
}

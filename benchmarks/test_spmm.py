"""sparsekit against torch dense, torch CSR and scipy CSR: one group per grid point.

``pytest benchmarks --benchmark-only [--full-grid] [--simd avx2] [--sk-threads 2]``.
Every contender's result is checked against a float64 reference outside the timed
call; ``extra_info`` records SIMD level, threads, sparsity, block, bytes moved and the
cache state. Batch 1 runs ``hot`` (pytest-benchmark's back-to-back calls) and ``cold``
(``benchmark.pedantic`` with the report's eviction, :func:`sparsekit.bench.cold_setup_for`,
as the untimed setup of every call; ``--cold-rounds`` calls).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from sparsekit import SparseMatrix, bench

# The quantized formats and torch's dynamic int8 Linear run in their own groups
# (``-k int8`` selects them); the float32 grid is unchanged.
CONTENDERS = ([f"sparsekit-{f}" for f in bench.ALL_FORMATS] + list(bench.BASELINES)
              + list(bench.QUANTIZED_BASELINES))


def _group(case: bench.Case, cache: str) -> str:
    return f"linear {case.shape[0]}x{case.shape[1]} batch={case.batch} sparsity={case.sparsity:g} cache={cache}"


def _run(benchmark, fn, cache: str, setup, rounds: int) -> None:
    """Hot: pytest-benchmark's own calls, back to back. Cold: ``setup`` (the eviction) before
    every one of ``rounds`` calls, untimed, after one warm-up call."""
    if cache == "hot":
        benchmark(fn)
    else:
        benchmark.extra_info.update(bench.evictor().info())
        benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("contender", CONTENDERS)
def test_linear(benchmark, case, cache, contender, sk_threads, simd_level, cold_rounds):
    fmt = contender.split("-", 1)[1] if contender.startswith("sparsekit-") else None
    cs = bench.contenders(case, formats=(fmt,) if fmt else (),
                          baselines=() if fmt else (contender,), threads=sk_threads)
    c = cs[contender]
    c.check()  # correctness, outside the timed call
    benchmark.group = _group(case, cache)
    benchmark.extra_info.update({"simd": simd_level, "threads": sk_threads, "sparsity": case.sparsity,
                                 "batch": case.batch, "shape": list(case.shape), "cache": cache,
                                 "block": c.info.get("block"), "bytes_moved": c.info.get("bytes_moved"),
                                 "nbytes": c.info.get("nbytes"), "flops": c.info.get("flops")})
    _run(benchmark, c.run, cache, bench.cold_setup_for([c]), cold_rounds)


@pytest.mark.parametrize("fmt", list(bench.FORMATS))
def test_stream_read_reference(benchmark, case, cache, fmt, sk_threads, batch_independent, cold_rounds):
    """The streaming read of the same bytes a batch-1 product must read, in the same cache
    state (same group as b1): from cache (hot) or from DRAM after the eviction (cold)."""
    m = bench.sparse_weight(case.shape, case.sparsity, fmt)
    nbytes = bench.kernel_bytes(m, 1)
    fn = bench.stream_fn(nbytes, sk_threads)
    benchmark.group = _group(case, cache)
    benchmark.extra_info.update({"bytes": nbytes, "threads": sk_threads, "reference_for": f"sparsekit-{fmt}",
                                 "cache": cache})
    _run(benchmark, fn, cache, bench.cold_setup(), cold_rounds)


@pytest.mark.parametrize("fmt", list(bench.ALL_FORMATS))
def test_convert_and_bytes(benchmark, case, fmt, batch_independent):
    """Conversion time, and bytes of each format against dense float32 (extra_info)."""
    block, values, _ = bench.format_spec(fmt)
    w = bench.dense_weight(case.shape, case.sparsity, block)
    extra = {} if values == "float32" else {"values": values}
    m = benchmark(SparseMatrix.from_dense, w, block=block, **extra)
    dense = 4 * case.shape[0] * case.shape[1]
    benchmark.group = f"convert {case.shape[0]}x{case.shape[1]} sparsity={case.sparsity:g}"
    benchmark.extra_info.update({"nbytes": m.nbytes, "dense_bytes": dense, "ratio": m.nbytes / dense,
                                 "index_dtype": m.index_dtype, "block": list(block), "values": values})
    if values == "float32":
        assert np.array_equal(m.to_dense(), w)
    else:  # int8: half a step of the row's scale; 16-bit: the format's rounding
        step = np.abs(w).max(axis=1, keepdims=True) / 127 if values == "int8" else np.abs(w) * 2.0 ** -7
        assert np.all(np.abs(m.to_dense() - w) <= 0.5 * step + 1e-12)


@pytest.mark.parametrize("block", [(1, 1), (4, 1)], ids=["csr", "4x1"])
def test_peak_rss_4096(benchmark, block):
    """Peak resident memory of building, converting and running a 4096x4096 layer (fresh process)."""
    out = {}

    def probe():
        out.update(bench.peak_rss([block])[0])

    benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.group = "peak RSS 4096x4096 sparsity=0.9"
    benchmark.extra_info.update({k: v for k, v in out.items()})
    print(json.dumps(out), file=sys.stderr)
    assert out["peak_run"] - out["rss_sparse"] < (32 << 20)  # running adds little

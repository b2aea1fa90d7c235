"""Correctness of the specialised (performance) code paths of the kernels.

Each path is exercised at every SIMD level this CPU has and with 1 and 2 threads,
against a float64 reference with a float32 error bound, and results must be
bitwise identical across thread counts. Paths (csrc/kernels/spmm_impl.h):

* batch 1: scalar-load gathers for 1x1 blocks (row lengths around multiples of the
  register width), r x 1 blocks narrower than a register (group broadcasts) and as
  tall as one, 1 x c blocks narrower than a register (contiguous chunks) and as wide;
* batch > 1: transposed packing of x, the row-chunked result buffer transposed into
  y (linear) or copied (matmul), tiles cut short at the end of the batch, chunks cut
  at 256 rows, the vectorised bias/ReLU/GELU epilogue with tails;
* batch > 1, r x 1 blocks (CSR included): the K-blocked kernel (block columns in
  K-blocks of 128, partial sums kept between K-blocks, empty K-blocks skipped), with
  1, 2 or 4 vectors per panel row chosen by the batch (thresholds at W and 2W vectors,
  W = 8 or 16), two block rows interleaved when a block row alone has too few
  accumulators (and the odd one left over), x used in place as panels for the matmul
  layout when the batch is a multiple of the panel width;
* the streaming-read reference used by the benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekit
from sparsekit import SparseMatrix
from sparsekit._runtime import _core

U = 2.0**-24
BLOCKS = [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (1, 2), (1, 4), (1, 8), (1, 16), (4, 4)]


def reference(x, w, bias=None, activation=None):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = x64 @ w64.T
    mag = np.abs(x64) @ np.abs(w64).T
    if bias is not None:
        y = y + bias
        mag = mag + np.abs(bias)
    tol = (w.shape[1] + 2) * U * mag
    if activation == "relu":
        y = np.maximum(y, 0.0)
    elif activation == "gelu":
        y = 0.5 * y * (1.0 + scipy.special.erf(y / math.sqrt(2.0)))
        tol = 1.13 * tol
    return y, tol + 8 * U * np.abs(y) + 1e-30


def check(y, ref, tol):
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert (err <= tol).all(), f"worst error {err.max():.3g}, bound there {tol.flat[np.argmax(err)]:.3g}"


def blocky(rng, rows, cols, block, density, row_lengths=None):
    """A weight made of whole r x c blocks; optional exact stored blocks per block row."""
    r, c = block
    nbr, nbc = -(-rows // r), -(-cols // c)
    keep = rng.random((nbr, nbc)) < density
    if row_lengths is not None:
        keep[:] = False
        for b in range(nbr):
            k = row_lengths[b % len(row_lengths)]
            keep[b, rng.choice(nbc, size=min(k, nbc), replace=False)] = True
    mask = np.repeat(np.repeat(keep, r, 0), c, 1)[:rows, :cols]
    return (rng.standard_normal((rows, cols)) * mask).astype(np.float32)


def run_both(x, m, **kw):
    y1 = sparsekit.linear(x, m, threads=1, **kw)
    y2 = sparsekit.linear(x, m, threads=2, **kw)
    assert np.array_equal(y1.view(np.uint32), y2.view(np.uint32)), "thread counts differ bitwise"
    return y1


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_batch1_row_lengths_around_register_widths(rng, simd, block):
    # Row lengths (in blocks) around 1, 2 and 4 registers' worth of blocks for every
    # width (W = 8 or 16 lanes), so main loops, second accumulators and tails all run.
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100]
    r, c = block
    rows, cols = 16 * r * 3 + 1, 130 * c + 3
    w = blocky(rng, rows, cols, block, 0.0, row_lengths=lengths)
    m = SparseMatrix.from_dense(w, block=block)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    check(run_both(x, m), *reference(x, w))


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("index_dtype", ["uint16", "int32"])
def test_batch1_large_layer(rng, simd, block, index_dtype):
    w = blocky(rng, 1029, 2053, block, 0.15)
    m = SparseMatrix.from_dense(w, block=block, index_dtype=index_dtype)
    x = rng.standard_normal(2053).astype(np.float32)
    bias = rng.standard_normal(1029).astype(np.float32)
    for act in (None, "relu", "gelu"):
        y = run_both(x, m, bias=bias, activation=act)
        ref, tol = reference(x[None], w, bias, act)
        check(y, ref[0], tol[0])


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (8, 1), (1, 4), (2, 2)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("batch", [2, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 100])
def test_panels_and_transposed_store(rng, simd, block, batch):
    # rows and cols not multiples of 8: partial register transposes on both sides.
    w = blocky(rng, 203, 77, block, 0.3)
    m = SparseMatrix.from_dense(w, block=block)
    x = rng.standard_normal((batch, 77)).astype(np.float32)
    check(run_both(x, m), *reference(x, w))
    xt = np.ascontiguousarray(x.T)
    y1 = sparsekit.matmul(m, xt, threads=1)
    y2 = sparsekit.matmul(m, xt, threads=2)
    assert np.array_equal(y1.view(np.uint32), y2.view(np.uint32))
    ref, tol = reference(x, w)
    check(y1.T, ref, tol)


@pytest.mark.parametrize("act", [None, "relu", "gelu"])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_epilogue_tails(rng, simd, act, batch):
    # out_features 1..37: the vectorised epilogue's main loop and scalar tail.
    for rows in (1, 7, 8, 9, 16, 17, 37):
        w = blocky(rng, rows, 50, (1, 1), 0.5)
        m = SparseMatrix.from_dense(w)
        x = rng.standard_normal((batch, 50)).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        check(run_both(x, m, bias=bias, activation=act), *reference(x, w, bias, act))


def test_relu_keeps_nan_and_negative_zero(simd):
    # Bias -1 on a row summing to 1 gives +0; a NaN weight gives NaN; row 2 is -0.0 + -0.0.
    w = np.zeros((19, 4), np.float32)
    w[0, 0] = 1.0
    w[1, 1] = np.nan
    m = SparseMatrix.from_dense(w)
    bias = np.zeros(19, np.float32)
    bias[0] = -1.0
    bias[2] = -0.0
    for batch in (1, 9):
        x = np.ones((batch, 4), np.float32)
        y = run_both(x, m, bias=bias, activation="relu")
        assert np.isnan(y[:, 1]).all()
        assert (y[:, 0] == 0).all() and (y[:, 3:] == 0).all()


@pytest.mark.parametrize("block", [(1, 1), (4, 1)], ids=["1x1", "4x1"])
def test_chunks_with_many_empty_rows(rng, simd, block):
    # A very sparse matrix: a 64 KiB chunk of values spans far more than the 256-row cap.
    w = blocky(rng, 2000, 300, block, 0.002)
    m = SparseMatrix.from_dense(w, block=block)
    x = rng.standard_normal((20, 300)).astype(np.float32)
    check(run_both(x, m), *reference(x, w))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 64, 100_003, 1 << 20])
def test_stream_read_sums(rng, simd, threads, n):
    a = rng.standard_normal(n).astype(np.float32)
    got = _core.stream_read(a, threads)
    assert got == pytest.approx(float(a.astype(np.float64).sum()), abs=1e-3 * max(1.0, math.sqrt(n)))


TALL = [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1)]


def kblock_weight(rng, rows, cols, block, density):
    """Blocky weight whose block rows also include ones stored only in the first or
    only in the last K-block of 128 block columns, and empty block rows."""
    w = blocky(rng, rows, cols, block, density)
    r = block[0]
    nbr = -(-rows // r)
    for b in range(0, nbr, 5):
        w[b * r:(b + 1) * r] = 0
        if b % 3 == 1:
            w[b * r:(b + 1) * r, : min(cols, 100)] = rng.standard_normal((min(r, rows - b * r), min(cols, 100)))
        elif b % 3 == 2:
            w[b * r:(b + 1) * r, max(0, cols - 40):] = rng.standard_normal((min(r, rows - b * r), min(cols, 40)))
    return w


def check_linear_and_matmul(x, m, w):
    check(run_both(x, m), *reference(x, w))
    xt = np.ascontiguousarray(x.T)
    y1 = sparsekit.matmul(m, xt, threads=1)
    y2 = sparsekit.matmul(m, xt, threads=2)
    assert np.array_equal(y1.view(np.uint32), y2.view(np.uint32)), "thread counts differ bitwise"
    ref, tol = reference(x, w)
    check(y1.T, ref, tol)


@pytest.mark.parametrize("block", TALL, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("batch", [2, 8, 9, 16, 17, 24, 32, 33, 48, 64, 65, 128, 130])
def test_kblocked_panels_across_kblocks_and_widths(rng, simd, block, batch):
    # 300 columns: K-blocks of 128, 128 and 44 columns; 67 rows: odd block-row counts.
    w = kblock_weight(rng, 67, 300, block, 0.3)
    m = SparseMatrix.from_dense(w, block=block)
    x = rng.standard_normal((batch, 300)).astype(np.float32)
    check_linear_and_matmul(x, m, w)


@pytest.mark.parametrize("block", TALL, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("cols", [1, 127, 128, 129, 256, 257])
@pytest.mark.parametrize("index_dtype", ["uint16", "int32"])
def test_kblocked_panels_kblock_edges(rng, simd, block, cols, index_dtype):
    w = kblock_weight(rng, 45, cols, block, 0.5)
    m = SparseMatrix.from_dense(w, block=block, index_dtype=index_dtype)
    x = rng.standard_normal((40, cols)).astype(np.float32)
    check_linear_and_matmul(x, m, w)


@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_kblocked_panels_many_chunks_with_bias(rng, simd, act):
    # 1000 rows x 700 columns at 50%: several 128-row chunks and six K-blocks.
    w = blocky(rng, 1000, 700, (1, 1), 0.5)
    m = SparseMatrix.from_dense(w)
    x = rng.standard_normal((70, 700)).astype(np.float32)
    bias = rng.standard_normal(1000).astype(np.float32)
    check(run_both(x, m, bias=bias, activation=act), *reference(x, w, bias, act))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 150),
    cols=st.sampled_from([3, 64, 127, 128, 129, 200, 255, 256, 257, 400]),
    density=st.floats(0.0, 1.0),
    block=st.sampled_from(TALL),
    batch=st.sampled_from([2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 129]),
    level=st.sampled_from(sparsekit.cpu_info()["simd_available"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kblocked_panels_property(rows, cols, density, block, batch, level, seed):
    rng = np.random.default_rng(seed)
    w = kblock_weight(rng, rows, cols, block, density)
    m = SparseMatrix.from_dense(w, block=block)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    with sparsekit.use_simd(level):
        check_linear_and_matmul(x, m, w)

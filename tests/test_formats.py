"""SparseMatrix: construction, export, validation of untrusted arrays, protocols."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekit
from sparsekit import SparseMatrix

BLOCKS = [(r, c) for r in (1, 2, 4, 8, 16) for c in (1, 2, 4, 8, 16)]


def sparse_dense(rng, shape, density):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0.0
    return w


def block_reference(w, block):
    """Dense matrix of what block CSR keeps: every block holding a nonzero, whole."""
    r, c = block
    rows, cols = w.shape
    keep = np.zeros(((rows + r - 1) // r, (cols + c - 1) // c), bool)
    for i, j in zip(*np.nonzero(w)):
        keep[i // r, j // c] = True
    return keep


@pytest.mark.parametrize("block", BLOCKS)
def test_from_dense_round_trip_every_block(rng, block):
    w = sparse_dense(rng, (37, 29), 0.2)
    m = SparseMatrix.from_dense(w, block=block)
    np.testing.assert_array_equal(m.to_dense(), w)
    keep = block_reference(w, block)
    assert m.n_blocks == keep.sum()
    r, c = block
    heights = np.minimum(r, 37 - np.arange(keep.shape[0]) * r)
    widths = np.minimum(c, 29 - np.arange(keep.shape[1]) * c)
    assert m.nnz == int((keep * np.outer(heights, widths)).sum())
    assert m.block == block and m.shape == (37, 29)
    assert m.values.shape == (m.n_blocks, r, c)
    assert m.nbytes == m.indptr.nbytes + m.indices.nbytes + m.values.nbytes


def test_from_dense_torch_and_numpy_agree(rng):
    w = sparse_dense(rng, (16, 16), 0.3)
    a = SparseMatrix.from_dense(w)
    b = SparseMatrix.from_dense(torch.from_numpy(w))
    for name in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.to_torch().numpy(), w)


def test_properties_density_and_nnz(rng):
    w = np.zeros((10, 10), np.float32)
    w[0, :5] = 1.0
    m = SparseMatrix.from_dense(w)
    assert m.nnz == 5 and m.density == pytest.approx(0.05)
    assert m.index_dtype == "uint16"
    assert SparseMatrix.from_dense(w, index_dtype="int32").index_dtype == "int32"


def test_index_dtype_auto_switches_to_int32_past_uint16():
    w = torch.zeros(1, 65537)
    w[0, -1] = 3.0
    m = SparseMatrix.from_dense(w)
    assert m.index_dtype == "int32"
    assert m.to_dense()[0, -1] == 3.0
    with pytest.raises(ValueError, match="index_dtype"):
        SparseMatrix.from_dense(w, index_dtype="uint16")
    w2 = torch.zeros(1, 65536)
    assert SparseMatrix.from_dense(w2).index_dtype == "uint16"
    # Blocks count block columns: 4 * 65536 columns still fit uint16 with c = 4.
    assert SparseMatrix.from_dense(torch.zeros(1, 4 * 65536), block=(1, 4)).index_dtype == "uint16"


def test_empty_and_degenerate_shapes():
    for shape in [(0, 0), (0, 5), (5, 0), (3, 4)]:
        m = SparseMatrix.from_dense(np.zeros(shape, np.float32), block=(2, 2))
        assert m.nnz == 0 and m.shape == shape
        np.testing.assert_array_equal(m.to_dense(), np.zeros(shape, np.float32))
        assert m.density == 0.0


def test_nan_weights_are_kept():
    w = np.zeros((2, 2), np.float32)
    w[1, 0] = np.nan
    m = SparseMatrix.from_dense(w)
    assert m.nnz == 1 and np.isnan(m.values).all()


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "dia"])
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_from_scipy_formats(rng, fmt, kind):
    dense = sparse_dense(rng, (13, 11), 0.3)
    maker = sp.csr_matrix if kind == "matrix" else sp.csr_array
    m_sp = maker(dense).asformat(fmt)
    m = sparsekit.from_scipy(m_sp)
    np.testing.assert_array_equal(m.to_dense(), dense)


def test_from_scipy_bsr_keeps_block_and_reblocks(rng):
    dense = sparse_dense(rng, (16, 8), 0.1)
    bsr = sp.bsr_array(dense, blocksize=(4, 2))
    m = sparsekit.from_scipy(bsr)
    assert m.block == (4, 2)
    np.testing.assert_array_equal(m.to_dense(), dense)
    m2 = sparsekit.from_scipy(sp.csr_array(dense[:15, :7]), block=(8, 1))
    assert m2.block == (8, 1)
    np.testing.assert_array_equal(m2.to_dense(), dense[:15, :7])


def test_from_scipy_sums_duplicates_and_sorts():
    coo = sp.coo_array((np.array([1.0, 2.0, 5.0]), (np.array([0, 0, 1]), np.array([2, 2, 0]))), shape=(2, 3))
    m = sparsekit.from_scipy(coo)
    np.testing.assert_array_equal(m.to_dense(), [[0, 0, 3], [5, 0, 0]])


@pytest.mark.parametrize("block", [(1, 1), (2, 2), (4, 1), (3 - 2, 8)])
def test_to_scipy_round_trip(rng, block):
    dense = sparse_dense(rng, (16, 16), 0.2)
    m = SparseMatrix.from_dense(dense, block=block)
    s = m.to_scipy()
    assert s.format == ("csr" if block == (1, 1) else "bsr")
    np.testing.assert_array_equal(s.toarray(), dense)
    # Shapes the block does not divide come back as CSR of the logical shape.
    m2 = SparseMatrix.from_dense(dense[:15, :13], block=(4, 4))
    np.testing.assert_array_equal(m2.to_scipy().toarray(), dense[:15, :13])


def test_to_torch_csr(rng):
    dense = sparse_dense(rng, (9, 7), 0.3)
    t = SparseMatrix.from_dense(dense, block=(2, 2)).to_torch(layout=torch.sparse_csr)
    assert t.layout == torch.sparse_csr
    np.testing.assert_array_equal(t.to_dense().numpy(), dense)
    with pytest.raises(ValueError, match="layout"):
        SparseMatrix.from_dense(dense).to_torch(layout=torch.sparse_coo)


def test_from_arrays_sorts_unsorted_rows():
    m = SparseMatrix.from_arrays((2, 4), [0, 3, 4], [3, 0, 1, 2], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(m.to_dense(), [[2, 3, 0, 1], [0, 0, 4, 0]])
    assert list(m.indices) == [0, 1, 3, 2]


def test_from_arrays_blocks_flat_or_shaped():
    vals = np.arange(8, dtype=np.float32)
    a = SparseMatrix.from_arrays((4, 2), [0, 1, 2], [0, 0], vals, block=(2, 2))
    b = SparseMatrix.from_arrays((4, 2), [0, 1, 2], [0, 0], vals.reshape(2, 2, 2), block=(2, 2))
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())
    np.testing.assert_array_equal(a.to_dense(), vals.reshape(4, 2))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(indptr=[0, 1], indices=[0], values=[1.0]), ValueError, "indptr must have"),
        (dict(indptr=[1, 1, 1], indices=[], values=[]), ValueError, r"indptr\[0\]"),
        (dict(indptr=[0, 2, 1], indices=[0], values=[1.0]), ValueError, "non-decreasing"),
        (dict(indptr=[0, 1, 3], indices=[0, 1], values=[1.0, 2.0]), ValueError, r"indptr\[-1\]"),
        (dict(indptr=[0, 1, 2], indices=[0, 3], values=[1.0, 2.0]), ValueError, r"\[0, 3\)"),
        (dict(indptr=[0, 1, 2], indices=[0, -1], values=[1.0, 2.0]), ValueError, "must lie in"),
        (dict(indptr=[0, 2, 2], indices=[1, 1], values=[1.0, 2.0]), ValueError, "duplicate"),
        (dict(indptr=[0, 1, 2], indices=[0, 1], values=[1.0]), ValueError, "values must hold"),
        (dict(indptr=[0.0, 1.0, 2.0], indices=[0, 1], values=[1.0, 2.0]), TypeError, "indptr must hold integers"),
        (dict(indptr=[0, 1, 2], indices=[0.5, 1], values=[1.0, 2.0]), TypeError, "indices must hold integers"),
        (dict(indptr=[0, 1, 2], indices=[0, 1], values=["a", "b"]), TypeError, "values must hold real"),
        (dict(indptr=[[0, 1, 2]], indices=[0, 1], values=[1.0, 2.0]), ValueError, "indptr must be 1-D"),
        (dict(indptr=[0, 1, 2], indices=[0, 1], values=[1.0, 2.0], block=(3, 1)), ValueError, "block sides"),
        (dict(indptr=[0, 1, 2], indices=[0, 1], values=[1.0, 2.0], block=(1,)), TypeError, "block must be"),
        (dict(indptr=[0, 1, 2], indices=[0, 1], values=[1 + 2j, 2.0]), TypeError, "values must hold real"),
    ],
)
def test_from_arrays_rejects_corrupt_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SparseMatrix.from_arrays((2, 3), **kwargs)


@pytest.mark.parametrize("shape", [(-1, 3), (2,), "ab", (2.0, 3)])
def test_from_arrays_rejects_bad_shape(shape):
    with pytest.raises((TypeError, ValueError), match="shape"):
        SparseMatrix.from_arrays(shape, [0], [], [])


def test_from_dense_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        SparseMatrix.from_dense(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="w must be"):
        SparseMatrix.from_dense([[1.0]])
    with pytest.raises(TypeError, match="real numbers"):
        SparseMatrix.from_dense(np.zeros((2, 2), np.complex64))
    with pytest.raises(ValueError, match="index_dtype"):
        SparseMatrix.from_dense(np.zeros((2, 2), np.float32), index_dtype="int8")
    with pytest.raises(TypeError, match="from_dense"):
        SparseMatrix()
    with pytest.raises(TypeError, match="scipy.sparse"):
        sparsekit.from_scipy(np.zeros((2, 2)))


def test_buffers_are_read_only(rng):
    m = SparseMatrix.from_dense(sparse_dense(rng, (8, 8), 0.5))
    for a in (m.indptr, m.indices, m.values):
        with pytest.raises(ValueError):
            a[...] = 0


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (2, 8)])
def test_pickle_and_deepcopy(rng, block):
    m = SparseMatrix.from_dense(sparse_dense(rng, (19, 23), 0.3), block=block)
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), copy.copy(m)):
        assert clone.shape == m.shape and clone.block == m.block and clone.index_dtype == m.index_dtype
        np.testing.assert_array_equal(clone.to_dense(), m.to_dense())
    assert "SparseMatrix(shape=(19, 23)" in repr(m)


def test_pickle_with_tampered_state_is_rejected(rng):
    m = SparseMatrix.from_dense(sparse_dense(rng, (4, 4), 0.5))
    state = m.__getstate__()
    state["indices"] = np.full_like(state["indices"], 99)
    with pytest.raises(ValueError, match="must lie in"):
        m.__reduce__()[0](state)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    cols=st.integers(0, 40),
    density=st.floats(0.0, 1.0),
    block=st.sampled_from(BLOCKS),
    seed=st.integers(0, 2**32 - 1),
)
def test_from_dense_property(rows, cols, density, block, seed):
    rng = np.random.default_rng(seed)
    w = sparse_dense(rng, (rows, cols), density)
    m = SparseMatrix.from_dense(w, block=block)
    np.testing.assert_array_equal(m.to_dense(), w)
    again = SparseMatrix.from_arrays(m.shape, m.indptr, m.indices, m.values, block=block)
    np.testing.assert_array_equal(again.to_dense(), w)
    np.testing.assert_array_equal(sparsekit.from_scipy(sp.csr_array(w)).to_dense(), w)

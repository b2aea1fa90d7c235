"""Fuzzing the untrusted-input boundaries: raw arrays, scipy matrices, model files.

Every input must either load correctly or raise a Python exception (TypeError /
ValueError); never crash, hang or allocate without bound. CI runs a bounded number
of examples; set SPARSEKIT_FUZZ_EXAMPLES (e.g. 20000) for a longer campaign.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sparsekit
from sparsekit import SparseMatrix

EXAMPLES = int(os.environ.get("SPARSEKIT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
any_dtypes = st.sampled_from([np.int32, np.int64, np.uint16, np.float32, np.float64, np.bool_, np.complex64])


def arrays(dtypes, max_len=40):
    return dtypes.flatmap(lambda dt: hnp.arrays(dt, st.integers(0, max_len),
                                                elements=hnp.from_dtype(np.dtype(dt), allow_nan=True)
                                                if np.dtype(dt).kind != "c" else None))


def check_matrix(m: SparseMatrix, shape, block):
    """A matrix that loaded must be internally consistent and usable by the kernels."""
    assert m.shape == tuple(shape) and m.block == tuple(block)
    dense = m.to_dense()
    x = np.ones((3, shape[1]), np.float32)
    y = sparsekit.linear(x, m)
    assert y.shape == (3, shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        ref = x.astype(np.float64) @ dense.T.astype(np.float64)
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-3)


@FUZZ
@given(
    rows=st.integers(0, 20), cols=st.integers(0, 20),
    block=st.tuples(st.sampled_from([1, 2, 4, 8, 16, 3, 0, -1]), st.sampled_from([1, 2, 4, 8, 16, 5])),
    indptr=arrays(int_dtypes, 24), indices=arrays(any_dtypes), values=arrays(any_dtypes, 200),
)
def test_from_arrays_never_crashes(rows, cols, block, indptr, indices, values):
    try:
        m = SparseMatrix.from_arrays((rows, cols), indptr, indices, values, block=block)
    except (TypeError, ValueError):
        return
    check_matrix(m, (rows, cols), block)


@FUZZ
@given(
    rows=st.integers(1, 12), cols=st.integers(1, 12), block=st.sampled_from([(1, 1), (2, 2), (4, 1), (1, 8)]),
    seed=st.integers(0, 2**32 - 1), n_edits=st.integers(1, 4),
)
def test_from_arrays_mutated_valid_input(rows, cols, block, seed, n_edits):
    # Start from valid arrays and corrupt a few entries: nearly-valid input is where
    # unchecked indexing hides.
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * (rng.random((rows, cols)) < 0.4)
    m = SparseMatrix.from_dense(w, block=block)
    indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int64)
    for _ in range(n_edits):
        target = indptr if (rng.random() < 0.5 or len(indices) == 0) else indices
        pos = int(rng.integers(0, len(target)))
        target[pos] += int(rng.choice([-70000, -2, -1, 1, 2, 65536, 2**31]))
    try:
        m2 = SparseMatrix.from_arrays((rows, cols), indptr, indices, m.values, block=block)
    except (TypeError, ValueError):
        return
    check_matrix(m2, (rows, cols), block)


@FUZZ
@given(
    shape=st.tuples(st.integers(0, 15), st.integers(0, 15)),
    fmt=st.sampled_from(["coo", "csr", "csc", "bsr"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_from_scipy_with_duplicates_and_unsorted(shape, fmt, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 30))
    rows = rng.integers(0, max(shape[0], 1), n) if shape[0] else np.zeros(0, int)
    cols = rng.integers(0, max(shape[1], 1), n) if shape[1] else np.zeros(0, int)
    if not (shape[0] and shape[1]):
        n = 0
        rows, cols = rows[:0], cols[:0]
    data = rng.standard_normal(n).astype(np.float32)
    coo = sp.coo_array((data, (rows, cols)), shape=shape)
    m_sp = coo.asformat(fmt) if fmt != "bsr" else coo.tobsr()
    m = sparsekit.from_scipy(m_sp)
    np.testing.assert_allclose(m.to_dense(), coo.toarray(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ model files
def _saved_model(tmp_path_factory):
    from sparsekit.convert import convert
    from sparsekit.io import save

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.7)
    sparse = convert(model, format="csr")
    path = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    save(sparse, path)
    return path.read_bytes(), model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return _saved_model(tmp_path_factory)


def _fresh():
    return torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_load_mutated_files(saved, tmp_path, data):
    from sparsekit.io import load

    blob, dense = saved
    buf = bytearray(blob)
    kind = data.draw(st.sampled_from(["flip", "truncate", "header", "splice"]))
    header_len = int.from_bytes(blob[:8], "little")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    elif kind == "header":  # edit digits inside the JSON header: sizes, offsets, shapes
        digits = [i for i in range(8, 8 + header_len) if chr(buf[i]).isdigit()]
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.sampled_from(digits))
            buf[pos] = ord(data.draw(st.sampled_from("0123456789")))
    else:  # overwrite a stretch of tensor data with random bytes
        start = data.draw(st.integers(8 + header_len, len(buf) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        buf[start:start + len(chunk)] = chunk[: len(buf) - start]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(buf))
    try:
        model = load(path, _fresh())
    except (ValueError, TypeError):  # clear errors only: anything else is a bug
        return
    # It loaded: the model must run and agree with its own weights (no garbage reads).
    with torch.no_grad():
        y = model(torch.ones(2, 24))
    assert y.shape == (2, 5)

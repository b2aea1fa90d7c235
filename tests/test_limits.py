"""Limits: sizes beyond index ranges fail early and clearly; zero-size everything works.

What tests/test_formats.py, test_kernels.py, test_fuzz.py and test_io.py already cover is not
repeated here (index dtype switch at 65536 block columns, empty shapes with one block shape,
tampered files, fuzzed arrays). This file adds:

- declared sizes that would need a huge allocation (rows = 2**40 with empty arrays, block
  column counts past int32, zero-stride views of 2**40 rows) for every entry point, run in a
  fresh interpreter under ``RLIMIT_AS`` = current address space + 256 MiB: each must raise
  ValueError / TypeError naming the argument. An attempted large allocation would surface
  as MemoryError (not accepted) instead of a clean refusal;
- zero rows, zero columns, zero stored values, batch 0 and empty leading dims for all 25 block
  shapes through from_dense / from_arrays / from_scipy / to_scipy / to_torch, linear / matmul,
  SparseLinear, SparseConv2d / SparseConv1d, convert and save / load.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import sparsekit
from sparsekit import SparseMatrix
from sparsekit.formats import BLOCK_SIDES
from sparsekit.nn import SparseConv1d, SparseConv2d, SparseLinear

BLOCKS = list(itertools.product(BLOCK_SIDES, BLOCK_SIDES))

# name -> (expression, exception type, regex the message must match)
HUGE_CASES = {
    "from_arrays rows 2**40": ("SparseMatrix.from_arrays((2**40, 4), [0], [], [])", "ValueError", r"^shape .* beyond"),
    "from_arrays cols 2**40": ("SparseMatrix.from_arrays((1, 2**40), [0, 0], [], [])", "ValueError", r"^shape .* beyond"),
    "from_arrays rows 10**30": ("SparseMatrix.from_arrays((10**30, 4), [0], [], [])", "ValueError", r"^shape .* beyond"),
    "from_arrays negative rows": ("SparseMatrix.from_arrays((-1, 4), [0], [], [])", "ValueError", r"^shape must be non-negative"),
    "from_arrays negative cols": ("SparseMatrix.from_arrays((1, -4), [0, 0], [], [])", "ValueError", r"^shape must be non-negative"),
    "from_arrays float shape": ("SparseMatrix.from_arrays((2.0**40, 4), [0], [], [])", "TypeError", r"^shape must be a pair of ints"),
    "from_arrays block cols past int32": ("SparseMatrix.from_arrays((1, 2**33), [0, 0], [], [], index_dtype='int32')",
                                          "ValueError", r"^shape: 8589934592 block columns exceed the int32"),
    "from_arrays block cols past uint16": ("SparseMatrix.from_arrays((1, 2**17), [0, 0], [], [], index_dtype='uint16')",
                                           "ValueError", r"^index_dtype='uint16' holds at most 65536"),
    "from_arrays 2**30 block rows, short indptr": ("SparseMatrix.from_arrays((2**34, 4), [0], [], [], block=(16, 1))",
                                                   "ValueError", r"^indptr must have .* 1073741825 entries"),
    "from_arrays indptr[-1] 2**62": ("SparseMatrix.from_arrays((1, 4), [0, 2**62], [], [])", "ValueError", r"^indptr\[-1\]"),
    "from_arrays indptr past int64": ("SparseMatrix.from_arrays((1, 4), np.array([0, 2**64 - 1], np.uint64), [], [])",
                                      "ValueError", r"^indptr values exceed the int64"),
    "from_arrays index 2**40": ("SparseMatrix.from_arrays((1, 4), [0, 1], [2**40], [1.0])", "ValueError", r"^indices must lie"),
    "from_arrays value count": ("SparseMatrix.from_arrays((1, 4), [0, 1], [0], [1.0, 2.0])", "ValueError", r"^values must hold"),
    "from_dense 2**40 rows (zero-stride view)": ("SparseMatrix.from_dense(np.broadcast_to(np.float32(0), (2**40, 1)))",
                                                 "ValueError", r"^w\.shape .* beyond"),
    "from_dense 2**35 x 0": ("SparseMatrix.from_dense(np.zeros((2**35, 0), np.float32))", "ValueError", r"^w\.shape .* beyond"),
    "from_dense block cols past int32 (zero-stride view)": (
        "SparseMatrix.from_dense(np.broadcast_to(np.float32(0), (1, 2**33)))", "ValueError", r"^w\.shape: .* block columns"),
    "from_dense torch zero-stride 2**40 rows": ("SparseMatrix.from_dense(torch.zeros(1).expand(2**40, 1))",
                                                "ValueError", r"^w\.shape .* beyond"),
    "from_scipy coo 2**40 rows": ("sparsekit.from_scipy(sp.coo_array((np.zeros(0, np.float32), (np.zeros(0, np.int64), "
                                  "np.zeros(0, np.int64))), shape=(2**40, 4)))", "ValueError", r"^m\.shape .* beyond"),
    "from_scipy coo 2**40 cols, re-blocked": ("sparsekit.from_scipy(sp.coo_array((np.zeros(0, np.float32), "
                                              "(np.zeros(0, np.int64), np.zeros(0, np.int64))), shape=(4, 2**40)), block=(4, 4))",
                                              "ValueError", r"^m\.shape .* beyond"),
    "from_scipy block cols past int32, re-blocked": ("sparsekit.from_scipy(sp.coo_array((np.zeros(0, np.float32), "
                                                     "(np.zeros(0, np.int64), np.zeros(0, np.int64))), shape=(4, 2**34)), "
                                                     "block=(2, 2))", "ValueError", r"^m\.shape: .* block columns"),
    "from_scipy block cols past uint16": ("sparsekit.from_scipy(sp.csr_array((1, 2**17), dtype=np.float32), index_dtype='uint16')",
                                          "ValueError", r"^index_dtype='uint16'"),
    "SparseLinear.from_dense 2**40 in_features (zero-stride weight)": (
        "SparseLinear.from_dense(linear_with(torch.zeros(1).expand(1, 2**40)))", "ValueError", r"^w\.shape .* beyond"),
    "SparseLinear.from_dense block cols past int32": (
        "SparseLinear.from_dense(linear_with(torch.zeros(1).expand(1, 2**33)))", "ValueError", r"block columns"),
}

WORKER = textwrap.dedent(r"""
    import json, resource, sys
    import numpy as np, scipy.sparse as sp, torch
    from torch import nn
    import sparsekit
    from sparsekit import SparseMatrix
    from sparsekit.nn import SparseLinear

    torch.set_num_threads(1)
    sparsekit.set_num_threads(1)

    def linear_with(weight):
        layer = nn.Linear(1, 1, bias=False)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer

    def vm_size():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    cases = json.loads(sys.argv[1])
    limit = vm_size() + (256 << 20)          # every case allocates far less than this
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = {}
    for name, (expr, _, _) in cases.items():
        try:
            eval(expr)
            results[name] = ["no error", ""]
        except BaseException as exc:  # MemoryError included: that is the failure we look for
            results[name] = [type(exc).__name__, str(exc)]
    print(json.dumps(results))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_huge_declared_sizes_fail_clearly_before_allocating():
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(HUGE_CASES)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    import re

    bad = {name: results[name] for name, (_, exc, pattern) in HUGE_CASES.items()
           if results[name][0] != exc or not re.search(pattern, results[name][1])}
    assert not bad, json.dumps(bad, indent=1)


def test_the_address_space_limit_catches_a_large_allocation():
    """The harness can fail: an allocation of 1 GiB under the same limit is a MemoryError."""
    cases = {"np.empty 1 GiB": ("np.ones(1 << 28, np.float32)", "ValueError", "")}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["np.empty 1 GiB"][0] == "MemoryError"


# ------------------------------------------------------------------------------- zero size
ZERO_SHAPES = [(0, 0), (0, 5), (5, 0), (3, 4)]  # (3, 4) all zeros: shape but no stored values


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_zero_size_matrices_round_trip_every_block(block):
    for shape in ZERO_SHAPES:
        w = np.zeros(shape, np.float32)
        m = SparseMatrix.from_dense(w, block=block)
        assert (m.shape, m.nnz, m.n_blocks, m.density) == (shape, 0, 0, 0.0)
        assert len(m.indptr) == -(-shape[0] // block[0]) + 1
        again = SparseMatrix.from_arrays(shape, m.indptr, m.indices, m.values, block=block)
        assert again.shape == shape and again.nnz == 0
        s = m.to_scipy()
        assert s.shape == shape and s.nnz == 0
        for source in (s, sp.coo_array(shape, dtype=np.float32), sp.csc_matrix(shape, dtype=np.float32)):
            assert sparsekit.from_scipy(source, block=block).shape == shape
        np.testing.assert_array_equal(m.to_dense(), w)
        assert torch.equal(m.to_torch(), torch.zeros(shape))
        t = m.to_torch(layout=torch.sparse_csr)
        assert tuple(t.shape) == shape and t.to_dense().abs().sum() == 0


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_zero_size_products_every_block(block):
    gen = torch.Generator().manual_seed(0)
    for rows, cols in ZERO_SHAPES + [(6, 7)]:
        w = torch.randn(rows, cols, generator=gen) * (torch.rand(rows, cols, generator=gen) < 0.3)
        m = SparseMatrix.from_dense(w, block=block)
        bias = torch.randn(rows, generator=gen)
        layer = SparseLinear(m, bias, "relu")
        for lead in [(0,), (2, 0), (0, 3), (), (2,)]:
            x = torch.randn(*lead, cols, generator=gen)
            ref = torch.relu(torch.nn.functional.linear(x, w, bias))
            y = sparsekit.linear(x, m, bias=bias, activation="relu")
            assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5)
            y_np = sparsekit.linear(x.numpy(), m)
            assert y_np.shape == ref.shape
            out = torch.full(ref.shape, 7.0)
            assert sparsekit.linear(x, m, bias=bias, activation="relu", out=out) is out
            assert torch.allclose(out, ref, atol=1e-5)
            with torch.no_grad():
                assert torch.allclose(layer(x), ref, atol=1e-5)
            with torch.inference_mode():  # the custom-op path (as under torch.compile)
                y_op = torch.ops.sparsekit.sparse_linear(x, layer.weight_indptr, layer.weight_indices,
                                                         layer.weight_values, layer.bias, rows, 1)
            assert torch.allclose(y_op, ref, atol=1e-5)
        for n in (0, 1, 3):
            xm = torch.randn(cols, n, generator=gen)
            assert torch.allclose(sparsekit.matmul(m, xm), w @ xm, atol=1e-5)
        assert sparsekit.matmul(m, torch.randn(cols, generator=gen)).shape == (rows,)


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (16, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_zero_size_convolutions(block):
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv1 = nn.Conv1d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()  # no stored values at all
        conv1.weight.mul_(torch.rand(conv1.weight.shape, generator=gen) < 0.3)
    s2 = SparseConv2d.from_dense(conv, block=block)
    s1 = SparseConv1d.from_dense(conv1, block=block)
    assert s2.nnz == 0
    with torch.no_grad():
        for x in (torch.randn(0, 3, 5, 5), torch.randn(2, 3, 5, 5)):
            torch.testing.assert_close(s2(x), conv(x), rtol=1e-5, atol=1e-5)
        for x in (torch.randn(0, 3, 6), torch.randn(3, 6), torch.randn(2, 3, 6)):
            ref = conv1(x)
            torch.testing.assert_close(s1(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", (4, 4), "auto"], ids=str)
def test_convert_save_load_zero_size_layers(fmt, tmp_path):
    def build():
        torch.manual_seed(0)
        with warnings.catch_warnings():  # torch warns that initialising zero-element tensors is a no-op
            warnings.simplefilter("ignore", UserWarning)
            return nn.Sequential(nn.Linear(0, 4), nn.ReLU(), nn.Linear(4, 0), nn.Linear(0, 3), nn.Linear(3, 5),
                                 nn.Conv2d(2, 0, 1)).eval()

    model = build()
    with torch.no_grad():
        model[4].weight.zero_()  # a layer with a shape but no stored values
    out = sparsekit.convert(model, format=fmt, time_budget_s=0.001, batch_sizes=(1,))
    report = out.sparsekit_summary
    assert [r.shape for r in report] == [(4, 0), (0, 4), (3, 0), (5, 3), (0, 2)]
    assert report["5"].format == "dense" and report["5"].reason == "zero channels stay dense"
    if fmt != "auto":
        assert all(isinstance(out[i], SparseLinear) for i in (0, 2, 3, 4))
    front = nn.Sequential(*list(out)[:5])
    ref_front = nn.Sequential(*list(model)[:5])
    with torch.no_grad():
        for x in (torch.randn(2, 0), torch.randn(0, 0), torch.randn(3, 2, 0)):
            torch.testing.assert_close(front(x), ref_front(x))
    path = tmp_path / "zero.safetensors"
    sparsekit.save(out, path)
    loaded = sparsekit.load(path, build())
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in out]
    with torch.no_grad():
        x = torch.randn(4, 0)
        torch.testing.assert_close(nn.Sequential(*list(loaded)[:5])(x), front(x))

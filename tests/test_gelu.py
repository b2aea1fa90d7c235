"""The fused GELU epilogue (a rational erf, vectorised) against torch's exact-erf GELU."""

import numpy as np
import scipy.sparse as sp
import pytest
import torch
import torch.nn.functional as F

import sparsekit

SIMD = sparsekit.cpu_info()["simd_available"]


@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("batch", [1, 37])
def test_gelu_matches_torch_on_a_dense_grid(level, batch):
    # Identity weights make y = gelu(x + bias) exactly, so the epilogue is all that is tested;
    # batch 1 and batch 37 take the batch-1 and the panel epilogues (vector body and tail).
    n = 60_003
    x = torch.linspace(-12.0, 12.0, n)
    x = x[: n - n % batch].reshape(-1, batch).T.contiguous().reshape(batch, -1)
    cols = x.shape[1]
    m = sparsekit.from_scipy(sp.eye_array(cols, format="csr", dtype=np.float32))
    bias = torch.full((cols,), 0.25)
    with sparsekit.use_simd(level):
        y = sparsekit.linear(x, m, bias, activation="gelu")
    exact = F.gelu((x + bias).double())
    err = (y.double() - exact).abs()
    # torch's own float32 GELU is off by up to 9.7e-7 relative to max(1, |gelu|) on this
    # grid (the cancellation in 1 + erf for negative x); ours measured 7.9e-7.
    assert float((err / exact.abs().clamp_min(1.0)).max()) <= 1.5e-6


@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("value, expected", [
    (float("nan"), float("nan")), (float("inf"), float("inf")),
    (-float("inf"), float("nan")),  # 0.5 * -inf * (1 + erf(-inf)) = -inf * 0
    (0.0, 0.0), (1e30, 1e30), (-1e30, 0.0), (3.0, float(F.gelu(torch.tensor(3.0)))),
])
def test_gelu_special_values(level, value, expected):
    # One value per call: a NaN or Inf anywhere in x makes every output of the dense
    # product NaN (0 * Inf), which the kernels reproduce.
    m = sparsekit.SparseMatrix.from_dense(torch.ones(1, 1))
    with sparsekit.use_simd(level):
        y = float(sparsekit.linear(torch.tensor([[value]]), m, activation="gelu")[0, 0])
    if np.isnan(expected):
        assert np.isnan(y)
    else:
        assert y == pytest.approx(expected, rel=1e-6, abs=0.0)

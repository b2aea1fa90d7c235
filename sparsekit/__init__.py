"""sparsekit: prune PyTorch models, store the weights sparse, run them fast on CPUs.

Example:
    >>> import torch, sparsekit
    >>> w = torch.randn(64, 32) * (torch.rand(64, 32) > 0.9)
    >>> m = sparsekit.SparseMatrix.from_dense(w)
    >>> x = torch.randn(5, 32)
    >>> torch.allclose(sparsekit.linear(x, m), x @ w.T, atol=1e-5)
    True
"""

from sparsekit._runtime import cpu_info, get_num_threads, set_num_threads, use_simd
from sparsekit.formats import SparseMatrix, from_scipy
from sparsekit.kernels import linear, matmul

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SparseMatrix",
    "cpu_info",
    "from_scipy",
    "get_num_threads",
    "linear",
    "matmul",
    "set_num_threads",
    "use_simd",
]

"""sparsekit: prune PyTorch models, store the weights sparse, run them fast on CPUs.

Example:
    >>> import torch, sparsekit
    >>> w = torch.randn(64, 32) * (torch.rand(64, 32) > 0.9)
    >>> m = sparsekit.SparseMatrix.from_dense(w)
    >>> x = torch.randn(5, 32)
    >>> torch.allclose(sparsekit.linear(x, m), x @ w.T, atol=1e-5)
    True
"""

from sparsekit._runtime import cpu_info, get_num_threads, set_num_threads, threads, use_simd
from sparsekit.formats import SparseMatrix, from_scipy
from sparsekit.kernels import linear, matmul

from sparsekit import nn  # noqa: E402  (after the kernels it wraps)
from sparsekit.convert import ConversionReport, convert
from sparsekit.io import load, save
# `sparsekit.prune` stays the subpackage; it is callable as the one-shot prune().
from sparsekit.prune import (
    L1,
    L2,
    ConstantSparsity,
    Criterion,
    ElasticNet,
    GroupLasso,
    PolynomialDecay,
    Pruner,
    finetune,
    iterative_prune,
    make_permanent,
    shrink,
    sparsity_report,
)
from sparsekit import distill  # the subpackage; callable: sparsekit.distill(...) is distill.distill(...)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # environment
    "cpu_info",
    "get_num_threads",
    "set_num_threads",
    "threads",
    "use_simd",
    # formats and kernels
    "SparseMatrix",
    "from_scipy",
    "linear",
    "matmul",
    # pruning and fine-tuning
    "prune",
    "Pruner",
    "ConstantSparsity",
    "PolynomialDecay",
    "Criterion",
    "sparsity_report",
    "make_permanent",
    "finetune",
    "iterative_prune",
    "shrink",
    "L1",
    "L2",
    "ElasticNet",
    "GroupLasso",
    "distill",
    # conversion and inference
    "nn",
    "convert",
    "ConversionReport",
    "save",
    "load",
]

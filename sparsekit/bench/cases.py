"""The benchmark grid: cases, their weights, and the contenders timed at each.

A :class:`Case` is one grid point (weight shape, batch, sparsity). Its weights are
made reproducibly (:func:`dense_weight`, :func:`sparse_weight`) and
:func:`contenders` returns, for one case, a callable per contender computing
``x @ w.T`` together with a correctness check against a float64 reference. The
report (``sparsekit bench``) and the pytest-benchmark suite in ``benchmarks/`` both
time these same contenders.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch

import sparsekit
from sparsekit.formats import SparseMatrix

# Rows of the small layer whose call, after the caches were evicted, warms a contender's
# code (interpreter, library, dispatch) without bringing the measured layer's weights back.
TWIN_ROWS = 64

# sparsekit's float32 formats on the grid, by name: the block shape (rows, columns) of each.
FORMATS: Dict[str, Tuple[int, int]] = {"csr": (1, 1), "4x1": (4, 1), "1x4": (1, 4), "8x1": (8, 1)}
# Quantized formats (opt-in: ``--formats csr,csr-int8,...``): block, stored values, and
# whether activations are quantized on the fly (dynamic int8).
QUANTIZED_FORMATS: Dict[str, Tuple[Tuple[int, int], str, bool]] = {
    "csr-int8": ((1, 1), "int8", False), "4x1-int8": ((4, 1), "int8", False),
    "8x1-int8": ((8, 1), "int8", False), "csr-f16": ((1, 1), "float16", False),
    "csr-bf16": ((1, 1), "bfloat16", False), "1x4-dyn": ((1, 4), "int8", True),
    "4x4-dyn": ((4, 4), "int8", True),
}
ALL_FORMATS = tuple(FORMATS) + tuple(QUANTIZED_FORMATS)
# What a user would run instead of sparsekit, timed beside it.
BASELINES = ("torch-dense", "torch-csr", "scipy-csr")
# Timed as well when a quantized format is on the grid: torch's dense dynamic int8 Linear
# (``torch.ao.quantization.quantize_dynamic``, per-channel weights, fbgemm).
QUANTIZED_BASELINES = ("torch-int8",)

# The whole grid (``--full``, tens of minutes) and the small one (``--quick``, the default).

FULL_SHAPES = ((768, 768), (3072, 768), (768, 3072), (4096, 4096), (11008, 4096))
FULL_BATCHES = (1, 8, 32, 128, 512)
FULL_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)

QUICK_SHAPES = ((768, 768), (4096, 4096))
QUICK_BATCHES = (1, 128)
QUICK_SPARSITIES = (0.5, 0.7, 0.9, 0.95)


@dataclasses.dataclass(frozen=True)
class Case:
    """One grid point: weight shape (out_features, in_features), batch, sparsity.

    Example:
        >>> from sparsekit.bench import Case
        >>> Case((768, 3072), 32, 0.9).id
        '768x3072-b32-s0.9'
    """

    shape: Tuple[int, int]
    batch: int
    sparsity: float

    @property
    def id(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}-b{self.batch}-s{self.sparsity:g}"


def grid(shapes: Iterable[Tuple[int, int]], batches: Iterable[int],
         sparsities: Iterable[float]) -> List[Case]:
    """Every (shape, batch, sparsity) combination, in that nesting order.

    Example:
        >>> from sparsekit.bench import grid
        >>> [c.id for c in grid([(8, 4)], [1, 2], [0.5])]
        ['8x4-b1-s0.5', '8x4-b2-s0.5']
    """
    return [Case(tuple(s), b, p) for s in shapes for b in batches for p in sparsities]


def format_spec(fmt: str) -> Tuple[Tuple[int, int], str, bool]:
    """``(block, values, dynamic)`` of a format name from :data:`FORMATS` or
    :data:`QUANTIZED_FORMATS`; ``KeyError`` for an unknown name.

    Example:
        >>> from sparsekit.bench import format_spec
        >>> format_spec("4x1"), format_spec("1x4-dyn")
        (((4, 1), 'float32', False), ((1, 4), 'int8', True))
    """
    if fmt in FORMATS:
        return FORMATS[fmt], "float32", False
    return QUANTIZED_FORMATS[fmt]


def baselines_for(formats: Sequence[str]) -> Tuple[str, ...]:
    """The baselines a grid with these formats times: :data:`BASELINES`, plus
    :data:`QUANTIZED_BASELINES` when a quantized format is among them.

    Example:
        >>> from sparsekit.bench import baselines_for
        >>> baselines_for(["csr", "csr-int8"])[-1]
        'torch-int8'
    """
    quantized = any(f in QUANTIZED_FORMATS for f in formats)
    return BASELINES + (QUANTIZED_BASELINES if quantized else ())


# ----------------------------------------------------------------------- weights
@functools.lru_cache(maxsize=6)
def dense_weight(shape: Tuple[int, int], sparsity: float, block: Tuple[int, int] = (1, 1),
                 seed: int = 0) -> np.ndarray:
    """A float32 weight whose zeros form whole ``block`` blocks, ``sparsity`` of them.

    Read-only; the same arguments give the same array.

    Example:
        >>> from sparsekit.bench import dense_weight
        >>> w = dense_weight((8, 8), 0.5, block=(4, 1))
        >>> w.shape, w.dtype.name, w.flags.writeable
        ((8, 8), 'float32', False)
    """
    rows, cols = shape
    r, c = block
    rng = np.random.default_rng(seed + 1000 * r + c)
    nbr, nbc = -(-rows // r), -(-cols // c)
    keep = rng.random((nbr, nbc)) >= sparsity
    mask = np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[:rows, :cols]
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= mask
    w.flags.writeable = False
    return w


@functools.lru_cache(maxsize=8)
def sparse_weight(shape: Tuple[int, int], sparsity: float, fmt: str = "csr") -> SparseMatrix:
    """The :func:`dense_weight` with the format's blocks, compressed with its values.

    Example:
        >>> from sparsekit.bench import sparse_weight
        >>> sparse_weight((8, 8), 0.5, "4x1").block
        (4, 1)
    """
    block, values, _ = format_spec(fmt)
    extra = {} if values == "float32" else {"values": values}
    return SparseMatrix.from_dense(dense_weight(shape, sparsity, block), block=block, **extra)


def kernel_bytes(m: SparseMatrix, batch: int) -> int:
    """Bytes a product with ``m`` must move at least: the matrix, x once, y once.

    Example:
        >>> from sparsekit.bench import kernel_bytes, sparse_weight
        >>> m = sparse_weight((8, 8), 0.5)
        >>> kernel_bytes(m, 2) == m.nbytes + 4 * 2 * (8 + 8)
        True
    """
    rows, cols = m.shape
    return m.nbytes + 4 * batch * (rows + cols)


# -------------------------------------------------------------------- contenders
@dataclasses.dataclass
class Contender:
    """One way of computing ``x @ w.T`` for a grid point: the call to time, its check,
    facts about it for the report (format, bytes, flops), and what a cold measurement
    (:func:`sparsekit.bench.cold_setup_for`) brings back into cache after evicting it:
    ``activations`` (the arrays the call reads and writes besides the weights) and
    ``warm_code`` (the same call on a small layer of :data:`TWIN_ROWS` rows, which runs
    the same code without touching this layer's weights; ``None`` for a layer that small)."""

    name: str
    run: Callable[[], object]
    check: Callable[[], None]  # raises AssertionError when the result is wrong
    info: dict
    activations: Tuple[object, ...] = ()
    warm_code: Optional[Callable[[], object]] = None


def _assert_close(got, ref: np.ndarray, name: str, tol: float = 1e-4) -> None:
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= tol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def contenders(case: Case, formats: Sequence[str] = tuple(FORMATS), baselines: Sequence[str] = BASELINES,
               threads: Optional[int] = None, seed: int = 0) -> Dict[str, Contender]:
    """Callables computing ``x @ w.T`` for this grid point, each with a correctness check.

    Names: ``sparsekit-<fmt>``, ``torch-dense`` (F.linear on the dense masked weight),
    ``torch-csr`` (torch.sparse.mm on ``weight.to_sparse_csr()``), ``scipy-csr``,
    ``torch-int8`` (torch's dynamic int8 Linear on the dense masked weight).
    The baselines use the unstructured weight; each sparsekit format uses its own
    weight of the same sparsity (a block that holds any nonzero is kept whole).
    Quantized contenders are checked against the float64 product of their own
    dequantized weight (int8 weights: to 1e-4 of the largest output, like float32;
    dynamic int8, whose activations are rounded too: to 2e-2).

    Example:
        >>> from sparsekit.bench import Case, contenders
        >>> cs = contenders(Case((16, 8), 2, 0.5), formats=("csr",))
        >>> sorted(cs)
        ['scipy-csr', 'sparsekit-csr', 'torch-csr', 'torch-dense']
        >>> cs["sparsekit-csr"].check()  # raises AssertionError when the result is wrong
    """
    threads = threads or sparsekit.get_num_threads()
    rng = np.random.default_rng(seed + 7)
    x_np = rng.standard_normal((case.batch, case.shape[1]), dtype=np.float32)
    x = torch.from_numpy(x_np)

    def reference(w: np.ndarray) -> np.ndarray:
        return x_np.astype(np.float64) @ w.T.astype(np.float64)

    out = {f"sparsekit-{fmt}": _sparsekit(case, fmt, x, reference, threads) for fmt in formats}
    w = dense_weight(case.shape, case.sparsity)
    builders = {"torch-dense": _torch_dense, "torch-csr": _torch_csr, "scipy-csr": _scipy_csr,
                "torch-int8": _torch_int8}
    for name in BASELINES + QUANTIZED_BASELINES:
        if name in baselines:
            out[name] = builders[name](case, w, x_np, reference)
    if case.shape[0] > TWIN_ROWS:
        twin_case = Case((TWIN_ROWS, case.shape[1]), case.batch, case.sparsity)
        twins = functools.lru_cache(maxsize=None)(  # built at the first cold call only
            lambda: contenders(twin_case, formats, baselines, threads, seed))
        for name, c in out.items():
            c.warm_code = functools.partial(lambda n: twins()[n].run(), name)
    return out


_Reference = Callable[[np.ndarray], np.ndarray]  # x @ w.T in float64, for a weight w


def _sparsekit(case: Case, fmt: str, x: torch.Tensor, reference: _Reference, threads: int) -> Contender:
    m = sparse_weight(case.shape, case.sparsity, fmt)
    block, values, dynamic = format_spec(fmt)
    # The product's own weight: the dequantized one for quantized values.
    w = dense_weight(case.shape, case.sparsity, block) if values == "float32" else m.to_dense()
    y = torch.empty(case.batch, case.shape[0])
    name = f"sparsekit-{fmt}"
    extra = {"dynamic": True} if dynamic else {}

    def run():
        return sparsekit.linear(x, m, out=y, threads=threads, **extra)

    tol = 2e-2 if dynamic else 1e-4
    return Contender(name, run, lambda: _assert_close(run(), reference(w), name, tol), {
        "format": fmt, "block": list(block), "values": values, "dynamic": dynamic, "nnz": m.nnz,
        "nbytes": m.nbytes, "bytes_moved": kernel_bytes(m, case.batch), "flops": 2 * m.nnz * case.batch,
        "index_dtype": m.index_dtype}, (x, y))


def _torch_dense(case: Case, w: np.ndarray, x_np: np.ndarray, reference: _Reference) -> Contender:
    rows, cols = case.shape
    x, wt = torch.from_numpy(x_np), torch.from_numpy(w.copy())

    def run():
        return torch.nn.functional.linear(x, wt)

    return Contender("torch-dense", run, lambda: _assert_close(run(), reference(w), "torch-dense"),
                     {"format": "dense", "nbytes": w.nbytes, "bytes_moved": w.nbytes + 4 * case.batch * (rows + cols),
                      "flops": 2 * rows * cols * case.batch}, (x,))


def _torch_int8(case: Case, w: np.ndarray, x_np: np.ndarray, reference: _Reference) -> Contender:
    from sparsekit.value_choice import torch_dynamic_linear  # the same contender convert() times

    rows, cols = case.shape
    x = torch.from_numpy(x_np)
    layer = torch_dynamic_linear(torch.from_numpy(w.copy()), None, None)

    def run():
        with torch.inference_mode():
            return layer(x)

    return Contender("torch-int8", run, lambda: _assert_close(run(), reference(w), "torch-int8", 2e-2),
                     {"format": "torch-int8", "nbytes": rows * cols + 4 * rows,
                      "bytes_moved": rows * cols + 4 * rows + 4 * case.batch * (rows + cols),
                      "flops": 2 * rows * cols * case.batch}, (x,))


def _torch_csr(case: Case, w: np.ndarray, x_np: np.ndarray, reference: _Reference) -> Contender:
    nnz = int(np.count_nonzero(w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        wc = torch.from_numpy(w.copy()).to_sparse_csr()
    xt = torch.from_numpy(x_np).t()

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse.mm(wc, xt)

    return Contender("torch-csr", run, lambda: _assert_close(run().t(), reference(w), "torch-csr"),
                     {"format": "torch-csr", "nnz": nnz, "nbytes": nnz * 12 + (case.shape[0] + 1) * 8,
                      "flops": 2 * nnz * case.batch}, (xt,))


def _scipy_csr(case: Case, w: np.ndarray, x_np: np.ndarray, reference: _Reference) -> Contender:
    nnz = int(np.count_nonzero(w))
    ws = sp.csr_array(w)
    xs = x_np[0] if case.batch == 1 else np.ascontiguousarray(x_np.T)

    def run():
        return ws @ xs

    def check():
        got = run()
        _assert_close(got if case.batch == 1 else got.T, reference(w)[0] if case.batch == 1 else reference(w),
                      "scipy-csr")

    return Contender("scipy-csr", run, check, {"format": "scipy-csr", "nnz": nnz,
                                                "nbytes": int(ws.data.nbytes + ws.indices.nbytes + ws.indptr.nbytes),
                                                "flops": 2 * nnz * case.batch}, (xs,))

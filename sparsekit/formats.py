"""Compressed sparse weights: CSR and block CSR (BSR) in one immutable class."""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from sparsekit._runtime import _core

BLOCK_SIDES = (1, 2, 4, 8, 16)
INDEX_DTYPES = ("auto", "uint16", "int32")
_UINT16_LIMIT = 1 << 16
_INT32_LIMIT = (1 << 31) - 1
_MAX_SIDE = _INT32_LIMIT * BLOCK_SIDES[-1]  # rows or columns: int32 block indices of 16-wide blocks

ArrayLike = Union[np.ndarray, torch.Tensor]


def _check_block(block: Any) -> Tuple[int, int]:
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in block)
    ):
        raise TypeError(f"block must be a pair of ints (r, c), got {block!r}")
    r, c = int(block[0]), int(block[1])
    if r not in BLOCK_SIDES or c not in BLOCK_SIDES:
        raise ValueError(f"block sides must each be one of {BLOCK_SIDES}, got {(r, c)}")
    return r, c


def _index_dtype_for(n_block_cols: int, index_dtype: str, shape_name: str = "shape") -> np.dtype:
    if index_dtype not in INDEX_DTYPES:
        raise ValueError(f"index_dtype must be one of {INDEX_DTYPES}, got {index_dtype!r}")
    if index_dtype == "uint16" and n_block_cols > _UINT16_LIMIT:
        raise ValueError(
            f"index_dtype='uint16' holds at most {_UINT16_LIMIT} block columns, this matrix has "
            f"{n_block_cols}; use index_dtype='int32' or 'auto'"
        )
    if n_block_cols > _INT32_LIMIT:
        raise ValueError(f"{shape_name}: {n_block_cols} block columns exceed the int32 index range "
                         "(use a wider block)")
    if index_dtype == "int32" or (index_dtype == "auto" and n_block_cols > _UINT16_LIMIT):
        return np.dtype(np.int32)
    return np.dtype(np.uint16)


def _as_numpy_2d(w: ArrayLike, name: str) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        if w.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {w.layout}; "
                            "call .to_dense() first or use sparsekit.from_scipy")
        if w.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {w.device}")
        if not w.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating point tensor, got {w.dtype}")
        arr = w.detach().to(torch.float32).numpy()
    elif isinstance(w, np.ndarray):
        if w.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {w.dtype}")
        arr = w.astype(np.float32, copy=False)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(w).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {tuple(arr.shape)}")
    return arr


# Dense elements SparseMatrix.from_dense looks at in one go: bounds its working memory
# (masks, nonzero positions, a padded edge) to a few MiB whatever the matrix size.
_CHUNK_ELEMENTS = 1 << 18


def block_row_chunks(arr: np.ndarray, r: int, c: int):
    """Yields ``(first block row, blocks)`` over ``arr`` a few block rows at a time.

    ``blocks`` is shaped ``(block rows, block cols, r, c)``: a view of ``arr`` when the
    slice allows it, else a zero-padded copy of just that slice (edges the block does not
    divide, non-contiguous input). Used to build block-CSR without a padded copy of
    the whole matrix.

    Example:
        >>> import numpy as np
        >>> from sparsekit.formats import block_row_chunks
        >>> [(b0, blocks.shape) for b0, blocks in block_row_chunks(np.ones((5, 4), np.float32), 2, 2)]
        [(0, (3, 2, 2, 2))]
    """
    rows, cols = arr.shape
    nbr, nbc = -(-rows // r), -(-cols // c)
    step = max(1, _CHUNK_ELEMENTS // max(1, nbc * r * c))
    for b0 in range(0, nbr, step):
        b1 = min(nbr, b0 + step)
        part = arr[b0 * r:b1 * r]
        if part.shape != ((b1 - b0) * r, nbc * c):
            padded = np.zeros(((b1 - b0) * r, nbc * c), dtype=np.float32)
            padded[:part.shape[0], :cols] = part
            part = padded
        yield b0, part.reshape(b1 - b0, r, nbc, c).transpose(0, 2, 1, 3)


def _check_shape(shape: Any, name: str = "shape") -> Tuple[int, int]:
    """``(rows, cols)`` as ints, refused (naming ``name``) when negative or beyond the range
    sparsekit indexes (int32 block indices times the largest block side), before anything
    sized by them is allocated."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
    ):
        raise TypeError(f"{name} must be a pair of ints (rows, cols), got {shape!r}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 0 or cols < 0:
        raise ValueError(f"{name} must be non-negative, got {(rows, cols)}")
    if rows > _MAX_SIDE or cols > _MAX_SIDE:
        raise ValueError(f"{name} {(rows, cols)} is beyond what sparsekit indexes (at most {_MAX_SIDE} "
                         "rows and columns)")
    return rows, cols


class SparseMatrix:
    """An immutable float32 matrix stored as CSR or block CSR for sparsekit's kernels.

    Build one with :meth:`from_dense`, :meth:`from_arrays` or :func:`sparsekit.from_scipy`;
    multiply with :func:`sparsekit.linear` or :func:`sparsekit.matmul`.

    Storage: ``indptr`` (int64, one entry per block row plus one), ``indices``
    (block column of each stored block: uint16 when there are at most 65536 block
    columns, else int32) and ``values`` (float32, ``(n_blocks, r, c)``, each block
    row-major). A block that holds any nonzero is kept whole; edge blocks that stick
    out of ``shape`` are padded with zeros internally.

    Example:
        >>> import torch, sparsekit
        >>> w = torch.tensor([[0., 2., 0.], [1., 0., 0.]])
        >>> m = sparsekit.SparseMatrix.from_dense(w)
        >>> m.shape, m.nnz, m.index_dtype
        ((2, 3), 2, 'uint16')
        >>> m.to_dense()
        array([[0., 2., 0.],
               [1., 0., 0.]], dtype=float32)
    """

    __slots__ = ("_shape", "_block", "_indptr", "_indices", "_values", "_nnz", "_kernel", "__weakref__")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "use SparseMatrix.from_dense, SparseMatrix.from_arrays or sparsekit.from_scipy "
            "to build a SparseMatrix"
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def _trusted(cls, shape: Tuple[int, int], block: Tuple[int, int], indptr: np.ndarray,
                 indices: np.ndarray, values: np.ndarray) -> "SparseMatrix":
        """Wraps arrays that are already valid (internal)."""
        self = object.__new__(cls)
        for a in (indptr, indices, values):
            a.flags.writeable = False
        self._shape = shape
        self._block = block
        self._indptr = indptr
        self._indices = indices
        self._values = values
        self._nnz = self._count_logical(shape, block, indptr, indices)
        # The compiled kernel object over these (read-only) arrays, built once.
        self._kernel = _core.Weight(shape[0], shape[1], block[0], block[1], indptr, indices,
                                    values.reshape(-1), None, 0)
        return self

    @staticmethod
    def _count_logical(shape, block, indptr, indices) -> int:
        rows, cols = shape
        r, c = block
        n_blocks = int(indptr[-1]) if len(indptr) else 0
        if rows % r == 0 and cols % c == 0:
            return n_blocks * r * c
        # Edge blocks hold padding outside the logical shape; count only the inside.
        block_rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        height = np.minimum(r, rows - block_rows * r)
        width = np.minimum(c, cols - indices.astype(np.int64) * c)
        return int(np.sum(height * width))

    @classmethod
    def from_dense(cls, w: ArrayLike, block: Tuple[int, int] = (1, 1),
                   index_dtype: str = "auto") -> "SparseMatrix":
        """Compress a dense 2-D float matrix, dropping zeros (whole zero blocks for ``block``).

        Args:
            w: torch tensor or numpy array of shape (out_features, in_features); cast to float32.
            block: ``(r, c)`` with sides in {1, 2, 4, 8, 16}; ``(1, 1)`` is plain CSR.
            index_dtype: "auto" (uint16 when the block columns fit), "uint16" or "int32".

        Example:
            >>> import numpy as np, sparsekit
            >>> w = np.zeros((8, 8), np.float32); w[0, 0] = 1.0
            >>> sparsekit.SparseMatrix.from_dense(w, block=(4, 1)).nnz
            4
        """
        r, c = _check_block(block)
        arr = _as_numpy_2d(w, "w")
        rows, cols = _check_shape(arr.shape, "w.shape")  # before any allocation (w may be a broadcast view)
        nbr, nbc = -(-rows // r), -(-cols // c)
        idx_dtype = _index_dtype_for(nbc, index_dtype, "w.shape")
        # Two passes over a few block rows at a time (count, then fill arrays of the final
        # size): the working memory stays bounded by _CHUNK_ELEMENTS instead of growing with
        # the matrix (no padded copy, no whole-matrix masks or index arrays).
        indptr = np.zeros(nbr + 1, dtype=np.int64)
        for b0, blocks in block_row_chunks(arr, r, c):
            keep = (blocks != 0).any(axis=(2, 3))  # NaN != 0, so NaN weights are kept
            indptr[1 + b0:1 + b0 + keep.shape[0]] = keep.sum(axis=1, dtype=np.int64)
        np.cumsum(indptr, out=indptr)
        n_blocks = int(indptr[-1])
        values = np.empty((n_blocks, r, c), dtype=np.float32)
        indices = np.empty(n_blocks, dtype=idx_dtype)
        for b0, blocks in block_row_chunks(arr, r, c):
            keep = (blocks != 0).any(axis=(2, 3))
            block_row, block_col = np.nonzero(keep)
            start = int(indptr[b0])
            stop = start + len(block_row)
            if stop != int(indptr[b0 + keep.shape[0]]):  # w was written to between the passes
                raise ValueError("w changed while it was being compressed")
            values[start:stop] = blocks[block_row, block_col]
            indices[start:stop] = block_col
        return cls._trusted((rows, cols), (r, c), indptr, indices, values)

    @classmethod
    def from_arrays(cls, shape: Tuple[int, int], indptr: ArrayLike, indices: ArrayLike,
                    values: ArrayLike, block: Tuple[int, int] = (1, 1),
                    index_dtype: str = "auto") -> "SparseMatrix":
        # One long function on purpose: it is the single gate for untrusted arrays (files,
        # state dicts), and every check reads best next to the conversion it guards.
        """Build from raw (block) CSR arrays, validating them fully (safe on untrusted input).

        Args:
            shape: logical ``(rows, cols)``.
            indptr: ``ceil(rows / r) + 1`` non-decreasing integers starting at 0.
            indices: block column of each stored block, in range; unsorted rows are sorted,
                duplicates are an error.
            values: ``n_blocks * r * c`` numbers, flat or shaped ``(n_blocks, r, c)``.
            block: ``(r, c)``; ``(1, 1)`` is CSR.
            index_dtype: "auto", "uint16" or "int32" for the stored indices.

        Example:
            >>> import sparsekit
            >>> m = sparsekit.SparseMatrix.from_arrays((2, 3), [0, 1, 2], [2, 0], [5.0, 6.0])
            >>> m.to_dense().tolist()
            [[0.0, 0.0, 5.0], [6.0, 0.0, 0.0]]
        """
        rows, cols = _check_shape(shape)
        r, c = _check_block(block)
        nbr, nbc = -(-rows // r), -(-cols // c)
        idx_dtype = _index_dtype_for(nbc, index_dtype)

        def as_array(a: Any, name: str) -> np.ndarray:
            if isinstance(a, torch.Tensor):
                a = a.detach().cpu().numpy()
            try:
                out = np.asarray(a)
            except Exception as exc:  # noqa: BLE001 - any conversion failure is bad input
                raise TypeError(f"{name} must be array-like: {exc}") from None
            if out.dtype == object:
                raise TypeError(f"{name} must be a numeric array, got dtype object")
            return out

        indptr_a = as_array(indptr, "indptr")
        indices_a = as_array(indices, "indices")
        values_a = as_array(values, "values")
        if indptr_a.ndim != 1:
            raise ValueError(f"indptr must be 1-D, got shape {indptr_a.shape}")
        if indices_a.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices_a.shape}")
        for name, a in (("indptr", indptr_a), ("indices", indices_a)):
            if a.size and a.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
        if values_a.size and values_a.dtype.kind not in "fiu":
            raise TypeError(f"values must hold real numbers, got dtype {values_a.dtype}")
        if len(indptr_a) != nbr + 1:
            raise ValueError(
                f"indptr must have ceil(rows / {r}) + 1 = {nbr + 1} entries for shape {(rows, cols)}, "
                f"got {len(indptr_a)}"
            )
        if indptr_a.dtype.kind == "u" and indptr_a.size and int(indptr_a.max()) > np.iinfo(np.int64).max:
            raise ValueError("indptr values exceed the int64 range")
        indptr64 = indptr_a.astype(np.int64)
        n_blocks = len(indices_a)
        if indptr64[0] != 0:
            raise ValueError(f"indptr[0] must be 0, got {indptr64[0]}")
        if np.any(np.diff(indptr64) < 0):
            raise ValueError("indptr must be non-decreasing")
        if indptr64[-1] != n_blocks:
            raise ValueError(f"indptr[-1] = {indptr64[-1]} must equal len(indices) = {n_blocks}")
        if values_a.size != n_blocks * r * c:
            raise ValueError(
                f"values must hold len(indices) * {r} * {c} = {n_blocks * r * c} numbers, got {values_a.size}"
            )
        if values_a.ndim not in (1, 3) or (values_a.ndim == 3 and values_a.shape[1:] != (r, c)):
            raise ValueError(f"values must be flat or shaped (n_blocks, {r}, {c}), got {values_a.shape}")
        if n_blocks:
            lo, hi = int(indices_a.min()), int(indices_a.max())
            if lo < 0 or hi >= nbc:
                bad = lo if lo < 0 else hi
                raise ValueError(f"indices must lie in [0, {nbc}) (block columns), found {bad}")
        idx = indices_a.astype(idx_dtype)
        vals = values_a.astype(np.float32).reshape(n_blocks, r, c)
        # Sort each block row by column (stable), then reject duplicates.
        row_of = np.repeat(np.arange(nbr, dtype=np.int64), np.diff(indptr64))
        order = np.lexsort((idx.astype(np.int64), row_of))
        if not np.array_equal(order, np.arange(n_blocks)):
            idx = idx[order]
            vals = vals[order]
        if n_blocks > 1:
            same_row = row_of[1:] == row_of[:-1]
            if np.any(same_row & (idx[1:] == idx[:-1])):
                raise ValueError("indices hold a duplicate column within a row")
        idx = np.ascontiguousarray(idx)
        vals = np.ascontiguousarray(vals)
        _core.validate_bsr(rows, cols, r, c, indptr64, idx, vals.reshape(-1))  # defence in depth
        return cls._trusted((rows, cols), (r, c), indptr64, idx, vals)

    # --------------------------------------------------------------- properties
    @property
    def shape(self) -> Tuple[int, int]:
        """Logical ``(rows, cols)``."""
        return self._shape

    @property
    def block(self) -> Tuple[int, int]:
        """Block shape ``(r, c)``; ``(1, 1)`` for CSR."""
        return self._block

    @property
    def nnz(self) -> int:
        """Stored values inside the logical shape (zeros inside kept blocks included)."""
        return self._nnz

    @property
    def n_blocks(self) -> int:
        """Number of stored blocks."""
        return int(self._indptr[-1])

    @property
    def density(self) -> float:
        """``nnz / (rows * cols)`` (0.0 for an empty shape)."""
        size = self._shape[0] * self._shape[1]
        return self._nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers: row pointers, indices and values."""
        return int(self._indptr.nbytes + self._indices.nbytes + self._values.nbytes)

    @property
    def index_dtype(self) -> str:
        """``"uint16"`` or ``"int32"``."""
        return str(self._indices.dtype)

    @property
    def indptr(self) -> np.ndarray:
        """Block row pointers (read-only int64 view)."""
        return self._indptr

    @property
    def indices(self) -> np.ndarray:
        """Block column indices (read-only view)."""
        return self._indices

    @property
    def values(self) -> np.ndarray:
        """Stored blocks, shape ``(n_blocks, r, c)`` (read-only float32 view)."""
        return self._values

    # ------------------------------------------------------------------- export
    def _padded_shape(self) -> Tuple[int, int]:
        r, c = self._block
        return (-(-self._shape[0] // r) * r, -(-self._shape[1] // c) * c)

    def to_dense(self) -> np.ndarray:
        """The matrix as a dense float32 numpy array.

        Example:
            >>> import numpy as np, sparsekit
            >>> w = np.eye(3, dtype=np.float32)
            >>> bool((sparsekit.SparseMatrix.from_dense(w, block=(2, 2)).to_dense() == w).all())
            True
        """
        rows, cols = self._shape
        r, c = self._block
        prow, pcol = self._padded_shape()
        nbr = prow // r
        out = np.zeros((nbr, pcol // c, r, c), dtype=np.float32)
        block_row = np.repeat(np.arange(nbr, dtype=np.int64), np.diff(self._indptr))
        out[block_row, self._indices.astype(np.int64)] = self._values
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3).reshape(prow, pcol)[:rows, :cols])

    def to_scipy(self) -> sp.sparray:
        """A scipy sparse array: ``csr_array`` for (1, 1) blocks, else ``bsr_array``.

        Shapes the block does not divide come back as ``csr_array`` (scipy's BSR needs
        divisible shapes).

        Example:
            >>> import numpy as np, sparsekit
            >>> m = sparsekit.SparseMatrix.from_dense(np.eye(4, dtype=np.float32), block=(2, 2))
            >>> m.to_scipy().format, m.to_scipy().blocksize
            ('bsr', (2, 2))
        """
        rows, cols = self._shape
        indices = self._indices.astype(np.int32)
        indptr = self._indptr
        if self._block == (1, 1):
            return sp.csr_array((self._values.reshape(-1).copy(), indices, indptr.copy()),
                                shape=(rows, cols))
        bsr = sp.bsr_array((self._values.copy(), indices, indptr.copy()),
                           shape=self._padded_shape(), blocksize=self._block)
        if self._padded_shape() == (rows, cols):
            return bsr
        return sp.csr_array(bsr.tocsr()[:rows, :cols])

    def to_torch(self, layout: torch.layout = torch.strided) -> torch.Tensor:
        """The matrix as a torch tensor: dense (default) or ``layout=torch.sparse_csr``.

        Example:
            >>> import torch, sparsekit
            >>> m = sparsekit.SparseMatrix.from_dense(torch.eye(2))
            >>> m.to_torch(layout=torch.sparse_csr).layout
            torch.sparse_csr
        """
        if layout == torch.strided:
            return torch.from_numpy(self.to_dense())
        if layout == torch.sparse_csr:
            csr = self.to_scipy()
            csr = sp.csr_array(csr) if csr.format != "csr" else csr
            with warnings.catch_warnings():
                # torch labels its CSR tensors "beta"; that is not the caller's concern.
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                return torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)),
                    torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(np.ascontiguousarray(csr.data, dtype=np.float32)),
                    size=self._shape,
                    check_invariants=False,  # built from validated arrays
                )
        raise ValueError(f"layout must be torch.strided or torch.sparse_csr, got {layout}")

    # --------------------------------------------------------------- protocols
    def __getstate__(self) -> dict:
        return {"shape": self._shape, "block": self._block, "indptr": self._indptr,
                "indices": self._indices, "values": self._values}

    def __setstate__(self, state: dict) -> None:
        other = SparseMatrix.from_arrays(state["shape"], state["indptr"], state["indices"],
                                         state["values"], block=state["block"],
                                         index_dtype=str(np.asarray(state["indices"]).dtype))
        for name in ("_shape", "_block", "_indptr", "_indices", "_values", "_nnz", "_kernel"):
            object.__setattr__(self, name, getattr(other, name))

    def __reduce__(self):
        return (_rebuild, (self.__getstate__(),))

    def __repr__(self) -> str:
        return (f"SparseMatrix(shape={self._shape}, block={self._block}, nnz={self._nnz}, "
                f"density={self.density:.4f}, index_dtype={self.index_dtype}, nbytes={self.nbytes})")


def _rebuild(state: dict) -> SparseMatrix:
    m = object.__new__(SparseMatrix)
    m.__setstate__(state)
    return m


def from_scipy(m: Any, block: Tuple[int, int] | None = None, index_dtype: str = "auto") -> SparseMatrix:
    """Convert a scipy sparse matrix or array (CSR, CSC, COO, BSR, ...) to a :class:`SparseMatrix`.

    Args:
        m: any ``scipy.sparse`` matrix or array.
        block: ``None`` keeps a BSR input's block size (when it is a valid one) and uses CSR
            otherwise; ``(r, c)`` re-blocks.
        index_dtype: "auto", "uint16" or "int32".

    Example:
        >>> import scipy.sparse as sp, sparsekit
        >>> m = sparsekit.from_scipy(sp.random(6, 5, density=0.5, format="coo", random_state=0))
        >>> m.shape
        (6, 5)
    """
    if not sp.issparse(m):
        raise TypeError(f"m must be a scipy.sparse matrix or array, got {type(m).__name__}")
    if m.dtype.kind not in "fiu":
        raise TypeError(f"m must hold real numbers, got dtype {m.dtype}")
    if m.ndim != 2:
        raise ValueError(f"m must be 2-D, got {m.ndim}-D")
    # Checked before scipy converts anything: its CSR/BSR conversions allocate arrays sized by
    # the shape (rows + 1 row pointers, a mask of cols / c block columns), not by the nonzeros.
    rows, cols = _check_shape(m.shape, "m.shape")
    native_bsr = block is None and m.format == "bsr" and all(s in BLOCK_SIDES for s in m.blocksize)
    if block is not None:
        r, c = _check_block(block)
    elif native_bsr:
        r, c = (int(s) for s in m.blocksize)
    else:
        r, c = 1, 1
    _index_dtype_for(-(-cols // c), index_dtype, "m.shape")
    if native_bsr:
        bsr = m.copy()
        bsr.sum_duplicates()
        bsr.sort_indices()
        return SparseMatrix.from_arrays((rows, cols), bsr.indptr, bsr.indices, bsr.data, block=(r, c),
                                        index_dtype=index_dtype)
    csr = sp.csr_array(m, dtype=np.float32)
    csr.sum_duplicates()
    csr.sort_indices()
    if (r, c) == (1, 1):
        return SparseMatrix.from_arrays((rows, cols), csr.indptr, csr.indices, csr.data,
                                        index_dtype=index_dtype)
    # Re-blocking goes through scipy's own BSR conversion on a padded copy.
    prow, pcol = -(-rows // r) * r, -(-cols // c) * c
    padded = sp.csr_array((csr.data, csr.indices, np.concatenate(
        [csr.indptr, np.full(prow - rows, csr.indptr[-1], dtype=csr.indptr.dtype)])), shape=(prow, pcol))
    bsr = padded.tobsr(blocksize=(r, c))
    return SparseMatrix.from_arrays((rows, cols), bsr.indptr, bsr.indices, bsr.data,
                                    block=(r, c), index_dtype=index_dtype)

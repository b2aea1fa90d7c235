"""sparsekit's kernels registered as ``torch.library`` custom ops.

``torch.compile`` and ``torch.export`` cannot look inside a pybind11 call, so the
sparse layers reach the kernels through two opaque operators whose arguments are
plain tensors (the block-CSR arrays) and ints:

``torch.ops.sparsekit.sparse_linear(x, indptr, indices, values, bias, out_features, activation)``
    ``activation(x @ W.T + bias)`` for ``x`` of shape ``(*, in_features)``; returns
    ``(*, out_features)``.

``torch.ops.sparsekit.sparse_matmul(x, indptr, indices, values, bias, out_features, activation)``
    ``activation(W @ x[n] + bias[:, None])`` for every ``n`` of ``x`` shaped
    ``(N, in_features, L)`` (or ``(in_features, L)``); returns ``(N, out_features, L)``.
    This is the lowered-convolution layout (columns are output pixels).

Array conventions (the buffers of :class:`sparsekit.nn.SparseLinear`):
``indptr`` int64 ``(n_block_rows + 1,)``; ``indices`` uint16 or int32 ``(n_blocks,)``;
``values`` float32 ``(n_blocks, r, c)`` (the block shape is read from it);
``bias`` float32 ``(out_features,)`` or None; ``activation`` is 0 (none), 1 (relu)
or 2 (exact gelu).

The ops check dtypes, shapes and the row-pointer ends (cheap, O(1)) but not every
column index (O(nnz), as costly as the product): their arrays are meant to come from
a module built by :func:`sparsekit.convert` or :func:`sparsekit.load`, both of
which validate every array. Do not write into those buffers in place.

Example:
    >>> import torch, sparsekit
    >>> from sparsekit.nn import SparseLinear
    >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
    >>> x = torch.randn(2, 8)
    >>> y = torch.ops.sparsekit.sparse_linear(x, layer.weight_indptr, layer.weight_indices,
    ...                                       layer.weight_values, layer.bias, 4, 0)
    >>> y.shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from sparsekit._runtime import _core, get_num_threads

__all__ = ["sparse_linear", "sparse_matmul", "make_kernel", "run_linear", "run_matmul", "ACTIVATION_CODES",
           "activation_code", "index_tensor"]

#: The activations the kernels fuse, by name, and the code each kernel call takes for it.
#: Every layer and wrapper (``sparsekit.linear``, ``sparsekit.nn``, the saved-file check) reads this table.
ACTIVATION_CODES = {None: 0, "relu": 1, "gelu": 2}
_CODES = frozenset(ACTIVATION_CODES.values())
_INDEX_DTYPES = (torch.int32,) + ((torch.uint16,) if hasattr(torch, "uint16") else ())


def _check_arrays(name: str, indptr: Tensor, indices: Tensor, values: Tensor,
                  bias: Optional[Tensor], out_features: int, activation: int) -> tuple:
    """Cheap structural checks shared by the real kernels and the fake (meta) kernels."""
    for arg, t in (("indptr", indptr), ("indices", indices), ("values", values)):
        if t.device.type not in ("cpu", "meta"):
            raise ValueError(f"{name}: {arg} must be on the CPU, got {t.device}")
    if indptr.dtype != torch.int64 or indptr.dim() != 1:
        raise TypeError(f"{name}: indptr must be a 1-D int64 tensor, got {indptr.dtype} {tuple(indptr.shape)}")
    if indices.dtype not in _INDEX_DTYPES or indices.dim() != 1:
        raise TypeError(f"{name}: indices must be a 1-D uint16/int32 tensor, got {indices.dtype} "
                        f"{tuple(indices.shape)}")
    if values.dtype != torch.float32 or values.dim() != 3:
        raise TypeError(f"{name}: values must be a float32 tensor shaped (n_blocks, r, c), got "
                        f"{values.dtype} {tuple(values.shape)}")
    r, c = int(values.shape[1]), int(values.shape[2])
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 0:
        raise TypeError(f"{name}: out_features must be a non-negative int, got {out_features!r}")
    if r < 1 or c < 1 or indptr.shape[0] != -(-out_features // r) + 1:
        raise ValueError(f"{name}: indptr must have ceil(out_features / r) + 1 entries")
    if values.shape[0] != indices.shape[0]:
        raise ValueError(f"{name}: values and indices disagree on the number of blocks")
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (out_features,)):
        raise ValueError(f"{name}: bias must be a float32 tensor of shape ({out_features},), got "
                         f"{bias.dtype} {tuple(bias.shape)}")
    if activation not in _CODES:
        raise ValueError(f"{name}: activation must be 0 (none), 1 (relu) or 2 (gelu), got {activation!r}")
    return r, c


def activation_code(activation: Any) -> int:
    """The kernel code of an activation name from :data:`ACTIVATION_CODES`; ``ValueError`` otherwise.

    Example:
        >>> from sparsekit.ops import activation_code
        >>> activation_code(None), activation_code("relu"), activation_code("gelu")
        (0, 1, 2)
    """
    code = ACTIVATION_CODES.get(activation) if isinstance(activation, (str, type(None))) else None
    if code is None:
        raise ValueError(f"activation must be None, 'relu' or 'gelu', got {activation!r}")
    return code


def _check_x(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name}: x must be float32, got {x.dtype}; call .float() first")
    if x.device.type not in ("cpu", "meta") or x.layout != torch.strided:
        raise ValueError(f"{name}: x must be a dense CPU tensor, got {x.layout} on {x.device}")


# ----------------------------------------------------------------------------- eager kernels
def make_kernel(indptr: Tensor, indices: Tensor, values: Tensor, bias: Optional[Tensor],
                out_features: int, cols: int, activation: int) -> "_core.Weight":
    """The compiled kernel object for these weight tensors (numpy views, no copies; it keeps
    them alive). O(1) checks only: the arrays must come from a validated source.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear
        >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> b = (layer.weight_indptr, layer.weight_indices, layer.weight_values, layer.bias)
        >>> make_kernel(*b, 4, 8, 0) is not None
        True
    """
    r, c = int(values.shape[1]), int(values.shape[2])
    return _core.Weight(out_features, cols, r, c, indptr.numpy(), indices.numpy(), values.numpy().reshape(-1),
                        None if bias is None else bias.numpy(), activation)


def _dense_input(x: Tensor) -> Tensor:
    """``x`` itself when its memory can be read as plain C-order float32, else one copy."""
    if x.is_neg() or not x.is_contiguous():
        x = x.resolve_neg().contiguous()
    return x


def run_linear(x: Tensor, kernel: "_core.Weight", out_features: int, cols: int,
               threads: Optional[int] = None, out: Optional[Tensor] = None) -> Tensor:
    """Eager fast path (no dispatcher). Internal: the caller has checked that ``x`` is a
    float32 strided CPU tensor of last dimension ``cols`` that needs no gradient, and that
    ``out``, if given, is a contiguous float32 CPU tensor of the result's shape not
    overlapping ``x``.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear
        >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> b = (layer.weight_indptr, layer.weight_indices, layer.weight_values, layer.bias)
        >>> run_linear(torch.randn(2, 8), make_kernel(*b, 4, 8, 0), 4, 8).shape
        torch.Size([2, 4])
    """
    shape = x.shape
    if len(shape) == 2 and x.is_contiguous() and not x.is_neg():  # (batch, cols) as it comes
        n = shape[0]
        lead = (n,)
    else:
        x = _dense_input(x)
        lead = tuple(x.shape[:-1])
        n = math.prod(lead)
    if out is None:  # numpy allocation is cheaper than torch.empty
        out = torch.from_numpy(np.empty(lead + (out_features,), dtype=np.float32))
    kernel.linear_raw(x.data_ptr(), out.data_ptr(), n, get_num_threads() if threads is None else threads)
    return out


def run_matmul(x: Tensor, kernel: "_core.Weight", out_features: int) -> Tensor:
    """Eager fast path for ``(N, cols, L)`` or ``(cols, L)`` input. Internal, like :func:`run_linear`.

    The kernel runs once per sample on its ``(cols, L)`` slice, writing ``(out, L)`` straight into
    the NCHW result (measured faster than one call on a transposed ``(cols, N * L)`` copy,
    even for 4x4 feature maps at batch 32); the loop over samples is in C++.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear
        >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> b = (layer.weight_indptr, layer.weight_indices, layer.weight_values, layer.bias)
        >>> run_matmul(torch.randn(3, 8, 5), make_kernel(*b, 4, 8, 0), 4).shape
        torch.Size([3, 4, 5])
    """
    squeeze = x.dim() == 2
    x3 = _dense_input(x.unsqueeze(0) if squeeze else x)
    n, _, length = x3.shape
    ys = torch.from_numpy(np.empty((n, out_features, length), dtype=np.float32))
    kernel.matmul_raw(x3.data_ptr(), ys.data_ptr(), n, length, get_num_threads())
    return ys[0] if squeeze else ys


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("sparsekit::sparse_linear", mutates_args=(), device_types="cpu")
def sparse_linear(x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor, bias: Optional[Tensor],
                  out_features: int, activation: int) -> Tensor:
    """``activation(x @ W.T + bias)`` with W given as block-CSR tensors (see module docs).

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear
        >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> b = (layer.weight_indptr, layer.weight_indices, layer.weight_values, layer.bias)
        >>> torch.ops.sparsekit.sparse_linear(torch.randn(2, 8), *b, 4, 1).min() >= 0
        tensor(True)
    """
    _check_x("sparse_linear", x)
    _check_arrays("sparse_linear", indptr, indices, values, bias, out_features, activation)
    if x.dim() < 1:
        raise ValueError("sparse_linear: x must have at least 1 dimension")
    cols = int(x.shape[-1])
    kernel = make_kernel(indptr, indices, values, bias, out_features, cols, activation)
    return run_linear(x.detach(), kernel, out_features, cols)


@sparse_linear.register_fake
def _sparse_linear_fake(x, indptr, indices, values, bias, out_features, activation):
    _check_arrays("sparse_linear", indptr, indices, values, bias, out_features, activation)
    return x.new_empty(tuple(x.shape[:-1]) + (out_features,))


@torch.library.custom_op("sparsekit::sparse_matmul", mutates_args=(), device_types="cpu")
def sparse_matmul(x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor, bias: Optional[Tensor],
                  out_features: int, activation: int) -> Tensor:
    """``activation(W @ x[n] + bias[:, None])`` per sample of ``x`` (N, in_features, L).

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear
        >>> layer = SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> b = (layer.weight_indptr, layer.weight_indices, layer.weight_values, layer.bias)
        >>> torch.ops.sparsekit.sparse_matmul(torch.randn(2, 8, 3), *b, 4, 0).shape
        torch.Size([2, 4, 3])
    """
    _check_x("sparse_matmul", x)
    _check_arrays("sparse_matmul", indptr, indices, values, bias, out_features, activation)
    if x.dim() not in (2, 3):
        raise ValueError(f"sparse_matmul: x must be (N, in_features, L) or (in_features, L), "
                         f"got {tuple(x.shape)}")
    kernel = make_kernel(indptr, indices, values, bias, out_features, int(x.shape[-2]), activation)
    return run_matmul(x.detach(), kernel, out_features)


@sparse_matmul.register_fake
def _sparse_matmul_fake(x, indptr, indices, values, bias, out_features, activation):
    _check_arrays("sparse_matmul", indptr, indices, values, bias, out_features, activation)
    return x.new_empty(tuple(x.shape[:-2]) + (out_features, x.shape[-1]))


def index_tensor(a: np.ndarray) -> Tensor:
    """A torch tensor owning a copy of an index array (uint16 or int32; uint16 widens to
    int32 on torch builds without ``torch.uint16``).

    Example:
        >>> import numpy as np
        >>> from sparsekit.ops import index_tensor
        >>> index_tensor(np.array([0, 3], np.int32))
        tensor([0, 3], dtype=torch.int32)
    """
    if a.dtype == np.uint16 and not hasattr(torch, "uint16"):  # torch < 2.3
        a = a.astype(np.int32)
    return torch.from_numpy(np.array(a, copy=True))

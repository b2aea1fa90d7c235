"""Sparse x dense products on sparsekit's compiled kernels."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from sparsekit import ops as _ops
from sparsekit._runtime import resolve_threads
from sparsekit.ops import activation_code
from sparsekit.formats import SparseMatrix

Array = Union[np.ndarray, torch.Tensor]

__all__ = ["linear", "matmul", "check_bias"]


def _to_numpy(a: Array, name: str) -> np.ndarray:
    """A float32 numpy view of `a` (no copy if already C-contiguous float32)."""
    if isinstance(a, torch.Tensor):
        if a.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor, got layout {a.layout}")
        if not a.is_cpu:
            raise ValueError(f"{name} must be on the CPU, got device {a.device}; call .cpu() first")
        if a.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}; call .float() first")
        if a.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"{name} requires grad, but sparsekit's kernels do not compute gradients; "
                "run inference under torch.no_grad() or torch.inference_mode()"
            )
        if a.requires_grad:  # only then does .numpy() need a detached view
            a = a.detach()
        if a.is_neg():  # a float32 tensor cannot be a conjugate view, only a negative one
            a = a.resolve_neg()
        arr = a.numpy()
    elif isinstance(a, np.ndarray):
        if a.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}; use {name}.astype(np.float32)")
        arr = a
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    # Non-contiguous input is copied once into C order (documented behaviour).
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _plain_tensor(x: object) -> bool:
    """A float32 strided CPU tensor (exact type) that needs no gradient."""
    return (type(x) is torch.Tensor and x.dtype is torch.float32 and x.is_cpu and x.layout is torch.strided
            and not (x.requires_grad and torch.is_grad_enabled()))


def _plain_out(out: object, x: torch.Tensor, rows: int) -> bool:
    """``out`` is a contiguous plain tensor of shape ``(*x.shape[:-1], rows)`` whose memory does
    not overlap ``x``'s (anything else takes the checked path, which explains the problem)."""
    if not (_plain_tensor(out) and out.is_contiguous() and not out.is_neg()):
        return False
    if out.shape[:-1] != x.shape[:-1] or out.shape[-1] != rows:
        return False
    o0, x0 = out.data_ptr(), x.data_ptr()
    o1 = o0 + out.numel() * 4
    x1 = x0 + (x.untyped_storage().nbytes() - x.storage_offset() * 4)  # to the end of x's storage
    return o1 <= x0 or x1 <= o0 or out.numel() == 0 or x.numel() == 0


def _check_weight(w: object) -> SparseMatrix:
    if not isinstance(w, SparseMatrix):
        raise TypeError(
            f"w must be a sparsekit.SparseMatrix, got {type(w).__name__}; "
            "build one with sparsekit.SparseMatrix.from_dense(weight)"
        )
    return w


def _check_out(out: Array, expected_shape: tuple, x_is_torch: bool, x_np: np.ndarray) -> np.ndarray:
    if x_is_torch != isinstance(out, torch.Tensor) or not isinstance(out, (torch.Tensor, np.ndarray)):
        kind = "torch.Tensor" if x_is_torch else "numpy.ndarray"
        raise TypeError(f"out must be a {kind} like the input, got {type(out).__name__}")
    if tuple(out.shape) != expected_shape:
        raise ValueError(f"out must have shape {expected_shape}, got {tuple(out.shape)}")
    if isinstance(out, torch.Tensor):
        if out.dtype != torch.float32 or not out.is_cpu or out.layout != torch.strided:
            raise TypeError(f"out must be a float32 CPU tensor, got {out.dtype} on {out.device}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        if out.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("out requires grad; sparsekit's kernels do not compute gradients")
        out_np = out.detach().numpy() if out.requires_grad else out.numpy()
    else:
        if out.dtype != np.float32:
            raise TypeError(f"out must be float32, got {out.dtype}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
        out_np = out
    if np.may_share_memory(out_np, x_np):
        raise ValueError("out must not overlap the input x")
    return out_np


def _output(out: Optional[Array], shape: tuple, is_torch: bool, x_np: np.ndarray):
    """(result to return, float32 numpy view the kernel writes): a new array of the
    input's kind, or the caller's validated ``out``."""
    if out is not None:
        return out, _check_out(out, shape, is_torch, x_np)
    y_np = np.empty(shape, dtype=np.float32)
    # numpy-allocated and shared with the tensor: cheaper than torch.empty().numpy()
    return (torch.from_numpy(y_np) if is_torch else y_np), y_np


def check_bias(bias: Optional[Array], rows: int, *, cast: bool = False) -> Optional[Array]:
    """Validate a bias vector for a product with ``rows`` outputs (``None`` passes through).

    By default ``bias`` follows :func:`linear`'s rules for ``x`` (float32 tensor or array, on
    the CPU) and comes back as a float32 numpy view. With ``cast=True`` (what the sparse
    layers store) any floating-point tensor or any numpy array is accepted and comes back as
    a private contiguous float32 CPU tensor. A wrong shape is a ``ValueError``, a wrong type
    a ``TypeError``.

    Example:
        >>> import torch
        >>> from sparsekit.kernels import check_bias
        >>> check_bias(torch.ones(2), 2)
        array([1., 1.], dtype=float32)
        >>> check_bias(torch.ones(2, dtype=torch.float64), 2, cast=True)
        tensor([1., 1.])
    """
    if bias is None:
        return None
    if cast:
        if isinstance(bias, np.ndarray):
            bias = torch.from_numpy(np.array(bias, dtype=np.float32, copy=True))
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor, numpy array or None, got {type(bias).__name__}")
        if not bias.dtype.is_floating_point:
            raise TypeError(f"bias must be floating point, got {bias.dtype}")
        checked: Array = bias.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    else:
        checked = _to_numpy(bias, "bias")
    if tuple(checked.shape) != (rows,):
        raise ValueError(f"bias must have shape ({rows},) (out_features), got {tuple(checked.shape)}")
    return checked


def _run(w: SparseMatrix, x2d: np.ndarray, bias: Optional[np.ndarray], act: int, y2d: np.ndarray,
         matmul: bool, threads: int) -> None:
    w._kernel.run(x2d, bias, act, y2d, matmul, threads)


def linear(x: Array, w: SparseMatrix, bias: Optional[Array] = None,
           activation: Optional[str] = None, out: Optional[Array] = None, *,
           threads: Optional[int] = None) -> Array:
    """``activation(x @ w.T + bias)`` with a sparse weight, like ``torch.nn.functional.linear``.

    Args:
        x: float32 torch tensor or numpy array of shape ``(*, in_features)``; any number
            of leading dims. Non-contiguous input is copied once; other dtypes are rejected.
        w: :class:`SparseMatrix` of shape ``(out_features, in_features)``.
        bias: optional float32 vector of ``out_features``.
        activation: ``None``, ``"relu"`` or ``"gelu"`` (exact erf form), fused into the kernel.
        out: optional preallocated contiguous float32 result of shape ``(*, out_features)``,
            same kind (torch/numpy) as ``x``.
        threads: kernel threads; default :func:`sparsekit.get_num_threads`.

    Returns:
        torch tensor for torch input, numpy array for numpy input.

    NaN and Inf in ``x`` propagate exactly as in the dense product (where the weight is
    zero, ``0 * inf`` is NaN there, so it is here).

    Example:
        >>> import torch, sparsekit
        >>> w = torch.tensor([[1., 0., 2.], [0., 0., 3.]])
        >>> x = torch.ones(4, 3)
        >>> sparsekit.linear(x, sparsekit.SparseMatrix.from_dense(w), bias=torch.ones(2))
        tensor([[4., 4.],
                [4., 4.],
                [4., 4.],
                [4., 4.]])
    """
    w = _check_weight(w)
    rows, cols = w.shape
    if bias is None and activation is None and _plain_tensor(x) and x.dim() >= 1 and x.shape[-1] == cols \
            and (out is None or _plain_out(out, x, rows)):
        # The common torch case without numpy views: the weight's own kernel object.
        return _ops.run_linear(x, w._kernel, rows, cols, resolve_threads(threads), out)
    is_torch = isinstance(x, torch.Tensor)
    x_np = _to_numpy(x, "x")
    if x_np.ndim < 1:
        raise ValueError("x must have at least 1 dimension (in_features)")
    if x_np.shape[-1] != cols:
        raise ValueError(
            f"x's last dimension must equal w's in_features = {cols}, got shape {tuple(x_np.shape)}"
        )
    b = check_bias(bias, rows)
    act = activation_code(activation)
    n_threads = resolve_threads(threads)
    lead = x_np.shape[:-1]
    out_shape = tuple(lead) + (rows,)
    result, y_np = _output(out, out_shape, is_torch, x_np)
    n = math.prod(lead)  # a tuple of ints: much cheaper than np.prod per call
    _run(w, x_np.reshape(n, cols), b, act, y_np.reshape(n, rows), False, n_threads)
    return result


def matmul(w: SparseMatrix, x: Array, out: Optional[Array] = None, *,
           threads: Optional[int] = None) -> Array:
    """``w @ x`` for a dense ``x`` of shape ``(in_features, n)`` or ``(in_features,)``.

    This is the layout a convolution lowered to a matrix product uses (columns are
    output pixels). Same input rules as :func:`linear`.

    Example:
        >>> import numpy as np, sparsekit
        >>> w = sparsekit.SparseMatrix.from_dense(np.array([[0., 2.], [1., 0.]], np.float32))
        >>> sparsekit.matmul(w, np.array([[1., 2.], [3., 4.]], np.float32))
        array([[6., 8.],
               [1., 2.]], dtype=float32)
    """
    w = _check_weight(w)
    is_torch = isinstance(x, torch.Tensor)
    x_np = _to_numpy(x, "x")
    rows, cols = w.shape
    if x_np.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D (in_features, n), got shape {tuple(x_np.shape)}")
    if x_np.shape[0] != cols:
        raise ValueError(
            f"x's first dimension must equal w's in_features = {cols}, got shape {tuple(x_np.shape)}"
        )
    n_threads = resolve_threads(threads)
    x2d = x_np if x_np.ndim == 2 else x_np.reshape(cols, 1)
    n = x2d.shape[1]
    out_shape = (rows, n) if x_np.ndim == 2 else (rows,)
    result, y_np = _output(out, out_shape, is_torch, x_np)
    _run(w, x2d, None, 0, y_np.reshape(rows, n), True, n_threads)
    return result

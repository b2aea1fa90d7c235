"""``SparseLinear``: the sparse inference twin of ``nn.Linear``."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from sparsekit import ops
from sparsekit.formats import SparseMatrix
from sparsekit.nn.base import SparseModule, effective_weight, format_density
from sparsekit.nn.base import is_compiling as _is_compiling
from sparsekit.nn.base import jit_tracing as _jit_tracing

__all__ = ["SparseLinear"]

# Module globals read by the batch-1 fast path in forward (one dict lookup each).
_grad_enabled = torch.is_grad_enabled
_F32 = torch.float32
_STRIDED = torch.strided


class SparseLinear(SparseModule):
    """``y = activation(x @ W.T + b)`` with a sparse ``W``: the inference twin of ``nn.Linear``.

    Args:
        weight: :class:`sparsekit.SparseMatrix` of shape ``(out_features, in_features)``.
        bias: optional ``(out_features,)`` tensor (copied as float32).
        activation: None, "relu" or "gelu" (exact erf form, like ``nn.GELU()``), fused.

    Example:
        >>> import torch, sparsekit
        >>> from sparsekit.nn import SparseLinear
        >>> dense = torch.nn.Linear(16, 8)
        >>> with torch.no_grad():
        ...     _ = dense.weight.mul_(torch.rand(8, 16) > 0.8)
        >>> layer = SparseLinear.from_dense(dense)
        >>> x = torch.randn(3, 16)
        >>> with torch.no_grad():
        ...     torch.allclose(layer(x), dense(x), atol=1e-5)
        True
    """

    _kind = "linear"

    def __init__(self, weight: SparseMatrix, bias: Optional[Tensor] = None,
                 activation: Optional[str] = None) -> None:
        super().__init__()
        self._set_weight(weight, bias, activation)
        self.eval()

    @classmethod
    def from_dense(cls, linear: nn.Linear, block: Tuple[int, int] = (1, 1), index_dtype: str = "auto",
                   activation: Optional[str] = None) -> "SparseLinear":
        """Compress an ``nn.Linear`` (masks from torch or sparsekit pruning applied).

        Example:
            >>> import torch
            >>> SparseLinear.from_dense(torch.nn.Linear(4, 2), activation="relu").activation
            'relu'
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = effective_weight(linear, "weight")
        b = effective_weight(linear, "bias")
        return cls(SparseMatrix.from_dense(w, block=block, index_dtype=index_dtype), b, activation)

    @property
    def in_features(self) -> int:
        return self._cols

    @property
    def out_features(self) -> int:
        return self._rows

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (the activation, if fused, is not included)."""
        lin = nn.Linear(self._cols, self._rows, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(self.sparse_weight.to_dense()))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.eval()

    def forward(self, x: Tensor) -> Tensor:
        # The common case inlined (this is the batch-1 latency path): plain float32 CPU
        # input of the right width, no autograd, not tracing.
        if (type(x) is Tensor and x.dtype is _F32 and x.is_cpu and x.layout is _STRIDED
                and not (_grad_enabled() and (self.training or x.requires_grad))
                and not _is_compiling() and not _jit_tracing()):
            shape = x.shape
            if len(shape) >= 1 and shape[-1] == self._cols:
                return ops.run_linear(x, self._kernel(), self._rows, self._cols)
            fast = True
        else:
            fast = False
            self._check_input(x)
        if x.dim() < 1 or x.shape[-1] != self._cols:
            raise ValueError(f"SparseLinear: input's last dimension must be in_features = {self._cols}, "
                             f"got shape {tuple(x.shape)}")
        if fast:
            return ops.run_linear(x, self._kernel(), self._rows, self._cols)
        return torch.ops.sparsekit.sparse_linear(x, self.weight_indptr, self.weight_indices,
                                                 self.weight_values, self.bias, self._rows, self._act)

    def extra_repr(self) -> str:
        s = (f"in_features={self._cols}, out_features={self._rows}, bias={self.bias is not None}, "
             f"block={self._block}, density={format_density(self.density)}")
        return s + (f", activation={self.activation!r}" if self.activation else "")

    # ------------------------------------------------------------ file metadata
    @classmethod
    def check_load_target(cls, target: nn.Module, meta: Dict[str, Any], where: str) -> None:
        rows, cols = meta["shape"]
        if not isinstance(target, (nn.Linear, cls)):
            raise ValueError(f"{where} is a {type(target).__name__}, the file holds a {cls.__name__}")
        if (target.out_features, target.in_features) != (rows, cols):
            raise ValueError(f"{where} is {target.in_features} -> {target.out_features}, the file holds "
                             f"{cols} -> {rows}")

    @classmethod
    def from_file_meta(cls, meta: Dict[str, Any], weight: SparseMatrix, bias: Optional[Tensor]) -> "SparseLinear":
        return cls(weight, bias, meta["activation"])

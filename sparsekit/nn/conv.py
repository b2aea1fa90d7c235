"""``SparseConv2d`` / ``SparseConv1d``: convolutions lowered to a sparse matrix product."""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsekit import ops
from sparsekit.formats import SparseMatrix
from sparsekit.nn.base import SparseModule, effective_weight, format_density

__all__ = ["SparseConv2d", "SparseConv1d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _ntuple(v: Any, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return (int(v),) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in v):
        return tuple(int(s) for s in v)
    raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {v!r}")


class _SparseConvNd(SparseModule):
    """What SparseConv2d and SparseConv1d share: geometry, padding plan, im2col lowering."""

    _nd = 2
    _dense: type = nn.Conv2d  # the dense twin
    _kind = "conv"

    def __init__(self, weight: SparseMatrix, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, ...]], stride: Union[int, Tuple[int, ...]] = 1,
                 padding: Union[int, str, Tuple[int, ...]] = 0, dilation: Union[int, Tuple[int, ...]] = 1,
                 padding_mode: str = "zeros", bias: Optional[Tensor] = None,
                 activation: Optional[str] = None) -> None:
        super().__init__()
        nd = self._nd
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _ntuple(kernel_size, nd, "kernel_size")
        self.stride = _ntuple(stride, nd, "stride")
        self.dilation = _ntuple(dilation, nd, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' needs stride 1 (as in torch.nn.Conv2d)")
            self.padding = padding
        else:
            self.padding = _ntuple(padding, nd, "padding")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        for name, t in (("kernel_size", self.kernel_size), ("stride", self.stride), ("dilation", self.dilation)):
            if any(s < 1 for s in t):
                raise ValueError(f"{name} must be positive, got {t}")
        if not isinstance(self.padding, str) and any(p < 0 for p in self.padding):
            raise ValueError(f"padding must be non-negative, got {self.padding}")
        expected = (self.out_channels, self.in_channels * int(np.prod(self.kernel_size)))
        if isinstance(weight, SparseMatrix) and weight.shape != expected:
            raise ValueError(f"weight must have shape (out_channels, in_channels * prod(kernel_size)) = "
                             f"{expected}, got {weight.shape}")
        self._set_weight(weight, bias, activation)
        # Padding applied with F.pad before the lowering (non-zero modes, asymmetric 'same').
        self._pre_pad, self._pad2 = self._plan_padding()
        self.eval()

    def _plan_padding(self):
        k, d = self.kernel_size, self.dilation
        if self.padding == "valid":
            sym = (0,) * self._nd
            lr = None
        elif self.padding == "same":
            totals = [di * (ki - 1) for ki, di in zip(k, d)]
            lr = [(t // 2, t - t // 2) for t in totals]
            sym = tuple(a for a, _ in lr)
            if all(a == b for a, b in lr):
                lr = None
        else:
            sym = self.padding
            lr = None
        lead = [(0, 0)] * (2 - self._nd)  # padding is applied to the (N, C, H, W) view
        if self.padding_mode != "zeros":
            pairs = lead + (lr if lr is not None else [(p, p) for p in sym])
            pad = tuple(v for pair in reversed(pairs) for v in pair)  # F.pad order: last dim first
            return (pad, self.padding_mode), (0, 0)
        if lr is not None:  # asymmetric zero padding
            pad = tuple(v for pair in reversed(lead + lr) for v in pair)
            return (pad, "constant"), (0, 0)
        pad2 = tuple(sym) if self._nd == 2 else (0, sym[0])
        return None, pad2

    @classmethod
    def _from_conv(cls, conv, block, index_dtype, activation):
        if not isinstance(conv, cls._dense):
            raise TypeError(f"conv must be a torch.nn.{cls._dense.__name__}, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"{cls.__name__} supports groups=1 only, got groups={conv.groups} "
                             "(grouped and depthwise convolutions stay dense)")
        w = effective_weight(conv, "weight")
        b = effective_weight(conv, "bias")
        m = SparseMatrix.from_dense(w.reshape(w.shape[0], math.prod(w.shape[1:])), block=block, index_dtype=index_dtype)
        return cls(m, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.padding_mode, b, activation)

    def _conv_args(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                    stride=self.stride, padding=self.padding, dilation=self.dilation,
                    padding_mode=self.padding_mode, bias=self.bias is not None)

    def to_dense(self):
        """An equivalent dense convolution (the activation, if fused, is not included)."""
        conv = self._dense(**self._conv_args())
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(self.sparse_weight.to_dense()).reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.eval()

    def _lowered(self, x4: Tensor, strided: bool = True) -> Tuple[Tensor, int, int]:
        """(N, C, H, W) -> columns (N, C*kh*kw, Ho*Wo), Ho, Wo (F.unfold when not ``strided``)."""
        if self._pre_pad is not None:
            pad, mode = self._pre_pad
            x4 = F.pad(x4, pad, mode=mode)
        (kh, kw), (sh, sw), (dh, dw) = self._k2, self._s2, self._d2
        ph, pw = self._pad2
        n, c, h, w = x4.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"{type(self).__name__}: input spatial size {tuple(x4.shape[2:])} is too small "
                             f"for kernel {self.kernel_size} with padding {self.padding}")
        if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
            if (sh, sw) != (1, 1):
                x4 = x4[:, :, ::sh, ::sw]
            return x4.reshape(n, c, ho * wo), ho, wo  # a view for contiguous input
        if not strided:
            cols = F.unfold(x4, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
            return cols, ho, wo
        # im2col as one strided copy of a (N, C, kh, kw, Ho, Wo) view: several times faster than
        # F.unfold on CPU, same layout (channel-major, then kh, kw; columns are output pixels).
        xp = F.pad(x4, (pw, pw, ph, ph)) if (ph or pw) else x4
        sn, sc, sy, sx = xp.stride()
        view = xp.as_strided((n, c, kh, kw, ho, wo), (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw),
                             xp.storage_offset())
        return view.reshape(n, c * kh * kw, ho * wo), ho, wo

    @property
    def _k2(self):
        return self.kernel_size if self._nd == 2 else (1,) + self.kernel_size

    @property
    def _s2(self):
        return self.stride if self._nd == 2 else (1,) + self.stride

    @property
    def _d2(self):
        return self.dilation if self._nd == 2 else (1,) + self.dilation

    def forward(self, x: Tensor) -> Tensor:
        fast = self._fast(x)
        if not fast:
            self._check_input(x)
        nd = self._nd
        if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != self.in_channels:
            layout = "(N, C, H, W) or (C, H, W)" if nd == 2 else "(N, C, L) or (C, L)"
            raise ValueError(f"{type(self).__name__}: input must be {layout} with C = in_channels = "
                             f"{self.in_channels}, got shape {tuple(x.shape)}")
        unbatched = x.dim() == nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        x4 = x if nd == 2 else x.unsqueeze(2)
        cols, ho, wo = self._lowered(x4, strided=fast)
        if fast:
            y = ops.run_matmul(cols, self._kernel(), self._rows)
        else:
            y = torch.ops.sparsekit.sparse_matmul(cols, self.weight_indptr, self.weight_indices,
                                                  self.weight_values, self.bias, self._rows, self._act)
        n = x4.shape[0]
        y = y.view(n, self._rows, ho, wo) if nd == 2 else y.view(n, self._rows, wo)
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += f", block={self._block}, density={format_density(self.density)}"
        return s + (f", activation={self.activation!r}" if self.activation else "")

    # ------------------------------------------------------------ file metadata
    _GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "padding", "padding_mode")

    def file_meta(self) -> Dict[str, Any]:
        meta = super().file_meta()
        meta.update(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                    dilation=list(self.dilation), padding_mode=self.padding_mode)
        return meta

    @classmethod
    def check_file_meta(cls, meta: Dict[str, Any], where: str) -> Dict[str, Any]:
        out = super().check_file_meta(meta, where)
        nd = cls._nd
        for key in ("in_channels", "out_channels"):
            v = meta.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where}: {key} must be a positive int, got {v!r}")
            out[key] = v
        for key in ("kernel_size", "stride", "dilation"):
            out[key] = cls._meta_ints(meta.get(key), nd, f"{where}: {key}", 1)
        pad = meta.get("padding")
        out["padding"] = pad if pad in ("same", "valid") else cls._meta_ints(pad, nd, f"{where}: padding")
        if meta.get("padding_mode") not in _PADDING_MODES:
            raise ValueError(f"{where}: invalid padding_mode {meta.get('padding_mode')!r}")
        out["padding_mode"] = meta["padding_mode"]
        if out["shape"] != (out["out_channels"], out["in_channels"] * math.prod(out["kernel_size"])):
            raise ValueError(f"{where}: shape {out['shape']} does not match the convolution geometry")
        return out

    @classmethod
    def check_load_target(cls, target: nn.Module, meta: Dict[str, Any], where: str) -> None:
        if not isinstance(target, (cls._dense, cls)):
            raise ValueError(f"{where} is a {type(target).__name__}, the file holds a {cls.__name__}")
        if getattr(target, "groups", 1) != 1:
            raise ValueError(f"{where} has groups={target.groups}, the file holds a groups=1 convolution")
        for key in cls._GEOMETRY:
            have = getattr(target, key)
            have = tuple(have) if isinstance(have, (list, tuple)) else have
            if have != meta[key]:
                raise ValueError(f"{where} has {key}={have!r}, the file holds {meta[key]!r}")

    @classmethod
    def from_file_meta(cls, meta: Dict[str, Any], weight: SparseMatrix, bias: Optional[Tensor]) -> "_SparseConvNd":
        return cls(weight, meta["in_channels"], meta["out_channels"], meta["kernel_size"], meta["stride"],
                   meta["padding"], meta["dilation"], meta["padding_mode"], bias, meta["activation"])


class SparseConv2d(_SparseConvNd):
    """A 2-D convolution with a sparse weight: the inference twin of ``nn.Conv2d`` (groups=1).

    The weight is stored as ``(out_channels, in_channels * kh * kw)``. 1x1 convolutions
    multiply the ``(C, H*W)`` view of each sample directly (no copy for contiguous NCHW
    input, strided 1x1 subsamples first); k x k convolutions with any stride, padding,
    dilation and padding mode are lowered with ``F.unfold`` (im2col) and multiplied per
    sample, writing NCHW output directly. Bias and a following ReLU/GELU are fused.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseConv2d
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> sparse = SparseConv2d.from_dense(conv)
        >>> x = torch.randn(2, 3, 10, 10)
        >>> with torch.no_grad():
        ...     torch.allclose(sparse(x), conv(x), atol=1e-5)
        True
    """

    _nd = 2

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, block: Tuple[int, int] = (1, 1), index_dtype: str = "auto",
                   activation: Optional[str] = None) -> "SparseConv2d":
        """Compress an ``nn.Conv2d`` with ``groups=1`` (masks applied).

        Example:
            >>> import torch
            >>> SparseConv2d.from_dense(torch.nn.Conv2d(3, 8, 3), block=(2, 1)).block
            (2, 1)
        """
        return cls._from_conv(conv, block, index_dtype, activation)


class SparseConv1d(_SparseConvNd):
    """A 1-D convolution with a sparse weight: the inference twin of ``nn.Conv1d`` (groups=1).

    Same lowering as :class:`SparseConv2d` on an ``(N, C, 1, L)`` view.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseConv1d
        >>> conv = torch.nn.Conv1d(4, 6, 3, padding=2, dilation=2)
        >>> x = torch.randn(2, 4, 20)
        >>> with torch.no_grad():
        ...     torch.allclose(SparseConv1d.from_dense(conv)(x), conv(x), atol=1e-5)
        True
    """

    _nd = 1
    _dense = nn.Conv1d

    @classmethod
    def from_dense(cls, conv: nn.Conv1d, block: Tuple[int, int] = (1, 1), index_dtype: str = "auto",
                   activation: Optional[str] = None) -> "SparseConv1d":
        """Compress an ``nn.Conv1d`` with ``groups=1`` (masks applied).

        Example:
            >>> import torch
            >>> SparseConv1d.from_dense(torch.nn.Conv1d(4, 6, 3), block=(2, 1)).block
            (2, 1)
        """
        return cls._from_conv(conv, block, index_dtype, activation)

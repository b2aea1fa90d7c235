"""Inference modules that hold sparse weights: drop-in twins of nn.Linear, nn.Conv2d, nn.Conv1d.

Build them with :func:`sparsekit.convert` (whole models) or ``SparseLinear.from_dense``
(one layer). They store the weight as block-CSR buffers (``weight_indptr`` int64,
``weight_indices`` uint16/int32, ``weight_values`` float32 ``(n_blocks, r, c)``) plus an
optional float32 ``bias``, and run on sparsekit's kernels with bias and an optional
ReLU/GELU fused into the product.

Rules:

- Input: float32 CPU tensors with any leading dims (``(*, in_features)`` for linear,
  ``(N, C, H, W)`` or ``(C, H, W)`` for conv2d, ``(N, C, L)`` or ``(C, L)`` for conv1d).
  Other dtypes or devices raise ``TypeError`` / ``ValueError``; there is no silent cast.
  Contiguous input is used in place (no copy).
- Inference only: ``forward`` raises ``RuntimeError`` when autograd would need a
  gradient through the layer (the layer is in training mode, or the input requires grad,
  while grad mode is on). Run under ``torch.no_grad()``, ``torch.inference_mode()`` or
  in eval mode with inputs that do not require grad.
- The buffers are read-only in spirit: they were validated when the module was built
  (:meth:`SparseLinear.from_dense`, :func:`sparsekit.load`, ``load_state_dict``); do not
  write into them. ``.to(dtype)`` / ``.cuda()`` raise instead of producing a broken layer.
- ``forward`` keeps no mutable state, so one module may serve many threads at once.
- Under ``torch.compile`` / ``torch.export`` the product is the opaque custom op
  ``torch.ops.sparsekit.sparse_linear`` / ``sparse_matmul`` (see :mod:`sparsekit.ops`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsekit import ops as _ops  # registers torch.ops.sparsekit.*
from sparsekit._runtime import _core
from sparsekit.formats import SparseMatrix

__all__ = ["SparseModule", "SparseLinear", "SparseConv1d", "SparseConv2d", "SparseSequential", "fuse_sequentials",
           "effective_weight", "ACTIVATIONS"]

ACTIVATIONS = (None, "relu", "gelu")
_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
_jit_tracing = getattr(torch._C, "_is_tracing", None) or torch.jit.is_tracing  # C call, same answer
_grad_enabled = torch.is_grad_enabled
_F32 = torch.float32
_STRIDED = torch.strided


def effective_weight(module: nn.Module, name: str = "weight") -> Optional[Tensor]:
    """The parameter ``name`` as the forward pass sees it, masks applied, detached, float32.

    Handles torch.nn.utils.prune (``weight_orig * weight_mask``), sparsekit.prune's
    mask buffers (``weight_sparsekit_mask``) and parametrizations.

    Example:
        >>> import torch, torch.nn.utils.prune
        >>> layer = torch.nn.Linear(4, 2)
        >>> _ = torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
        >>> int((effective_weight(layer) == 0).sum())
        4
    """
    orig = getattr(module, name + "_orig", None)
    mask = getattr(module, name + "_mask", None)
    if isinstance(orig, Tensor) and isinstance(mask, Tensor):
        w = orig.detach() * mask.detach().to(orig.dtype)
    else:
        w = getattr(module, name, None)
        if w is None:
            return None
        w = w.detach()
        sk_mask = module._buffers.get(name + "_sparsekit_mask")
        if sk_mask is not None:
            w = w.masked_fill(~sk_mask.bool(), 0)
    if w.device.type != "cpu":
        w = w.cpu()
    return w.to(torch.float32)


def _check_activation(activation: Any) -> Optional[str]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'gelu', got {activation!r}")
    return activation


def _check_bias(bias: Any, rows: int) -> Optional[Tensor]:
    if bias is None:
        return None
    if isinstance(bias, np.ndarray):
        bias = torch.from_numpy(np.array(bias, dtype=np.float32, copy=True))
    if not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor, numpy array or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (rows,):
        raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
    if not bias.dtype.is_floating_point:
        raise TypeError(f"bias must be floating point, got {bias.dtype}")
    return bias.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()


def _plain_f32_cpu(x: Any) -> bool:
    """A plain (not subclassed) float32 dense CPU tensor: what the eager kernels take as is.
    ``SparseLinear.forward`` spells the same test inline (its batch-1 path is timed)."""
    return type(x) is Tensor and x.dtype is _F32 and x.is_cpu and x.layout is _STRIDED


def _fmt_density(d: float) -> str:
    return f"{d:.3f}" if d >= 0.001 or d == 0 else f"{d:.1e}"


class SparseModule(nn.Module):
    """Base class of sparsekit's sparse layers: shared storage, checks and (de)serialisation.

    Use it to ask whether a module runs on sparsekit's kernels.

    Example:
        >>> import torch, sparsekit
        >>> layer = sparsekit.nn.SparseLinear.from_dense(torch.nn.Linear(8, 4))
        >>> isinstance(layer, sparsekit.nn.SparseModule)
        True
    """

    _kind = "sparse"

    def _set_weight(self, weight: SparseMatrix, bias: Optional[Tensor], activation: Optional[str]) -> None:
        if not isinstance(weight, SparseMatrix):
            raise TypeError(f"weight must be a sparsekit.SparseMatrix, got {type(weight).__name__}")
        self.activation = _check_activation(activation)
        self._act = _ops.ACTIVATION_CODES[self.activation]
        self._rows, self._cols = weight.shape
        self._block = weight.block
        self.register_buffer("weight_indptr", torch.from_numpy(np.array(weight.indptr, copy=True)))
        self.register_buffer("weight_indices", _ops._index_tensor(weight.indices))
        self.register_buffer("weight_values", torch.from_numpy(np.array(weight.values, copy=True)))
        self.register_buffer("bias", _check_bias(bias, self._rows))
        self.__dict__.pop("_np_cache", None)

    # ------------------------------------------------------------------ properties
    @property
    def sparse_weight(self) -> SparseMatrix:
        """The weight as a (validated copy) :class:`sparsekit.SparseMatrix`."""
        idx = self.weight_indices.numpy()
        return SparseMatrix.from_arrays((self._rows, self._cols), self.weight_indptr.numpy(), idx,
                                        self.weight_values.numpy(), block=self._block,
                                        index_dtype=str(idx.dtype) if idx.dtype == np.uint16 else "int32")

    @property
    def block(self) -> Tuple[int, int]:
        """Block shape ``(r, c)`` of the stored weight; ``(1, 1)`` is CSR."""
        return self._block

    @property
    def index_dtype(self) -> str:
        return "uint16" if self.weight_indices.dtype != torch.int32 else "int32"

    @property
    def nnz(self) -> int:
        """Stored weight values (zeros inside kept blocks included, edge padding excluded)."""
        return self.sparse_weight.nnz

    @property
    def density(self) -> float:
        size = self._rows * self._cols
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer (weight arrays and bias)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values() if b is not None)

    # -------------------------------------------------------------------- checks
    def _check_input(self, x: Any) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"{type(self).__name__}: input must be float32, got {x.dtype}; "
                            "call .float() on it (sparse layers compute in float32 only)")
        if x.device.type != "cpu" or x.layout != torch.strided:
            raise ValueError(f"{type(self).__name__}: input must be a dense CPU tensor, got {x.layout} "
                             f"on {x.device}; call .cpu() first")
        if torch.is_grad_enabled() and (self.training or x.requires_grad):
            raise RuntimeError(
                f"{type(self).__name__} is inference-only and cannot be trained or differentiated; "
                "call model.eval() and run under torch.no_grad() or torch.inference_mode() "
                "(fine-tune the dense, masked model before sparsekit.convert)"
            )
        v = self.weight_values
        if v.dtype != torch.float32 or v.device.type != "cpu":
            raise TypeError(f"{type(self).__name__}: weight buffers were moved to {v.dtype} on "
                            f"{v.device}; sparse layers hold float32 CPU weights only")

    def _fast(self, x: Any) -> bool:
        """True when the eager fast path applies: a plain valid input, not tracing, no autograd."""
        return (_plain_f32_cpu(x) and not (_grad_enabled() and (self.training or x.requires_grad))
                and not _is_compiling() and not _jit_tracing())

    def _kernel(self) -> "_core.Weight":
        """The compiled kernel object on views of the buffers, cached until a buffer is
        replaced (``.to()``, loading) or the activation changes.

        The cache only ever holds views of the current buffers and is rebuilt from scratch
        when stale, so concurrent callers at worst rebuild it twice; it is not copied by
        deepcopy/pickle (see ``__getstate__``).
        """
        b = self._buffers
        ip, ix, v, bias = b["weight_indptr"], b["weight_indices"], b["weight_values"], b["bias"]
        act = self._act
        c = self.__dict__.get("_np_cache")
        if c is not None and c[0] is ip and c[1] is ix and c[2] is v and c[3] is bias and c[4] == act:
            return c[5]
        if v.dtype != torch.float32 or not v.is_cpu:
            raise TypeError(f"{type(self).__name__}: weight buffers were moved to {v.dtype} on "
                            f"{v.device}; sparse layers hold float32 CPU weights only")
        kernel = _ops.make_kernel(ip, ix, v, bias, self._rows, self._cols, act)
        self.__dict__["_np_cache"] = (ip, ix, v, bias, act, kernel)
        return kernel

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_np_cache", None)
        # torch 2.13 pickles a uint16 tensor but cannot unpickle it with plain pickle (the
        # path multiprocessing takes): "UntypedStorage has no attribute 'dtype'". Carry the
        # indices as int32 and narrow them again in __setstate__.
        ix = self._buffers.get("weight_indices")
        if ix is not None and ix.dtype is getattr(torch, "uint16", None):
            state["_buffers"] = {**self._buffers, "weight_indices": ix.to(torch.int32)}
            state["_sk_uint16_indices"] = True
        return state

    def __setstate__(self, state: dict) -> None:
        narrow = state.pop("_sk_uint16_indices", False)
        super().__setstate__(state)
        if narrow:
            ix = self._buffers["weight_indices"]
            self._buffers["weight_indices"] = _ops._index_tensor(ix.numpy().astype(np.uint16))

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(), .half(), ...
        for name in ("weight_values", "bias"):
            t = self._buffers.get(name)
            if t is not None:
                probe = fn(t)
                if probe.dtype != torch.float32:
                    raise TypeError(f"{type(self).__name__} holds float32 weights only; cannot convert "
                                    f"its {name} to {probe.dtype}")
                if probe.device.type != "cpu":
                    raise ValueError(f"{type(self).__name__} runs on the CPU only; cannot move it to "
                                     f"{probe.device}")
        # fn may swap a buffer's storage in place (share_memory_): never keep views of the old one.
        self.__dict__.pop("_np_cache", None)
        try:
            return super()._apply(fn, *args, **kwargs)
        finally:
            self.__dict__.pop("_np_cache", None)

    # ------------------------------------------------------------ serialisation
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Rebuilds the sparse buffers from a state dict, validating every array first."""
        keys = {k: prefix + k for k in ("weight_indptr", "weight_indices", "weight_values", "bias")}
        present = {k: state_dict[v] for k, v in keys.items() if v in state_dict}
        for k in ("weight_indptr", "weight_indices", "weight_values"):
            if k not in present:
                missing_keys.append(keys[k])
        if len(present) >= 3:
            try:
                vals = present["weight_values"]
                if not isinstance(vals, Tensor) or vals.dim() != 3:
                    raise ValueError(f"{keys['weight_values']} must be a 3-D tensor (n_blocks, r, c)")
                block = (int(vals.shape[1]), int(vals.shape[2]))
                idx = present["weight_indices"]
                idx_dtype = "uint16" if isinstance(idx, Tensor) and idx.dtype == getattr(torch, "uint16", None) \
                    else "int32"
                m = SparseMatrix.from_arrays((self._rows, self._cols), present["weight_indptr"], idx, vals,
                                             block=block, index_dtype=idx_dtype)
                bias = present.get("bias")
                if (bias is None) != (self.bias is None):
                    raise ValueError(f"{keys['bias']}: the state dict and the module disagree on having a bias")
                self._set_weight(m, bias, self.activation)
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"{type(self).__name__} at {prefix!r}: {exc}")
        elif self.bias is not None and keys["bias"] not in present:
            missing_keys.append(keys["bias"])
        for k in state_dict if strict else ():
            if k.startswith(prefix) and "." not in k[len(prefix):] and k[len(prefix):] not in keys:
                unexpected_keys.append(k)


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
                return _ops.run_linear(x, self._kernel(), self._rows, self._cols)
            fast = True
        else:
            fast = False
            self._check_input(x)
        if x.dim() < 1 or x.shape[-1] != self._cols:
            raise ValueError(f"SparseLinear: input's last dimension must be in_features = {self._cols}, "
                             f"got shape {tuple(x.shape)}")
        if fast:
            return _ops.run_linear(x, self._kernel(), self._rows, self._cols)
        return torch.ops.sparsekit.sparse_linear(x, self.weight_indptr, self.weight_indices,
                                                 self.weight_values, self.bias, self._rows, self._act)

    def extra_repr(self) -> str:
        s = (f"in_features={self._cols}, out_features={self._rows}, bias={self.bias is not None}, "
             f"block={self._block}, density={_fmt_density(self.density)}")
        return s + (f", activation={self.activation!r}" if self.activation else "")


def _ntuple(v: Any, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return (int(v),) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in v):
        return tuple(int(s) for s in v)
    raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {v!r}")


class _SparseConvNd(SparseModule):
    _nd = 2
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
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
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
        dense_cls = nn.Conv2d if self._nd == 2 else nn.Conv1d
        conv = dense_cls(**self._conv_args())
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
            y = _ops.run_matmul(cols, self._kernel(), self._rows)
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
        s += f", block={self._block}, density={_fmt_density(self.density)}"
        return s + (f", activation={self.activation!r}" if self.activation else "")


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
        """Compress an ``nn.Conv2d`` with ``groups=1`` (masks applied)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
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

    @classmethod
    def from_dense(cls, conv: nn.Conv1d, block: Tuple[int, int] = (1, 1), index_dtype: str = "auto",
                   activation: Optional[str] = None) -> "SparseConv1d":
        """Compress an ``nn.Conv1d`` with ``groups=1`` (masks applied)."""
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"conv must be a torch.nn.Conv1d, got {type(conv).__name__}")
        return cls._from_conv(conv, block, index_dtype, activation)


# ------------------------------------------------------------------ fused sequential runs
_hooks = torch.nn.modules.module
_GLOBAL_HOOKS = (_hooks._global_forward_hooks, _hooks._global_forward_pre_hooks,
                 _hooks._global_backward_hooks, _hooks._global_backward_pre_hooks)


class _Run:
    """A stretch of a SparseSequential's children run as one C++ call: SparseLinear layers whose
    widths chain, and the ``nn.Identity`` placeholders between them."""
    __slots__ = ("modules", "layers", "hooks", "kernels", "chain", "cols", "rows")

    def __init__(self, modules: Tuple[nn.Module, ...]) -> None:
        self.modules = modules
        self.layers = tuple(m for m in modules if type(m) is SparseLinear)
        # Every hook dict nn.Module.__call__ would consult for these children (registering a
        # hook adds to these dicts in place); any entry means calling the children instead.
        self.hooks = _GLOBAL_HOOKS + tuple(d for m in modules for d in (
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))
        self.cols = self.layers[0]._cols
        self.rows = self.layers[-1]._rows
        self.kernels: Tuple[Any, ...] = ()
        self.chain = None

    def current_chain(self) -> Any:
        """The compiled chain on the layers' current kernels (rebuilt if one was replaced)."""
        kernels = tuple(m._kernel() for m in self.layers)
        if kernels != self.kernels:  # identity comparison of the kernel objects
            self.chain = _core.Chain(kernels)
            self.kernels = kernels
        return self.chain


def _plan(modules: Tuple[nn.Module, ...]) -> list:
    """Children in order, each stretch of >= 2 fusable children replaced by a :class:`_Run`."""
    steps: list = []
    run: list = []

    def flush() -> None:
        if sum(type(m) is SparseLinear for m in run) and len(run) >= 2:
            steps.append(_Run(tuple(run)))
        else:
            steps.extend(run)
        run.clear()

    width = None  # outputs of the run's last SparseLinear
    for m in modules:
        if type(m) is SparseLinear and (width is None or m._cols == width):
            run.append(m)
            width = m._rows
        elif type(m) is nn.Identity and run:
            run.append(m)
        else:
            flush()
            width = None
            if type(m) is SparseLinear:  # starts a new run (its width did not chain)
                run.append(m)
                width = m._rows
            else:
                steps.append(m)
    flush()
    return steps


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` that runs each stretch of consecutive :class:`SparseLinear` layers as
    one C++ call (with the ``nn.Identity`` placeholders that :func:`sparsekit.convert` leaves
    where it fused an activation or folded a BatchNorm).

    :func:`sparsekit.convert` and :func:`sparsekit.load` turn every plain ``nn.Sequential``
    holding such a stretch into this class; it has no state of its own, so names,
    ``state_dict`` keys and indexing are those of the ``nn.Sequential``. A fused stretch gives
    bitwise the same outputs as calling its layers one by one, without the Python work
    between them (about 5 us per layer at batch 1). It falls back to calling the children
    one by one whenever that could differ: input that is not a plain float32 CPU tensor of
    the right width, autograd, ``torch.compile`` / ``torch.export`` / ``torch.jit.trace``,
    any forward or backward hook on a child or registered globally.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear, SparseSequential
        >>> a = SparseLinear.from_dense(torch.nn.Linear(4, 8), activation="relu")
        >>> b = SparseLinear.from_dense(torch.nn.Linear(8, 2))
        >>> model = SparseSequential(a, torch.nn.Identity(), b).eval()
        >>> x = torch.randn(3, 4)
        >>> torch.equal(model(x), b(a(x)))
        True
    """

    def forward(self, x: Any) -> Any:
        if _is_compiling() or _jit_tracing():
            return super().forward(x)
        mods = tuple(self._modules.values())
        cached = self.__dict__.get("_sk_plan")
        if cached is None or cached[0] != mods:
            cached = (mods, _plan(mods))
            self.__dict__["_sk_plan"] = cached
        grad = _grad_enabled()
        for step in cached[1]:
            if type(step) is not _Run:
                x = step(x)
            elif (_plain_f32_cpu(x) and x.dim() >= 1 and x.shape[-1] == step.cols
                  and not any(step.hooks)
                  and not (grad and (x.requires_grad or any(m.training for m in step.layers)))):
                x = _ops.run_linear(x, step.current_chain(), step.rows, step.cols)
            else:
                for m in step.modules:
                    x = m(x)
        return x

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_sk_plan", None)
        return state


def fuse_sequentials(model: nn.Module) -> list:
    """Makes every plain ``nn.Sequential`` in ``model`` (``model`` too) that holds a fusable
    stretch a :class:`SparseSequential`; returns their qualified names.

    :func:`sparsekit.convert` and :func:`sparsekit.load` call it; children, names and
    state-dict keys stay the same.

    Example:
        >>> import torch, sparsekit
        >>> lin = lambda: sparsekit.nn.SparseLinear.from_dense(torch.nn.Linear(8, 8), activation="relu")
        >>> model = torch.nn.Sequential(lin(), torch.nn.Identity(), lin())
        >>> sparsekit.nn.fuse_sequentials(model), type(model).__name__
        ([''], 'SparseSequential')
    """
    names = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Sequential and any(type(s) is _Run for s in _plan(tuple(mod._modules.values()))):
            mod.__class__ = SparseSequential
            names.append(name)
    return names

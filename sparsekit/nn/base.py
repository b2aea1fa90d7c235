"""The base class of sparsekit's sparse layers: buffers, input checks, the compiled kernel,
pickling, ``state_dict`` loading and the metadata :func:`sparsekit.save` writes per layer.

Also the helpers every sparse layer shares: :data:`ACTIVATIONS`, :func:`effective_weight`
and the fast-path predicates (:func:`plain_f32_cpu`, :data:`is_compiling`, :data:`jit_tracing`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from sparsekit import ops
from sparsekit._runtime import _core
from sparsekit.formats import BLOCK_SIDES, SparseMatrix
from sparsekit.kernels import check_bias

__all__ = ["SparseModule", "effective_weight", "plain_f32_cpu", "format_density", "ACTIVATIONS",
           "is_compiling", "jit_tracing"]

#: Activation names the sparse layers fuse (the keys of :data:`sparsekit.ops.ACTIVATION_CODES`).
ACTIVATIONS = tuple(ops.ACTIVATION_CODES)
#: ``torch.compile`` / ``torch.export`` is tracing the caller (the fast paths then step aside).
is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
#: ``torch.jit.trace`` is tracing the caller (the C call behind ``torch.jit.is_tracing``, same answer).
jit_tracing = getattr(torch._C, "_is_tracing", None) or torch.jit.is_tracing
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


def plain_f32_cpu(x: Any) -> bool:
    """A plain (not subclassed) float32 dense CPU tensor: what the eager kernels take as is.

    ``SparseLinear.forward`` spells the same test inline (its batch-1 path is timed).

    Example:
        >>> import torch
        >>> plain_f32_cpu(torch.ones(2)), plain_f32_cpu(torch.ones(2, dtype=torch.float64))
        (True, False)
    """
    return type(x) is Tensor and x.dtype is _F32 and x.is_cpu and x.layout is _STRIDED


def format_density(d: float) -> str:
    """A density for a layer's repr: three decimals, or scientific notation below 0.001.

    Example:
        >>> format_density(0.25), format_density(0.00002)
        ('0.250', '2.0e-05')
    """
    return f"{d:.3f}" if d >= 0.001 or d == 0 else f"{d:.1e}"


def _meta_ints(v: Any, n: int, what: str, minimum: int = 0) -> Tuple[int, ...]:
    """``v`` from an untrusted file as a tuple of ``n`` ints >= ``minimum``."""
    if (not isinstance(v, list) or len(v) != n
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= minimum for s in v)):
        raise ValueError(f"{what} must be a list of {n} ints >= {minimum}, got {v!r}")
    return tuple(v)


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
    #: The buffers that hold the layer's weight and bias, in ``state_dict`` and file order.
    BUFFERS = ("weight_indptr", "weight_indices", "weight_values", "bias")
    _meta_ints = staticmethod(_meta_ints)  # for the subclasses' check_file_meta

    def _set_weight(self, weight: SparseMatrix, bias: Optional[Tensor], activation: Optional[str]) -> None:
        if not isinstance(weight, SparseMatrix):
            raise TypeError(f"weight must be a sparsekit.SparseMatrix, got {type(weight).__name__}")
        self._act = ops.activation_code(activation)
        self.activation = activation
        self._rows, self._cols = weight.shape
        self._block = weight.block
        self.register_buffer("weight_indptr", torch.from_numpy(np.array(weight.indptr, copy=True)))
        self.register_buffer("weight_indices", ops.index_tensor(weight.indices))
        self.register_buffer("weight_values", torch.from_numpy(np.array(weight.values, copy=True)))
        self.register_buffer("bias", check_bias(bias, self._rows, cast=True))
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
        self._check_weight_storage()

    def _check_weight_storage(self) -> None:
        """Raises when the weight values are no longer float32 on the CPU (someone replaced or
        moved the buffer behind ``_apply``'s back); the kernels read them as float32."""
        v = self._buffers["weight_values"]
        if v.dtype != torch.float32 or not v.is_cpu:
            raise TypeError(f"{type(self).__name__}: weight buffers were moved to {v.dtype} on "
                            f"{v.device}; sparse layers hold float32 CPU weights only")

    def _fast(self, x: Any) -> bool:
        """True when the eager fast path applies: a plain valid input, not tracing, no autograd."""
        return (plain_f32_cpu(x) and not (_grad_enabled() and (self.training or x.requires_grad))
                and not is_compiling() and not jit_tracing())

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
        self._check_weight_storage()
        kernel = ops.make_kernel(ip, ix, v, bias, self._rows, self._cols, act)
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
            self._buffers["weight_indices"] = ops.index_tensor(ix.numpy().astype(np.uint16))

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
        keys = {k: prefix + k for k in self.BUFFERS}
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


    # ------------------------------------------------------------ file metadata
    # What sparsekit.save writes next to a layer's tensors, and how sparsekit.load checks it
    # and rebuilds the layer. Subclasses extend each method with their own geometry; the key
    # order is the on-disk order, so it never changes.
    def file_meta(self) -> Dict[str, Any]:
        """The layer's description in a saved file (JSON-ready): type, logical shape, block,
        activation, whether it has a bias, and the index dtype.

        Example:
            >>> import torch, sparsekit
            >>> layer = sparsekit.nn.SparseLinear.from_dense(torch.nn.Linear(4, 2), activation="relu")
            >>> layer.file_meta()["shape"], layer.file_meta()["activation"]
            ([2, 4], 'relu')
        """
        return {"type": type(self).__name__, "shape": [self._rows, self._cols], "block": list(self.block),
                "activation": self.activation, "bias": self.bias is not None, "index_dtype": self.index_dtype}

    @classmethod
    def check_file_meta(cls, meta: Dict[str, Any], where: str) -> Dict[str, Any]:
        """Validate :meth:`file_meta` read back from an untrusted file; returns it with lists
        as tuples. ``where`` names the layer in the ``ValueError``.

        Example:
            >>> import torch, sparsekit
            >>> from sparsekit.nn import SparseLinear
            >>> meta = SparseLinear.from_dense(torch.nn.Linear(4, 2)).file_meta()
            >>> SparseLinear.check_file_meta(meta, "layer")["block"]
            (1, 1)
        """
        shape = cls._meta_ints(meta.get("shape"), 2, f"{where}: shape")
        block = cls._meta_ints(meta.get("block"), 2, f"{where}: block", 1)
        if any(s not in BLOCK_SIDES for s in block):
            raise ValueError(f"{where}: block sides must be in {BLOCK_SIDES}, got {block}")
        if "activation" not in meta or meta["activation"] not in ACTIVATIONS:
            raise ValueError(f"{where}: activation {meta.get('activation')!r} is not one of {ACTIVATIONS}")
        if not isinstance(meta.get("bias"), bool):
            raise ValueError(f"{where}: bias must be true or false")
        if meta.get("index_dtype") not in ("uint16", "int32"):
            raise ValueError(f"{where}: index_dtype must be 'uint16' or 'int32'")
        return dict(type=meta["type"], shape=shape, block=block, activation=meta["activation"], bias=meta["bias"],
                    index_dtype=meta["index_dtype"])

    @classmethod
    def check_load_target(cls, target: nn.Module, meta: Dict[str, Any], where: str) -> None:
        """Raise ``ValueError`` unless ``target`` (the model's module, dense or sparse) can be
        replaced by a layer built from ``meta`` (checked by :meth:`check_file_meta`).

        Example:
            >>> import torch, sparsekit
            >>> from sparsekit.nn import SparseLinear
            >>> meta = SparseLinear.check_file_meta(
            ...     SparseLinear.from_dense(torch.nn.Linear(4, 2)).file_meta(), "layer")
            >>> SparseLinear.check_load_target(torch.nn.Linear(4, 2), meta, "layer")
        """
        raise NotImplementedError(f"{cls.__name__} is not stored in files")

    @classmethod
    def from_file_meta(cls, meta: Dict[str, Any], weight: SparseMatrix,
                       bias: Optional[Tensor]) -> "SparseModule":
        """The layer ``meta`` (checked by :meth:`check_file_meta`) describes, on ``weight`` and ``bias``.

        Example:
            >>> import torch, sparsekit
            >>> from sparsekit.nn import SparseLinear
            >>> layer = SparseLinear.from_dense(torch.nn.Linear(4, 2))
            >>> meta = SparseLinear.check_file_meta(layer.file_meta(), "layer")
            >>> SparseLinear.from_file_meta(meta, layer.sparse_weight, layer.bias)
            SparseLinear(in_features=4, out_features=2, bias=True, block=(1, 1), density=1.000)
        """
        raise NotImplementedError(f"{cls.__name__} is not stored in files")

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

Modules: :mod:`~sparsekit.nn.base` (``SparseModule``, shared checks and file metadata),
:mod:`~sparsekit.nn.linear`, :mod:`~sparsekit.nn.conv`, :mod:`~sparsekit.nn.sequential`.
"""

from __future__ import annotations

from typing import Dict, Type

from sparsekit.nn.base import ACTIVATIONS, SparseModule, effective_weight
from sparsekit.nn.conv import SparseConv1d, SparseConv2d
from sparsekit.nn.linear import SparseLinear
from sparsekit.nn.sequential import SparseSequential, fuse_sequentials

__all__ = ["SparseModule", "SparseLinear", "SparseConv1d", "SparseConv2d", "SparseSequential", "fuse_sequentials",
           "effective_weight", "ACTIVATIONS", "LAYER_TYPES"]

#: The sparse layer classes a saved file may name, by the ``type`` in their file metadata.
LAYER_TYPES: Dict[str, Type[SparseModule]] = {cls.__name__: cls for cls in (SparseLinear, SparseConv2d, SparseConv1d)}

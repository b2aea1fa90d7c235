"""Quantized candidates for ``convert(quantize=...)``: which int8 / 16-bit versions of a layer
exist, how each is built, and the accuracy guard that keeps a layer float32 when
quantization moves its output by more than a tolerance.

:mod:`sparsekit.layer_choice` times these candidates beside the float32 ones; this module
only says what they are and whether they are accurate enough.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["QUANTIZE_MODES", "DEFAULT_TOLERANCE", "Candidate", "check_quantize", "check_tolerance",
           "float_candidate", "quantized_candidates", "learned_scales", "relative_error",
           "torch_dynamic_linear"]

#: What ``convert(quantize=...)`` accepts: None (float32 values), "weights" (int8 values,
#: float activations), "dynamic" (int8 values, activations quantized per row on the fly),
#: "float16" / "bfloat16" (16-bit values widened in registers).
QUANTIZE_MODES = (None, "weights", "dynamic", "float16", "bfloat16")
#: Largest relative RMS change of a layer's output a quantized version may make
#: (``||y_q - y|| / ||y||`` on the layer's example or probe input) before the layer stays float32.
DEFAULT_TOLERANCE = 1e-2
# Dynamic int8 candidates may store up to this fraction of the weight (zeros filling the
# 4-wide column groups its integer kernels need): four multiply-adds per instruction pay
# for more fill than float32 blocks can.
_DYNAMIC_MAX_STORED = 0.9


@dataclass(frozen=True)
class Candidate:
    """One way to store a layer: ``block`` None is torch's own dense dynamic-int8 Linear.

    Example:
        >>> from sparsekit.value_choice import Candidate
        >>> Candidate((1, 4), "int8", True).label
        'bsr1x4/int8-dynamic'
    """

    block: Optional[Tuple[int, int]]
    values: str = "float32"
    dynamic: bool = False

    @property
    def label(self) -> str:
        """``csr``, ``bsr4x1``, ``csr/int8``, ``bsr1x4/int8-dynamic``, ``dense/int8-dynamic``..."""
        if self.block is None:
            fmt = "dense"
        else:
            fmt = "csr" if tuple(self.block) == (1, 1) else f"bsr{self.block[0]}x{self.block[1]}"
        if self.values == "float32":
            return fmt
        return f"{fmt}/{self.values}" + ("-dynamic" if self.dynamic else "")

    @property
    def values_label(self) -> str:
        """What a report prints in its values column: ``float32``, ``int8``, ``int8 dynamic``..."""
        return self.values + (" dynamic" if self.dynamic else "")


def check_quantize(quantize: Any) -> Optional[str]:
    """``quantize`` checked against :data:`QUANTIZE_MODES`.

    Example:
        >>> from sparsekit.value_choice import check_quantize
        >>> check_quantize("weights"), check_quantize(None)
        ('weights', None)
    """
    if quantize is not None and (not isinstance(quantize, str) or quantize not in QUANTIZE_MODES):
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    return quantize


def check_tolerance(tolerance: Any) -> float:
    """``quantize_tolerance`` checked: a finite number > 0.

    Example:
        >>> from sparsekit.value_choice import check_tolerance
        >>> check_tolerance(0.02)
        0.02
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not (
            math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"quantize_tolerance must be a finite number > 0, got {tolerance!r}")
    return float(tolerance)


def float_candidate(block: Tuple[int, int]) -> Candidate:
    """The float32 candidate for a block shape.

    Example:
        >>> from sparsekit.value_choice import float_candidate
        >>> float_candidate((4, 1)).label
        'bsr4x1'
    """
    return Candidate(tuple(block))


def _stored_fraction(w2d: np.ndarray, block: Tuple[int, int]) -> float:
    rows, cols = w2d.shape
    r, c = block
    pad = np.zeros((-(-rows // r) * r, -(-cols // c) * c), dtype=bool)
    pad[:rows, :cols] = w2d != 0
    kept = pad.reshape(pad.shape[0] // r, r, pad.shape[1] // c, c).any(axis=(1, 3)).sum()
    return float(kept) * r * c / max(1, rows * cols)


def quantized_candidates(mode: Optional[str], kind: str, w2d: np.ndarray,
                         float_blocks: Sequence[Tuple[int, int]]) -> List[Candidate]:
    """The quantized candidates ``format="auto"`` times for one layer under ``mode``.

    "weights", "float16", "bfloat16": the float32 candidates' blocks with those values.
    "dynamic" (linear layers): each float block widened to a multiple of 4 columns (the
    integer kernels take 4 columns of a row per instruction) while it stores at most 90%
    of the weight, plus torch's dense dynamic-int8 ``Linear``; convolutions get int8
    weights with float activations instead (the dynamic kernels are for the linear layout).

    Example:
        >>> import numpy as np
        >>> from sparsekit.value_choice import quantized_candidates
        >>> w = np.zeros((8, 8), np.float32); w[::2, ::3] = 1
        >>> [c.label for c in quantized_candidates("dynamic", "Linear", w, [(1, 1)])]
        ['bsr1x4/int8-dynamic', 'dense/int8-dynamic']
    """
    if mode is None:
        return []
    if mode in ("float16", "bfloat16"):
        return [Candidate(tuple(b), mode) for b in float_blocks]
    if mode == "weights" or kind != "Linear":
        return [Candidate(tuple(b), "int8") for b in float_blocks]
    out: List[Candidate] = []
    for r, c in float_blocks:
        wide = (r, max(4, c))
        cand = Candidate(wide, "int8", True)
        if cand not in out and w2d.shape[1] >= 4 and _stored_fraction(w2d, wide) <= _DYNAMIC_MAX_STORED:
            out.append(cand)
    out.append(Candidate(None, "int8", True))
    return out


def learned_scales(module: nn.Module) -> Optional[Tensor]:
    """The per-row int8 scales quantization-aware training left on a layer
    (``sparsekit_weight_scale``), or None.

    Example:
        >>> import torch
        >>> from sparsekit.value_choice import learned_scales
        >>> learned_scales(torch.nn.Linear(2, 2)) is None
        True
    """
    s = getattr(module, "sparsekit_weight_scale", None)
    return s.detach().to(torch.float32).reshape(-1) if isinstance(s, Tensor) else None


def relative_error(reference: Tensor, out: Tensor) -> float:
    """``||out - reference|| / ||reference||`` in float64 (inf when ``out`` is not finite
    where ``reference`` is; 0 for two all-zero outputs).

    Example:
        >>> import torch
        >>> from sparsekit.value_choice import relative_error
        >>> round(relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])), 3)
        0.1
    """
    ref = reference.detach().to(torch.float64)
    diff = out.detach().to(torch.float64) - ref
    if not bool(torch.isfinite(diff[torch.isfinite(ref)]).all()):
        return math.inf
    finite = torch.isfinite(ref) & torch.isfinite(diff)
    num = float(torch.linalg.vector_norm(diff[finite]))
    den = float(torch.linalg.vector_norm(ref[finite]))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def torch_dynamic_linear(weight: Tensor, bias: Optional[Tensor], activation: Optional[str]) -> nn.Module:
    """torch's dense dynamic-int8 ``Linear`` (``quantize_dynamic``, per-channel weights), the
    contender sparsekit's int8 layers must beat; followed by the activation when one is fused.

    Example:
        >>> import torch
        >>> from sparsekit.value_choice import torch_dynamic_linear
        >>> m = torch_dynamic_linear(torch.randn(4, 8), None, "relu")
        >>> bool((m(torch.randn(2, 8)) >= 0).all())
        True
    """
    rows, cols = weight.shape
    lin = nn.Linear(cols, rows, bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch 2.13 deprecates quantize_dynamic in favour of torchao
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear: qconfig}, dtype=torch.qint8)
    layers: List[nn.Module] = [q[0]]
    if activation == "relu":
        layers.append(nn.ReLU())
    elif activation == "gelu":
        layers.append(nn.GELU())
    return (layers[0] if len(layers) == 1 else nn.Sequential(*layers)).eval()

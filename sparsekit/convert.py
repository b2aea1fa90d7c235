"""Turn a pruned model into one whose Linear/Conv layers run on sparsekit's kernels.

:func:`convert` walks the module tree and replaces layers; which format each layer gets is
:mod:`sparsekit.layer_choice`'s job, the report is :mod:`sparsekit.conversion_report`'s, and
the copy it works on (``inplace=False``) comes from :mod:`sparsekit.model_copy`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sparsekit.conversion_report import ConversionReport, LayerDecision
from sparsekit.format_timing import clear_timing_cache
from sparsekit.formats import BLOCK_SIDES
from sparsekit.layer_choice import (  # noqa: F401  (AUTO_* and DEFAULT_* stay importable from here)
    AUTO_BLOCKS,
    AUTO_MAX_DENSITY,
    DEFAULT_BATCH_SIZES,
    DEFAULT_CONV1D_L,
    DEFAULT_CONV2D_HW,
    ChoiceSettings,
    FormatSpec,
    LayerToConvert,
    choose_format,
)
from sparsekit.model_copy import SharedTensors, copy_sharing_layers
from sparsekit.nn import SparseModule, effective_weight, fuse_sequentials
from sparsekit.value_choice import DEFAULT_TOLERANCE, check_quantize, check_tolerance

__all__ = ["convert", "ConversionReport", "LayerDecision", "clear_timing_cache"]


# ----------------------------------------------------------------------- format parsing
def _parse_one(spec: Any, where: str) -> FormatSpec:
    if isinstance(spec, str):
        s = spec.lower()
        if s not in ("auto", "dense", "csr"):
            raise ValueError(f"{where} must be 'auto', 'dense', 'csr' or a block (r, c), got {spec!r}")
        return s
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in spec):
        r, c = int(spec[0]), int(spec[1])
        if r not in BLOCK_SIDES or c not in BLOCK_SIDES:
            raise ValueError(f"{where}: block sides must each be one of {BLOCK_SIDES}, got {(r, c)}")
        return "csr" if (r, c) == (1, 1) else (r, c)
    raise TypeError(f"{where} must be 'auto', 'dense', 'csr', a block (r, c) or (for format) a dict, "
                    f"got {spec!r}")


def _parse_format(fmt: Any) -> Callable[[str], FormatSpec]:
    if isinstance(fmt, Mapping):
        rules = []
        for key, value in fmt.items():
            if not isinstance(key, str):
                raise TypeError(f"format dict keys must be layer names or patterns (str), got {key!r}")
            rules.append((key, _parse_one(value, f"format[{key!r}]")))

        def lookup(name: str) -> FormatSpec:
            for key, value in rules:
                if key == name:
                    return value
            for key, value in rules:
                if fnmatch.fnmatchcase(name, key):
                    return value
            return "auto"
        return lookup
    one = _parse_one(fmt, "format")
    return lambda name: one


def _settings(index_dtype: Any, batch_sizes: Any, max_block_overhead: Any, time_budget_s: Any,
              min_speedup: Any) -> ChoiceSettings:
    """The checked measuring arguments of :func:`convert` (``shapes`` comes later)."""
    if index_dtype not in ("auto", "uint16", "int32"):
        raise ValueError(f"index_dtype must be 'auto', 'uint16' or 'int32', got {index_dtype!r}")
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not all(
            isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1 for b in batch_sizes):
        raise TypeError(f"batch_sizes must be a sequence of positive ints, got {batch_sizes!r}")
    if not isinstance(max_block_overhead, numbers.Real) or max_block_overhead < 1:
        raise ValueError(f"max_block_overhead must be a number >= 1, got {max_block_overhead!r}")
    if not isinstance(time_budget_s, numbers.Real) or not 0 < time_budget_s <= 10:
        raise ValueError(f"time_budget_s must be in (0, 10], got {time_budget_s!r}")
    if isinstance(min_speedup, bool) or not isinstance(min_speedup, numbers.Real) or min_speedup < 1:
        raise ValueError(f"min_speedup must be a number >= 1, got {min_speedup!r}")
    return ChoiceSettings(tuple(int(b) for b in batch_sizes), index_dtype, float(time_budget_s),
                          float(max_block_overhead), float(min_speedup))


# --------------------------------------------------------------------------- layer facts
def _layer_kind(m: nn.Module) -> Optional[str]:
    if isinstance(m, SparseModule):
        return None
    if isinstance(m, nn.Linear):
        return "Linear"
    if isinstance(m, nn.Conv2d):
        return "Conv2d"
    if isinstance(m, nn.Conv1d):
        return "Conv1d"
    return None


def _is_layer(m: nn.Module) -> bool:
    return _layer_kind(m) is not None


def _module_bytes(m: nn.Module) -> int:
    """Bytes of the float32 weight and bias the layer's forward uses (masks applied).

    Computed from shapes: materialising the masked weights here would hold another dense
    copy of the layer next to the one being converted.
    """
    if isinstance(m, SparseModule):
        return 0
    total = 0
    for name in ("weight", "bias"):
        orig, mask = getattr(m, name + "_orig", None), getattr(m, name + "_mask", None)
        t = orig if isinstance(orig, Tensor) and isinstance(mask, Tensor) else getattr(m, name, None)
        if t is not None:
            total += t.numel() * 4  # effective_weight is float32
    return total


def _stored_weight(layer: nn.Module) -> Optional[Tensor]:
    """The tensor holding the layer's weight (``weight_orig`` under ``torch.nn.utils.prune``),
    or None when it has none yet (lazy layers)."""
    raw = getattr(layer, "weight_orig", None)
    if not isinstance(raw, Tensor):
        raw = getattr(layer, "weight", None)
    usable = isinstance(raw, Tensor) and not isinstance(raw, nn.parameter.UninitializedParameter)
    return raw if usable else None


def _first_decision(name: str, kind: str, layer: nn.Module, raw: Optional[Tensor],
                    w: Optional[Tensor]) -> LayerDecision:
    """The layer's report row as if it stayed dense (``w``: its masked weight, None unless
    it is a float32 CPU tensor)."""
    size = int(raw.numel()) if raw is not None else 0
    nnz = int(torch.count_nonzero(w)) if w is not None else size
    has_dims = raw is not None and raw.dim() > 0
    rows = int(raw.shape[0]) if has_dims else 0
    cols = math.prod(raw.shape[1:]) if has_dims else 0
    dense_bytes = _module_bytes(layer) if w is not None else 0
    density = nnz / size if size else 0.0
    return LayerDecision(name=name, kind=kind, shape=(rows, cols), format="dense", density=density,
                         stored_density=density, dense_bytes=dense_bytes, bytes=dense_bytes)


def _why_dense(kind: str, layer: nn.Module, raw: Optional[Tensor]) -> str:
    """Why ``layer`` stays dense whatever the format, or "" when it can be converted."""
    if raw is None:
        return "uninitialised weight"
    if not (raw.dtype == torch.float32 and raw.device.type == "cpu"):
        return f"{raw.dtype} on {raw.device}: only float32 CPU layers are converted"
    if kind != "Linear" and layer.groups != 1:
        return f"groups={layer.groups} stays dense"
    if kind != "Linear" and 0 in (layer.in_channels, layer.out_channels):
        # SparseConv1d/2d need at least one channel each way; nothing to gain anyway.
        return "zero channels stay dense"
    return ""


def _fold_bn(w: Tensor, b: Optional[Tensor], bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding layer's weight and bias."""
    var = bn.running_var.detach().to(torch.float32)
    mean = bn.running_mean.detach().to(torch.float32)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach().to(torch.float32)
        shift = bn.bias.detach().to(torch.float32)
    else:
        shift = torch.zeros_like(mean)
    w = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
    b0 = b if b is not None else torch.zeros_like(mean)
    return w, (b0 - mean) * scale + shift


def _foldable_bn(layer: nn.Module, kind: str, bn: nn.Module) -> bool:
    want = nn.BatchNorm2d if kind == "Conv2d" else nn.BatchNorm1d
    return (type(bn) is want and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == layer.weight.shape[0])


def _activation_of(m: nn.Module) -> Optional[str]:
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.GELU and m.approximate == "none":
        return "gelu"
    return None


# Rows of a layer's example input kept for the quantization accuracy guard.
_SAMPLE_ROWS = 512


def _record_inputs(model: nn.Module, example_inputs: Any, keep: bool
                   ) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, Tensor]]:
    """Each layer's first input shape, and (``keep``) the input itself: at most
    ``_SAMPLE_ROWS`` rows of a linear layer's input, or the first images of a convolution's."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    samples: Dict[str, Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if _is_layer(mod):
            def hook(m, args, name=name):
                if args and isinstance(args[0], Tensor) and name not in shapes:
                    x = args[0]
                    shapes[name] = tuple(x.shape)
                    if keep and x.dtype == torch.float32 and x.dim() >= 2:
                        if isinstance(m, nn.Linear):
                            x = x.reshape(-1, x.shape[-1])[:_SAMPLE_ROWS]
                        else:
                            x = x[:max(1, _SAMPLE_ROWS // max(1, math.prod(x.shape[2:])))]
                        samples[name] = x.detach().clone()
            handles.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            if isinstance(example_inputs, Mapping):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes, samples


# --------------------------------------------------------------------------- replacement
class _Absorbed(NamedTuple):
    """A layer's weight and bias after folding the modules that follow it, and what it took in."""

    weight: Tensor
    bias: Optional[Tensor]
    folded: Optional[str]
    activation: Optional[str]
    count: int


class _Converter:
    """Walks a module tree and replaces its layers, one report row per layer met."""

    def __init__(self, root: nn.Module, lookup: Callable[[str], FormatSpec], settings: ChoiceSettings,
                 fuse: bool, fold_bn: bool) -> None:
        self.lookup = lookup
        self.settings = settings
        self.fuse = fuse
        self.fold_bn = fold_bn
        self.decisions: List[LayerDecision] = []
        self.replaced: Dict[int, nn.Module] = {}  # id(layer) -> its replacement (a layer met twice)
        self.uses: Dict[int, int] = {}
        for mod in root.modules():  # a layer reachable twice must not absorb its neighbours
            for child in mod._modules.values():
                if child is not None:
                    self.uses[id(child)] = self.uses.get(id(child), 0) + 1

    def run(self, root: nn.Module) -> nn.Module:
        """The converted ``root``: itself, changed, or its replacement when it is a bare layer."""
        if not _is_layer(root):
            self.walk(root, "")
            return root
        new, _ = self.handle("", root, [])
        return new if new is not None else root

    def walk(self, parent: nn.Module, prefix: str) -> None:
        """Replace the layers below ``parent`` (and the modules they absorb) in place."""
        if isinstance(parent, nn.MultiheadAttention):
            return
        names = list(parent._modules.keys())
        seq = isinstance(parent, nn.Sequential)
        i = 0
        while i < len(names):
            key = names[i]
            child = parent._modules[key]
            full = f"{prefix}{key}"
            if child is None:
                i += 1
                continue
            if _is_layer(child):
                shared = self.uses.get(id(child), 0) > 1
                follow = [parent._modules[k] for k in names[i + 1:i + 3]] if seq and not shared else []
                follow = [f for f in follow if f is not None]
                new, absorbed = self.handle(full, child, follow)
                if new is not None:
                    parent._modules[key] = new
                    for k in names[i + 1:i + 1 + absorbed]:
                        parent._modules[k] = nn.Identity()
                i += 1 + absorbed
                continue
            self.walk(child, full + ".")
            i += 1

    def handle(self, name: str, layer: nn.Module, follow: Sequence[nn.Module]) -> Tuple[Optional[nn.Module], int]:
        """(replacement, or None to keep ``layer``; how many of the ``follow`` modules it absorbed)."""
        if id(layer) in self.replaced:
            return self.replaced[id(layer)], 0
        kind = _layer_kind(layer)
        raw = _stored_weight(layer)
        convertible = raw is not None and raw.dtype == torch.float32 and raw.device.type == "cpu"
        w = effective_weight(layer, "weight") if convertible else None
        decision = _first_decision(name, kind, layer, raw, w)
        self.decisions.append(decision)
        decision.reason = _why_dense(kind, layer, raw)
        if decision.reason:
            return None, 0
        absorbed = self.absorb(kind, layer, w, effective_weight(layer, "bias"), follow)
        choice = choose_format(LayerToConvert(name, kind, layer, absorbed.weight, absorbed.bias,
                                              absorbed.activation, decision.density,
                                              folded=absorbed.folded is not None),
                               self.lookup(name), self.settings)
        decision.reason, decision.times_ms = choice.reason, choice.times_ms
        if choice.module is None:
            return None, 0
        decision.format = choice.format
        decision.index_dtype = choice.index_dtype
        decision.stored_density = choice.stored_density
        decision.activation = absorbed.activation
        decision.folded = absorbed.folded
        decision.speedup = choice.speedup
        decision.bytes = choice.bytes if choice.bytes is not None else choice.module.nbytes
        decision.values = choice.values
        decision.error = choice.error
        self.replaced[id(layer)] = choice.module
        return choice.module, absorbed.count

    def absorb(self, kind: str, layer: nn.Module, w: Tensor, bias: Optional[Tensor],
               follow: Sequence[nn.Module]) -> _Absorbed:
        """Fold a following BatchNorm (``fold_bn``) and take in the activation after it (``fuse``)."""
        count, folded = 0, None
        if self.fold_bn and follow and _foldable_bn(layer, kind, follow[0]):
            w, bias = _fold_bn(w, bias, follow[0])
            folded = type(follow[0]).__name__
            count = 1
        act = None
        if self.fuse and len(follow) > count:
            act = _activation_of(follow[count])
            if act is not None:
                count += 1
        return _Absorbed(w, bias, folded, act, count)


def convert(model: nn.Module, format: Any = "auto", inplace: bool = False, quantize: Optional[str] = None, *,
            example_inputs: Any = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
            fuse: bool = True, fold_bn: bool = True, index_dtype: str = "auto",
            max_block_overhead: float = 1.25, time_budget_s: float = 0.03,
            min_speedup: float = 1.1, quantize_tolerance: float = DEFAULT_TOLERANCE) -> nn.Module:
    """Replace the Linear / Conv2d / Conv1d layers of a (pruned) model with sparse inference layers.

    Every ``nn.Linear``, ``nn.Conv2d`` and ``nn.Conv1d`` (groups=1) is considered, anywhere
    in the module tree (children of ``nn.MultiheadAttention`` are left alone: it reads their
    weights directly). Masks from ``torch.nn.utils.prune`` and ``sparsekit.prune`` are
    applied (the effective weight is what gets stored). Everything else is untouched.

    Args:
        model: any ``nn.Module`` (a bare layer works too: the replacement is returned).
        format: per layer storage.
            ``"auto"``: time dense and every admissible sparse format on this CPU for the
            layer's shape (CSR, and block shapes from ``AUTO_BLOCKS`` whose stored values
            are at most ``max_block_overhead`` times CSR's) at every measured batch size,
            and keep the fastest sparse format only if it beats dense by ``min_speedup``
            at *all* of them, in the shared run and again in a fresh run on that layer;
            layers denser than ``AUTO_MAX_DENSITY`` stay dense untimed. Timings are
            cached per process (key: format, shape, density, threads, SIMD level, input
            shape).
            ``"csr"``, ``(r, c)`` or ``"dense"``: that format for every layer, untimed.
            A dict ``{name or fnmatch pattern: format}`` sets layers individually
            (exact names first, then patterns in order; unmatched layers use "auto").
        inplace: modify ``model`` itself instead of a deep copy. The copy shares no memory
            with ``model``, yet is built without duplicating the layers about to be replaced:
            beyond the model and the result, conversion holds one layer's dense and sparse
            weights at a time ("auto" builds and times its candidates one by one).
        quantize: the stored values. None: float32. ``"weights"``: int8 (symmetric, a float32
            scale per output row; the scales quantization-aware training left in
            ``sparsekit_weight_scale`` when a layer has them), float activations.
            ``"dynamic"``: int8 weights and, in linear layers, activations quantized per
            row on the fly with int32 accumulation (like ``torch.ao.quantization.
            quantize_dynamic``); "auto" also times torch's own dense dynamic-int8 Linear
            and sparse int8 blocks four columns wide; convolutions get int8 weights.
            ``"float16"`` / ``"bfloat16"``: 16-bit values. Every quantized layer is checked
            first: on its input from ``example_inputs`` (or a seeded random probe), a
            version whose output moves by more than ``quantize_tolerance`` (relative RMS)
            is not used, and the layer stays float32 (the report says so).
        example_inputs: an input (a tensor, a tuple of positional args or a dict of
            keyword args) run once through the model to learn each layer's real input
            shape; the rows it shows are timed besides ``batch_sizes``. With ``quantize``
            the layers' inputs are kept for the accuracy check (at most 512 rows each).
        batch_sizes: batch sizes timed by "auto" (rows for linear layers; images for
            convolutions, at the example's spatial size or 16x16 / length 64).
        fuse: inside ``nn.Sequential``, fuse a following ``nn.ReLU`` / ``nn.GELU()``
            (exact) into the sparse layer (it becomes ``nn.Identity``), and make each
            ``nn.Sequential`` holding consecutive sparse linear layers a
            :class:`sparsekit.nn.SparseSequential`, which runs them in one call.
        fold_bn: inside ``nn.Sequential``, fold a following eval-mode BatchNorm into a
            layer that becomes sparse (the BatchNorm becomes ``nn.Identity``).
        index_dtype: "auto" (uint16 column indices when they fit, else int32), "uint16"
            or "int32".
        max_block_overhead: how many more stored values than CSR a block format may
            carry to be considered by "auto".
        time_budget_s: about how long one timing (one format, one batch size) may take.
        min_speedup: how much faster than dense (measured) a sparse format must be for
            "auto" to pick it; the margin absorbs timing noise on busy machines.
        quantize_tolerance: the largest relative RMS change of a layer's output that a
            quantized version may cause (default 1e-2).

    Returns:
        The converted model in eval mode, with ``model.sparsekit_summary`` holding a
        :class:`ConversionReport` (layer, format, density, bytes, measured speedup).

    Example:
        >>> import torch, sparsekit
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> with torch.no_grad():
        ...     for layer in (model[0], model[2]):
        ...         _ = layer.weight.mul_(torch.rand_like(layer.weight) > 0.9)
        >>> fast = sparsekit.convert(model, format="csr")
        >>> type(fast[0]).__name__, fast[0].activation, type(fast[1]).__name__
        ('SparseLinear', 'relu', 'Identity')
        >>> print(fast.sparsekit_summary)  # doctest: +ELLIPSIS
        layer  type    shape  format  density  ...
        ...
        >>> x = torch.randn(2, 64)
        >>> with torch.no_grad():
        ...     torch.allclose(fast(x), model(x), atol=1e-5)
        True
    """
    # Over 80 lines only because the docstring above is the reference for every argument.
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    lookup = _parse_format(format)
    settings = _settings(index_dtype, batch_sizes, max_block_overhead, time_budget_s, min_speedup)
    settings = dataclasses.replace(settings, quantize=check_quantize(quantize),
                                   tolerance=check_tolerance(quantize_tolerance))
    sharing: Optional[SharedTensors] = None
    if inplace:
        work = model
    else:
        work, sharing = copy_sharing_layers(model, _is_layer)
    work.eval()
    shapes, samples = (_record_inputs(work, example_inputs, keep=quantize is not None)
                       if example_inputs is not None else ({}, {}))
    if not batch_sizes and not shapes:
        raise ValueError("batch_sizes is empty and no example_inputs were given: nothing to time")
    converter = _Converter(work, lookup, dataclasses.replace(settings, shapes=shapes, samples=samples),
                           fuse, fold_bn)
    result = converter.run(work)
    decisions = converter.decisions
    del work, converter  # a replaced copied layer must not look alive to unshare()
    if sharing is not None and sharing.tensors:
        sharing.unshare(result)
    fused = fuse_sequentials(result) if fuse else []
    result.eval()
    result.sparsekit_summary = ConversionReport(decisions, fused)
    return result

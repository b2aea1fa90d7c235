"""Which storage one layer gets (dense, CSR or a block format; float32 or quantized
values), by rule or by measurement.

``format="auto"`` goes in four steps: the *candidates* the weights allow, their *timing*
against dense on this CPU, the *pick* of the fastest that beats dense everywhere, and a
fresh run that must *confirm* it. At most one sparse candidate exists at a time (besides
the dense weight): each is built, timed and let go; only the winner is rebuilt. With
``quantize``, the quantized candidates of :mod:`sparsekit.value_choice` join them, each
first checked for accuracy on the layer's input (one over the tolerance is not timed).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from sparsekit._runtime import get_num_threads, simd_level
from sparsekit.format_timing import best_seconds, cached_best_seconds
from sparsekit.formats import SparseMatrix, block_row_chunks
from sparsekit.nn import SparseConv1d, SparseConv2d, SparseLinear
from sparsekit.value_choice import (
    DEFAULT_TOLERANCE,
    Candidate,
    float_candidate,
    learned_scales,
    quantized_candidates,
    relative_error,
    torch_dynamic_linear,
)

__all__ = ["FormatSpec", "AUTO_BLOCKS", "AUTO_MAX_DENSITY", "DEFAULT_BATCH_SIZES", "DEFAULT_CONV2D_HW",
           "DEFAULT_CONV1D_L", "ChoiceSettings", "LayerToConvert", "LayerChoice", "format_label",
           "choose_format"]

#: "dense", "csr", "auto" or a block shape (r, c).
FormatSpec = Union[str, Tuple[int, int]]

# Block shapes "auto" tries besides CSR (each only if the weights allow it, see below).
AUTO_BLOCKS = ((2, 1), (4, 1), (8, 1), (1, 2), (1, 4), (1, 8), (2, 2), (4, 4))
# Above this density a CSR layer cannot beat a dense BLAS product; "auto" keeps it dense untimed.
AUTO_MAX_DENSITY = 0.6
# Default probe input when no example_inputs are given.
DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_CONV2D_HW = (16, 16)
DEFAULT_CONV1D_L = 64

Times = Dict[str, Dict[int, float]]  # {"dense" or format label: {batch: seconds per call}}


@dataclass(frozen=True)
class ChoiceSettings:
    """How "auto" measures: the settings of one :func:`sparsekit.convert` call.

    ``shapes`` maps layer names to the input shapes an example input showed, ``samples``
    to the inputs themselves (kept when ``quantize`` is set, for the accuracy guard).

    Example:
        >>> from sparsekit.layer_choice import ChoiceSettings
        >>> ChoiceSettings((1, 32), "auto", 0.03, 1.25, 1.1).shapes
        {}
    """

    batch_sizes: Tuple[int, ...]
    index_dtype: str
    budget_s: float
    max_block_overhead: float
    min_speedup: float
    shapes: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    quantize: Optional[str] = None
    tolerance: float = DEFAULT_TOLERANCE
    samples: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass
class LayerToConvert:
    """One layer as the choice sees it: the original module (for its geometry) and the weight,
    bias and activation its replacement would carry (masks applied, BatchNorm folded).

    ``density`` is the nonzero fraction of the layer's weight; ``folded`` says whether a
    BatchNorm was folded into it (learned int8 scales no longer apply then).

    Example:
        >>> import torch
        >>> from sparsekit.layer_choice import LayerToConvert
        >>> fc = torch.nn.Linear(8, 4)
        >>> LayerToConvert("fc", "Linear", fc, fc.weight.detach(), None, None, 1.0).kind
        'Linear'
    """

    name: str
    kind: str
    module: nn.Module
    weight: Tensor
    bias: Optional[Tensor]
    activation: Optional[str]
    density: float
    folded: bool = False


@dataclass
class LayerChoice:
    """The outcome for one layer: a sparse ``module`` in ``format``, or ``module=None`` (and
    ``format="dense"``) to keep the layer as it is; ``reason`` says why.

    ``block``, ``index_dtype`` and ``stored_density`` describe the sparse weight; ``speedup``
    (dense time / chosen time per batch) and ``times_ms`` (``{format: {batch: ms}}``) what
    "auto" measured. ``values`` is the stored value type ("float32", "int8",
    "int8 dynamic", "float16", "bfloat16"), ``error`` the relative RMS change of the
    layer's output it causes (None for float32), ``bytes`` the weight and bias bytes.

    Example:
        >>> from sparsekit.layer_choice import LayerChoice
        >>> LayerChoice(None, "dense", "format='dense'").times_ms
        {}
    """

    module: Optional[nn.Module]
    format: str
    reason: str
    block: Optional[Tuple[int, int]] = None
    index_dtype: Optional[str] = None
    stored_density: Optional[float] = None
    speedup: Optional[Dict[int, float]] = None
    times_ms: Dict[str, Dict[int, float]] = field(default_factory=dict)
    values: str = "float32"
    error: Optional[float] = None
    bytes: Optional[int] = None


def format_label(block: Tuple[int, int]) -> str:
    """The name of a block shape's format, as reports print it.

    Example:
        >>> from sparsekit.layer_choice import format_label
        >>> format_label((1, 1)), format_label((4, 1))
        ('csr', 'bsr4x1')
    """
    return "csr" if tuple(block) == (1, 1) else f"bsr{block[0]}x{block[1]}"


def choose_format(layer: LayerToConvert, spec: FormatSpec, settings: ChoiceSettings) -> LayerChoice:
    """What ``layer`` becomes under the format ``spec``: "dense" keeps it, "csr" or a block
    (r, c) builds that format untimed, "auto" measures (see the module docstring).

    Example:
        >>> import torch
        >>> from sparsekit.layer_choice import ChoiceSettings, LayerToConvert, choose_format
        >>> fc = torch.nn.Linear(8, 4)
        >>> w = fc.weight.detach() * (torch.rand(4, 8) > 0.8)
        >>> layer = LayerToConvert("fc", "Linear", fc, w, fc.bias.detach(), None, 0.2)
        >>> choice = choose_format(layer, "csr", ChoiceSettings((1,), "auto", 0.01, 1.25, 1.1))
        >>> choice.format, type(choice.module).__name__, choice.reason
        ('csr', 'SparseLinear', 'explicit format')
    """
    w = layer.weight
    w_np = w.reshape(w.shape[0], math.prod(w.shape[1:])).contiguous().numpy()  # -1 is ambiguous with 0 rows
    if spec == "dense":
        return LayerChoice(None, "dense", "format='dense'")
    if spec != "auto":
        return _explicit_choice(layer, w_np, (1, 1) if spec == "csr" else spec, settings)
    if layer.density > AUTO_MAX_DENSITY and settings.quantize != "dynamic":
        return LayerChoice(None, "dense", f"density {layer.density:.2f} > {AUTO_MAX_DENSITY}")
    return _choose_by_measurement(layer, w_np, settings)


def _explicit_choice(layer: LayerToConvert, w_np: np.ndarray, block: Tuple[int, int],
                     settings: ChoiceSettings) -> LayerChoice:
    """``block`` untimed; with ``quantize``, its quantized values unless they move the output
    by more than the tolerance."""
    plain = float_candidate(block)
    wanted = [c for c in quantized_candidates(settings.quantize, layer.kind, w_np, [block])
              if c.block is not None][:1]
    if wanted and settings.quantize == "dynamic":  # the format asked for, not a widened one
        wanted = [Candidate(tuple(block), "int8", True)]
    for cand in wanted:
        built = _build(layer, w_np, cand, settings.index_dtype)
        error = relative_error(_reference(layer, _sample(layer, settings)), _call(built.module, _sample(layer, settings)))
        if error <= settings.tolerance:
            return _sparse_choice(built, "explicit format", error=error)
        return _sparse_choice(_build(layer, w_np, plain, settings.index_dtype),
                              f"{cand.values_label} error {error:.2g} > {settings.tolerance:g}: kept float32")
    return _sparse_choice(_build(layer, w_np, plain, settings.index_dtype), "explicit format")


def _choose_by_measurement(layer: LayerToConvert, w_np: np.ndarray, settings: ChoiceSettings) -> LayerChoice:
    """The "auto" steps: candidates (quantized ones checked for accuracy) -> timing -> pick -> confirm."""
    float_blocks = (_candidate_blocks(w_np, layer.density, settings.max_block_overhead)
                    if layer.density <= AUTO_MAX_DENSITY else [])
    cands = {c.label: c for c in map(float_candidate, float_blocks)}
    accepted, rejected = _accurate_quantized(layer, w_np, float_blocks or [(1, 1)], settings)
    cands.update({label: cand for label, (cand, _) in accepted.items()})
    inputs = _probe_inputs(layer, settings)
    dense = _dense_twin(layer)
    times = _time_candidates(layer, w_np, cands, dense, inputs, settings)
    times_ms = _in_ms(times)
    margin = settings.min_speedup
    label = _pick(times, list(cands), list(inputs), margin)
    note = f" ({'; '.join(rejected)} > {settings.tolerance:g})" if rejected else ""
    if label is None:
        return LayerChoice(None, "dense", f"nothing beat dense by {margin:g}x at every measured batch{note}",
                           times_ms=times_ms)
    built = _build(layer, w_np, cands[label], settings.index_dtype)
    again = _confirm_times(dense, built.module, label, inputs, settings.budget_s)
    # Keep the worse of the shared run's and the fresh run's speedup.
    speedup = {b: min(times["dense"][b] / times[label][b], again["dense"][b] / again[label][b]) for b in inputs}
    times_ms["confirm"] = {b: again[label][b] * 1e3 for b in inputs}
    if any(v < margin for v in speedup.values()):
        return LayerChoice(None, "dense", f"{label} did not confirm a {margin:g}x win on a second run{note}",
                           times_ms=times_ms)
    error = accepted[label][1] if label in accepted else None
    return _sparse_choice(built, "fastest measured, confirmed" + note, speedup, times_ms, error)


def _accurate_quantized(layer: LayerToConvert, w_np: np.ndarray, float_blocks: List[Tuple[int, int]],
                        settings: ChoiceSettings) -> Tuple[Dict[str, Tuple[Candidate, float]], List[str]]:
    """The quantized candidates within the tolerance ({label: (candidate, error)}), and a
    note for each one that is not."""
    accepted: Dict[str, Tuple[Candidate, float]] = {}
    rejected: List[str] = []
    cands = quantized_candidates(settings.quantize, layer.kind, w_np, float_blocks)
    if not cands:
        return accepted, rejected
    x = _sample(layer, settings)
    reference = _reference(layer, x)
    for cand in cands:
        built = _build(layer, w_np, cand, settings.index_dtype)
        error = relative_error(reference, _call(built.module, x))
        del built
        if error <= settings.tolerance:
            accepted[cand.label] = (cand, error)
        else:
            rejected.append(f"{cand.label} error {error:.2g}")
    return accepted, rejected


# ---------------------------------------------------------------------------- building
@dataclass
class _Sparse:
    module: nn.Module
    block: Optional[Tuple[int, int]]  # None: torch's dense dynamic-int8 Linear
    index_dtype: Optional[str]
    stored_density: float
    candidate: Candidate
    bytes: int


def _build(layer: LayerToConvert, w_np: np.ndarray, cand: Candidate, index_dtype: str) -> _Sparse:
    """The module for one candidate, and what its weight looks like.

    The intermediate ``SparseMatrix`` is released on return: only the module's own copy of
    the arrays stays alive.
    """
    src, bias, act = layer.module, layer.bias, layer.activation
    bias_bytes = 4 * int(bias.numel()) if bias is not None else 0
    if cand.block is None:
        rows, cols = w_np.shape
        module = torch_dynamic_linear(layer.weight, bias, act)
        # int8 weights and a float32 scale per row (torch's packing adds buffers of its own).
        return _Sparse(module, None, None, layer.density, cand, rows * cols + 4 * rows + bias_bytes)
    scales = learned_scales(src) if cand.values == "int8" and not layer.folded else None
    if scales is not None and scales.numel() != w_np.shape[0]:
        scales = None
    quant = {} if cand.values == "float32" else {"values": cand.values, "scales": scales}
    m = SparseMatrix.from_dense(w_np, block=cand.block, index_dtype=index_dtype, **quant)
    if layer.kind == "Linear":
        module: nn.Module = SparseLinear(m, bias, act, **({"dynamic": True} if cand.dynamic else {}))
    else:
        cls = SparseConv2d if layer.kind == "Conv2d" else SparseConv1d
        module = cls(m, src.in_channels, src.out_channels, src.kernel_size, src.stride, src.padding,
                     src.dilation, src.padding_mode, bias, act)
    return _Sparse(module, m.block, m.index_dtype, m.density, cand, int(module.nbytes))


def _sparse_choice(built: _Sparse, reason: str, speedup: Optional[Dict[int, float]] = None,
                   times_ms: Optional[Times] = None, error: Optional[float] = None) -> LayerChoice:
    fmt = "dense" if built.block is None else format_label(built.block)
    return LayerChoice(built.module, fmt, reason, built.block, built.index_dtype, built.stored_density,
                       speedup, times_ms or {}, built.candidate.values_label, error, built.bytes)


def _sample(layer: LayerToConvert, settings: ChoiceSettings) -> Tensor:
    """The input the accuracy guard uses: the layer's own from ``example_inputs`` when there
    was one, else the largest seeded probe input."""
    seen = settings.samples.get(layer.name)
    if seen is not None:
        return seen
    probes = _probe_inputs(layer, settings)
    return probes[max(probes)]


def _call(module: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return module(x)


def _reference(layer: LayerToConvert, x: Tensor) -> Tensor:
    """The float32 layer's output on ``x`` (masked weight, folded BatchNorm, activation)."""
    y = _call(_dense_twin(layer), x)
    if layer.activation == "relu":
        return torch.relu(y)
    if layer.activation == "gelu":
        return torch.nn.functional.gelu(y)
    return y


def _dense_twin(layer: LayerToConvert) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Conv{1,2}d`` on the masked weight (shared, not copied): the
    dense side of "auto"'s timings, called like the layer it stands for.

    Both sides are timed as module calls. For batch-1 layers the call overhead is a large
    part of either time and differs between them (``nn.Linear`` looks its parameters up
    through ``nn.Module.__getattr__`` and passes ``Parameter`` subclasses to ``F.linear``);
    timing the dense side as a bare ``F.linear`` on plain tensors kept a 1024 -> 1 head
    dense that ran 5.2 us per call in the model against 4.5 us sparse.
    """
    src, w, bias = layer.module, layer.weight.contiguous(), layer.bias
    with warnings.catch_warnings():  # meta-device init of a zero-size layer warns; it is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if layer.kind == "Linear":
            twin = nn.Linear(src.in_features, src.out_features, bias=bias is not None, device="meta")
        else:
            cls = nn.Conv2d if layer.kind == "Conv2d" else nn.Conv1d
            twin = cls(src.in_channels, src.out_channels, src.kernel_size, stride=src.stride,
                       padding=src.padding, dilation=src.dilation, groups=src.groups,
                       bias=bias is not None, padding_mode=src.padding_mode, device="meta")
    twin.weight = nn.Parameter(w.detach(), requires_grad=False)
    if bias is not None:
        twin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return twin.eval()


# --------------------------------------------------------------------------- the steps
def _stored_fraction(w2d: np.ndarray, block: Tuple[int, int]) -> float:
    rows, cols = w2d.shape
    r, c = block
    kept = 0
    for _, blocks in block_row_chunks(w2d, r, c):  # bounded working memory, no padded copy
        kept += int((blocks != 0).any(axis=(2, 3)).sum())
    return float(kept) * r * c / max(1, rows * cols)


def _candidate_blocks(w_np: np.ndarray, density: float, max_block_overhead: float) -> List[Tuple[int, int]]:
    """CSR, and the blocks of ``AUTO_BLOCKS`` that fit the weight and store at most
    ``max_block_overhead`` times CSR's values (and no more than ``AUTO_MAX_DENSITY``)."""
    candidates = [(1, 1)]
    csr_frac = max(density, 1e-12)
    for blk in AUTO_BLOCKS:
        if w_np.shape[0] >= blk[0] and w_np.shape[1] >= blk[1]:
            frac = _stored_fraction(w_np, blk)
            if frac <= max_block_overhead * csr_frac and frac <= AUTO_MAX_DENSITY:
                candidates.append(blk)
    return candidates


def _probe_inputs(layer: LayerToConvert, settings: ChoiceSettings) -> Dict[int, Tensor]:
    """batch -> the random input this layer is timed on (seeded: the same for every layer)."""
    kind, src = layer.kind, layer.module
    seen = settings.shapes.get(layer.name)
    batches = set(settings.batch_sizes)
    if kind == "Linear":
        if seen is not None:
            batches.add(max(1, math.prod(seen[:-1])))
        shapes = {b: (b, src.in_features) for b in sorted(batches)}
    else:
        if seen is not None and len(seen) == (4 if kind == "Conv2d" else 3):
            spatial = tuple(seen[2:])
            batches.add(seen[0])
        else:
            spatial = DEFAULT_CONV2D_HW if kind == "Conv2d" else (DEFAULT_CONV1D_L,)
        shapes = {b: (b, src.in_channels) + spatial for b in sorted(batches)}
    gen = torch.Generator().manual_seed(0)
    return {b: torch.randn(shape, generator=gen) for b, shape in shapes.items()}


def _geometry(layer: LayerToConvert) -> tuple:
    if layer.kind == "Linear":
        return ()
    src = layer.module
    return (src.kernel_size, src.stride, src.padding, src.dilation, src.padding_mode)


def _time_candidates(layer: LayerToConvert, w_np: np.ndarray, cands: Dict[str, Candidate],
                     dense: nn.Module, inputs: Dict[int, Tensor], settings: ChoiceSettings) -> Times:
    """Seconds per call of dense and of every candidate at every probe input, from the
    per-process cache where it has them (keyed by everything the time depends on)."""
    shape, geom, threads = tuple(layer.weight.shape), _geometry(layer), get_num_threads()
    dense_fns: Dict[tuple, Callable[[], object]] = {}
    dense_keys: Dict[int, tuple] = {}
    for b, x in inputs.items():
        key = ("dense", layer.kind, shape, geom, tuple(x.shape), torch.get_num_threads())
        dense_fns[key] = (lambda x=x: dense(x))
        dense_keys[b] = key
    times: Times = {"dense": {}}
    for label, cand in cands.items():
        # Time each candidate against dense (interleaved; dense timings come from the cache
        # after the first candidate), then let it go before building the next one.
        built = _build(layer, w_np, cand, settings.index_dtype)
        fns = dict(dense_fns)
        keys: Dict[int, tuple] = {}
        for b, x in inputs.items():
            key = (label, layer.kind, shape, geom, tuple(x.shape), round(built.stored_density, 3),
                   built.index_dtype, threads, simd_level(), layer.activation)
            fns[key] = (lambda x=x, module=built.module: module(x))
            keys[b] = key
        with torch.inference_mode():
            measured = cached_best_seconds(fns, settings.budget_s)
        times["dense"] = {b: measured[key] for b, key in dense_keys.items()}
        times[label] = {b: measured[key] for b, key in keys.items()}
        del fns, built
    return times


def _in_ms(times: Times) -> Times:
    return {label: {b: s * 1e3 for b, s in per_batch.items()} for label, per_batch in times.items()}


def _pick(times: Times, labels: List[str], batches: List[int], margin: float) -> Optional[str]:
    """The candidate faster than dense by ``margin`` at every batch with the best geometric
    mean speedup, or None when there is none."""
    best: Optional[Tuple[float, str]] = None
    for label in labels:
        ok = all(times[label][b] * margin <= times["dense"][b] for b in batches)
        score = sum(math.log(times[label][b] / times["dense"][b]) for b in batches)
        if ok and (best is None or score < best[0]):
            best = (score, label)
    return None if best is None else best[1]


def _confirm_times(dense: nn.Module, module: nn.Module, label: str, inputs: Dict[int, Tensor],
                   budget_s: float) -> Times:
    """A fresh, uncached interleaved run of dense and the winner on this very layer.

    The cache shares timings between layers of one shape, so one noisy measurement must not
    decide for all of them.
    """
    fresh: Dict[Tuple[str, int], Callable[[], object]] = {}
    for b, x in inputs.items():
        fresh[("dense", b)] = (lambda x=x: dense(x))
        fresh[(label, b)] = (lambda x=x: module(x))
    with torch.inference_mode():
        again = best_seconds(fresh, budget_s)
    times: Times = {"dense": {}, label: {}}
    for (name, b), seconds in again.items():
        times[name][b] = seconds
    return times

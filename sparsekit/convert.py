"""Turn a pruned model into one whose Linear/Conv layers run on sparsekit's kernels."""

from __future__ import annotations

import copy
import fnmatch
import math
import numbers
import threading
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from sparsekit._runtime import get_num_threads, simd_level
from sparsekit.formats import BLOCK_SIDES, SparseMatrix, block_row_chunks
from sparsekit.nn import SparseConv1d, SparseConv2d, SparseLinear, SparseModule, fuse_sequentials, effective_weight

__all__ = ["convert", "ConversionReport", "LayerDecision", "clear_timing_cache"]

FormatSpec = Union[str, Tuple[int, int]]

# Block shapes "auto" tries besides CSR (each only if the weights allow it, see below).
AUTO_BLOCKS = ((2, 1), (4, 1), (8, 1), (1, 2), (1, 4), (1, 8), (2, 2), (4, 4))
# Above this density a CSR layer cannot beat a dense BLAS product; "auto" keeps it dense untimed.
AUTO_MAX_DENSITY = 0.6
# Default probe input when no example_inputs are given.
DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_CONV2D_HW = (16, 16)
DEFAULT_CONV1D_L = 64

_ACT_MODULES = (nn.ReLU, nn.GELU)


@dataclass
class LayerDecision:
    """What :func:`convert` did with one layer.

    ``format`` is "dense" (left as it was), "csr" or "bsr(r,c)". ``density`` counts the
    nonzero weights, ``stored_density`` the stored values (zeros inside kept blocks too).
    ``speedup`` maps each measured batch size (rows for linear layers, images for
    convolutions) to dense time / chosen time; ``None`` when nothing was measured
    (explicit formats). ``times_ms`` holds the measurements, ``{format: {batch: ms}}``.
    """

    name: str
    kind: str
    shape: Tuple[int, int]
    format: str
    density: float
    stored_density: float
    dense_bytes: int
    bytes: int
    index_dtype: Optional[str] = None
    activation: Optional[str] = None
    folded: Optional[str] = None
    speedup: Optional[Dict[int, float]] = None
    times_ms: Dict[str, Dict[int, float]] = field(default_factory=dict)
    reason: str = ""


class ConversionReport:
    """Per-layer decisions of :func:`sparsekit.convert` (attached as ``model.sparsekit_summary``).

    ``str(report)`` prints a table; ``report.to_dict()`` gives plain data; iterate for
    :class:`LayerDecision` rows; ``report["fc1"]`` looks one up by qualified name.

    Example:
        >>> import torch, sparsekit
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.mul_(torch.rand(8, 8) > 0.9)
        >>> out = sparsekit.convert(model, format="csr")
        >>> out.sparsekit_summary["0"].format
        'csr'
    """

    def __init__(self, rows: Sequence[LayerDecision], fused_sequentials: Sequence[str] = ()) -> None:
        self.rows: List[LayerDecision] = list(rows)
        #: Qualified names ("" for the model itself) of the ``nn.Sequential`` containers that
        #: became :class:`sparsekit.nn.SparseSequential` (consecutive sparse layers in one call).
        self.fused_sequentials: List[str] = list(fused_sequentials)

    def __iter__(self) -> Iterator[LayerDecision]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> LayerDecision:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def dense_bytes(self) -> int:
        """Weight+bias bytes of the considered layers before conversion."""
        return sum(r.dense_bytes for r in self.rows)

    @property
    def bytes(self) -> int:
        """Weight+bias bytes of the same layers after conversion."""
        return sum(r.bytes for r in self.rows)

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.rows], "dense_bytes": self.dense_bytes,
                "bytes": self.bytes, "fused_sequentials": list(self.fused_sequentials)}

    def __str__(self) -> str:
        head = ("layer", "type", "shape", "format", "density", "KiB dense", "KiB now", "fused", "speedup", "note")
        lines = []
        for r in self.rows:
            sp = "-" if not r.speedup else " ".join(f"b{b}:{v:.2f}x" for b, v in sorted(r.speedup.items()))
            fused = "+".join(x for x in (r.folded, r.activation) if x) or "-"
            lines.append((r.name or "<root>", r.kind, f"{r.shape[0]}x{r.shape[1]}", r.format,
                          f"{r.density:.3f}", f"{r.dense_bytes / 1024:.1f}", f"{r.bytes / 1024:.1f}", fused,
                          sp, r.reason))
        widths = [max(len(h), *(len(str(line[i])) for line in lines)) if lines else len(h)
                  for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        out.append(f"total: {self.dense_bytes / 1024:.1f} KiB dense -> {self.bytes / 1024:.1f} KiB")
        if self.fused_sequentials:
            names = ", ".join(repr(n or "<root>") for n in self.fused_sequentials)
            out.append(f"one call per stretch of consecutive sparse linear layers in: {names}")
        return "\n".join(out)

    def __repr__(self) -> str:
        n_sparse = sum(r.format != "dense" for r in self.rows)
        return f"ConversionReport({len(self.rows)} layers, {n_sparse} sparse, {self.dense_bytes} -> {self.bytes} bytes)"


# ------------------------------------------------------------------------------ timing
_cache: Dict[tuple, float] = {}
_cache_lock = threading.Lock()


def clear_timing_cache() -> None:
    """Forget the per-process timings that ``format="auto"`` reuses across layers."""
    with _cache_lock:
        _cache.clear()


def _time_many(fns: Dict[tuple, Callable[[], Any]], budget_s: float, rounds: int = 7) -> Dict[tuple, float]:
    """Best-of-rounds seconds per call for each callable, measured interleaved.

    Interleaving gives every candidate the same exposure to other processes on the
    machine; the minimum over rounds is robust to time slices stolen from us.
    """
    reps: Dict[tuple, int] = {}
    for key, fn in fns.items():
        fn()  # warm-up (allocations, first-touch)
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        reps[key] = max(1, int(budget_s / rounds / once))
    best = {key: math.inf for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            n = reps[key]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[key] = min(best[key], (time.perf_counter() - t0) / n)
    return best


def _cached_times(fns: Dict[tuple, Callable[[], Any]], budget_s: float) -> Dict[tuple, float]:
    with _cache_lock:
        todo = {k: f for k, f in fns.items() if k not in _cache}
    if todo:
        measured = _time_many(todo, budget_s)
        with _cache_lock:
            for k, v in measured.items():
                _cache.setdefault(k, v)
    with _cache_lock:
        return {k: _cache[k] for k in fns}


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


# --------------------------------------------------------------------------- layer logic
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


def _build(kind: str, layer: nn.Module, m: SparseMatrix, bias: Optional[Tensor], act: Optional[str]):
    if kind == "Linear":
        return SparseLinear(m, bias, act)
    cls = SparseConv2d if kind == "Conv2d" else SparseConv1d
    return cls(m, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
               layer.dilation, layer.padding_mode, bias, act)


def _stored_fraction(w2d: np.ndarray, block: Tuple[int, int]) -> float:
    rows, cols = w2d.shape
    r, c = block
    kept = 0
    for _, blocks in block_row_chunks(w2d, r, c):  # bounded working memory, no padded copy
        kept += int((blocks != 0).any(axis=(2, 3)).sum())
    return float(kept) * r * c / max(1, rows * cols)


class _Ctx:
    def __init__(self, batch_sizes, shapes, index_dtype, budget_s, max_block_overhead, min_speedup):
        self.min_speedup = min_speedup
        self.batch_sizes = batch_sizes
        self.shapes = shapes
        self.index_dtype = index_dtype
        self.budget_s = budget_s
        self.max_block_overhead = max_block_overhead


def _probe_inputs(kind: str, layer: nn.Module, name: str, ctx: _Ctx) -> Dict[int, Tuple[int, ...]]:
    """batch -> input shape used for timing this layer."""
    seen = ctx.shapes.get(name)
    batches = set(ctx.batch_sizes)
    if kind == "Linear":
        if seen is not None:
            batches.add(max(1, math.prod(seen[:-1])))
        return {b: (b, layer.in_features) for b in sorted(batches)}
    if seen is not None and len(seen) == (4 if kind == "Conv2d" else 3):
        spatial = tuple(seen[2:])
        batches.add(seen[0])
    else:
        spatial = DEFAULT_CONV2D_HW if kind == "Conv2d" else (DEFAULT_CONV1D_L,)
    return {b: (b, layer.in_channels) + spatial for b in sorted(batches)}


def _geometry(kind: str, layer: nn.Module) -> tuple:
    if kind == "Linear":
        return ()
    return (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.padding_mode)


def _sparse_layer(kind: str, layer: nn.Module, w_np: np.ndarray, block: Tuple[int, int], bias: Optional[Tensor],
                  act: Optional[str], index_dtype: str) -> Tuple[nn.Module, tuple]:
    """The sparse module for one format, and (block, index dtype, stored density) of its weight.

    The intermediate ``SparseMatrix`` is released on return: only the module's own copy of
    the arrays stays alive.
    """
    m = SparseMatrix.from_dense(w_np, block=block, index_dtype=index_dtype)
    info = (m.block, m.index_dtype, m.density)
    return _build(kind, layer, m, bias, act), info


def _dense_twin(kind: str, layer: nn.Module, w: Tensor, bias: Optional[Tensor]) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Conv{1,2}d`` on the masked weight (shared, not copied): the
    dense side of "auto"'s timings, called like the layer it stands for.

    Both sides are timed as module calls. For batch-1 layers the call overhead is a large
    part of either time and differs between them (``nn.Linear`` looks its parameters up
    through ``nn.Module.__getattr__`` and passes ``Parameter`` subclasses to ``F.linear``);
    timing the dense side as a bare ``F.linear`` on plain tensors kept a 1024 -> 1 head
    dense that ran 5.2 us per call in the model against 4.5 us sparse.
    """
    with warnings.catch_warnings():  # meta-device init of a zero-size layer warns; it is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if kind == "Linear":
            twin = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
        else:
            cls = nn.Conv2d if kind == "Conv2d" else nn.Conv1d
            twin = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                       bias=bias is not None, padding_mode=layer.padding_mode, device="meta")
    twin.weight = nn.Parameter(w.detach(), requires_grad=False)
    if bias is not None:
        twin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return twin.eval()


def _decide(name: str, kind: str, layer: nn.Module, w: Tensor, bias: Optional[Tensor], act: Optional[str],
            spec: FormatSpec, ctx: _Ctx, decision: LayerDecision):
    """Returns None to keep the layer dense, else (replacement module, (block, index dtype,
    stored density)); fills ``decision``.

    At most one sparse candidate exists at a time (besides the dense weight): "auto" builds
    each candidate, times it, keeps its timings only and rebuilds the winner.
    """
    w2d = w.reshape(w.shape[0], math.prod(w.shape[1:])).contiguous()  # -1 is ambiguous with 0 rows
    w_np = w2d.numpy()
    if spec == "dense":
        decision.reason = "format='dense'"
        return None
    if spec != "auto":
        block = (1, 1) if spec == "csr" else spec
        decision.reason = "explicit format"
        return _sparse_layer(kind, layer, w_np, block, bias, act, ctx.index_dtype)
    if decision.density > AUTO_MAX_DENSITY:
        decision.reason = f"density {decision.density:.2f} > {AUTO_MAX_DENSITY}"
        return None
    candidates = [(1, 1)]
    csr_frac = max(decision.density, 1e-12)
    for blk in AUTO_BLOCKS:
        if w_np.shape[0] >= blk[0] and w_np.shape[1] >= blk[1]:
            frac = _stored_fraction(w_np, blk)
            if frac <= ctx.max_block_overhead * csr_frac and frac <= AUTO_MAX_DENSITY:
                candidates.append(blk)
    probes = _probe_inputs(kind, layer, name, ctx)
    geom = _geometry(kind, layer)
    threads = get_num_threads()
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(shape, generator=gen) for b, shape in probes.items()}
    dense_fn = _dense_twin(kind, layer, w.contiguous(), bias)
    dense_fns: Dict[tuple, Callable[[], Any]] = {}
    labels: Dict[Tuple[str, int], tuple] = {}
    for b, x in inputs.items():
        key = ("dense", kind, tuple(w.shape), geom, tuple(x.shape), torch.get_num_threads())
        dense_fns[key] = (lambda x=x: dense_fn(x))
        labels[("dense", b)] = key
    blocks: Dict[str, Tuple[int, int]] = {}
    measured: Dict[tuple, float] = {}
    for blk in candidates:
        # Time each candidate against dense (interleaved; dense timings come from the cache
        # after the first candidate), then let it go before building the next one.
        module, (_, index_dtype, density) = _sparse_layer(kind, layer, w_np, blk, bias, act, ctx.index_dtype)
        label = "csr" if blk == (1, 1) else f"bsr{blk[0]}x{blk[1]}"
        blocks[label] = blk
        fns = dict(dense_fns)
        for b, x in inputs.items():
            key = (label, kind, tuple(w.shape), geom, tuple(x.shape), round(density, 3), index_dtype,
                   threads, simd_level(), act)
            fns[key] = (lambda x=x, module=module: module(x))
            labels[(label, b)] = key
        with torch.inference_mode():
            measured.update(_cached_times(fns, ctx.budget_s))
        del fns, module
    times: Dict[str, Dict[int, float]] = {}
    for (label, b), key in labels.items():
        times.setdefault(label, {})[b] = measured[key]
    margin = ctx.min_speedup
    best = None
    for label in blocks:
        ok = all(times[label][b] * margin <= times["dense"][b] for b in inputs)
        score = sum(math.log(times[label][b] / times["dense"][b]) for b in inputs)
        if ok and (best is None or score < best[0]):
            best = (score, label)
    decision.times_ms = {k: {b: v * 1e3 for b, v in d.items()} for k, d in times.items()}
    if best is None:
        decision.reason = f"no sparse format beat dense by {margin:g}x at every measured batch"
        return None
    _, label = best
    module, info = _sparse_layer(kind, layer, w_np, blocks[label], bias, act, ctx.index_dtype)
    speedup = {b: times["dense"][b] / times[label][b] for b in inputs}
    # Confirm the winner on this very layer with a fresh, uncached interleaved run (the cache
    # shares timings between layers of one shape, so one noisy measurement must not decide
    # for all of them); keep the worse of the two speedups.
    fresh = {}
    for b, x in inputs.items():
        fresh[("dense", b)] = (lambda x=x: dense_fn(x))
        fresh[(label, b)] = (lambda x=x: module(x))
    with torch.inference_mode():
        again = _time_many(fresh, ctx.budget_s)
    for b in inputs:
        speedup[b] = min(speedup[b], again[("dense", b)] / again[(label, b)])
        decision.times_ms.setdefault("confirm", {})[b] = again[(label, b)] * 1e3
    if any(v < margin for v in speedup.values()):
        decision.reason = f"{label} did not confirm a {margin:g}x win on a second run"
        return None
    decision.speedup = speedup
    decision.reason = "fastest measured, confirmed"
    return module, info


def _layer_tensors(layer: nn.Module) -> Iterator[Tensor]:
    """Every tensor a convertible layer holds: parameters, buffers and plain tensor attributes
    (``torch.nn.utils.prune``'s computed ``weight``), its submodules' (parametrizations) too."""
    for mod in layer.modules():
        for store in (mod._parameters, mod._buffers):
            for t in store.values():
                if isinstance(t, Tensor):
                    yield t
        for v in mod.__dict__.values():
            if isinstance(v, Tensor):
                yield v


def _copy_sharing_layer_tensors(model: nn.Module) -> Tuple[nn.Module, Dict[int, Tensor], list]:
    """``copy.deepcopy(model)``, except that the tensors of the layers :func:`convert` may
    replace are shared with ``model`` instead of copied.

    Copying them first would hold a second dense copy of every layer at once, most of it only
    to be replaced by sparse layers. Returns the copy, the shared tensors by id (for
    :func:`_unshare`) and weak references to the copied layers.
    """
    shared: Dict[int, Tensor] = {}
    layers = [mod for mod in model.modules() if _layer_kind(mod) is not None]
    for layer in layers:
        for t in _layer_tensors(layer):
            shared[id(t)] = t
    memo: Dict[int, Any] = dict(shared)  # deepcopy returns a memo entry instead of copying
    work = copy.deepcopy(model, memo)
    copies = [weakref.ref(memo[id(layer)]) for layer in layers if id(layer) in memo]
    memo.clear()  # holds every copied object; the copied layers must be free to go once replaced
    return work, shared, copies


def _quiet_mask_hooks(work: nn.Module, shared: Dict[int, Tensor]) -> None:
    """Keep sparsekit.prune's mask hooks in the copy off the original's parameters.

    On a copy's first forward pass they re-zero masked entries in place and register a
    gradient hook on each masked parameter: on a parameter shared with the original, that
    would write into the original. The shape-recording pass needs neither (convert reads
    weights through ``effective_weight``, which applies the masks), so the copy's hook state
    is marked as already enforced for shared parameters; a layer that stays dense gets its
    own parameter in :func:`_unshare`, whose new identity re-arms the hooks.
    """
    from sparsekit.prune.masks import _STATE  # lazy: prune imports a lot

    for mod in work.modules():
        state = mod.__dict__.get(_STATE)
        if state is None:
            continue
        for pn, st in state.params.items():
            p = mod._parameters.get(pn)
            if p is not None and shared.get(id(p)) is p:
                st.param_id, st.version, st.handle = id(p), p._version, None


def _unshare(result: nn.Module, shared: Dict[int, Tensor], copies: list) -> None:
    """Replace every shared tensor the converted copy still holds with its own deep copy.

    Layers that stayed dense, copied layers still referenced from elsewhere, and tied weights
    in other modules (an embedding sharing a Linear's weight) end up exactly as a plain
    ``copy.deepcopy`` of the model would have left them; ties among them are kept.
    """
    memo: Dict[int, Any] = {}

    def fix(mod: nn.Module) -> None:
        for store in (mod._parameters, mod._buffers):
            for k, t in list(store.items()):
                if t is not None and shared.get(id(t)) is t:
                    store[k] = copy.deepcopy(t, memo)
        for k, v in list(mod.__dict__.items()):
            if isinstance(v, Tensor) and shared.get(id(v)) is v:
                mod.__dict__[k] = copy.deepcopy(v, memo)

    for mod in result.modules():
        fix(mod)
    for ref in copies:
        layer = ref()
        if layer is not None:
            for mod in layer.modules():
                fix(mod)


def _record_shapes(model: nn.Module, example_inputs: Any) -> Dict[str, Tuple[int, ...]]:
    shapes: Dict[str, Tuple[int, ...]] = {}
    handles = []
    for name, mod in model.named_modules():
        if _layer_kind(mod) is not None:
            def hook(m, args, name=name):
                if args and isinstance(args[0], Tensor):
                    shapes.setdefault(name, tuple(args[0].shape))
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
    return shapes


def convert(model: nn.Module, format: Any = "auto", inplace: bool = False, *,
            example_inputs: Any = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
            fuse: bool = True, fold_bn: bool = True, index_dtype: str = "auto",
            max_block_overhead: float = 1.25, time_budget_s: float = 0.03,
            min_speedup: float = 1.1) -> nn.Module:
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
        example_inputs: an input (a tensor, a tuple of positional args or a dict of
            keyword args) run once through the model to learn each layer's real input
            shape; the rows it shows are timed besides ``batch_sizes``.
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    lookup = _parse_format(format)
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
    if inplace:
        work, shared, copies = model, {}, []
    else:
        work, shared, copies = _copy_sharing_layer_tensors(model)
        _quiet_mask_hooks(work, shared)
    work.eval()
    shapes = _record_shapes(work, example_inputs) if example_inputs is not None else {}
    if not batch_sizes and not shapes:
        raise ValueError("batch_sizes is empty and no example_inputs were given: nothing to time")
    ctx = _Ctx(tuple(int(b) for b in batch_sizes), shapes, index_dtype, float(time_budget_s),
               float(max_block_overhead), float(min_speedup))
    decisions: List[LayerDecision] = []
    memo: Dict[int, nn.Module] = {}
    uses: Dict[int, int] = {}
    for mod in work.modules():  # a layer reachable twice must not absorb its neighbours
        for child in mod._modules.values():
            if child is not None:
                uses[id(child)] = uses.get(id(child), 0) + 1

    def handle(name: str, layer: nn.Module, follow: Sequence[nn.Module]):
        """Returns (replacement or None, number of following modules absorbed)."""
        kind = _layer_kind(layer)
        if id(layer) in memo:
            return memo[id(layer)], 0
        raw = getattr(layer, "weight_orig", None)
        if not isinstance(raw, Tensor):
            raw = getattr(layer, "weight", None)
        usable = isinstance(raw, Tensor) and not isinstance(raw, nn.parameter.UninitializedParameter)
        ok = usable and raw.dtype == torch.float32 and raw.device.type == "cpu"
        w = effective_weight(layer, "weight") if ok else None
        size = int(raw.numel()) if usable else 0
        nnz = int(torch.count_nonzero(w)) if w is not None else size
        rows = int(raw.shape[0]) if usable and raw.dim() else 0
        cols = math.prod(raw.shape[1:]) if usable and raw.dim() else 0
        dense_bytes = _module_bytes(layer) if ok else 0
        decision = LayerDecision(name=name, kind=kind, shape=(rows, cols), format="dense",
                                 density=nnz / size if size else 0.0,
                                 stored_density=nnz / size if size else 0.0,
                                 dense_bytes=dense_bytes, bytes=dense_bytes)
        decisions.append(decision)
        if not usable:
            decision.reason = "uninitialised weight"
            return None, 0
        if not ok:
            decision.reason = f"{raw.dtype} on {raw.device}: only float32 CPU layers are converted"
            return None, 0
        if kind != "Linear" and layer.groups != 1:
            decision.reason = f"groups={layer.groups} stays dense"
            return None, 0
        if kind != "Linear" and 0 in (layer.in_channels, layer.out_channels):
            # SparseConv1d/2d need at least one channel each way; nothing to gain anyway.
            decision.reason = "zero channels stay dense"
            return None, 0
        bias = effective_weight(layer, "bias")
        absorbed = 0
        folded = None
        if fold_bn and follow and _foldable_bn(layer, kind, follow[0]):
            w, bias = _fold_bn(w, bias, follow[0])
            folded = type(follow[0]).__name__
            absorbed = 1
        act = None
        if fuse and len(follow) > absorbed:
            act = _activation_of(follow[absorbed])
            if act is not None:
                absorbed += 1
        result = _decide(name, kind, layer, w, bias, act, lookup(name), ctx, decision)
        if result is None:
            return None, 0
        module, (block, index_dtype, stored_density) = result
        decision.format = "csr" if block == (1, 1) else f"bsr{block[0]}x{block[1]}"
        decision.index_dtype = index_dtype
        decision.stored_density = stored_density
        decision.activation = act
        decision.folded = folded
        decision.bytes = module.nbytes
        memo[id(layer)] = module
        return module, absorbed

    def walk(parent: nn.Module, prefix: str) -> None:
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
            if _layer_kind(child) is not None:
                shared = uses.get(id(child), 0) > 1
                follow = [parent._modules[k] for k in names[i + 1:i + 3]] if seq and not shared else []
                follow = [f for f in follow if f is not None]
                new, absorbed = handle(full, child, follow)
                if new is not None:
                    parent._modules[key] = new
                    for k in names[i + 1:i + 1 + absorbed]:
                        parent._modules[k] = nn.Identity()
                i += 1 + absorbed
                continue
            walk(child, full + ".")
            i += 1

    if _layer_kind(work) is not None:
        new, _ = handle("", work, [])
        result = new if new is not None else work
    else:
        walk(work, "")
        result = work
    del work, memo  # a replaced copied layer must not look alive to _unshare
    if shared:
        _unshare(result, shared, copies)
    fused = fuse_sequentials(result) if fuse else []
    result.eval()
    result.sparsekit_summary = ConversionReport(decisions, fused)
    return result

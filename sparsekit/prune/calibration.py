"""Calibration data for activation-aware criteria: the calling rule and input capture.

A calibration set is an iterable of model inputs.  :func:`call_model` feeds
one item to the model (a tensor ``x`` -> ``model(x)``; a tuple or list ->
``model(*items)``; a dict -> ``model(**d)``, e.g. a Hugging Face tokenizer's
output).  :func:`capture_input_stats` runs the model over the set in eval mode
without gradients and, through forward pre-hooks, accumulates per layer what
the criteria need from the layer's inputs - the squared L2 norm of every input
feature and optionally ``X^T X`` - without storing any activation.

Inputs are seen through the layer's 2-D weight view ``(out, in * k...)``:
a Linear layer's input rows are its feature vectors (every token of every
sequence), a convolution's are its unfolded patches (one row per output
position, columns ordered like ``weight.reshape(out, -1)``).

:class:`CalibratedCriterion` is the base of :class:`~sparsekit.prune.Wanda`
and :class:`~sparsekit.prune.SparseGPT`: it keeps the calibration items (so
generators work and several passes are possible) and checks the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .criteria import Criterion
from .granularity import Granularity
from .selection import Target

__all__ = ["call_model", "as_calibration_items", "conv_patches", "layer_input_rows", "InputStats",
           "capture_input_stats", "CalibratedCriterion"]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _shallow_copy(item: Any) -> Any:
    # sentence-transformers writes its outputs into the features dict it was given;
    # a copy keeps the batch unchanged for the next model (a teacher) and the next pass.
    return dict(item) if isinstance(item, Mapping) else item


def call_model(model: Callable[..., Any], item: Any) -> Any:
    """Run ``model`` on one batch by the calling rule shared by calibration and :func:`sparsekit.distill`.

    A tensor ``x`` -> ``model(x)``; a tuple or list -> ``model(*item)``; a
    mapping -> ``model(**item)``.  A model whose forward takes one dict
    (sentence-transformers) gets its batches as 1-tuples ``(features,)``.
    Dicts, at the top level or as tuple items, are passed as shallow copies, so a
    model that writes into its input dict leaves the batch as it was.

    Example:
        >>> import torch
        >>> from sparsekit.prune import call_model
        >>> layer = torch.nn.Bilinear(2, 3, 1)
        >>> call_model(layer, (torch.ones(4, 2), torch.ones(4, 3))).shape
        torch.Size([4, 1])
        >>> add = lambda a, b=0: a + b
        >>> call_model(add, {"a": torch.ones(1), "b": 2}).tolist()
        [3.0]
    """
    if isinstance(item, Tensor):
        return model(item)
    if isinstance(item, (tuple, list)):
        return model(*[_shallow_copy(b) for b in item])
    if isinstance(item, Mapping):
        return model(**dict(item))
    raise TypeError(
        "each batch (calibration item) must be a tensor (model(x)), a tuple or list (model(*items)) or a dict (model(**d)); "
        f"got {type(item).__name__} (for a model whose forward takes one dict, pass 1-tuples (features,))"
    )


def as_calibration_items(calibration: Any, name: str = "calibration") -> List[Any]:
    """The calibration set as a list (a bare tensor or dict counts as one batch).

    Raises ``ValueError`` naming ``calibration`` when it is missing or empty.

    Example:
        >>> import torch
        >>> from sparsekit.prune import as_calibration_items
        >>> len(as_calibration_items(torch.zeros(8, 3))), len(as_calibration_items(iter([torch.zeros(2)] * 3)))
        (1, 3)
    """
    if calibration is None:
        raise ValueError(
            f"{name} is required for activation-aware pruning (method='wanda' or 'sparsegpt'): pass an "
            "iterable of model inputs, e.g. a list of input batches or a DataLoader without targets"
        )
    if isinstance(calibration, (Tensor, Mapping)):
        return [calibration]
    if isinstance(calibration, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of model inputs, got a {type(calibration).__name__}")
    try:
        items = list(calibration)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of model inputs, got {type(calibration).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty; give at least one batch of model inputs")
    return items


def _conv_pads(module: nn.Module) -> List[int]:
    """``F.pad`` amounts (last spatial dim first) equivalent to the convolution's padding."""
    nd = len(module.kernel_size)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pairs = [(0, 0)] * nd
        else:  # "same": torch puts the odd extra element on the right
            totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            pairs = [(t // 2, t - t // 2) for t in totals]
    else:
        pairs = [(p, p) for p in module.padding]
    return [v for pair in reversed(pairs) for v in pair]


def conv_patches(module: nn.Module, x: Tensor) -> Tensor:
    """Unfolded input patches of a Conv1d/2d/3d call: ``(positions, in * k...)``.

    Row ``r`` times ``weight.reshape(out, -1).T`` is the convolution's output
    at position ``r`` (without bias); every padding mode is honoured.

    Example:
        >>> import torch
        >>> from sparsekit.prune import conv_patches
        >>> conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        >>> x = torch.randn(2, 3, 5, 5)
        >>> rows = conv_patches(conv, x)
        >>> rows.shape
        torch.Size([50, 27])
        >>> y = (rows @ conv.weight.reshape(4, -1).T).reshape(2, 5, 5, 4).permute(0, 3, 1, 2)
        >>> torch.allclose(y, conv(x), atol=1e-5)
        True
    """
    if not isinstance(module, CONV_TYPES):
        raise TypeError(f"conv_patches needs a Conv1d/2d/3d module, got {type(module).__name__}")
    if module.groups != 1:
        raise ValueError(f"grouped convolutions (groups={module.groups}) are not supported by calibration criteria")
    nd = len(module.kernel_size)
    if x.dim() == nd + 1:  # unbatched input
        x = x.unsqueeze(0)
    pads = _conv_pads(module)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    for i, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]
    # (N, C, L1..Lnd, k1..knd) -> (N, L1..Lnd, C, k1..knd)
    perm = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]
    x = x.permute(*perm)
    cols = module.in_channels * math.prod(module.kernel_size)
    return x.reshape(-1, cols)


def layer_input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The input of one Linear or Conv call as rows matching the 2-D weight view.

    Example:
        >>> import torch
        >>> from sparsekit.prune import layer_input_rows
        >>> layer_input_rows(torch.nn.Linear(3, 2), torch.zeros(4, 5, 3)).shape
        torch.Size([20, 3])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, CONV_TYPES):
        return conv_patches(module, x)
    raise TypeError(f"calibration criteria support nn.Linear and nn.Conv1d/2d/3d layers, got {type(module).__name__}")


@dataclass
class InputStats:
    """Running statistics of one layer's input rows.

    ``sq_sum[j]`` is the sum over all rows of ``x_j ** 2`` (so ``sqrt`` of it is
    the L2 norm of input feature ``j``); ``xtx`` is ``X^T X`` when requested.
    Accumulated in float64; no row is stored.

    Example:
        >>> import torch
        >>> from sparsekit.prune import InputStats
        >>> st = InputStats(2, hessian=True)
        >>> st.add(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        >>> st.rows, st.norms.tolist(), st.xtx.tolist()
        (2, [5.0, 1.0], [[25.0, 4.0], [4.0, 1.0]])
    """

    cols: int
    hessian: bool = False
    rows: int = 0
    sq_sum: Optional[Tensor] = field(default=None, repr=False)
    xtx: Optional[Tensor] = field(default=None, repr=False)

    def add(self, x: Tensor) -> None:
        """Accumulate a ``(rows, cols)`` block of inputs."""
        x = x.detach().to(torch.float32)
        sq = x.pow(2).sum(dim=0).to(torch.float64)
        self.sq_sum = sq if self.sq_sum is None else self.sq_sum + sq
        if self.hessian:
            xtx = (x.T @ x).to(torch.float64)
            self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.rows += int(x.shape[0])

    @property
    def norms(self) -> Tensor:
        """L2 norm of every input feature over all calibration rows (float64)."""
        if self.sq_sum is None:
            return torch.zeros(self.cols, dtype=torch.float64)
        return self.sq_sum.sqrt()


def capture_input_stats(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable[Any], *,
                        hessian: bool = False) -> Dict[str, InputStats]:
    """Run ``model`` over ``calibration`` and return the input statistics of ``layers``.

    The model runs in eval mode under ``torch.no_grad()`` (its mode is
    restored); a forward pre-hook on every layer accumulates an
    :class:`InputStats` (``hessian=True`` adds ``X^T X``).  Raises
    ``ValueError`` naming a layer that received no input or whose statistics
    are not finite.

    Example:
        >>> import torch
        >>> from sparsekit.prune import capture_input_stats
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3))
        >>> stats = capture_input_stats(model, {"0": model[0]}, [torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0, 2.0]])])
        >>> stats["0"].rows, stats["0"].norms.tolist()
        (2, [5.0, 2.0])
    """
    items = as_calibration_items(calibration)
    stats: Dict[str, InputStats] = {}
    handles = []

    def make_hook(name: str):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], Tensor):
                raise TypeError(f"layer {name} was called without a tensor input; calibration cannot read it")
            rows = layer_input_rows(mod, args[0])
            st = stats.get(name)
            if st is None:
                st = stats[name] = InputStats(rows.shape[1], hessian=hessian)
            st.add(rows)
        return hook

    for name, module in layers.items():
        if not isinstance(module, (nn.Linear,) + CONV_TYPES):
            raise TypeError(f"calibration criteria support nn.Linear and nn.Conv1d/2d/3d layers; {name} is a "
                            f"{type(module).__name__}")
        handles.append(module.register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for item in items:
                call_model(model, item)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name in layers:
        st = stats.get(name)
        if st is None or st.rows == 0:
            raise ValueError(
                f"layer {name} received no input while the model ran over the calibration data; "
                "check that the calibration batches reach it, or exclude it (exclude=...)"
            )
        bad = not torch.isfinite(st.sq_sum).all() or (st.xtx is not None and not torch.isfinite(st.xtx).all())
        if bad:
            raise ValueError(
                f"the inputs of layer {name} contain NaN or Inf during calibration; check the calibration data "
                "and the layers before it"
            )
    return stats


class CalibratedCriterion(Criterion):
    """Base of criteria that need the model's inputs: keeps the calibration items.

    :func:`~sparsekit.prune.prune` and :class:`~sparsekit.prune.Pruner` call
    :meth:`prepare` with the model and the pruning targets before any mask is
    computed.  Statistics are captured at the first mask computation and
    reused afterwards; :meth:`reset` forgets them so the next one recaptures.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Wanda
        >>> crit = Wanda([torch.randn(4, 3)])
        >>> len(crit.items)
        1
    """

    #: granularities this criterion refuses (by ``Granularity.name``)
    unsupported: Sequence[str] = ()

    def __init__(self, calibration: Any) -> None:
        self.items = as_calibration_items(calibration)
        self.model: Optional[nn.Module] = None
        self.modules: Dict[str, nn.Module] = {}

    def prepare(self, model: nn.Module, targets: Sequence[Target], granularity: Granularity) -> None:
        """Remember the model and check that every target can be calibrated."""
        if granularity.name in self.unsupported:
            raise ValueError(
                f"granularity {granularity!r} is not supported by {type(self).__name__}; "
                "use 'unstructured', an N:M pattern such as '2:4', or a block (r, c)"
            )
        modules = {}
        for t in targets:
            if t.param_name != "weight" or not isinstance(t.module, (nn.Linear,) + CONV_TYPES):
                raise ValueError(
                    f"{type(self).__name__} prunes the weights of nn.Linear and nn.Conv1d/2d/3d layers; "
                    f"{t.name} ({type(t.module).__name__}) is not one - exclude it"
                )
            if isinstance(t.module, CONV_TYPES) and t.module.groups != 1:
                raise ValueError(
                    f"{type(self).__name__} does not support grouped convolutions: {t.module_name} has "
                    f"groups={t.module.groups}; exclude it"
                )
            modules[t.name] = t.module
        self.model, self.modules = model, modules
        self.reset()

    def module_for(self, name: str) -> nn.Module:
        """The prepared layer of parameter ``name`` (clear error if prepare() was not called)."""
        if name not in self.modules:
            raise ValueError(
                f"{type(self).__name__} has no calibrated layer {name!r}; use it through prune()/Pruner, "
                "or call .prepare(model, targets, granularity) first"
            )
        return self.modules[name]

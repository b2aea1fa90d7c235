"""Pruning criteria: which weights matter.

A criterion gives every weight an importance score (higher = keep); the
granularity pools the scores into units and the lowest-scoring units are
pruned.  Subclass :class:`Criterion` and override :meth:`Criterion.score`
for a new criterion that works with every granularity and scope, or override
:meth:`Criterion.compute_mask` to take full control of a layer's mask.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._validation import units_to_prune
from .granularity import Granularity, GranularityLike, parse_granularity
from .ranking import select_layer, unit_scores

if TYPE_CHECKING:
    from .selection import Target

__all__ = ["Criterion", "Magnitude", "Random", "LnNorm", "Taylor", "Movement", "Scores", "make_criterion"]


def _named_params(model: Union[nn.Module, Iterable[Tuple[str, Tensor]]]) -> Iterable[Tuple[str, Tensor]]:
    if isinstance(model, nn.Module):
        from .selection import unwrap
        return unwrap(model).named_parameters()
    return model


class Criterion:
    """Base class of pruning criteria.

    Override :meth:`score` (element-wise importance, higher = keep) or
    :meth:`compute_mask` (a whole layer's keep-mask).  ``reduce`` says how
    element scores pool into structured units: ``"mean"``, ``"max"``,
    ``"sum"``, ``"l1"`` or ``"l2"``.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Criterion, prune
        >>> class Bigger(Criterion):  # keep weights with large positive values
        ...     def score(self, weight, *, name, module, step=0):
        ...         return weight.detach()
        >>> layer = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[-3., 1., 2., -1.], [4., -5., 0.5, 6.]]))
        >>> prune(layer, 0.5, method=Bigger())["weight"].int().tolist()
        [[0, 1, 1, 0], [1, 0, 0, 1]]
    """

    reduce: str = "mean"
    #: True for criteria that decide each layer on its own (no ``scope="global"`` ranking)
    layer_scope_only: bool = False

    def prepare(self, model: nn.Module, targets: Sequence["Target"], granularity: Granularity) -> None:
        """Called by prune/Pruner with the model and its targets before any mask is computed (no-op here)."""

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        """Importance of every element of ``weight`` (same shape; higher = keep)."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no score(); override score() to use scope='global' "
            "or compute_mask() for per-layer masks"
        )

    def compute_mask(self, weight: Tensor, amount: Union[int, float], *, granularity: GranularityLike = "unstructured",
                     name: str = "weight", module: Optional[nn.Module] = None, step: int = 0,
                     prior_mask: Optional[Tensor] = None, regrow: bool = False) -> Tensor:
        """Bool keep-mask for one weight pruned by ``amount`` (fraction or count of units)."""
        g = parse_granularity(granularity)
        scores = self.score(weight, name=name, module=module, step=step)
        u, eligible = unit_scores(scores, g, self.reduce, weight.shape, prior_mask, regrow, name)
        k = units_to_prune(amount, u.numel(), where=name)
        prune = select_layer(u, eligible, k, name)
        return g.expand(~prune, weight.shape).to(weight.device)

    def accumulate(self, model: Union[nn.Module, Iterable[Tuple[str, Tensor]]]) -> None:
        """Gather gradient statistics (gradient-based criteria; a no-op here)."""

    def reset(self) -> None:
        """Forget accumulated statistics."""

    def state_dict(self) -> Dict[str, object]:
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(Criterion):
    """``|w|``; structured units use the ``reduce`` of ``|w|`` (``"mean"`` or ``"max"``).

    Example:
        >>> import torch
        >>> from sparsekit.prune import Magnitude
        >>> Magnitude().compute_mask(torch.tensor([[0.1, -2.0, 0.5, -0.3]]), 0.5).tolist()
        [[False, True, True, False]]
    """

    def __init__(self, reduce: str = "mean") -> None:
        if reduce not in ("mean", "max", "sum", "l1", "l2"):
            raise ValueError(f"reduce must be 'mean', 'max', 'sum', 'l1' or 'l2', got {reduce!r}")
        self.reduce = reduce

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        return weight.detach().abs()

    def __repr__(self) -> str:
        return f"Magnitude(reduce={self.reduce!r})"


class LnNorm(Criterion):
    """L1 (``p=1``) or L2 (``p=2``) norm of each unit (row, filter, block).

    Example:
        >>> import torch
        >>> from sparsekit.prune import LnNorm
        >>> w = torch.tensor([[3.0, 4.0], [5.0, 0.0], [1.0, 1.0]])  # L2 row norms 5, 5, 1.41
        >>> LnNorm(2).compute_mask(w, 1, granularity="channels").all(dim=1).tolist()
        [True, True, False]
    """

    def __init__(self, p: int = 2) -> None:
        if p not in (1, 2):
            raise ValueError(f"LnNorm supports p=1 or p=2, got {p!r}")
        self.p = p
        self.reduce = "l1" if p == 1 else "l2"

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        return weight.detach()

    def __repr__(self) -> str:
        return f"LnNorm(p={self.p})"


class Random(Criterion):
    """Uniform random scores, reproducible from ``seed``, the parameter name and the step.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Random
        >>> w = torch.ones(4, 4)
        >>> torch.equal(Random(1).compute_mask(w, 0.5), Random(1).compute_mask(w, 0.5))
        True
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        key = (self.seed * 1_000_003 + zlib.crc32(name.encode()) * 7_919 + step) % (2 ** 62)
        gen = torch.Generator().manual_seed(key)
        return torch.rand(weight.shape, generator=gen, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Random(seed={self.seed})"


class _GradientCriterion(Criterion):
    """Shared bookkeeping of criteria that accumulate over backward passes."""

    reset_after_update = False

    def __init__(self) -> None:
        self._acc: Dict[str, Tensor] = {}
        self.batches = 0

    def _term(self, w: Tensor, g: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def accumulate(self, model: Union[nn.Module, Iterable[Tuple[str, Tensor]]]) -> None:
        """Add the statistics of the gradients now in ``.grad`` (call after ``backward()``)."""
        seen = False
        for name, p in _named_params(model):
            if p.grad is None:
                continue
            seen = True
            term = self._term(p.detach().float(), p.grad.detach().float())
            if name in self._acc:
                self._acc[name] += term
            else:
                self._acc[name] = term.clone()
        if seen:
            self.batches += 1

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        if name not in self._acc:
            raise ValueError(
                f"{type(self).__name__} has no gradient statistics for {name!r}: run backward() and call "
                ".accumulate(model) on some batches first (with a Pruner, start the schedule at "
                "begin_step >= 1 so gradients exist)"
            )
        return self._acc[name]

    def reset(self) -> None:
        self._acc = {}
        self.batches = 0

    def state_dict(self) -> Dict[str, object]:
        return {"acc": {k: v.clone() for k, v in self._acc.items()}, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self._acc = {k: v.clone() for k, v in state.get("acc", {}).items()}  # type: ignore[union-attr]
        self.batches = int(state.get("batches", 0))  # type: ignore[arg-type]


class Taylor(_GradientCriterion):
    """First-order Taylor sensitivity ``sum over batches |w * dL/dw|``.

    Feed it batches: ``loss.backward(); crit.accumulate(model)``.  A Pruner
    accumulates at every ``step()`` and starts afresh after each mask update.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Taylor, prune
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(8, 4)
        >>> crit = Taylor()
        >>> for _ in range(3):
        ...     model.zero_grad()
        ...     model(torch.randn(16, 8)).pow(2).mean().backward()
        ...     crit.accumulate(model)
        >>> int(prune(model, 0.5, method=crit)["weight"].sum())
        16
    """

    reset_after_update = True

    def _term(self, w: Tensor, g: Tensor) -> Tensor:
        return (w * g).abs()


class Movement(_GradientCriterion):
    """Movement pruning: ``S = sum over steps of -w * dL/dw`` (weights moving away from zero score high).

    Example:
        >>> import torch
        >>> from sparsekit.prune import Movement
        >>> w = torch.nn.Parameter(torch.tensor([[1.0, 1.0]]))
        >>> w.grad = torch.tensor([[-1.0, 1.0]])  # SGD grows the first weight, shrinks the second
        >>> crit = Movement()
        >>> crit.accumulate([("w", w)])
        >>> crit.compute_mask(w, 1, name="w").tolist()
        [[True, False]]
    """

    def _term(self, w: Tensor, g: Tensor) -> Tensor:
        return -(w * g)


class Scores(Criterion):
    """User-supplied importance per parameter: a mapping from ``"layer.weight"``
    (or the module name ``"layer"``) to a tensor shaped like the weight.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Scores, prune
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 1))
        >>> prune(model, 1, method=Scores({"0": torch.tensor([[3.0, 1.0, 2.0]])}))["0.weight"].tolist()
        [[True, False, True]]
    """

    def __init__(self, scores: Mapping[str, Tensor], reduce: str = "mean") -> None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must be a mapping name -> tensor, got {type(scores).__name__}")
        self.scores = dict(scores)
        self.reduce = reduce

    def score(self, weight: Tensor, *, name: str, module: nn.Module, step: int = 0) -> Tensor:
        if name in self.scores:
            return self.scores[name]
        mod = name.rsplit(".", 1)[0] if "." in name else ""
        if mod in self.scores and name.endswith(".weight"):
            return self.scores[mod]
        raise ValueError(
            f"no importance scores for {name!r}; give scores for every pruned parameter "
            f"(have: {sorted(self.scores)}) or exclude the layer"
        )

    def __repr__(self) -> str:
        return f"Scores({len(self.scores)} tensors)"


CriterionLike = Union[str, Criterion, Mapping[str, Tensor]]


def make_criterion(method: CriterionLike, *, reduce: str = "mean", norm: int = 2, seed: int = 0,
                   calibration: Any = None) -> Criterion:
    """Build a criterion from ``"magnitude"``, ``"random"``, ``"ln"`` (``"l1"``,
    ``"l2"``), ``"taylor"``, ``"movement"``, a mapping of scores, the
    activation-aware ``"wanda"`` / ``"sparsegpt"`` (which need ``calibration``,
    an iterable of model inputs), or pass a Criterion through.

    Example:
        >>> import torch
        >>> from sparsekit.prune import make_criterion
        >>> make_criterion("l1"), make_criterion("magnitude", reduce="max")
        (LnNorm(p=1), Magnitude(reduce='max'))
        >>> make_criterion("wanda", calibration=[torch.randn(4, 8)])
        Wanda(reduce='mean', 1 calibration batches)
    """
    key = method.strip().lower() if isinstance(method, str) else None
    if key in ("wanda", "sparsegpt"):
        from .sparsegpt import SparseGPT
        from .wanda import Wanda
        if key == "wanda":
            return Wanda(calibration, reduce=reduce)
        return SparseGPT(calibration, reduce=reduce)
    if calibration is not None:
        raise ValueError(
            "calibration= is only used by method='wanda' or 'sparsegpt' (a Criterion instance carries its "
            f"own); got method={method!r}"
        )
    if isinstance(method, Criterion):
        return method
    if isinstance(method, Mapping):
        return Scores(method, reduce=reduce)
    if isinstance(method, str):
        if key == "magnitude":
            return Magnitude(reduce)
        if key == "random":
            return Random(seed)
        if key == "ln":
            return LnNorm(norm)
        if key in ("l1", "l2"):
            return LnNorm(int(key[1]))
        if key == "taylor":
            return Taylor()
        if key == "movement":
            return Movement()
        raise ValueError(
            f"unknown method {method!r}; use 'magnitude', 'random', 'ln', 'taylor', 'movement', 'wanda', 'sparsegpt', "
            "a mapping of importance scores, or a Criterion instance"
        )
    raise TypeError(
        f"method must be a string, a Criterion or a mapping of scores; got {type(method).__name__}"
    )

"""One-shot :func:`prune` and the scheduled :class:`Pruner`."""

from __future__ import annotations

import fnmatch
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._validation import Amount, check_amount, check_fraction, units_to_prune
from .criteria import Criterion, CriterionLike, make_criterion
from .granularity import GranularityLike, parse_granularity
from .masks import apply_masks, attach_mask, enforce_on_forward, get_mask, zero_optimizer_state
from .ranking import select_global, unit_scores
from .schedules import as_schedule
from .selection import Selector, Target, select_targets, unwrap

__all__ = ["prune", "Pruner"]

SparsityLike = Union[Amount, Mapping[str, Amount]]
BoundLike = Union[None, float, Mapping[str, float]]


def _lookup(table: Mapping[str, object], t: Target) -> Optional[object]:
    """Value for a target from a dict keyed by param name, module name or fnmatch pattern."""
    for key in (t.name, t.module_name):
        if key in table:
            return table[key]
    for key, v in table.items():
        if fnmatch.fnmatchcase(t.module_name, key) or fnmatch.fnmatchcase(t.name, key):
            return v
    return None


class _Engine:
    """Target selection + mask computation shared by prune() and Pruner."""

    def __init__(self, model: nn.Module, method: CriterionLike, granularity: GranularityLike, scope: str,
                 include: Selector, exclude: Selector, *, min_sparsity: BoundLike, max_sparsity: BoundLike,
                 skip_first: bool, skip_last: bool, param_names: Sequence[str], block_reduce: str,
                 norm: int, seed: int, regrow: bool, calibration: Any = None) -> None:
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.model = model
        self.criterion: Criterion = make_criterion(method, reduce=block_reduce, norm=norm, seed=seed,
                                                   calibration=calibration)
        if scope == "global" and self.criterion.layer_scope_only:
            raise ValueError(f"{type(self.criterion).__name__} decides each layer on its own; use scope='layer'")
        self.granularity = parse_granularity(granularity)
        self.scope = scope
        self.regrow = bool(regrow)
        self.targets: List[Target] = select_targets(model, include, exclude, param_names, skip_first, skip_last)
        if not self.targets:
            raise ValueError(
                "no parameters selected for pruning; the default selects Linear and Conv1d/2d/3d weights - "
                "use include=... (a module type such as nn.Embedding, a name pattern or a callable)"
            )
        self.min_sparsity = self._bounds(min_sparsity, "min_sparsity", 0.0)
        self.max_sparsity = self._bounds(max_sparsity, "max_sparsity", 1.0)
        for t in self.targets:
            lo, hi = self.min_sparsity[t.name], self.max_sparsity[t.name]
            if lo > hi:
                raise ValueError(f"min_sparsity ({lo}) > max_sparsity ({hi}) for {t.name}")
        # modules pruned with torch.nn.utils.prune: keep their mask as the starting mask
        for t in self.targets:
            m = get_mask(t.module, t.param_name)
            if m is not None and hasattr(t.module, t.param_name + "_orig"):
                attach_mask(t.module, t.param_name, m.clone())
        self.criterion.prepare(unwrap(model), self.targets, self.granularity)

    def _bounds(self, value: BoundLike, name: str, default: float) -> Dict[str, float]:
        if value is None:
            return {t.name: default for t in self.targets}
        if isinstance(value, Mapping):
            out = {}
            for t in self.targets:
                v = _lookup(value, t)
                out[t.name] = default if v is None else check_fraction(v, f"{name}[{t.name!r}]")
            return out
        v = check_fraction(value, name)
        return {t.name: v for t in self.targets}

    def current_masks(self) -> Dict[str, Tensor]:
        out = {}
        for t in self.targets:
            m = get_mask(t.module, t.param_name)
            out[t.name] = m if m is not None else torch.ones(t.weight.shape, dtype=torch.bool, device=t.weight.device)
        return out

    def compute(self, sparsity: SparsityLike, step: int = 0) -> Dict[str, Tensor]:
        """Keep-masks for ``sparsity`` (not yet attached)."""
        crit, g = self.criterion, self.granularity
        if isinstance(sparsity, Mapping):
            if self.scope == "global":
                raise ValueError("per-layer sparsity targets (a dict) need scope='layer'")
            per = {}
            for t in self.targets:
                v = _lookup(sparsity, t)
                per[t.name] = check_amount(0.0 if v is None else v, f"sparsity[{t.name!r}]")  # type: ignore[arg-type]
        else:
            amount = check_amount(sparsity, "sparsity")
            per = {t.name: amount for t in self.targets}
        prior = {t.name: get_mask(t.module, t.param_name) for t in self.targets}
        masks: Dict[str, Tensor] = {}
        if self.scope == "layer":
            for t in self.targets:
                w = t.weight
                n = g.n_units(w.shape)
                amount = per[t.name]
                k = units_to_prune(amount, n, where=t.name)
                lo, hi = round(self.min_sparsity[t.name] * n), round(self.max_sparsity[t.name] * n)
                k = min(max(k, lo), hi)
                m = crit.compute_mask(w, k, granularity=g, name=t.name, module=t.module, step=step,
                                      prior_mask=prior[t.name], regrow=self.regrow)
                if not isinstance(m, Tensor) or tuple(m.shape) != tuple(w.shape):
                    raise ValueError(f"{type(crit).__name__}.compute_mask must return a tensor shaped {tuple(w.shape)} for {t.name}")
                masks[t.name] = m.to(torch.bool)
            return masks
        layers, lo, hi = [], [], []
        for t in self.targets:
            w = t.weight
            s = crit.score(w, name=t.name, module=t.module, step=step)
            u, e = unit_scores(s, g, crit.reduce, w.shape, prior[t.name], self.regrow, t.name)
            layers.append((u, e))
            lo.append(round(self.min_sparsity[t.name] * u.numel()))
            hi.append(round(self.max_sparsity[t.name] * u.numel()))
        total = sum(u.numel() for u, _ in layers)
        k = units_to_prune(per[self.targets[0].name], total, where="the selected layers (global scope)")
        prunes = select_global(layers, k, lo, hi, [t.name for t in self.targets])
        for t, p in zip(self.targets, prunes):
            masks[t.name] = g.expand(~p, t.weight.shape).to(t.weight.device)
        return masks

    def attach(self, masks: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        out = {}
        for t in self.targets:
            out[t.name] = attach_mask(t.module, t.param_name, masks[t.name])
        enforce_on_forward(unwrap(self.model))
        return out


def prune(model: nn.Module, sparsity: SparsityLike, method: CriterionLike = "magnitude",
          granularity: GranularityLike = "unstructured", scope: str = "layer", include: Selector = None,
          exclude: Selector = None, *, min_sparsity: BoundLike = None, max_sparsity: BoundLike = None,
          skip_first: bool = False, skip_last: bool = False, param_names: Sequence[str] = ("weight",),
          block_reduce: str = "mean", norm: int = 2, seed: int = 0, regrow: bool = False,
          permanent: bool = False, calibration: Any = None) -> Dict[str, Tensor]:
    """Prune ``model`` once, in place, and return the bool keep-masks by parameter name.

    Args:
        model: any ``nn.Module`` (DDP/DataParallel wrappers are unwrapped).
        sparsity: fraction in ``[0, 1]`` or int count of units to prune; with
            ``scope="layer"`` also a dict ``{name or pattern: amount}`` (unlisted layers: 0).
            Units are weights (unstructured, N:M), blocks, rows or input columns;
            exactly ``round(sparsity * n_units)`` are pruned.
        method: ``"magnitude"``, ``"random"``, ``"ln"``, ``"taylor"``, ``"movement"``,
            the activation-aware ``"wanda"`` (``|w| * ||x||``) and ``"sparsegpt"``
            (prunes and updates the kept weights to reconstruct each layer's
            output; needs ``scope="layer"``), a dict of importance tensors, or a
            :class:`Criterion`.
        granularity: ``"unstructured"``, ``"channels"``, ``"inputs"``, a block ``(r, c)``
            or an N:M pattern ``"2:4"``.
        scope: ``"layer"`` (each layer to the target) or ``"global"`` (one ranking).
        include, exclude: module types, fnmatch name patterns or ``(name, module) -> bool``.
        min_sparsity, max_sparsity: per-layer bounds (float or dict), also in global scope.
        skip_first, skip_last: protect the first / last selected layer.
        block_reduce: ``"mean"`` or ``"max"`` of ``|w|`` over a block for magnitude.
        norm: 1 or 2 for ``method="ln"``.
        seed: seed of ``method="random"``.
        regrow: if False (default) previously pruned units stay pruned.
        permanent: bake the masks right away (no hooks left).
        calibration: for ``"wanda"`` / ``"sparsegpt"`` (required there, refused
            elsewhere): an iterable of model inputs; each item is fed as
            ``model(x)`` (tensor), ``model(*items)`` (tuple/list) or ``model(**d)``
            (dict).  See :mod:`sparsekit.prune.wanda` and :mod:`sparsekit.prune.sparsegpt`.

    Masks stay attached (gradients masked, weights re-zeroed before each forward)
    until :func:`make_permanent`.

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune, sparsity_report
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> masks = prune(model, 0.75)
        >>> sorted(masks), [float(1 - m.float().mean()) for m in masks.values()]
        (['0.weight', '2.weight'], [0.75, 0.75])
        >>> sparsity_report(model).total["sparsity"]
        0.75
    """
    engine = _Engine(model, method, granularity, scope, include, exclude, min_sparsity=min_sparsity,
                     max_sparsity=max_sparsity, skip_first=skip_first, skip_last=skip_last,
                     param_names=param_names, block_reduce=block_reduce, norm=norm, seed=seed, regrow=regrow,
                     calibration=calibration)
    masks = engine.attach(engine.compute(sparsity))
    if permanent:
        from .masks import make_permanent
        make_permanent(model)
        return {k: v.clone() for k, v in masks.items()}
    return masks


class Pruner:
    """Gradual pruning during training on a sparsity schedule.

    Call :meth:`step` after every ``optimizer.step()``.  The pruner counts
    completed optimizer steps ``t`` (0 at construction) and, when
    ``schedule(t)`` says so, recomputes the masks for the scheduled sparsity
    (so batch ``t`` trains with them, as in TensorFlow Model Optimization);
    at every step it re-applies the masks.  Gradients of pruned weights are
    masked by hooks; pass ``optimizer=`` to also zero their momentum / Adam
    state.  Under ``torch.distributed`` the masks are broadcast from rank 0
    after every update (``sync_distributed``), so all ranks agree.

    Args:
        model: the model (DDP/DataParallel wrappers are unwrapped).
        schedule: :class:`ConstantSparsity`, :class:`PolynomialDecay`, any callable
            ``step -> (update_now, sparsity)`` (sparsity may be a per-layer dict),
            or a number (constant sparsity, updated every step).
        method, granularity, scope, include, exclude, ...: as in :func:`prune`.
        optimizer: optional; its state entries of pruned weights are zeroed.
        calibration: model inputs for ``method="wanda"`` / ``"sparsegpt"``; kept by the
            criterion, which captures its statistics at the first mask update and
            reuses them at later updates (``pruner.criterion.reset()`` recaptures).
            SparseGPT also rewrites the kept weights at every update.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Pruner, PolynomialDecay
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(20, 10)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> pruner = Pruner(model, PolynomialDecay(0.0, 0.9, begin_step=0, end_step=4, frequency=1), optimizer=opt)
        >>> for _ in range(6):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 20)).pow(2).mean().backward()
        ...     opt.step()
        ...     _ = pruner.step()
        >>> pruner.step_count, pruner.current_sparsity, int((model.weight == 0).sum())
        (6, 0.9, 180)
    """

    def __init__(self, model: nn.Module, schedule: object, method: CriterionLike = "magnitude",
                 granularity: GranularityLike = "unstructured", scope: str = "layer", include: Selector = None,
                 exclude: Selector = None, *, optimizer: Optional[torch.optim.Optimizer] = None,
                 min_sparsity: BoundLike = None, max_sparsity: BoundLike = None, skip_first: bool = False,
                 skip_last: bool = False, param_names: Sequence[str] = ("weight",), block_reduce: str = "mean",
                 norm: int = 2, seed: int = 0, regrow: bool = False, sync_distributed: bool = True,
                 calibration: Any = None) -> None:
        self.schedule = as_schedule(schedule)
        self._engine = _Engine(model, method, granularity, scope, include, exclude, min_sparsity=min_sparsity,
                               max_sparsity=max_sparsity, skip_first=skip_first, skip_last=skip_last,
                               param_names=param_names, block_reduce=block_reduce, norm=norm, seed=seed,
                               regrow=regrow, calibration=calibration)
        self.model = model
        self.optimizer = optimizer
        self.sync_distributed = sync_distributed
        self._step = 0
        self._sparsity: Union[float, Dict[str, float]] = 0.0
        self._masks = self._engine.attach(self._engine.current_masks())
        self._maybe_update()

    # -- public ---------------------------------------------------------
    @property
    def criterion(self) -> Criterion:
        return self._engine.criterion

    @property
    def targets(self) -> List[str]:
        """Names of the pruned parameters."""
        return [t.name for t in self._engine.targets]

    @property
    def masks(self) -> Dict[str, Tensor]:
        """Live bool keep-masks by parameter name (do not modify in place)."""
        return dict(self._masks)

    @property
    def step_count(self) -> int:
        """Completed optimizer steps seen (the ``t`` passed to the schedule)."""
        return self._step

    @property
    def current_sparsity(self) -> Union[float, Dict[str, float]]:
        """The sparsity of the last mask update (0.0 before the first)."""
        return self._sparsity

    def achieved_sparsity(self) -> float:
        """Fraction of pruned entries over all pruned parameters."""
        total = sum(m.numel() for m in self._masks.values())
        kept = sum(int(m.sum()) for m in self._masks.values())
        return (total - kept) / total if total else 0.0

    def step(self) -> bool:
        """Advance one step (call after ``optimizer.step()``); returns True if the masks changed."""
        self.criterion.accumulate([(t.name, t.module._parameters[t.param_name]) for t in self._engine.targets])
        self._step += 1
        return self._maybe_update()

    def update(self, sparsity: SparsityLike) -> None:
        """Recompute the masks for ``sparsity`` now (outside the schedule)."""
        self._set(sparsity)

    def state_dict(self) -> Dict[str, object]:
        """Step, current sparsity, masks and criterion statistics (resume exactly with load_state_dict)."""
        sp = dict(self._sparsity) if isinstance(self._sparsity, Mapping) else self._sparsity
        return {"step": self._step, "sparsity": sp,
                "masks": {k: v.detach().cpu().clone() for k, v in self._masks.items()},
                "criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict`; call after loading the model's own state."""
        masks = state["masks"]
        if not isinstance(masks, Mapping) or set(masks) != set(self._masks):
            got = sorted(masks) if isinstance(masks, Mapping) else type(masks).__name__
            raise ValueError(f"state masks {got} do not match this pruner's parameters {sorted(self._masks)}")
        for t in self._engine.targets:
            if tuple(masks[t.name].shape) != tuple(self._masks[t.name].shape):
                raise ValueError(f"mask for {t.name} has shape {tuple(masks[t.name].shape)}, "
                                 f"expected {tuple(self._masks[t.name].shape)}")
        self._step = int(state["step"])  # type: ignore[arg-type]
        sp = state["sparsity"]
        self._sparsity = dict(sp) if isinstance(sp, Mapping) else float(sp)  # type: ignore[arg-type]
        self.criterion.load_state_dict(state.get("criterion", {}))  # type: ignore[arg-type]
        self._masks = self._engine.attach(masks)  # type: ignore[arg-type]
        self._after_apply()

    def remove(self) -> nn.Module:
        """Bake the masks into the weights and remove hooks and buffers (see make_permanent)."""
        from .masks import detach_mask
        for t in self._engine.targets:
            detach_mask(t.module, t.param_name, bake=True)
        self._masks = {}
        return self.model

    # -- internals ------------------------------------------------------
    def _maybe_update(self) -> bool:
        out = self.schedule(self._step)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"schedule({self._step}) must return (update_now: bool, sparsity), got {out!r}")
        update, sparsity = out
        if update:
            self._set(sparsity)
        else:
            apply_masks(self.model)
            self._after_apply()
        return bool(update)

    def _set(self, sparsity: SparsityLike) -> None:
        if isinstance(sparsity, numbers.Real) and not isinstance(sparsity, (bool, numbers.Integral)):
            sparsity = float(sparsity)
        masks = self._engine.compute(sparsity, step=self._step)
        if self.sync_distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in self._engine.targets:
                buf = masks[t.name].to(torch.uint8)
                torch.distributed.broadcast(buf, src=0)
                masks[t.name] = buf.bool()
        self._masks = self._engine.attach(masks)
        self._sparsity = dict(sparsity) if isinstance(sparsity, Mapping) else sparsity  # type: ignore[assignment]
        if getattr(self.criterion, "reset_after_update", False):
            self.criterion.reset()
        self._after_apply()

    def _after_apply(self) -> None:
        if self.optimizer is not None:
            zero_optimizer_state(self.optimizer, unwrap(self.model))

    def __repr__(self) -> str:
        return (f"Pruner(step={self._step}, sparsity={self._sparsity}, criterion={self.criterion!r}, "
                f"granularity={self._engine.granularity!r}, scope={self._engine.scope!r}, "
                f"targets={len(self._engine.targets)})")

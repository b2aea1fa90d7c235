"""Iterative prune-and-fine-tune: raise sparsity in rounds while validation allows."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ._validation import check_fraction, check_int
from .criteria import CriterionLike, _GradientCriterion, make_criterion
from .fit import History, LossFn, MetricFn, _split, evaluate, finetune
from .masks import attach_mask, detach_mask, make_permanent, named_masks
from .pruner import prune
from .report import sparsity_report
from .selection import unwrap

__all__ = ["iterative_prune", "IterativeResult", "Round"]


@dataclass
class Round:
    """One round: target sparsity, validation results after fine-tuning, and the decision.

    Example:
        >>> from sparsekit.prune import Round
        >>> Round(1, 0.5, 0.02, None, True).accepted
        True
    """

    index: int
    sparsity: float
    val_loss: float
    metric: Optional[float]
    accepted: bool
    history: Optional[History] = None


@dataclass
class IterativeResult:
    """Outcome of :func:`iterative_prune`: the model holds the best accepted round.

    Example:
        >>> import torch
        >>> from sparsekit.prune import IterativeResult, Round
        >>> res = IterativeResult(torch.nn.Linear(2, 2), 0.5, 0.1, None, [Round(1, 0.5, 0.1, None, True)], "done")
        >>> print(str(res).splitlines()[-1])
        kept sparsity 0.5000 (done)
    """

    model: nn.Module
    sparsity: float
    val_loss: float
    metric: Optional[float]
    rounds: List[Round] = field(default_factory=list)
    reason: str = ""

    def __str__(self) -> str:
        lines = [f"{'round':>5}  {'sparsity':>8}  {'val loss':>10}  {'metric':>8}  accepted"]
        for r in self.rounds:
            m = "" if r.metric is None else f"{r.metric:.4f}"
            lines.append(f"{r.index:>5}  {r.sparsity:>8.4f}  {r.val_loss:>10.4g}  {m:>8}  {'yes' if r.accepted else 'no'}")
        lines.append(f"kept sparsity {self.sparsity:.4f} ({self.reason})")
        return "\n".join(lines)


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {"state": copy.deepcopy(unwrap(model).state_dict()),
            "masks": {name: (mname, pn, m.detach().clone()) for name, mod, pn, m in named_masks(model)
                      for mname in [name.rsplit(".", 1)[0] if "." in name else ""]}}


def _restore(model: nn.Module, snap: Dict[str, Any]) -> None:
    base = unwrap(model)
    for name, module, pn, _ in list(named_masks(base)):
        if name not in snap["masks"]:
            detach_mask(module, pn, bake=False)
    base.load_state_dict(snap["state"])
    for name, (mname, pn, m) in snap["masks"].items():
        attach_mask(base.get_submodule(mname), pn, m)


# Long because the docstring documents the loop's every argument; the loop itself is ~75 lines
# of one prune -> fine-tune -> evaluate round, kept together so the round reads in order.
def iterative_prune(model: nn.Module, train_loader: Iterable, val_loader: Iterable, loss_fn: LossFn,
                    optimizer_fn: Callable[[nn.Module], torch.optim.Optimizer], *,
                    sparsities: Optional[Sequence[float]] = None, rate: float = 0.2, max_rounds: int = 10,
                    threshold: Optional[float] = None, metric: Optional[MetricFn] = None, mode: Optional[str] = None,
                    greedy: bool = False, tolerance: float = 0.0, epochs_per_round: int = 1,
                    method: CriterionLike = "magnitude", granularity: Any = "unstructured", scope: str = "layer",
                    include: Any = None, exclude: Any = None, score_batches: int = 8, permanent: bool = True,
                    progress: bool = False, **prune_kwargs: Any) -> IterativeResult:
    """Prune in rounds of rising sparsity, fine-tuning after each, and keep the best model that qualified.

    Round ``r`` prunes to ``sparsities[r]`` (default ``1 - (1 - rate) ** r``, i.e. ``rate``
    of the remaining weights each round, up to ``max_rounds``), builds a fresh optimizer with
    ``optimizer_fn(model)``, fine-tunes ``epochs_per_round`` epochs (masks enforced) and
    validates.  It stops when the validation value misses ``threshold`` (``metric >= threshold``
    with a metric, else ``val_loss <= threshold``; ``mode`` overrides the direction) or the
    rounds run out, and restores the sparsest round that met the threshold.  With
    ``greedy=True`` a round is accepted only if the validation loss is not worse than the
    last accepted round's (plus ``tolerance``); the first rejected round ends the search.

    Gradient criteria (``"taylor"``, ``"movement"``) accumulate over ``score_batches``
    batches before the first round and during every fine-tuning step.

    Returns an :class:`IterativeResult`; ``result.model`` is ``model`` itself holding the best
    accepted weights (masks baked in unless ``permanent=False``).

    Example:
        >>> import torch
        >>> from sparsekit.prune import finetune, iterative_prune
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(256, 10); y = x[:, :2].sum(1, keepdim=True)
        >>> loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        >>> mse = torch.nn.functional.mse_loss
        >>> _ = finetune(model, loader, mse, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=30, progress=False)
        >>> res = iterative_prune(model, loader, loader, mse, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
        ...                       sparsities=[0.5, 0.8, 0.9, 0.99], threshold=0.05, epochs_per_round=10)
        >>> res.sparsity, [r.accepted for r in res.rounds], float((model[0].weight == 0).float().mean())
        (0.8, [True, True, True, False], 0.800000011920929)
    """
    rate = check_fraction(rate, "rate")
    max_rounds = check_int(max_rounds, "max_rounds", minimum=1)
    epochs_per_round = check_int(epochs_per_round, "epochs_per_round", minimum=0)
    if sparsities is None:
        if not 0 < rate < 1:
            raise ValueError("rate must be in (0, 1) when sparsities are not given")
        sparsities = [1 - (1 - rate) ** r for r in range(1, max_rounds + 1)]
    else:
        sparsities = [check_fraction(s, "sparsities[i]") for s in sparsities][:max_rounds]
        if any(b < a for a, b in zip(sparsities, sparsities[1:])):
            raise ValueError(f"sparsities must not decrease, got {list(sparsities)}")
    if mode is None:
        mode = "max" if metric is not None else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")

    criterion = make_criterion(method, reduce=prune_kwargs.pop("block_reduce", "mean"),
                               norm=prune_kwargs.pop("norm", 2), seed=prune_kwargs.pop("seed", 0))
    grad_based = isinstance(criterion, _GradientCriterion)

    def value_of(ev: Dict[str, float]) -> float:
        return ev["metric"] if metric is not None else ev["loss"]

    def qualifies(ev: Dict[str, float]) -> bool:
        if threshold is None:
            return True
        v = value_of(ev)
        return v >= threshold if mode == "max" else v <= threshold

    if grad_based and criterion.batches == 0:  # type: ignore[attr-defined]
        for i, batch in enumerate(train_loader):
            if i >= score_batches:
                break
            xs, y, _ = _split(batch)
            model.zero_grad(set_to_none=True)
            loss_fn(model(*xs), y).backward()
            criterion.accumulate(model)
        model.zero_grad(set_to_none=True)

    base_ev = evaluate(model, val_loader, loss_fn, metric)
    start = sparsity_report(model).total["sparsity"]
    rounds = [Round(0, start, base_ev["loss"], base_ev.get("metric"), qualifies(base_ev))]
    if not rounds[0].accepted:
        if permanent:
            make_permanent(model)
        return IterativeResult(model, start, base_ev["loss"], base_ev.get("metric"), rounds,
                               "the unpruned model already misses the threshold")
    best = _snapshot(model)
    best_round = rounds[0]
    reason = "round budget reached"
    for i, s in enumerate(sparsities, start=1):
        prune(model, s, method=criterion, granularity=granularity, scope=scope, include=include,
              exclude=exclude, **prune_kwargs)
        if grad_based and getattr(criterion, "reset_after_update", False):
            criterion.reset()
        opt = optimizer_fn(model)
        hist = finetune(model, train_loader, loss_fn, opt, None, epochs=epochs_per_round, val_loader=None,
                        progress=progress, on_step=(lambda step, loss: criterion.accumulate(model)) if grad_based else None) \
            if epochs_per_round else None
        ev = evaluate(model, val_loader, loss_fn, metric)
        ok = qualifies(ev)
        if ok and greedy and ev["loss"] > best_round.val_loss + tolerance:
            ok = False
            reason = f"round {i}: validation loss got worse (greedy)"
        elif not ok:
            reason = f"round {i}: validation {'metric' if metric is not None else 'loss'} missed the threshold"
        rounds.append(Round(i, s, ev["loss"], ev.get("metric"), ok, hist))
        if not ok:
            break
        best, best_round = _snapshot(model), rounds[-1]
    _restore(model, best)
    if permanent:
        make_permanent(model)
    return IterativeResult(model, best_round.sparsity, best_round.val_loss, best_round.metric, rounds, reason)

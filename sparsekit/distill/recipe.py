"""The one-call recipe: gradual pruning of a model with its own dense copy as the teacher."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sparsekit.prune.calibration import CalibratedCriterion
from sparsekit.prune.criteria import Criterion
from sparsekit.prune.masks import attach_mask, detach_mask, make_permanent, named_masks
from sparsekit.prune.pruner import Pruner, prune
from sparsekit.prune.schedules import PolynomialDecay

from .inputs import text_batches
from .loop import DEFAULT_LR, DistillHistory, distill
from .losses import Term

__all__ = ["prune_and_distill", "pruning_schedule", "CALIBRATION_BATCHES"]

GRADIENT_METHODS = ("movement", "taylor")
CALIBRATED_METHODS = ("wanda", "sparsegpt")
CALIBRATION_BATCHES = 8
"""Training batches :func:`prune_and_distill` calibrates ``"wanda"`` / ``"sparsegpt"`` on by default."""


def _needs_gradients(method: Any) -> bool:
    if isinstance(method, str):
        return method.lower() in GRADIENT_METHODS
    return isinstance(method, Criterion) and type(method).accumulate is not Criterion.accumulate


def _needs_calibration(method: Any) -> bool:
    """A criterion named by string that reads calibration inputs (a criterion object carries its own)."""
    return isinstance(method, str) and method.lower() in CALIBRATED_METHODS


def pruning_schedule(sparsity: float, steps: int, *, prune_fraction: float = 2 / 3, frequency: Optional[int] = None,
                     begin_step: int = 0) -> PolynomialDecay:
    """The recipe's schedule: cubic rise from 0 to ``sparsity`` over the first ``prune_fraction`` of ``steps``.

    Masks update every ``frequency`` steps (default: about ten updates); the end step
    lies on that grid, so the final sparsity is always reached, then held.

    Example:
        >>> from sparsekit.distill.recipe import pruning_schedule
        >>> pruning_schedule(0.8, 30)
        PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=20, power=3, frequency=2)
    """
    if not 0 < prune_fraction <= 1:
        raise ValueError(f"prune_fraction must be in (0, 1], got {prune_fraction!r}")
    end = max(begin_step + 1, round(steps * prune_fraction))
    if end > steps:
        raise ValueError(f"steps={steps} is too few to prune from step {begin_step}: need at least {begin_step + 1}")
    span = end - begin_step
    if frequency is None:
        frequency = max(1, span // 10)
    frequency = min(frequency, span)
    end = begin_step + frequency * (span // frequency)
    return PolynomialDecay(0.0, sparsity, begin_step=begin_step, end_step=end, power=3, frequency=frequency)


def _as_batches(data: Iterable[Any], model: nn.Module, batch_size: int, tokenizer: Optional[Callable[..., Any]],
                max_length: int) -> Iterable[Any]:
    """Batches by the calling rule; an iterable of strings is tokenized (sentence-transformers or ``tokenizer``)."""
    if iter(data) is data:  # a one-shot iterator cannot be re-iterated: keep its items
        data = list(data)
    first = next(iter(data), None)
    if isinstance(first, str):
        return text_batches(data, model, batch_size=batch_size, tokenizer=tokenizer, max_length=max_length)
    return data


def prune_and_distill(model: nn.Module, data: Iterable[Any], *, steps: int, sparsity: float = 0.8,
                      granularity: Union[str, Tuple[int, int]] = "unstructured", method: Any = "magnitude",
                      scope: str = "layer", one_shot: Any = None, calibration: Optional[Iterable[Any]] = None,
                      teacher: Optional[nn.Module] = None, loss: Union[None, Term, Sequence[Term]] = None,
                      lr: float = DEFAULT_LR,
                      prune_fraction: float = 2 / 3, frequency: Optional[int] = None, include: Any = None,
                      exclude: Any = None, batch_size: int = 16, tokenizer: Optional[Callable[..., Any]] = None,
                      max_length: int = 128, return_history: bool = False,
                      **distill_kwargs: Any) -> Union[nn.Module, Tuple[nn.Module, DistillHistory]]:
    """Prune ``model`` to ``sparsity`` while distilling it from its own dense copy; in place.

    1. ``teacher = copy.deepcopy(model)`` (the dense model, in eval mode), unless a
       ``teacher`` is given (for example the dense model as TorchScript, or a larger model
       with outputs of the same shapes).
    2. Gradual (default): a :class:`sparsekit.Pruner` (``method``, ``granularity``, ``scope``,
       ``include``/``exclude``) with :func:`pruning_schedule`: cubic rise from 0 to
       ``sparsity`` over the first ``prune_fraction`` of the steps (from step 1 for
       gradient criteria such as ``"movement"`` and ``"taylor"``, which need one backward
       pass first), then held while the student recovers.
       One-shot start (``one_shot="sparsegpt"``, ``"wanda"``, ``"magnitude"``, ...): the
       model is pruned once to ``sparsity`` with that criterion by :func:`sparsekit.prune`,
       and distillation then trains the kept weights with those masks fixed (``method``,
       ``prune_fraction`` and ``frequency`` are not used).
    3. :func:`sparsekit.distill` for ``steps`` steps (default loss: MSE on every output,
       token outputs averaged over real tokens when batches carry an ``attention_mask``;
       other keywords such as ``accumulate``, ``autocast``, ``validate`` go to it).
    4. :func:`sparsekit.make_permanent`: masks baked in as zeros, hooks removed, so the
       result is a plain model ready for :func:`sparsekit.convert`.

    ``data`` follows :func:`sparsekit.distill`'s calling rule, or is any iterable of
    strings: those are tokenized in batches of ``batch_size`` by the model's own
    ``.tokenize`` (sentence-transformers) or by ``tokenizer`` (Hugging Face).
    ``"wanda"`` and ``"sparsegpt"`` (as ``method`` or ``one_shot``) read ``calibration``,
    model inputs by the same calling rule; default: the first
    :data:`CALIBRATION_BATCHES` training batches. The model keeps its train/eval mode;
    the default ``lr`` suits fine-tuning a pretrained model, a model trained from
    scratch may want more.

    If anything fails on the way (a bad argument, a loss that turns NaN, an interrupt),
    the masks and hooks this call attached are removed (masks the model carried before
    are put back) and the weights are restored from the dense copy, so ``model`` is as
    it was; the error propagates.

    Returns:
        the pruned ``model`` (the same object), or ``(model, history)`` with ``return_history=True``.

    Example:
        >>> import torch, sparsekit
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> data = [torch.randn(16, 8) for _ in range(3)]
        >>> model = sparsekit.distill.prune_and_distill(model, data, sparsity=0.5, steps=6, lr=1e-3, progress=False)
        >>> float((model[0].weight == 0).float().mean()), [n for n, _ in model.named_buffers()]
        (0.5, [])
        >>> model = sparsekit.distill.prune_and_distill(model, data, sparsity=0.75, steps=2, one_shot="sparsegpt",
        ...                                             progress=False)
        >>> float((model[2].weight == 0).float().mean())
        0.75
    """
    batches = _as_batches(data, model, batch_size, tokenizer, max_length)
    was_training = model.training
    dense = copy.deepcopy(model)  # the teacher, and what a failure restores
    if teacher is None:
        teacher = dense.eval()
    masks_before = [(m, pn, mask.clone()) for _, m, pn, mask in named_masks(model)]
    try:
        history = _prune_and_train(model, teacher, batches, steps=steps, sparsity=sparsity, granularity=granularity,
                                   method=method, scope=scope, one_shot=one_shot, calibration=calibration, loss=loss,
                                   lr=lr, prune_fraction=prune_fraction, frequency=frequency, include=include,
                                   exclude=exclude, distill_kwargs=distill_kwargs)
    except BaseException:
        _restore(model, dense, masks_before)
        raise
    finally:
        model.train(was_training)
    make_permanent(model)
    return (model, history) if return_history else model


def _restore(model: nn.Module, dense: nn.Module, masks: List[Tuple[nn.Module, str, torch.Tensor]]) -> None:
    """Undo a failed :func:`prune_and_distill`: drop its masks, reload the weights, re-attach earlier masks."""
    for _, module, pn, _ in list(named_masks(model)):
        detach_mask(module, pn, bake=False)
    with torch.no_grad():
        model.load_state_dict(dense.state_dict())
        for module, pn, mask in masks:
            attach_mask(module, pn, mask)


def _prune_and_train(model: nn.Module, teacher: nn.Module, batches: Iterable[Any], *, steps: int, sparsity: float,
                     granularity: Any, method: Any, scope: str, one_shot: Any, calibration: Optional[Iterable[Any]],
                     loss: Any, lr: float, prune_fraction: float, frequency: Optional[int], include: Any,
                     exclude: Any, distill_kwargs: dict) -> DistillHistory:
    """Steps 2 and 3 of :func:`prune_and_distill` (masks attached, weights trained; nothing undone here)."""
    criterion = method if one_shot is None else one_shot
    calib = None
    if _needs_calibration(criterion):
        calib = list(calibration if calibration is not None else itertools.islice(batches, CALIBRATION_BATCHES))
    elif calibration is not None and not isinstance(criterion, CalibratedCriterion):
        raise ValueError(f"calibration= is read by method or one_shot 'wanda' / 'sparsegpt' only, not {criterion!r}")
    pruner = None
    if one_shot is not None:
        model.eval()  # calibration statistics without dropout
        prune(model, sparsity, method=one_shot, granularity=granularity, scope=scope, include=include,
              exclude=exclude, calibration=calib)
    else:
        begin = 1 if _needs_gradients(method) else 0
        schedule = pruning_schedule(sparsity, steps, prune_fraction=prune_fraction, frequency=frequency,
                                    begin_step=begin)
        pruner = Pruner(model, schedule, method=method, granularity=granularity, scope=scope, include=include,
                        exclude=exclude, calibration=calib)
    model.train()
    return distill(model, teacher, batches, steps=steps, pruner=pruner, loss=loss, lr=lr, **distill_kwargs)

"""A small fit loop that keeps pruning masks enforced: :func:`finetune`."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .report import sparsity_report

__all__ = ["History", "finetune", "evaluate"]

LossFn = Callable[[Any, Any], Tensor]
MetricFn = Callable[[Any, Any], Any]


def _to(obj: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _split(batch: Any) -> Tuple[Sequence[Any], Any, int]:
    """``(inputs, target, size)`` from ``(x, y)`` or ``(x1, ..., xn, y)`` batches."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise TypeError("each batch must be a tuple (inputs..., target), e.g. from a TensorDataset DataLoader; "
                        f"got {type(batch).__name__}")
    *xs, y = batch
    size = len(y) if hasattr(y, "__len__") else 1
    return xs, y, size


def evaluate(model: nn.Module, loader: Iterable, loss_fn: LossFn, metric: Optional[MetricFn] = None,
             device: Optional[torch.device] = None, autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Mean loss (and metric) over ``loader``, weighted by batch size, in eval mode without gradients.

    Example:
        >>> import torch
        >>> from sparsekit.prune import evaluate
        >>> model = torch.nn.Linear(3, 1)
        >>> loader = [(torch.zeros(4, 3), model.bias.detach().expand(4, 1))]
        >>> evaluate(model, loader, torch.nn.functional.mse_loss)["loss"]
        0.0
    """
    was_training = model.training
    model.eval()
    total_loss, total_metric, n = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                xs, y, size = _split(_to(batch, device))
                with torch.autocast(device_type="cpu" if device is None else torch.device(device).type,
                                    dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                    out = model(*xs)
                    loss = loss_fn(out, y)
                total_loss += float(loss) * size
                if metric is not None:
                    total_metric += float(metric(out, y)) * size
                n += size
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("the validation loader yielded no batches")
    out = {"loss": total_loss / n}
    if metric is not None:
        out["metric"] = total_metric / n
    return out


@dataclass
class History:
    """What :func:`finetune` did: one dict per epoch (``epoch``, ``train_loss``,
    ``val_loss``, ``metric``, ``sparsity``, ``steps``, ``seconds``), plus the best
    epoch of the monitored value and whether training stopped early.
    ``history["val_loss"]`` gives the list of one key over epochs.

    Example:
        >>> from sparsekit.prune import History
        >>> h = History(epochs=[{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
        >>> h["val_loss"], len(h)
        ([0.5, 0.4], 2)
    """

    epochs: List[Dict[str, float]] = field(default_factory=list)
    monitor: str = "val_loss"
    best_epoch: Optional[int] = None
    best_value: Optional[float] = None
    stopped_early: bool = False

    def __getitem__(self, key: str) -> List[Optional[float]]:
        return [e.get(key) for e in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> Dict[str, Any]:
        return {"epochs": [dict(e) for e in self.epochs], "monitor": self.monitor, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "stopped_early": self.stopped_early}


# Long because the docstring documents every argument; the steps live in _Steps below.
def finetune(model: nn.Module, train_loader: Iterable, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
             pruner: Optional[Any] = None, epochs: int = 1, val_loader: Optional[Iterable] = None,
             metric: Optional[MetricFn] = None, *, regularizer: Optional[Callable[[nn.Module], Tensor]] = None,
             scheduler: Optional[Any] = None, patience: Optional[int] = None, monitor: Optional[str] = None,
             mode: Optional[str] = None, min_delta: float = 0.0, restore_best: bool = False,
             max_steps: Optional[int] = None, grad_clip: Optional[float] = None,
             autocast_dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
             progress: bool = True, on_step: Optional[Callable[[int, float], None]] = None) -> History:
    """Train ``model`` for ``epochs`` with a progress bar, validating and measuring sparsity every epoch.

    Each step: ``zero_grad``, forward, ``loss_fn(out, target)`` (+ ``regularizer(model)``),
    backward, optional gradient clipping, ``optimizer.step()``, ``pruner.step()``,
    ``scheduler.step()`` (per step), ``on_step(global_step, loss)``.

    Args:
        train_loader / val_loader: iterables of ``(inputs..., target)`` batches.
        metric: ``metric(outputs, target) -> number`` averaged over the validation set.
        patience: stop after this many epochs without improvement of ``monitor``
            (``"val_loss"`` by default when there is a val_loader, ``"metric"`` if
            a metric is given, else ``"train_loss"``); ``mode`` ``"min"``/``"max"``
            defaults to max for the metric and min for losses.
        restore_best: reload the weights (and pruner state) of the best epoch at the end.
        max_steps: stop after this many optimizer steps in total.
        autocast_dtype: e.g. ``torch.bfloat16`` to train under ``torch.autocast``.
        progress: show a tqdm bar (needs ``tqdm``; silently off without it).

    Returns:
        a :class:`History`.

    Example:
        >>> import torch
        >>> from sparsekit.prune import ConstantSparsity, Pruner, finetune
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 8); y = x @ torch.randn(8, 1)
        >>> loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        >>> model = torch.nn.Linear(8, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.05)
        >>> pruner = Pruner(model, ConstantSparsity(0.5, frequency=4), optimizer=opt)
        >>> hist = finetune(model, loader, torch.nn.functional.mse_loss, opt, pruner, epochs=3,
        ...                 val_loader=loader, progress=False)
        >>> len(hist), hist["sparsity"][-1], hist["val_loss"][-1] < hist["val_loss"][0]
        (3, 0.5, True)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    monitor, mode = _monitor_and_mode(monitor, mode, metric, val_loader)
    try:
        from tqdm.auto import tqdm  # type: ignore
    except ImportError:  # pragma: no cover - tqdm is optional
        tqdm = None

    history = History(monitor=monitor)
    sign = 1.0 if mode == "min" else -1.0
    best_state = None
    bad_epochs = 0
    step = 0
    model.train()
    run = _Steps(model, loss_fn, optimizer, pruner, regularizer, scheduler, grad_clip, autocast_dtype, device,
                 on_step, max_steps)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        try:
            n_batches = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            n_batches = None
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress) \
            if tqdm is not None and progress else None
        try:
            train_loss, step = run.epoch(train_loader, step, bar)
        finally:
            if bar is not None:
                bar.close()
        rec: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": None, "metric": None,
                               "steps": step}
        if val_loader is not None:
            ev = evaluate(model, val_loader, loss_fn, metric, device, autocast_dtype)
            rec["val_loss"] = ev["loss"]
            rec["metric"] = ev.get("metric")
        rec["sparsity"] = (pruner.achieved_sparsity() if pruner is not None and hasattr(pruner, "achieved_sparsity")
                           else sparsity_report(model).total["sparsity"])
        rec["seconds"] = time.perf_counter() - t0
        history.epochs.append(rec)
        value = rec[monitor]
        if history.best_value is None or sign * (history.best_value - value) > min_delta:
            history.best_value, history.best_epoch = value, epoch + 1
            bad_epochs = 0
            if restore_best:
                best_state = (copy.deepcopy(model.state_dict()),
                              pruner.state_dict() if pruner is not None else None)
        else:
            bad_epochs += 1
        if max_steps is not None and step >= max_steps:
            break
        if patience is not None and bad_epochs >= patience:
            history.stopped_early = True
            break
    if restore_best and best_state is not None:
        model.load_state_dict(best_state[0])
        if best_state[1] is not None:
            pruner.load_state_dict(best_state[1])  # type: ignore[union-attr]
    return history


def _monitor_and_mode(monitor: Optional[str], mode: Optional[str], metric: Optional[MetricFn],
                      val_loader: Optional[Iterable]) -> Tuple[str, str]:
    """Checks ``monitor``/``mode`` and fills their defaults (see :func:`finetune`)."""
    if monitor is None:
        monitor = "metric" if (metric is not None and val_loader is not None) else (
            "val_loss" if val_loader is not None else "train_loss")
    if monitor not in ("val_loss", "metric", "train_loss"):
        raise ValueError(f"monitor must be 'val_loss', 'metric' or 'train_loss', got {monitor!r}")
    if monitor in ("val_loss", "metric") and val_loader is None:
        raise ValueError(f"monitor={monitor!r} needs a val_loader")
    if monitor == "metric" and metric is None:
        raise ValueError("monitor='metric' needs metric=...")
    if mode is None:
        mode = "max" if monitor == "metric" else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return monitor, mode


class _Steps:
    """The optimizer steps of :func:`finetune`, one epoch at a time."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, pruner: Optional[Any],
                 regularizer: Optional[Callable[[nn.Module], Tensor]], scheduler: Optional[Any],
                 grad_clip: Optional[float], autocast_dtype: Optional[torch.dtype], device: Optional[torch.device],
                 on_step: Optional[Callable[[int, float], None]], max_steps: Optional[int]) -> None:
        self.model, self.loss_fn, self.optimizer, self.pruner = model, loss_fn, optimizer, pruner
        self.regularizer, self.scheduler, self.grad_clip = regularizer, scheduler, grad_clip
        self.autocast_dtype, self.device, self.on_step, self.max_steps = autocast_dtype, device, on_step, max_steps

    def one(self, batch: Any, step: int) -> Tuple[float, int]:
        """One optimizer step on ``batch``; returns its loss and the batch size."""
        xs, y, size = _split(_to(batch, self.device))
        self.optimizer.zero_grad(set_to_none=True)
        device_type = "cpu" if self.device is None else torch.device(self.device).type
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self.model(*xs)
            loss = self.loss_fn(out, y)
        full = loss + self.regularizer(self.model) if self.regularizer is not None else loss
        full.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.pruner is not None:
            self.pruner.step()
        if self.scheduler is not None:
            self.scheduler.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"loss became {lv} at step {step}; lower the learning rate or check the data")
        return lv, size

    def epoch(self, loader: Iterable, step: int, bar: Any) -> Tuple[float, int]:
        """Steps over ``loader`` (until ``max_steps``); returns the mean training loss and the step count."""
        total, seen = 0.0, 0
        for batch in loader:
            step += 1
            lv, size = self.one(batch, step)
            total += lv * size
            seen += size
            if self.on_step is not None:
                self.on_step(step, lv)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4g}")
            if self.max_steps is not None and step >= self.max_steps:
                break
        return (total / seen if seen else float("nan")), step

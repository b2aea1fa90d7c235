"""The distillation training loop: :func:`distill`."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from sparsekit.prune.fit import History
from sparsekit.prune.report import sparsity_report
from sparsekit.prune.selection import unwrap

from .hooks import HiddenCapture, capture_names
from .inputs import call_model, move_batch, split_labels
from .losses import Pair, Term, as_terms
from .teacher import TeacherRunner

__all__ = ["distill", "DistillHistory", "DEFAULT_LR"]

DEFAULT_LR = 5e-5
"""AdamW learning rate of :func:`distill` when no optimizer is given (a fine-tuning rate)."""


class DistillHistory(History):
    """What :func:`distill` did, one record per *optimizer step* in ``steps``.

    Each record has ``step``, ``loss`` (weighted total, mean over accumulated batches),
    ``loss/<term>`` (each term, unweighted), ``sparsity`` (pruned fraction of the
    pruner's parameters), ``grad_norm``, ``lr``, ``seconds`` and, on validation steps,
    ``val``. ``validations`` lists ``{"step", "value"}``; ``best_epoch`` is the best
    validation's step. It stays a :class:`sparsekit.prune.History` (the record type of
    :func:`sparsekit.prune.finetune`, one record per epoch there): ``history["loss"]``
    gives the per-step losses, ``len(history)`` the steps taken, and ``epochs`` is
    another name for the same ``steps`` list.

    Example:
        >>> from sparsekit.distill import DistillHistory
        >>> h = DistillHistory(steps=[{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
        >>> h["loss"], len(h), h.steps[-1]["step"], h.epochs is h.steps
        ([0.5, 0.25], 2, 2, True)
    """

    def __init__(self, steps: Optional[List[Dict[str, Any]]] = None, *, monitor: str = "validate",
                 best_epoch: Optional[int] = None, best_value: Optional[float] = None, stopped_early: bool = False,
                 validations: Optional[List[Dict[str, float]]] = None) -> None:
        self.steps: List[Dict[str, Any]] = [] if steps is None else steps
        self.monitor, self.best_epoch, self.best_value = monitor, best_epoch, best_value
        self.stopped_early = stopped_early
        self.validations: List[Dict[str, float]] = [] if validations is None else validations

    @property  # type: ignore[override]
    def epochs(self) -> List[Dict[str, Any]]:
        """The per-step records (``steps``), under the name :class:`History` gives them."""
        return self.steps

    @epochs.setter
    def epochs(self, records: List[Dict[str, Any]]) -> None:
        self.steps = records

    def __repr__(self) -> str:
        return (f"DistillHistory(steps=<{len(self.steps)} records>, monitor={self.monitor!r}, "
                f"best_epoch={self.best_epoch}, best_value={self.best_value}, stopped_early={self.stopped_early})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DistillHistory):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def to_dict(self) -> Dict[str, Any]:
        """Plain data: ``steps`` (records), ``monitor``, ``best_epoch``, ``best_value``, ``stopped_early``,
        ``validations``."""
        return {"steps": [dict(r) for r in self.steps], "monitor": self.monitor, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "stopped_early": self.stopped_early,
                "validations": [dict(v) for v in self.validations]}


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _cycle(data: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``data``, re-iterated pass after pass."""
    if isinstance(data, (Tensor, str, bytes)) or isinstance(data, dict):
        raise TypeError(f"data must be an iterable of batches (a list, a DataLoader), not a {type(data).__name__}; "
                        "wrap a single batch as [batch]")
    passes = 0
    while True:
        n = 0
        for batch in data:
            n += 1
            yield batch
        if n == 0:
            extra = (f" on pass {passes + 1}: an iterator or generator can be used only once - pass a list or a "
                     "DataLoader" if passes else "")
            raise ValueError(f"data yielded no batches{extra}")
        passes += 1


def _trainable(student: nn.Module) -> List[nn.Parameter]:
    """Trainable parameters; all frozen is an error, some frozen a warning."""
    named = list(unwrap(student).named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    if len(frozen) == len(named):
        raise ValueError("every parameter of the student is frozen (requires_grad=False): nothing to train")
    if frozen:
        warnings.warn(f"{len(frozen)} of {len(named)} student parameters are frozen (requires_grad=False) and will "
                      f"not be trained: {frozen[:5]}{' ...' if len(frozen) > 5 else ''}", UserWarning, stacklevel=3)
    return [p for _, p in named if p.requires_grad]


def _autocast_dtype(autocast: Union[bool, torch.dtype]) -> Optional[torch.dtype]:
    if autocast is True:
        return torch.bfloat16
    if autocast is False or autocast is None:
        return None
    if isinstance(autocast, torch.dtype):
        return autocast
    raise TypeError(f"autocast must be a bool or a torch.dtype, got {autocast!r}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _Loop:
    """State of one :func:`distill` run; :meth:`run` trains."""

    def __init__(self, student: nn.Module, terms: Sequence[Term], teacher: TeacherRunner,
                 student_capture: HiddenCapture, optimizer: torch.optim.Optimizer, pruner: Optional[Any],
                 accumulate: int, autocast_dtype: Optional[torch.dtype], grad_clip: Optional[float],
                 scheduler: Optional[Any]) -> None:
        self.student, self.terms, self.teacher = student, list(terms), teacher
        self.capture, self.optimizer, self.pruner = student_capture, optimizer, pruner
        self.accumulate, self.autocast_dtype = accumulate, autocast_dtype
        self.grad_clip, self.scheduler = grad_clip, scheduler
        param = next(unwrap(student).parameters())
        self.device = param.device
        self.labels = list(dict.fromkeys(k for t in terms for k in t.labels))
        self.extra: List[nn.Parameter] = []
        self.names = self._term_names()

    def _term_names(self) -> List[str]:
        names: List[str] = []
        for t in self.terms:
            name, i = t.name, 2
            while name in names:
                name, i = f"{t.name}#{i}", i + 1
            names.append(name)
        return names

    def micro_step(self, batch: Any, step: int) -> Tuple[Tensor, List[float]]:
        """Forward both models on one batch and return (weighted total, unweighted term values)."""
        batch = move_batch(batch, self.device)
        inputs, labels = split_labels(batch, self.labels)
        t_out, t_hidden = self.teacher(inputs)
        amp = torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype) \
            if self.autocast_dtype is not None else contextlib.nullcontext()
        with amp:
            s_out = call_model(self.student, inputs)
        pair = Pair(s_out, t_out, self.capture.take(), t_hidden, labels, inputs)
        values = [term(pair) for term in self.terms]
        total = sum(term.weight * v for term, v in zip(self.terms, values))
        floats = [float(v.detach()) for v in values]
        if not math.isfinite(float(total.detach())):
            self.optimizer.zero_grad(set_to_none=True)
            bad = [n for n, v in zip(self.names, floats) if not math.isfinite(v)]
            raise FloatingPointError(f"the distillation loss became {float(total.detach())} at step {step} "
                                     f"(terms {bad}); training stopped before that step's optimizer step, so the "
                                     f"weights are those after step {step - 1}. Lower the learning rate, try "
                                     "autocast=False or check the data")
        return total, floats

    def add_new_parameters(self) -> None:
        """Give the optimizer the parameters that terms created on the first batch (projections)."""
        known = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        new = [p for t in self.terms for p in t.parameters() if id(p) not in known]
        if new:
            group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
            self.optimizer.add_param_group(dict(group, params=new))
            self.extra.extend(new)

    def optimizer_step(self, step: int, batches: Iterator[Any]) -> Dict[str, Any]:
        """One optimizer step over ``accumulate`` batches; returns the step's record."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, term_sums = 0.0, [0.0] * len(self.terms)
        ddp = isinstance(self.student, nn.parallel.DistributedDataParallel)
        for micro in range(self.accumulate):
            batch = next(batches)
            sync = contextlib.nullcontext() if not ddp or micro == self.accumulate - 1 else self.student.no_sync()
            with sync:
                total, floats = self.micro_step(batch, step)
                if step == 1 and micro == 0:
                    self.add_new_parameters()
                (total / self.accumulate).backward()
            total_loss += float(total.detach()) / self.accumulate
            term_sums = [a + b / self.accumulate for a, b in zip(term_sums, floats)]
        if self.extra and ddp and _distributed():  # projections live outside DDP: average their gradients
            world = torch.distributed.get_world_size()
            for p in self.extra:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)
        grad_norm = self._grad_norm()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"the gradient norm became {grad_norm} at step {step}; training stopped before "
                                     f"that step's optimizer step, so the weights are those after step {step - 1}")
        self.optimizer.step()
        if self.pruner is not None:
            self.pruner.step()  # also feeds gradient criteria (movement, taylor) with this step's .grad
        if self.scheduler is not None:
            self.scheduler.step()
        rec: Dict[str, Any] = {"step": step, "loss": total_loss}
        rec.update({f"loss/{n}": v for n, v in zip(self.names, term_sums)})
        rec.update(grad_norm=grad_norm, lr=float(self.optimizer.param_groups[0]["lr"]),
                   seconds=time.perf_counter() - t0)
        return rec

    def _grad_norm(self) -> float:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return 0.0
        if self.grad_clip is not None:
            return float(nn.utils.clip_grad_norm_(params, self.grad_clip))
        return float(nn.utils.get_total_norm([p.grad for p in params]))


class _EarlyStop:
    """Calls ``validate(student)`` every ``every`` steps; tracks the best value and patience."""

    def __init__(self, validate: Callable[[nn.Module], float], every: int, patience: Optional[int], mode: str,
                 restore_best: bool) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.validate, self.every, self.patience = validate, every, patience
        self.sign = -1.0 if mode == "max" else 1.0
        self.restore_best = restore_best
        self.bad = 0
        self.best_state: Optional[Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]] = None

    def __call__(self, step: int, last: bool, student: nn.Module, pruner: Optional[Any],
                 history: DistillHistory) -> Optional[float]:
        """Validate if due; returns the value, or None. Sets ``history.stopped_early`` when patience runs out."""
        if step % self.every and not last:
            return None
        was = student.training
        student.eval()
        try:
            with torch.no_grad():
                value = float(self.validate(student))
        finally:
            student.train(was)
        history.validations.append({"step": step, "value": value})
        if history.best_value is None or self.sign * (value - history.best_value) < 0:
            history.best_value, history.best_epoch, self.bad = value, step, 0
            if self.restore_best:
                self.best_state = (copy.deepcopy(unwrap(student).state_dict()),
                                   pruner.state_dict() if pruner is not None else None)
        else:
            self.bad += 1
            if self.patience is not None and self.bad >= self.patience:
                history.stopped_early = True
        return value

    def restore(self, student: nn.Module, pruner: Optional[Any]) -> None:
        if self.best_state is not None:
            unwrap(student).load_state_dict(self.best_state[0])
            if self.best_state[1] is not None:
                pruner.load_state_dict(self.best_state[1])  # type: ignore[union-attr]


def _progress_bar(steps: int, progress: bool) -> Any:
    if not progress or (_distributed() and torch.distributed.get_rank() != 0):
        return None
    try:
        from tqdm.auto import tqdm  # type: ignore
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=steps, desc="distill", leave=False)


# Long mostly by its docstring (every argument and error); the body validates the arguments, builds the
# loop's parts and runs the steps, each a few lines, with the per-step work in _Loop.
def distill(student: nn.Module, teacher: nn.Module, data: Iterable[Any], *, steps: int, pruner: Optional[Any] = None,
            optimizer: Optional[torch.optim.Optimizer] = None, loss: Union[None, Term, Sequence[Term]] = None,
            lr: float = DEFAULT_LR, weight_decay: float = 0.01, accumulate: int = 1,
            autocast: Union[bool, torch.dtype] = False, cache_teacher: bool = False,
            grad_clip: Optional[float] = None, scheduler: Optional[Any] = None,
            validate: Optional[Callable[[nn.Module], float]] = None, every: Optional[int] = None,
            patience: Optional[int] = None, mode: str = "max", restore_best: bool = False,
            progress: bool = True, on_step: Optional[Callable[[int, float], None]] = None) -> DistillHistory:
    """Train ``student`` for ``steps`` optimizer steps to reproduce ``teacher``'s outputs, keeping ``pruner``'s masks.

    Each item of ``data`` (re-iterated as often as ``steps * accumulate`` needs) is a
    batch given to both models by the calling rule: a tensor ``x`` -> ``model(x)``, a
    tuple/list -> ``model(*items)``, a dict -> ``model(**d)``; sentence-transformers
    models get 1-tuples ``(features,)`` (see :func:`text_batches`).  The teacher runs in
    eval mode under ``torch.inference_mode`` (its mode is restored afterwards).

    Each step: ``zero_grad``; for each of ``accumulate`` batches, forward both models and
    ``loss`` (default ``MSE()``: every floating-point output of the student against the
    teacher's; see :class:`MSE`, :class:`Cosine`, :class:`KL`, :class:`Hidden`,
    :class:`Task`), backward of ``loss / accumulate`` (DDP syncs gradients on the last);
    gradient clipping; ``optimizer.step()``; ``pruner.step()`` (gradient criteria such as
    movement and taylor accumulate there from this step's gradients); ``scheduler.step()``.

    Args:
        student: the model to train, in train mode; may be wrapped in DistributedDataParallel
            (the pruner then keeps masks identical on all ranks; ``validate`` must give the same
            answer on every rank, or ranks stop at different steps).
        teacher: the reference model (a different object from the student).
        pruner: a :class:`sparsekit.Pruner` on the student; if it has no optimizer it gets this one,
            so the optimizer state of pruned weights is zeroed.
        optimizer: default ``AdamW(trainable student parameters, lr, weight_decay)``; parameters
            created by terms on the first batch (projections) are added as a new group.
        accumulate: batches per optimizer step (their losses are averaged).
        autocast: True (bfloat16) or a dtype: both forward passes run under ``torch.autocast``.
        cache_teacher: keep the teacher's outputs by batch fingerprint (shapes, dtypes, a hash of the
            tensors' bytes) and reuse them when the same batch comes again, in any order; a batch
            not seen before is computed. Worth it for a fixed list of batches passed many times.
        validate: ``validate(student) -> number``, called in eval mode without gradients every
            ``every`` steps (default ``max(1, steps // 10)``) and after the last step; higher is
            better with ``mode="max"``. Stops after ``patience`` validations without improvement;
            ``restore_best`` reloads the best weights (and pruner state) at the end.
        progress: tqdm bar with the loss and the sparsity (rank 0 only).
        on_step: ``on_step(step, loss)`` after every step.

    Returns:
        a :class:`DistillHistory` with one record per optimizer step.

    Raises:
        ValueError: ``steps`` or ``accumulate`` < 1, empty data, the student is the teacher, the
            pruner belongs to another model, every student parameter frozen, or - on the first
            batch, before any optimizer step - outputs or hidden states that do not match (structure,
            shapes, missing module names, vocabulary size for KL).
        FloatingPointError: the loss or the gradient became NaN/Inf; it names the step, and the
            weights are those from before that step (its optimizer step never ran).

    Warns:
        UserWarning: the student was in eval mode (it is trained in train mode and put back in
            eval mode at the end), or some of its parameters are frozen (they are not trained).

    Example:
        >>> import copy, torch, sparsekit
        >>> _ = torch.manual_seed(0)
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> student = copy.deepcopy(teacher)
        >>> data = [torch.randn(32, 8) for _ in range(4)]
        >>> pruner = sparsekit.Pruner(student, sparsekit.ConstantSparsity(0.5, frequency=100))
        >>> hist = sparsekit.distill(student, teacher, data, steps=8, pruner=pruner, lr=1e-2, progress=False)
        >>> len(hist), hist["sparsity"][-1], hist["loss"][-1] < hist["loss"][0]
        (8, 0.5, True)
    """
    steps = _check_int(steps, "steps", 1)
    accumulate = _check_int(accumulate, "accumulate", 1)
    terms = as_terms(loss)
    if unwrap(student) is unwrap(teacher):
        raise ValueError("the teacher is the student itself; distill from a copy (copy.deepcopy(model) before pruning)")
    if pruner is not None and unwrap(getattr(pruner, "model", student)) is not unwrap(student):
        raise ValueError("the pruner was built on another model than the student")
    if validate is not None and not callable(validate):
        raise TypeError("validate must be a callable validate(student) -> number")
    every = max(1, steps // 10) if every is None else _check_int(every, "every", 1)
    if patience is not None:
        _check_int(patience, "patience", 1)
    stopper = _EarlyStop(validate, every, patience, mode, restore_best) if validate is not None else None
    names = capture_names(terms)
    capture = HiddenCapture(student, names["student"], "student")  # unknown module names fail here
    amp_dtype = _autocast_dtype(autocast)
    device = next(unwrap(student).parameters()).device if any(True for _ in unwrap(student).parameters()) else None
    if device is None:
        raise ValueError("the student has no parameters to train")
    runner = TeacherRunner(teacher, names["teacher"], cache=cache_teacher, device=device, autocast_dtype=amp_dtype)
    params = _trainable(student)
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if pruner is not None and getattr(pruner, "optimizer", False) is None:
        pruner.optimizer = optimizer
    student_was_training, teacher_was_training = student.training, teacher.training
    if not student_was_training:
        warnings.warn("the student is in eval mode; distill trains it in train mode (dropout on) and puts it back "
                      "in eval mode at the end - call student.train() first to silence this", UserWarning,
                      stacklevel=2)
    loop = _Loop(student, terms, runner, capture, optimizer, pruner, accumulate, amp_dtype, grad_clip, scheduler)
    history = DistillHistory(monitor="validate")
    start_sparsity = None if pruner is not None else sparsity_report(unwrap(student)).total["sparsity"]
    batches = _cycle(data)
    student.train()
    teacher.eval()
    bar = _progress_bar(steps, progress)
    try:
        with capture:
            for step in range(1, steps + 1):
                rec = loop.optimizer_step(step, batches)
                rec["sparsity"] = pruner.achieved_sparsity() if pruner is not None else start_sparsity
                if stopper is not None:
                    value = stopper(step, step == steps, student, pruner, history)
                    if value is not None:
                        rec["val"] = value
                history.steps.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", sparsity=f"{rec['sparsity']:.3f}")
                if on_step is not None:
                    on_step(step, rec["loss"])
                if history.stopped_early:
                    break
        if stopper is not None:
            stopper.restore(student, pruner)
    finally:
        if bar is not None:
            bar.close()
        student.train(student_was_training)
        teacher.train(teacher_was_training)
    return history

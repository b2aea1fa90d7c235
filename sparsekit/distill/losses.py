"""Distillation loss terms: pick outputs of student and teacher, compare them, weight the result.

A term is called with a :class:`Pair` (both models' outputs for one batch, the
captured hidden states and the batch's labels) and returns a scalar.  Terms
check what they compare and raise ``ValueError`` naming the mismatch, so a
teacher that does not fit the student fails on the first batch, before any
optimizer step.

Outputs are selected with ``key``: ``None`` (every floating-point output
tensor, matched by position / dict key, nested), an int or str (one item of a
tuple or dict, e.g. ``"logits"`` or ``"sentence_embedding"``), a tuple of them
(a path into nested outputs, e.g. ``("hidden_states", -1)``) or a callable
``outputs -> tensor``.

Padding: when the batch holds an ``attention_mask`` (a dict batch, Hugging Face style,
or a tuple holding such a dict, sentence-transformers style) of shape ``(batch, seq)``,
:class:`MSE`, :class:`Cosine` and :class:`~sparsekit.distill.Hidden` average token
outputs - tensors of 3 or more dims whose first two dims are ``(batch, seq)`` - over
the real tokens only (mask != 0); padded positions neither add to the loss nor dilute
it. Outputs of other shapes (pooled ``(batch, dim)`` embeddings, logits of a
classifier) are averaged over all their entries, as without a mask. :class:`KL`
does not look at the mask.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inputs import LabelKey

__all__ = ["Pair", "Term", "MSE", "Cosine", "KL", "Task", "Key", "output_leaves", "select_output",
           "matched_outputs", "as_terms", "attention_mask_of", "token_mean", "cosine_distance"]

Key = Union[None, int, str, Tuple[Union[int, str], ...], Callable[[Any], Tensor]]
Path = Tuple[Union[int, str], ...]


@dataclass
class Pair:
    """What a loss term sees for one batch.

    Attributes:
        student, teacher: the models' outputs (any nesting of tensors, tuples, dicts).
        student_hidden, teacher_hidden: captured module outputs by module name.
        labels: label items taken out of the batch (see :class:`Task`), by index/key.
        batch: the batch as the models received it.

    Example:
        >>> import torch
        >>> from sparsekit.distill import MSE, Pair
        >>> MSE()(Pair(torch.zeros(2), torch.ones(2))).item()
        1.0
    """

    student: Any
    teacher: Any
    student_hidden: Dict[str, Tensor] = field(default_factory=dict)
    teacher_hidden: Dict[str, Tensor] = field(default_factory=dict)
    labels: Dict[LabelKey, Any] = field(default_factory=dict)
    batch: Any = None


def output_leaves(out: Any, path: Path = ()) -> List[Tuple[Path, Tensor]]:
    """``(path, tensor)`` for every floating-point tensor in ``out`` (tuples, lists, dicts, nested).

    Example:
        >>> import torch
        >>> from sparsekit.distill import output_leaves
        >>> out = {"ids": torch.zeros(1, dtype=torch.long), "emb": torch.zeros(1), "h": (torch.ones(1), None)}
        >>> [p for p, _ in output_leaves(out)]
        [('emb',), ('h', 0)]
    """
    if isinstance(out, Tensor):
        return [(path, out)] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [leaf for k, v in out.items() for leaf in output_leaves(v, path + (k,))]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in output_leaves(v, path + (i,))]
    return []


def attention_mask_of(batch: Any) -> Optional[Tensor]:
    """The ``attention_mask`` of a batch: a dict's entry, or that of the first dict inside a tuple/list.

    Returns None when there is none, or when it is not a 2-D ``(batch, seq)`` tensor.

    Example:
        >>> import torch
        >>> from sparsekit.distill import attention_mask_of
        >>> mask = torch.tensor([[1, 1, 0]])
        >>> batch = ({"input_ids": mask, "attention_mask": mask},)  # sentence-transformers style
        >>> attention_mask_of(batch).tolist(), attention_mask_of(mask)
        ([[1, 1, 0]], None)
    """
    if isinstance(batch, Mapping):
        found = batch.get("attention_mask")
        return found if isinstance(found, Tensor) and found.dim() == 2 else None
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, Mapping):
                found = attention_mask_of(item)
                if found is not None:
                    return found
    return None


def token_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``values`` over the real tokens of ``mask`` (``(batch, seq)``, nonzero = real token).

    ``values`` counts as token-shaped when it has at least 3 dims and starts with the
    mask's shape; each real token then contributes all its trailing entries. Anything
    else (or ``mask=None``) is the plain mean. A batch without any real token gives 0.

    Example:
        >>> import torch
        >>> from sparsekit.distill import token_mean
        >>> err = torch.tensor([[[1.0, 1.0], [9.0, 9.0]]])  # (1 sentence, 2 tokens, 2 features)
        >>> token_mean(err, torch.tensor([[1, 0]])).item(), token_mean(err, None).item()
        (1.0, 5.0)
    """
    if mask is None or values.dim() < 3 or tuple(values.shape[:2]) != tuple(mask.shape):
        return values.mean()
    keep = (mask != 0).to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    per_token = values[0, 0].numel()
    return (values * keep).sum() / (keep.sum() * per_token).clamp_min(1.0)


def _describe(key: Key) -> str:
    return getattr(key, "__name__", "callable") if callable(key) else repr(key)


def select_output(out: Any, key: Key, who: str = "output") -> Tensor:
    """The output tensor that ``key`` names (see the module notes); ``ValueError`` if there is none.

    Example:
        >>> import torch
        >>> from sparsekit.distill import select_output
        >>> select_output({"logits": torch.ones(2), "h": (torch.zeros(3),)}, ("h", 0)).shape
        torch.Size([3])
    """
    if callable(key):
        got = key(out)
    else:
        path = key if isinstance(key, tuple) else (key,)
        got = out
        for k in path:
            try:
                got = got[k]
            except (KeyError, IndexError, TypeError) as e:
                have = list(got.keys()) if isinstance(got, Mapping) else (
                    f"{len(got)} items" if isinstance(got, (tuple, list)) else type(got).__name__)
                raise ValueError(f"{who} has no item {k!r} (key={_describe(key)}); it has {have}") from e
    if not isinstance(got, Tensor) or not got.is_floating_point():
        raise ValueError(f"{who}[{_describe(key)}] is not a floating-point tensor: {type(got).__name__}")
    return got


def _check_shapes(name: str, s: Tensor, t: Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{name}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")


def matched_outputs(pair: Pair, key: Key) -> List[Tuple[str, Tensor, Tensor]]:
    """``(name, student tensor, teacher tensor)`` for ``key``; every floating output if ``key`` is None.

    Raises ``ValueError`` when the student's and teacher's outputs differ in
    structure (paths) or shape.

    Example:
        >>> import torch
        >>> from sparsekit.distill import Pair, matched_outputs
        >>> [n for n, _, _ in matched_outputs(Pair((torch.ones(1), torch.ones(2)), (torch.ones(1), torch.ones(2))), None)]
        ['output[0]', 'output[1]']
    """
    if key is not None:
        s, t = select_output(pair.student, key, "student output"), select_output(pair.teacher, key, "teacher output")
        name = f"output[{_describe(key)}]"
        _check_shapes(name, s, t)
        return [(name, s, t)]
    ls, lt = output_leaves(pair.student), output_leaves(pair.teacher)
    if [p for p, _ in ls] != [p for p, _ in lt]:
        raise ValueError(f"student and teacher outputs differ in structure: student floating-point outputs at "
                         f"{[p for p, _ in ls]}, teacher at {[p for p, _ in lt]}")
    if not ls:
        raise ValueError(f"the student returned no floating-point tensor to match ({type(pair.student).__name__})")
    out = []
    for (p, s), (_, t) in zip(ls, lt):
        name = "output" + "".join(f"[{k!r}]" for k in p)
        _check_shapes(name, s, t)
        out.append((name, s, t))
    return out


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


class Term:
    """Base class of loss terms: subclass and implement :meth:`__call__` (``Pair -> scalar``).

    Attributes read by :func:`sparsekit.distill`: ``weight``, ``name`` (the history
    column ``loss/<name>``), ``labels`` (batch items to take out before calling the
    models), ``student_modules`` / ``teacher_modules`` (module names whose outputs
    to capture) and :meth:`parameters` (extra trainable parameters, e.g. projections).

    Example:
        >>> import torch
        >>> from sparsekit.distill import Pair, Term
        >>> class L1(Term):
        ...     def __call__(self, pair):
        ...         return (pair.student - pair.teacher).abs().mean()
        >>> L1(weight=2.0)(Pair(torch.zeros(2), torch.ones(2))).item()
        1.0
    """

    name = "term"
    labels: Tuple[LabelKey, ...] = ()
    student_modules: Tuple[str, ...] = ()
    teacher_modules: Tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = _check_weight(weight)

    def __call__(self, pair: Pair) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def parameters(self) -> List[nn.Parameter]:
        """Extra trainable parameters of this term (none by default)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class MSE(Term):
    """Mean squared error between student and teacher outputs (mean over the selected outputs).

    Token outputs of a batch with an ``attention_mask`` are averaged over real tokens
    only (see the module notes on padding).

    Example:
        >>> import torch
        >>> from sparsekit.distill import MSE, Pair
        >>> pair = Pair({"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.ones(2), "b": torch.zeros(2)})
        >>> MSE()(pair).item(), MSE(key="a")(pair).item()
        (0.5, 1.0)
    """

    def __init__(self, key: Key = None, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.key = key
        self.name = "mse" if key is None else f"mse[{_describe(key)}]"

    def __call__(self, pair: Pair) -> Tensor:
        mask = attention_mask_of(pair.batch)
        terms = [token_mean((s.float() - t.float()).pow(2), mask) for _, s, t in matched_outputs(pair, self.key)]
        return torch.stack(terms).mean()


class Cosine(Term):
    """``1 - cosine similarity`` along the last dimension, averaged over rows and selected outputs.

    Token outputs of a batch with an ``attention_mask`` are averaged over real tokens
    only (see the module notes on padding).

    Example:
        >>> import torch
        >>> from sparsekit.distill import Cosine, Pair
        >>> Cosine()(Pair(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))).item()
        1.0
    """

    def __init__(self, key: Key = None, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.key = key
        self.name = "cosine" if key is None else f"cosine[{_describe(key)}]"

    def __call__(self, pair: Pair) -> Tensor:
        mask = attention_mask_of(pair.batch)
        terms = [cosine_distance(s, t, mask) for _, s, t in matched_outputs(pair, self.key)]
        return torch.stack(terms).mean()


def cosine_distance(s: Tensor, t: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean ``1 - cosine(s, t)`` along the last dim; for ``(batch, seq, dim)`` tensors over the real tokens of ``mask``.

    Example:
        >>> import torch
        >>> from sparsekit.distill import cosine_distance
        >>> s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
        >>> t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # the second token differs (a pad)
        >>> cosine_distance(s, t).item(), cosine_distance(s, t, torch.tensor([[1, 0]])).item()
        (0.5, 0.0)
    """
    dist = 1 - F.cosine_similarity(s.float(), t.float(), dim=-1)
    return token_mean(dist.unsqueeze(-1), mask) if s.dim() >= 3 else dist.mean()


class KL(Term):
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dimension (the classes),
    summed over classes and averaged over all other positions (Hinton et al.'s soft targets).

    ``key=None`` takes ``"logits"`` from dict outputs, else the one floating-point output.

    Example:
        >>> import torch
        >>> from sparsekit.distill import KL, Pair
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]])
        >>> KL(temperature=2.0)(Pair(logits, logits)).item()
        0.0
    """

    def __init__(self, key: Key = None, temperature: float = 1.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.key = key
        self.temperature = float(temperature)
        self.name = "kl" if key is None else f"kl[{_describe(key)}]"

    def _logits(self, pair: Pair) -> Tuple[Tensor, Tensor]:
        key = self.key
        if key is None and isinstance(pair.student, Mapping) and "logits" in pair.student:
            key = "logits"
        if key is None:
            ls, lt = output_leaves(pair.student), output_leaves(pair.teacher)
            if len(ls) != 1 or len(lt) != 1:
                raise ValueError(f"KL needs key=... to pick the logits: the student has {len(ls)} and the teacher "
                                 f"{len(lt)} floating-point outputs")
            s, t = ls[0][1], lt[0][1]
        else:
            s, t = select_output(pair.student, key, "student output"), select_output(pair.teacher, key, "teacher output")
        if s.shape[-1:] != t.shape[-1:]:
            raise ValueError(f"KL: student has {s.shape[-1] if s.dim() else 0} classes (vocab size) in its logits, "
                             f"teacher {t.shape[-1] if t.dim() else 0}")
        _check_shapes("KL logits", s, t)
        return s, t

    def __call__(self, pair: Pair) -> Tensor:
        s, t = self._logits(pair)
        temp = self.temperature
        log_p_s = F.log_softmax(s.float().reshape(-1, s.shape[-1]) / temp, dim=-1)
        log_p_t = F.log_softmax(t.float().reshape(-1, t.shape[-1]) / temp, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temp ** 2


class Task(Term):
    """The ordinary training loss on labelled batches: ``fn(student output, label)``.

    ``label`` is the tuple index or dict key of the label in each batch; that item
    is taken out before both models are called (``(x, y)`` batches call ``model(x)``).
    With ``label=None`` the batch stays whole and ``fn(student output, batch)`` is called
    (e.g. a Hugging Face model that computes its own loss from ``labels``).

    Example:
        >>> import torch
        >>> from sparsekit.distill import Pair, Task
        >>> term = Task(torch.nn.functional.cross_entropy, label=-1, weight=0.5)
        >>> pair = Pair(torch.zeros(2, 3), torch.zeros(2, 3), labels={-1: torch.tensor([0, 2])})
        >>> round(term(pair).item(), 4)  # log(3)
        1.0986
    """

    def __init__(self, fn: Callable[[Any, Any], Tensor], label: Optional[LabelKey] = -1, key: Key = None,
                 weight: float = 1.0) -> None:
        super().__init__(weight)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.label, self.key = fn, label, key
        self.labels = () if label is None else (label,)
        self.name = "task"

    def __call__(self, pair: Pair) -> Tensor:
        out = pair.student if self.key is None else select_output(pair.student, self.key, "student output")
        target = pair.batch if self.label is None else pair.labels[self.label]
        loss = self.fn(out, target)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"the task loss must return a scalar tensor, got {type(loss).__name__}")
        return loss.reshape(())


def as_terms(loss: Union[None, Term, Sequence[Term]]) -> List[Term]:
    """``loss=`` of :func:`sparsekit.distill` as a list of terms; None -> ``[MSE()]``.

    Example:
        >>> from sparsekit.distill import KL, MSE, as_terms
        >>> [t.name for t in as_terms(None)], [t.name for t in as_terms(KL(key="logits"))]
        (['mse'], ["kl['logits']"])
    """
    if loss is None:
        return [MSE()]
    terms = [loss] if isinstance(loss, Term) else list(loss)
    if not terms:
        raise ValueError("loss=[] has no terms; pass None for the default MSE on every output")
    bad = [type(t).__name__ for t in terms if not isinstance(t, Term)]
    if bad:
        raise TypeError(f"loss terms must be sparsekit.distill.Term instances (MSE, Cosine, KL, Hidden, Task); "
                        f"got {bad}")
    return terms


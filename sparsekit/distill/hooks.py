"""Hidden states of named modules: captured with forward hooks, compared by :class:`Hidden`."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from sparsekit.prune.selection import unwrap

from .losses import Pair, Term, attention_mask_of, cosine_distance, token_mean

__all__ = ["Hidden", "HiddenCapture", "first_tensor", "capture_names"]


def first_tensor(out: Any) -> Optional[Tensor]:
    """The first floating-point tensor in a module's output (transformer layers return tuples).

    Example:
        >>> import torch
        >>> from sparsekit.distill import first_tensor
        >>> first_tensor((None, torch.ones(2), torch.zeros(1))).tolist()
        [1.0, 1.0]
    """
    if isinstance(out, Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


class HiddenCapture:
    """Forward hooks that keep the latest output of named modules of one model, by name.

    Use as a context manager (hooks removed on exit); ``captured`` holds the outputs.
    Unknown names raise ``ValueError`` listing the model's module names.

    Example:
        >>> import torch
        >>> from sparsekit.distill import HiddenCapture
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> with HiddenCapture(model, ["0"], "student") as cap:
        ...     _ = model(torch.zeros(2, 3))
        >>> cap.captured["0"].shape
        torch.Size([2, 4])
    """

    def __init__(self, model: nn.Module, names: Iterable[str], who: str = "model") -> None:
        modules = dict(unwrap(model).named_modules())
        self.names = list(dict.fromkeys(names))
        missing = [n for n in self.names if n not in modules]
        if missing:
            sample = [n for n in modules if n][:30]
            raise ValueError(f"the {who} has no module(s) named {missing}; its modules include {sample}")
        self.modules = {n: modules[n] for n in self.names}
        self.who = who
        self.captured: Dict[str, Tensor] = {}
        self._handles: List[Any] = []

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if t is None:
                raise ValueError(f"module {name!r} of the {self.who} returned no floating-point tensor "
                                 f"({type(output).__name__})")
            self.captured[name] = t
        return hook

    def __enter__(self) -> "HiddenCapture":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> Dict[str, Tensor]:
        """The captured outputs (checking that every module ran), clearing them for the next batch."""
        missed = [n for n in self.names if n not in self.captured]
        if missed:
            raise ValueError(f"module(s) {missed} of the {self.who} did not run in its forward pass")
        out, self.captured = self.captured, {}
        return out


class Hidden(Term):
    """Match the output of student module ``student_module`` with teacher module ``teacher_module``.

    Modules are named as in ``model.named_modules()`` (``"encoder.layer.3"``);
    ``teacher_module`` defaults to the same name.  Tuple outputs use their first
    tensor.  All but the last dimension must agree; when the widths (last dim)
    differ, a learned ``nn.Linear(student_width, teacher_width)`` maps the student's
    states first (``project=None``: only then; ``True``: always; ``False``: never,
    a width mismatch is an error; or pass your own module).  The projection is
    created on the first batch with a fixed seed (identical on every DDP rank) and
    trained with the student.

    Hidden states of shape ``(batch, seq, width)`` in a batch with an ``attention_mask``
    are compared over real tokens only (see :func:`~sparsekit.distill.token_mean`).

    Args:
        loss: ``"mse"`` or ``"cosine"`` (``1 - cosine`` along the last dimension).

    Example:
        >>> import torch
        >>> from sparsekit.distill import Hidden, Pair
        >>> term = Hidden("0", "1")
        >>> pair = Pair(None, None, {"0": torch.ones(2, 3)}, {"1": torch.zeros(2, 3)})
        >>> term(pair).item()
        1.0
        >>> wide = Hidden("0", "1")(Pair(None, None, {"0": torch.ones(2, 3)}, {"1": torch.zeros(2, 5)}))
        >>> wide.shape  # projected 3 -> 5 by a learned linear map
        torch.Size([])
    """

    def __init__(self, student_module: str, teacher_module: Optional[str] = None, *,
                 project: Union[None, bool, nn.Module] = None, loss: str = "mse", weight: float = 1.0) -> None:
        super().__init__(weight)
        if not isinstance(student_module, str) or (teacher_module is not None and not isinstance(teacher_module, str)):
            raise TypeError("student_module and teacher_module must be module names (str)")
        if loss not in ("mse", "cosine"):
            raise ValueError(f"loss must be 'mse' or 'cosine', got {loss!r}")
        self.student_module = student_module
        self.teacher_module = student_module if teacher_module is None else teacher_module
        self.student_modules = (self.student_module,)
        self.teacher_modules = (self.teacher_module,)
        self.loss = loss
        self.projection: Optional[nn.Module] = project if isinstance(project, nn.Module) else None
        self.project = project
        self.name = f"hidden[{self.student_module}]" if self.teacher_module == self.student_module else \
            f"hidden[{self.student_module}->{self.teacher_module}]"

    def parameters(self) -> List[nn.Parameter]:
        return [] if self.projection is None else list(self.projection.parameters())

    def _make_projection(self, s: Tensor, t: Tensor) -> nn.Module:
        layer = nn.Linear(s.shape[-1], t.shape[-1])
        gen = torch.Generator().manual_seed(0)  # same init on every rank, whatever the global seed
        bound = 1.0 / s.shape[-1] ** 0.5
        with torch.no_grad():
            layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=gen))
            layer.bias.zero_()
        return layer.to(s.device)

    def __call__(self, pair: Pair) -> Tensor:
        s = pair.student_hidden[self.student_module]
        t = pair.teacher_hidden[self.teacher_module]
        what = f"hidden state {self.student_module!r} (student) vs {self.teacher_module!r} (teacher)"
        if s.shape[:-1] != t.shape[:-1]:
            raise ValueError(f"{what}: shapes {tuple(s.shape)} and {tuple(t.shape)} differ before the last dim")
        if self.projection is None and (self.project is True or (self.project is None and s.shape[-1] != t.shape[-1])):
            self.projection = self._make_projection(s, t)
        if self.projection is not None:
            s = self.projection(s.to(next(self.projection.parameters()).dtype))
        if s.shape != t.shape:
            raise ValueError(f"{what}: widths {s.shape[-1]} and {t.shape[-1]} differ (project=False)")
        s, t = s.float(), t.float()
        mask = attention_mask_of(pair.batch)
        if self.loss == "cosine":
            return cosine_distance(s, t, mask)
        return token_mean((s - t).pow(2), mask)


def capture_names(terms: Sequence[Term]) -> Dict[str, List[str]]:
    """Module names the terms need captured: ``{"student": [...], "teacher": [...]}``.

    Example:
        >>> from sparsekit.distill import Hidden, capture_names
        >>> capture_names([Hidden("a", "b"), Hidden("c")])
        {'student': ['a', 'c'], 'teacher': ['b', 'c']}
    """
    return {"student": list(dict.fromkeys(n for t in terms for n in t.student_modules)),
            "teacher": list(dict.fromkeys(n for t in terms for n in t.teacher_modules))}


"""``SparseSequential``: runs consecutive sparse linear layers as one C++ call."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from sparsekit import ops
from sparsekit._runtime import _core
from sparsekit.nn.base import plain_f32_cpu
from sparsekit.nn.base import is_compiling as _is_compiling
from sparsekit.nn.base import jit_tracing as _jit_tracing
from sparsekit.nn.linear import SparseLinear

__all__ = ["SparseSequential", "fuse_sequentials"]

_grad_enabled = torch.is_grad_enabled
_hooks = torch.nn.modules.module
_GLOBAL_HOOKS = (_hooks._global_forward_hooks, _hooks._global_forward_pre_hooks,
                 _hooks._global_backward_hooks, _hooks._global_backward_pre_hooks)


class _Run:
    """A stretch of a SparseSequential's children run as one C++ call: SparseLinear layers whose
    widths chain, and the ``nn.Identity`` placeholders between them."""
    __slots__ = ("modules", "layers", "hooks", "kernels", "chain", "cols", "rows")

    def __init__(self, modules: Tuple[nn.Module, ...]) -> None:
        self.modules = modules
        self.layers = tuple(m for m in modules if type(m) is SparseLinear)
        # Every hook dict nn.Module.__call__ would consult for these children (registering a
        # hook adds to these dicts in place); any entry means calling the children instead.
        self.hooks = _GLOBAL_HOOKS + tuple(d for m in modules for d in (
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))
        self.cols = self.layers[0]._cols
        self.rows = self.layers[-1]._rows
        self.kernels: Tuple[Any, ...] = ()
        self.chain = None

    def current_chain(self) -> Any:
        """The compiled chain on the layers' current kernels (rebuilt if one was replaced)."""
        kernels = tuple(m._kernel() for m in self.layers)
        if kernels != self.kernels:  # identity comparison of the kernel objects
            self.chain = _core.Chain(kernels)
            self.kernels = kernels
        return self.chain


def _plan(modules: Tuple[nn.Module, ...]) -> list:
    """Children in order, each stretch of >= 2 fusable children replaced by a :class:`_Run`."""
    steps: list = []
    run: list = []

    def flush() -> None:
        if sum(type(m) is SparseLinear for m in run) and len(run) >= 2:
            steps.append(_Run(tuple(run)))
        else:
            steps.extend(run)
        run.clear()

    width = None  # outputs of the run's last SparseLinear
    for m in modules:
        if type(m) is SparseLinear and (width is None or m._cols == width):
            run.append(m)
            width = m._rows
        elif type(m) is nn.Identity and run:
            run.append(m)
        else:
            flush()
            width = None
            if type(m) is SparseLinear:  # starts a new run (its width did not chain)
                run.append(m)
                width = m._rows
            else:
                steps.append(m)
    flush()
    return steps


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` that runs each stretch of consecutive :class:`SparseLinear` layers as
    one C++ call (with the ``nn.Identity`` placeholders that :func:`sparsekit.convert` leaves
    where it fused an activation or folded a BatchNorm).

    :func:`sparsekit.convert` and :func:`sparsekit.load` turn every plain ``nn.Sequential``
    holding such a stretch into this class; it has no state of its own, so names,
    ``state_dict`` keys and indexing are those of the ``nn.Sequential``. A fused stretch gives
    bitwise the same outputs as calling its layers one by one, without the Python work
    between them (about 5 us per layer at batch 1). It falls back to calling the children
    one by one whenever that could differ: input that is not a plain float32 CPU tensor of
    the right width, autograd, ``torch.compile`` / ``torch.export`` / ``torch.jit.trace``,
    any forward or backward hook on a child or registered globally.

    Example:
        >>> import torch
        >>> from sparsekit.nn import SparseLinear, SparseSequential
        >>> a = SparseLinear.from_dense(torch.nn.Linear(4, 8), activation="relu")
        >>> b = SparseLinear.from_dense(torch.nn.Linear(8, 2))
        >>> model = SparseSequential(a, torch.nn.Identity(), b).eval()
        >>> x = torch.randn(3, 4)
        >>> torch.equal(model(x), b(a(x)))
        True
    """

    def forward(self, x: Any) -> Any:
        if _is_compiling() or _jit_tracing():
            return super().forward(x)
        mods = tuple(self._modules.values())
        cached = self.__dict__.get("_sk_plan")
        if cached is None or cached[0] != mods:
            cached = (mods, _plan(mods))
            self.__dict__["_sk_plan"] = cached
        grad = _grad_enabled()
        for step in cached[1]:
            if type(step) is not _Run:
                x = step(x)
            elif (plain_f32_cpu(x) and x.dim() >= 1 and x.shape[-1] == step.cols
                  and not any(step.hooks)
                  and not (grad and (x.requires_grad or any(m.training for m in step.layers)))):
                x = ops.run_linear(x, step.current_chain(), step.rows, step.cols)
            else:
                for m in step.modules:
                    x = m(x)
        return x

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_sk_plan", None)
        return state


def fuse_sequentials(model: nn.Module) -> list:
    """Makes every plain ``nn.Sequential`` in ``model`` (``model`` too) that holds a fusable
    stretch a :class:`SparseSequential`; returns their qualified names.

    :func:`sparsekit.convert` and :func:`sparsekit.load` call it; children, names and
    state-dict keys stay the same.

    Example:
        >>> import torch, sparsekit
        >>> lin = lambda: sparsekit.nn.SparseLinear.from_dense(torch.nn.Linear(8, 8), activation="relu")
        >>> model = torch.nn.Sequential(lin(), torch.nn.Identity(), lin())
        >>> sparsekit.nn.fuse_sequentials(model), type(model).__name__
        ([''], 'SparseSequential')
    """
    names = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Sequential and any(type(s) is _Run for s in _plan(tuple(mod._modules.values()))):
            mod.__class__ = SparseSequential
            names.append(name)
    return names

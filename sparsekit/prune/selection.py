"""Which parameters get pruned: module types, name patterns, callables."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

__all__ = ["DEFAULT_TYPES", "Target", "select_targets", "unwrap"]

DEFAULT_TYPES: Tuple[Type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Matcher = Union[str, Type[nn.Module], Callable[[str, nn.Module], bool]]
Selector = Union[Matcher, Sequence[Matcher], None]


def unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of DistributedDataParallel / DataParallel, else the model.

    Example:
        >>> import torch
        >>> from sparsekit.prune.selection import unwrap
        >>> layer = torch.nn.Linear(2, 2)
        >>> unwrap(layer) is layer
        True
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@dataclass
class Target:
    """One prunable parameter: ``module.<param_name>`` known as ``name``."""

    name: str
    module_name: str
    module: nn.Module
    param_name: str

    @property
    def weight(self) -> Tensor:
        """The effective tensor (for torch.nn.utils.prune modules, orig * mask)."""
        return getattr(self.module, self.param_name)


def _as_list(sel: Selector) -> List[Matcher]:
    if sel is None:
        return []
    if isinstance(sel, (str, type)) or (callable(sel) and not isinstance(sel, (list, tuple))):
        return [sel]  # type: ignore[list-item]
    if isinstance(sel, (list, tuple, set, frozenset)):
        items = list(sel)
        for m in items:
            if not (isinstance(m, (str, type)) or callable(m)):
                raise TypeError(f"include/exclude entries must be module types, name patterns or callables; got {m!r}")
        return items
    raise TypeError(f"include/exclude must be a module type, a name pattern, a callable or a list of them; got {sel!r}")


def _matches(matcher: Matcher, name: str, module: nn.Module) -> bool:
    if isinstance(matcher, type):
        return isinstance(module, matcher)
    if isinstance(matcher, str):
        return fnmatch.fnmatchcase(name, matcher)
    return bool(matcher(name, module))


def _param(module: nn.Module, param_name: str) -> Optional[Tensor]:
    if hasattr(module, param_name + "_orig") and hasattr(module, param_name + "_mask"):
        return getattr(module, param_name + "_orig")  # torch.nn.utils.prune reparametrisation
    p = module._parameters.get(param_name)
    return p


def select_targets(model: nn.Module, include: Selector = None, exclude: Selector = None,
                   param_names: Sequence[str] = ("weight",), skip_first: bool = False,
                   skip_last: bool = False) -> List[Target]:
    """The parameters to prune, in module registration order.

    Without ``include``: the ``weight`` of Linear and Conv1d/2d/3d modules.
    ``include``/``exclude`` take module types (``nn.Embedding``), fnmatch
    patterns on module names (``"encoder.*"``) or callables
    ``(name, module) -> bool``; a pattern or callable selects among modules
    whose parameter has at least 2 dimensions (so biases and normalisation
    layers stay dense unless named in ``param_names``).  ``skip_first`` /
    ``skip_last`` protect the first / last selected module.

    Example:
        >>> import torch
        >>> from sparsekit.prune import select_targets
        >>> model = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> [t.name for t in select_targets(model)], [t.name for t in select_targets(model, include=torch.nn.Embedding)]
        (['1.weight', '2.weight'], ['0.weight'])
    """
    model = unwrap(model)
    if isinstance(param_names, str):
        param_names = (param_names,)
    inc, exc = _as_list(include), _as_list(exclude)
    chosen: List[nn.Module] = []
    names: List[str] = []
    seen_params = set()
    for mname, module in model.named_modules():
        params = [(pn, _param(module, pn)) for pn in param_names]
        params = [(pn, p) for pn, p in params if p is not None]
        if not params:
            continue
        if inc:
            ok = False
            for m in inc:
                if isinstance(m, type):
                    ok = ok or isinstance(module, m)
                else:
                    ok = ok or (_matches(m, mname, module) and (
                        isinstance(module, DEFAULT_TYPES + (nn.Embedding,))
                        or any(p.dim() >= 2 for _, p in params)))
        else:
            ok = isinstance(module, DEFAULT_TYPES)
        if not ok or any(_matches(m, mname, module) for m in exc):
            continue
        chosen.append(module)
        names.append(mname)
    if skip_first and chosen:
        chosen, names = chosen[1:], names[1:]
    if skip_last and chosen:
        chosen, names = chosen[:-1], names[:-1]
    targets: List[Target] = []
    for mname, module in zip(names, chosen):
        for pn in param_names:
            p = _param(module, pn)
            if p is None or id(p) in seen_params:
                continue  # shared (tied) parameters are pruned once
            seen_params.add(id(p))
            targets.append(Target(f"{mname}.{pn}" if mname else pn, mname, module, pn))
    return targets

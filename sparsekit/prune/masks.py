"""Masks kept as (non-persistent) buffers and enforced by hooks.

``attach_mask`` stores a bool keep-mask next to a parameter
(``<param>_sparsekit_mask``), zeroes the pruned entries in place, masks the
gradient (so SGD momentum, Adam moments and weight decay cannot revive them),
and registers a forward pre-hook that re-zeroes the weight whenever it has
been modified in place since the last check (e.g. by an optimizer step).  The
parameter's name and the model's ``state_dict`` keys stay unchanged.
"""

from __future__ import annotations

import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .selection import unwrap

__all__ = ["attach_mask", "detach_mask", "apply_masks", "get_mask", "named_masks", "make_permanent",
           "zero_optimizer_state", "mask_buffer_name", "is_torch_pruned", "effective_weight",
           "assume_masks_applied"]

_STATE = "_sparsekit_prune"
_SUFFIX = "_sparsekit_mask"


def mask_buffer_name(param_name: str) -> str:
    return param_name + _SUFFIX


class _ParamState:
    __slots__ = ("version", "param_id", "handle")

    def __init__(self) -> None:
        self.version: Optional[int] = None
        self.param_id: Optional[int] = None
        self.handle = None


class _ModuleState:
    """Per-module bookkeeping; copies (deepcopy/pickle) forget hooks so the copy re-installs its own."""

    def __init__(self) -> None:
        self.params: Dict[str, _ParamState] = {}

    def __deepcopy__(self, memo: dict) -> "_ModuleState":
        new = _ModuleState()
        new.params = {k: _ParamState() for k in self.params}
        return new

    def __getstate__(self) -> dict:
        return {"names": list(self.params)}

    def __setstate__(self, state: dict) -> None:
        self.params = {k: _ParamState() for k in state["names"]}


class _GradMask:
    """Tensor hook: zero the gradient of pruned entries."""

    def __init__(self, module: nn.Module, buffer: str) -> None:
        self.module = weakref.ref(module)
        self.buffer = buffer

    def __call__(self, grad: Tensor) -> Optional[Tensor]:
        module = self.module()
        mask = None if module is None else module._buffers.get(self.buffer)
        if mask is None:
            return None
        if grad.is_sparse:
            return grad * mask.to(grad.dtype)
        return grad.masked_fill(~mask, 0)


class _MaskEnforcer:
    """Forward pre-hook: re-zero pruned weights if they changed since the last check."""

    def __call__(self, module: nn.Module, args: tuple) -> None:
        state = module.__dict__.get(_STATE)
        if state is not None:
            for pn, st in state.params.items():
                _sync_param(module, pn, st)


class _RootEnforcer:
    """Forward pre-hook on the pruned model: syncs every masked parameter below it, so weights that a
    parent reads directly (e.g. ``MultiheadAttention.out_proj.weight``) are enforced too."""

    def __call__(self, root: nn.Module, args: tuple) -> None:
        for module in root.modules():
            state = module.__dict__.get(_STATE)
            if state is not None:
                for pn, st in state.params.items():
                    _sync_param(module, pn, st)


def enforce_on_forward(model: nn.Module) -> None:
    """Register (once) the root-level enforcement hook on ``model``."""
    if not any(isinstance(h, _RootEnforcer) for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_RootEnforcer())


def _sync_param(module: nn.Module, pn: str, st: _ParamState, force: bool = False) -> None:
    p = module._parameters[pn]
    mask = module._buffers[mask_buffer_name(pn)]
    if id(p) != st.param_id:
        if st.handle is not None:
            st.handle.remove()
        st.handle = p.register_hook(_GradMask(module, mask_buffer_name(pn))) if p.requires_grad else None
        st.param_id = id(p)
        st.version = None
    if force or st.version != p._version:
        with torch.no_grad():
            p.masked_fill_(~mask, 0)
        st.version = p._version


def is_torch_pruned(module: nn.Module, param_name: str = "weight") -> bool:
    """True if ``module.<param_name>`` is reparametrised by ``torch.nn.utils.prune``."""
    return hasattr(module, param_name + "_orig") and isinstance(getattr(module, param_name + "_mask", None), Tensor)


def _torch_prune_hooks(module: nn.Module, param_name: str) -> List[int]:
    return [k for k, h in module._forward_pre_hooks.items()
            if isinstance(h, torch_prune.BasePruningMethod) and getattr(h, "_tensor_name", None) == param_name]


def effective_weight(module: nn.Module, param_name: str = "weight") -> Tensor:
    """The weight as the forward pass sees it (masks applied), detached."""
    if is_torch_pruned(module, param_name):
        return (getattr(module, param_name + "_orig") * getattr(module, param_name + "_mask")).detach()
    w = getattr(module, param_name).detach()
    m = module._buffers.get(mask_buffer_name(param_name))
    return w.masked_fill(~m, 0) if m is not None else w


def get_mask(module: nn.Module, param_name: str = "weight") -> Optional[Tensor]:
    """The bool keep-mask of ``module.<param_name>`` (sparsekit's or torch.nn.utils.prune's), or None.

    Example:
        >>> import torch
        >>> from sparsekit.prune import get_mask, prune
        >>> layer = torch.nn.Linear(4, 4)
        >>> _ = prune(layer, 0.25)
        >>> int(get_mask(layer).sum())
        12
    """
    m = module._buffers.get(mask_buffer_name(param_name))
    if m is not None:
        return m
    if is_torch_pruned(module, param_name):
        return getattr(module, param_name + "_mask").bool()
    return None


def named_masks(model: nn.Module, param_names: Tuple[str, ...] = ("weight", "bias")) -> Iterator[Tuple[str, nn.Module, str, Tensor]]:
    """``(qualified name, module, param name, bool mask)`` for every masked parameter."""
    for mname, module in unwrap(model).named_modules():
        for pn in param_names:
            m = get_mask(module, pn)
            if m is not None:
                yield (f"{mname}.{pn}" if mname else pn), module, pn, m


def attach_mask(module: nn.Module, param_name: str, keep: Tensor) -> Tensor:
    """Attach (or replace) the keep-mask of ``module.<param_name>`` and enforce it now."""
    if is_torch_pruned(module, param_name):
        torch_prune.remove(module, param_name)
    p = module._parameters.get(param_name)
    if p is None:
        raise ValueError(f"{type(module).__name__} has no parameter {param_name!r} to mask")
    if tuple(keep.shape) != tuple(p.shape):
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match {param_name} shape {tuple(p.shape)}")
    keep = keep.detach().to(device=p.device, dtype=torch.bool)
    bname = mask_buffer_name(param_name)
    buf = module._buffers.get(bname)
    if buf is None:
        module.register_buffer(bname, keep.clone(), persistent=False)
    else:
        buf.copy_(keep)
    state = module.__dict__.get(_STATE)
    if state is None:
        state = _ModuleState()
        module.__dict__[_STATE] = state
    if not any(isinstance(h, _MaskEnforcer) for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_MaskEnforcer())
    st = state.params.setdefault(param_name, _ParamState())
    _sync_param(module, param_name, st, force=True)
    return module._buffers[bname]


def apply_masks(model: nn.Module) -> None:
    """Zero every pruned entry now (cheap no-op for unmasked modules)."""
    for module in unwrap(model).modules():
        state = module.__dict__.get(_STATE)
        if state is not None:
            for pn, st in state.params.items():
                _sync_param(module, pn, st, force=True)


def detach_mask(module: nn.Module, param_name: str, bake: bool = True) -> None:
    """Remove the sparsekit mask of ``module.<param_name>`` (zeroing pruned entries first if ``bake``)."""
    state = module.__dict__.get(_STATE)
    if state is None or param_name not in state.params:
        return
    st = state.params.pop(param_name)
    if bake:
        _sync_param(module, param_name, st, force=True)
    if st.handle is not None:
        st.handle.remove()
    del module._buffers[mask_buffer_name(param_name)]
    if not state.params:
        del module.__dict__[_STATE]
        for k in [k for k, h in module._forward_pre_hooks.items() if isinstance(h, _MaskEnforcer)]:
            del module._forward_pre_hooks[k]


def assume_masks_applied(model: nn.Module, params: Iterable[Tensor]) -> int:
    """Make sparsekit's mask hooks below ``model`` take ``params`` as already masked.

    On the next forward pass the hooks then neither re-zero these parameters in place nor
    register their gradient-masking hooks on them, whatever values they hold; they take over
    again once such a parameter is modified in place or replaced by another tensor. Meant for
    parameters shared with another model, which those in-place writes and hooks would reach;
    read their masked values through :func:`effective_weight` instead. Parameters are matched
    by identity; returns how many masked parameters were marked.

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune
        >>> from sparsekit.prune.masks import assume_masks_applied
        >>> layer = torch.nn.Linear(4, 4)
        >>> _ = prune(layer, 0.5)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)  # pruned entries the hook would re-zero
        >>> assume_masks_applied(layer, [layer.weight])
        1
        >>> _ = layer(torch.zeros(1, 4))
        >>> int((layer.weight == 0).sum())  # left as it was
        0
        >>> with torch.no_grad():
        ...     _ = layer.weight.add_(0.0)  # modified in place: the hooks take over again
        >>> _ = layer(torch.zeros(1, 4))
        >>> int((layer.weight == 0).sum())
        8
    """
    wanted = {id(p): p for p in params}
    marked = 0
    for module in model.modules():
        state = module.__dict__.get(_STATE)
        if state is None:
            continue
        for pn, st in state.params.items():
            p = module._parameters.get(pn)
            if p is None or wanted.get(id(p)) is not p:
                continue
            if st.param_id != id(p):  # a gradient hook on another tensor goes, as in _sync_param
                if st.handle is not None:
                    st.handle.remove()
                st.handle = None
            st.param_id, st.version = id(p), p._version
            marked += 1
    return marked


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and remove every mask buffer and hook (in place).

    Works for sparsekit masks and for ``torch.nn.utils.prune`` reparametrisations
    (``weight_orig``/``weight_mask`` become a plain ``weight`` with zeros).

    Example:
        >>> import torch
        >>> from sparsekit.prune import make_permanent, prune
        >>> layer = torch.nn.Linear(8, 8)
        >>> _ = prune(layer, 0.5)
        >>> _ = make_permanent(layer)
        >>> int((layer.weight == 0).sum()), [n for n, _ in layer.named_buffers()]
        (32, [])
    """
    for module in unwrap(model).modules():
        state = module.__dict__.get(_STATE)
        if state is not None:
            for pn in list(state.params):
                detach_mask(module, pn, bake=True)
        for k in [k for k, h in module._forward_pre_hooks.items() if isinstance(h, _RootEnforcer)]:
            del module._forward_pre_hooks[k]
        for k in list(module._forward_pre_hooks):
            h = module._forward_pre_hooks.get(k)
            if isinstance(h, torch_prune.BasePruningMethod):
                torch_prune.remove(module, h._tensor_name)
    return model


def zero_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Zero optimizer state entries (momentum, Adam moments, ...) of pruned weights."""
    for _, module, pn, mask in named_masks(model):
        if is_torch_pruned(module, pn):
            continue
        p = module._parameters.get(pn)
        state = optimizer.state.get(p) if p is not None else None
        if not state:
            continue
        for v in state.values():
            if isinstance(v, Tensor) and v.shape == p.shape:
                v.masked_fill_(~mask.to(v.device), 0)

"""A deep copy of a model that shares some layers' tensors with the original for a while.

:func:`sparsekit.convert` (``inplace=False``) works on such a copy: the layers it may
replace keep the original's tensors instead of copies, so that conversion never holds a
second dense copy of the whole model, and :meth:`SharedTensors.unshare` gives whatever is
still shared afterwards its own copy.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Callable, Dict, Iterator, List, Tuple

from torch import Tensor, nn

__all__ = ["SharedTensors", "copy_sharing_layers"]


def _layer_tensors(layer: nn.Module) -> Iterator[Tensor]:
    """Every tensor a layer holds: parameters, buffers and plain tensor attributes
    (``torch.nn.utils.prune``'s computed ``weight``), its submodules' (parametrizations) too."""
    for mod in layer.modules():
        for store in (mod._parameters, mod._buffers):
            for t in store.values():
                if isinstance(t, Tensor):
                    yield t
        for v in mod.__dict__.values():
            if isinstance(v, Tensor):
                yield v


class SharedTensors:
    """The tensors a copy made by :func:`copy_sharing_layers` shares with its original.

    ``tensors`` maps ``id`` to tensor; ``copies`` holds weak references to the copied layers
    (those still alive when :meth:`unshare` runs are unshared too, even if the model no
    longer holds them: another object may).

    Example:
        >>> import torch
        >>> from sparsekit.model_copy import copy_sharing_layers
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> work, shared = copy_sharing_layers(model, lambda m: isinstance(m, torch.nn.Linear))
        >>> len(shared.tensors), len(shared.copies)
        (2, 1)
    """

    def __init__(self, tensors: Dict[int, Tensor], copies: List["weakref.ReferenceType[nn.Module]"]) -> None:
        self.tensors = tensors
        self.copies = copies

    def unshare(self, result: nn.Module) -> None:
        """Replace every shared tensor that ``result`` (or a live copied layer) still holds with
        its own deep copy.

        Layers that stayed as they were, copied layers still referenced from elsewhere, and
        tied weights in other modules (an embedding sharing a Linear's weight) end up exactly
        as a plain ``copy.deepcopy`` of the model would have left them; ties among them are kept.

        Example:
            >>> import torch
            >>> from sparsekit.model_copy import copy_sharing_layers
            >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
            >>> work, shared = copy_sharing_layers(model, lambda m: isinstance(m, torch.nn.Linear))
            >>> shared.unshare(work)
            >>> work[0].weight is model[0].weight, torch.equal(work[0].weight, model[0].weight)
            (False, True)
        """
        shared = self.tensors
        memo: Dict[int, Any] = {}

        def fix(mod: nn.Module) -> None:
            for store in (mod._parameters, mod._buffers):
                for k, t in list(store.items()):
                    if t is not None and shared.get(id(t)) is t:
                        store[k] = copy.deepcopy(t, memo)
            for k, v in list(mod.__dict__.items()):
                if isinstance(v, Tensor) and shared.get(id(v)) is v:
                    mod.__dict__[k] = copy.deepcopy(v, memo)

        for mod in result.modules():
            fix(mod)
        for ref in self.copies:
            layer = ref()
            if layer is not None:
                for mod in layer.modules():
                    fix(mod)


def copy_sharing_layers(model: nn.Module, is_layer: Callable[[nn.Module], bool]) -> Tuple[nn.Module, SharedTensors]:
    """``copy.deepcopy(model)``, except that the tensors of the modules ``is_layer`` accepts
    are shared with ``model`` instead of copied.

    Copying them first would hold a second dense copy of every such layer at once, most of it
    only to be replaced. sparsekit's mask hooks in the copy take the shared parameters as
    already masked (:func:`sparsekit.prune.masks.assume_masks_applied`): on the copy's first
    forward pass they would otherwise re-zero masked entries in place and register gradient
    hooks, which on a shared parameter would reach the original. Read the copy's masked weights
    through ``effective_weight``; a parameter :meth:`SharedTensors.unshare` copies gets a new
    identity, which re-arms the hooks.

    Example:
        >>> import torch
        >>> from sparsekit.model_copy import copy_sharing_layers
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> work, shared = copy_sharing_layers(model, lambda m: isinstance(m, torch.nn.Linear))
        >>> work[0].weight is model[0].weight, work[1].weight is model[1].weight
        (True, False)
    """
    from sparsekit.prune.masks import assume_masks_applied  # lazy: prune imports a lot

    tensors: Dict[int, Tensor] = {}
    layers = [mod for mod in model.modules() if is_layer(mod)]
    for layer in layers:
        for t in _layer_tensors(layer):
            tensors[id(t)] = t
    memo: Dict[int, Any] = dict(tensors)  # deepcopy returns a memo entry instead of copying
    work = copy.deepcopy(model, memo)
    copies = [weakref.ref(memo[id(layer)]) for layer in layers if id(layer) in memo]
    memo.clear()  # holds every copied object; the copied layers must be free to go once replaced
    assume_masks_applied(work, tensors.values())
    return work, SharedTensors(tensors, copies)

"""sparsekit.prune.masks.assume_masks_applied: the mask hooks leave the named parameters alone
until they change, and go on enforcing every other mask."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekit
from sparsekit.prune.masks import assume_masks_applied, get_mask


def _pruned_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsekit.prune(model, 0.5)
    return model


def test_marked_parameters_are_neither_written_nor_hooked():
    model = _pruned_mlp()
    work = copy.deepcopy(model)  # a copy's mask hooks start afresh
    shared = work[0].weight
    with torch.no_grad():
        shared.fill_(1.0)  # values the hook would otherwise re-zero in place
    version = shared._version
    assert assume_masks_applied(work, [shared]) == 1
    work(torch.randn(3, 8)).sum().backward()
    assert shared._version == version and bool((shared == 1).all())
    assert not shared._backward_hooks  # no gradient-masking hook registered on it
    # the parameter that was not named is enforced as usual: re-zeroed, gradient masked
    other, mask = work[2].weight, get_mask(work[2])
    assert bool((other[~mask] == 0).all()) and bool((other.grad[~mask] == 0).all())


def test_hooks_take_over_once_the_parameter_changes_or_is_replaced():
    model = _pruned_mlp()
    layer = copy.deepcopy(model)[0]
    mask = get_mask(layer)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assume_masks_applied(layer, [layer.weight])
    layer(torch.randn(1, 8))
    assert bool((layer.weight == 1).all())
    with torch.no_grad():
        layer.weight.mul_(2.0)  # modified in place
    layer(torch.randn(1, 8))
    assert bool((layer.weight[~mask] == 0).all()) and bool((layer.weight[mask] == 2).all())

    layer2 = copy.deepcopy(model)[0]
    assume_masks_applied(layer2, [layer2.weight])
    layer2.weight = nn.Parameter(torch.ones(8, 8))  # replaced by another tensor
    layer2(torch.randn(2, 8)).sum().backward()
    assert bool((layer2.weight[~mask] == 0).all())
    assert bool((layer2.weight.grad[~mask] == 0).all())


def test_an_existing_gradient_hook_is_kept():
    layer = _pruned_mlp()[0]  # attach_mask already hooked this parameter
    mask = get_mask(layer)
    assert assume_masks_applied(layer, [layer.weight]) == 1
    layer(torch.randn(2, 8)).sum().backward()
    assert bool((layer.weight.grad[~mask] == 0).all())
    assert len(layer.weight._backward_hooks) == 1


def test_unmasked_and_torch_pruned_parameters_are_not_counted():
    plain = nn.Linear(4, 4)
    assert assume_masks_applied(plain, [plain.weight]) == 0
    torch_pruned = nn.Linear(4, 4)
    torch_prune.l1_unstructured(torch_pruned, "weight", amount=0.5)
    assert assume_masks_applied(torch_pruned, list(torch_pruned.parameters())) == 0
    model = _pruned_mlp()
    assert assume_masks_applied(model, []) == 0
    assert assume_masks_applied(model, [torch.zeros(8, 8)]) == 0  # matched by identity, not value

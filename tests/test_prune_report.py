"""sparsity_report and make_permanent, including torch.nn.utils.prune models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sys

import sparsekit
from sparsekit.prune import get_mask, make_permanent, prune, sparsity_report
from sparsekit.prune.report import csr_nbytes


# Tiny models: one intra-op thread is faster and immune to a busy machine's oversubscription.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_counts_bytes_and_zero_rows_cols():
    layer = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1., 0., 0., 2., 0., 0.],
                                         [0., 0., 0., 0., 0., 0.],
                                         [3., 0., 0., 0., 0., 4.],
                                         [0., 0., 0., 5., 0., 0.]]))
    r = sparsity_report(layer, block=(2, 2), nm="1:2")[""]
    assert (r.nnz, r.numel, r.sparsity) == (5, 24, 19 / 24)
    assert (r.zero_rows, r.zero_cols) == (1, 3)
    assert r.dense_bytes == 96
    assert r.sparse_bytes == 5 * 4 + 5 * 2 + 5 * 8
    # 2x2 blocks: [[1,0],[0,0]] [[0,2],[0,0]] [[0,0],[0,0]] / [[3,0],[0,0]] [[0,0],[0,5]] [[0,4],[0,0]]
    assert r.block_density == 5 / 6
    assert r.block_sparse_bytes == 5 * 16 + 5 * 2 + 3 * 8
    # 1:2 groups per row: row0 (1,0)(0,2)(0,0) ok; row2 (3,0)(0,0)(0,4) ok; row3 ok
    assert r.nm_compliance == 1.0
    assert (r.macs, r.dense_macs) == (5, 24)
    assert csr_nbytes(10, 70000, 3) == 3 * 4 + 3 * 4 + 11 * 8  # int32 indices past 65536 columns


def test_totals_to_dict_and_table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    prune(model, 0.5)
    rep = sparsity_report(model, block=(1, 4), nm="2:4")
    d = rep.to_dict()
    assert d["total"]["numel"] == 250 and d["total"]["nnz"] == 125 and d["total"]["sparsity"] == 0.5
    assert [row["name"] for row in d["layers"]] == ["0", "2"]
    assert d["layers"][0]["masked"] is True
    text = str(rep)
    assert text.splitlines()[0].split()[:3] == ["layer", "type", "shape"]
    assert "50.00%" in text and "total" in text and "2:4 ok" in text
    assert len(rep) == 2 and rep["2"].shape == (5, 10)
    with pytest.raises(KeyError, match="no layer"):
        rep["9"]
    assert "sparsity=0.5000" in repr(rep)


def test_macs_with_example_input_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    prune(model, 0.75, include=nn.Conv2d)
    rep = sparsity_report(model, example_input=torch.randn(2, 3, 5, 5))
    assert rep["0"].dense_macs == 8 * 27 * 25 * 2 and rep["0"].macs == 2 * 27 * 25 * 2
    assert rep["3"].dense_macs == 200 * 4 * 2
    assert rep.macs_note == ""


def test_validation_errors():
    with pytest.raises(ValueError, match="N:M"):
        sparsity_report(nn.Linear(4, 4), nm="channels")
    with pytest.raises(TypeError, match="block"):
        sparsity_report(nn.Linear(4, 4), block=3)
    with pytest.raises(TypeError, match="block"):
        sparsity_report(nn.Linear(4, 4), block=(0, 2))


def test_torch_pruned_read_as_is_and_made_permanent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.3)
    torch_prune.ln_structured(model[2], "weight", amount=0.5, n=2, dim=0)
    rep = sparsity_report(model)
    assert rep["0"].sparsity == 0.3 and rep["2"].zero_rows == 2 and rep["0"].masked
    assert get_mask(model[0]).dtype == torch.bool
    x = torch.randn(3, 10)
    before = model(x)
    make_permanent(model)
    assert not hasattr(model[0], "weight_orig") and not hasattr(model[2], "weight_mask")
    assert isinstance(model[0].weight, nn.Parameter) and torch.equal(model(x), before)
    assert sparsity_report(model)["0"].sparsity == 0.3


def test_make_permanent_removes_everything_of_ours():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    keys = set(model.state_dict())
    prune(model, 0.5, param_names=("weight", "bias"))
    assert set(model.state_dict()) == keys  # masks are non-persistent buffers
    assert len(list(model.named_buffers())) == 4
    make_permanent(model)
    assert list(model.named_buffers()) == [] and all(len(m._forward_pre_hooks) == 0 for m in model)
    model[0].weight.grad = None
    model(torch.randn(2, 10)).sum().backward()
    assert int((model[0].weight.grad == 0).sum()) < 50  # gradients no longer masked
    assert sparsity_report(model).total["sparsity"] == 0.5


def test_package_is_callable_and_lists_public_names():
    skp = sys.modules["sparsekit.prune"]  # the subpackage, even if sparsekit.prune is re-exported as the function
    model = nn.Linear(8, 8)
    masks = skp(model, 0.25)
    assert int((~sparsekit.prune(nn.Linear(8, 8), 0.5)["weight"]).sum()) == 32
    assert int((~masks["weight"]).sum()) == 16
    assert "prune" in skp.__all__ and all(hasattr(skp, n) for n in skp.__all__)
    import inspect
    assert inspect.signature(skp) == inspect.signature(sparsekit.prune) == inspect.signature(prune)
    assert list(inspect.signature(skp).parameters)[:7] == ["model", "sparsity", "method", "granularity", "scope",
                                                          "include", "exclude"]

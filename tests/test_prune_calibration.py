"""Activation-aware one-shot pruning: Wanda and SparseGPT with calibration inputs."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsekit.prune import (ConstantSparsity, PolynomialDecay, Pruner, SparseGPT, Wanda, call_model,
                             capture_input_stats, conv_patches, get_mask, prune)
from sparsekit.prune.ranking import lowest_per_row
from sparsekit.prune.sparsegpt import chunk_quotas, reconstruct_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _uneven_inputs(rng: np.random.Generator, rows: int = 256, cols: int = 32) -> torch.Tensor:
    """Inputs whose feature scales span three orders of magnitude (as in LLM outlier features)."""
    scales = np.exp(rng.uniform(np.log(0.01), np.log(10.0), size=cols))
    return torch.from_numpy(rng.standard_normal((rows, cols)) * scales).float()


def _correlated_inputs(rng: np.random.Generator, rows: int = 1024, cols: int = 256, rank: int = 16) -> torch.Tensor:
    """Inputs lying near a low-rank subspace: strongly correlated features."""
    base = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    return torch.from_numpy(base + 0.3 * rng.standard_normal((rows, cols))).float()


def _linear(rng: np.random.Generator, n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal((n_out, n_in))).float())
    return layer


def _output_error(w0: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> float:
    x = x.double()
    return float((x @ w0.double().T - x @ w.double().T).norm())


def _pruned_weight(layer: nn.Linear, method: str, x: torch.Tensor, sparsity: float = 0.5,
                   granularity: object = "unstructured") -> torch.Tensor:
    layer = copy.deepcopy(layer)
    kw = {} if method == "magnitude" else {"calibration": [x[: len(x) // 2], x[len(x) // 2:]]}
    prune(layer, sparsity, method=method, granularity=granularity, **kw)
    return layer.weight.detach().clone()


# -- Wanda ------------------------------------------------------------------

def test_wanda_scores_are_weight_magnitude_times_input_norm(rng):
    layer = _linear(rng, 12, 5)
    batches = [torch.from_numpy(rng.standard_normal((3, 7, 12))).float() for _ in range(3)]
    crit = Wanda(batches)
    prune(layer, 0.0, method=crit)
    x = np.concatenate([b.numpy().reshape(-1, 12) for b in batches]).astype(np.float64)
    expected = np.abs(layer.weight.detach().numpy().astype(np.float64)) * np.sqrt((x ** 2).sum(axis=0))
    got = crit.score(layer.weight, name="weight", module=layer).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_wanda_scores_of_a_convolution_use_unfolded_patches(rng):
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.from_numpy(rng.standard_normal((2, 3, 9, 9))).float()
    crit = Wanda([x])
    prune(conv, 0.5, method=crit)
    patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2)  # (N, C*9, L)
    norms = patches.double().pow(2).sum(dim=(0, 2)).sqrt().numpy()
    expected = np.abs(conv.weight.detach().numpy().reshape(4, -1)) * norms
    got = crit.score(conv.weight, name="weight", module=conv).numpy().reshape(4, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert int((conv.weight == 0).sum()) == 4 * 27 // 2


def test_wanda_keeps_exactly_the_top_scores_of_every_output_row(rng):
    layer = _linear(rng, 16, 6)
    x = _uneven_inputs(rng, cols=16)
    w = layer.weight.detach().numpy().astype(np.float64)
    keep = prune(layer, 0.25, method="wanda", calibration=[x])["weight"].numpy()
    scores = np.abs(w) * np.sqrt((x.numpy().astype(np.float64) ** 2).sum(axis=0))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :12]
    expected = np.zeros_like(keep)
    np.put_along_axis(expected, top, True, axis=1)
    np.testing.assert_array_equal(keep, expected)


def test_wanda_beats_magnitude_on_uneven_feature_scales(rng):
    layer = _linear(rng, 32, 16)
    x = _uneven_inputs(rng)
    w0 = layer.weight.detach()
    wanda = _output_error(w0, _pruned_weight(layer, "wanda", x), x)
    magnitude = _output_error(w0, _pruned_weight(layer, "magnitude", x), x)
    assert wanda < 0.7 * magnitude


@pytest.mark.parametrize("granularity", ["2:4", (2, 2)])
def test_wanda_feeds_structured_granularities(rng, granularity):
    layer = _linear(rng, 16, 8)
    keep = prune(layer, 0.5, method="wanda", granularity=granularity, calibration=[_uneven_inputs(rng, cols=16)])["weight"]
    if granularity == "2:4":
        assert (keep.reshape(8, 4, 4).sum(-1) == 2).all()
    else:
        blocks = keep.reshape(4, 2, 8, 2).permute(0, 2, 1, 3).reshape(32, 4).float()
        assert ((blocks.sum(-1) == 0) | (blocks.sum(-1) == 4)).all() and int(blocks.sum()) == 64


def test_wanda_global_scope_ranks_scores_across_layers(rng):
    model = nn.Sequential(_linear(rng, 8, 8), nn.ReLU(), _linear(rng, 8, 4))
    masks = prune(model, 0.5, method="wanda", scope="global", calibration=[_uneven_inputs(rng, cols=8)])
    assert sum(int((~m).sum()) for m in masks.values()) == 48


# -- SparseGPT --------------------------------------------------------------

def test_sparsegpt_unstructured_sparsity_is_exact_and_masks_match_zeros(rng):
    layer = _linear(rng, 64, 24)
    keep = prune(layer, 0.6, method="sparsegpt", calibration=[_correlated_inputs(rng, 256, 64)])["weight"]
    w = layer.weight.detach()
    assert int((~keep).sum()) == round(0.6 * w.numel())
    assert (w[~keep] == 0).all()
    per_row = keep.sum(dim=1)  # per-row comparison inside each column block
    assert int(per_row.max() - per_row.min()) <= 1


def test_sparsegpt_n_m_pattern_is_exact(rng):
    layer = _linear(rng, 64, 16)
    keep = prune(layer, 0.5, method="sparsegpt", granularity="2:4", calibration=[_correlated_inputs(rng, 256, 64)])["weight"]
    assert (keep.reshape(16, 16, 4).sum(-1) == 2).all()
    assert (layer.weight.detach()[~keep] == 0).all()


def test_sparsegpt_blocks_prune_whole_blocks(rng):
    layer = _linear(rng, 40, 12)  # 12 x 40 in (4, 1) blocks: 3 x 40 grid
    keep = prune(layer, 0.5, method="sparsegpt", granularity=(4, 1), calibration=[_correlated_inputs(rng, 256, 40)])["weight"]
    grid = keep.reshape(3, 4, 40).float().sum(1)
    assert ((grid == 0) | (grid == 4)).all()
    assert int((grid == 0).sum()) == 60
    assert (layer.weight.detach()[~keep] == 0).all()


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", (4, 1)])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(rng, granularity):
    layer = _linear(rng, 256, 32)
    x = _correlated_inputs(rng)
    w0 = layer.weight.detach()
    errors = {m: _output_error(w0, _pruned_weight(layer, m, x, 0.5, granularity), x)
              for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < 0.8 * min(errors["magnitude"], errors["wanda"]), errors


def test_sparsegpt_at_zero_sparsity_leaves_the_weight_unchanged(rng):
    layer = _linear(rng, 32, 8)
    w0 = layer.weight.detach().clone()
    keep = prune(layer, 0.0, method="sparsegpt", calibration=[_correlated_inputs(rng, 64, 32)])["weight"]
    assert keep.all() and torch.equal(layer.weight.detach(), w0)


def test_sparsegpt_reconstruct_layer_without_pruning_is_exact(rng):
    w = torch.from_numpy(rng.standard_normal((4, 8)))
    x = torch.from_numpy(rng.standard_normal((32, 8)))
    new, keep = reconstruct_layer(w, x.T @ x, 0)
    assert keep.all() and torch.equal(new, w)


def test_sparsegpt_captures_each_layer_after_the_earlier_ones_are_pruned(rng):
    model = nn.Sequential(_linear(rng, 16, 16), nn.ReLU(), _linear(rng, 16, 8))
    x = _correlated_inputs(rng, 128, 16, rank=4)
    crit = SparseGPT([x])
    prune(model, 0.5, method=crit)
    with torch.no_grad():
        h = torch.relu(model[0](x)).double()
    torch.testing.assert_close(crit.hessian("2.weight"), h.T @ h, rtol=1e-5, atol=1e-4)


def test_sparsegpt_one_pass_mode_uses_the_dense_inputs(rng):
    model = nn.Sequential(_linear(rng, 16, 16), nn.ReLU(), _linear(rng, 16, 8))
    x = _correlated_inputs(rng, 128, 16, rank=4)
    with torch.no_grad():
        h = torch.relu(model[0](x)).double()
    crit = SparseGPT([x], sequential=False)
    prune(model, 0.5, method=crit)
    torch.testing.assert_close(crit.hessian("2.weight"), h.T @ h, rtol=1e-5, atol=1e-4)


def test_sparsegpt_prunes_convolutions(rng):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.from_numpy(rng.standard_normal((4, 3, 6, 6))).float()
    masks = prune(model, 0.5, method="sparsegpt", calibration=[x])
    for name, m in masks.items():
        assert int((~m).sum()) == m.numel() // 2, name
    assert (model[0].weight.detach()[~masks["0.weight"]] == 0).all()


# -- calling rule, capture ----------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * scale)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(input_ids) * attention_mask.unsqueeze(-1))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_tuple_and_dict_calibration_items(method):
    torch.manual_seed(0)
    model = TwoInputs()
    calib = [(torch.randn(8, 4), torch.tensor(2.0)), [torch.randn(8, 4), torch.tensor(0.5)]]
    masks = prune(model, 0.5, method=method, calibration=calib)
    assert [int(m.sum()) for m in masks.values()] == [8, 4]
    tok = Tokens()
    batch = {"input_ids": torch.randint(0, 10, (3, 5)), "attention_mask": torch.ones(3, 5)}
    assert int(prune(tok, 0.5, method=method, calibration=[batch])["fc.weight"].sum()) == 16


def test_call_model_rule_and_capture_statistics():
    model = TwoInputs()
    out = call_model(model, {"x": torch.ones(2, 4), "scale": torch.tensor(1.0)})
    assert out.shape == (2, 2)
    with pytest.raises(TypeError, match="calibration item"):
        call_model(model, "text")
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0]])
    stats = capture_input_stats(model, {"a": model.a}, [(x, torch.tensor(1.0))], hessian=True)
    assert stats["a"].rows == 2
    torch.testing.assert_close(stats["a"].xtx, (x.T @ x).double())
    assert model.training  # mode restored


@settings(max_examples=25, deadline=None)
@given(nd=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       padding=st.sampled_from([0, 1, "same"]), mode=st.sampled_from(["zeros", "reflect", "circular"]))
def test_conv_patches_reproduce_the_convolution(nd, k, stride, dilation, padding, mode):
    if padding == "same" and stride != 1:
        stride = 1
    conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    torch.manual_seed(0)
    conv = conv_type(2, 3, k, stride=stride, dilation=dilation, padding=padding, padding_mode=mode, bias=False)
    x = torch.randn((2, 2) + (7,) * nd)
    with warnings.catch_warnings():  # torch warns that 'same' with an even kernel pads asymmetrically
        warnings.simplefilter("ignore", UserWarning)
        y = conv(x)
    rows = conv_patches(conv, x)
    got = (rows @ conv.weight.reshape(3, -1).T).reshape((2,) + tuple(y.shape[2:]) + (3,))
    torch.testing.assert_close(got.movedim(-1, 1), y, rtol=1e-5, atol=1e-5)


# -- selection helpers --------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 9), frac=st.floats(0, 1), seed=st.integers(0, 99))
def test_lowest_per_row_balances_rows_and_counts_exactly(rows, cols, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, cols, generator=gen)
    k = round(frac * rows * cols)
    pruned = lowest_per_row(scores, k)
    per_row = pruned.sum(dim=1)
    assert int(pruned.sum()) == k and int(per_row.max() - per_row.min()) <= 1
    for r in range(rows):  # within a row the pruned entries are its lowest
        kept, gone = scores[r][~pruned[r]], scores[r][pruned[r]]
        assert kept.numel() == 0 or gone.numel() == 0 or gone.max() <= kept.min()


def test_lowest_per_row_keeps_forced_entries_pruned():
    scores = torch.tensor([[5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]])
    forced = torch.tensor([[False, False, True, True], [False, False, False, False]])
    assert lowest_per_row(scores, 4, forced).int().tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]


@settings(max_examples=50, deadline=None)
@given(caps=st.lists(st.integers(0, 20), min_size=1, max_size=8), frac=st.floats(0, 1), data=st.data())
def test_chunk_quotas_sum_to_k_within_capacity(caps, frac, data):
    k = round(frac * sum(caps))
    forced = [data.draw(st.integers(0, c)) for c in caps]
    for f in (None, forced):
        q = chunk_quotas(k, caps, f)
        assert sum(q) == k and all(0 <= a <= c for a, c in zip(q, caps))
        if f is not None and sum(f) <= k:
            assert all(a >= b for a, b in zip(q, f))


# -- Pruner -----------------------------------------------------------------

def test_pruner_with_wanda_calibrates_once_and_grows_masks(rng):
    model = nn.Sequential(_linear(rng, 16, 16), nn.ReLU(), _linear(rng, 16, 4))
    calls = []
    model[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    calib = (_uneven_inputs(rng, 32, 16) for _ in range(2))  # a generator: kept by the criterion
    pruner = Pruner(model, PolynomialDecay(0.0, 0.75, begin_step=0, end_step=3, frequency=1),
                    method="wanda", calibration=calib)
    previous = {k: v.clone() for k, v in pruner.masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
        pruner.step()
        for k, m in pruner.masks.items():
            assert not (m & ~previous[k]).any()  # nothing regrows
        previous = {k: v.clone() for k, v in pruner.masks.items()}
    assert len(calls) - 4 == 2  # one calibration pass (2 batches), then only training forwards
    assert pruner.current_sparsity == 0.75 and abs(pruner.achieved_sparsity() - 0.75) < 1e-9


def test_pruner_with_sparsegpt_keeps_zeros_and_masks_consistent(rng):
    model = nn.Sequential(_linear(rng, 32, 16), nn.ReLU(), _linear(rng, 16, 4))
    pruner = Pruner(model, ConstantSparsity(0.5, begin_step=0, frequency=1), method="sparsegpt",
                    granularity="2:4", calibration=[_correlated_inputs(rng, 64, 32, rank=4)])
    for name, m in pruner.masks.items():
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight.detach()
        assert (w[~m] == 0).all() and int((~m).sum()) == m.numel() // 2
    assert get_mask(model[0]) is not None


# -- errors -----------------------------------------------------------------

@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibration_is_required_and_must_not_be_empty(method):
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="calibration"):
        prune(layer, 0.5, method=method)
    with pytest.raises(ValueError, match="calibration"):
        prune(layer, 0.5, method=method, calibration=[])
    with pytest.raises(ValueError, match="calibration"):
        Pruner(layer, 0.5, method=method, calibration=iter([]))


def test_calibration_with_a_criterion_that_does_not_use_it_is_refused():
    with pytest.raises(ValueError, match="calibration"):
        prune(nn.Linear(4, 4), 0.5, method="magnitude", calibration=[torch.randn(2, 4)])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_layer_that_receives_no_input_is_named(method):
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    model.forward = lambda x: model["used"](x)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="unused"):
        prune(model, 0.5, method=method, calibration=[torch.randn(3, 4)])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_non_finite_inputs_are_an_error(method):
    x = torch.randn(3, 4)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        prune(nn.Sequential(nn.Linear(4, 4)), 0.5, method=method, calibration=[x])


def test_sparsegpt_refuses_channels_inputs_and_global_scope():
    calib = [torch.randn(8, 4)]
    for g in ("channels", "inputs"):
        with pytest.raises(ValueError, match="granularity"):
            prune(nn.Linear(4, 4), 0.5, method="sparsegpt", granularity=g, calibration=calib)
    with pytest.raises(ValueError, match="scope='layer'"):
        prune(nn.Linear(4, 4), 0.5, method="sparsegpt", scope="global", calibration=calib)


def test_unsupported_layers_are_named():
    with pytest.raises(ValueError, match="groups=2"):
        prune(nn.Conv2d(4, 4, 3, groups=2), 0.5, method="wanda", calibration=[torch.randn(1, 4, 5, 5)])
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="0.weight"):
        prune(model, 0.5, method="wanda", include=nn.Embedding, calibration=[torch.zeros(2, 3, dtype=torch.long)])

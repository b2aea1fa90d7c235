"""One-shot pruning: exact achieved sparsity, determinism, criteria, granularities, scopes, selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparsekit.prune import (NM, Blocks, Channels, Criterion, Inputs, Magnitude, Movement, Random, Scores, Taylor,
                             Unstructured, get_mask, make_permanent, parse_granularity, prune, sparsity_report)


# Tiny models: one intra-op thread is faster and immune to a busy machine's oversubscription.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.ModuleDict({
        "fc1": nn.Linear(16, 12),
        "conv2": nn.Conv2d(2, 6, 2),     # 2-D view 6 x 8
        "conv1": nn.Conv1d(4, 8, 2),     # 8 x 8
        "fc2": nn.Linear(24, 10),
        "conv3": nn.Conv3d(2, 4, (1, 2, 2)),  # 4 x 8
        "norm": nn.BatchNorm1d(10),
    })
    gen = torch.Generator().manual_seed(seed + 100)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    return m


def _names(m: nn.Module) -> list:
    return ["fc1.weight", "conv2.weight", "conv1.weight", "fc2.weight", "conv3.weight"]


class KeepPositive(Criterion):
    """A custom criterion: keeps large positive weights."""

    def score(self, weight, *, name, module, step=0):
        return weight.detach()


def _criterion(kind: str, model: nn.Module):
    if kind == "taylor":
        c = Taylor()
        c.accumulate(model)
        c.accumulate(model)
        return c
    if kind == "movement":
        c = Movement()
        c.accumulate(model)
        return c
    if kind == "scores":
        gen = torch.Generator().manual_seed(7)
        return {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters() if n.endswith("weight")}
    if kind == "custom":
        return KeepPositive()
    return kind


CRITERIA = ["magnitude", "random", "ln", "taylor", "movement", "scores", "custom"]
GRANULARITIES = ["unstructured", (2, 2), (4, 1), (3, 5), "2:4", "4:8", "channels", "inputs"]


def _unit_counts(g, masks, model):
    g = parse_granularity(g)
    out = {}
    for name, mask in masks.items():
        units = g.units_pruned(mask)
        assert units.numel() == g.n_units(mask.shape)
        # the mask is a union of whole units
        assert torch.equal(g.expand(~units, mask.shape), mask)
        out[name] = int(units.sum())
    return out


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("kind", CRITERIA)
def test_exact_sparsity_and_determinism(kind, granularity, scope):
    runs = []
    for _ in range(2):
        model = _model()
        masks = prune(model, 0.5, method=_criterion(kind, model), granularity=granularity, scope=scope)
        assert sorted(masks) == sorted(_names(model))
        runs.append((model, masks))
    (model, masks), (_, masks2) = runs
    for n in masks:
        assert torch.equal(masks[n], masks2[n]), f"non-deterministic mask for {n}"
    g = parse_granularity(granularity)
    counts = _unit_counts(granularity, masks, model)
    sizes = {n: g.n_units(m.shape) for n, m in masks.items()}
    if scope == "layer":
        for n in masks:
            assert counts[n] == round(0.5 * sizes[n])
    else:
        assert sum(counts.values()) == round(0.5 * sum(sizes.values()))
    # weights follow the masks, biases and norms untouched
    mods = dict(model.named_modules())
    for n, mask in masks.items():
        w = mods[n.rsplit(".", 1)[0]].weight
        assert torch.all(w[~mask] == 0)
    assert torch.all(model["norm"].weight == 1)
    assert model["fc1"].bias.count_nonzero() == model["fc1"].bias.numel()
    # the report proves the weight sparsity exactly where units have equal size
    rep = sparsity_report(model)
    if isinstance(g, (Unstructured, NM, Channels, Inputs)) and scope == "layer":
        for n in masks:
            assert rep[n.rsplit(".", 1)[0]].sparsity == 0.5
    if isinstance(g, NM):
        rep = sparsity_report(model, nm=f"{g.n}:{g.m}")
        assert rep.total["nm_compliance"] == (1.0 if scope == "layer" else rep.total["nm_compliance"])
        if scope == "layer":
            assert all(r.nm_compliance == 1.0 for r in rep)


def test_magnitude_matches_torch_prune(torch_seed):
    a = nn.Linear(30, 20)
    b = nn.Linear(30, 20)
    b.load_state_dict(a.state_dict())
    masks = prune(a, 0.3)
    torch_prune.l1_unstructured(b, "weight", amount=0.3)
    assert torch.equal(masks["weight"], b.weight_mask.bool())


def test_global_matches_torch_global_unstructured(torch_seed):
    a = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    b = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    b.load_state_dict(a.state_dict())
    masks = prune(a, 0.6, scope="global")
    torch_prune.global_unstructured([(b[0], "weight"), (b[2], "weight")], torch_prune.L1Unstructured, amount=0.6)
    assert torch.equal(masks["0.weight"], b[0].weight_mask.bool())
    assert torch.equal(masks["2.weight"], b[2].weight_mask.bool())
    assert sparsity_report(a).total["sparsity"] == 0.6


def test_ln_channels_matches_torch_ln_structured(torch_seed):
    a = nn.Conv2d(3, 10, 3)
    b = nn.Conv2d(3, 10, 3)
    b.load_state_dict(a.state_dict())
    masks = prune(a, 0.4, method="ln", granularity="channels")
    torch_prune.ln_structured(b, "weight", amount=0.4, n=2, dim=0)
    assert torch.equal(masks["weight"], b.weight_mask.bool())
    assert sparsity_report(a)[""].zero_rows == 4


def test_ties_broken_by_index():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    mask = prune(layer, 5)["weight"]
    assert mask.reshape(-1).tolist() == [False] * 5 + [True] * 7


def test_block_mean_versus_max():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():  # blocks (1, 2): [9, 0] mean 4.5 max 9; [3, 3] mean 3 max 3
        layer.weight.copy_(torch.tensor([[9.0, 0.0, 3.0, 3.0], [1.0, 1.0, 2.0, 2.0]]))
    m_mean = prune(layer, 0.5, granularity=(1, 2), block_reduce="mean")["weight"]
    assert m_mean.tolist() == [[True, True, True, True], [False, False, False, False]]
    layer2 = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer2.weight.copy_(torch.tensor([[9.0, 0.0, 3.0, 3.0], [4.0, 4.0, 3.5, 3.5]]))
    m_mean = prune(layer2, 1, granularity=(1, 2), block_reduce="mean", regrow=True)["weight"]
    assert m_mean[0].tolist() == [True, True, False, False]  # 3 < 3.5 < 4 < 4.5
    layer3 = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer3.weight.copy_(torch.tensor([[9.0, 0.0, 3.0, 3.0], [4.0, 4.0, 3.5, 3.5]]))
    m_max = prune(layer3, 1, granularity=(1, 2), block_reduce="max")["weight"]
    assert m_max[0].tolist() == [True, True, False, False] and m_max[1].all()


def test_blocks_aligned_with_partial_edges():
    g = Blocks(4, 3)
    layer = nn.Linear(7, 10)  # 10 x 7 -> 3 x 3 blocks, last row/col partial
    mask = prune(layer, 4, granularity=(4, 3))["weight"]
    units = g.units_pruned(mask)
    assert units.numel() == 9 and int(units.sum()) == 4
    assert torch.equal(g.expand(~units, mask.shape), mask)
    rep = sparsity_report(layer, block=(4, 3))
    assert rep[""].block_density == 5 / 9


def test_nm_pattern_exact_and_capped():
    torch.manual_seed(1)
    layer = nn.Linear(16, 8)
    mask = prune(layer, 0.5, granularity="2:4")["weight"]
    assert torch.all(mask.reshape(8, 4, 4).sum(-1) == 2)
    layer2 = nn.Linear(16, 8)
    with pytest.raises(ValueError, match="N:M"):
        prune(layer2, 0.6, granularity="2:4")
    layer3 = nn.Linear(10, 2)  # groups of 4: [4, 4, 2] -> at most 2+2+0 pruned per row
    assert NM(2, 4).capacity(layer3.weight.shape) == 8
    mask = prune(layer3, 8, granularity="2:4")["weight"]
    assert mask[:, 8:].all() and torch.all(mask[:, :8].reshape(2, 2, 4).sum(-1) == 2)


def test_inputs_granularity_prunes_whole_input_channels(torch_seed):
    conv = nn.Conv2d(6, 4, 3)
    mask = prune(conv, 0.5, granularity="inputs")["weight"]
    per_channel = mask.any(dim=(0, 2, 3))
    assert int((~per_channel).sum()) == 3
    assert torch.equal(mask, per_channel.reshape(1, 6, 1, 1).expand_as(mask))


def test_random_seeded():
    a, b, c = _model(), _model(), _model()
    ma = prune(a, 0.5, method="random", seed=3)
    mb = prune(b, 0.5, method=Random(3))
    mc = prune(c, 0.5, method="random", seed=4)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    assert not all(torch.equal(ma[n], mc[n]) for n in ma)


def test_scores_by_module_name_and_missing():
    layer = nn.Sequential(nn.Linear(4, 2))
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0], [8.0, 7.0, 6.0, 5.0]])
    mask = prune(layer, 0.5, method={"0": s})["0.weight"]
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]
    with pytest.raises(ValueError, match="no importance scores"):
        prune(nn.Sequential(nn.Linear(4, 2)), 0.5, method={"x": s})
    with pytest.raises(ValueError, match="shape"):
        prune(nn.Sequential(nn.Linear(4, 2)), 0.5, method={"0.weight": s.T})


def test_taylor_and_movement_use_gradients():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 10.0]]))
    layer.weight.grad = torch.tensor([[5.0, 0.1]])  # |w g| = 5 vs 1 -> keep the first
    t = Taylor()
    t.accumulate(layer)
    assert prune(layer, 1, method=t)["weight"].tolist() == [[True, False]]
    layer2 = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer2.weight.copy_(torch.tensor([[1.0, 10.0]]))
    layer2.weight.grad = torch.tensor([[-1.0, 1.0]])  # -w g = 1 vs -10 -> keep the first
    mv = Movement()
    mv.accumulate(layer2)
    assert prune(layer2, 1, method=mv)["weight"].tolist() == [[True, False]]
    with pytest.raises(ValueError, match="accumulate"):
        prune(nn.Linear(2, 2), 0.5, method="taylor")


def test_custom_compute_mask_override():
    class FirstHalf(Criterion):
        def compute_mask(self, weight, amount, **kw):
            m = torch.ones_like(weight, dtype=torch.bool)
            m[:, : weight.shape[1] // 2] = False
            return m

    layer = nn.Linear(4, 2)
    assert prune(layer, 0.5, method=FirstHalf())["weight"].tolist() == [[False, False, True, True]] * 2
    with pytest.raises(NotImplementedError, match="score"):
        prune(nn.Linear(4, 2), 0.5, method=FirstHalf(), scope="global")


@pytest.mark.parametrize("bad,exc", [("0.5", TypeError), (True, TypeError), (None, TypeError),
                                     (torch.tensor(0.5), TypeError), (-0.1, ValueError), (1.5, ValueError),
                                     (float("nan"), ValueError), (-1, ValueError), (10_000, ValueError)])
def test_sparsity_validation(bad, exc):
    with pytest.raises(exc, match="sparsity"):
        prune(nn.Linear(4, 4), bad)


def test_int_amount_and_extremes():
    layer = nn.Linear(5, 4)
    assert int((~prune(layer, 7)["weight"]).sum()) == 7
    assert int((~prune(nn.Linear(5, 4), 1.0)["weight"]).sum()) == 20
    assert int((~prune(nn.Linear(5, 4), 0.0)["weight"]).sum()) == 0
    assert int((~prune(nn.Linear(5, 4), 2, granularity="channels")["weight"]).sum()) == 10


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="granularity"):
        prune(nn.Linear(4, 4), 0.5, granularity="diagonal")
    with pytest.raises(TypeError, match="granularity"):
        prune(nn.Linear(4, 4), 0.5, granularity=3)
    with pytest.raises(ValueError, match="scope"):
        prune(nn.Linear(4, 4), 0.5, scope="model")
    with pytest.raises(ValueError, match="method"):
        prune(nn.Linear(4, 4), 0.5, method="biggest")
    with pytest.raises(ValueError, match="include"):
        prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="scope='layer'"):
        prune(nn.Linear(4, 4), {"*": 0.5}, scope="global")


def test_per_layer_targets_dict():
    model = _model()
    masks = prune(model, {"fc1": 0.25, "conv*": 0.5, "fc2.weight": 3})
    assert int((~masks["fc1.weight"]).sum()) == 48
    assert int((~masks["conv2.weight"]).sum()) == 24 and int((~masks["conv3.weight"]).sum()) == 16
    assert int((~masks["fc2.weight"]).sum()) == 3
    assert int((~masks["conv1.weight"]).sum()) == 32


def test_global_min_max_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        w = model[0].weight  # |w| >= 10 > 1 >= every weight of the second layer
        w.copy_(torch.where(w >= 0, 1.0, -1.0) * (w.abs() + 10))
    free = prune(model, 0.5, scope="global")
    assert int((~free["1.weight"]).sum()) == 100
    model2 = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    model2.load_state_dict(model.state_dict())
    b = prune(model2, 0.5, scope="global", min_sparsity=0.2, max_sparsity=0.7)
    assert int((~b["0.weight"]).sum()) == 30 and int((~b["1.weight"]).sum()) == 70
    # inside the first layer the bounded choice is still its 30 lowest magnitudes
    w0 = model[0].weight.detach().abs().reshape(-1)
    assert torch.equal(~b["0.weight"].reshape(-1), w0 <= w0.sort().values[29])
    model3 = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with pytest.raises(ValueError, match="bounds"):
        prune(model3, 0.9, scope="global", max_sparsity=0.5)


def test_layer_scope_bounds_clamp():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    m = prune(model, 0.9, max_sparsity={"1": 0.5})
    assert int((~m["0.weight"]).sum()) == 90 and int((~m["1.weight"]).sum()) == 50


def test_selection_include_exclude_and_protection():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8),
                             nn.Linear(8, 2))
    assert sorted(prune(build(), 0.5)) == ["1.weight", "3.weight", "4.weight"]
    assert sorted(prune(build(), 0.5, include=nn.Embedding)) == ["0.weight"]
    assert sorted(prune(build(), 0.5, include=[nn.Embedding, nn.Linear])) == ["0.weight", "1.weight", "3.weight", "4.weight"]
    assert sorted(prune(build(), 0.5, include="[34]")) == ["3.weight", "4.weight"]
    assert sorted(prune(build(), 0.5, exclude=["3", lambda n, m: m.out_features == 2])) == ["1.weight"]
    assert sorted(prune(build(), 0.5, skip_first=True, skip_last=True)) == ["3.weight"]
    assert sorted(prune(build(), 0.5, include=lambda n, m: True)) == ["0.weight", "1.weight", "3.weight", "4.weight"]
    m = build()
    masks = prune(m, 0.5, param_names=("weight", "bias"))
    assert "1.bias" in masks and int((~masks["1.bias"]).sum()) == 4
    assert torch.all(m[2].weight == 1)  # LayerNorm never


def test_prior_masks_stay_pruned_and_permanent_option(torch_seed):
    layer = nn.Linear(10, 10)
    m1 = prune(layer, 0.3)["weight"].clone()
    with torch.no_grad():  # weights that grew back in place are still masked
        layer.weight.add_(5.0)
    m2 = prune(layer, 0.6)["weight"]
    assert torch.all(m2 <= m1) and int((~m2).sum()) == 60
    layer2 = nn.Linear(10, 10)
    prune(layer2, 0.5, permanent=True)
    assert get_mask(layer2) is None and int((layer2.weight == 0).sum()) == 50


def test_torch_pruned_model_is_read_as_is(torch_seed):
    layer = nn.Linear(10, 10)
    torch_prune.random_unstructured(layer, "weight", amount=0.3)
    old = layer.weight_mask.bool().clone()
    assert sparsity_report(layer)[""].sparsity == 0.3
    mask = prune(layer, 0.5)["weight"]
    assert not hasattr(layer, "weight_orig") and torch.all(mask <= old)
    assert int((~mask).sum()) == 50
    layer2 = nn.Linear(10, 10)
    torch_prune.l1_unstructured(layer2, "weight", amount=0.4)
    make_permanent(layer2)
    assert not hasattr(layer2, "weight_orig") and int((layer2.weight == 0).sum()) == 40


def test_tied_parameters_pruned_once():
    emb = nn.Embedding(8, 4)
    head = nn.Linear(4, 8, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    masks = prune(model, 0.5, include=[nn.Embedding, nn.Linear])
    assert list(masks) == ["0.weight"]
    assert int((model[1].weight == 0).sum()) == 16


def test_granularity_objects():
    assert parse_granularity((1, 1)) == Unstructured()
    assert parse_granularity("filters") == Channels()
    assert parse_granularity(" 4 : 8 ") == NM(4, 8)
    with pytest.raises(ValueError):
        parse_granularity("4:4")
    with pytest.raises(ValueError):
        Blocks(0, 2)
    assert math.isinf(float(torch.tensor(-math.inf)))
    assert Magnitude("max").reduce == "max"
    with pytest.raises(ValueError):
        Magnitude("median")
    assert isinstance(Scores({}), Criterion)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 9), cols=st.integers(1, 13), frac=st.floats(0, 1),
       gran=st.sampled_from(["unstructured", "channels", "inputs", (2, 3), (1, 4), (3, 1), "2:4", "1:3"]),
       seed=st.integers(0, 3), ties=st.booleans())
def test_property_exact_unit_count(rows, cols, frac, gran, seed, ties):
    g = parse_granularity(gran)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    if ties:
        w = w.round()  # many equal magnitudes, zeros included
    n = g.n_units(w.shape)
    cap = g.capacity(w.shape) if isinstance(g, NM) else n
    k = min(round(frac * n), cap)
    layer = nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.copy_(w)
    mask = prune(layer, k, granularity=gran)["weight"]
    units = g.units_pruned(mask)
    assert int(units.sum()) == k and torch.equal(g.expand(~units, mask.shape), mask)
    # the pruned units never outscore a kept one (ties: lower index goes first)
    scores = g.unit_scores(w.abs().double(), "mean")
    if k and k < n and not isinstance(g, NM):
        assert scores[units].max() <= scores[~units].min()
    layer2 = nn.Linear(cols, rows)
    with torch.no_grad():
        layer2.weight.copy_(w)
    assert torch.equal(prune(layer2, k, granularity=gran)["weight"], mask)


def test_global_nm_with_layer_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(10)
    masks = prune(model, 0.4, granularity="2:4", scope="global", min_sparsity=0.25)
    n0, n1 = int((~masks["0.weight"]).sum()), int((~masks["1.weight"]).sum())
    assert n0 + n1 == round(0.4 * 64) and n0 >= 8 and n1 <= 16
    for m in masks.values():
        assert torch.all(m.reshape(4, 2, 4).sum(-1) >= 2)

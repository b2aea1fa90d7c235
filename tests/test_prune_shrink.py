"""Structural shrinking gives a smaller dense model with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekit.prune import InputSelect, get_mask, prune, shrink


# Tiny models: one intra-op thread is faster and immune to a busy machine's oversubscription.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_linear_chain_rows_and_columns_with_bias_folding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 16), nn.GELU(), nn.Dropout(0.1),
                          nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        model[5].running_mean.uniform_(-1, 1)
        model[5].running_var.uniform_(0.5, 2)
        model[5].weight.uniform_(0.5, 1.5)
        model[5].bias.uniform_(-1, 1)
    prune(model, 0.5, granularity="channels", include="0")   # 10 dead rows (biases stay: folded constants)
    prune(model, 0.25, granularity="channels", include="2")  # 4 dead rows through GELU/BN/Tanh
    prune(model, 5, granularity="inputs", include="7")        # 5 unused hidden units of layer 2
    model.eval()
    x = torch.randn(7, 10)
    ref = model(x)
    small = shrink(model)
    assert small[0].out_features == 10 and small[2].in_features == 10
    dead2 = int((~get_mask(model[2]).any(dim=1)).sum())
    unused7 = ~get_mask(model[7]).any(dim=0)
    removed2 = int(((~get_mask(model[2]).any(dim=1)) | unused7).sum())
    assert dead2 == 4 and small[2].out_features == 16 - removed2 == small[7].in_features
    assert small[5].num_features == small[2].out_features and small[5].running_mean.numel() == small[2].out_features
    assert _params(small) < _params(model)
    torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-6)
    assert get_mask(model[0]) is not None  # the original keeps its masks (not in place)


def test_conv_bn_relu_conv_exact_only_where_it_may_fold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        # filters 0..3 of conv0 will be pruned; after BN+ReLU, 0 and 1 are constant 0, 2 and 3 constant > 0
        model[1].bias.copy_(torch.tensor([-5.0, -5.0, 5.0, 5.0, 0.1, 0.1, 0.1, 0.1]))
        model[0].weight[4:].add_(torch.sign(model[0].weight[4:]) * 10)  # make sure 0..3 are the weakest
    prune(model, 4, granularity="channels", include="0")
    prune(model, 3, granularity="channels", include="3")
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    ref = model(x)
    small = shrink(model)
    # conv3 has padding 1: only the dead channels whose constant is 0 may go
    assert small[0].out_channels == 6 and small[3].in_channels == 6 and small[1].num_features == 6
    # conv6 is 1x1 without padding: every dead channel of conv3 folds into its bias
    assert small[3].out_channels == 3 and small[6].in_channels == 3
    torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-5)


def test_input_features_removed_behind_input_select():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2))
    prune(model, 0.5, granularity="inputs", include="0")
    small = shrink(model, inputs=True)
    assert isinstance(small[0], InputSelect) and small[0].index.numel() == 6
    assert small[1][0].in_features == 6
    x = torch.randn(5, 12)
    torch.testing.assert_close(small(x), model(x), rtol=1e-6, atol=1e-6)
    conv = nn.Sequential(nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    prune(conv, 2, granularity="inputs", include="0")
    small_c = shrink(conv, inputs=True)
    xc = torch.randn(1, 4, 6, 6)
    assert small_c[0].dim == 1 and small_c[1][0].in_channels == 2
    torch.testing.assert_close(small_c(xc), conv(xc), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="inputs=True"):
        shrink(nn.Sequential(nn.ReLU()), inputs=True)


def test_inplace_and_nothing_to_remove_and_never_empty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    same = shrink(model, inplace=True)
    assert same is model and model[0].out_features == 4
    prune(model, 1.0, granularity="channels", include="0")
    small = shrink(model)
    assert small[0].out_features == 1  # keeps one unit so shapes stay valid
    x = torch.randn(3, 4)
    torch.testing.assert_close(small(x), model(x))
    # a chain broken by a non-elementwise module is left alone
    odd = nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=-1), nn.Linear(6, 2))
    prune(odd, 0.5, granularity="channels", include="0")
    assert shrink(odd)[0].out_features == 6


def test_nested_sequentials_are_one_chain():
    # conv-bn blocks built as Sequential(Sequential(conv, bn, relu), Sequential(conv, bn)), as in ResNet branches
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)))
    with torch.no_grad():
        bn = model[0][1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.uniform_(0.5, 1.0)  # dead channels would be constants > 0: only unread ones may go
    prune(model, 3, granularity="inputs", include="1.0")
    model.eval()
    x = torch.randn(2, 3, 7, 7)
    small = shrink(model)
    assert small[0][0].out_channels == 5 and small[0][1].num_features == 5 and small[1][0].in_channels == 5
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)

"""finetune history/early stopping, iterative and greedy prune-and-finetune, regularizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekit.prune import (L1, L2, ConstantSparsity, ElasticNet, GroupLasso, Pruner, evaluate, finetune,
                             get_mask, iterative_prune, prune, sparsity_report)


# Tiny models: one intra-op thread is faster and immune to a busy machine's oversubscription.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

mse = nn.functional.mse_loss


def _data(n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=gen)
    y = x[:, :3].sum(1, keepdim=True)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))


def test_finetune_history_with_pruner_and_metric():
    model, train, val = _model(), _data(), _data(64, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, ConstantSparsity(0.6, frequency=8), optimizer=opt)
    mae = lambda out, y: (out - y).abs().mean()
    hist = finetune(model, train, mse, opt, pruner, epochs=4, val_loader=val, metric=mae, progress=False)
    assert len(hist) == 4 and hist["epoch"] == [1, 2, 3, 4] and hist["steps"] == [8, 16, 24, 32]
    assert hist.monitor == "metric" and all(s == pytest.approx(0.6, abs=2e-3) for s in hist["sparsity"])
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    ev = evaluate(model, val, mse, mae)
    assert ev["loss"] == hist["val_loss"][-1] and ev["metric"] == hist["metric"][-1]
    # monitor "metric" with mode "max" by default: best epoch = highest MAE (users pass mode="min" for errors)
    assert hist.best_epoch == 1 + max(range(4), key=lambda i: hist["metric"][i])
    hist_min = finetune(model, train, mse, opt, pruner, epochs=2, val_loader=val, metric=mae, mode="min", progress=False)
    assert hist_min.best_value == min(hist_min["metric"])
    assert hist.to_dict()["epochs"][0]["epoch"] == 1 and model.training
    assert sparsity_report(model).total["sparsity"] == pytest.approx(0.6, abs=2e-3)


def test_finetune_early_stopping_and_restore_best():
    model, train = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no progress at all: stops after `patience` epochs
    hist = finetune(model, train, mse, opt, epochs=10, val_loader=train, patience=2, progress=False)
    assert hist.stopped_early and len(hist) == 3 and hist.best_epoch == 1
    model2 = _model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        finetune(model2, train, lambda out, y: mse(out, y) * float("nan"), opt2, progress=False)
    model3 = _model()
    opt3 = torch.optim.Adam(model3.parameters(), lr=1e-2)
    hist3 = finetune(model3, train, mse, opt3, epochs=3, val_loader=train, restore_best=True, progress=False)
    assert evaluate(model3, train, mse)["loss"] == pytest.approx(min(hist3["val_loss"]))
    # restore_best really restores: after the first epoch every step damages the weights
    model4 = _model()
    opt4 = torch.optim.Adam(model4.parameters(), lr=1e-2)
    damage = lambda step, loss: model4[2].weight.data.add_(0.5) if step > 8 else None
    hist4 = finetune(model4, train, mse, opt4, epochs=3, val_loader=train, restore_best=True, on_step=damage,
                     progress=False)
    assert hist4.best_epoch == 1 and hist4["val_loss"][2] > hist4["val_loss"][0]
    assert evaluate(model4, train, mse)["loss"] == hist4["val_loss"][0]


def test_finetune_max_steps_regularizer_autocast_and_progress_bar(capsys):
    model, train = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    hist = finetune(model, train, mse, opt, epochs=5, max_steps=10, regularizer=L1(1e-4), autocast_dtype=torch.bfloat16,
                    progress=True)
    assert hist["steps"] == [8, 10] and hist.monitor == "train_loss"
    assert "epoch 1/5" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(epochs=-1), ValueError, "epochs"), (dict(patience=0), ValueError, "patience"),
    (dict(monitor="val_loss"), ValueError, "val_loader"), (dict(monitor="acc"), ValueError, "monitor"),
    (dict(mode="up", val_loader=[]), ValueError, "mode")])
def test_finetune_argument_errors(kwargs, exc, word):
    model = _model()
    with pytest.raises(exc, match=word):
        finetune(model, _data(), mse, torch.optim.SGD(model.parameters(), lr=0.1), progress=False, **kwargs)
    with pytest.raises(TypeError, match="tuple"):
        finetune(model, [torch.zeros(3)], mse, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)


def _pretrained():
    model, train = _model(), _data()
    finetune(model, train, mse, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=20, progress=False)
    return model, train


def test_iterative_stops_at_threshold_and_returns_best():
    model, train = _pretrained()
    val = _data(128, seed=2)
    res = iterative_prune(model, train, val, mse, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
                          sparsities=[0.5, 0.7, 0.9, 0.995], threshold=0.05, epochs_per_round=5)
    acc = [r.accepted for r in res.rounds]
    assert acc[0] and not acc[-1] and all(acc[:-1])
    kept = [r for r in res.rounds if r.accepted][-1]
    assert res.sparsity == kept.sparsity and res.val_loss == kept.val_loss and res.val_loss <= 0.05
    assert "missed the threshold" in res.reason
    # the model holds the best round: its sparsity and validation loss
    assert get_mask(model[0]) is None
    assert sparsity_report(model)["0"].sparsity == pytest.approx(res.sparsity, abs=1e-9)
    assert evaluate(model, val, mse)["loss"] == pytest.approx(res.val_loss, rel=1e-6)
    assert "accepted" in str(res)


def test_iterative_round_budget_and_default_sparsities():
    model, train = _pretrained()
    res = iterative_prune(model, train, train, mse, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3),
                          rate=0.5, max_rounds=2, epochs_per_round=1, permanent=False)
    assert [r.sparsity for r in res.rounds] == [0.0, 0.5, 0.75] and res.reason == "round budget reached"
    assert res.sparsity == 0.75 and get_mask(model[0]) is not None


def test_greedy_rejects_a_round_that_worsens_val_loss():
    model, train = _pretrained()
    res = iterative_prune(model, train, train, mse, lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
                          sparsities=[0.3, 0.99], greedy=True, epochs_per_round=1)
    # with lr=0 pruning can only hurt: the first round is already worse than the dense model
    assert [r.accepted for r in res.rounds] == [True, False] and "greedy" in res.reason
    assert res.sparsity == 0.0 and sparsity_report(model).total["sparsity"] == 0.0


def test_iterative_taylor_and_metric_threshold():
    model, train = _pretrained()
    neg_mae = lambda out, y: -(out - y).abs().mean()
    res = iterative_prune(model, train, train, mse, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
                          sparsities=[0.5], metric=neg_mae, threshold=-1.0, method="taylor", epochs_per_round=2)
    assert res.rounds[1].accepted and res.metric == res.rounds[1].metric and res.sparsity == 0.5
    with pytest.raises(ValueError, match="decrease"):
        iterative_prune(model, train, train, mse, lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                        sparsities=[0.5, 0.2])


def test_regularizer_values_and_gradients():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
    assert L1(0.5)(layer).item() == 4.0
    assert L2(0.5)(layer).item() == 13.0
    assert ElasticNet(1.0, 1.0)(layer).item() == 8.0 + 26.0
    assert GroupLasso(1.0, "channels", scale_by_size=False)(layer).item() == 6.0
    assert GroupLasso(1.0, "channels")(layer).item() == pytest.approx(6.0 * 2.0)
    assert GroupLasso(1.0, "inputs", scale_by_size=False)(layer).item() == pytest.approx(3 + 4 + 0 + 1)
    # 2x3 blocks of a 2x4 weight: [[3,4,0],[0,0,0]] (6 entries) and [[0],[-1]] (2 entries, partial)
    assert GroupLasso(1.0, (2, 3))(layer).item() == pytest.approx(5 * 6 ** 0.5 + 1 * 2 ** 0.5)
    g = GroupLasso(1.0, "channels", scale_by_size=False)
    layer.weight.grad = None
    with torch.no_grad():
        layer.weight[1].zero_()
    g(layer).backward()
    assert torch.isfinite(layer.weight.grad).all() and torch.all(layer.weight.grad[1] == 0)
    with pytest.raises(ValueError, match="L1"):
        GroupLasso(1.0, "unstructured")
    with pytest.raises(ValueError, match="strength"):
        L1(-1.0)
    with pytest.raises(TypeError, match="strength"):
        L2("1")


def test_group_lasso_training_zeroes_rows():
    model, train = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    finetune(model, train, mse, opt, epochs=30, regularizer=GroupLasso(0.02, "inputs", include="0"), progress=False)
    # the unused inputs 3..9 shrink towards zero much more than the informative 0..2
    norms = model[0].weight.detach().norm(dim=0)
    assert norms[3:].max() < 0.5 * norms[:3].min()
    prune(model, 7, granularity="inputs", include="0")
    assert torch.all(model[0].weight[:, 3:] == 0)

"""Masks stay enforced while training: optimizers, schedules, autocast, resume, DDP."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsekit.prune import ConstantSparsity, PolynomialDecay, Pruner, get_mask, make_permanent, prune, sparsity_report


# Tiny models: one intra-op thread is faster and immune to a busy machine's oversubscription.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 12, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(n)]


def _forward_weights_seen(model):
    """Record the weights every Linear sees in forward."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, mod.weight.detach().clone()))
             for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return seen, hooks


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adamw"])
@pytest.mark.parametrize("give_optimizer", [True, False])
def test_optimizers_cannot_revive_pruned_weights(opt_name, give_optimizer):
    model = _mlp()
    if opt_name == "sgd_momentum":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    data = _batches(30)
    # a few dense steps first, so momentum / Adam moments are nonzero everywhere
    for x, y in data[:5]:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    pruner = Pruner(model, ConstantSparsity(0.7, begin_step=0, frequency=10), optimizer=opt if give_optimizer else None)
    seen, hooks = _forward_weights_seen(model)
    for x, y in data[5:]:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        for name, mask in pruner.masks.items():
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            assert torch.all(mod.weight.grad[~mask] == 0)
            assert torch.all(seen[name.rsplit(".", 1)[0]][~mask] == 0)  # forward saw zeros
        opt.step()
        pruner.step()
        for name, mask in pruner.masks.items():
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            assert int((~mask).sum()) == round(0.7 * mask.numel())
            assert torch.all(mod.weight[~mask] == 0)
            if give_optimizer:
                for v in opt.state[mod.weight].values():
                    if v.shape == mask.shape:
                        assert torch.all(v[~mask] == 0)
    for h in hooks:
        h.remove()
    assert sparsity_report(model).total["nnz"] == sum(m.numel() - round(0.7 * m.numel()) for m in pruner.masks.values())


def test_forward_hook_rezeroes_without_pruner_step():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches(3):  # dense momentum
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    masks = prune(model, 0.5)
    seen, hooks = _forward_weights_seen(model)
    for x, y in _batches(4, seed=3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()  # momentum moves pruned weights ...
        assert any(torch.any(model.get_submodule(n[:-7]).weight[~m] != 0) for n, m in masks.items())
        model(x)  # ... but the next forward sees them zeroed again
        for n, m in masks.items():
            assert torch.all(seen[n[:-7]][~m] == 0)
    for h in hooks:
        h.remove()


def test_two_forwards_one_backward_is_allowed():
    model = _mlp()
    prune(model, 0.5)
    x = torch.randn(4, 12)
    (model(x).sum() + model(2 * x).sum()).backward()  # no in-place change between the forwards
    assert model[0].weight.grad is not None


def test_schedule_drives_mask_updates_exactly():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = PolynomialDecay(0.1, 0.8, begin_step=2, end_step=14, power=3, frequency=3)
    pruner = Pruner(model, sched, optimizer=opt)
    assert pruner.current_sparsity == 0.0 and pruner.step_count == 0
    prev = {k: v.clone() for k, v in pruner.masks.items()}
    last = 0.0
    for t, (x, y) in enumerate(_batches(20), start=1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        changed = pruner.step()
        update, s = sched(t)
        assert changed == update and pruner.step_count == t
        if update:
            last = s
        assert pruner.current_sparsity == last
        for name, m in pruner.masks.items():
            assert int((~m).sum()) == round(last * m.numel())
            assert torch.all(m <= prev[name])  # monotone: pruned weights stay pruned
        prev = {k: v.clone() for k, v in pruner.masks.items()}
    assert last == 0.8 and pruner.achieved_sparsity() == pytest.approx(0.8, abs=2e-3)


def test_callable_schedule_with_per_layer_dict_and_global_scope():
    model = _mlp()
    pruner = Pruner(model, lambda step: (step % 2 == 0, {"0": 0.5, "2": 4, "4": 0.0}))
    assert int((~pruner.masks["0.weight"]).sum()) == 192 and int((~pruner.masks["2.weight"]).sum()) == 4
    assert pruner.masks["4.weight"].all()
    model2 = _mlp()
    p2 = Pruner(model2, ConstantSparsity(0.5, frequency=1), scope="global", granularity="channels")
    assert sum(int(p2._engine.granularity.units_pruned(m).sum()) for m in p2.masks.values()) == round(0.5 * 51)
    with pytest.raises(TypeError, match="schedule"):
        Pruner(_mlp(), lambda step: 0.5)


def test_autocast_bfloat16_training_keeps_masks():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    pruner = Pruner(model, PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2), optimizer=opt)
    for x, y in _batches(10):
        opt.zero_grad()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.mse_loss(out.float(), y)
        loss.backward()
        assert torch.isfinite(loss)
        opt.step()
        pruner.step()
    for name, m in pruner.masks.items():
        assert model.get_submodule(name[:-7]).weight.dtype == torch.float32
        assert int((~m).sum()) == round(0.75 * m.numel())
        assert torch.all(model.get_submodule(name[:-7]).weight[~m] == 0)


def _train(model, opt, pruner, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        pruner.step()


@pytest.mark.parametrize("method", ["magnitude", "movement", "taylor", "random"])
def test_state_dict_resumes_mid_schedule_exactly(method):
    sched = PolynomialDecay(0.0, 0.9, begin_step=1, end_step=13, frequency=2)
    data = _batches(16)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = Pruner(model, sched, method=method, optimizer=opt)
    _train(model, opt, pruner, data)
    ref_masks = {k: v.clone() for k, v in pruner.masks.items()}

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = Pruner(model, sched, method=method, optimizer=opt)
    _train(model, opt, pruner, data[:7])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()})
    assert saved["pruner"]["step"] == 7

    model2 = _mlp(seed=5)  # different init: everything must come from the checkpoint
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    pruner2 = Pruner(model2, sched, method=method, optimizer=opt2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pruner2.load_state_dict(saved["pruner"])
    assert pruner2.step_count == 7 and pruner2.current_sparsity == pruner.current_sparsity
    _train(model2, opt2, pruner2, data[7:])
    _train(model, opt, pruner, data[7:])
    ref_model = _mlp()
    opt_r = torch.optim.Adam(ref_model.parameters(), lr=0.01)
    pr = Pruner(ref_model, sched, method=method, optimizer=opt_r)
    _train(ref_model, opt_r, pr, data)
    for k in ref_masks:
        assert torch.equal(pruner2.masks[k], ref_masks[k])
        assert torch.equal(pr.masks[k], ref_masks[k])
    for (n, a), b in zip(model2.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), n


def test_load_state_dict_validates():
    model = _mlp()
    pruner = Pruner(model, 0.5)
    state = pruner.state_dict()
    state["masks"].pop("0.weight")
    with pytest.raises(ValueError, match="do not match"):
        pruner.load_state_dict(state)
    state = pruner.state_dict()
    state["masks"]["0.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        pruner.load_state_dict(state)


def test_deepcopy_and_remove():
    model = _mlp()
    pruner = Pruner(model, 0.6)
    clone = copy.deepcopy(model)
    x = torch.randn(5, 12)
    clone(x).sum().backward()  # the copy re-installs its own gradient hooks on first forward
    m = get_mask(clone[0])
    assert m is not None and torch.all(clone[0].weight.grad[~m] == 0)
    assert torch.equal(clone(x), model(x))
    pruner.remove()
    assert get_mask(model[0]) is None and len(model[0]._forward_pre_hooks) == 0
    assert sparsity_report(model).total["sparsity"] == pytest.approx(0.6, abs=1e-3)
    make_permanent(clone)
    assert [n for n, _ in clone.named_buffers()] == []
    assert set(clone.state_dict()) == set(_mlp().state_dict())
    assert "Pruner(step=0" in repr(Pruner(_mlp(), 0.1))


def test_taylor_pruner_accumulates_from_training():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = Pruner(model, ConstantSparsity(0.5, begin_step=3, frequency=100), method="taylor")
    with pytest.raises(ValueError, match="begin_step"):
        Pruner(_mlp(), ConstantSparsity(0.5), method="taylor")
    _train(model, opt, pruner, _batches(4))
    assert pruner.current_sparsity == 0.5 and pruner.criterion.batches == 1  # reset after the update at step 3
    assert all(int((~m).sum()) == m.numel() // 2 for m in pruner.masks.values())


_DDP_TRAIN = '''
    def train(rank, out):
        for sync in (True, False):
            train_one(rank, out, sync)

    def train_one(rank, out, sync):
        import os
        import torch
        from torch import nn
        from sparsekit.prune import Pruner, PolynomialDecay
        torch.manual_seed(rank)  # different init per rank: DDP broadcasts rank 0's weights
        model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 2))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        pruner = Pruner(ddp, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2), optimizer=opt,
                        sync_distributed=sync)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(12):
            x, y = torch.randn(8, 10, generator=gen), torch.randn(8, 2, generator=gen)
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
            pruner.step()
        torch.save({"masks": pruner.masks, "state": model.state_dict()}, os.path.join(out, f"rank{rank}_{int(sync)}.pt"))
'''


def test_ddp_gloo_two_processes_identical_masks(tmp_path, run_gloo_script):
    """Two ranks, different init and data; with and without the mask broadcast."""
    proc = run_gloo_script(_DDP_TRAIN, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sync in (0, 1):
        _check_ranks(torch.load(tmp_path / f"rank0_{sync}.pt"), torch.load(tmp_path / f"rank1_{sync}.pt"))


def _check_ranks(r0, r1):
    assert sorted(r0["masks"]) == ["0.weight", "2.weight"]
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k])
        assert int((~r0["masks"][k]).sum()) == round(0.8 * r0["masks"][k].numel())
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])
    assert torch.all(r0["state"]["0.weight"][~r0["masks"]["0.weight"]] == 0)


def test_weights_read_by_a_parent_module_are_enforced():
    """MultiheadAttention reads out_proj.weight without calling out_proj: the model-level hook covers it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    model.attn = nn.MultiheadAttention(8, 2, batch_first=True)
    model.forward = lambda x: model.attn(model[0](x), x, x, need_weights=False)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8)
    for _ in range(2):  # dense momentum first
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    masks = prune(model, 0.5)
    assert "attn.out_proj.weight" in masks
    seen = {}
    model.attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("w", m.out_proj.weight.detach().clone()))
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()  # stale momentum moves pruned out_proj weights ...
    assert torch.any(model.attn.out_proj.weight[~masks["attn.out_proj.weight"]] != 0)
    model(x)  # ... and the next forward of the model zeroes them before attention reads them
    assert torch.all(seen["w"][~masks["attn.out_proj.weight"]] == 0)
    make_permanent(model)
    assert not any(len(m._forward_pre_hooks) > (1 if m is model.attn else 0) for m in model.modules())

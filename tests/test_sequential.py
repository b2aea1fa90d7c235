"""SparseSequential: consecutive sparse linear layers in one C++ call, bitwise equal to
calling the layers one by one, with every fallback (hooks, autograd, tracing) intact."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import _core
from sparsekit.nn import SparseLinear, SparseSequential


def _mlp(gen, widths=(12, 40, 33, 5), density=0.3, bias=True) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) * (torch.rand(b, a, generator=gen) < density))
            if bias:
                lin.bias.copy_(torch.randn(b, generator=gen))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU() if i % 2 == 0 else nn.GELU())
    return nn.Sequential(*layers).eval()


def _one_by_one(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for m in seq:
        x = m(x)
    return x


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("fmt", ["csr", (4, 1), (1, 4)])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3), (), (0,), (2, 0)])
def test_fused_equals_layer_by_layer(gen, simd, threads, fmt, shape):
    dense = _mlp(gen)
    model = sparsekit.convert(dense, format=fmt)
    assert type(model) is SparseSequential and model.sparsekit_summary.fused_sequentials == [""]
    x = torch.randn(*shape, 12, generator=gen)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            got = model(x)
            assert torch.equal(got, _one_by_one(model, x))
            torch.testing.assert_close(got, dense(x), rtol=1e-5, atol=1e-5)
        runs = [s for s in model.__dict__["_sk_plan"][1] if type(s).__name__ == "_Run"]
        assert len(runs) == 1 and len(runs[0].chain) == 3  # the fused path ran
        assert torch.equal(model(x), got)  # grad mode on, eval, x needs no grad: fused too
        # Non-contiguous and negative-bit inputs: the same values.
        xt = torch.randn(12, *shape, generator=gen).movedim(0, -1)
        with torch.no_grad():
            assert torch.equal(model(xt), _one_by_one(model, xt.contiguous()))
            neg = torch._neg_view(x)
            assert neg.is_neg() and torch.equal(model(neg), _one_by_one(model, -x))
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("batch", [33, 4200])  # 4200 x 512 floats: past the kept-buffer size
def test_large_batch_and_two_threads_bitwise(gen, batch):
    model = sparsekit.convert(_mlp(gen, widths=(30, 512, 256, 64), density=0.2), format="csr")
    x = torch.randn(batch, 30, generator=gen)
    outs = []
    n = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            with torch.no_grad():
                outs.append(model(x))
                assert torch.equal(outs[-1], _one_by_one(model, x))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_which_containers_fuse(gen):
    inner = _mlp(gen, widths=(6, 8, 4))
    model = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.Flatten(), inner), nn.Sequential(nn.Linear(4, 3)))
    out = sparsekit.convert(model, format="csr")
    # The root holds one sparse layer, then containers: no stretch of two. The lone
    # Linear(4, 3) has nothing to fuse with; the inner MLP fuses.
    assert type(out) is nn.Sequential and type(out[2]) is nn.Sequential
    assert type(out[1][1]) is SparseSequential
    assert out.sparsekit_summary.fused_sequentials == ["1.1"]
    assert "'1.1'" in str(out.sparsekit_summary)
    assert out.sparsekit_summary.to_dict()["fused_sequentials"] == ["1.1"]
    x = torch.randn(3, 6, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    # fuse=False: no activation fusion and no SparseSequential.
    plain = sparsekit.convert(model, format="csr", fuse=False)
    assert not any(type(m) is SparseSequential for m in plain.modules())
    assert plain.sparsekit_summary.fused_sequentials == []
    # Names and state dict keys do not change.
    assert list(out.state_dict()) == list(sparsekit.convert(model, format="csr", fuse=True).state_dict())


def test_widths_that_do_not_chain_break_the_stretch(gen):
    a = SparseLinear.from_dense(nn.Linear(4, 6))
    b = SparseLinear.from_dense(nn.Linear(5, 3))  # takes 5, gets 6: the layer's own error
    c = SparseLinear.from_dense(nn.Linear(3, 2))
    model = SparseSequential(a, b, c)
    with pytest.raises(ValueError, match="in_features = 5"):
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="in_features = 4"):  # the first layer's message
        model(torch.randn(2, 7))
    ok = SparseSequential(b, c)
    x = torch.randn(2, 5, generator=gen)
    assert torch.equal(ok(x), c(b(x)))


def test_hooks_are_honoured(gen):
    model = sparsekit.convert(_mlp(gen), format="csr")
    x = torch.randn(2, 12, generator=gen)
    ref = model(x)
    seen = []
    h = model[2].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    got = model(x)
    assert len(seen) == 1 and torch.equal(got, ref)
    torch.testing.assert_close(seen[0], model[2](model[1](model[0](x))), rtol=0, atol=0)
    h.remove()
    p = model[0].register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    assert torch.equal(model(x), _one_by_one(model, x)) and not torch.equal(model(x), ref)
    p.remove()
    assert torch.equal(model(x), ref)
    calls = []
    g = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        assert torch.equal(model(x), ref)
    finally:
        g.remove()
    assert calls.count("SparseLinear") == 3 and calls.count("Identity") == 2


def test_replaced_children_and_reloaded_weights_are_seen(gen):
    dense = _mlp(gen)
    model = sparsekit.convert(dense, format="csr")
    x = torch.randn(4, 12, generator=gen)
    before = model(x)
    other = sparsekit.convert(_mlp(torch.Generator().manual_seed(1)), format="csr")
    model[2] = other[2]
    assert torch.equal(model(x), _one_by_one(model, x)) and not torch.equal(model(x), before)
    model.load_state_dict(sparsekit.convert(dense, format="csr").state_dict())
    assert torch.equal(model(x), before)
    model[1] = nn.ReLU()  # not fusable any more: the stretch splits
    assert torch.equal(model(x), _one_by_one(model, x))


def test_autograd_and_training_fall_back_to_the_layers(gen):
    model = sparsekit.convert(_mlp(gen), format="csr")
    x = torch.randn(2, 12, generator=gen, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference"):
        model(x)
    model.train()
    with pytest.raises(RuntimeError, match="inference"):
        model(torch.randn(2, 12))
    with torch.no_grad():
        assert torch.equal(model(x), _one_by_one(model, x))


def test_bad_input_gets_the_layers_errors(gen):
    model = sparsekit.convert(_mlp(gen), format="csr")
    with pytest.raises(TypeError, match="float32"):
        model(torch.randn(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_features = 12"):
        model(torch.randn(2, 11))
    with pytest.raises(ValueError, match="in_features = 12"):
        model(torch.tensor(1.0))


def test_copy_pickle_save_load(gen, tmp_path):
    dense = _mlp(gen)
    model = sparsekit.convert(dense, format="csr")
    x = torch.randn(3, 12, generator=gen)
    ref = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone) is SparseSequential and torch.equal(clone(x), ref)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), ref)
    path = tmp_path / "m.safetensors"
    sparsekit.save(model, path)
    loaded = sparsekit.load(path, _mlp(torch.Generator().manual_seed(5)))
    assert type(loaded) is SparseSequential and torch.equal(loaded(x), ref)


def test_torch_compile_and_export(gen):
    model = sparsekit.convert(_mlp(gen), format="csr")
    x = torch.randn(2, 12, generator=gen)
    ref = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), ref)
    ep = torch.export.export(model, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("sparsekit.sparse_linear.default") == 3
    with torch.no_grad():
        assert torch.equal(ep.module()(x), ref)


def test_chain_checks_its_layers():
    a = SparseLinear.from_dense(nn.Linear(4, 6))._kernel()
    b = SparseLinear.from_dense(nn.Linear(5, 3))._kernel()
    with pytest.raises(ValueError, match="empty"):
        _core.Chain([])
    with pytest.raises(ValueError, match="takes 5 inputs but the layer before it gives 6"):
        _core.Chain([a, b])
    with pytest.raises(TypeError, match="Weight"):
        _core.Chain([a, "b"])
    chain = _core.Chain([a])
    assert (chain.cols, chain.rows, len(chain)) == (4, 6, 1)
    with pytest.raises(ValueError, match="non-negative"):
        chain.linear_raw(0, 0, -1, 1)



def test_many_python_threads_share_one_model(gen):
    import threading

    model = sparsekit.convert(_mlp(gen, widths=(64, 256, 128, 16), density=0.2), format="csr")
    xs = [torch.randn(b, 64, generator=gen) for b in (1, 3, 40)]
    with torch.no_grad():
        refs = [_one_by_one(model, x) for x in xs]
    model.__dict__.pop("_sk_plan", None)  # every thread races to build the plan and chain
    errors, start = [], threading.Barrier(8)

    def work():
        try:
            start.wait()
            with torch.inference_mode():
                for i in range(60):
                    k = i % len(xs)
                    if not torch.equal(model(xs[k]), refs[k]):
                        errors.append(f"mismatch at batch {xs[k].shape[0]}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

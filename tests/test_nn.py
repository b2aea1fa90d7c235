"""SparseLinear / SparseConv2d / SparseConv1d against their masked dense twins."""

from __future__ import annotations

import copy
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils._python_dispatch import TorchDispatchMode

import sparsekit
from sparsekit.nn import SparseConv1d, SparseConv2d, SparseLinear, effective_weight

EPS32 = float(np.finfo(np.float32).eps)


def sparse_weight(shape, density, gen, block=(1, 1)):
    """Random float32 weight where whole (r, c) blocks are zero with probability 1 - density."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    r, c = block
    keep = torch.rand(-(-rows // r), -(-cols // c), generator=gen) < density
    mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
    w = torch.randn(rows, cols, generator=gen) * mask
    return w.reshape(shape)


def fp32_bound(absx_absw: torch.Tensor, terms: int) -> torch.Tensor:
    """Worst-case float32 rounding of a `terms`-long dot product (+bias), with slack for gelu."""
    return 2.0 * (terms + 2) * EPS32 * absx_absw + 1e-6


def check_linear(y, x, w, b=None, activation=None):
    """y must match activation(x @ w.T + b) computed in float64, within float32 accumulation error."""
    x64, w64 = x.double(), w.double()
    ref = x64 @ w64.T
    mag = x64.abs() @ w64.abs().T
    if b is not None:
        ref = ref + b.double()
        mag = mag + b.double().abs()
    if activation == "relu":
        ref = torch.relu(ref)
    elif activation == "gelu":
        ref = F.gelu(ref)
    terms = int((w != 0).sum(dim=1).max()) if w.numel() else 0
    bound = fp32_bound(mag, terms)
    assert y.shape == ref.shape and y.dtype == torch.float32
    err = (y.double() - ref).abs()
    assert bool((err <= bound).all()), f"max error {float(err.max())} exceeds the float32 bound"


def check_conv(y, x, conv: nn.Module, activation=None):
    """y must match the float64 dense convolution within float32 accumulation error."""
    w64 = effective_weight(conv).double()
    b64 = None if conv.bias is None else conv.bias.detach().double()
    dense64 = copy.deepcopy(conv).double()
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own warning about its dense 'same' padding with even kernels (the reference)
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        dense64.weight.copy_(w64)
        ref = dense64(x.double())
        dense64.weight.copy_(w64.abs())
        if b64 is not None:
            dense64.bias.copy_(b64.abs())
        mag = dense64(x.double().abs())
    if activation == "relu":
        ref = torch.relu(ref)
    terms = int((w64.reshape(w64.shape[0], -1) != 0).sum(dim=1).max())
    err = (y.double() - ref).abs()
    assert y.shape == ref.shape
    assert bool((err <= fp32_bound(mag, terms)).all()), f"max error {float(err.max())}"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4), (2, 2), (8, 1)])
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3)])
def test_linear_matches_dense(gen, block, lead):
    w = sparse_weight((37, 50), 0.2, gen, block)
    b = torch.randn(37, generator=gen)
    layer = nn.Linear(50, 37)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    sparse = SparseLinear.from_dense(layer, block=block)
    x = torch.randn(lead + (50,), generator=gen)
    with torch.no_grad():
        y = sparse(x)
    check_linear(y, x, w, b)
    torch.testing.assert_close(y, layer(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("index_dtype", ["uint16", "int32"])
def test_linear_activation_bias_index(gen, simd, threads, activation, index_dtype):
    w = sparse_weight((64, 96), 0.1, gen)
    sparse = SparseLinear(sparsekit.SparseMatrix.from_dense(w, index_dtype=index_dtype), None, activation)
    assert sparse.index_dtype == index_dtype and sparse.bias is None
    x = torch.randn(9, 96, generator=gen)
    sparsekit.set_num_threads(threads)
    try:
        with torch.inference_mode():
            y = sparse(x)
    finally:
        sparsekit.set_num_threads(None)
    check_linear(y, x, w, None, activation)


def test_linear_no_copy_on_contiguous_input(gen):
    sparse = SparseLinear.from_dense(nn.Linear(32, 16))
    x = torch.randn(4, 32, generator=gen)
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        sparse(x)
    assert not [op for op in seen if "copy" in op or "clone" in op or "contiguous" in op], seen
    # Non-contiguous input is accepted (copied once) and gives the same numbers.
    xt = torch.randn(32, 4, generator=gen).T
    with torch.no_grad():
        torch.testing.assert_close(sparse(xt), sparse(xt.contiguous()), rtol=0, atol=0)


def test_views_with_a_negative_bit_are_read_as_their_values(gen):
    # torch._neg_view shares memory with a lazily negated bit set: the raw fast path
    # reads memory, so it must resolve the bit first (a silent sign error otherwise).
    layer = nn.Linear(24, 10)
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(3, 24, generator=gen)
    xn = torch._neg_view(x)
    assert xn.is_neg()
    with torch.no_grad():
        torch.testing.assert_close(sparse(xn), sparse(-x), rtol=0, atol=0)
        torch.testing.assert_close(sparsekit.linear(xn, sparse.sparse_weight),
                                   sparsekit.linear(-x, sparse.sparse_weight), rtol=0, atol=0)
    conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3))
    xi = torch.randn(2, 3, 6, 6, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(conv(torch._neg_view(xi)), conv(-xi), rtol=0, atol=0)


def test_changing_activation_after_construction_is_honoured(gen):
    w = sparse_weight((16, 20), 0.3, gen)
    sparse = SparseLinear(sparsekit.SparseMatrix.from_dense(w))
    x = torch.randn(5, 20, generator=gen)
    with torch.no_grad():
        plain = sparse(x)
        sparse.activation, sparse._act = "relu", 1  # what _set_weight does
        torch.testing.assert_close(sparse(x), torch.relu(plain), rtol=0, atol=0)


def test_linear_bad_input(gen):
    sparse = SparseLinear.from_dense(nn.Linear(8, 4))
    with torch.no_grad():
        with pytest.raises(TypeError, match="float32"):
            sparse(torch.randn(2, 8, dtype=torch.float64))
        with pytest.raises(TypeError, match="torch.Tensor"):
            sparse(np.zeros((2, 8), np.float32))
        with pytest.raises(ValueError, match="in_features = 8"):
            sparse(torch.randn(2, 7))
        with pytest.raises(ValueError, match="CPU"):
            sparse(torch.empty(2, 8, device="meta"))
    with pytest.raises(TypeError, match="weight must be a sparsekit.SparseMatrix"):
        SparseLinear(torch.randn(4, 8))
    with pytest.raises(ValueError, match="activation"):
        SparseLinear(sparsekit.SparseMatrix.from_dense(torch.randn(4, 8)), activation="tanh")
    with pytest.raises(ValueError, match="bias"):
        SparseLinear(sparsekit.SparseMatrix.from_dense(torch.randn(4, 8)), bias=torch.zeros(5))
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 1))


def test_training_is_refused_and_inference_modes_work(gen):
    sparse = SparseLinear.from_dense(nn.Linear(8, 4))
    x = torch.randn(3, 8, generator=gen)
    ref = sparse(x)  # eval mode, grad enabled, input without grad: fine
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), ref, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(x.clone().requires_grad_())
    sparse.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(x)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), ref, rtol=0, atol=0)


def test_dtype_and_device_moves_are_refused():
    sparse = SparseLinear.from_dense(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="float32 weights only"):
        sparse.double()
    with pytest.raises(TypeError, match="float32 weights only"):
        nn.Sequential(sparse).half()
    with pytest.raises(ValueError, match="CPU only"):
        sparse.to("meta")
    assert sparse.float() is sparse and sparse.to("cpu") is sparse


def test_share_memory_keeps_results(gen):
    w = sparse_weight((32, 48), 0.2, gen)
    layer = SparseLinear(sparsekit.SparseMatrix.from_dense(w), torch.randn(32, generator=gen))
    x = torch.randn(4, 48, generator=gen)
    with torch.no_grad():
        before = layer(x)  # fills the cache of numpy views
        layer.share_memory()  # swaps the buffers' storage in place
        assert layer.weight_values.is_shared()
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


def test_repr_like_dense_twins(gen):
    w = torch.zeros(8, 20)
    w.view(-1)[::8] = 1.0  # 20 of 160
    lin = SparseLinear(sparsekit.SparseMatrix.from_dense(w), torch.zeros(8), "relu")
    assert repr(lin) == ("SparseLinear(in_features=20, out_features=8, bias=True, block=(1, 1), "
                         "density=0.125, activation='relu')")
    conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False))
    assert repr(conv) == ("SparseConv2d(3, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False, "
                          "block=(1, 1), density=1.000)")
    assert repr(SparseConv1d.from_dense(nn.Conv1d(2, 3, 5))).startswith("SparseConv1d(2, 3, kernel_size=(5,)")


def test_thread_safe_forward(gen):
    w = sparse_weight((128, 128), 0.1, gen)
    sparse = SparseLinear(sparsekit.SparseMatrix.from_dense(w), torch.randn(128, generator=gen), "relu")
    xs = [torch.randn(3, 128, generator=gen) for _ in range(8)]
    with torch.no_grad():
        expected = [sparse(x) for x in xs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(30):
                    y = sparse(xs[i])
                    if not torch.equal(y, expected[i]):
                        errors.append(i)
            results[i] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8


def test_deepcopy_and_state_dict_round_trip(gen):
    w = sparse_weight((16, 24), 0.2, gen)
    a = SparseLinear(sparsekit.SparseMatrix.from_dense(w), torch.randn(16, generator=gen))
    x = torch.randn(5, 24, generator=gen)
    b = copy.deepcopy(a)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    # Loading a state dict with a different number of nonzeros rebuilds the buffers.
    other = SparseLinear(sparsekit.SparseMatrix.from_dense(sparse_weight((16, 24), 0.7, gen)), torch.zeros(16))
    other.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), a(x), rtol=0, atol=0)
    assert other.nnz == a.nnz
    bad = {k: v.clone() for k, v in a.state_dict().items()}
    bad["weight_indices"][0] = 60000  # out of range
    with pytest.raises(RuntimeError, match="indices must lie in"):
        other.load_state_dict(bad)


def test_properties_and_to_dense(gen):
    w = sparse_weight((16, 24), 0.25, gen, block=(4, 1))
    layer = nn.Linear(24, 16)
    with torch.no_grad():
        layer.weight.copy_(w)
    sparse = SparseLinear.from_dense(layer, block=(4, 1))
    assert sparse.in_features == 24 and sparse.out_features == 16 and sparse.block == (4, 1)
    assert sparse.nnz == int((w.reshape(4, 4, 24) != 0).any(1).sum()) * 4
    assert sparse.nbytes < w.numel() * 4
    dense = sparse.to_dense()
    torch.testing.assert_close(dense.weight, w, rtol=0, atol=0)
    torch.testing.assert_close(dense.bias, layer.bias, rtol=0, atol=0)


def test_torch_prune_effective_weight(gen):
    layer = nn.Linear(30, 20)
    torch_prune.l1_unstructured(layer, "weight", amount=0.8)
    sparse = SparseLinear.from_dense(layer)
    assert abs(sparse.density - 0.2) < 0.01
    x = torch.randn(4, 30, generator=gen)
    with torch.no_grad():
        check_linear(sparse(x), x, layer.weight_orig * layer.weight_mask, layer.bias)


# --------------------------------------------------------------------------------- conv
CONV2D_CASES = [
    dict(kernel_size=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=2, padding_mode="circular"),
    dict(kernel_size=3, padding="same", padding_mode="replicate"),
]


@pytest.mark.parametrize("kw", CONV2D_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("block", [(1, 1), (4, 1)])
def test_conv2d_matches_dense(gen, kw, block):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, **kw)
    with torch.no_grad():
        conv.weight.copy_(sparse_weight(conv.weight.shape, 0.3, gen, block))
    sparse = SparseConv2d.from_dense(conv, block=block)
    x = torch.randn(3, 6, 11, 9, generator=gen)
    with torch.no_grad():
        check_conv(sparse(x), x, conv)
        check_conv(sparse(x[1]), x[1], conv)  # unbatched (C, H, W)
        xc = x.to(memory_format=torch.channels_last)  # non-contiguous NCHW view
        check_conv(sparse(xc), xc, conv)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_conv2d_bitwise_identical_across_threads(gen, batch):
    # Batches at least as large as the thread count run whole samples per thread; smaller
    # ones thread each sample's rows. Either way every sample's result is the same bits.
    conv = nn.Conv2d(8, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(sparse_weight(conv.weight.shape, 0.3, gen, (4, 1)))
    sparse = SparseConv2d.from_dense(conv, block=(4, 1), activation="relu")
    x = torch.randn(batch, 8, 9, 9, generator=gen)
    results = []
    try:
        for threads in (1, 2, 3):
            sparsekit.set_num_threads(threads)
            with torch.no_grad():
                results.append(sparse(x))
    finally:
        sparsekit.set_num_threads(None)
    with torch.no_grad():
        check_conv(results[0], x, conv, "relu")
        singles = torch.cat([sparse(x[i:i + 1]) for i in range(batch)])
    for r in results[1:] + [singles]:
        assert torch.equal(r, results[0])


def test_conv2d_fused_relu_and_errors(gen):
    conv = nn.Conv2d(4, 5, 3, padding=1)
    sparse = SparseConv2d.from_dense(conv, activation="relu")
    x = torch.randn(2, 4, 7, 7, generator=gen)
    with torch.no_grad():
        check_conv(sparse(x), x, conv, activation="relu")
        with pytest.raises(ValueError, match="in_channels = 4"):
            sparse(torch.randn(2, 3, 7, 7))
        with pytest.raises(ValueError, match="too small"):
            SparseConv2d.from_dense(nn.Conv2d(4, 5, 5))(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="groups=1"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d(sparsekit.SparseMatrix.from_dense(torch.ones(5, 36)), 4, 5, 3, padding_mode="bad")
    with pytest.raises(ValueError, match="shape"):
        SparseConv2d(sparsekit.SparseMatrix.from_dense(torch.ones(5, 35)), 4, 5, 3)
    with warnings.catch_warnings():  # torch's own "zero-element tensor" init warning
        warnings.simplefilter("ignore", UserWarning)
        empty = nn.Conv2d(3, 0, 3)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):  # as torch refuses it
        SparseConv2d.from_dense(empty)


def test_conv1d_matches_dense(gen):
    for kw in (dict(kernel_size=1), dict(kernel_size=3, padding=2, dilation=2, stride=2),
               dict(kernel_size=4, padding="same"), dict(kernel_size=3, padding=1, padding_mode="reflect")):
        conv = nn.Conv1d(5, 7, **kw)
        with torch.no_grad():
            conv.weight.copy_(sparse_weight(conv.weight.shape, 0.3, gen))
        sparse = SparseConv1d.from_dense(conv)
        x = torch.randn(4, 5, 19, generator=gen)
        with torch.no_grad():
            check_conv(sparse(x), x, conv)
            check_conv(sparse(x[0]), x[0], conv)


def test_conv1x1_lowering_is_a_view(gen):
    sparse = SparseConv2d.from_dense(nn.Conv2d(6, 4, 1))
    x = torch.randn(2, 6, 5, 5, generator=gen)
    cols, ho, wo = sparse._lowered(x)
    assert cols.data_ptr() == x.data_ptr() and (ho, wo) == (5, 5)


# ------------------------------------------------------------------ torch.compile / export
def _small_model(gen):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    with torch.no_grad():
        for m in (model[0], model[3]):
            m.weight.mul_(torch.rand(m.weight.shape, generator=gen) > 0.7)
    from sparsekit.convert import convert
    return model.eval(), convert(model, format="csr")


def test_custom_ops_opcheck(gen):
    layer = SparseLinear(sparsekit.SparseMatrix.from_dense(sparse_weight((6, 10), 0.4, gen)),
                         torch.randn(6, generator=gen), "relu")
    args = (torch.randn(3, 10, generator=gen), layer.weight_indptr, layer.weight_indices, layer.weight_values,
            layer.bias, 6, 1)
    torch.library.opcheck(torch.ops.sparsekit.sparse_linear.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    conv = SparseConv2d.from_dense(nn.Conv2d(2, 6, 1))
    margs = (torch.randn(2, 2, 7, generator=gen), conv.weight_indptr, conv.weight_indices, conv.weight_values,
             conv.bias, 6, 0)
    torch.library.opcheck(torch.ops.sparsekit.sparse_matmul.default, margs,
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(TypeError, match="indptr"):
        torch.ops.sparsekit.sparse_linear(args[0], layer.weight_indptr.int(), *args[2:])


def test_torch_compile(gen):
    dense, model = _small_model(gen)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(compiled(x), dense(x), rtol=1e-5, atol=1e-5)


def test_torch_export(gen):
    dense, model = _small_model(gen)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "sparsekit.sparse_matmul.default" in targets and "sparsekit.sparse_linear.default" in targets
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda: SparseLinear.from_dense(nn.Linear(40, 6)),
    lambda: SparseConv2d.from_dense(nn.Conv2d(3, 4, 3)),
    lambda: SparseConv1d.from_dense(nn.Conv1d(3, 4, 3)),
], ids=["linear", "conv2d", "conv1d"])
def test_plain_pickle_keeps_uint16_indices(gen, make):
    # torch 2.13 cannot unpickle a uint16 tensor with plain pickle; the layers carry int32.
    layer = make()
    assert layer.weight_indices.dtype == torch.uint16
    x = torch.randn(2, 40, generator=gen) if isinstance(layer, SparseLinear) else \
        torch.randn((2, 3, 7, 7) if isinstance(layer, SparseConv2d) else (2, 3, 9), generator=gen)
    ref = layer(x)
    clone = pickle.loads(pickle.dumps(layer))
    assert clone.weight_indices.dtype == torch.uint16 and layer.weight_indices.dtype == torch.uint16
    assert torch.equal(clone(x), ref)
    assert {k: v.dtype for k, v in clone.state_dict().items()} == {k: v.dtype for k, v in layer.state_dict().items()}

"""sparsekit.save / sparsekit.load: round trips, size, and untrusted (tampered, truncated) files."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sparsekit.convert import convert
from sparsekit.io import load, save
from sparsekit.nn import SparseConv2d, SparseLinear


def prune_(model: nn.Module, density: float, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) < density)
    return model


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 5),
    ).eval()


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def read_raw(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw(path, header, body):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)


@pytest.fixture
def saved(tmp_path, gen):
    model = prune_(cnn(), 0.2, gen)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1, generator=gen)
        model[1].running_var.uniform_(0.5, 2, generator=gen)
    sparse = convert(model, format="csr")
    path = tmp_path / "model.safetensors"
    save(sparse, path)
    return path, model, sparse


def test_round_trip_into_dense_and_converted_models(saved, gen):
    path, dense, sparse = saved
    x = torch.randn(2, 3, 8, 8, generator=gen)
    fresh = cnn()
    with torch.no_grad():
        fresh[6].weight.zero_()  # prove the weights come from the file
    loaded = load(path, fresh)
    assert loaded is fresh and not loaded.training
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in sparse]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sparse(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), dense(x), rtol=1e-5, atol=1e-5)
    again = load(path, convert(cnn(), format="csr"))  # a converted twin works too
    with torch.no_grad():
        torch.testing.assert_close(again(x), sparse(x), rtol=0, atol=0)
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


def test_file_of_90pct_sparse_model_is_at_most_a_quarter(tmp_path, gen):
    model = prune_(mlp(), 0.1, gen)
    dense_path, sparse_path = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense_path)
    save(convert(model, format="csr"), sparse_path)
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    ratio = os.path.getsize(sparse_path) / os.path.getsize(dense_path)
    assert ratio <= 0.25, ratio
    assert os.path.getsize(sparse_path) <= 0.25 * os.path.getsize(tmp_path / "dense.pt")
    loaded = load(sparse_path, mlp())
    x = torch.randn(3, 256, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_partially_dense_and_tied_and_root_layer(tmp_path, gen):
    model = prune_(mlp(), 0.1, gen)
    out = convert(model, format={"2": "dense", "*": "csr"})
    p = tmp_path / "m.safetensors"
    save(out, p)
    loaded = load(p, mlp())
    assert isinstance(loaded[0], SparseLinear) and type(loaded[2]) is nn.Linear
    x = torch.randn(2, 256, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out(x), rtol=0, atol=0)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    tied = Tied()
    save(tied, tmp_path / "tied.safetensors")
    header, _ = read_raw(tmp_path / "tied.safetensors")
    assert "b.weight" not in header and json.loads(header["__metadata__"]["aliases"]) == {"b.weight": "a.weight"}
    back = load(tmp_path / "tied.safetensors", Tied())
    torch.testing.assert_close(back.b.weight, tied.a.weight, rtol=0, atol=0)

    root = convert(prune_(nn.Linear(10, 4), 0.5, gen), format="csr")
    save(root, tmp_path / "root.safetensors")
    back = load(tmp_path / "root.safetensors", nn.Linear(10, 4))
    assert isinstance(back, SparseLinear)
    x = torch.randn(2, 10, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(back(x), root(x), rtol=0, atol=0)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be"):
        save("not a model", tmp_path / "x")
    with pytest.raises(TypeError, match="path must be"):
        save(nn.Linear(2, 2), 3)
    with pytest.raises(TypeError, match="model must be"):
        load(tmp_path / "x", "m")
    with pytest.raises(FileNotFoundError, match="path"):
        load(tmp_path / "missing.safetensors", nn.Linear(2, 2))
    with pytest.raises(TypeError, match="strict"):
        load(tmp_path / "x", nn.Linear(2, 2), strict=1)


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1, -100])
def test_truncated_files(saved, tmp_path, keep):
    path, _, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(ValueError, match="truncated|not a sparsekit file|outside|covers"):
        load(bad, cnn())


def tamper(path, tmp_path, edit_header=None, edit_body=None):
    header, body = read_raw(path)
    if edit_header:
        edit_header(header)
    body = bytearray(body)
    if edit_body:
        edit_body(header, body)
    out = tmp_path / "tampered.safetensors"
    write_raw(out, header, bytes(body))
    return out


def _set(entry, key, value):
    def f(header):
        header[entry][key] = value
    return f


def _meta(key, transform):
    def f(header):
        header["__metadata__"][key] = transform(header["__metadata__"][key])
    return f


def _layers(edit):
    def transform(s):
        layers = json.loads(s)
        edit(layers)
        return json.dumps(layers)
    return _meta("layers", transform)


HEADER_TAMPERS = {
    "huge shape": (_set("6.weight_values", "shape", [10 ** 12, 1, 1]), "declares shape"),
    "offsets past end": (_set("6.weight_values", "data_offsets", [0, 10 ** 15]), "outside"),
    "bad dtype": (_set("6.weight_values", "dtype", "F99"), "unsupported dtype"),
    "negative dim": (_set("6.bias", "shape", [-1]), "invalid shape"),
    "wrong format": (_meta("format", lambda s: "other"), "not a sparsekit file"),
    "future version": (_meta("version", lambda s: "99"), "version"),
    "layers not json": (_meta("layers", lambda s: "{oops"), "not valid JSON"),
    "unknown type": (_layers(lambda d: d["6"].update(type="SparseLSTM")), "unknown layer type"),
    "bad block": (_layers(lambda d: d["6"].update(block=[3, 1])), "block"),
    "bad activation": (_layers(lambda d: d["6"].update(activation="tanh")), "activation"),
    "shape mismatch": (_layers(lambda d: d["6"].update(shape=[33, 128])), "the file holds"),
    "conv geometry": (_layers(lambda d: d["0"].update(stride=[2, 2])), "stride"),
    "missing tensor": (lambda h: h.pop("6.weight_indices") and None, "missing tensor|gap|covers"),
    "identity mismatch": (_meta("identities", lambda s: json.dumps(["5"])), "absorbed"),
    "alias to nothing": (_meta("aliases", lambda s: json.dumps({"x": "nope"})), "alias"),
}


@pytest.mark.parametrize("case", list(HEADER_TAMPERS))
def test_tampered_headers(saved, tmp_path, case):
    path, _, _ = saved
    edit, match = HEADER_TAMPERS[case]
    bad = tamper(path, tmp_path, edit_header=edit)
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load(bad, model)
    assert [type(m) for m in model] == [type(m) for m in cnn()]  # nothing replaced on failure
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _body_edit(name, fn):
    def f(header, body):
        b, e = header[name]["data_offsets"]
        dtype = {"I64": np.int64, "U16": np.uint16, "I32": np.int32, "F32": np.float32}[header[name]["dtype"]]
        arr = np.frombuffer(bytes(body[b:e]), dtype=dtype).copy()
        fn(arr)
        body[b:e] = arr.tobytes()
    return f


BODY_TAMPERS = {
    "index out of range": (_body_edit("6.weight_indices", lambda a: a.__setitem__(0, 60000)), "indices must lie"),
    "indptr decreasing": (_body_edit("6.weight_indptr", lambda a: a.__setitem__(1, a[-1] + 5)), "indptr"),
    "indptr start": (_body_edit("0.weight_indptr", lambda a: a.__setitem__(0, 1)), "indptr"),
    "duplicate column": (_body_edit("6.weight_indices", lambda a: a.__setitem__(1, a[0])), "duplicate|indices"),
}


@pytest.mark.parametrize("case", list(BODY_TAMPERS))
def test_tampered_arrays(saved, tmp_path, case):
    path, _, _ = saved
    edit, match = BODY_TAMPERS[case]
    bad = tamper(path, tmp_path, edit_body=edit)
    with pytest.raises(ValueError, match=match):
        load(bad, cnn())


def test_wrong_index_dtype_and_wrong_architecture(saved, tmp_path):
    path, _, _ = saved

    def widen(header):
        header["6.weight_indices"]["dtype"] = "I16"  # same byte size, wrong kind

    bad = tamper(path, tmp_path, edit_header=widen)
    with pytest.raises(ValueError, match="must have dtype U16 or I32"):
        load(bad, cnn())
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))
    with pytest.raises(ValueError, match="the file holds"):
        load(path, other)
    with pytest.raises(ValueError, match="does not have"):
        load(path, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)))


def test_not_a_sparsekit_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, plain)
    with pytest.raises(ValueError, match="not a sparsekit file"):
        load(plain, nn.Linear(2, 2))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(ValueError, match="unreadable header"):
        load(junk, nn.Linear(2, 2))
    giant = tmp_path / "giant.bin"
    giant.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
    with pytest.raises(ValueError, match="header claims"):
        load(giant, nn.Linear(2, 2))


def test_conv_round_trip_keeps_geometry(tmp_path, gen):
    model = prune_(nn.Sequential(nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2),
                                           padding_mode="reflect")), 0.3, gen).eval()
    out = convert(model, format=(2, 1))
    save(out, tmp_path / "c.safetensors")
    back = load(tmp_path / "c.safetensors", nn.Sequential(nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid",
                                                                    dilation=(1, 2), padding_mode="reflect")))
    assert isinstance(back[0], SparseConv2d) and back[0].block == (2, 1)
    x = torch.randn(2, 4, 9, 9, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(back(x), out(x), rtol=0, atol=0)
        torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-5)


def test_loaded_model_survives_its_file_being_rewritten(tmp_path):
    # safetensors' safe_open maps the file: tensors taken from it die with a SIGBUS
    # once the file is truncated in place. load() must copy everything out.
    import sparsekit

    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(12, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    path = tmp_path / "m.safetensors"
    sparsekit.save(sparsekit.convert(dense, format="csr"), path)
    loaded = sparsekit.load(path, torch.nn.Sequential(torch.nn.Linear(12, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)))
    with open(path, "wb") as f:  # truncate and rewrite in place (same inode)
        f.write(b"\0" * 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.ones(2, 12)), dense(torch.ones(2, 12)), rtol=1e-5, atol=1e-6)

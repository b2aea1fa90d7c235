"""Save and load converted models with safetensors (no pickle), validating everything on load.

File layout: one safetensors file holding the model's ``state_dict`` (sparse layers
contribute ``<layer>.weight_indptr`` int64, ``<layer>.weight_indices`` uint16/int32,
``<layer>.weight_values`` float32 ``(n_blocks, r, c)`` and ``<layer>.bias``), plus string
metadata: ``format="sparsekit"``, ``version``, ``layers`` (JSON: each sparse layer's type,
logical shape, block, activation and convolution geometry), ``identities`` (JSON list of
module names that are ``nn.Identity`` in the converted model: absorbed activations and
folded BatchNorms) and ``aliases`` (JSON: state-dict keys that share one stored tensor).

Loading treats the file as untrusted: the header is parsed and checked (sizes, dtypes,
offsets against the file size) before any tensor is read, so a tampered or truncated
file raises ``ValueError`` without a large allocation; every sparse layer is rebuilt
through :meth:`sparsekit.SparseMatrix.from_arrays`, which checks row pointers, index
ranges and duplicates.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from typing import Any, Dict, List, NamedTuple, Tuple, Union

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file
from torch import Tensor, nn

from sparsekit.formats import SparseMatrix
from sparsekit.nn import LAYER_TYPES, SparseModule, fuse_sequentials

__all__ = ["save", "load", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "sparsekit"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 64 << 20  # a header larger than this is refused outright

PathLike = Union[str, "os.PathLike[str]"]

_DTYPES = {  # safetensors dtype -> (torch dtype, item size)
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
if hasattr(torch, "uint16"):
    _DTYPES["U16"] = (torch.uint16, 2)

_SPARSE_KEYS = SparseModule.BUFFERS


def _check_path(path: Any, name: str = "path") -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


# ------------------------------------------------------------------------------------ save
def save(model: nn.Module, path: PathLike) -> None:
    """Write a (converted) model's weights to ``path`` as safetensors, without pickle.

    Sparse layers are stored as their compressed arrays (a 90%-sparse layer with uint16
    indices takes about 15% of its dense bytes), everything else as in ``state_dict()``.
    The file is written to a temporary name and renamed, so a crash leaves no half file.

    Example:
        >>> import os, tempfile, torch, sparsekit
        >>> model = sparsekit.convert(torch.nn.Sequential(torch.nn.Linear(8, 4)), format="csr")
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> sparsekit.save(model, path)
        >>> restored = sparsekit.load(path, torch.nn.Sequential(torch.nn.Linear(8, 4)))
        >>> type(restored[0]).__name__
        'SparseLinear'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = _check_path(path)
    layers = {name: m.file_meta() for name, m in model.named_modules() if isinstance(m, SparseModule)}
    identities = [name for name, m in model.named_modules() if type(m) is nn.Identity and name]
    tensors: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        if not isinstance(t, Tensor):
            raise TypeError(f"state_dict entry {key!r} is not a tensor ({type(t).__name__}); cannot save it")
        if t.dtype not in {d for d, _ in _DTYPES.values()}:
            raise TypeError(f"state_dict entry {key!r} has dtype {t.dtype}, which sparsekit.save does not store")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]  # tied weights: store once
            continue
        seen[ident] = key
        tensors[key] = t.contiguous()
    # safetensors refuses tensors that share memory: clone the rest that still do.
    ptrs: Dict[int, str] = {}
    for key in list(tensors):
        t = tensors[key]
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in ptrs:
            tensors[key] = t.clone()
        else:
            ptrs[ptr] = key
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "layers": json.dumps(layers),
                "identities": json.dumps(identities), "aliases": json.dumps(aliases)}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sparsekit-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------ load
def _read_file(path: str) -> bytes:
    """The whole file, read once. Tensors are then built from these bytes, never from a
    memory map of the file: a mapped file that is later truncated or rewritten in place
    would turn reads of the loaded model's tensors into SIGBUS crashes."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no such file {path!r}") from None


def _read_header(path: str, blob: bytes) -> Tuple[Dict[str, dict], Dict[str, str]]:
    """Parse and check a safetensors header against the file size before using any data."""
    size = len(blob)
    if size < 8:
        raise ValueError(f"{path!r} is not a sparsekit file: {size} bytes, truncated before the header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > size - 8:
        raise ValueError(f"{path!r} is truncated or corrupt: header claims {n} bytes, file has {size - 8}")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path!r}: header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    raw = blob[8:8 + n]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} is not a sparsekit file: unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path!r}: header must be a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path!r} is not a sparsekit file: missing or malformed __metadata__")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a sparsekit file (format={meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path!r}: unsupported sparsekit file version {meta.get('version')!r} "
                         f"(this sparsekit reads version {FORMAT_VERSION})")
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{path!r}: tensor {name!r} has a malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise ValueError(f"{path!r}: tensor {name!r} has unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ValueError(f"{path!r}: tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise ValueError(f"{path!r}: tensor {name!r} has data offsets {offsets!r} outside the "
                             f"{data_len}-byte data section (truncated or tampered file)")
        nbytes = math.prod(shape) * _DTYPES[dtype][1]
        if nbytes != offsets[1] - offsets[0]:
            raise ValueError(f"{path!r}: tensor {name!r} declares shape {shape} ({nbytes} bytes) but "
                             f"spans {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise ValueError(f"{path!r}: tensor {name!r} overlaps another or leaves a gap (tampered file)")
        end = stop
    if end != data_len:
        raise ValueError(f"{path!r}: data section is {data_len} bytes but tensors cover {end} (tampered file)")
    return header, meta


def _json_field(meta: Dict[str, str], key: str, kind: type, path: str):
    try:
        value = json.loads(meta.get(key, ""))
    except json.JSONDecodeError:
        raise ValueError(f"{path!r}: metadata {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path!r}: metadata {key!r} must be a JSON {kind.__name__}")
    return value


def _check_layer_meta(name: str, meta: Any, path: str) -> dict:
    """One layer's metadata from the file, checked by the layer class it names."""
    where = f"{path!r}: layer {name!r}"
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata must be an object")
    kind = meta.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"{where}: unknown layer type {kind!r}")
    return LAYER_TYPES[kind].check_file_meta(meta, where)


_EXPECTED_DTYPES = {"weight_indptr": ("I64",), "weight_values": ("F32",), "bias": ("F32",)}
_ABSORBED = (nn.Identity, nn.ReLU, nn.GELU, nn.BatchNorm1d, nn.BatchNorm2d)  # what an identity may replace


def _check_layer_tensors(path: str, name: str, lm: dict, header: Dict[str, dict]) -> None:
    """The header holds exactly the tensors layer ``name`` needs, with the right dtypes."""
    for key in _SPARSE_KEYS:
        full = f"{name}.{key}" if name else key
        if key == "bias" and not lm["bias"]:
            if full in header:
                raise ValueError(f"{path!r}: layer {name!r} has no bias but the file holds {full!r}")
            continue
        if full not in header:
            raise ValueError(f"{path!r}: layer {name!r} is missing tensor {full!r}")
        allowed = _EXPECTED_DTYPES.get(key, ("U16", "I32"))
        if header[full]["dtype"] not in allowed:
            raise ValueError(f"{path!r}: {full!r} must have dtype {' or '.join(allowed)}, "
                             f"got {header[full]['dtype']}")
        if key == "weight_values" and header[full]["shape"][1:] != list(lm["block"]):
            raise ValueError(f"{path!r}: {full!r} must be shaped (n_blocks, {lm['block'][0]}, "
                             f"{lm['block'][1]}), got {header[full]['shape']}")


class _Contents(NamedTuple):
    """A file's checked metadata: sparse layers by name, absorbed modules, tied tensors."""
    layers: Dict[str, dict]
    identities: List[str]
    aliases: Dict[str, str]


def _validate(path: str, header: Dict[str, dict], meta: Dict[str, str]) -> _Contents:
    """Check the metadata against itself and the header, before the model is looked at."""
    layers_raw = _json_field(meta, "layers", dict, path)
    identities = _json_field(meta, "identities", list, path)
    aliases = _json_field(meta, "aliases", dict, path)
    layers = {}
    for name, lm in layers_raw.items():
        layers[name] = _check_layer_meta(name, lm, path)
        _check_layer_tensors(path, name, layers[name], header)
    if not all(isinstance(n, str) for n in identities):
        raise ValueError(f"{path!r}: metadata 'identities' must list module names")
    for k, v in aliases.items():
        if not isinstance(v, str) or v not in header or k in header:
            raise ValueError(f"{path!r}: alias {k!r} -> {v!r} does not name a stored tensor")
    return _Contents(layers, identities, aliases)


def _submodule(path: str, model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{path!r} holds layer {name!r}, which the model does not have") from None


def _check_fits(path: str, model: nn.Module, contents: _Contents) -> None:
    """Every sparse layer and absorbed module of the file has a matching module in ``model``."""
    for name, lm in contents.layers.items():
        target = _submodule(path, model, name) if name else model
        LAYER_TYPES[lm["type"]].check_load_target(target, lm, f"model layer {name or '<root>'!r}")
    for name in contents.identities:
        target = _submodule(path, model, name)
        if not isinstance(target, _ABSORBED):
            raise ValueError(f"{path!r}: module {name!r} was absorbed into a sparse layer, but in this model "
                             f"it is a {type(target).__name__}")


def _sparse_keys(layers: Dict[str, dict]) -> set:
    return {(f"{n}.{k}" if n else k) for n in layers for k in _SPARSE_KEYS}


def _read_tensors(path: str, blob: bytes) -> Dict[str, Tensor]:
    try:
        return safetensors_load(blob)  # copies out of `blob`: nothing aliases the file
    except Exception as exc:  # noqa: BLE001 - the header was checked; anything left is corruption
        raise ValueError(f"{path!r}: unreadable tensor data ({exc})") from None


def _build_layers(path: str, layers: Dict[str, dict], tensors: Dict[str, Tensor]) -> Dict[str, SparseModule]:
    """Each sparse layer rebuilt from its arrays, every array validated by ``from_arrays``."""
    built: Dict[str, SparseModule] = {}
    for name, lm in layers.items():
        prefix = f"{name}." if name else ""
        try:
            m = SparseMatrix.from_arrays(lm["shape"], tensors[prefix + "weight_indptr"],
                                         tensors[prefix + "weight_indices"], tensors[prefix + "weight_values"],
                                         block=lm["block"], index_dtype=lm["index_dtype"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path!r}: layer {name!r} holds invalid sparse arrays: {exc}") from None
        bias = tensors[prefix + "bias"] if lm["bias"] else None
        if bias is not None and tuple(bias.shape) != (lm["shape"][0],):
            raise ValueError(f"{path!r}: {prefix}bias must have shape ({lm['shape'][0]},)")
        built[name] = LAYER_TYPES[lm["type"]].from_file_meta(lm, m, bias)
    return built


def _plain_tensors(path: str, header: Dict[str, dict], contents: _Contents,
                   tensors: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The state-dict entries outside the sparse layers, tied tensors expanded."""
    sparse_keys = _sparse_keys(contents.layers)
    rest = {k: tensors[k] for k in header if k not in sparse_keys}
    for k, v in contents.aliases.items():
        rest[k] = rest[v] if v in rest else None
        if rest[k] is None:
            raise ValueError(f"{path!r}: alias {k!r} points at a sparse-layer tensor")
    return rest


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = new


def _apply(path: str, model: nn.Module, contents: _Contents, built: Dict[str, SparseModule],
           rest: Dict[str, Tensor], strict: bool) -> nn.Module:
    """Swap the sparse layers and identities into ``model``, then load the other tensors."""
    if "" in built:
        return built[""].eval()
    for name, new in built.items():
        _set_submodule(model, name, new)
    for name in contents.identities:
        _set_submodule(model, name, nn.Identity())
    expected = model.state_dict()
    for k, v in rest.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"{path!r}: tensor {k!r} has shape {tuple(v.shape)}, the model expects "
                             f"{tuple(expected[k].shape)}")
    result = model.load_state_dict(rest, strict=False)
    if strict:
        sparse_keys = _sparse_keys(contents.layers)
        missing = [k for k in result.missing_keys if k not in sparse_keys]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            raise ValueError(f"{path!r} does not match the model: missing {missing[:10]}, "
                             f"unexpected {unexpected[:10]}")
    fuse_sequentials(model)  # as convert does: consecutive sparse linear layers in one call
    return model.eval()


def load(path: PathLike, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load a file written by :func:`save` into a model of the same architecture.

    ``model`` may be the original dense architecture (freshly built) or a converted
    one: the layers the file stores sparse are rebuilt as sparse layers in place, the
    activations/BatchNorms they absorbed become ``nn.Identity``, and every other
    tensor is loaded with ``load_state_dict``. The model is returned in eval mode (use
    the return value: a bare sparse layer cannot replace itself in place).

    Args:
        path: a file written by :func:`sparsekit.save`.
        model: the module to load into (modified in place).
        strict: raise if the file and the model disagree on non-sparse keys.

    Raises:
        ValueError: the file is truncated, tampered, not a sparsekit file, or does not
            fit the model (layer types, shapes, geometry).

    Example:
        >>> import os, tempfile, torch, sparsekit
        >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> sparsekit.save(sparsekit.convert(torch.nn.Linear(6, 3), format="csr"), path)
        >>> sparsekit.load(path, torch.nn.Linear(6, 3))
        SparseLinear(in_features=6, out_features=3, bias=True, block=(1, 1), density=1.000)
    """
    path = _check_path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    blob = _read_file(path)
    header, meta = _read_header(path, blob)
    contents = _validate(path, header, meta)
    _check_fits(path, model, contents)  # everything fits before the model changes
    tensors = _read_tensors(path, blob)
    del blob
    built = _build_layers(path, contents.layers, tensors)
    rest = _plain_tensors(path, header, contents, tensors)
    return _apply(path, model, contents, built, rest, strict)

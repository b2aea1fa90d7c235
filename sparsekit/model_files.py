"""Model files for the command line: check paths, load, prune-proof and save saved models.

``sparsekit prune`` and ``sparsekit convert`` read two kinds of file: a TorchScript
archive (``torch.jit.save``) or a safetensors ``state_dict`` together with a
*factory*, an importable ``package.module:function`` that builds the model the
weights belong to. Everything that can go wrong is raised as :class:`CLIError`
(the work failed: exit status 1) or :class:`UsageError` (a bad argument: exit
status 2), each with a one-line message naming the file.

Example:
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> save_file(torch.nn.Linear(4, 2).state_dict(), "linear.safetensors")
    >>> loaded = load_model("linear.safetensors", "torch.nn:Linear", {"in_features": 4, "out_features": 2})
    >>> loaded.kind, type(loaded.model).__name__
    ('safetensors', 'Linear')
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "CLIError", "UsageError", "one_line", "LoadedModel", "torchscript_api", "check_input", "check_output",
    "file_kind", "resolve_factory", "load_model", "save_model", "save_state_dict", "shadow_of_script",
    "copy_shadow_weights", "takes_text", "load_inputs",
]


class CLIError(Exception):
    """A failure reported as one line on stderr with exit status 1.

    Example:
        >>> CLIError("cannot load model.pt").exit_code
        1
    """

    exit_code = 1


class UsageError(CLIError):
    """A bad argument (missing file, malformed value): one line on stderr, exit status 2.

    Example:
        >>> UsageError("model.pt: no such file").exit_code
        2
    """

    exit_code = 2


def one_line(text: object) -> str:
    """The first non-blank line of ``str(text)``, stripped and cut to 400 characters.

    Example:
        >>> one_line("\\n  first line  \\nsecond line")
        'first line'
        >>> len(one_line("x" * 1000))
        400
    """
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 400 else line[:397] + "..."


@contextmanager
def torchscript_api() -> Iterator[None]:
    """Silence the deprecation warnings of ``torch.jit.*`` inside the block.

    torch >= 2.10 deprecates ``torch.jit``; TorchScript files are still what many users have.

    Example:
        >>> import torch
        >>> with torchscript_api():
        ...     script = torch.jit.script(torch.nn.Linear(2, 1))
        >>> script.original_name
        'Linear'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


@dataclass
class LoadedModel:
    """A model read from disk: ``kind`` is ``"torchscript"`` or ``"safetensors"``.

    Example:
        >>> LoadedModel("torchscript", None, "model.pt").kind
        'torchscript'
    """

    kind: str
    model: Any
    path: str


def check_input(path: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is a readable file.

    Example:
        >>> check_input("no-such-model.pt")
        Traceback (most recent call last):
        ...
        sparsekit.model_files.UsageError: no-such-model.pt: no such file
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a model file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied")


def check_output(path: str, source: str) -> None:
    """Raise :class:`UsageError` unless ``path`` can be written without overwriting ``source``.

    Example:
        >>> check_output("out.safetensors", "model.safetensors")
        >>> check_output("missing-dir/out.pt", "model.pt")
        Traceback (most recent call last):
        ...
        sparsekit.model_files.UsageError: missing-dir/out.pt: directory .../missing-dir does not exist
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a file name")
    if os.path.exists(path) and os.path.samefile(path, source):
        raise UsageError(f"{path}: output would overwrite the input; choose another -o")


def file_kind(path: str) -> str:
    """``"torchscript"`` for a zip archive, ``"safetensors"`` for a safetensors header, else :class:`CLIError`.

    Only the first bytes are read; whether the file loads is :func:`load_model`'s question.

    Example:
        >>> import torch
        >>> from safetensors.torch import save_file
        >>> save_file({"w": torch.zeros(2)}, "w.safetensors")
        >>> file_kind("w.safetensors")
        'safetensors'
        >>> from pathlib import Path
        >>> _ = Path("junk.bin").write_bytes(b"not a model")
        >>> file_kind("junk.bin")
        Traceback (most recent call last):
        ...
        sparsekit.model_files.CLIError: cannot load junk.bin: not a TorchScript archive or a safetensors file
    """
    if zipfile.is_zipfile(path):
        return "torchscript"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    raise CLIError(f"cannot load {path}: not a TorchScript archive or a safetensors file")


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (the attribute may be dotted, e.g. ``mod:Class.build``).

    The current directory is searched too, like ``python -m`` does.

    Example:
        >>> resolve_factory("math:sqrt")(16.0)
        4.0
        >>> resolve_factory("math.sqrt")
        Traceback (most recent call last):
        ...
        sparsekit.model_files.UsageError: --factory 'math.sqrt' must look like package.module:function
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--factory {spec!r} must look like package.module:function")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise CLIError(f"cannot import factory module {module_name!r}: {one_line(exc)}") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"factory {spec!r}: {getattr(obj, '__name__', obj)!s} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"factory {spec!r} is not callable")
    return obj


def load_model(path: str, factory: Optional[str], factory_kwargs: Optional[dict] = None) -> LoadedModel:
    """Load a TorchScript file, or a safetensors state_dict into ``factory(**factory_kwargs)``.

    A TorchScript file takes no factory; a safetensors file needs one, and its
    names and shapes must match the factory's model exactly. The model comes
    back in eval mode.

    Example:
        >>> import torch
        >>> from safetensors.torch import save_file
        >>> save_file(torch.nn.Linear(3, 2).state_dict(), "small.safetensors")
        >>> load_model("small.safetensors", "torch.nn:Linear", {"in_features": 3, "out_features": 2}).model
        Linear(in_features=3, out_features=2, bias=True)
        >>> load_model("small.safetensors", "torch.nn:Linear", {"in_features": 4, "out_features": 2})
        Traceback (most recent call last):
        ...
        sparsekit.model_files.CLIError: cannot load small.safetensors ...: weight has shape (2, 3) in the file, (2, 4) ...
    """
    check_input(path)
    if file_kind(path) == "torchscript":
        if factory is not None:
            raise UsageError(f"{path} is a TorchScript file; --factory applies to safetensors state_dicts only")
        return LoadedModel("torchscript", _load_torchscript(path), path)
    if factory is None:
        raise UsageError(f"{path} is a safetensors state_dict; pass --factory package.module:function "
                         "that builds the model it belongs to")
    model = _build(factory, factory_kwargs)
    _load_state_dict(model, path, factory)
    model.eval()
    return LoadedModel("safetensors", model, path)


def _load_torchscript(path: str) -> Any:
    import torch

    try:
        with torchscript_api():
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise CLIError(f"cannot load {path} as TorchScript: {one_line(exc)}") from exc


def _build(factory: str, factory_kwargs: Optional[dict]) -> Any:
    """``factory(**factory_kwargs)``, which must be an ``nn.Module``."""
    import torch

    build = resolve_factory(factory)
    try:
        model = build(**(factory_kwargs or {}))
    except Exception as exc:
        raise CLIError(f"factory {factory!r} failed: {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"factory {factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _load_state_dict(model: Any, path: str, factory: str) -> None:
    """Read ``path`` and load it into ``model``; names and shapes must match exactly."""
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except Exception as exc:
        raise CLIError(f"cannot read {path} as safetensors: {one_line(exc)}") from exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise CLIError(f"cannot load {path} into the model from {factory}: " + "; ".join(parts))
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CLIError(f"cannot load {path} into the model from {factory}: {k} has shape "
                           f"{tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise CLIError(f"cannot load {path} into the model from {factory}: {one_line(exc)}") from exc


def _names(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def save_state_dict(model: Any, path: str) -> None:
    """Write ``model.state_dict()`` to ``path`` as safetensors (contiguous copies of every tensor).

    Example:
        >>> import torch
        >>> from safetensors.torch import load_file
        >>> save_state_dict(torch.nn.Linear(2, 1), "linear.safetensors")
        >>> sorted(load_file("linear.safetensors"))
        ['bias', 'weight']
    """
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": "pt", "producer": "sparsekit prune"})


def save_model(loaded: LoadedModel, path: str) -> None:
    """Write ``loaded.model`` to ``path`` in the format it was read from; :class:`CLIError` if that fails.

    Example:
        >>> import torch
        >>> save_model(LoadedModel("safetensors", torch.nn.Linear(2, 1), "in.safetensors"), "out.safetensors")
        >>> file_kind("out.safetensors")
        'safetensors'
    """
    try:
        if loaded.kind == "torchscript":
            import torch

            with torchscript_api():
                torch.jit.save(loaded.model, path)
        else:
            save_state_dict(loaded.model, path)
    except Exception as exc:
        raise CLIError(f"cannot write {path}: {one_line(exc)}") from exc


_SCRIPT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def shadow_of_script(script: Any) -> Tuple[Any, List[Tuple[Any, Any]]]:
    """A plain nn.Module tree mirroring the prunable layers of a ScriptModule.

    The shadow layers share nothing with the script module: pruning runs on them
    (so every sparsekit criterion and granularity works unchanged) and
    :func:`copy_shadow_weights` copies the pruned weights back. Returns
    ``(shadow, [(script_layer, shadow_layer)])``.

    Example:
        >>> import torch
        >>> with torchscript_api():
        ...     script = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
        >>> shadow, pairs = shadow_of_script(script)
        >>> shadow
        Module(
          (0): Linear(in_features=4, out_features=3, bias=False)
        )
        >>> with torch.no_grad():
        ...     _ = getattr(shadow, "0").weight.zero_()
        >>> copy_shadow_weights(pairs)
        >>> int(script[0].weight.count_nonzero())
        0
    """
    import torch
    from torch import nn

    shadow = nn.Module()
    pairs = []
    for name, sub in script.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        if not name or kind not in _SCRIPT_TYPES:
            continue
        w = getattr(sub, "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        with torch.device("meta"):
            if kind == "Linear":
                layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
            else:
                conv = getattr(nn, kind)
                layer = conv(w.shape[1], w.shape[0], kernel_size=tuple(w.shape[2:]), bias=False)
        layer.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        parent = shadow
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, layer)
        pairs.append((sub, layer))
    return shadow, pairs


def copy_shadow_weights(pairs: Sequence[Tuple[Any, Any]]) -> None:
    """Copy each shadow layer's weight into its script layer (``pairs`` from :func:`shadow_of_script`).

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> copy_shadow_weights([(a, b)])
        >>> torch.equal(a.weight, b.weight)
        True
    """
    import torch

    with torch.no_grad():
        for script_layer, layer in pairs:
            script_layer.weight.copy_(layer.weight)


def takes_text(model: Any) -> bool:
    """Whether ``model`` tokenizes text itself (a sentence-transformers model: ``.preprocess`` / ``.tokenize``).

    Example:
        >>> import torch
        >>> takes_text(torch.nn.Linear(2, 2))
        False
    """
    return callable(getattr(model, "preprocess", None)) or callable(getattr(model, "tokenize", None))


def _read_sentences(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh]
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path} as text: {one_line(exc)}") from exc
    sentences = [ln for ln in lines if ln]
    if not sentences:
        raise UsageError(f"{path}: no sentences (one per line expected)")
    return sentences


def _split_rows(value: Any, batch_size: int, path: str) -> List[Any]:
    """A tensor, or a dict of tensors with one leading row count, cut into batches of ``batch_size`` rows."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            raise UsageError(f"{path}: a 0-d tensor is not a batch of inputs")
        return list(value.split(batch_size))
    rows = {int(v.shape[0]) for v in value.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(rows) != 1:
        raise UsageError(f"{path}: a dict of inputs needs tensors with one common first dimension (rows), "
                         f"got {sorted(rows)}")
    n = rows.pop()
    return [{k: (v[i:i + batch_size] if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
             for k, v in value.items()} for i in range(0, n, batch_size)]


def load_inputs(path: str, model: Any, batch_size: int = 16, option: str = "--data") -> List[Any]:
    """Model inputs from ``path``, as a list of batches by the calling rule of :func:`sparsekit.distill`.

    * ``.pt`` / ``.pth``: read with ``torch.load(weights_only=True)`` (no code runs). A tensor
      or a dict of tensors (a tokenizer's output) is cut into batches of ``batch_size`` rows;
      a list or tuple is taken as the batches themselves (tensors, tuples, dicts).
    * anything else: a text file, one sentence per line, tokenized by ``model``'s own
      tokenizer in batches of ``batch_size``; only a model that tokenizes
      (:func:`takes_text`, e.g. sentence-transformers) can take text - any other model is
      a :class:`UsageError` that says to pass a ``.pt`` file of input tensors instead.

    Example:
        >>> import torch
        >>> torch.save(torch.zeros(40, 3), "inputs.pt")
        >>> [tuple(b.shape) for b in load_inputs("inputs.pt", torch.nn.Linear(3, 1), batch_size=16)]
        [(16, 3), (16, 3), (8, 3)]
        >>> from pathlib import Path
        >>> _ = Path("sentences.txt").write_text("A first sentence.\\nA second one.\\n")
        >>> load_inputs("sentences.txt", torch.nn.Linear(3, 1))
        Traceback (most recent call last):
        ...
        sparsekit.model_files.UsageError: --data sentences.txt is text, but the model (Linear) cannot take text: ...
    """
    check_input(path)
    if path.endswith((".pt", ".pth")):
        import torch

        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CLIError(f"cannot load {option} {path} with torch.load(weights_only=True): "
                           f"{one_line(exc)}") from exc
        if isinstance(value, (torch.Tensor, dict)):
            batches = _split_rows(value, batch_size, path)
        elif isinstance(value, (list, tuple)):
            batches = list(value)
        else:
            raise UsageError(f"{option} {path} holds a {type(value).__name__}; expected a tensor, a dict of "
                             "tensors or a list of batches")
        if not batches:
            raise UsageError(f"{option} {path} holds no batches")
        return batches
    if not takes_text(model):
        raise UsageError(f"{option} {path} is text, but the model ({type(model).__name__}) cannot take text: it "
                         "has no tokenizer (sentence-transformers models do); give a .pt file of input tensors "
                         "(torch.save) instead")
    from sparsekit.distill import text_batches

    return text_batches(_read_sentences(path), model, batch_size=batch_size)

"""The ``sparsekit`` command line: ``info``, ``demo``, ``prune``, ``convert``, ``bench``.

Installed as the ``sparsekit`` console script and runnable as ``python -m sparsekit``.
Every subcommand prints results on stdout, progress and errors on stderr, and
exits with 0 on success, 1 when the work itself fails (for example a model file
that cannot be loaded) and 2 on a usage error (unknown option, bad value,
missing file). Errors are one line; set ``SPARSEKIT_DEBUG=1`` to see the
traceback of an unexpected failure.

Example:
    >>> from sparsekit.cli import main
    >>> main(["info", "--json"])  # doctest: +ELLIPSIS
    {...}
    0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import struct
import sys
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError", "UsageError"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_EXIT_NOTE = "exit status: 0 success, 1 failure (e.g. a model that cannot be loaded), 2 usage error"


class CLIError(Exception):
    """A failure reported as one line on stderr with exit status 1."""

    exit_code = EXIT_FAILURE


class UsageError(CLIError):
    """A bad argument (missing file, malformed value): one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage dump) and exit with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 400 else line[:397] + "..."


# --------------------------------------------------------------------------- argument types
def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _block(text: str) -> tuple:
    """'4x1' / '4,1' -> (4, 1)."""
    for sep in ("x", "X", ",", "*"):
        if sep in text:
            parts = text.split(sep)
            break
    else:
        raise ValueError(text)
    if len(parts) != 2:
        raise ValueError(text)
    r, c = (int(p) for p in parts)
    if r < 1 or c < 1:
        raise ValueError(text)
    return (r, c)


def _granularity(text: str) -> Any:
    key = text.strip().lower()
    if key in ("unstructured", "channels", "inputs"):
        return key
    if ":" in key:
        n, _, m = key.partition(":")
        if n.isdigit() and m.isdigit() and 0 < int(n) <= int(m):
            return f"{int(n)}:{int(m)}"
    else:
        try:
            return _block(key)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a granularity; use unstructured, channels, inputs, a block RxC such as 4x1, "
        "or an N:M pattern such as 2:4")


def _format(text: str) -> Any:
    key = text.strip().lower()
    if key in ("auto", "csr"):
        return key
    try:
        return _block(key)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a format; use auto, csr or a block RxC such as 4x1") from None


def _batch_sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 1,32, got {text!r}")
    return sizes


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"hidden\": 256}}', got {text!r}")
    return value


# --------------------------------------------------------------------------- model files
@contextmanager
def _torchscript_api() -> Iterator[None]:
    """torch >= 2.10 deprecates torch.jit.*; TorchScript files are still what many users have."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


@dataclass
class LoadedModel:
    """A model read from disk: ``kind`` is ``"torchscript"`` or ``"safetensors"``."""

    kind: str
    model: Any
    path: str


def _check_input(path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a model file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied")


def _check_output(path: str, source: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a file name")
    if os.path.exists(path) and os.path.samefile(path, source):
        raise UsageError(f"{path}: output would overwrite the input; choose another -o")


def _file_kind(path: str) -> str:
    """'torchscript' for a zip archive, 'safetensors' for a safetensors header, else CLIError."""
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
        raise CLIError(f"cannot import factory module {module_name!r}: {_one_line(exc)}") from exc
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
    """Load a TorchScript file, or a safetensors state_dict into ``factory(**factory_kwargs)``."""
    _check_input(path)
    kind = _file_kind(path)
    import torch

    if kind == "torchscript":
        if factory is not None:
            raise UsageError(f"{path} is a TorchScript file; --factory applies to safetensors state_dicts only")
        try:
            with _torchscript_api():
                model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise CLIError(f"cannot load {path} as TorchScript: {_one_line(exc)}") from exc
        return LoadedModel("torchscript", model, path)

    if factory is None:
        raise UsageError(f"{path} is a safetensors state_dict; pass --factory package.module:function "
                         "that builds the model it belongs to")
    build = resolve_factory(factory)
    try:
        model = build(**(factory_kwargs or {}))
    except Exception as exc:
        raise CLIError(f"factory {factory!r} failed: {type(exc).__name__}: {_one_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"factory {factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except Exception as exc:
        raise CLIError(f"cannot read {path} as safetensors: {_one_line(exc)}") from exc
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
        raise CLIError(f"cannot load {path} into the model from {factory}: {_one_line(exc)}") from exc
    model.eval()
    return LoadedModel("safetensors", model, path)


def _names(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _save_state_dict(model: Any, path: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": "pt", "producer": "sparsekit prune"})


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# --------------------------------------------------------------------------- TorchScript pruning
_SCRIPT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def _shadow_of_script(script: Any) -> tuple:
    """A plain nn.Module tree mirroring the prunable layers of a ScriptModule.

    The shadow layers share nothing with the script module: pruning runs on them
    (so every sparsekit criterion and granularity works unchanged) and the
    pruned weights are copied back. Returns ``(shadow, [(script_layer, shadow_layer)])``.
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


# --------------------------------------------------------------------------- subcommands
def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import sparsekit

    info = sparsekit.cpu_info()
    data = {
        "sparsekit": sparsekit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": info.get("cpu_count", os.cpu_count()),
        "simd": info["simd"],
        "simd_available": info["simd_available"],
        "openmp": info["openmp"],
        "openmp_runtimes": info.get("openmp_runtimes", []),
        "threads": info["threads"],
        "torch_threads": info.get("torch_threads", torch.get_num_threads()),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    runtimes = data["openmp_runtimes"]
    rows = [
        ("sparsekit", data["sparsekit"]),
        ("python", data["python"]),
        ("torch", f"{data['torch']} ({data['torch_threads']} threads)"),
        ("platform", data["platform"]),
        ("CPU cores", str(data["cpu_count"])),
        ("SIMD in use", data["simd"] + ("  (forced by SPARSEKIT_SIMD)" if os.environ.get("SPARSEKIT_SIMD") else "")),
        ("SIMD available", ", ".join(data["simd_available"])),
        ("OpenMP", "yes" if data["openmp"] else "no (kernels run single-threaded)"),
        ("OpenMP runtime" + ("s" if len(runtimes) != 1 else ""),
         ", ".join(runtimes) if runtimes else "none mapped in this process"),
        ("kernel threads", str(data["threads"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if len(runtimes) > 1:
        print(f"warning: {len(runtimes)} OpenMP runtimes are loaded; threads may oversubscribe the cores",
              file=sys.stderr)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from sparsekit import demo

    try:
        demo.digits_file()
    except ImportError as exc:
        raise CLIError("the demo's dataset ships with scikit-learn, which is not installed: "
                       "pip install scikit-learn") from exc
    threads = None if args.threads == 0 else args.threads
    return demo.run_cli(quick=args.quick, seed=args.seed, progress=not args.no_progress, threads=threads)


def _cmd_prune(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.factory, args.factory_kwargs)
    _check_output(args.output, args.model)
    import torch

    import sparsekit

    exclude = args.exclude or None
    kwargs = dict(method=args.method, granularity=args.granularity, scope=args.scope, exclude=exclude,
                  seed=args.seed)
    if loaded.kind == "torchscript":
        target, pairs = _shadow_of_script(loaded.model)
        if not pairs:
            raise CLIError(f"{args.model}: no Linear or Conv layers with a weight found to prune")
    else:
        target, pairs = loaded.model, []
    try:
        with torch.no_grad():
            sparsekit.prune(target, args.sparsity, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(_one_line(exc)) from exc
    sparsekit.make_permanent(target)
    if loaded.kind == "torchscript":
        with torch.no_grad():
            for script_layer, layer in pairs:
                script_layer.weight.copy_(layer.weight)
        try:
            with _torchscript_api():
                torch.jit.save(loaded.model, args.output)
        except Exception as exc:
            raise CLIError(f"cannot write {args.output}: {_one_line(exc)}") from exc
    else:
        try:
            _save_state_dict(loaded.model, args.output)
        except Exception as exc:
            raise CLIError(f"cannot write {args.output}: {_one_line(exc)}") from exc
    report_kwargs: dict = {}
    if isinstance(args.granularity, tuple):
        report_kwargs["block"] = args.granularity
    elif ":" in str(args.granularity):
        report_kwargs["nm"] = args.granularity
    report = sparsekit.sparsity_report(target, **report_kwargs)
    print(report)
    total = report.total
    print(f"\npruned {total['numel'] - total['nnz']:,} of {total['numel']:,} weights "
          f"({total['sparsity']:.2%}) with method={args.method}, granularity={_show(args.granularity)}, "
          f"scope={args.scope}; wrote {args.output} ({loaded.kind}, "
          f"{_human_bytes(os.path.getsize(args.output))})")
    return EXIT_OK


def _show(value: Any) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def _cmd_convert(args: argparse.Namespace) -> int:
    _check_input(args.model)
    if _file_kind(args.model) == "torchscript":
        raise UsageError(f"{args.model} is TorchScript; convert rewrites Python modules, so give a safetensors "
                         "state_dict and --factory package.module:function that builds the model")
    loaded = load_model(args.model, args.factory, args.factory_kwargs)
    _check_output(args.output, args.model)
    import sparsekit

    try:
        converted = sparsekit.convert(loaded.model, format=args.format, batch_sizes=args.batch_sizes)
    except (TypeError, ValueError) as exc:
        raise UsageError(_one_line(exc)) from exc
    try:
        sparsekit.save(converted, args.output)
    except Exception as exc:
        raise CLIError(f"cannot write {args.output}: {_one_line(exc)}") from exc
    print(_decisions_table(converted))
    before, after = os.path.getsize(args.model), os.path.getsize(args.output)
    ratio = f"{before / after:.1f}x smaller" if after < before else "no smaller: no layer became sparse"
    print(f"\nwrote {args.output}: {_human_bytes(after)} (input {_human_bytes(before)}, {ratio}). "
          f"Load it with sparsekit.load({args.output!r}, model).")
    return EXIT_OK


def _decisions_table(converted: Any) -> str:
    """Per-layer conversion decisions of a converted model as a text table."""
    summary = getattr(converted, "sparsekit_summary", None)
    return str(summary) if summary is not None else "(no conversion summary)"


def _bench_module() -> Any:
    if importlib.util.find_spec("sparsekit.bench") is None:
        raise CLIError("the benchmark report (sparsekit.bench) is not part of this installation")
    from sparsekit import bench

    return bench


def _cmd_bench(args: argparse.Namespace) -> int:
    bench = _bench_module()
    # the tokens after "bench", already validated against the report's own options
    return int(bench.main(list(args.bench_argv)) or 0)


# --------------------------------------------------------------------------- parser
_MAIN_EPILOG = """\
examples:
  sparsekit info                      # version, SIMD level, OpenMP, threads
  sparsekit demo                      # train, prune, convert and time an MLP (< 2 min)
  sparsekit prune model.pt -o pruned.pt --sparsity 0.9
  sparsekit convert weights.safetensors -o sparse.safetensors --factory mypkg.models:build
  sparsekit bench --quick --out bench-report

""" + _EXIT_NOTE

_INFO_EPILOG = """\
examples:
  sparsekit info
  sparsekit info --json
  SPARSEKIT_SIMD=avx2 sparsekit info     # force a SIMD level

""" + _EXIT_NOTE

_DEMO_EPILOG = """\
Trains an MLP on scikit-learn's bundled digits (no download), prunes it gradually
with PolynomialDecay while fine-tuning, makes the masks permanent, converts it to
sparsekit's sparse layers and prints accuracy, stored parameters, bytes and
batch-1 latency of the dense and the sparse model, measured side by side.

examples:
  sparsekit demo                 # full run, under 2 minutes on 2 cores
  sparsekit demo --quick         # smaller model and fewer epochs, under 30 s
  sparsekit demo --seed 3 --no-progress > demo.txt
  sparsekit demo --threads 2     # time both models on 2 threads instead of 1

""" + _EXIT_NOTE

_MODEL_HELP = """\
MODEL is either a TorchScript file (torch.jit.save) or a safetensors state_dict
(safetensors.torch.save_file(model.state_dict(), ...)) together with --factory
package.module:function, an importable function that builds the model with the
same architecture (the current directory is searched as well)."""

_PRUNE_EPILOG = _MODEL_HELP + """

The output has the same format as the input, with the pruned weights set to zero.

examples:
  sparsekit prune model.pt -o pruned.pt --sparsity 0.9
  sparsekit prune weights.safetensors -o pruned.safetensors --sparsity 0.8 \\
      --factory mypkg.models:build_mlp --granularity 4x1
  sparsekit prune model.pt -o pruned.pt --sparsity 0.5 --granularity 2:4 --exclude 'classifier*'

""" + _EXIT_NOTE

_CONVERT_EPILOG = """\
MODEL is a safetensors state_dict and --factory package.module:function builds the
model it belongs to (TorchScript cannot be rewritten into sparse modules). Prune
first (sparsekit prune) so there are zeros to drop. The output is written with
sparsekit.save; read it back with sparsekit.load(path, factory()).

examples:
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp --format 4x1
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build_mlp --batch-sizes 1
  sparsekit convert pruned.safetensors -o sparse.safetensors --factory mypkg.models:build \\
      --factory-kwargs '{"hidden": 1024}'

""" + _EXIT_NOTE

_BENCH_EPILOG = """\
Runs the benchmark report (sparsekit.bench, also `python -m sparsekit.bench`): every
contender of a grid point is timed in interleaved rounds. Writes report.md,
results.json and plots under --out (default ./bench-out).

examples:
  sparsekit bench --quick                         # a few minutes
  sparsekit bench --full --out bench-report       # tens of minutes
  sparsekit bench --shapes 2048x2048 --batches 1 --sparsities 0.9 --no-targets --no-rss

""" + _EXIT_NOTE


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="TorchScript file or safetensors state_dict")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="file to write")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="importable function that builds the model (needed for safetensors input)")
    p.add_argument("--factory-kwargs", metavar="JSON", type=_json_object, default=None,
                   help="keyword arguments for the factory, as a JSON object")


def build_parser(with_bench_options: bool = False) -> argparse.ArgumentParser:
    """The argparse parser of the ``sparsekit`` command (``with_bench_options``: load the report's options)."""
    from sparsekit import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="sparsekit", formatter_class=fmt, epilog=_MAIN_EPILOG,
                     description="Prune PyTorch models, store the weights sparse and run them fast on CPUs.")
    parser.add_argument("--version", action="version", version=f"sparsekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="show version, SIMD level, OpenMP runtime and threads",
                       description="Show sparsekit's version, the SIMD level in use and available, the OpenMP "
                                   "runtime and thread counts, and the torch version.",
                       epilog=_INFO_EPILOG, formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print the same facts as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="train, prune, convert and time a model on built-in data",
                       description="The end-to-end demonstration on built-in data (no network).",
                       epilog=_DEMO_EPILOG, formatter_class=fmt)
    p.add_argument("--quick", action="store_true", help="smaller model and fewer epochs (under 30 s)")
    p.add_argument("--seed", type=_positive_int, default=0, help="random seed (default 0); same seed, same run")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="threads of both models while converting and timing (default 1; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("prune", help="one-shot prune a saved model",
                       description="Prune a saved model once (magnitude, random or L1/L2-norm criterion), "
                                   "write the pruned model and print the sparsity report.",
                       epilog=_PRUNE_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    p.add_argument("--sparsity", type=_sparsity, required=True, metavar="S",
                   help="fraction of weights (or blocks, channels) to remove, in [0, 1)")
    p.add_argument("--granularity", type=_granularity, default="unstructured",
                   help="unstructured (default), channels, inputs, a block RxC (4x1) or N:M (2:4)")
    p.add_argument("--method", choices=["magnitude", "random", "l1", "l2"], default="magnitude",
                   help="importance criterion (default magnitude; l1/l2: norm of each row, block or group)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="each layer to the target (default) or one ranking across layers")
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="layer name pattern to leave dense (fnmatch; repeatable)")
    p.add_argument("--seed", type=_positive_int, default=0, help="seed of --method random (default 0)")
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("convert", help="convert a pruned model to sparsekit's sparse format",
                       description="Replace Linear/Conv layers by sparsekit's sparse layers where that is "
                                   "faster, print the per-layer decisions and save with sparsekit.save.",
                       epilog=_CONVERT_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    p.add_argument("--format", type=_format, default="auto",
                   help="auto (default: per layer, by measurement), csr, or a block RxC such as 4x1")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 32), metavar="B1,B2",
                   help="batch sizes format=auto must win at (default 1,32; use 1 for batch-1 latency)")
    p.set_defaults(func=_cmd_convert)

    # The report's own options (sparsekit.bench), so `sparsekit bench --help` lists all of them;
    # they are only loaded when the command is `bench`.
    parents = []
    if with_bench_options:
        try:
            bench = _bench_module()
            parents = [bench._parser()]
        except Exception:  # a broken or missing report must not break the other commands
            parents = []
    p = sub.add_parser("bench", help="run the benchmark report",
                       description="Benchmark sparsekit's kernels against torch dense, torch CSR and scipy CSR "
                                   "side by side; print the table, write report.md, results.json and plots.",
                       epilog=_BENCH_EPILOG, formatter_class=fmt, parents=parents,
                       add_help=not parents, conflict_handler="resolve")
    if not parents:
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true", help="small grid, a few minutes")
        size.add_argument("--full", action="store_true", help="the whole grid (tens of minutes)")
        p.add_argument("--out", metavar="DIR", help="directory for the report, table and plots")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``sparsekit`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_bench = bool(argv) and argv[0] == "bench"
    parser = build_parser(with_bench_options=is_bench)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        print("sparsekit: error: choose a command: info, demo, prune, convert, bench "
              "(see 'sparsekit --help')", file=sys.stderr)
        return EXIT_USAGE
    prog = f"sparsekit {args.command}"
    args.bench_argv = argv[1:] if is_bench else []
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:  # a delegate (the benchmark report) exiting on its own
        if isinstance(exc.code, int) or exc.code is None:
            return int(exc.code or 0)
        print(f"{prog}: error: {_one_line(exc.code)}", file=sys.stderr)
        return EXIT_USAGE
    except CLIError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sparsekit info | head -1`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:  # pragma: no cover
            pass
        return EXIT_FAILURE
    except Exception as exc:
        if os.environ.get("SPARSEKIT_DEBUG"):
            raise
        print(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)} "
              "(set SPARSEKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

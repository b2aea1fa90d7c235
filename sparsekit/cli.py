"""The ``sparsekit`` command line: ``info``, ``demo``, ``prune``, ``convert``, ``bench``.

Installed as the ``sparsekit`` console script and runnable as ``python -m sparsekit``.
Every subcommand prints results on stdout, progress and errors on stderr, and
exits with 0 on success, 1 when the work itself fails (for example a model file
that cannot be loaded) and 2 on a usage error (unknown option, bad value,
missing file). Errors are one line; set ``SPARSEKIT_DEBUG=1`` to see the
traceback of an unexpected failure. ``sparsekit bench ARGS`` hands ARGS to
``sparsekit.bench.main``, whose own parser reads and documents them.

Example:
    >>> from sparsekit.cli import main
    >>> main(["info", "--json"])  # doctest: +ELLIPSIS
    {...}
    0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from typing import Any, Callable, List, Optional

from sparsekit import cli_help
from sparsekit.model_files import (CLIError, UsageError, check_input, check_output, copy_shadow_weights, file_kind,
                                   load_inputs, load_model, one_line, save_model, shadow_of_script)

__all__ = ["main", "build_parser", "CLIError", "UsageError"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, CLIError.exit_code, UsageError.exit_code

BENCH_PROG = "sparsekit bench"


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


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
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


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


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


CALIBRATED = ("wanda", "sparsegpt")


def _check_prune_options(args: argparse.Namespace, kind: str) -> None:
    """Option combinations ``sparsekit prune`` refuses, as one-line usage errors, before any work."""
    python_only = "give a safetensors state_dict and --factory that builds the Python model"
    if args.distill and kind == "torchscript":
        raise UsageError(f"{args.model} is TorchScript: --distill trains the model, so {python_only}")
    if args.method in CALIBRATED and kind == "torchscript":
        raise UsageError(f"{args.model} is TorchScript: --method {args.method} runs the model on calibration "
                         f"inputs layer by layer, so {python_only}")
    if args.distill and args.data is None:
        raise UsageError("--distill needs --data: sentences (a text file) or input tensors (a .pt file)")
    if args.method in CALIBRATED and args.calibration is None and args.data is None:
        raise UsageError(f"--method {args.method} needs calibration inputs: --calibration FILE (or --data FILE)")
    if args.calibration is not None and args.method not in CALIBRATED:
        raise UsageError(f"--calibration is read by --method wanda or sparsegpt, not {args.method}")
    for option, value in (("--teacher", args.teacher), ("--one-shot", args.one_shot)):
        if value and not args.distill:
            raise UsageError(f"{option} applies with --distill STEPS only")


def _prune_inputs(args: argparse.Namespace, model: Any) -> tuple:
    """``(training batches or None, calibration batches or None)`` read from --data / --calibration."""
    from sparsekit.distill.recipe import CALIBRATION_BATCHES

    data = load_inputs(args.data, model, args.batch_size, "--data") if args.data is not None else None
    calibration = None
    if args.method in CALIBRATED:
        calibration = (load_inputs(args.calibration, model, args.batch_size, "--calibration")
                       if args.calibration is not None else data[:CALIBRATION_BATCHES])  # type: ignore[index]
    return data, calibration


def _distill(args: argparse.Namespace, model: Any, data: list, calibration: Any) -> str:
    """Gradual pruning (or a one-shot start) with distillation, in place; returns the summary line."""
    import time

    from sparsekit.distill import prune_and_distill

    teacher = None
    if args.teacher is not None:
        teacher = load_model(args.teacher, None if file_kind(args.teacher) == "torchscript" else args.factory,
                             args.factory_kwargs).model.eval()
    t0 = time.perf_counter()
    _, history = prune_and_distill(model, data, steps=args.distill, sparsity=args.sparsity, teacher=teacher,
                                   method="magnitude" if args.one_shot else args.method,
                                   one_shot=args.method if args.one_shot else None, calibration=calibration,
                                   granularity=args.granularity, scope=args.scope, exclude=args.exclude or None,
                                   lr=args.lr, return_history=True, progress=sys.stderr.isatty())
    model.eval()
    loss = history["loss"]
    start = "one-shot start, masks fixed" if args.one_shot else "gradual schedule"
    return (f"distilled {len(loss)} steps ({start}) from {args.teacher or 'a dense copy of the input'} on "
            f"{len(data)} batches of {args.data} in {(time.perf_counter() - t0) / 60:.1f} min: "
            f"loss {loss[0]:.4g} -> {loss[-1]:.4g}")


def _cmd_prune(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.factory, args.factory_kwargs)
    check_output(args.output, args.model)
    _check_prune_options(args, loaded.kind)
    import torch

    import sparsekit

    kwargs = dict(method=args.method, granularity=args.granularity, scope=args.scope, exclude=args.exclude or None,
                  seed=args.seed)
    if loaded.kind == "torchscript":
        target, pairs = shadow_of_script(loaded.model)
        if not pairs:
            raise CLIError(f"{args.model}: no Linear or Conv layers with a weight found to prune")
    else:
        target, pairs = loaded.model, []
    data, calibration = _prune_inputs(args, loaded.model)
    summary = None
    try:
        if args.distill:
            summary = _distill(args, target, data, calibration)  # type: ignore[arg-type]
        else:
            with torch.no_grad():
                sparsekit.prune(target, args.sparsity, calibration=calibration, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(one_line(exc)) from exc
    except FloatingPointError as exc:
        raise CLIError(one_line(exc)) from exc
    sparsekit.make_permanent(target)
    copy_shadow_weights(pairs)
    save_model(loaded, args.output)
    _print_prune_report(args, target, loaded.kind, summary)
    return EXIT_OK


def _print_prune_report(args: argparse.Namespace, target: Any, kind: str, summary: Optional[str]) -> None:
    import sparsekit

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
          f"scope={args.scope}; wrote {args.output} ({kind}, "
          f"{_human_bytes(os.path.getsize(args.output))})")
    if summary:
        print(summary)


def _show(value: Any) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def _cmd_convert(args: argparse.Namespace) -> int:
    check_input(args.model)
    if file_kind(args.model) == "torchscript":
        raise UsageError(f"{args.model} is TorchScript; convert rewrites Python modules, so give a safetensors "
                         "state_dict and --factory package.module:function that builds the model")
    loaded = load_model(args.model, args.factory, args.factory_kwargs)
    check_output(args.output, args.model)
    import sparsekit

    try:
        converted = sparsekit.convert(loaded.model, format=args.format, batch_sizes=args.batch_sizes)
    except (TypeError, ValueError) as exc:
        raise UsageError(one_line(exc)) from exc
    try:
        sparsekit.save(converted, args.output)
    except Exception as exc:
        raise CLIError(f"cannot write {args.output}: {one_line(exc)}") from exc
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


def _forward_to_bench(argv: List[str]) -> int:
    """Hand ``argv`` untouched to ``sparsekit.bench.main``: the report parses, validates and documents it."""
    if importlib.util.find_spec("sparsekit.bench") is None:
        raise CLIError("the benchmark report (sparsekit.bench) is not part of this installation")
    from sparsekit import bench

    return int(bench.main(argv, prog=BENCH_PROG) or 0)


# --------------------------------------------------------------------------- parser
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="TorchScript file or safetensors state_dict")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="file to write")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="importable function that builds the model (needed for safetensors input)")
    p.add_argument("--factory-kwargs", metavar="JSON", type=_json_object, default=None,
                   help="keyword arguments for the factory, as a JSON object")


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    """The options of ``sparsekit prune``."""
    _add_model_args(p)
    p.add_argument("--sparsity", type=_sparsity, required=True, metavar="S",
                   help="fraction of weights (or blocks, channels) to remove, in [0, 1)")
    p.add_argument("--granularity", type=_granularity, default="unstructured",
                   help="unstructured (default), channels, inputs, a block RxC (4x1) or N:M (2:4)")
    p.add_argument("--method", choices=["magnitude", "random", "l1", "l2", *CALIBRATED], default="magnitude",
                   help="importance criterion (default magnitude; l1/l2: norm of each row, block or group; "
                        "wanda, sparsegpt: from the layer inputs on calibration data)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="each layer to the target (default) or one ranking across layers")
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="layer name pattern to leave dense (fnmatch; repeatable)")
    p.add_argument("--seed", type=_positive_int, default=0, help="seed of --method random (default 0)")
    g = p.add_argument_group("calibration and distillation (safetensors models with --factory)")
    g.add_argument("--data", metavar="FILE",
                   help="inputs: a text file, one sentence per line (models that tokenize, such as "
                        "sentence-transformers), or a .pt file (torch.save) of a tensor, a dict of tensors or a "
                        "list of batches")
    g.add_argument("--calibration", metavar="FILE",
                   help="calibration inputs of --method wanda / sparsegpt, same formats as --data "
                        "(default: the first 8 batches of --data)")
    g.add_argument("--distill", type=_positive_int, default=0, metavar="STEPS",
                   help="prune gradually over STEPS optimizer steps while distilling from the teacher on --data")
    g.add_argument("--teacher", metavar="FILE",
                   help="dense reference for --distill (TorchScript, or safetensors for the same --factory); "
                        "default: a dense copy of MODEL")
    g.add_argument("--one-shot", action="store_true",
                   help="with --distill: prune once with --method, then distil with those masks fixed")
    g.add_argument("--lr", type=float, default=5e-5, metavar="LR", help="learning rate of --distill (default 5e-5)")
    g.add_argument("--batch-size", type=_batch_size, default=16, metavar="N",
                   help="rows per batch cut from --data / --calibration (default 16)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``sparsekit`` command (``bench`` takes its options from ``sparsekit.bench``)."""
    from sparsekit import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    parser = cli_help.OneLineParser(prog="sparsekit", formatter_class=fmt, epilog=cli_help.MAIN_EPILOG,
                     description="Prune PyTorch models, store the weights sparse and run them fast on CPUs.")
    parser.add_argument("--version", action="version", version=f"sparsekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=cli_help.OneLineParser)

    p = sub.add_parser("info", help="show version, SIMD level, OpenMP runtime and threads",
                       description="Show sparsekit's version, the SIMD level in use and available, the OpenMP "
                                   "runtime and thread counts, and the torch version.",
                       epilog=cli_help.INFO_EPILOG, formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print the same facts as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="train, prune, convert and time a model on built-in data",
                       description="The end-to-end demonstration on built-in data (no network).",
                       epilog=cli_help.DEMO_EPILOG, formatter_class=fmt)
    p.add_argument("--quick", action="store_true", help="smaller model and fewer epochs (under 30 s)")
    p.add_argument("--seed", type=_positive_int, default=0, help="random seed (default 0); same seed, same run")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="threads of both models while converting and timing (default 1; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("prune", help="prune a saved model (one shot, or gradually with distillation)",
                       description="Prune a saved model - once (magnitude, random, L1/L2 norm, or the "
                                   "calibration-aware wanda / sparsegpt), or gradually while distilling it from "
                                   "its dense self (--distill) - write the pruned model and print the sparsity "
                                   "report.",
                       epilog=cli_help.PRUNE_EPILOG, formatter_class=fmt)
    _add_prune_args(p)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("convert", help="convert a pruned model to sparsekit's sparse format",
                       description="Replace Linear/Conv layers by sparsekit's sparse layers where that is "
                                   "faster, print the per-layer decisions and save with sparsekit.save.",
                       epilog=cli_help.CONVERT_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    p.add_argument("--format", type=_format, default="auto",
                   help="auto (default: per layer, by measurement), csr, or a block RxC such as 4x1")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 32), metavar="B1,B2",
                   help="batch sizes format=auto must win at (default 1,32; use 1 for batch-1 latency)")
    p.set_defaults(func=_cmd_convert)

    # Listed for `sparsekit --help` only: main() hands everything after "bench" to sparsekit.bench.main,
    # whose own parser reads the options and prints `sparsekit bench --help`.
    sub.add_parser("bench", help="run the benchmark report", add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``sparsekit`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _run(BENCH_PROG, lambda: _forward_to_bench(argv[1:]))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        print("sparsekit: error: choose a command: info, demo, prune, convert, bench "
              "(see 'sparsekit --help')", file=sys.stderr)
        return EXIT_USAGE
    return _run(f"sparsekit {args.command}", lambda: args.func(args))


def _run(prog: str, command: Callable[[], Optional[int]]) -> int:
    """Call ``command()`` and turn what it raises into one line on stderr and an exit status."""
    try:
        return int(command() or 0)
    except SystemExit as exc:  # a delegate (the benchmark report) exiting on its own
        if isinstance(exc.code, int) or exc.code is None:
            return int(exc.code or 0)
        print(f"{prog}: error: {one_line(exc.code)}", file=sys.stderr)
        return EXIT_USAGE
    except CLIError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
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
        print(f"{prog}: error: {type(exc).__name__}: {one_line(exc)} "
              "(set SPARSEKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The command line of the benchmark report: ``sparsekit bench`` and ``python -m sparsekit.bench``.

:func:`build_parser` holds the options, :func:`main` runs the sections of
:mod:`sparsekit.bench.sections` on the chosen grid and writes ``report.md`` (or
``--report-name``), ``results.json`` and the plots under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
from typing import Callable, List, Optional, Tuple

import sparsekit
from sparsekit.bench import cases
from sparsekit.bench.cache import evictor
from sparsekit.bench.measure import COLD_ROUNDS, LOAD
from sparsekit.bench.plots import plots
from sparsekit.bench.report import render
from sparsekit.cli_help import EXIT_NOTE, OneLineParser
from sparsekit.bench.sections import bandwidth, break_even, machine_info, memory_table, peak_rss, run_grid

DESCRIPTION = "Benchmark report: sparsekit against torch dense, torch CSR and scipy CSR, side by side."

EPILOG = """\
Every contender of a grid point is timed in interleaved rounds (each round calls every
contender a few times), so a change in machine load hits all of them alike. Batch 1 is
timed hot (weights in cache, back-to-back calls) and cold (caches evicted before every
call by a streaming read of twice the last-level cache, not timed). Writes
report.md, results.json and bench_speedup.png, bench_bandwidth.png, bench_gflops.png
under --out. The acceptance floors live apart, in benchmarks/floors.py.

examples:
  {prog} --quick                         # a few minutes
  {prog} --full --out bench-report       # tens of minutes
  {prog} --shapes 2048x2048 --batches 1 --sparsities 0.9 --no-rss

""" + EXIT_NOTE


def _shapes(s: str) -> List[Tuple[int, int]]:
    out = []
    for part in s.split(","):
        a, b = part.lower().split("x")
        out.append((int(a), int(b)))
    return out


def build_parser(prog: str = "sparsekit bench") -> argparse.ArgumentParser:
    """The options of the report, for ``prog`` (the name shown in usage and help).

    Example:
        >>> from sparsekit.bench import build_parser
        >>> args = build_parser().parse_args(["--shapes", "64x48", "--budget", "0.01"])
        >>> args.shapes, args.budget, args.quick
        ('64x48', 0.01, False)
    """
    p = OneLineParser(prog=prog, description=DESCRIPTION, epilog=EPILOG.format(prog=prog),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small grid (default): 768x768 and 4096x4096, "
                      "batch 1 and 128, four sparsities; a few minutes")
    mode.add_argument("--full", action="store_true", help="the whole grid: 5 shapes x 5 batches x 6 sparsities "
                      "(tens of minutes)")
    p.add_argument("--out", default="bench-out", help="output directory (created)")
    p.add_argument("--report-name", default="report.md",
                   help="file name of the Markdown report under --out (results go to <stem>.json)")
    p.add_argument("--img-dir", default="", help="subdirectory of --out for the PNG plots (default: --out)")
    p.add_argument("--shapes", help="override: comma-separated RxC weight shapes")
    p.add_argument("--batches", help="override: comma-separated batch sizes")
    p.add_argument("--sparsities", help="override: comma-separated sparsities")
    p.add_argument("--formats", default=",".join(cases.FORMATS), help="sparsekit formats (csr,4x1,1x4,8x1; quantized, opt-in: "
                   + ",".join(cases.QUANTIZED_FORMATS) + ")")
    p.add_argument("--simd", help="SIMD level for the grid (default: the best available)")
    p.add_argument("--threads", type=int, help="threads for sparsekit and torch (default: torch's)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per contender and grid point")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to SECONDS for other processes to leave "
                        "the CPUs idle (for shared machines; default 0: do not wait)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="repeat a grid point's measurement up to N times when its medians are "
                        "over 1.5x its fastest calls (load from other processes); default 2")
    # Accepted and ignored: the report used to measure the acceptance floors too (now
    # benchmarks/floors.py); scripts that still pass the option keep working.
    p.add_argument("--no-targets", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess probes")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the batch-1 bandwidth comparison")
    p.add_argument("--no-cold", action="store_true",
                   help="time batch 1 with the weights hot in cache only (skip the cold measurements, "
                        "which evict the caches before every call)")
    p.add_argument("--cold-rounds", type=int, default=COLD_ROUNDS, metavar="N",
                   help=f"cold calls per contender and batch-1 point, each after its own eviction "
                        f"(default {COLD_ROUNDS})")
    return p


@dataclasses.dataclass
class Plan:
    """What one run of the report measures, resolved from the options."""

    shapes: List[Tuple[int, int]]
    batches: List[int]
    sparsities: List[float]
    formats: List[str]
    simd: str
    threads: int
    budget: float
    cold: bool = True
    cold_rounds: int = COLD_ROUNDS


def plan(args: argparse.Namespace) -> Plan:
    """Resolves parsed options into a :class:`Plan`; ``SystemExit`` with a message for an
    unknown format or a SIMD level this machine lacks.

    Example:
        >>> from sparsekit.bench import build_parser, plan
        >>> pl = plan(build_parser().parse_args(["--full", "--formats", "csr"]))
        >>> len(pl.shapes), pl.batches, pl.formats, pl.budget, pl.cold
        (5, [1, 8, 32, 128, 512], ['csr'], 0.5, True)
    """
    full = args.full
    shapes = _shapes(args.shapes) if args.shapes else list(cases.FULL_SHAPES if full else cases.QUICK_SHAPES)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else \
        list(cases.FULL_BATCHES if full else cases.QUICK_BATCHES)
    sparsities = [float(s) for s in args.sparsities.split(",")] if args.sparsities else \
        list(cases.FULL_SPARSITIES if full else cases.QUICK_SPARSITIES)
    formats = [f for f in args.formats.split(",") if f]
    for f in formats:
        if f not in cases.ALL_FORMATS:
            raise SystemExit(f"unknown format {f!r}; choose from {', '.join(cases.ALL_FORMATS)}")
    available = sparsekit.cpu_info()["simd_available"]
    simd = args.simd or sparsekit.cpu_info()["simd"]
    if simd not in available:
        raise SystemExit(f"SIMD level {simd!r} is not available here ({', '.join(available)})")
    threads = args.threads or sparsekit.get_num_threads()
    budget = args.budget if args.budget is not None else (0.5 if full else 0.25)
    if args.cold_rounds < 1:
        raise SystemExit(f"--cold-rounds must be at least 1, got {args.cold_rounds}")
    return Plan(shapes, batches, sparsities, formats, simd, threads, budget, not args.no_cold, args.cold_rounds)


def measure_all(pl: Plan, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Runs every section of the report for ``pl`` (with the thread count of the plan for
    sparsekit and torch); returns the result :func:`main` writes to ``results.json``.

    Example:
        >>> from sparsekit.bench import build_parser, measure_all, plan
        >>> args = build_parser().parse_args(["--shapes", "16x8", "--batches", "1", "--sparsities", "0.9",
        ...                                   "--formats", "csr", "--simd", "scalar", "--threads", "1",
        ...                                   "--budget", "0.001", "--cold-rounds", "1", "--no-rss", "--no-bandwidth"])
        >>> result = measure_all(plan(args), args, log=lambda line: None)
        >>> len(result["rows"]), sorted({r["cache"] for r in result["rows"]}), result["bandwidth"]
        (8, ['cold', 'hot'], [])
        >>> result["cold"]["evict_bytes"] > result["cold"]["llc_bytes"]
        True
    """
    t_start = time.time()
    with sparsekit.threads(pl.threads, with_torch=True):
        machine = machine_info()
        log(f"sparsekit bench: {machine['cpu']}, simd {pl.simd} (available {', '.join(machine['simd_available'])}), "
            f"{pl.threads} threads, torch {machine['torch']}")
        points = cases.grid(pl.shapes, pl.batches, pl.sparsities)
        log(f"grid: {len(points)} points x {len(pl.formats) + len(cases.baselines_for(pl.formats))} contenders")
        if pl.cold:
            ev = evictor()
            log(f"cold: evicting {ev.nbytes >> 20} MiB ({ev.info()['evict_factor']}x the {ev.llc_bytes >> 20} MiB "
                f"last-level cache, from {ev.llc_source}) before each of {pl.cold_rounds} batch-1 calls")
        rows = run_grid(points, pl.formats, pl.threads, pl.budget, pl.simd, log, pl.cold, pl.cold_rounds)
        be = break_even(rows)
        bw = [] if args.no_bandwidth else bandwidth(pl.shapes, 0.9, [f for f in ("csr", "4x1") if f in pl.formats],
                                                    pl.threads, pl.simd, pl.budget, pl.cold, pl.cold_rounds)
        mem = memory_table(pl.shapes, pl.sparsities, pl.formats)
        rss = [] if args.no_rss else peak_rss()
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["waited_for_quiet_s"] = LOAD.waited
    machine["noisy_measurements_repeated"] = LOAD.retried
    return {"machine": machine, "simd": pl.simd, "threads": pl.threads, "budget_s": pl.budget,
            "cold": _cold_info(pl, rows, bw), "rows": rows, "break_even": be, "bandwidth": bw, "memory": mem,
            "peak_rss": rss, "seconds": time.time() - t_start}


def _cold_info(pl: Plan, rows: List[dict], bw: List[dict]) -> dict:
    """How the cold rows were made (empty when none were): the evictor, rounds, median eviction time."""
    evict_s = [r["evict_s"] for r in rows + bw if r.get("cache") == "cold"]
    if not evict_s:
        return {}
    return {**evictor().info(), "rounds": pl.cold_rounds, "evict_s": float(statistics.median(evict_s))}


def write_outputs(result: dict, formats: List[str], args: argparse.Namespace) -> List[str]:
    """Writes the JSON results, the plots and the Markdown report under ``args.out``; their paths.

    Example:
        >>> from sparsekit.bench import build_parser, measure_all, plan, write_outputs
        >>> args = build_parser().parse_args(["--shapes", "16x8", "--batches", "1", "--sparsities", "0.9",
        ...                                   "--formats", "csr", "--budget", "0.001", "--no-rss",
        ...                                   "--no-bandwidth", "--no-cold", "--out", "skb"])
        >>> pl = plan(args)
        >>> write_outputs(measure_all(pl, args, log=lambda line: None), pl.formats, args)[:2]
        ['skb/results.json', 'skb/report.md']
    """
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(args.report_name)[0]
    json_name = "results.json" if args.report_name == "report.md" else f"{stem}.json"
    json_path = os.path.join(args.out, json_name)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    img_dir = os.path.join(args.out, args.img_dir) if args.img_dir else args.out
    os.makedirs(img_dir, exist_ok=True)
    pngs = plots(result["rows"], result["bandwidth"], img_dir, formats)
    report_path = os.path.join(args.out, args.report_name)
    with open(report_path, "w") as f:
        f.write(render(result, formats, [os.path.relpath(p, args.out) for p in pngs]))
    return [json_path, report_path, *pngs]


def main(argv: Optional[List[str]] = None, prog: str = "sparsekit bench") -> int:
    """Run the benchmark grid and write the report; returns the exit status.

    ``argv`` are the options (default ``sys.argv[1:]``), ``prog`` the command's name in
    usage and help. An unknown format or SIMD level exits with a message.

    Example:
        >>> from sparsekit import bench
        >>> bench.main(["--shapes", "16x8", "--batches", "1", "--sparsities", "0.9", "--formats", "csr",
        ...             "--no-rss", "--no-bandwidth", "--no-cold", "--budget", "0.001",
        ...             "--out", "skb"])  # doctest: +ELLIPSIS
        sparsekit bench: ...
        grid: 1 points x 4 contenders
        ...
        wrote skb/report.md, results.json and 2 plots in ... s
        0
    """
    args = build_parser(prog).parse_args(argv)
    pl = plan(args)
    os.makedirs(args.out, exist_ok=True)
    LOAD.reset(max_wait=args.wait_quiet, retries=args.retries)
    log = functools.partial(print, flush=True)
    t_start = time.time()
    result = measure_all(pl, args, log)
    written = write_outputs(result, pl.formats, args)
    log(f"wrote {written[1]}, {os.path.basename(written[0])} and {len(written) - 2} plots "
        f"in {time.time() - t_start:.0f} s")
    return 0
